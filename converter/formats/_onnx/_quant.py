"""Quantized convolutions of ONNX models: reading the three patterns onnxruntime's quantizer writes, and writing
a decomposed layer back in the same pattern, so that an int8 model stays an int8 model.

The three styles, as read (``read``) and as written (``replace``):

- **QDQ** (``quantize_static``, ``QuantFormat.QDQ``): ``DequantizeLinear(x_q) → Conv(·, DequantizeLinear(W_q),
  DequantizeLinear(b_int32)) → QuantizeLinear``. Each new conv gets its own ``DequantizeLinear`` of an int8
  weight (symmetric, per output channel, axis 0) and of an int32 bias; every new intermediate tensor gets a
  ``QuantizeLinear → DequantizeLinear`` pair with its own scale and zero point, so onnxruntime fuses each new
  conv into an int8 kernel as it did the original. The last new conv produces the original conv's output (the
  original ``QuantizeLinear`` after it stays).
- **QOperator** (``QuantFormat.QOperator``): ``QLinearConv(x_q, s_x, z_x, W_q, s_w, z_w, s_y, z_y, b_int32)``.
  Each new conv is a ``QLinearConv``; the last one keeps the original output scale and zero point. Branches that
  are concatenated share one scale and zero point, so the ``Concat`` of their integers is exact; a ``Sum`` of
  branches is done as ``DequantizeLinear → Sum → QuantizeLinear``.
- **Dynamic** (``quantize_dynamic``): ``DynamicQuantizeLinear(x) → ConvInteger(x_q, W_q, z_x, z_w) → Cast →
  Mul(s_x · s_w) (→ Add(bias))``. Each new conv is the same pattern (its input quantized at run time by its
  own ``DynamicQuantizeLinear``; the first reuses the original one), so no activation parameters are needed.

The new weights are the float factors requantized (``algebra.symmetric_weight``) in the original weight's
integer type; activation ranges of new tensors come from the ``Rewrite`` (calibrated) or, without them, from
``algebra.intermediate_intervals`` on the input's quantized range (data-free). A pattern that is not one of
these (a weight-only QDQ conv whose input is float, blocked quantization, a ``ConvInteger`` whose output is not
rescaled as onnxruntime does) is not converted, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ...algebra import (
    ConvStep,
    Lowered,
    activation_params,
    bias_int32,
    dequantize,
    intermediate_intervals,
    scaled_ranges,
    symmetric_weight,
    type_range,
)
from .._base import node_name
from ._nodes import ONNX_DOMAINS, int_attr, is_onnx_op

__all__ = ["QParams", "QuantConv", "is_quantized", "read", "replace"]

MS_DOMAIN = "com.microsoft"
_DQ = frozenset({"DequantizeLinear"})
_Q = frozenset({"QuantizeLinear"})
_INT_TYPES = {
    ir.DataType.INT8: "int8", ir.DataType.UINT8: "uint8", ir.DataType.INT16: "int16", ir.DataType.UINT16: "uint16",
    ir.DataType.INT4: "int4", ir.DataType.UINT4: "uint4",
}


@dataclass
class QParams:
    """A quantization's parameters: scale and zero point (scalars, or per channel along ``axis``), the integer
    type, and the graph values holding them (reused by the rewrite)."""

    scale: np.ndarray
    zero: np.ndarray
    dtype: ir.DataType
    axis: int | None = None
    values: tuple[ir.Value | None, ir.Value | None] = (None, None)

    @property
    def q_range(self) -> tuple[int, int]:
        return type_range(_INT_TYPES[self.dtype])

    def real_range(self) -> tuple[float, float]:
        """The float range the integers can represent (per-tensor parameters)."""
        lo, hi = self.q_range
        s, z = float(np.ravel(self.scale)[0]), float(np.ravel(self.zero)[0])
        return s * (lo - z), s * (hi - z)


@dataclass
class QuantConv:
    """A quantized conv as read by ``read``.

    Attributes:
        style: ``QDQ``, ``QLinearConv`` or ``ConvInteger``.
        node: the conv node (``Conv`` of a QDQ pattern, ``QLinearConv``, ``ConvInteger``).
        weight: the dequantized weight ``[N, C, *kernel]`` (float32).
        bias: the dequantized bias (float32), or None.
        w_type: the weight's integer type (the new weights get the same).
        x: the input's quantization (QDQ, QLinearConv), None for dynamic quantization.
        y: the output's (QLinearConv only).
        output: the value the replacement must produce (the conv's output; the rescaled output of a ConvInteger).
        nodes: the nodes the replacement removes.
        dynamic_input: the ``DynamicQuantizeLinear`` outputs the first new ConvInteger reuses.
        q_domain: the domain of the weight's ``DequantizeLinear`` (QDQ), which the new Q/DQ nodes take.
    """

    style: str
    node: ir.Node
    weight: np.ndarray
    bias: np.ndarray | None
    w_type: ir.DataType
    x: QParams | None
    output: ir.Value
    nodes: list[ir.Node]
    y: QParams | None = None
    dynamic_input: tuple[ir.Value, ir.Value, ir.Value] | None = field(default=None, repr=False)
    q_domain: str = ""


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The constant array behind a value (initializer, Constant node, through Identity and a constant Reshape)."""
    for _ in range(16):
        if value is None:
            return None
        if value.const_value is not None and not value.is_graph_input():
            return np.asarray(value.const_value.numpy())
        p = value.producer()
        if p is None:
            return None
        if is_onnx_op(p, frozenset({"Identity"})):
            value = p.inputs[0] if p.inputs else None
            continue
        if is_onnx_op(p, frozenset({"Constant"})):
            try:
                t = ir.convenience.get_const_tensor(value)
            except ValueError:
                return None
            return None if t is None else np.asarray(t.numpy())
        if is_onnx_op(p, frozenset({"Reshape"})) and len(p.inputs) >= 2:
            a, shape = _const(p.inputs[0]), _const(p.inputs[1])
            return None if a is None or shape is None else a.reshape([int(d) for d in shape])
        return None
    return None


def _is_q(node: ir.Node, ops: frozenset[str]) -> bool:
    """``QuantizeLinear``/``DequantizeLinear`` of ONNX, or onnxruntime's own (``com.microsoft``: int4, int16
    before opset 21), which the rewrite writes in the same domain."""
    return node.op_type in ops and node.domain in (*ONNX_DOMAINS, MS_DOMAIN)


def _dq_params(node: ir.Node) -> QParams | str:
    """The parameters of a ``DequantizeLinear``/``QuantizeLinear`` node whose scale and zero point are constants."""
    if "block_size" in node.attributes and int_attr(node, "block_size", 0):
        return f"{node.op_type} {node.name!r} uses blocked quantization"
    scale = _const(node.inputs[1] if len(node.inputs) > 1 else None)
    zv = node.inputs[2] if len(node.inputs) > 2 else None
    zero = _const(zv) if zv is not None else None
    if scale is None or (zv is not None and zero is None):
        return f"the scale or zero point of {node.op_type} {node.name!r} is not a constant"
    dtype = zv.dtype if zv is not None and zv.dtype is not None else None
    if dtype is None and zv is not None and zv.const_value is not None:
        dtype = zv.const_value.dtype
    if node.op_type == "DequantizeLinear" and node.inputs[0] is not None:
        q = node.inputs[0]
        dtype = dtype or q.dtype or (q.const_value.dtype if q.const_value is not None else None)
    if dtype is None and zv is None:
        dtype = ir.DataType.UINT8  # the ONNX default when the zero point is omitted
    if dtype not in _INT_TYPES and dtype != ir.DataType.INT32:
        return f"{node.op_type} {node.name!r} has type {dtype}, not an integer type sepconv requantizes"
    zero = np.zeros_like(scale, dtype=np.int64) if zero is None else zero.astype(np.int64)
    axis = int_attr(node, "axis", 1) if np.ndim(scale) == 1 and np.size(scale) > 1 else None
    return QParams(scale.astype(np.float32), zero, dtype, axis, (node.inputs[1], zv))


def _qdq(node: ir.Node) -> QuantConv | str | None:
    """A ``Conv`` whose weight is a constant ``DequantizeLinear``: the QDQ pattern (None: not quantized)."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    wp = w.producer() if w is not None else None
    if wp is None or not _is_q(wp, _DQ):
        return None
    wq = _const(wp.inputs[0])
    params = _dq_params(wp)
    if wq is None:
        return "QDQ conv whose quantized weight is not a constant"
    if isinstance(params, str):
        return params
    if params.dtype not in _INT_TYPES:
        return f"QDQ conv with a weight of type {params.dtype}"
    if params.axis not in (None, 0):
        return f"QDQ conv whose weight is quantized along axis {params.axis}, not per output channel"
    weight = dequantize(wq, params.scale, params.zero, 0 if params.axis is not None else None)
    x = node.inputs[0]
    xp = x.producer() if x is not None else None
    if xp is None or not _is_q(xp, _DQ):
        return "QDQ conv whose input is float (weight-only quantization): its int8 kernel needs a quantized input"
    xparams = _dq_params(xp)
    if isinstance(xparams, str):
        return xparams
    if xparams.axis is not None or xparams.dtype not in _INT_TYPES:
        return "QDQ conv whose input is quantized per channel"
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        b = node.inputs[2]
        bp = b.producer()
        if bp is not None and _is_q(bp, _DQ):
            bq, bparams = _const(bp.inputs[0]), _dq_params(bp)
            if bq is None or isinstance(bparams, str):
                return "QDQ conv whose bias is not a constant"
            bias = dequantize(bq, bparams.scale, bparams.zero, 0 if bparams.axis is not None else None)
        else:
            bias = _const(b)
            if bias is None:
                return "QDQ conv whose bias is not a constant"
            bias = bias.astype(np.float32)
    yparams = None
    qs = [u.node for u in node.outputs[0].uses() if _is_q(u.node, _Q)]
    if qs:
        got = _dq_params(qs[0])
        yparams = got if isinstance(got, QParams) and got.axis is None else None
    return QuantConv("QDQ", node, weight, bias, params.dtype, xparams, node.outputs[0], [node], y=yparams,
                     q_domain=wp.domain)


def _qlinear(node: ir.Node) -> QuantConv | str:
    ins = list(node.inputs) + [None] * (9 - len(node.inputs))
    x = _params_of(ins[1], ins[2], ins[0])
    w = _params_of(ins[4], ins[5], ins[3])
    y = _params_of(ins[6], ins[7], node.outputs[0])
    wq = _const(ins[3])
    if wq is None:
        return "QLinearConv whose weight is not a constant"
    for p in (x, w, y):
        if isinstance(p, str):
            return p
    assert isinstance(x, QParams) and isinstance(w, QParams) and isinstance(y, QParams)
    if np.size(x.scale) != 1 or np.size(y.scale) != 1:
        return "QLinearConv with per-channel activation parameters"
    w_axis = 0 if np.size(w.scale) > 1 else None
    w.axis = w_axis
    weight = dequantize(wq, w.scale, w.zero, w_axis)
    bias = None
    if ins[8] is not None:
        bq = _const(ins[8])
        if bq is None:
            return "QLinearConv whose bias is not a constant"
        bias = (bq.astype(np.float64) * float(np.ravel(x.scale)[0])
                * np.asarray(w.scale, np.float64).reshape(-1)).astype(np.float32)
    return QuantConv("QLinearConv", node, weight, bias, w.dtype, x, node.outputs[0], [node], y=y)


def _params_of(scale: ir.Value | None, zero: ir.Value | None, typed: ir.Value | None) -> QParams | str:
    s = _const(scale)
    z = _const(zero) if zero is not None else None
    if s is None or (zero is not None and z is None):
        return "QLinearConv whose scales or zero points are not constants"
    dtype = None
    for v in (zero, typed):
        if v is not None:
            dtype = v.dtype or (v.const_value.dtype if v.const_value is not None else None)
        if dtype is not None:
            break
    if dtype not in _INT_TYPES:
        return f"QLinearConv with type {dtype}"
    zz = np.zeros_like(s, dtype=np.int64) if z is None else z.astype(np.int64)
    return QParams(s.astype(np.float32), zz, dtype, None, (scale, zero))


def _single_use(value: ir.Value, ops: frozenset[str]) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    n = uses[0].node
    return n if is_onnx_op(n, ops) else None


def _dynamic(node: ir.Node) -> QuantConv | str:
    why = "ConvInteger not in the DynamicQuantizeLinear → ConvInteger → Cast → Mul pattern of onnxruntime's dynamic " \
          "quantization"
    ins = list(node.inputs) + [None] * (4 - len(node.inputs))
    xp = ins[0].producer() if ins[0] is not None else None
    if xp is None or not is_onnx_op(xp, frozenset({"DynamicQuantizeLinear"})) or ins[2] is not xp.outputs[2]:
        return why
    wq = _const(ins[1])
    wz = _const(ins[3]) if ins[3] is not None else np.zeros((), np.int64)
    if wq is None or wz is None:
        return "ConvInteger whose weight is not a constant"
    cast = _single_use(node.outputs[0], frozenset({"Cast"}))
    mul = _single_use(cast.outputs[0], frozenset({"Mul"})) if cast is not None else None
    if mul is None:
        return why
    scales = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    sp = scales.producer() if scales is not None else None
    if sp is None or not is_onnx_op(sp, frozenset({"Mul"})):
        return why
    x_scale = xp.outputs[1]
    other = sp.inputs[1] if sp.inputs[0] is x_scale else sp.inputs[0] if sp.inputs[1] is x_scale else None
    w_scale = _const(other)
    if w_scale is None:
        return why
    w_type = ins[1].dtype or (ins[1].const_value.dtype if ins[1].const_value is not None else None)
    if w_type not in _INT_TYPES:
        return f"ConvInteger with a weight of type {w_type}"
    n = wq.shape[0]
    axis = 0 if np.size(w_scale) > 1 else None
    zero = np.ravel(wz) if np.size(wz) > 1 else np.ravel(wz)[0]
    weight = dequantize(wq, np.ravel(w_scale) if axis == 0 else np.ravel(w_scale)[0], zero,
                        0 if np.size(wz) > 1 or axis == 0 else None)
    nodes, output, bias = [node, cast, mul], mul.outputs[0], None
    add = _single_use(mul.outputs[0], frozenset({"Add"}))
    if add is not None:
        b = _const(add.inputs[1] if add.inputs[0] is mul.outputs[0] else add.inputs[0])
        if b is not None and b.size == n:
            bias, output = b.reshape(n).astype(np.float32), add.outputs[0]
            nodes.append(add)
    return QuantConv("ConvInteger", node, weight, bias, w_type, None, output, nodes,
                     dynamic_input=(xp.outputs[0], xp.outputs[1], xp.outputs[2]))


def read(node: ir.Node) -> QuantConv | str | None:
    """The quantized conv ``node`` is part of: a ``QuantConv``, the reason it cannot be converted (str), or None
    for a float conv."""
    if is_onnx_op(node, frozenset({"QLinearConv"})):
        return _qlinear(node)
    if is_onnx_op(node, frozenset({"ConvInteger"})):
        return _dynamic(node)
    if is_onnx_op(node, frozenset({"Conv"})):
        return _qdq(node)
    return None


def is_quantized(node: ir.Node) -> bool:
    """Whether ``node`` is a quantized conv (convertible or not)."""
    return read(node) is not None


# --- writing ---------------------------------------------------------------------------------------------------

class _Writer:
    """Emits nodes and constants for one layer's replacement."""

    def __init__(self, model: ir.Model, graph: ir.Graph, layer: str, names: object) -> None:
        self.model, self.graph, self.layer, self.names = model, graph, layer, names
        self.nodes: list[ir.Node] = []
        self.legacy = model.ir_version < 4

    def const(self, step: str, suffix: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
        name = self.names.value(node_name(self.layer, step) + suffix)  # type: ignore[attr-defined]
        array = np.asarray(array, order="C")  # ascontiguousarray would make a per-tensor scale 1-D
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                         const_value=ir.Tensor(array, dtype=dtype, name=name))
        target = self.model.graph if self.legacy else self.graph
        target.register_initializer(value)
        if self.legacy:
            target.inputs.append(value)
        return value

    def node(self, op: str, step: str, inputs: list[ir.Value | None], attrs: list[ir.Attr] | None = None,
             outputs: int = 1, out: ir.Value | None = None, domain: str = "") -> list[ir.Value]:
        nm = self.names.node(node_name(self.layer, step))  # type: ignore[attr-defined]
        vals = [out] if out is not None else [
            ir.Value(name=self.names.value(nm + ("_output" if i == 0 else f"_output_{i}")))  # type: ignore
            for i in range(outputs)]
        self.nodes.append(ir.Node(domain, op, inputs, attrs or [], outputs=vals, name=nm))
        return vals


def _np_type(dtype: ir.DataType) -> np.dtype:
    return np.dtype(dtype.numpy())


def _weight(w: _Writer, step: ConvStep, w_type: ir.DataType) -> tuple[ir.Value, ir.Value, ir.Value, np.ndarray]:
    """The step's requantized weight, scale [N] and zero point [N] as constants; and the scale as an array."""
    q, scale, zero = symmetric_weight(step.weight, type_range(_INT_TYPES[w_type]))
    qv = w.const(step.name, ".weight_quantized", q.astype(_np_type(w_type)), w_type)
    sv = w.const(step.name, ".weight_scale", scale.astype(np.float32), ir.DataType.FLOAT)
    zv = w.const(step.name, ".weight_zero_point", zero.astype(_np_type(w_type)), w_type)
    return qv, sv, zv, scale


def _ranges_for(qc: QuantConv, lowered: Lowered, bias: np.ndarray | None,
                ranges: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    """Calibrated ranges where given, data-free intervals for the rest; branches that are concatenated share
    the range of the concatenation."""
    assert qc.x is not None
    lo, hi = qc.x.real_range()
    got = intermediate_intervals(lowered, lo, hi, bias)
    if qc.y is not None:
        got = scaled_ranges(lowered, qc.weight, int_attr(qc.node, "group", 1), qc.y.real_range(), got)
    if ranges:
        got.update({k: v for k, v in ranges.items() if k in got})
    if lowered.join == "concat":
        ends = [b[-1].name for b in lowered.branches]
        parts = [got[k] for k in ends if k in got] + ([got["join"]] if "join" in got else [])
        if parts:
            union = (min(p[0] for p in parts), max(p[1] for p in parts))
            for k in ends:
                got[k] = union
            if "join" in got:
                got["join"] = union
    return got


def replace(model: ir.Model, layer: str, qc: QuantConv, lowered: Lowered, names: object,
            new_bias: np.ndarray | None = None, ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
    """Replace the quantized conv ``qc`` by the convs of ``lowered`` in its own style (module docstring);
    ``new_bias`` replaces its bias, ``ranges`` (name of a step or ``join`` → ``(lo, hi)``) give the new
    intermediate tensors' ranges (else the data-free intervals)."""
    node = qc.node
    graph = node.graph
    assert graph is not None
    bias = new_bias if new_bias is not None else qc.bias
    w = _Writer(model, graph, layer, names)
    spatial = {k: node.attributes[k] for k in ("strides", "pads", "auto_pad", "dilations") if k in node.attributes}
    kernel = [int(d) for d in next(s for s in lowered.steps if s.spatial).weight.shape[2:]]
    final = lowered.tail if lowered.tail is not None else (
        lowered.branches[0][-1] if lowered.join == "none" else None)

    def attrs(step: ConvStep) -> list[ir.Attr]:
        out = [ir.AttrInt64("group", step.groups),
               ir.AttrInt64s("kernel_shape", kernel if step.spatial else [1] * len(kernel))]
        if step.spatial:
            out += [ir.Attr(a.name, a.type, a.value) for a in spatial.values()]
        return out

    if qc.style == "ConvInteger":
        last = _dynamic_program(w, qc, lowered, bias, attrs, final)
    else:
        table = _ranges_for(qc, lowered, bias, ranges)
        if qc.style == "QDQ":
            last = _qdq_program(w, qc, lowered, bias, attrs, final, table)
        else:
            last = _qlinear_program(w, qc, lowered, bias, attrs, final, table)
    ir.convenience.replace_nodes_and_values(graph, node, qc.nodes, w.nodes, [qc.output], [last])


def _act(w: _Writer, key: str, table: Mapping[str, tuple[float, float]], x: QParams
         ) -> tuple[ir.Value, ir.Value, float]:
    """Scale and zero point constants for the tensor ``key`` (in the type of the layer's input)."""
    s, z = activation_params(*table[key], x.q_range)
    sv = w.const(key, "_scale", np.array(s, np.float32), ir.DataType.FLOAT)
    zv = w.const(key, "_zero_point", np.array(z, _np_type(x.dtype)), x.dtype)
    return sv, zv, s


def _qdq_program(w: _Writer, qc: QuantConv, lowered: Lowered, bias: np.ndarray | None, attrs, final,
                 table: Mapping[str, tuple[float, float]]) -> ir.Value:
    assert qc.x is not None
    x_scale = float(np.ravel(qc.x.scale)[0])

    def requant(key: str, v: ir.Value) -> tuple[ir.Value, float]:
        sv, zv, s = _act(w, key, table, qc.x)  # type: ignore[arg-type]
        (q,) = w.node("QuantizeLinear", f"{key}_quantize", [v, sv, zv], domain=qc.q_domain)
        (dq,) = w.node("DequantizeLinear", f"{key}_dequantize", [q, sv, zv], domain=qc.q_domain)
        return dq, s

    def step(s: ConvStep, v: tuple[ir.Value, float]) -> tuple[ir.Value, float]:
        qv, sv, zv, scale = _weight(w, s, qc.w_type)
        (wdq,) = w.node("DequantizeLinear", f"{s.name}_weight", [qv, sv, zv], [ir.AttrInt64("axis", 0)],
                        domain=qc.q_domain)
        inputs: list[ir.Value | None] = [v[0], wdq]
        if s.bias and bias is not None:
            bq, bs = bias_int32(bias, v[1], scale)
            bqv = w.const(s.name, ".bias_quantized", bq, ir.DataType.INT32)
            bsv = w.const(s.name, ".bias_scale", bs, ir.DataType.FLOAT)
            bzv = w.const(s.name, ".bias_zero_point", np.zeros(bq.shape, np.int32), ir.DataType.INT32)
            (bdq,) = w.node("DequantizeLinear", f"{s.name}_bias", [bqv, bsv, bzv], [ir.AttrInt64("axis", 0)],
                            domain=qc.q_domain)
            inputs.append(bdq)
        (out,) = w.node("Conv", s.name, inputs, attrs(s))
        return (out, 0.0) if s is final else requant(s.name, out)

    def join(kind: str, vs: list[tuple[ir.Value, float]]) -> tuple[ir.Value, float]:
        op, at = ("Concat", [ir.AttrInt64("axis", 1)]) if kind == "concat" else ("Sum", [])
        (out,) = w.node(op, kind, [v[0] for v in vs], at)
        return (out, 0.0) if final is None else requant("join", out)

    return lowered.fold((qc.node.inputs[0], x_scale), step, join)[0]


def _qlinear_program(w: _Writer, qc: QuantConv, lowered: Lowered, bias: np.ndarray | None, attrs, final,
                     table: Mapping[str, tuple[float, float]]) -> ir.Value:
    x, y = qc.x, qc.y
    assert x is not None and y is not None
    node = qc.node

    def step(s: ConvStep, v: tuple[ir.Value, ir.Value, ir.Value, float]) -> tuple[ir.Value, ir.Value, ir.Value, float]:
        qv, sv, zv, scale = _weight(w, s, qc.w_type)
        if s is final:
            osv, ozv, os_ = node.inputs[6], node.inputs[7], float(np.ravel(y.scale)[0])
        else:
            osv, ozv, os_ = _act(w, s.name, table, x)
        inputs: list[ir.Value | None] = [v[0], v[1], v[2], qv, sv, zv, osv, ozv]
        if s.bias and bias is not None:
            bq, _ = bias_int32(bias, v[3], scale)
            inputs.append(w.const(s.name, ".bias_quantized", bq, ir.DataType.INT32))
        (out,) = w.node("QLinearConv", s.name, inputs, attrs(s))
        return out, osv, ozv, os_  # type: ignore[return-value]

    def join(kind: str, vs: list[tuple[ir.Value, ir.Value, ir.Value, float]]):
        if kind == "concat":  # the branches share one scale and zero point (``_ranges_for``)
            (out,) = w.node("Concat", kind, [v[0] for v in vs], [ir.AttrInt64("axis", 1)])
            return out, vs[0][1], vs[0][2], vs[0][3]
        floats = [w.node("DequantizeLinear", f"sum_in_{i}", [v[0], v[1], v[2]])[0] for i, v in enumerate(vs)]
        (total,) = w.node("Sum", kind, floats)
        if final is None:
            osv, ozv, os_ = node.inputs[6], node.inputs[7], float(np.ravel(y.scale)[0])
        else:
            osv, ozv, os_ = _act(w, "join", table, x)
        (out,) = w.node("QuantizeLinear", "sum_quantize", [total, osv, ozv])
        return out, osv, ozv, os_

    start = (node.inputs[0], node.inputs[1], node.inputs[2], float(np.ravel(x.scale)[0]))
    return lowered.fold(start, step, join)[0]


def _dynamic_program(w: _Writer, qc: QuantConv, lowered: Lowered, bias: np.ndarray | None, attrs,
                     final) -> ir.Value:
    assert qc.dynamic_input is not None
    first = qc.node.inputs[0]
    rank = len(qc.weight.shape)

    def step(s: ConvStep, v: ir.Value) -> ir.Value:
        if v is first:
            xq, xs, xz = qc.dynamic_input  # type: ignore[misc]
        else:
            xq, xs, xz = w.node("DynamicQuantizeLinear", f"{s.name}_quantize", [v], outputs=3)
        q, scale, zero = symmetric_weight(s.weight, type_range(_INT_TYPES[qc.w_type]))
        qv = w.const(s.name, ".weight_quantized", q.astype(_np_type(qc.w_type)), qc.w_type)
        zv = w.const(s.name, ".weight_zero_point", np.array(zero[0], _np_type(qc.w_type)), qc.w_type)
        shape = (1, -1) + (1,) * (rank - 2)
        sv = w.const(s.name, ".weight_scale", scale.reshape(shape).astype(np.float32), ir.DataType.FLOAT)
        (acc,) = w.node("ConvInteger", s.name, [xq, qv, xz, zv], attrs(s))
        (f,) = w.node("Cast", f"{s.name}_cast", [acc], [ir.AttrInt64("to", ir.DataType.FLOAT)])
        (both,) = w.node("Mul", f"{s.name}_scales", [xs, sv])
        (out,) = w.node("Mul", f"{s.name}_rescale", [f, both])
        if s.bias and bias is not None:
            bv = w.const(s.name, ".bias", np.asarray(bias, np.float32).reshape(shape), ir.DataType.FLOAT)
            (out,) = w.node("Add", f"{s.name}_bias", [out, bv])
        return out

    def join(kind: str, vs: list[ir.Value]) -> ir.Value:
        op, at = ("Concat", [ir.AttrInt64("axis", 1)]) if kind == "concat" else ("Sum", [])
        return w.node(op, kind, vs, at)[0]

    return lowered.fold(first, step, join)



# --- the calibration tap's float view ----------------------------------------------------------------------------


def floatify(qc: QuantConv, name: str) -> tuple[ir.Node, Callable[[], None]]:
    """Edit the graph so that ``qc`` is computed by a float ``Conv`` (whose weight and bias inputs the caller sets)
    with the same quantization around it, for the calibration tap: a ``QLinearConv`` becomes
    ``DequantizeLinear → Conv → QuantizeLinear`` with its own parameters, a dynamically quantized conv a ``Conv`` on
    its float input. A QDQ conv already is one (nothing is edited). Returns the conv and the function that undoes
    the edit exactly."""
    node = qc.node
    if qc.style == "QDQ":
        return node, lambda: None
    graph = node.graph
    assert graph is not None
    spatial = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    if qc.style == "QLinearConv":
        x, xs, xz = node.inputs[0], node.inputs[1], node.inputs[2]
        xf = ir.Value(name=f"{name}/tap_x")
        dq = ir.Node("", "DequantizeLinear", [x, xs, xz], outputs=[xf], name=f"{name}/tap_dequantize")
        yf = ir.Value(name=f"{name}/tap_y")
        conv = ir.Node("", "Conv", [xf, None, None], spatial, outputs=[yf], name=name)
        yq = ir.Value(name=f"{name}/tap_yq")
        q = ir.Node("", "QuantizeLinear", [yf, node.inputs[6], node.inputs[7]], outputs=[yq],
                    name=f"{name}/tap_quantize")
        new = [dq, conv, q]
    else:
        assert qc.dynamic_input is not None
        dql = qc.dynamic_input[0].producer()
        assert dql is not None
        yq = ir.Value(name=f"{name}/tap_y")
        conv = ir.Node("", "Conv", [dql.inputs[0], None, None], spatial, outputs=[yq], name=name)
        new = [conv]
    old = qc.output
    outputs = list(graph.outputs)
    own_name = node.name
    node.name = f"{name}/tap_original"  # left in place, unused (the runtime drops it); the conv takes its name
    graph.insert_after(qc.nodes[-1], new)
    old.replace_all_uses_with(yq, replace_graph_outputs=True)

    def undo() -> None:
        node.name = own_name
        yq.replace_all_uses_with(old)
        graph.outputs.clear()
        graph.outputs.extend(outputs)
        for n in new:
            for i in range(len(n.inputs)):
                n.replace_input_with(i, None)
        graph.remove(new)

    return conv, undo
