"""Latency in the planner and the pipeline: choices on a fake cost model (fastest form, rank rounding, the latency
budget), never slower by default, no latency claims about an unchanged model, the timing cache across
conversions, --no-measure, throughput."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import converter
from converter import ConversionConfig, InvalidOptionsError
from converter.latency._harness import Comparison, Timing, compare
from converter.pipeline import _measure as _stage
from converter.planning._cost import Candidate, Cost, macs_of, params_of
from converter.planning._plan import plan
from tests.converter.test_plan import layer
from tests.utils.models import export_onnx

FAST = {"latency_runs": 5, "latency_budget_s": 10}


class _Fake:
    """Latency by formula: keeping costs ``keep`` ms; a decomposition ``base + per_rank·K`` ms, fused ×2, summed
    −0.1; dw-pw at a rank whose C·K fills 8-channel blocks gets ``aligned`` ms off."""

    name = "fake"
    block = 8

    def __init__(self, keep: float = 10.0, base: float = 1.0, per_rank: float = 1.0, aligned: float = 0.0) -> None:
        self.keep, self.base, self.per_rank, self.aligned = keep, base, per_rank, aligned

    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        out = []
        for c in candidates:
            ms = self.keep
            if not c.keeps:
                k = c.rank or 1
                ms = (self.base + self.per_rank * k) * (2 if c.lowering == "fused" else 1)
                ms -= 0.1 if c.lowering == "summed" else 0.0
                c_in = c.layer.in_channels // c.layer.groups
                if c.order == "dw-pw" and (c_in * k) % 8 == 0:
                    ms -= self.aligned
            out.append(Cost(params_of(c.layer, c.order, c.rank), macs_of(c.layer, c.order, c.rank), latency_ms=ms))
        return out


def test_default_policy_takes_the_fastest_lowering() -> None:
    lay = layer("a", n=32, m=32, decay=0.7)
    d = plan([lay], ConversionConfig(), _Fake(), total_params=1, total_macs=None).decisions[0]
    assert d.rank >= 2 and d.converted and d.lowering == "summed"
    assert d.cost_after.latency_ms < d.cost_before.latency_ms
    # an explicit policy still gets the fastest lowering of what it asks for
    d = plan([lay], ConversionConfig(rank=2, order="pw-dw"), _Fake(), total_params=1, total_macs=None).decisions[0]
    assert d.converted and d.rank == 2 and d.lowering == "split"  # for pw-dw "summed" is "split": not a candidate


def test_default_policy_keeps_a_layer_measured_slower() -> None:
    lay = layer("a", n=32, m=32, decay=0.3)
    d = plan([lay], ConversionConfig(), _Fake(keep=1.0), total_params=1, total_macs=None).decisions[0]
    assert not d.converted and "would be slower" in d.reason
    # so does a rank policy (every form of the rank measured slower), unless forced
    d = plan([lay], ConversionConfig(rank=1), _Fake(keep=1.0), total_params=1, total_macs=None).decisions[0]
    assert not d.converted and "would be slower" in d.reason and "--force" in d.reason
    d = plan([lay], ConversionConfig(rank=1, force=True), _Fake(keep=1.0), total_params=1,
             total_macs=None).decisions[0]
    assert d.converted


def test_rank_rounded_up_to_the_channel_block_where_no_slower() -> None:
    # 12 input channels: rank 2 gives 24 (aligned) — pick a layer whose energy target lands on rank 1: 12·1 = 12
    # is off the 8-channel block, 12·2 = 24 is on it.
    lay = layer("a", n=24, m=12, decay=0.05)
    counted = plan([lay], ConversionConfig(order="dw-pw"), total_params=1, total_macs=None).decisions[0]
    assert counted.rank == 1
    pays = plan([lay], ConversionConfig(order="dw-pw", lowering="split"), _Fake(aligned=5.0), total_params=1,
                total_macs=None).decisions[0]
    assert pays.converted and pays.rank == 2 and "rounded up 1→2" in pays.reason and "8-channel" in pays.reason
    assert pays.energy > counted.energy
    costs = plan([lay], ConversionConfig(order="dw-pw", lowering="split"), _Fake(aligned=0.0), total_params=1,
                 total_macs=None).decisions[0]
    assert costs.rank == 1 and "rounded" not in costs.reason
    explicit = plan([lay], ConversionConfig(order="dw-pw", rank=1), _Fake(aligned=5.0), total_params=1,
                    total_macs=None).decisions[0]
    assert explicit.rank == 1  # an explicit rank is kept as named


def test_target_latency_allocates_the_measured_budget() -> None:
    layers = [layer("a", n=32, m=32, decay=0.3, seed=1), layer("b", n=32, m=32, decay=0.8, seed=2)]
    fake = _Fake(keep=10.0, base=0.0, per_rank=1.0)
    total = 40.0  # the whole model; the two layers take 20 ms of it
    p = plan(layers, ConversionConfig(target_latency=0.75, order="dw-pw"), fake, total_params=10**6,
             total_macs=None, total_latency_ms=total)
    assert p.policy["budget_metric"] == "latency_ms" and p.policy["achieved"] <= 0.75 + 1e-9
    spent = total - sum(d.cost_before.latency_ms - d.cost_after.latency_ms for d in p.decisions)
    assert spent <= 0.75 * total + 1e-9
    a, b = p.decisions
    assert a.converted and b.converted
    # the flatter spectrum (b) needs more rank for the same error: it gets at least as much
    assert b.rank >= a.rank
    with pytest.raises(InvalidOptionsError, match="cannot be met"):
        plan(layers, ConversionConfig(target_latency=0.1, order="dw-pw"), fake, total_params=10**6,
             total_macs=None, total_latency_ms=total)
    with pytest.raises(InvalidOptionsError, match="needs measured latency"):
        plan(layers, ConversionConfig(target_latency=0.75), total_params=10**6, total_macs=None)


def test_budget_policies_take_the_fastest_lowering() -> None:
    lay = layer("a", n=32, m=32, decay=0.5)
    d = plan([lay], ConversionConfig(target_params=0.5, order="dw-pw"), _Fake(),
             total_params=params_of(lay, None, None), total_macs=None).decisions[0]
    assert d.converted and d.lowering == "summed"


# ---- end to end ---------------------------------------------------------------------------------------------------

def _low_rank_net(tmp_path: Path, channels: int = 48, size: int = 40) -> Path:
    """Three 3×3 convs whose per-input-channel slices are rank 1: the default policy converts them at rank 1,
    which cuts their MACs about 7×."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, channels, 1), nn.ReLU(),
                        *[m for _ in range(3) for m in (nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())])
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                u = torch.randn(channels, channels, 1)
                v = torch.randn(1, channels, 9)
                m.weight.copy_((u * v).reshape(channels, channels, 3, 3) / 30)  # W[n, c] = u[n, c]·v[c]
    path = tmp_path / "lowrank.onnx"
    export_onnx(net.eval(), torch.randn(1, 3, size, size), path, dynamic="batch")
    return path


def _pointwise_net(tmp_path: Path) -> Path:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    path = tmp_path / "pointwise.onnx"
    export_onnx(net, torch.randn(1, 3, 16, 16), path, dynamic=False)
    return path


def test_unchanged_model_gets_no_latency_claim(tmp_path: Path) -> None:
    src = _pointwise_net(tmp_path)
    result = converter.convert(src, tmp_path / "out.onnx", **FAST)
    r = result.report
    assert not r.converted_layers and result.output_path.read_bytes() == src.read_bytes()
    assert r.latency is None
    assert not [w for w in r.warnings if "slower" in w]


def _not_faster(*_: object, **__: object) -> Comparison:
    rng = np.random.default_rng(0)
    a = Timing(tuple(0.010 * (1 + 0.05 * rng.standard_normal(10))))
    b = Timing(tuple(0.012 * (1 + 0.05 * rng.standard_normal(10))))
    return compare(a, b)


def test_never_slower_returns_the_original_when_the_model_does_not_pay(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = _low_rank_net(tmp_path)
    # the whole model measures slower every time (as on a backend where conversion does not pay)
    monkeypatch.setattr(_stage, "compare_files", _not_faster)
    result = converter.convert(src, tmp_path / "out.onnx", **FAST)
    r = result.report
    assert result.output_path.read_bytes() == src.read_bytes()
    assert not r.converted_layers and r.latency is None
    assert r.macs.converted == r.macs.original and r.params.converted == r.params.original
    assert any("not faster, so the original is returned unchanged" in w for w in r.warnings)
    reverted = [lay for lay in r.layers if lay.reason.startswith("reverted")]
    assert reverted and all("not faster" in lay.reason for lay in reverted)
    assert r.policy["never_slower"]["rounds"] and r.fidelity.rel_l2 == 0.0


def test_never_slower_on_the_real_runtime(tmp_path: Path) -> None:
    src = _low_rank_net(tmp_path)
    r = converter.convert(src, tmp_path / "out.onnx", **FAST).report
    if r.converted_layers:  # converted only with evidence of a gain
        assert r.latency.speedup_low > 1.0
        assert all(lay.rank == 1 for lay in r.converted_layers)
    else:
        assert r.latency is None and any("unchanged" in w for w in r.warnings)


def test_a_rank_policy_is_not_guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _low_rank_net(tmp_path)
    monkeypatch.setattr(_stage, "compare_files", _not_faster)
    r = converter.convert(src, tmp_path / "out.onnx", rank=1, **FAST).report
    assert len(r.converted_layers) == 3 and r.latency is not None and "never_slower" not in r.policy
    # slower beyond noise: the report says so
    assert any("slower than the original" in w for w in r.warnings)


def test_second_conversion_hits_the_timing_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path / "cache"))
    src = _low_rank_net(tmp_path, channels=40, size=24)
    first = converter.convert(src, tmp_path / "a.onnx", rank=2, verify=False, **FAST).report
    second = converter.convert(src, tmp_path / "b.onnx", rank=2, verify=False, **FAST).report
    m1, m2 = first.policy["latency"], second.policy["latency"]
    assert m1["measured"] and m1["layers_timed"] >= 1
    assert m2["layers_timed"] == 0 and m2["layers_cached"] == m1["layers_timed"] + m1["layers_cached"]
    assert [lay.lowering for lay in first.layers] == [lay.lowering for lay in second.layers]


def test_no_measure_plans_on_counts(tmp_path: Path) -> None:
    src = _low_rank_net(tmp_path, channels=32, size=16)
    r = converter.convert(src, tmp_path / "out.onnx", rank=2, measure=False, **FAST).report
    assert r.policy["cost_model"] == "counts" and "latency" not in r.policy
    assert r.timings.measure_s is None and r.latency is not None
    assert all(lay.latency_ms_before is None for lay in r.layers)
    with pytest.raises(InvalidOptionsError, match="target_latency needs measured latency"):
        converter.convert(src, tmp_path / "out2.onnx", target_latency=0.8, measure=False, **FAST)


def test_target_latency_end_to_end_and_throughput(tmp_path: Path) -> None:
    src = _low_rank_net(tmp_path, channels=32, size=24)
    r = converter.convert(src, tmp_path / "out.onnx", target_latency=0.9, throughput_batch=4, **FAST).report
    assert r.policy["kind"] == "target_latency" and r.policy["budget_metric"] == "latency_ms"
    assert r.policy["latency"]["original_model_ms"] > 0
    assert r.converted_layers and all(lay.latency_ms_after is not None for lay in r.converted_layers)
    tp = r.latency.throughput
    assert tp is not None and tp.batch == 4 and tp.original_per_s > 0 and tp.converted_per_s > 0
    assert r.latency.original_p99_ms >= r.latency.original_ms and r.latency.speedup_low <= r.latency.speedup


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measured_and_planned_on_cuda(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    src = _low_rank_net(tmp_path, channels=32, size=24)
    r = converter.convert(src, tmp_path / "out.onnx", rank=2, device="cuda", **FAST).report
    assert r.policy["latency"]["backend"] == "onnxruntime-cuda" and r.policy["latency"]["channel_block"] == 1
    assert r.latency.backend == "onnxruntime-cuda" and r.latency.device == "cuda"
    assert r.latency.speedup_low <= r.latency.speedup <= r.latency.speedup_high


class _SlowPwDw(_Fake):
    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        return [Cost(c.params, c.macs, latency_ms=(c.latency_ms or 0) + (5.0 if cand.order == "pw-dw" else 0.0))
                for cand, c in zip(candidates, super().costs(candidates), strict=True)]


def test_rank_policy_breaks_near_ties_of_weight_error_by_latency() -> None:
    # random weights: both forms keep about the same error at rank 2 (within 5 %), so the faster one is taken
    lay = layer("a", n=16, m=16, seed=0)
    errs = {o: plan([lay], ConversionConfig(rank=2, order=o), total_params=1, total_macs=None).decisions[0]
            .rel_weight_error ** 2 for o in ("dw-pw", "pw-dw")}
    assert abs(errs["dw-pw"] - errs["pw-dw"]) <= 0.05 * min(errs.values())
    d = plan([lay], ConversionConfig(rank=2), _SlowPwDw(), total_params=1, total_macs=None).decisions[0]
    assert d.order == "dw-pw"
    # every output channel's C×k kernel of rank 2: PW→DW is exact at rank 2, DW→PW is not — error wins over speed
    rng = np.random.default_rng(1)
    w = np.einsum("ncr,nrk->nck", rng.standard_normal((16, 16, 2)), rng.standard_normal((16, 2, 9)))
    exact = layer("b", n=16, m=16)
    exact.weight = w.reshape(16, 16, 3, 3).astype(np.float32)
    d = plan([exact], ConversionConfig(rank=2), _SlowPwDw(), total_params=1, total_macs=None).decisions[0]
    assert d.order == "pw-dw" and d.rel_weight_error < 1e-3


def _scripted(*outcomes: bool):
    """A ``compare_files`` stand-in whose n-th call measures faster (1.5×) or not (0.83×), and counts calls."""
    calls: list[int] = []

    def fake(*_: object, **__: object) -> Comparison:
        calls.append(1)
        rng = np.random.default_rng(len(calls))
        ratio = 1.5 if outcomes[min(len(calls), len(outcomes)) - 1] else 1 / 1.2
        a = Timing(tuple(0.012 * (1 + 0.02 * rng.standard_normal(10))))
        b = Timing(tuple(0.012 / ratio * (1 + 0.02 * rng.standard_normal(10))))
        return compare(a, b)

    return fake, calls


def test_the_guard_reverts_layers_and_its_measurement_is_the_reports(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # (with --data the default is the max_accuracy_drop search, which measures its plans itself: the guard is the
    # default policy's check without data; tests/converter/test_search_pipeline.py covers the search)
    src = _low_rank_net(tmp_path)
    # the whole model is not faster with all three layers, faster once some are reverted
    fake, calls = _scripted(False, True)
    monkeypatch.setattr(_stage, "compare_files", fake)
    seen: list[str] = []
    r = converter.convert(src, tmp_path / "out.onnx", progress=lambda s, f: seen.append(s), **FAST).report
    order = list(dict.fromkeys(seen))
    assert order.index("measure") < order.index("guard") < order.index("save") < order.index("verify")
    assert "search" not in order and "calibrate" not in order
    kept = {lay.name for lay in r.converted_layers}
    reverted = {lay.name for lay in r.layers if lay.reason.startswith("reverted")}
    assert kept and reverted and not kept & reverted
    # the guard's last measurement is the report's: the same graph is not timed again
    assert len(calls) == 2 and r.latency.speedup == pytest.approx(r.policy["never_slower"]["rounds"][-1]["speedup"])


def test_the_guard_returning_the_original_stages_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _low_rank_net(tmp_path)
    fake, _ = _scripted(False)
    monkeypatch.setattr(_stage, "compare_files", fake)
    result = converter.convert(src, tmp_path / "out.onnx", **FAST)
    r = result.report
    assert result.output_path.read_bytes() == src.read_bytes() and not r.converted_layers
    assert r.latency is None and any("returned unchanged" in w for w in r.warnings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lowrank.onnx", "out.onnx"]  # nothing staged


def test_fidelity_is_measured_on_the_held_out_samples(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    src = tmp_path / "m.onnx"
    export_onnx(net, torch.randn(1, 3, 16, 16), src, dynamic="batch")  # random kernels: rank 1 is not exact
    data = tmp_path / "d.npz"
    np.savez(data, inputs=np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32))
    r = converter.convert(src, tmp_path / "a.onnx", rank=1, data=data, recover="none", **FAST).report
    # the 20 % of --data held out from calibration (8 of 40), the same samples the accuracy section scores
    assert r.fidelity.inputs == "held_out" and r.fidelity.samples == 8 == r.accuracy.samples
    assert r.fidelity.rel_l2 > 0.01 and r.fidelity.rel_l2 == pytest.approx(r.accuracy.rel_l2.data_free, rel=1e-3)
    # --eval's samples, at most FIDELITY_SAMPLES of them
    big = tmp_path / "e.npz"
    np.savez(big, inputs=np.random.default_rng(1).standard_normal((300, 3, 16, 16)).astype(np.float32))
    r = converter.convert(src, tmp_path / "b.onnx", rank=1, eval=big, **FAST).report
    assert r.fidelity.inputs == "held_out" and r.fidelity.samples == _stage.FIDELITY_SAMPLES
    # --inputs win; without samples, random inputs
    r = converter.convert(src, tmp_path / "c.onnx", rank=1, inputs=data, **FAST).report
    assert r.fidelity.inputs == "user" and r.fidelity.samples == 40
    r = converter.convert(src, tmp_path / "d.onnx", rank=1, **FAST).report
    assert r.fidelity.inputs == "random"
