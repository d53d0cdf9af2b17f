"""The pure math: exactness at full rank, Eckart–Young error, and that lowering only regroups weights.

Outputs are compared against torch's reference convolution (the real runtime for these formulas).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converter.algebra._decompose import decompose, energy_curve, lower, max_rank, singular_values

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def run_lowered(x, lowered, bias, stride, padding, dilation):
    """Apply a ``Lowered`` program with torch convs (the same semantics the adapters emit)."""
    conv = CONV[x.dim() - 2]

    def step(s, t):
        b = torch.from_numpy(bias) if s.bias and bias is not None else None
        w = torch.from_numpy(s.weight)
        if s.spatial:
            return conv(t, w, b, stride=stride, padding=padding, dilation=dilation, groups=s.groups)
        return conv(t, w, b, groups=s.groups)

    def join(kind, outs):
        return torch.cat(outs, 1) if kind == "concat" else sum(outs)

    return lowered.fold(x, step, join)


def reconstruct(dec, groups):
    """The kernel a decomposition implements, by applying it to one-hot inputs is overkill: use the algebra."""
    n = dec.out_channels
    if dec.order == "dw-pw":
        k = dec.rank
        m = dec.in_channels
        c = m // groups
        d = dec.first.reshape(m, k, -1)  # [M, K, taps]
        p = dec.second.reshape(n, c, k)  # [N, C, K]
        w = np.zeros((n, c, d.shape[-1]), dtype=np.float64)
        for gi in range(groups):
            rows = slice(gi * (n // groups), (gi + 1) * (n // groups))
            w[rows] = np.einsum("ncr,crt->nct", p[rows], d[gi * c:(gi + 1) * c])
        return w
    k = dec.rank
    c = dec.first.shape[1]
    p = dec.first.reshape(n, k, c)
    q = dec.second.reshape(n, k, -1)
    return np.einsum("nrc,nrt->nct", p, q)


GRID = list(itertools.product(
    [(3,), (5,), (1, 3), (3, 1), (3, 3), (5, 5), (7, 7), (3, 3, 3)],  # kernels
    [1, 2, 4],  # groups
    ["dw-pw", "pw-dw"],
    ["split", "fused"],
))


@pytest.mark.parametrize(("kernel", "groups", "order", "lowering"), GRID)
def test_full_rank_is_exact(kernel, groups, order, lowering):
    rng = np.random.default_rng(hash((kernel, groups, order)) % 2**32)
    nd = len(kernel)
    n, m = 8, 8
    w = rng.standard_normal((n, m // groups, *kernel)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    dec = decompose(w, groups, order, 10**6)
    assert dec.rank == max_rank(w.shape, groups, order)
    assert dec.rel_error < 1e-6 and abs(dec.energy - 1) < 1e-9
    low = lower(dec, lowering)
    for stride, dil in [(1, 1), (2, 1), (1, 2)]:
        x = torch.randn(3, m, *([9] * nd))
        pad = tuple((k - 1) * dil // 2 for k in kernel)
        ref = CONV[nd](x, torch.from_numpy(w), torch.from_numpy(b), stride=stride, padding=pad, dilation=dil,
                       groups=groups)
        y = run_lowered(x, low, b, stride, pad, dil)
        assert y.shape == ref.shape
        assert float((y - ref).norm() / ref.norm()) <= 1e-5


@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
@pytest.mark.parametrize("groups", [1, 2])
def test_truncation_error_is_eckart_young(order, groups):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 8 // groups, 3, 3)).astype(np.float32)
    curve = energy_curve(singular_values(w, groups, order))
    assert np.all(np.diff(curve) >= -1e-12) and curve[-1] == pytest.approx(1.0)
    for rank in (1, 2, 4):
        dec = decompose(w, groups, order, rank)
        w_hat = reconstruct(dec, groups)
        err = np.linalg.norm(w.reshape(w_hat.shape) - w_hat) / np.linalg.norm(w)
        assert err == pytest.approx(dec.rel_error, rel=1e-4, abs=1e-6)
        assert dec.energy == pytest.approx(curve[rank - 1])
        assert dec.rel_error == pytest.approx(np.sqrt(1 - curve[rank - 1]), abs=1e-7)


def test_low_rank_lowerings_agree():
    """Split and fused forms of the same rank-2 factors compute the same function (only regrouped)."""
    rng = np.random.default_rng(2)
    for groups, order in itertools.product([1, 2], ["dw-pw", "pw-dw"]):
        w = rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32)
        dec = decompose(w, groups, order, 2)
        x = torch.randn(2, 8, 10, 10)
        a = run_lowered(x, lower(dec, "split"), None, 1, 1, 1)
        b = run_lowered(x, lower(dec, "fused"), None, 1, 1, 1)
        assert float((a - b).norm() / b.norm()) < 1e-5


def test_rank_one_separable_kernel_is_exact():
    """A kernel that truly is depthwise-separable is recovered exactly at rank 1 (dw-pw)."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal((4, 9))  # one spatial filter per input channel
    u = rng.standard_normal((6, 4))  # channel mixing
    w = np.einsum("nc,ct->nct", u, v).reshape(6, 4, 3, 3).astype(np.float32)
    dec = decompose(w, 1, "dw-pw", 1)
    assert dec.rel_error < 1e-6
    assert lower(dec, "split").join == "none"  # K = 1: both lowerings are the two-conv form


def test_names_and_bias_placement():
    w = np.random.default_rng(4).standard_normal((8, 8, 3, 3)).astype(np.float32)
    low = lower(decompose(w, 1, "dw-pw", 3), "split")
    assert [s.name for s in low.steps] == ["dw_0", "dw_1", "dw_2", "pw"]
    assert low.join == "concat" and [s.bias for s in low.steps] == [False, False, False, True]
    low = lower(decompose(w, 1, "pw-dw", 2), "split")
    assert low.join == "sum" and [s.name for s in low.steps] == ["pw_0", "dw_0", "pw_1", "dw_1"]
    assert sum(s.bias for s in low.steps) == 1
    low = lower(decompose(w, 1, "dw-pw", 3), "fused")
    assert [(s.name, s.groups, s.spatial) for s in low.steps] == [("dw", 8, True), ("pw", 1, False)]


def test_bad_arguments():
    w = np.zeros((6, 4, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="groups"):
        decompose(w, 4, "dw-pw", 1)
    with pytest.raises(ValueError, match="rank"):
        decompose(w, 1, "dw-pw", 0)
    with pytest.raises(ValueError, match="order"):
        decompose(w, 1, "sideways", 1)
    zero = decompose(w, 1, "pw-dw", 1)  # a zero kernel: no error, nothing lost
    assert zero.rel_error == 0.0 and zero.energy == 1.0


@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
def test_rank_deficient_kernels_stay_exact(order):
    """Slices of rank 2 (seven zero singular values): the Gram route must not divide by them."""
    rng = np.random.default_rng(5)
    if order == "pw-dw":  # W[n] (8×9) has rank 2
        w = rng.standard_normal((16, 8, 2)) @ rng.standard_normal((16, 2, 9))
    else:  # W[:, m] (16×9) has rank 2
        w = (rng.standard_normal((8, 16, 2)) @ rng.standard_normal((8, 2, 9))).transpose(1, 0, 2)
    w = w.reshape(16, 8, 3, 3).astype(np.float32) * 1e-3  # small weights too
    dec = decompose(w, 1, order, 10**6)
    x = torch.randn(2, 8, 7, 7)
    ref = F.conv2d(x, torch.from_numpy(w), padding=1)
    y = run_lowered(x, lower(dec, "split"), None, 1, 1, 1)
    assert float((y - ref).norm() / ref.norm()) <= 1e-5
    assert decompose(w, 1, order, 2).rel_error < 1e-5  # rank 2 already holds all of it


def test_spectrum_is_reused_and_checked():
    from converter.algebra._decompose import spectrum

    w = np.random.default_rng(6).standard_normal((8, 4, 3, 3)).astype(np.float32)
    spec = spectrum(w, 1, "pw-dw")
    a, b = decompose(w, 1, "pw-dw", 2, spec), decompose(w, 1, "pw-dw", 2)
    np.testing.assert_array_equal(a.first, b.first)
    with pytest.raises(ValueError, match="another layer or order"):
        decompose(w, 1, "dw-pw", 2, spec)


def test_check_names_what_does_not_fit():
    w = np.random.default_rng(7).standard_normal((8, 8, 3, 3)).astype(np.float32)
    low = lower(decompose(w, 1, "dw-pw", 2), "split")
    low.check(8, 8, (3, 3))  # fits
    with pytest.raises(ValueError, match="takes 8 channels in 8 groups, but gets 16"):
        low.check(16, 8, (3, 3))
    with pytest.raises(ValueError, match="produce 8 channels, the layer 4"):
        low.check(8, 4, (3, 3))
    with pytest.raises(ValueError, match="does not fit a spatial conv with kernel"):
        low.check(8, 8, (5, 5))
    with pytest.raises(ValueError, match="2-D kernel, the conv a 1-D one"):
        low.check(8, 8, (3,))
