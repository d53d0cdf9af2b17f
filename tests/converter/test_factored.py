"""Calibration of layers whose patch is too large for the dense patch Gram matrix (``algebra._factored``): the
statistics stay bounded by the factors, the measured errors are the true ones, the candidates agree with the
full path where both fit, and calibration through a tap no longer skips such a layer."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from converter.algebra import FactoredStats, LayerStats, calibrate_stats, dense, layer_stats
from converter.algebra._decompose import decompose
from converter.algebra._factored import _Space
from converter.algebra._refit import MAX_PATCH_DIM, Geometry, calibrate_layer
from converter.data import load_samples
from converter.formats import detect_format
from converter.formats._base import InputSpec
from converter.recovery._calibrate import calibrate
from tests.utils.models import export_onnx

C, N, K_TAPS, LENGTH = 160, 16, 64, 96  # a patch of 160 × 64 = 10,240 values
GEO_1D = Geometry((1,), (1,), ((32, 31),))


def _wide_data(samples=6, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((C, C)) / np.sqrt(C)  # correlated channels, as real activations are
    xo = np.maximum(np.einsum("cd,bdl->bcl", mix, rng.standard_normal((samples, C, LENGTH))), 0) + 0.1
    xo = xo.astype(np.float32)
    xc = (xo + 0.3 * rng.standard_normal(xo.shape)).astype(np.float32)  # upstream layers converted
    w = (rng.standard_normal((N, C, K_TAPS)) * np.exp(-np.arange(K_TAPS) / 8)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return w, b, xc, xo


def _brute_1d(w, b, xc, xo, wh, bh):
    def conv(x, weight, bias):
        xp = np.pad(x, [(0, 0), (0, 0), (32, 31)])
        return F.conv1d(torch.from_numpy(xp), torch.from_numpy(np.asarray(weight, np.float32)),
                        torch.from_numpy(np.asarray(bias, np.float32))).numpy()

    y = conv(xo, w, b)
    return float(np.linalg.norm(conv(xc, wh, bh) - y) / np.linalg.norm(y))


def _feed(stats, xc, xo, step=2):
    while True:
        for i in range(0, xc.shape[0], step):
            stats.update(xc[i:i + step], xo[i:i + step])
        if not stats.next_pass():
            return


@pytest.mark.parametrize("order", ["pw-dw", "dw-pw"])
def test_a_10k_patch_is_calibrated_with_memory_bounded_by_the_factors(order):
    w, b, xc, xo = _wide_data()
    rank = 2
    dec = decompose(w, 1, order, rank)
    tracemalloc.start()
    try:
        stats = layer_stats(w, b, 1, GEO_1D, dec, max_rows=10**9)
        _feed(stats, xc, xo)
        chosen = calibrate_stats(stats, dec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # PW→DW adds a round of alternating least squares (two more passes)
    assert isinstance(stats, FactoredStats) and chosen.statistics == "factored"
    assert stats.passes == (4 if order == "pw-dw" else 2)
    full_gram = 8 * (C * K_TAPS + 1) ** 2  # what LayerStats would hold: 839 MB
    if order == "pw-dw":  # N per-output-channel spaces of K·k + 1 features (three first factors), C² + k² moments
        bound = 3 * 8 * N * (rank * K_TAPS + 1) * (rank * K_TAPS + 2) + 8 * (C * C + K_TAPS ** 2)
    else:  # (C·K + 1)² features and their cross with N outputs (two first factors), 2·C·k² moments
        bound = 2 * 8 * (C * rank + 1) * (C * rank + 1 + N) + 2 * 8 * C * K_TAPS ** 2
    assert stats.stats_bytes <= bound < full_gram / 50
    assert peak < full_gram / 4  # statistics, one chunk of patch rows and the weights
    assert set(chosen.errors) == {"data-free", "refit", "whitened"} | ({"alternating"} if order == "pw-dw" else set())
    assert chosen.errors[chosen.method] < 0.9 * chosen.errors["data-free"]
    if order == "pw-dw":  # alternating starts from the better of refit and whitened, and only descends
        assert chosen.errors["alternating"] <= min(chosen.errors["refit"], chosen.errors["whitened"]) + 1e-6
    # the errors measured in the first factor's output space are the layer's true output errors
    bias = b if chosen.bias is None else chosen.bias
    assert chosen.errors[chosen.method] == pytest.approx(
        _brute_1d(w, b, xc, xo, dense(chosen.decomposition), bias), rel=1e-3)
    assert chosen.errors["data-free"] == pytest.approx(_brute_1d(w, b, xc, xo, dense(dec), b), rel=1e-3)


def test_only_patches_too_large_for_the_gram_matrix_are_factored():
    small = np.zeros((4, 3, 3, 3), np.float32)
    geo = Geometry((1, 1), (1, 1), ((1, 1), (1, 1)))
    assert isinstance(layer_stats(small, None, 1, geo, decompose(small + 1, 1, "dw-pw", 1)), LayerStats)
    width = MAX_PATCH_DIM // 9 + 1
    wide = np.ones((2, width, 3, 3), np.float32)
    assert isinstance(layer_stats(wide, None, 1, geo, decompose(wide, 1, "pw-dw", 1)), FactoredStats)
    # the full-size pitch tracker's 1024 × 64-tap patches (65,536 values): statistics of a few MB, not 34 GB, and
    # fewer rows per batch (each costs ~70 M multiply-adds); a 128 × 64-tap layer keeps all 4096
    huge = np.random.default_rng(0).standard_normal((16, 1024, 64)).astype(np.float32)
    stats = layer_stats(huge, None, 1, GEO_1D, decompose(huge, 1, "pw-dw", 2))
    assert isinstance(stats, FactoredStats) and stats.stats_bytes < 16 * 2**20
    assert 256 <= stats.max_rows < 4096
    mid = np.zeros((128, 128, 64), np.float32)
    assert layer_stats(mid, None, 1, GEO_1D, decompose(mid + 1, 1, "pw-dw", 2)).max_rows == 4096


@pytest.mark.parametrize(("order", "groups"), [("dw-pw", 1), ("pw-dw", 1), ("dw-pw", 2), ("pw-dw", 2)])
def test_factored_candidates_equal_the_full_paths_where_both_fit(order, groups):
    """On a small layer forced through the factored statistics, the refit and whitened candidates are the full
    path's (same closed forms, statistics in another space)."""
    rng = np.random.default_rng(4)
    geo = Geometry((1, 1), (1, 1), ((1, 1), (1, 1)))
    mix = rng.standard_normal((4 * groups, 4 * groups))
    xo = np.maximum(np.einsum("cd,bdhw->bchw", mix, rng.standard_normal((8, 4 * groups, 8, 8))), 0) + 0.1
    xo = xo.astype(np.float32)
    xc = (xo + 0.2 * rng.standard_normal(xo.shape)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    dec = decompose(w, groups, order, 1)
    full = LayerStats(w, b, groups, geo, max_rows=10**9)
    fact = FactoredStats(w, b, groups, geo, dec, max_rows=10**9)
    for i in range(0, 8, 3):
        full.update(xc[i:i + 3], xo[i:i + 3])
    _feed(fact, xc, xo, step=3)
    want, got = calibrate_layer(full, dec), fact.calibrate()
    for name in ("data-free", "refit", "whitened"):
        assert got.errors[name] == pytest.approx(want.errors[name], rel=1e-3, abs=1e-6)
    if order == "pw-dw":  # one round of alternating least squares: no worse than its start, not beyond three rounds
        start = min(got.errors["refit"], got.errors["whitened"])
        assert want.errors["alternating"] - 1e-6 <= got.errors["alternating"] <= start + 1e-6


def test_sampled_rows_are_the_same_in_both_passes():
    w, b, xc, xo = _wide_data(samples=4)
    dec = decompose(w, 1, "pw-dw", 1)
    stats = FactoredStats(w, b, 1, GEO_1D, dec, max_rows=50)
    _feed(stats, xc, xo)
    free, white = stats.spaces["data-free"], stats.spaces["whitened"]
    alt = stats.spaces["alternating"]
    assert free.n == white.n == alt.n == 2 * 50
    assert free.Y == white.Y == alt.Y  # the same targets: the candidates' errors are comparable
    assert isinstance(white, _Space)


class WideNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, C, 5, padding=2)
        self.wide = nn.Conv1d(C, N, K_TAPS, padding=32)
        self.head = nn.Conv1d(N, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.wide(F.relu(self.stem(x)))))


def test_calibration_through_the_tap_no_longer_skips_a_wide_layer(tmp_path):
    torch.manual_seed(0)
    model = WideNet().eval()
    x = torch.randn(1, 2, 48)
    path = tmp_path / "wide.onnx"
    export_onnx(model, x, path, dynamic="batch")
    adapter = detect_format(path)
    work = tmp_path / "work"
    (work / "tap").mkdir(parents=True)
    loaded = adapter.load(path, work)
    name = adapter.input_specs(loaded)[0].name
    layers = adapter.find_convs(loaded, {name: (1, 2, 48)})
    tap = adapter.tap(loaded, layers, work)
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.standard_normal((12, 2, 48)), axis=2).astype(np.float32) / 5
    np.savez(tmp_path / "d.npz", **{name: smooth})
    samples = load_samples(tmp_path / "d.npz", [InputSpec(name, None, np.dtype(np.float32))])
    items = [(layer, decompose(layer.weight, layer.groups, "pw-dw", 1)) for layer in layers]
    result = calibrate(tap, items, samples, batch_size=6)
    assert not result.skipped and set(result.layers) == {layer.name for layer in layers}
    wide = next(layer.name for layer in layers if layer.weight.shape[1] * layer.weight.shape[2] > MAX_PATCH_DIM)
    outcome = result.layers[wide]
    assert outcome.statistics == "factored" and outcome.method != "data-free"
    assert outcome.calibrated < outcome.data_free
    # 2 batches: the first layer 1 pass per batch, the others 2, and the wide PW→DW layer takes the samples four
    # times (moments, whitened, alternating)
    assert result.passes == 2 * 1 + 2 * 2 * 2 + 3 * 2 * 2
