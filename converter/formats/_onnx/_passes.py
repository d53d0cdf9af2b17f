"""The ONNX rewrite as onnx-ir passes::

    DecomposeConvsPass(rewrites)            each listed Conv -> the convs of its ``Lowered`` program (a quantized
                                            conv -> the same, quantized in its own style: ``_quant``)
    RemoveUnusedNodesPass                   old weight Constant/Identity nodes, main-graph initializers
    RemoveUnusedInitializersPass            initializers of subgraphs (If/Loop/Scan bodies) too
    TopologicalSortPass

``decompose_convs`` runs the cleanup only when the first pass changed something, so "no rewrites" leaves the
model untouched. New nodes follow the adapters' one naming convention (``formats._base.node_name``,
``UniqueNames``). A ConvTranspose becomes a ConvTranspose (its spatial step, with the original strides, pads,
dilations, output padding and output shape) and Convs (its 1×1 steps), see ``algebra._transposed``. Convs inside
model-local functions are reached by inlining the functions first (``_adapter``). The model's IR version and
opset imports are never changed (onnxruntime reads only the IR versions it knows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from ..._errors import ConversionError, one_line
from ...algebra import ConvStep, Lowered, to_transposed
from .._base import Rewrite, UniqueNames, node_name
from . import _quant
from ._convs import constant_weight, named_convs
from ._nodes import int_attr, ints

__all__ = ["DecomposeConvsPass", "RemoveUnusedInitializersPass", "decompose_convs"]

_SPATIAL_ATTRS = ("strides", "pads", "auto_pad", "dilations")
#: A ConvTranspose's spatial step also takes where its output is cut (every channel alike).
_TRANSPOSED_ATTRS = (*_SPATIAL_ATTRS, "output_padding", "output_shape")


def _check_lowered(model: ir.Model, name: str, node: ir.Node, lowered: Lowered) -> _quant.QuantConv | None:
    """Refuse a conv whose weight is not a constant, or a program whose shapes cannot replace it, naming the
    layer and step. Shapes are taken from the node itself, not from the ``ConvLayer`` record. Returns the
    quantized conv where it is one (``_quant``)."""
    quant = _quant.read(node)
    if isinstance(quant, str):
        raise ConversionError(f"layer {name!r}: cannot be rewritten: {quant}")
    if quant is not None:
        groups = int_attr(node, "group", 1)
        wdims = quant.weight.shape
        try:
            lowered.check(wdims[1] * groups, wdims[0], tuple(ints(node, "kernel_shape", wdims[2:])))
        except ValueError as e:
            raise ConversionError(f"layer {name!r}: {e}") from e
        return quant
    if node.op_type not in ("Conv", "ConvTranspose"):
        raise ConversionError(f"layer {name!r}: {node.op_type} cannot be rewritten (not supported yet)")
    if not node.inputs or node.inputs[0] is None:
        raise ConversionError(f"layer {name!r}: cannot be rewritten: the conv has no data input")
    tensor, note = constant_weight(model, node.inputs[1] if len(node.inputs) > 1 else None)
    if tensor is None or len(tensor.shape) < 3:
        raise ConversionError(f"layer {name!r}: cannot be rewritten: {note or 'the weight is not [N, C, *kernel]'}")
    wdims = tuple(tensor.shape.numpy())
    groups = int_attr(node, "group", 1)
    kernel = tuple(ints(node, "kernel_shape", wdims[2:]))
    if node.op_type == "ConvTranspose":
        in_channels, out_channels = wdims[0], wdims[1] * groups
    else:
        in_channels, out_channels = wdims[1] * groups, wdims[0]
    try:
        lowered.check(in_channels, out_channels, kernel)
    except ValueError as e:
        raise ConversionError(f"layer {name!r}: {e}") from e
    return None


class _Names:
    """Unique value and node names across the model (all graphs)."""

    def __init__(self, model: ir.Model) -> None:
        values: set[str] = set()
        nodes: set[str] = set()
        for graph in model.graphs():
            values.update(v.name for v in graph.inputs if v.name)
            values.update(graph.initializers)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.name:
                nodes.add(node.name)
            values.update(v.name for v in node.outputs if v.name)
        self.value = UniqueNames(values)
        self.node = UniqueNames(nodes)



def _replace(model: ir.Model, name: str, node: ir.Node, lowered: Lowered, names: _Names,
             new_bias: np.ndarray | None = None) -> None:
    """Replace one Conv node by the convs of ``lowered``; the last new node produces the conv's output value
    (same name, type and shape), so consumers and graph outputs do not change. ``new_bias`` replaces the
    conv's bias."""
    graph = node.graph
    assert graph is not None
    x = node.inputs[0]
    assert x is not None  # checked by _check_lowered
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    tensor, _ = constant_weight(model, node.inputs[1])
    assert tensor is not None  # checked by _check_lowered
    dtype = tensor.dtype
    kernel = list(ints(node, "kernel_shape", tuple(tensor.shape.numpy())[2:]))
    transposed = node.op_type == "ConvTranspose"
    spatial_attrs = [node.attributes[k] for k in (_TRANSPOSED_ATTRS if transposed else _SPATIAL_ATTRS)
                     if k in node.attributes]
    legacy = model.ir_version < 4  # IR < 4: every initializer must be a main-graph input
    new_nodes: list[ir.Node] = []

    def add_weight(step: ConvStep, array: np.ndarray | None = None, suffix: str = ".weight") -> ir.Value:
        array = np.ascontiguousarray((step.weight if array is None else array).astype(dtype.numpy()))
        wname = names.value(node_name(name, step.name) + suffix)
        value = ir.Value(name=wname, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                         const_value=ir.Tensor(array, dtype=dtype, name=wname))
        target = model.graph if legacy else graph
        target.register_initializer(value)
        if legacy:
            target.inputs.append(value)
        return value

    def conv(step: ConvStep, inp: ir.Value) -> ir.Value:
        # The spatial step of a ConvTranspose is a ConvTranspose (its weight regrouped to [in, out/g, *k]);
        # 1×1 steps are Convs (``algebra._transposed``).
        op = "ConvTranspose" if transposed and step.spatial else "Conv"
        weight = to_transposed(step.weight, step.groups) if op == "ConvTranspose" else None
        inputs: list[ir.Value | None] = [inp, add_weight(step, weight)]
        if step.bias and new_bias is not None:
            inputs.append(add_weight(step, new_bias, ".bias"))
        elif step.bias and bias is not None:
            inputs.append(bias)
        attrs = [ir.AttrInt64("group", step.groups),
                 ir.AttrInt64s("kernel_shape", kernel if step.spatial else [1] * len(kernel))]
        if step.spatial:
            attrs += [ir.Attr(a.name, a.type, a.value) for a in spatial_attrs]
        out = ir.Value(name=names.value(node_name(name, step.name) + "_output"))
        new_nodes.append(ir.Node("", op, inputs, attrs, outputs=[out], name=names.node(node_name(name, step.name))))
        return out

    def join(kind: str, values: list[ir.Value]) -> ir.Value:
        op, attrs = ("Concat", [ir.AttrInt64("axis", 1)]) if kind == "concat" else ("Sum", [])
        out = ir.Value(name=names.value(node_name(name, kind) + "_output"))
        new_nodes.append(ir.Node("", op, values, attrs, outputs=[out], name=names.node(node_name(name, kind))))
        return out

    final = lowered.fold(x, conv, join)
    old = node.outputs[0]
    ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [old], [final])


class DecomposeConvsPass(ir.passes.InPlacePass):
    """Replace listed Conv/ConvTranspose nodes by the depthwise-separable convs of their ``Lowered`` programs.

    Layers are found by name (the names ``find_convs`` gives), so the rewrites may come from another copy of
    the model. Every rewrite is checked before the graph is touched. New nodes are named
    ``<layer>/<step>`` (and ``<layer>/concat``, ``<layer>/sum``; ``_2``… if taken), new initializers
    ``<layer>/<step>.weight``,
    in the weight's original dtype and in the graph that holds the conv. Old weights are left for the cleanup
    passes. Reports ``modified`` only when it replaced something.
    """

    def __init__(self, rewrites: Sequence[Rewrite]) -> None:
        super().__init__()
        self.rewrites = tuple(rewrites)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not self.rewrites:
            return ir.passes.PassResult(model, modified=False)
        convs = dict(named_convs(model))
        todo = []
        for rw in self.rewrites:
            name = rw.layer.name
            node = convs.pop(name, None)
            if node is None:
                raise ConversionError(f"layer {name!r}: no such convolution in the model (or listed twice)")
            quant = _check_lowered(model, name, node, rw.lowered)
            if rw.bias is not None and tuple(np.shape(rw.bias)) != (rw.lowered.steps[-1].weight.shape[0],):
                raise ConversionError(f"layer {name!r}: the replacement bias has shape {np.shape(rw.bias)}")
            todo.append((name, node, rw, quant))
        names = _Names(model)
        for name, node, rw, quant in todo:
            try:
                if quant is not None:
                    _quant.replace(model, name, quant, rw.lowered, names, rw.bias, rw.ranges)
                else:
                    _replace(model, name, node, rw.lowered, names, rw.bias)
            except ConversionError:
                raise
            except Exception as e:
                raise ConversionError(f"layer {name!r}: rewriting the conv failed: {one_line(e, whole=True)}") from e
        return ir.passes.PassResult(model, modified=True)


class RemoveUnusedInitializersPass(ir.passes.InPlacePass):
    """Remove initializers nothing reads, in subgraphs as well (``RemoveUnusedNodesPass`` only cleans the main
    graph's). Initializers that are graph inputs or outputs stay, except in IR < 4, where every initializer is
    listed as a main-graph input by rule rather than to make it overridable."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = 0
        legacy = model.ir_version < 4
        for graph in model.graphs():
            outputs = set(graph.outputs)
            for value in list(graph.initializers.values()):
                if value.uses() or value in outputs:
                    continue
                if value.is_graph_input():
                    if not (legacy and graph is model.graph):
                        continue
                    graph.inputs.remove(value)
                assert value.name is not None
                del graph.initializers[value.name]
                count += 1
        return ir.passes.PassResult(model, modified=bool(count))


def decompose_convs(model: ir.Model, rewrites: Sequence[Rewrite]) -> ir.passes.PassResult:
    """Run ``DecomposeConvsPass`` and, if it changed the model, the cleanup passes (dead nodes, unused
    initializers, topological order).

    Raises:
        ConversionError: a layer is missing, its decomposition does not fit, or the graph could not be edited.
    """
    result = DecomposeConvsPass(rewrites)(model)
    if not result.modified:
        return result
    cleanup = ir.passes.Sequential(RemoveUnusedNodesPass(), RemoveUnusedInitializersPass(), TopologicalSortPass())
    try:
        cleanup(model)
    except Exception as e:
        raise ConversionError(f"cleaning up the rewritten graph failed: {one_line(e, whole=True)}") from e
    return ir.passes.PassResult(model, modified=True)
