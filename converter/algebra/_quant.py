r"""Quantization maths for converting int8 models: pure functions over numpy arrays (no file, graph or runtime).

**Affine quantization** (ONNX ``QuantizeLinear``/``DequantizeLinear``): ``q = clip(round(x / s) + z, q_min,
q_max)`` (round half to even) and ``x̂ = s · (q − z)``, with a scale ``s`` and zero point ``z`` per tensor or per
channel along one axis.

**Weights** of the new convs are quantized as onnxruntime's quantizer does for weights: *symmetric* (``z = 0``),
*per output channel* (axis 0), ``s_n = max|W_n| / q_max'`` with the symmetric range ``[−127, 127]`` for int8
(``[−(2^{b−1} − 1), 2^{b−1} − 1]`` for ``b`` signed bits; unsigned types use ``z`` at mid-range). A channel of
zeros gets ``s = 1`` (any scale represents it exactly). The rounding error per weight is at most ``s_n / 2``.

**Biases** are int32 with scale ``s_x · s_n`` and zero point 0 (the accumulator's scale, so the integer kernel
adds them without rescaling), as onnxruntime stores them.

**Activations** are asymmetric per tensor (as onnxruntime's static quantizer does): a range ``[lo, hi]`` is
first widened to contain 0 (so that zero padding is exact), then ``s = (hi − lo) / (q_max − q_min)`` and
``z = round(q_min − lo / s)`` clipped into the type's range.

**The data-free range of a new intermediate tensor** (between the depthwise and pointwise convs, or at a join of
branches) starts from *interval propagation*: if every input element lies in ``[lo_c, hi_c]`` (its channel's
range; the dequantized range of the layer's input), a conv output channel ``n`` lies in
``[Σ min(w·lo, w·hi) + b_n, Σ max(w·lo, w·hi) + b_n]`` (the sum over the channel's weights and taps; zero padding
stays inside because ``lo ≤ 0 ≤ hi``), and a sum of branches in the sum of their intervals
(``intermediate_intervals``). This bound is never exceeded, but it is loose (every tap at its worst extreme at
once), so the int8 grid would be coarser than the values need. Where the model carries the original layer's
*output* range (its output quantization: QDQ, QOperator), ``scaled_ranges`` narrows it: the tensor's spread
relative to the output's, propagated through the weights as if inputs were independent
(``σ_out² = Σ w² σ_in²``, ``conv_spread``), times the output's observed peak, clipped to the bound. With
calibration samples the observed ``[min, max]`` of the tensor is used instead (``intermediate_values``);
``benchmarks/quantized.py`` and the tests measure the difference.
"""

from __future__ import annotations

import numpy as np

from ._decompose import ConvStep, Lowered
from ._refit import Geometry, patches

__all__ = [
    "activation_params",
    "bias_int32",
    "conv_interval",
    "conv_spread",
    "dequantize",
    "intermediate_intervals",
    "intermediate_values",
    "merge_ranges",
    "quantize",
    "scaled_ranges",
    "symmetric_weight",
    "type_range",
]

#: Integer ranges by type name (the ONNX tensor type's name, lower case).
_RANGES = {
    "int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
    "int4": (-8, 7), "uint4": (0, 15), "int32": (-(2 ** 31), 2 ** 31 - 1),
}


def type_range(name: str) -> tuple[int, int]:
    """``(q_min, q_max)`` of an integer type by name (``int8``, ``uint8``, ``int16``, ``uint16``, ``int4``,
    ``uint4``, ``int32``).

    Raises:
        ValueError: an unknown type.
    """
    try:
        return _RANGES[name.lower()]
    except KeyError:
        raise ValueError(f"no integer quantization type {name!r}") from None


def _along(a: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """A per-tensor (scalar) or per-channel (1-D) parameter shaped to broadcast along ``axis`` of an ``ndim``-D
    tensor."""
    a = np.asarray(a)
    if a.ndim == 0 or (a.size == 1 and axis is None):
        return a.reshape(())
    shape = [1] * ndim
    shape[axis if axis is not None else 1] = a.size
    return a.reshape(shape)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None,
               axis: int | None = None) -> np.ndarray:
    """``s · (q − z)`` as float32; per-channel parameters along ``axis``."""
    q = np.asarray(q)
    s = _along(np.asarray(scale, np.float64), axis, q.ndim)
    z = _along(np.asarray(0 if zero_point is None else zero_point, np.float64), axis, q.ndim)
    return (s * (q.astype(np.float64) - z)).astype(np.float32)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, q_range: tuple[int, int],
             axis: int | None = None) -> np.ndarray:
    """``clip(round(x / s) + z, q_min, q_max)`` as int64 (the caller casts to the storage type)."""
    x = np.asarray(x, np.float64)
    s = _along(np.asarray(scale, np.float64), axis, x.ndim)
    z = _along(np.asarray(zero_point, np.float64), axis, x.ndim)
    return np.clip(np.rint(x / s) + z, *q_range).astype(np.int64)


def symmetric_weight(w: np.ndarray, q_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize a weight symmetrically per output channel (axis 0): ``(q, scale [N], zero_point [N])``.

    Signed types use ``[−m, m]`` with ``m = min(−q_min, q_max)`` and ``z = 0``; unsigned ones ``z`` at the middle
    of the range and ``m`` the distance to its nearer end."""
    lo, hi = q_range
    n = w.shape[0]
    if lo < 0:
        m, z = float(min(-lo, hi)), 0
    else:
        z = (lo + hi + 1) // 2
        m = float(min(z - lo, hi - z))
    peak = np.abs(np.asarray(w, np.float64).reshape(n, -1)).max(axis=1)
    scale = np.where(peak > 0, peak / m, 1.0)
    zero = np.full(n, z, np.int64)
    return quantize(w, scale, zero, q_range, axis=0), scale.astype(np.float32), zero


def bias_int32(bias: np.ndarray, x_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(int32 bias, its scale s_x · s_w)`` with zero point 0."""
    scale = (np.float64(x_scale) * np.asarray(w_scale, np.float64)).astype(np.float32)
    q = quantize(bias, scale.astype(np.float64), np.zeros_like(scale, dtype=np.int64), type_range("int32"), axis=0)
    return q.astype(np.int32), scale


def activation_params(lo: float, hi: float, q_range: tuple[int, int]) -> tuple[float, int]:
    """``(scale, zero_point)`` of an asymmetric per-tensor quantization of the range ``[lo, hi]`` (widened to
    contain 0; a degenerate range gets scale 1)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    q_min, q_max = q_range
    scale = (hi - lo) / (q_max - q_min) if hi > lo else 1.0
    zero = int(np.clip(np.rint(q_min - lo / scale), q_min, q_max))
    return float(np.float32(scale)), zero


def conv_interval(weight: np.ndarray, groups: int, lo: np.ndarray, hi: np.ndarray,
                  bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel, the interval a conv's output lies in when each input channel ``c`` lies in
    ``[lo_c, hi_c]`` (scalars broadcast; ``lo ≤ 0 ≤ hi`` so that zero padding is inside): see the module
    docstring. ``weight`` is ``[N, C, *kernel]`` with ``groups`` groups."""
    w = np.asarray(weight, np.float64)
    n, c = w.shape[:2]
    m = c * groups
    lo = np.broadcast_to(np.minimum(np.asarray(lo, np.float64), 0.0), (m,))
    hi = np.broadcast_to(np.maximum(np.asarray(hi, np.float64), 0.0), (m,))
    flat = w.reshape(groups, n // groups, c, -1)
    glo = lo.reshape(groups, 1, c, 1)
    ghi = hi.reshape(groups, 1, c, 1)
    out_lo = np.minimum(flat * glo, flat * ghi).sum(axis=(2, 3)).reshape(n)
    out_hi = np.maximum(flat * glo, flat * ghi).sum(axis=(2, 3)).reshape(n)
    if bias is not None:
        out_lo, out_hi = out_lo + bias, out_hi + bias
    return out_lo, out_hi


def conv_spread(weight: np.ndarray, groups: int, spread: np.ndarray | float) -> np.ndarray:
    """Per output channel, ``sqrt(Σ w² · σ_c²)``: the standard deviation of a conv's output when its inputs are
    independent with per-channel standard deviations ``σ`` (see ``scaled_ranges``)."""
    w = np.asarray(weight, np.float64)
    n, c = w.shape[:2]
    sigma = np.broadcast_to(np.asarray(spread, np.float64), (c * groups,)).reshape(groups, 1, c, 1)
    return np.sqrt((w.reshape(groups, n // groups, c, -1) ** 2 * sigma ** 2).sum(axis=(2, 3))).reshape(n)


def scaled_ranges(lowered: Lowered, weight: np.ndarray, groups: int, output_range: tuple[float, float],
                  bounds: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """The data-free estimate of the new tensors' ranges from the original layer's *output* range (which the
    quantized model carries): each tensor's spread relative to the output's, computed by propagating a unit
    spread through the weights as if inputs were independent (``conv_spread``), times the output's peak
    magnitude; symmetric, and never beyond its interval bound ``bounds`` (``intermediate_intervals``)."""
    peak = max(-float(output_range[0]), float(output_range[1]))
    ref = float(conv_spread(weight, groups, 1.0).max())
    if ref <= 0 or peak <= 0:
        return dict(bounds)
    spreads: dict[str, float] = {}
    final = _final(lowered)

    def step(s: ConvStep, v: np.ndarray) -> np.ndarray:
        got = conv_spread(s.weight, s.groups, v)
        if s is not final:
            spreads[s.name] = float(got.max())
        return got

    def join(kind: str, vs: list[np.ndarray]) -> np.ndarray:
        got = np.concatenate(vs) if kind == "concat" else np.sqrt(sum(v ** 2 for v in vs))
        if final != "join":
            spreads["join"] = float(got.max())
        return got

    lowered.fold(np.asarray(1.0), step, join)
    out = {}
    for k, (lo, hi) in bounds.items():
        r = peak * spreads.get(k, ref) / ref
        out[k] = (max(lo, -r), min(hi, r))
    return out


def _conv_np(step: ConvStep, v: np.ndarray, kernel: tuple[int, ...], geo: Geometry,
             bias: np.ndarray | None) -> np.ndarray:
    """One step of a program on an array: ``[B, C, *spatial]`` before the spatial step, ``[rows, C]`` after it
    (1×1 convs act on the channel axis, 1, of either)."""
    w = np.asarray(step.weight, np.float32)
    n, c = w.shape[:2]
    g = step.groups
    if step.spatial:
        p = patches(v, kernel, geo)  # [R, M, k]
        out = np.einsum("rgct,gnct->rgn", p.reshape(p.shape[0], g, c, -1), w.reshape(g, n // g, c, -1))
        out = out.reshape(p.shape[0], n)
    else:
        a = np.moveaxis(v, 1, -1)
        out = np.einsum("...gc,gnc->...gn", a.reshape(*a.shape[:-1], g, c), w.reshape(g, n // g, c))
        out = np.moveaxis(out.reshape(*a.shape[:-1], n), -1, 1)
    if bias is not None and step.bias:
        out = out + np.asarray(bias, np.float32).reshape((1, n) + (1,) * (out.ndim - 2))
    return out


def _final(lowered: Lowered) -> object:
    """What produces the program's output: its tail, its only branch's last step, or its join."""
    if lowered.tail is not None:
        return lowered.tail
    if lowered.join == "none":
        return lowered.branches[0][-1]
    return "join"


def intermediate_intervals(lowered: Lowered, lo: np.ndarray | float, hi: np.ndarray | float,
                           bias: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """The data-free range of every tensor a program makes except its output, by interval propagation from the
    input's range (see the module docstring): step name → ``(lo, hi)``, and ``"join"`` for a concat or sum."""
    out: dict[str, tuple[float, float]] = {}
    final = _final(lowered)

    def step(s: ConvStep, v: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        got = conv_interval(s.weight, s.groups, v[0], v[1], bias if s.bias else None)
        if s is not final:
            out[s.name] = (float(got[0].min()), float(got[1].max()))
        return got

    def join(kind: str, vs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        if kind == "concat":
            got = (np.concatenate([v[0] for v in vs]), np.concatenate([v[1] for v in vs]))
        else:
            got = (sum(v[0] for v in vs), sum(v[1] for v in vs))
        if final == "join":
            return got
        out["join"] = (float(got[0].min()), float(got[1].max()))
        return got

    lowered.fold((np.asarray(lo, np.float64), np.asarray(hi, np.float64)), step, join)
    return out


def intermediate_values(lowered: Lowered, x: np.ndarray, kernel: tuple[int, ...], geo: Geometry,
                        bias: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """The observed ``(min, max)`` of every tensor a program makes except its output, run in numpy on the layer's
    input ``x`` ``[B, M, *spatial]`` (keys as ``intermediate_intervals``). Memory: the batch's patches."""
    out: dict[str, tuple[float, float]] = {}
    final = _final(lowered)

    def step(s: ConvStep, v: np.ndarray) -> np.ndarray:
        got = _conv_np(s, v, kernel, geo, bias)
        if s is not final:
            out[s.name] = (float(got.min()), float(got.max()))
        return got

    def join(kind: str, vs: list[np.ndarray]) -> np.ndarray:
        got = np.concatenate(vs, axis=1) if kind == "concat" else sum(vs[1:], vs[0])
        if final != "join":
            out["join"] = (float(got.min()), float(got.max()))
        return got

    lowered.fold(np.asarray(x, np.float32), step, join)
    return out


def merge_ranges(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]
                 ) -> dict[str, tuple[float, float]]:
    """The union of two range tables, key by key."""
    out = dict(a)
    for k, (lo, hi) in b.items():
        out[k] = (min(lo, out[k][0]), max(hi, out[k][1])) if k in out else (lo, hi)
    return out
