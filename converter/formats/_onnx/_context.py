"""A conv's real neighbours cut out of an ONNX model as a small model of their own, for timing the conv's
candidates in context (``latency._candidates``).

What is cut out, around the layer ``L``:

- upstream, the node producing ``L``'s input (an activation, an ``Add``, a ``Concat``, a pool…), and with the
  ``Mul`` of a SiLU its ``Sigmoid`` too; a conv (or another MAC op) upstream is not taken;
- downstream, ``L``'s consumers and theirs, two hops, stopping before the next conv (or MAC op): the
  activation, residual ``Add``, ``Concat``, ``Resize``… that the runtime may fuse with ``L`` or lay out
  around it.

Neighbouring convs are left out on purpose: their time is the same for every candidate and would only dilute
the differences between candidates. What they decide, the layout of the tensors at the cut, is kept: a tensor
the cut consumes but that another node of the model produces is fed through a *stand-in*, a 1×1 depthwise conv
of its channels (a few MACs per element), which the runtime puts in its blocked layout exactly when a real
conv producing those channels would be there (so a residual ``Add`` can fuse into ``L``'s accumulation and a
``Concat`` stays blocked only when every input's channels are block-aligned). A tensor that is a real input of
the model (the stem's image) is fed as it is, in plain NCHW.

Constant inputs (initializers, ``Constant`` nodes, through ``Identity``) become initializers with their real
values; every other tensor the cut consumes becomes a graph input at its concrete inferred shape (the timer
feeds it seeded random values); every tensor the cut produces that the rest of the model (or its outputs) uses
becomes a graph output, so nothing is dead code to the runtime.

Deliberately not cut out: the layer inside a subgraph (If/Loop/Scan bodies), or whose input's shape is unknown
or symbolic, or not floating-point: ``layer_context`` returns the reason and the timer falls back to the
generic micro-model. A neighbour that is a subgraph node, in a custom domain, or has a value of unknown shape or
a non-float run-time input is left out (the cut stops there).

``LayerContext.key`` is a hash of the cut's structure: op types, attributes, input and output shapes and
dtypes, which inputs are constants (with the values of small non-weight constants such as ``Resize`` scales),
how the nodes connect and where the layer is; not weight values nor names, so identical blocks of a model share
their timings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from .._base import LayerContext, UniqueNames
from ._nodes import MAC_OPS, ONNX_DOMAINS, QUANTIZED_CONV_OPS, Dims, is_onnx_op
from ._shapes import value_dims

__all__ = ["layer_context"]

#: Nodes a cut never takes in (their time would dilute the candidates' differences, or they are not plain ops).
_HEAVY = MAC_OPS | frozenset(QUANTIZED_CONV_OPS)
#: Constants up to this many elements that are not a conv's weight or bias are hashed by value (scales, pads).
_SMALL = 16
_DOWNSTREAM_HOPS = 2
#: Ops whose outputs have their first input's dtype (a value without a declared type gets its type from these).
_SAME_TYPE = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Ceil", "Clip", "Concat", "Conv", "ConvTranspose",
    "DepthToSpace", "Div", "Dropout", "Elu", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
    "LayerNormalization", "LeakyRelu", "Log", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mul", "Neg",
    "Pad", "Pow", "PRelu", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize",
    "Round", "Selu", "Sigmoid", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
    "Sum", "Tanh", "Tile", "Transpose", "Unsqueeze", "Upsample",
})


def _const(value: ir.Value) -> ir.TensorProtocol | None:
    """The constant behind ``value`` (initializer, Constant node, through Identity), or None."""
    for _ in range(16):
        if value.const_value is not None:
            return value.const_value
        producer = value.producer()
        if producer is None:
            return None
        if is_onnx_op(producer, frozenset({"Identity"})) and producer.inputs and producer.inputs[0] is not None:
            value = producer.inputs[0]
            continue
        if is_onnx_op(producer, frozenset({"Constant"})):
            try:
                return ir.convenience.get_const_tensor(value)
            except ValueError:
                return None
        return None
    return None


class _Cut:
    """The selection: nodes of the main graph, in graph order, with what each value is (constant, fed, made)."""

    def __init__(self, model: ir.Model, table: Mapping[str, Dims | None]) -> None:
        self.model = model
        self.table = table
        self.order = {id(n): i for i, n in enumerate(model.graph)}
        self.nodes: dict[int, ir.Node] = {}
        self._types: dict[int, ir.DataType | None] = {}

    def dtype(self, value: ir.Value) -> ir.DataType | None:
        """The value's element type: declared, or carried from the first input through ops that keep it (a
        loaded model declares only its inputs' and outputs' types); None where that does not tell."""
        chain: list[ir.Value] = []
        found: ir.DataType | None = None
        v: ir.Value | None = value
        while v is not None:
            if id(v) in self._types:
                found = self._types[id(v)]
                break
            if v.dtype is not None:
                found = v.dtype
                break
            chain.append(v)
            p = v.producer()
            if (p is None or not is_onnx_op(p, _SAME_TYPE) or not p.inputs
                    or (v.index() != 0 and p.op_type != "Split")):
                break
            v = p.inputs[0]
        for w in chain:
            self._types[id(w)] = found
        return found

    def dims(self, value: ir.Value) -> tuple[int, ...] | None:
        return value_dims(value, self.table)

    def why_not(self, node: ir.Node) -> str | None:
        """Why ``node`` cannot be in a cut (None: it can)."""
        if node.graph is not self.model.graph:
            return "it is inside a subgraph (If/Loop/Scan body)"
        if node.domain not in ONNX_DOMAINS:
            return f"{node.op_type} is in the custom domain {node.domain!r}"
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return f"{node.op_type} holds a subgraph"
        for v in node.inputs:
            if v is None or _const(v) is not None:
                continue
            if not v.name:
                return "an input has no name"
            dims = self.dims(v)
            if dims is None:
                return f"the shape of {v.name!r} is unknown or symbolic"
            dtype = self.dtype(v)
            if dtype is None or not dtype.is_floating_point():
                return f"{v.name!r} is {dtype or 'of unknown type'}, not a floating-point tensor"
        for v in node.outputs:
            if v.name and v.uses() and self.dims(v) is None:
                return f"the shape of {v.name!r} is unknown or symbolic"
        return None

    def take(self, node: ir.Node | None) -> bool:
        if node is None or id(node) in self.nodes or is_onnx_op(node, _HEAVY) or self.why_not(node) is not None:
            return False
        self.nodes[id(node)] = node
        return True

    def sorted(self) -> list[ir.Node]:
        return sorted(self.nodes.values(), key=lambda n: self.order[id(n)])


def _silu_sigmoid(mul: ir.Node) -> ir.Node | None:
    """The Sigmoid of ``Mul(a, Sigmoid(a))`` (SiLU), or None."""
    if not is_onnx_op(mul, frozenset({"Mul"})) or len(mul.inputs) != 2:
        return None
    for i, v in enumerate(mul.inputs):
        p = v.producer() if v is not None else None
        if p is not None and is_onnx_op(p, frozenset({"Sigmoid"})) and p.inputs and p.inputs[0] is mul.inputs[1 - i]:
            return p
    return None


def _select(cut: _Cut, layer: ir.Node) -> None:
    cut.nodes[id(layer)] = layer
    x = layer.inputs[0]
    up = x.producer() if x is not None else None
    if up is not None and cut.take(up):
        sig = _silu_sigmoid(up)
        if sig is not None:
            cut.take(sig)
    frontier = [layer]
    for _ in range(_DOWNSTREAM_HOPS):
        nxt = []
        for node in frontier:
            for out in node.outputs:
                for use in out.uses():
                    if cut.take(use.node):
                        nxt.append(use.node)
        frontier = nxt


def layer_context(model: ir.Model, layer_name: str, node: ir.Node,
                  table: Mapping[str, Dims | None]) -> LayerContext | str:
    """Cut ``node`` (the conv ``find_convs`` calls ``layer_name``) and its real neighbours out of ``model``.

    Args:
        model: the model (not edited).
        layer_name: the layer's name; the conv keeps it in the cut, where ``find_convs`` finds it by it.
        node: the conv.
        table: value shapes for the input shapes (batch included) the cut is to run at.

    Returns:
        The cut (see the module docstring), or why there is none.
    """
    cut = _Cut(model, table)
    why = cut.why_not(node)
    if why is not None:
        return f"layer {layer_name!r}: {why}"
    if not node.inputs or node.inputs[0] is None or _const(node.inputs[0]) is not None:
        return f"layer {layer_name!r}: its input is not a run-time tensor"
    if not node.outputs or cut.dims(node.outputs[0]) is None:
        return f"layer {layer_name!r}: the shape of its output is unknown or symbolic"
    _select(cut, node)
    nodes = cut.sorted()
    made = {id(v) for n in nodes for v in n.outputs}
    inside = {id(n) for n in nodes}

    consts: dict[str, ir.TensorProtocol] = {}
    fed: dict[str, ir.Value] = {}
    for n in nodes:
        for v in n.inputs:
            if v is None or id(v) in made:
                continue
            t = _const(v)
            if t is not None:
                consts.setdefault(v.name or "", t)
            else:
                fed.setdefault(v.name or "", v)
    outputs = [v for n in nodes for v in n.outputs
               if v.name and (v.is_graph_output() or any(id(u.node) not in inside for u in v.uses()))]
    return _build(model, cut, nodes, node, layer_name, consts, fed, outputs)


def _build(model: ir.Model, cut: _Cut, nodes: list[ir.Node], layer: ir.Node, layer_name: str,
           consts: dict[str, ir.TensorProtocol], fed: dict[str, ir.Value], outputs: list[ir.Value]) -> LayerContext:
    names = UniqueNames([layer_name, *(v.name for n in nodes for v in (*n.inputs, *n.outputs) if v is not None)])
    protos: list[onnx.NodeProto] = []
    inputs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    standins: list[tuple[str, int, int]] = []  # (fed value, channels, rank)
    renamed: dict[str, str] = {}
    for name, v in fed.items():
        dims = cut.dims(v)
        assert dims is not None
        dtype = cut.dtype(v)
        assert dtype is not None
        if v.producer() is None or len(dims) < 3:  # a real input of the model: as it is
            inputs[name] = (dims, np.dtype(dtype.numpy()))
            continue
        feed = names(f"{name}/feed")
        renamed[name] = feed
        inputs[feed] = (dims, np.dtype(dtype.numpy()))
        standins.append((name, int(dims[1]), len(dims)))
    for name, channels, rank in standins:
        w = names(f"{name}/standin_w")
        consts[w] = ir.Tensor(np.ones((channels, 1, *([1] * (rank - 2))), dtype=inputs[renamed[name]][1]))
        protos.append(helper.make_node("Conv", [renamed[name], w], [name], name=names(f"{name}/standin"),
                                       group=channels, kernel_shape=[1] * (rank - 2)))
    for n in nodes:
        p = ir.serde.serialize_node(n)
        p.name = layer_name if n is layer else names(n.name or n.op_type)
        p.ClearField("metadata_props")
        p.doc_string = ""
        protos.append(p)
    inits = []
    for name, t in consts.items():
        tp = ir.serde.serialize_tensor(t)
        tp.name = name
        tp.ClearField("doc_string")
        inits.append(tp)
    graph = helper.make_graph(
        protos, "context",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(dt), list(d))
         for k, (d, dt) in inputs.items()],
        [helper.make_tensor_value_info(v.name, int(cut.dtype(v) or 0), list(cut.dims(v) or [])) for v in outputs],
        inits)
    opsets = [helper.make_opsetid(d, v) for d, v in model.opset_imports.items() if d in ONNX_DOMAINS]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    return LayerContext(key=_key(proto, layer_name, consts), layer=layer_name, inputs=inputs,
                        ops=tuple(p.op_type for p in protos), write=lambda folder: _write(proto, folder))


def _write(proto: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / "context.onnx"
    dest.write_bytes(proto.SerializeToString())
    return dest


def _key(proto: onnx.ModelProto, layer_name: str, consts: Mapping[str, ir.TensorProtocol]) -> str:
    """The structural hash of a cut (see the module docstring): values renamed by first appearance, node names
    dropped, weights by dtype and shape only."""
    g = proto.graph
    canon: dict[str, str] = {"": ""}

    def c(name: str) -> str:
        return canon.setdefault(name, f"v{len(canon)}")

    weights = {i for n in g.node if n.op_type in _HEAVY for i in n.input[1:]}
    parts = [f"opset {sorted((o.domain, o.version) for o in proto.opset_import)}"]
    for vi in g.input:
        parts.append(f"in {c(vi.name)} {vi.type.tensor_type.elem_type} "
                     f"{[d.dim_value for d in vi.type.tensor_type.shape.dim]}")
    for name, t in consts.items():  # in the order the cut's nodes first use them
        desc = f"const {c(name)} {t.dtype} {list(t.shape.numpy())}"
        if name not in weights and (not t.dtype.is_floating_point() or t.size <= _SMALL):
            desc += " " + hashlib.sha256(np.ascontiguousarray(t.numpy()).tobytes()).hexdigest()[:16]
        parts.append(desc)
    for n in g.node:
        attrs = sorted(a.SerializeToString(deterministic=True).hex() for a in n.attribute)
        mark = "*" if n.name == layer_name else ""
        parts.append(f"{mark}{n.domain}:{n.op_type} {[c(i) for i in n.input]}->{[c(o) for o in n.output]} {attrs}")
    for vi in g.output:
        parts.append(f"out {c(vi.name)} {[d.dim_value for d in vi.type.tensor_type.shape.dim]}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
