"""The quantization maths (``algebra._quant``): weight requantization within half a step, zero exactly
representable in activation parameters, interval bounds that contain every output, the scaled data-free ranges
within their bounds, and the program's intermediate values matching a conv computed another way."""

from __future__ import annotations

import numpy as np
import pytest

from converter.algebra import (
    Geometry,
    activation_params,
    bias_int32,
    conv_interval,
    decompose,
    dequantize,
    intermediate_intervals,
    intermediate_values,
    lower,
    scaled_ranges,
    symmetric_weight,
    type_range,
)
from converter.algebra._refit import patches


@pytest.mark.parametrize("kind", ["int8", "uint8", "int16", "int4"])
def test_symmetric_weights_round_trip_within_half_a_step(kind):
    w = np.random.default_rng(0).standard_normal((6, 3, 3, 3)).astype(np.float32)
    w[2] = 0  # a channel of zeros
    q, scale, zero = symmetric_weight(w, type_range(kind))
    lo, hi = type_range(kind)
    assert q.min() >= lo and q.max() <= hi and len(set(zero.tolist())) == 1
    back = dequantize(q, scale, zero, axis=0)
    step = scale.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(back - w) <= step / 2 + 1e-7)
    assert np.all(back[2] == 0)


def test_activation_params_represent_zero_and_the_range():
    s, z = activation_params(0.5, 3.0, type_range("int8"))  # widened to [0, 3]
    assert dequantize(np.array(z), s, z) == 0
    assert abs(s * (127 - z) - 3.0) < s and abs(s * (-128 - z)) < s
    assert activation_params(0.0, 0.0, type_range("uint8")) == (1.0, 0)


def test_bias_is_int32_at_the_accumulator_scale():
    b, scale = bias_int32(np.array([0.5, -1.25]), 0.1, np.array([0.01, 0.02]))
    assert b.dtype == np.int32 and np.allclose(scale, [0.001, 0.002])
    assert np.allclose(b * scale, [0.5, -1.25], atol=1e-3)


def _conv(x, w, geo, groups=1):
    k = w.shape[2:]
    p = patches(x, k, geo)
    n, c = w.shape[:2]
    out = np.einsum("rgct,gnct->rgn", p.reshape(p.shape[0], groups, c, -1), w.reshape(groups, n // groups, c, -1))
    return out.reshape(p.shape[0], n)


def test_intervals_contain_every_output_and_scaled_ranges_stay_inside():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    x = rng.uniform(-1, 2, (4, 4, 10, 10)).astype(np.float32)
    geo = Geometry((1, 1), (1, 1), ((1, 1), (1, 1)))
    y = _conv(x, w, geo)
    lo, hi = conv_interval(w, 1, -1.0, 2.0)
    assert np.all(y >= lo - 1e-4) and np.all(y <= hi + 1e-4)
    lowered = lower(decompose(w, 1, "dw-pw", 2), "split")
    bounds = intermediate_intervals(lowered, -1.0, 2.0)
    seen = intermediate_values(lowered, x, (3, 3), geo)
    assert set(bounds) == set(seen) == {"dw_0", "dw_1", "join"}
    for k, (a, b) in seen.items():
        assert bounds[k][0] - 1e-4 <= a and b <= bounds[k][1] + 1e-4
    scaled = scaled_ranges(lowered, w, 1, (float(y.min()), float(y.max())), bounds)
    for k, (a, b) in scaled.items():
        assert bounds[k][0] <= a <= 0 <= b <= bounds[k][1]


def test_intermediate_values_are_the_depthwise_outputs():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    geo = Geometry((2, 2), (1, 1), ((1, 1), (1, 1)))
    dec = decompose(w, 1, "dw-pw", 1)
    lowered = lower(dec, "fused")
    dw = _conv(x, dec.first, geo, groups=3)
    assert intermediate_values(lowered, x, (3, 3), geo) == {"dw": (float(dw.min()), float(dw.max()))}
