"""The planner's output error on the user's samples (``converter.planning._outerr``): the closed form for every rank
against ``‖(W − Ŵ)X‖² / ‖WX‖²`` computed directly, a budget that follows the output error where the weight error
misleads (checked on onnxruntime), bounded patch samples, and the energy policy left on the weight error."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn

import converter
from converter.algebra._decompose import decompose, max_rank
from converter.algebra._refit import Geometry, dense, patches, patches_at
from converter.data import load_samples
from converter.formats import detect_format
from converter.planning._cost import Candidate, CountingCostModel, error_report
from converter.planning._factorize import Spectra
from converter.planning._outerr import (
    OutputErrorCostModel,
    OutputErrors,
    PatchSample,
    capacities,
    measure_output_errors,
    rank_errors,
)
from converter.planning._plan import WEIGHT_ERROR
from tests.utils.models import export_onnx
from tests.utils.onnx_models import ort_run, rel_l2


def _direct(weight: np.ndarray, groups: int, order: str, rank: int, x: np.ndarray) -> float:
    """‖(W − Ŵ)X‖² / ‖WX‖² per group in float64, Ŵ the dense kernel of ``decompose``'s factors."""
    n, c = weight.shape[:2]
    ng = n // groups
    w_hat = dense(decompose(weight, groups, order, rank))
    num = den = 0.0
    for gi in range(groups):
        xs = x[:, gi * c:(gi + 1) * c].reshape(x.shape[0], -1).astype(np.float64).T
        w = weight[gi * ng:(gi + 1) * ng].reshape(ng, -1).astype(np.float64)
        num += float(np.sum(((w - w_hat[gi * ng:(gi + 1) * ng].reshape(ng, -1)) @ xs) ** 2))
        den += float(np.sum((w @ xs) ** 2))
    return num / den


@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
@pytest.mark.parametrize(("shape", "groups"), [((12, 6, 3, 3), 1), ((8, 3, 3, 3), 2), ((4, 16, 5), 1),
                                               ((16, 4, 2, 3), 1)], ids=["3x3", "grouped", "1d-k5", "2x3"])
def test_closed_form_matches_the_dense_kernels(order, shape, groups):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(shape).astype(np.float32)
    # correlated patches (not white), more of them than one chunk of the closed form
    k = int(np.prod(shape[2:]))
    mix = rng.standard_normal((shape[1] * groups * k, shape[1] * groups * k))
    x = (rng.standard_normal((1500, mix.shape[0])) @ mix).reshape(1500, shape[1] * groups, k).astype(np.float32)
    got = rank_errors(weight, groups, order, x)
    assert got.shape == (max_rank(weight.shape, groups, order),)
    want = [_direct(weight, groups, order, r, x) for r in range(1, got.size + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert got[-1] == pytest.approx(0.0, abs=1e-7) and np.all(np.diff(got) <= 1e-9)  # exact at full rank
    assert got[0] > 0.05


def test_patches_at_gathers_the_same_rows():
    rng = np.random.default_rng(1)
    for shape, kernel, geo in [((2, 3, 9, 8), (3, 3), Geometry((2, 1), (1, 2), ((1, 2), (0, 1)))),
                               ((3, 2, 11), (5,), Geometry((2,), (1,), "SAME_UPPER")),
                               ((1, 2, 5, 6, 6), (3, 3, 3), Geometry((1, 2, 2), (1, 1, 1), "SAME_LOWER"))]:
        x = rng.standard_normal(shape).astype(np.float32)
        full = patches(x, kernel, geo)
        rows = rng.choice(full.shape[0], 9, replace=False)
        np.testing.assert_array_equal(patches_at(x, kernel, geo, rows), full[rows])


# --- a budget follows the output error where the weight error misleads ---------------------------------------

def _kernel(parts: list[tuple[float, int]], n: int = 16, c: int = 16, seed: int = 0) -> torch.Tensor:
    """A 3×3 kernel ``Σ_j σ_j S_j ⊗ e_j`` (``e_0`` the all-equal tap vector, ``e_j`` orthonormal taps, ``S_j``
    ±1 matrices whose products have zero row and column sums): every DW→PW and PW→DW slice has exactly the
    singular values ``σ_j`` (times √N or √C) along tap directions ``e_j``."""
    taps, _ = np.linalg.qr(np.c_[np.ones(9), np.random.default_rng(seed).standard_normal((9, 8))])
    taps[:, 0] = np.abs(taps[:, 0])
    signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=(n, c))
    checker = (-1.0) ** np.add.outer(np.arange(n), np.arange(c))
    w = np.zeros((n, c, 9))
    for sigma, j in parts:
        w += sigma * (signs * checker ** j)[:, :, None] * taps[:, j]
    return torch.tensor(w.reshape(n, c, 3, 3), dtype=torch.float32)


class _Two(nn.Module):
    """Two 3×3 convs without padding. On spatially constant inputs only each kernel's sum over taps (its
    ``e_0`` part) acts. ``a`` has a large weight error at rank 1 that the data never sees; ``b`` a small one
    that discards everything the data sees."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3)
        self.b = nn.Conv2d(16, 16, 3)
        with torch.no_grad():
            self.a.weight.copy_(_kernel([(1.0, 0), (0.9, 1)]))
            self.b.weight.copy_(_kernel([(1.0, 1), (0.3, 0)], seed=5))
            self.a.bias.fill_(0.5)
            self.b.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _constant_images(count: int, seed: int = 0) -> np.ndarray:
    levels = np.random.default_rng(seed).standard_normal((count, 16, 1, 1)).astype(np.float32)
    return np.broadcast_to(levels, (count, 16, 6, 6)).copy()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    path = folder / "two.onnx"
    export_onnx(_Two().eval(), torch.zeros(2, 16, 6, 6), path, dynamic="batch")
    np.savez(folder / "data.npz", inputs=_constant_images(40))
    return path, folder / "data.npz"


def _ranks(report) -> dict[str, int | None]:
    return {layer.name: layer.rank for layer in report.layers if layer.status == "converted"}


def test_budget_spends_where_the_output_error_is(two):
    path, data = two
    # both layers at rank 1 cost 2·400 parameters, each rank more 400: the budget affords one layer at rank 2
    opts = dict(target_params=0.3, measure=False, verify=False, recover="none")
    free_result = converter.convert(path, **opts)
    used_result = converter.convert(path, data=data, **opts)
    free, used = free_result.report, used_result.report
    a, b = "/a/Conv", "/b/Conv"
    assert _ranks(free) == {a: 2, b: 1}  # weight error: a loses 45 % of its energy at rank 1, b 8 %
    assert _ranks(used) == {a: 1, b: 2}  # output error: a loses nothing the data sees at rank 1, b all of it
    assert free.policy["error"] == WEIGHT_ERROR and "output_error" not in free.policy
    assert used.policy["error"].startswith("output error on 32 calibration samples")  # 40 less 20 % held out
    assert used.policy["output_error"]["layers"] == 2 and not used.policy["output_error"]["weight_error_layers"]
    assert "output error" in used.policy["allocation"] and "weight error" in free.policy["allocation"]
    reasons = {layer.name: layer.reason for layer in used.layers}
    assert "least total output error" in reasons[b]
    figures = {name: float(r.rsplit(" ", 1)[1]) for name, r in reasons.items()}
    assert figures[b] < 1e-6 and figures[a] < 1e-6  # b exact at rank 2, a exact on these inputs at rank 1
    # the weight error in the report stays the weight error
    assert {layer.name: round(layer.rel_weight_error, 3) for layer in used.layers if layer.rank == 1} == {a: 0.669}
    # on onnxruntime, on images like the calibration samples: the output-error plan is exact, the other is not
    x = _constant_images(8, seed=7)
    want = ort_run(path.read_bytes(), {"x": x})[0]
    assert rel_l2(ort_run(used_result.to_bytes(), {"x": x})[0], want) < 1e-4
    assert rel_l2(ort_run(free_result.to_bytes(), {"x": x})[0], want) > 0.5


def test_planned_errors_are_the_layers_output_errors(two, tmp_path):
    path, data = two
    adapter = detect_format(path)
    model = adapter.load(path, tmp_path)
    layers = adapter.find_convs(model, {"x": (1, 16, 6, 6)})
    samples = load_samples(data, adapter.input_specs(model), what="data")
    tap = adapter.tap(model, layers, tmp_path)
    got = measure_output_errors(tap, layers, samples, Spectra(), ("dw-pw", "pw-dw"), batch_size=16)
    for order in ("dw-pw", "pw-dw"):
        np.testing.assert_allclose(got.curves[("/a/Conv", order)], 0.0, atol=1e-6)
        assert got.curves[("/b/Conv", order)][0] == pytest.approx(1.0, abs=1e-5)
        assert got.curves[("/b/Conv", order)][1] == pytest.approx(0.0, abs=1e-6)
    # every output position of 40 samples (4·4 for a, 2·2 for b) fits in the sample
    assert got.patches == {"/a/Conv": 40 * 16, "/b/Conv": 40 * 4}
    # the cost model fills the error of decomposed candidates only
    model_ = OutputErrorCostModel(CountingCostModel(), got)
    costs = model_.costs([Candidate(layers[1]), Candidate(layers[1], "dw-pw", 1, "split", 0.9)])
    assert costs[0].error is None and costs[1].error == pytest.approx(1.0, abs=1e-5)
    assert error_report(model_)["output_error"]["samples"] == 40 and model_.name == "counts"


# --- memory -------------------------------------------------------------------------------------------------

def test_patch_sample_is_bounded_and_uniform():
    geo = Geometry((1, 1), (1, 1), ((1, 1), (1, 1)))
    small, large = PatchSample((3, 3), geo, 200, seed=1), PatchSample((3, 3), geo, 200, seed=1)
    # each position's patch centre holds its global index, to see which positions were kept

    def batch(start: int, count: int) -> np.ndarray:
        return (start * 64 + np.arange(count * 64, dtype=np.float32)).reshape(count, 1, 8, 8)
    for s in range(0, 16, 8):
        small.add(batch(s, 8))
    for s in range(0, 256, 8):
        large.add(batch(s, 8))
    assert small.patches.shape == large.patches.shape == (200, 1, 9)
    assert small.nbytes == large.nbytes == 200 * 9 * 4
    assert large.seen == 256 * 64
    kept = large.patches[:, 0, 4]
    assert np.unique(kept).size == 200
    # uniform over all batches: the kept positions spread over the whole range, not the first or last batches
    assert 0.35 < np.mean(kept) / (256 * 64) < 0.65 and np.quantile(kept, 0.1) < 0.25 * 256 * 64 < np.quantile(
        kept, 0.4)


def test_capacities_share_the_memory():
    # the narrow layers need less than a third each: what they leave goes to the wide one
    caps = capacities([100, 100, 10_000], [1, 1, 1], memory=3_000_000, most=4096)
    assert caps[:2] == [4096, 4096] and caps[2] == (3_000_000 - 2 * 409_600) // 10_000
    assert sum(c * b for c, b in zip(caps, [100, 100, 10_000], strict=True)) <= 3_000_000
    assert capacities([100, 100, 10_000], [1, 1, 1], memory=1_000_000)[:2] == [3333, 3333]  # equal shares
    # the compute cap: a layer whose errors cost 1e6 multiply-adds per patch gets macs // 1e6 patches
    assert capacities([100], [1_000_000], macs=300_000_000) == [300]


class _Deep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)))


def test_memory_does_not_grow_with_the_samples(tmp_path):
    path = tmp_path / "deep.onnx"
    torch.manual_seed(0)
    export_onnx(_Deep().eval(), torch.zeros(2, 3, 16, 16), path, dynamic="batch")
    adapter = detect_format(path)
    model = adapter.load(path, tmp_path)
    layers = adapter.find_convs(model, {"x": (1, 3, 16, 16)})
    tap = adapter.tap(model, layers, tmp_path)
    rng = np.random.default_rng(0)
    sizes, peaks = {}, {}
    for count in (16, 64, 512):
        np.savez(tmp_path / f"d{count}.npz", inputs=rng.standard_normal((count, 3, 16, 16)).astype(np.float32))
        samples = load_samples(tmp_path / f"d{count}.npz", adapter.input_specs(model), what="data")
        tracemalloc.start()
        got = measure_output_errors(tap, layers, samples, Spectra(), ("dw-pw",), batch_size=16, max_patches=1000)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sizes[count] = got.patches
        assert isinstance(got, OutputErrors) and got.samples == count
    assert sizes[16] == sizes[64] == sizes[512] == {layer.name: 1000 for layer in layers}
    assert peaks[512] < 1.3 * peaks[64]  # 8× the samples, the same peak


# --- the energy policy stays on the weight error ------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"energy": 0.8}], ids=["default", "energy"])
def test_energy_policy_ignores_the_data(two, options):
    path, data = two
    opts = dict(measure=False, verify=False, recover="none", **options)
    free = converter.convert(path, **opts).report
    used = converter.convert(path, data=data, **opts).report

    def decisions(report):
        return [(d.name, d.status, d.order, d.rank, d.reason) for d in report.layers]

    assert decisions(used) == decisions(free)
    assert used.policy["error"] == free.policy["error"] == WEIGHT_ERROR and "output_error" not in used.policy


def test_rank_policy_picks_forms_on_the_output_error(two):
    path, data = two
    report = converter.convert(path, data=data, rank=1, measure=False, verify=False, recover="none").report
    assert report.policy["error"].startswith("output error")
    reasons = {d.name: d.reason for d in report.layers}
    assert reasons["/b/Conv"].startswith("rank 1 for every layer; this layer's relative output error on the "
                                         "calibration samples 1")
