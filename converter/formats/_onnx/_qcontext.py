"""A quantized conv cut out of its model *with its quantization*, for timing its candidates on onnxruntime's
integer kernels (``_context`` does this for float convs; what is fast in int8 is not what is fast in float).

What is cut out, by style (``_quant``):

- QDQ: the input's ``DequantizeLinear``, the weight's and bias's, the ``Conv`` and the ``QuantizeLinear`` of its
  output: onnxruntime fuses them into one int8 conv, exactly as in the model (and each candidate's new convs,
  which the rewrite emits with their own Q/DQ pairs, the same way). The quantized input is fed as it is.
- QOperator: the ``QLinearConv``, fed its integer input.
- Dynamic: ``DynamicQuantizeLinear → ConvInteger → Cast → Mul (→ Add)`` with the scale's ``Mul``, fed the float
  input.

Fed tensors get their inferred shapes and their own integer or float types (the timer feeds seeded random
values); constants (scales, zero points, weights) are initializers with their real values. The cut's key is
``_context``'s structural hash. Where a shape is unknown the reason is returned and the timer falls back to the
generic (float) micro-model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from .._base import LayerContext, UniqueNames
from ._context import _key, _write
from ._nodes import ONNX_DOMAINS, Dims
from ._quant import MS_DOMAIN, QuantConv, _const
from ._shapes import value_dims

__all__ = ["quant_context"]


def _nodes(qc: QuantConv) -> list[ir.Node] | str:
    node = qc.node
    if qc.style == "QDQ":
        x = node.inputs[0]
        out = [p for p in (v.producer() if v is not None else None for v in node.inputs) if p is not None]
        out.append(node)
        out += [u.node for u in node.outputs[0].uses()
                if u.node.op_type == "QuantizeLinear" and u.node.domain in (*ONNX_DOMAINS, MS_DOMAIN)][:1]
        return out if x is not None else "no input"
    if qc.style == "QLinearConv":
        return [node]
    assert qc.dynamic_input is not None
    dql = qc.dynamic_input[0].producer()
    cast, mul = qc.nodes[1], qc.nodes[2]
    scales = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    sp = scales.producer() if scales is not None else None
    return [n for n in (dql, sp) if n is not None] + list(qc.nodes)


def quant_context(model: ir.Model, layer_name: str, qc: QuantConv,
                  table: Mapping[str, Dims | None]) -> LayerContext | str:
    """The cut of the quantized conv ``qc`` (see the module docstring), or why there is none."""
    if qc.node.graph is not model.graph:
        return f"layer {layer_name!r}: it is inside a subgraph (If/Loop/Scan body)"
    nodes = _nodes(qc)
    if isinstance(nodes, str):
        return f"layer {layer_name!r}: {nodes}"
    order = {id(n): i for i, n in enumerate(model.graph)}
    nodes = sorted(dict.fromkeys(nodes), key=lambda n: order.get(id(n), 0))
    made = {id(v) for n in nodes for v in n.outputs}
    inside = {id(n) for n in nodes}
    names = UniqueNames([layer_name, *(v.name for n in nodes for v in (*n.inputs, *n.outputs) if v is not None)])
    consts: dict[str, ir.TensorProtocol] = {}
    inits: list[onnx.TensorProto] = []
    inputs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for n in nodes:
        for v in n.inputs:
            if v is None or id(v) in made or (v.name or "") in consts or (v.name or "") in inputs:
                continue
            arr = _const(v)
            if arr is not None:
                consts[v.name or ""] = ir.Tensor(np.asarray(arr))
                inits.append(numpy_helper.from_array(np.asarray(arr), v.name or ""))
                continue
            dims = value_dims(v, table)
            if dims is None:
                return f"layer {layer_name!r}: the shape of {v.name!r} is unknown or symbolic"
            dtype = v.dtype
            if dtype is None and qc.x is not None and qc.style != "ConvInteger":
                dtype = qc.x.dtype  # the quantized input (its producer's type is not declared)
            if dtype is None:
                dtype = ir.DataType.FLOAT
            inputs[v.name or ""] = (dims, np.dtype(dtype.numpy()))
    outputs = [v for n in nodes for v in n.outputs
               if v.name and (v.is_graph_output() or any(id(u.node) not in inside for u in v.uses()))]
    if not outputs:
        outputs = [nodes[-1].outputs[0]]
    protos = []
    for n in nodes:
        p = ir.serde.serialize_node(n)
        p.name = layer_name if n is qc.node else names(n.name or n.op_type)
        p.ClearField("metadata_props")
        p.doc_string = ""
        protos.append(p)
    out_infos = []
    for v in outputs:
        dtype = v.dtype
        if dtype is None:
            dtype = ir.DataType.FLOAT
            if qc.style == "QLinearConv" or (qc.style == "QDQ" and v is not qc.output):
                q = qc.y or qc.x
                dtype = q.dtype if q is not None else dtype
        out_infos.append(helper.make_tensor_value_info(v.name, int(dtype), None))
    graph = helper.make_graph(
        protos, "context",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(dt), list(d))
         for k, (d, dt) in inputs.items()],
        out_infos, inits)
    opsets = [helper.make_opsetid(d, v) for d, v in model.opset_imports.items() if d in (*ONNX_DOMAINS, MS_DOMAIN)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    return LayerContext(key=_key(proto, layer_name, consts), layer=layer_name, inputs=inputs,
                        ops=tuple(p.op_type for p in protos), write=lambda folder: _write(proto, folder))
