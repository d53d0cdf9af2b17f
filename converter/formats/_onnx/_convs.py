"""Finding an ONNX model's convolutions: every Conv/ConvTranspose of the main graph and its subgraphs with a
unique, readable name, its constant weight (initializer, Constant node, through Identity) or the reason it has
none, and its spatial sizes from the shape table."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from .._base import ConvLayer, UniqueNames
from . import _quant
from ._nodes import CONV_OPS, QUANTIZED_CONV_OPS, Dims, int_attr, ints, is_onnx_op
from ._shapes import out_spatial, spatial, value_dims

__all__ = ["NOTE_OVERRIDABLE", "constant_weight", "describe", "named_convs"]

NOTE_OVERRIDABLE = "weight is a graph input (overridable), not a constant"
NOTE_QDQ = "weight is quantized (QDQ: DequantizeLinear → Conv)"
_ALL_CONV_OPS = CONV_OPS | frozenset(QUANTIZED_CONV_OPS)


def named_convs(model: ir.Model) -> list[tuple[str, ir.Node]]:
    """Every Conv/ConvTranspose in graph order (subgraphs included), and the integer convs of quantized graphs
    (``QUANTIZED_CONV_OPS``, read by ``_quant``), with a unique, readable name: the node's
    own name, ``<op>_<i>`` for an unnamed one (``i`` counts the convs), made unique by ``UniqueNames`` (a
    repeated name gets ``_2``…, avoiding every node's own name)."""
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    own = {n.name for n in nodes if n.name}
    names = UniqueNames()
    out = []
    for i, node in enumerate(n for n in nodes if is_onnx_op(n, _ALL_CONV_OPS)):
        if node.name and node.name not in names.taken:
            out.append((names(node.name), node))
        else:
            out.append((names(node.name or f"{node.op_type}_{i}", avoid=own), node))
    return out


def constant_weight(model: ir.Model, value: ir.Value | None) -> tuple[ir.TensorProtocol | None, str | None]:
    """The constant tensor behind a conv's weight input (initializer, Constant node, through Identity), or
    None and the reason it is not a constant."""
    for _ in range(64):
        if value is None:
            return None, "the conv has no weight input"
        if value.is_graph_input() and not (value.is_initializer() and model.ir_version < 4):
            # before IR 4 every initializer had to be listed as an input; onnxruntime treats those as constants
            if value.is_initializer():
                return None, NOTE_OVERRIDABLE
            if value.graph is model.graph:
                return None, "weight is a graph input fed at run time, not a constant"
            return None, "weight is an input of a subgraph (If/Loop/Scan body), computed at run time"
        if value.const_value is not None:
            return value.const_value, None
        producer = value.producer()
        if producer is None:
            return None, "weight has no producer and no value"
        if is_onnx_op(producer, frozenset({"Identity"})):
            value = producer.inputs[0] if producer.inputs else None
            continue
        if is_onnx_op(producer, frozenset({"Constant"})):
            try:
                tensor = ir.convenience.get_const_tensor(value)
            except ValueError:
                tensor = None
            if tensor is None:
                return None, f"weight is a Constant node ({producer.name!r}) whose value cannot be read"
            return tensor, None
        if is_onnx_op(producer, frozenset({"DequantizeLinear"})):
            return None, NOTE_QDQ
        return None, f"weight is computed at run time (by {producer.op_type} node {producer.name!r}), not a constant"
    return None, "weight is behind a chain of more than 64 Identity nodes"


def _as_conv_layout(w: np.ndarray, groups: int, transposed: bool) -> np.ndarray:
    """A ConvTranspose weight ``[M, N/g, *k]`` regrouped as ``[N, M/g, *k]`` (the layout ConvLayer documents)."""
    if not transposed:
        return w
    m, ng = w.shape[:2]
    k = w.shape[2:]
    return w.reshape(groups, m // groups, ng, *k).swapaxes(1, 2).reshape(groups * ng, m // groups, *k)


def describe(model: ir.Model, name: str, node: ir.Node, table: Mapping[str, Dims | None]) -> ConvLayer:
    transposed = node.op_type == "ConvTranspose"
    x = node.inputs[0] if node.inputs else None
    w_index = QUANTIZED_CONV_OPS.get(node.op_type, 1)
    w = node.inputs[w_index] if len(node.inputs) > w_index else None
    groups = int_attr(node, "group", 1)
    tensor, note = constant_weight(model, w)
    quant = _quant.read(node)
    quantized = None
    if isinstance(quant, str):
        # Its integer weight gives the geometry; the layer itself is only reported.
        tensor, note = None, f"{quant}: not converted"
    elif quant is not None:
        tensor, note, quantized = None, None, quant.style
    elif tensor is not None and not tensor.dtype.is_floating_point():
        note = f"weight has dtype {tensor.dtype}, not a floating-point type"
        tensor = None
    if tensor is not None and len(tensor.shape) < 3:
        note = f"weight constant has shape {tuple(tensor.shape.numpy())}, not [N, C, *kernel]"
        tensor = None
    wdims: tuple[int, ...] | None
    if quant is not None and not isinstance(quant, str):
        wdims = tuple(quant.weight.shape)
    else:
        wdims = tuple(tensor.shape.numpy()) if tensor is not None else value_dims(w, table)
    x_dims = value_dims(x, table)
    y_dims = value_dims(node.outputs[0], table)
    kernel = tuple(ints(node, "kernel_shape", wdims[2:] if wdims is not None and len(wdims) >= 3 else []))
    if (tensor is not None or quantized) and wdims is not None and kernel != tuple(wdims[2:]):
        # an invalid model (no runtime runs it): said now, not found out by whichever stage touches it first
        raise ValueError(f"its kernel_shape {list(kernel)} contradicts its weight of shape {list(wdims)} "
                         f"(kernel dims {list(wdims[2:])})")
    if wdims is not None and len(wdims) >= 3:
        in_ch, out_ch = (wdims[0], wdims[1] * groups) if transposed else (wdims[1] * groups, wdims[0])
    else:
        in_ch = x_dims[1] if x_dims is not None and len(x_dims) > 1 else 0
        out_ch = y_dims[1] if y_dims is not None and len(y_dims) > 1 else 0
    weight = None
    if quantized:
        weight = quant.weight.view()  # type: ignore[union-attr]
        weight.flags.writeable = False
    elif tensor is not None:
        # A read-only view of the initializer when it already is float32 (the planner only reads it): no copy
        # of every conv's weight per call.
        weight = _as_conv_layout(np.asarray(tensor.numpy()).astype(np.float32, copy=False), groups, transposed)
        if weight.base is not None:
            weight = weight.view()
            weight.flags.writeable = False
    in_sp, out_sp = spatial(x_dims), spatial(y_dims)
    if out_sp is None and in_sp is not None and kernel:
        out_sp = out_spatial(node, in_sp, kernel)
    return ConvLayer(
        name=name, op=node.op_type, kernel=kernel, in_channels=int(in_ch), out_channels=int(out_ch),
        groups=groups, weight=weight, transposed=transposed, note=note, in_spatial=in_sp, out_spatial=out_sp,
        handle=node, quantized=quantized,
    )
