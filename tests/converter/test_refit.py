"""Calibration math against brute force: patches against torch's conv, dense kernels of the factors, the
closed-form output error, least-squares optimality, and the choice never being worse than data-free."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converter.algebra._decompose import decompose
from converter.algebra._refit import (
    Geometry,
    LayerStats,
    calibrate_layer,
    dense,
    output_error,
    patches,
    refit,
    whitened,
)

GEO = Geometry(stride=(1, 1), dilation=(1, 1), pads=((1, 1), (1, 1)))


def _conv(x, w, b, geo, groups):
    pads = geo.pads
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    return F.conv2d(torch.from_numpy(xp), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                    stride=geo.stride, dilation=geo.dilation, groups=groups).numpy()


@pytest.mark.parametrize("geo", [GEO, Geometry((2, 1), (1, 2), ((0, 1), (2, 1)))])
def test_patches_reproduce_the_conv(geo):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    p = patches(x, (3, 3), geo)  # [B·P, M, k]
    y = _conv(x, w, None, geo, 1)
    ref = y.transpose(0, 2, 3, 1).reshape(-1, 4)
    np.testing.assert_allclose(p.reshape(p.shape[0], -1) @ w.reshape(4, -1).T, ref, rtol=1e-4, atol=1e-4)


def test_same_upper_padding_keeps_the_size():
    x = np.ones((1, 1, 7, 7), np.float32)
    p = patches(x, (3, 3), Geometry((2, 2), (1, 1), "SAME_UPPER"))
    assert p.shape == (16, 1, 9)


@pytest.mark.parametrize(("order", "groups"), [("dw-pw", 1), ("pw-dw", 1), ("dw-pw", 2), ("pw-dw", 2)])
def test_dense_of_full_rank_factors_is_the_kernel(order, groups):
    w = np.random.default_rng(1).standard_normal((6, 4, 3, 3)).astype(np.float32)
    dec = decompose(w, groups, order, 99)
    np.testing.assert_allclose(dense(dec), w, rtol=1e-4, atol=1e-4)


def _stats(w, b, groups, xc, xo, geo=GEO):
    s = LayerStats(w, b, groups, geo, max_rows=10**9)
    for i in range(0, xc.shape[0], 3):
        s.update(xc[i:i + 3], xo[i:i + 3])
    return s


def _data(groups=1, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    # correlated channels: what real activations look like, and what the whitening exploits
    mix = rng.standard_normal((4 * groups, 4 * groups))
    base = rng.standard_normal((8, 4 * groups, 8, 8))
    xo = np.einsum("cd,bdhw->bchw", mix, base).astype(np.float32)
    xo = np.maximum(xo, 0) + 0.1
    xc = (xo + shift * rng.standard_normal(xo.shape)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    return w, b, xc, xo


def _brute_error(w, b, xc, xo, wh, bh, groups):
    y = _conv(xo, w, b, GEO, groups)
    yh = _conv(xc, wh.astype(np.float32), bh.astype(np.float32), GEO, groups)
    return float(np.linalg.norm(yh - y) / np.linalg.norm(y))


@pytest.mark.parametrize("groups", [1, 2])
def test_output_error_matches_brute_force(groups):
    w, b, xc, xo = _data(groups, shift=0.3)
    s = _stats(w, b, groups, xc, xo)
    dec = decompose(w, groups, "dw-pw", 1)
    got = output_error(s, dense(dec), b)
    assert got == pytest.approx(_brute_error(w, b, xc, xo, dense(dec), b, groups), rel=1e-4)


@pytest.mark.parametrize(("order", "groups"), [("dw-pw", 1), ("pw-dw", 1), ("dw-pw", 2), ("pw-dw", 2)])
def test_refit_is_the_least_squares_optimum(order, groups):
    w, b, xc, xo = _data(groups, shift=0.2)
    s = _stats(w, b, groups, xc, xo)
    dec = decompose(w, groups, order, 1)
    new, bias = refit(s, dec, ridge=0.0)
    e_free = output_error(s, dense(dec), b)
    e_fit = output_error(s, dense(new), bias)
    assert e_fit < e_free
    assert e_fit == pytest.approx(_brute_error(w, b, xc, xo, dense(new), bias, groups), rel=1e-3)
    # no perturbation of the refitted factor lowers the error (first-order optimality)
    rng = np.random.default_rng(3)
    for _ in range(5):
        nudged = type(new)(new.order, new.rank, new.groups, new.first,
                           new.second + 1e-2 * rng.standard_normal(new.second.shape).astype(np.float32),
                           new.rel_error, new.energy)
        assert output_error(s, dense(nudged), bias) >= e_fit - 1e-7


@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
def test_calibration_is_never_worse_and_exact_at_full_rank(order):
    w, b, xc, xo = _data(1, shift=0.0)
    s = _stats(w, b, 1, xc, xo)
    full = calibrate_layer(s, decompose(w, 1, order, 99))
    assert full.errors["data-free"] < 1e-5
    low = calibrate_layer(s, decompose(w, 1, order, 1))
    assert low.errors[low.method] <= low.errors["data-free"]
    assert set(low.errors) == {"data-free", "refit", "whitened", "alternating"}
    assert low.errors[low.method] < 0.9 * low.errors["data-free"]


@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
def test_whitened_factors_have_the_right_layout(order):
    w, b, xc, xo = _data(2)
    s = _stats(w, b, 2, xc, xo)
    dec = decompose(w, 2, order, 2)
    wh = whitened(s, dec)
    assert (wh.first.shape, wh.second.shape) == (dec.first.shape, dec.second.shape)
    # at full rank the whitened factors (refitted) reproduce the layer
    full = refit(s, whitened(s, decompose(w, 2, order, 99)), ridge=0.0)
    assert output_error(s, dense(full[0]), full[1]) < 1e-3


def test_row_cap_bounds_the_work():
    w, b, xc, xo = _data()
    s = LayerStats(w, b, 1, GEO, max_rows=50)
    s.update(xc[:4], xo[:4])
    assert s.n == 50


@pytest.mark.parametrize(("order", "groups"), [("dw-pw", 1), ("pw-dw", 1), ("dw-pw", 2), ("pw-dw", 2)])
def test_refit_first_is_optimal_and_alternating_only_descends(order, groups):
    from converter.algebra._refit import alternate, refit_first

    w, b, xc, xo = _data(groups, shift=0.2)
    s = _stats(w, b, groups, xc, xo)
    dec, bias = refit(s, decompose(w, groups, order, 1), ridge=0.0)
    before = output_error(s, dense(dec), bias)
    new, nb = refit_first(s, dec, bias, ridge=0.0)
    after = output_error(s, dense(new), nb)
    assert after <= before + 1e-7
    rng = np.random.default_rng(5)
    for _ in range(5):
        nudged = type(new)(new.order, new.rank, new.groups,
                           new.first + 1e-2 * rng.standard_normal(new.first.shape).astype(np.float32),
                           new.second, new.rel_error, new.energy)
        assert output_error(s, dense(nudged), nb) >= after - 1e-7
    final = alternate(s, dec, bias, ridge=0.0)
    assert output_error(s, dense(final[0]), final[1]) <= after + 1e-7


@pytest.mark.parametrize(("rank", "groups"), [(2, 1), (3, 1), (2, 2)])
def test_pw_dw_refits_at_higher_rank_in_small_chunks(rank, groups, monkeypatch):
    """PW→DW builds each output channel's normal equations from the taps' outer products with the Gram matrix,
    a chunk of channels at a time: the result is the least-squares optimum at every rank and does not depend on
    the chunk size."""
    from converter.algebra import _refit
    from converter.algebra._refit import refit_first

    w, b, xc, xo = _data(groups, shift=0.2)
    s = _stats(w, b, groups, xc, xo)
    dec = decompose(w, groups, "pw-dw", rank)
    fit_whole, bias_whole = refit(s, dec, ridge=0.0)  # every channel in one chunk
    first_whole, _ = refit_first(s, fit_whole, bias_whole, ridge=0.0)
    monkeypatch.setattr(_refit, "_CHUNK_ELEMENTS", 1)  # one output channel per chunk
    fit, bias = refit(s, dec, ridge=0.0)
    first, nb = refit_first(s, fit, bias, ridge=0.0)
    np.testing.assert_allclose(fit.second, fit_whole.second, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first.first, first_whole.first, rtol=1e-5, atol=1e-6)
    after = output_error(s, dense(first), nb)
    assert after <= output_error(s, dense(fit), bias) + 1e-7
    assert after == pytest.approx(_brute_error(w, b, xc, xo, dense(first), nb, groups), rel=1e-3)
    rng = np.random.default_rng(7)
    for _ in range(5):  # first-order optimal: no nudge of the refitted first factor lowers the error
        nudged = type(first)(first.order, first.rank, first.groups,
                             first.first + 1e-2 * rng.standard_normal(first.first.shape).astype(np.float32),
                             first.second, first.rel_error, first.energy)
        assert output_error(s, dense(nudged), nb) >= after - 1e-7
