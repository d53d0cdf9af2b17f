"""The latency module on its own: harness statistics, the timing cache, micro-models and candidate timing on the
real runtimes, the latency cost model's interpolation, the report's latency section and its warning."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from converter.algebra._decompose import decompose, lower
from converter.formats import ConvLayer, Rewrite, adapter_for
from converter.formats._micro import INPUT, LAYER, LayerShape, geometry
from converter.latency._cache import Backend, TimingCache, backend_for, block_size, cache_dir
from converter.latency._candidates import ORIGINAL, Candidate, CandidateTimer, LayerTimes, lowerings_for, rounded_rank
from converter.latency._guard import never_slower
from converter.latency._harness import Comparison, Timing, compare, speedup_interval, time_interleaved
from converter.latency._model import LatencyModel, focus_ranks
from converter.latency._timers import timed_runner
from converter.latency._whole import batched, latency_report, speed_warning

BACKEND = Backend("onnxruntime", "1.0", "cpu", "avx,avx2", 1, 8)


# ---- harness ----------------------------------------------------------------------------------------------------

def test_interleaved_runs_rotate_who_goes_first() -> None:
    order: list[str] = []
    ta, tb, tc = time_interleaved([lambda: order.append("a"), lambda: order.append("b"), lambda: order.append("c")],
                                  min_runs=3, max_runs=3, warmup=1)
    assert ta.runs == tb.runs == tc.runs == 3
    rounds = [order[i:i + 3] for i in range(3, 12, 3)]  # after the warm-up round
    assert [r[0] for r in rounds] == ["a", "b", "c"]


def test_budget_stops_after_min_runs() -> None:
    (t,) = time_interleaved([lambda: time.sleep(0.01)], min_runs=3, max_runs=1000, warmup=0, budget_s=0.05,
                            rel_precision=0.0)
    assert 3 <= t.runs < 20


def test_percentiles_in_ms() -> None:
    t = Timing(tuple(np.linspace(0.001, 0.1, 100)))
    assert t.p50_ms == pytest.approx(50.5, rel=1e-3)
    assert t.p90_ms > t.p50_ms and t.p99_ms > t.p90_ms


def test_noise_gives_an_interval_containing_one() -> None:
    rng = np.random.default_rng(1)
    a = 0.010 * (1 + 0.2 * rng.standard_normal(40)).clip(0.5)
    b = 0.010 * (1 + 0.2 * rng.standard_normal(40)).clip(0.5)
    ratio, lo, hi = speedup_interval(a, b)
    assert lo < 1.0 < hi
    assert lo <= ratio <= hi


def test_a_real_difference_excludes_one() -> None:
    rng = np.random.default_rng(2)
    a = 0.020 * (1 + 0.05 * rng.standard_normal(30))
    b = 0.010 * (1 + 0.05 * rng.standard_normal(30))
    cmp = compare(Timing(tuple(a)), Timing(tuple(b)))
    assert cmp.faster and not cmp.slower
    assert 1.8 < cmp.low < cmp.speedup < cmp.high < 2.2


# ---- report section and warning -----------------------------------------------------------------------------------

def _comparison(fa: float, fb: float, noise: float, seed: int = 0) -> Comparison:
    rng = np.random.default_rng(seed)
    a = fa * (1 + noise * rng.standard_normal(30)).clip(0.3)
    b = fb * (1 + noise * rng.standard_normal(30)).clip(0.3)
    return compare(Timing(tuple(a)), Timing(tuple(b)))


def test_no_warning_from_noise() -> None:
    # the same model timed twice on a noisy machine: a ratio below 1 inside the noise is not a finding
    lat = latency_report(_comparison(0.010, 0.0105, 0.3, seed=3), BACKEND, batch=1)
    assert lat.speedup_low < 1.0 < lat.speedup_high
    assert speed_warning(lat) is None


def test_warning_when_slower_beyond_noise() -> None:
    lat = latency_report(_comparison(0.010, 0.020, 0.05), BACKEND, batch=1)
    assert lat.speedup_high < 1.0
    msg = speed_warning(lat)
    assert msg is not None and "slower" in msg and "interval" in msg and "batch 1" in msg


def test_latency_report_keys() -> None:
    cmp = _comparison(0.02, 0.01, 0.05)
    lat = latency_report(cmp, BACKEND, batch=4, throughput=cmp, throughput_batch=32)
    d = lat.model_dump()
    for key in ("original_ms", "converted_ms", "original_p90_ms", "original_p99_ms", "converted_p99_ms",
                "speedup", "speedup_low", "speedup_high", "confidence", "threads", "batch", "processor"):
        assert d[key] is not None, key
    assert d["batch"] == 4 and d["threads"] == 1
    assert d["throughput"]["batch"] == 32 and d["throughput"]["converted_per_s"] > d["throughput"]["original_per_s"]


def test_batched_repeats_the_batch_dim() -> None:
    out = batched({"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, 5)
    assert out["x"].shape == (5, 3)
    np.testing.assert_array_equal(out["x"][2], out["x"][0])


# ---- cache ----------------------------------------------------------------------------------------------------------

def test_cache_round_trip_and_backend_isolation(tmp_path: Path) -> None:
    c = TimingCache(BACKEND, tmp_path)
    c.put("k", 1.25)
    assert c.save()
    assert TimingCache(BACKEND, tmp_path).get("k") == 1.25
    other = Backend("onnxruntime", "1.0", "cpu", "avx,avx2", 2, 8)  # another thread count
    assert TimingCache(other, tmp_path).get("k") is None


def test_cache_ignores_a_damaged_file_and_an_unwritable_folder(tmp_path: Path) -> None:
    c = TimingCache(BACKEND, tmp_path)
    c.path.write_text("{not json")
    assert TimingCache(BACKEND, tmp_path).get("k") is None
    blocked = tmp_path / "file"
    blocked.write_text("x")
    d = TimingCache(BACKEND, blocked / "sub")  # a folder under a file cannot be made
    d.put("k", 1.0)
    assert d.save() is False


def test_cache_merges_with_what_another_process_wrote(tmp_path: Path) -> None:
    a, b = TimingCache(BACKEND, tmp_path), TimingCache(BACKEND, tmp_path)
    a.put("x", 1.0)
    a.save()
    b.put("y", 2.0)
    b.save()
    data = json.loads(b.path.read_text())["ms"]
    assert data == {"x": 1.0, "y": 2.0}


def test_cache_dir_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEPCONV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "sepconv"


def test_cache_dir_without_a_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEPCONV_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cache_dir().name == "sepconv"  # a temporary folder: the conversion goes on


def test_backend_and_block_size() -> None:
    assert block_size(("avx", "avx2", "avx512f")) == 16
    assert block_size(("avx", "avx2")) == 8
    assert block_size(("aarch64",)) == 4
    b = backend_for("onnx", "cpu", 2)
    assert b.runtime == "onnxruntime" and b.threads == 2 and b.block in (4, 8, 16)
    assert backend_for("torchscript", "cpu", 1).runtime == "torch"
    # one runtime, two executors: a .pt2 program's timings are not TorchScript's (own cache key, same label)
    ts, pt2 = backend_for("torchscript", "cpu", 1), backend_for("pt2", "cpu", 1)
    assert pt2.key != ts.key and pt2.label == ts.label == "torch-cpu"


# ---- micro-models and candidates ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("size_in", "size_out", "k"), [(56, 56, 3), (56, 28, 3), (224, 112, 7), (32, 30, 3),
                                                        (17, 9, 3), (20, 10, 4), (7, 7, 5)])
def test_geometry_reproduces_the_output_size(size_in: int, size_out: int, k: int) -> None:
    stride, begin, end = geometry(size_in, size_out, k)
    assert (size_in + begin + end - k) // stride + 1 == size_out
    assert abs(begin - end) <= 1


SHAPE = LayerShape((3, 3), 16, 24, 1, (12, 12), (6, 6))


def build_micro(fmt: str, shape: LayerShape, batch: int, folder: Path) -> Path:
    return adapter_for(fmt).micro_model(shape, batch, folder)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_micro_model_has_the_layer_at_its_shape(fmt: str, tmp_path: Path) -> None:
    adapter = adapter_for(fmt)
    path = build_micro(fmt, SHAPE, 2, tmp_path)
    model = adapter.load(path, tmp_path / "w")
    layers = {lay.name: lay for lay in adapter.find_convs(model, {INPUT: (2, 16, 12, 12)})}
    lay = layers[LAYER]
    assert (lay.in_channels, lay.out_channels, lay.groups, tuple(lay.kernel)) == (16, 24, 1, (3, 3))
    assert tuple(lay.in_spatial) == (12, 12) and tuple(lay.out_spatial) == (6, 6)


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT: x})[0]


def test_summed_lowering_matches_split_without_a_concat(tmp_path: Path) -> None:
    adapter = adapter_for("onnx")
    src = build_micro("onnx", SHAPE, 1, tmp_path / "src")
    x = np.random.default_rng(0).standard_normal((1, 16, 12, 12)).astype(np.float32)
    outs = {}
    for lowering in ("split", "summed"):
        model = adapter.load(src, tmp_path / lowering)
        layer = next(lay for lay in adapter.find_convs(model, {INPUT: x.shape}) if lay.name == LAYER)
        dec = decompose(layer.weight, 1, "dw-pw", 3)
        low = lower(dec, lowering)
        assert low.join == ("concat" if lowering == "split" else "sum")
        out = adapter.save(adapter.apply(model, [Rewrite(layer, low)]), tmp_path / f"{lowering}.onnx")
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        assert ("Concat" in ops) == (lowering == "split")
        outs[lowering] = _run_onnx(out, x)
    np.testing.assert_allclose(outs["summed"], outs["split"], rtol=1e-4, atol=1e-5)


def test_lowerings_and_rounded_ranks() -> None:
    assert lowerings_for("dw-pw", 1, 1) == ("split",)
    assert lowerings_for("dw-pw", 2, 1) == ("split", "fused", "summed")
    assert lowerings_for("dw-pw", 2, 2) == ("split", "fused")
    assert lowerings_for("pw-dw", 3, 1) == ("split", "fused")
    stem = LayerShape((7, 7), 3, 64, 1, (224, 224), (112, 112))
    assert rounded_rank(stem, "dw-pw", 2, 8) == 8  # 3·8 = 24 channels: whole 8-channel blocks
    assert rounded_rank(stem, "dw-pw", 2, 1) is None  # no blocking (GPU)
    assert rounded_rank(SHAPE, "dw-pw", 2, 8) is None  # 16·2 is aligned already
    assert rounded_rank(stem, "pw-dw", 2, 8) is None
    odd = LayerShape((3, 3), 12, 12, 1, (8, 8), (8, 8))
    assert rounded_rank(odd, "dw-pw", 3, 8) == 4  # 12·3 = 36 → 12·4 = 48


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_candidates_are_timed_then_cached(fmt: str, tmp_path: Path) -> None:
    adapter = adapter_for(fmt)
    backend = backend_for(fmt, "cpu", 1)
    cands = [Candidate("dw-pw", 2, low) for low in lowerings_for("dw-pw", 2, 1)] + [Candidate("pw-dw", 1, "split")]
    timer = CandidateTimer(adapter, backend, 1, TimingCache(backend, tmp_path), max_runs=5)
    first = timer.time_layer(SHAPE, cands)
    assert not first.cached and set(first.ms) == {ORIGINAL, *cands}
    assert all(ms > 0 for ms in first.ms.values())
    timer.cache.save()
    # a second conversion (a new timer, the cache read back from disk) times nothing
    again = CandidateTimer(adapter, backend, 1, TimingCache(backend, tmp_path), max_runs=5)
    t0 = time.perf_counter()
    second = again.time_layer(SHAPE, cands)
    assert second.cached and second.ms == pytest.approx(first.ms, rel=1e-4)
    assert time.perf_counter() - t0 < 0.05
    assert again.cache.hits == len(cands) + 1
    # one candidate more: the layer is timed again as a whole, so the numbers compared come from one run
    third = again.time_layer(SHAPE, [*cands, Candidate("pw-dw", 2, "fused")])
    assert not third.cached and len(third.ms) == len(cands) + 2


# ---- the cost model ---------------------------------------------------------------------------------------------

def _layer(name: str = "conv", m: int = 16, n: int = 24) -> ConvLayer:
    return ConvLayer(name, "Conv", (3, 3), m, n, 1, np.zeros((n, m, 3, 3), np.float32),
                     in_spatial=(12, 12), out_spatial=(12, 12))


def _macs(layer: ConvLayer, order: str | None, rank: int | None) -> int:
    n, m, p = layer.out_channels, layer.in_channels, 144
    return n * m * 9 * p if order is None else rank * (m * 9 + n * m) * p


class _FakeTimer:
    """Stands in for CandidateTimer: a latency of 1 ms + 0.5 ms per rank, 2× for fused; original 4 ms."""

    def __init__(self) -> None:
        self.backend = BACKEND
        self.batch = 1
        self.cache = TimingCache(BACKEND, enabled=False)
        self.cached_layers = 0
        self.asked: list[list[Candidate]] = []

    def time_layer(self, shape: LayerShape, cands: list[Candidate], *, budget_s: float | None = None,
                   layer: ConvLayer | None = None) -> LayerTimes:
        self.asked.append(list(cands))
        ms = {ORIGINAL: 4.0}
        for c in cands:
            ms[c] = (1.0 + 0.5 * c.rank) * (2 if c.lowering == "fused" else 1)
        return LayerTimes(ms=ms)


def test_focus_ranks_per_policy() -> None:
    curve = {"dw-pw": [0.5, 0.8, 0.92, 0.97, 1.0], "pw-dw": [0.6, 0.95, 1.0]}
    assert focus_ranks("energy", 0.9, None, curve) == {"dw-pw": (3,), "pw-dw": (2,)}
    assert focus_ranks("rank", 4, None, curve) == {"dw-pw": (4,), "pw-dw": (3,)}
    assert focus_ranks("energy", 0.9, 1, curve) == {"dw-pw": (1,), "pw-dw": (1,)}
    assert focus_ranks("target_params", 0.5, None, curve) == {"dw-pw": (1, 2, 4), "pw-dw": (1, 2, 3)}


def test_latency_model_times_focus_ranks_and_interpolates() -> None:
    timer = _FakeTimer()
    model = LatencyModel(timer, _macs, budget_s=10)  # type: ignore[arg-type]
    layer = _layer()
    model.prepare([(layer, {"dw-pw": (1, 4)})])
    assert {c.rank for c in timer.asked[0]} == {1, 4}
    assert model.latency(layer, None, None, None) == 4.0
    assert model.latency(layer, "dw-pw", 4, "fused") == pytest.approx(6.0)
    assert model.latency(layer, "dw-pw", 2, "split") == pytest.approx(2.0)  # between timed ranks 1 and 4
    assert model.latency(layer, "dw-pw", 2, "fused") == pytest.approx(3.0)  # only rank 4 timed: scaled by MACs
    assert model.latency(layer, "pw-dw", 2, "split") is None  # order not timed
    assert model.latency(_layer("other"), None, None, None) is None  # layer not timed


def test_latency_model_respects_the_budget() -> None:
    timer = _FakeTimer()
    model = LatencyModel(timer, _macs, budget_s=0.0)  # type: ignore[arg-type]
    model.prepare([(_layer("a"), {"dw-pw": (2,)}), (_layer("b"), {"dw-pw": (2,)})])
    assert timer.asked == [] and model.summary.layers_untimed == ["a", "b"]


# ---- timers on the device -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_timed_runner_on_cpu(fmt: str, tmp_path: Path) -> None:
    path = build_micro(fmt, SHAPE, 1, tmp_path)
    run = timed_runner(adapter_for(fmt), path, tmp_path, 1, "cpu", {INPUT: np.zeros((1, 16, 12, 12), np.float32)})
    run()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_candidates_on_cuda(fmt: str, tmp_path: Path) -> None:
    if fmt == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("this onnxruntime has no CUDA provider")
    adapter = adapter_for(fmt)
    backend = backend_for(fmt, "cuda", 1)
    assert backend.device == "cuda" and backend.block == 1
    timer = CandidateTimer(adapter, backend, 1, TimingCache(backend, tmp_path), max_runs=5)
    lt = timer.time_layer(SHAPE, [Candidate("dw-pw", 2, "split")])
    assert all(ms > 0 for ms in lt.ms.values())


# ---- never slower --------------------------------------------------------------------------------------------------

def _fake_measure(speedups: dict[frozenset, float], calls: list[list[str]]) -> Callable[[list[str]], Comparison]:
    def measure(layers: list[str]) -> Comparison:
        calls.append(list(layers))
        s = speedups[frozenset(layers)]
        return _comparison(0.010 * s, 0.010, 0.02)
    return measure


def test_guard_keeps_a_faster_model() -> None:
    calls: list[list[str]] = []
    r = never_slower(["a", "b"], {"a": 0.3, "b": 0.2}, _fake_measure({frozenset("ab"): 1.4}, calls))
    assert r.kept == ["a", "b"] and not r.reverted and len(calls) == 1


def test_guard_reverts_layers_that_do_not_pay() -> None:
    calls: list[list[str]] = []
    r = never_slower(["a", "b", "c"], {"a": 0.3, "b": 0.01, "c": None},
                     _fake_measure({frozenset("abc"): 0.97, frozenset("a"): 1.2}, calls))
    assert r.kept == ["a"] and set(r.reverted) == {"b", "c"}
    assert "not faster" in r.reverted["b"] and calls == [["a", "b", "c"], ["a"]]
    assert r.comparison is not None and r.comparison.faster


def test_guard_returns_the_original_when_nothing_pays() -> None:
    calls: list[list[str]] = []
    r = never_slower(["a", "b"], {"a": 0.3, "b": 0.2},
                     _fake_measure({frozenset("ab"): 0.9, frozenset("b"): 0.95, frozenset("a"): 0.95}, calls))
    assert r.unchanged and set(r.reverted) == {"a", "b"} and len(calls) == 2
    assert calls[1] == ["a"]  # no weak layer: the half with the smaller gain went first
    assert "returned unchanged" in r.reverted["a"]


def test_guard_with_noise_does_not_claim_faster() -> None:
    # a speed-up inside the noise is not "faster": the original comes back
    def measure(layers: list[str]) -> Comparison:
        return _comparison(0.0102, 0.010, 0.4, seed=len(layers))
    r = never_slower(["a"], {"a": 0.3}, measure)
    assert r.unchanged


def test_a_layer_whose_timing_fails_is_decided_on_counts() -> None:
    class Broken(_FakeTimer):
        def time_layer(self, shape: LayerShape, cands: list[Candidate], *, budget_s: float | None = None,
                       layer: ConvLayer | None = None) -> LayerTimes:
            raise RuntimeError("the runtime refused the micro-model")

    model = LatencyModel(Broken(), _macs, budget_s=10)  # type: ignore[arg-type]
    model.prepare([(_layer("a"), {"dw-pw": (2,)})])
    assert model.latency(_layer("a"), None, None, None) is None
    assert model.summary.layers_untimed == ["a"] and "refused" in model.summary.as_dict()["failures"][0]
