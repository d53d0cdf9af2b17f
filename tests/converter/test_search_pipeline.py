"""``max_accuracy_drop`` through ``convert``: the default with ``--data``, the report's ``search`` section and its
chart, the original returned when no plan meets the drop, resuming from the journal, and the options' checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

import converter
from converter import InvalidOptionsError
from converter.report import render_html
from tests.utils.models import build, export_onnx

#: Small and quick: few timed runs, a short budget.
FAST = {"latency_runs": 8, "latency_budget_s": 5, "search_budget_s": 60, "calibration_samples": 48}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    net, x = build("vgg")
    src = folder / "vgg.onnx"
    export_onnx(net, x, src, dynamic="batch")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    images = np.repeat(np.repeat(base, 4, axis=2), 4, axis=3)  # smooth images: calibration has structure to use
    np.savez(folder / "data.npz", inputs=images)
    return {"model": src, "data": folder / "data.npz", "folder": folder}


@pytest.fixture(scope="module")
def default_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("search-out") / "slim.onnx"
    seen: list[tuple[str, float, dict | None]] = []
    result = converter.convert(files["model"], out, data=files["data"], progress=lambda s, f, d: seen.append((s, f, d)),
                               **FAST)
    result.progress = seen  # type: ignore[attr-defined]
    return result, out


def test_with_data_and_no_rank_option_the_search_is_the_default(default_run, files):
    result, out = default_run
    r = result.report
    assert r.policy["kind"] == "max_accuracy_drop" and r.policy["value"] == 0.01 and r.policy["default"] is True
    s = r.search
    assert s is not None and s.default and s.max_drop == 0.01
    assert s.metric == "top1_agreement" and s.original == 1.0  # no labels: agreement with the original
    assert r.timings.search_s is not None and r.timings.calibrate_s is None and r.timings.guard_s is None
    assert s.plans and 0 < len(s.plans) <= s.frontier_plans
    assert all(p.meets == (p.drop <= s.max_drop + 1e-9) for p in s.plans)
    assert sum(p.chosen for p in s.plans) == (0 if s.chosen is None else 1)
    assert set(s.sensitivity) <= {la.name for la in r.layers} and s.sensitivity
    for p in s.plans:
        assert p.speedup_low <= p.speedup <= p.speedup_high and p.params <= r.params.original
        assert p.options and all(o.startswith(("--layer-rank ", "--exclude ", "--order ")) for o in p.options)
        assert len(p.layers) == p.converted_layers
    if s.chosen is not None:
        chosen = next(p for p in s.plans if p.chosen)
        assert chosen.plan == s.chosen and chosen.drop <= 0.01 and chosen.faster
        # the returned file is the chosen plan: its latency is that measurement, its layers those ranks
        assert r.latency is not None and r.latency.speedup == pytest.approx(chosen.speedup, abs=1e-3)
        assert r.params.converted == chosen.params
        assert {la.name for la in r.converted_layers} == set(chosen.layers)
        assert r.accuracy is not None and r.accuracy.kept in ("calibrated", "data_free")
        # the plans faster than the chosen one measured did not keep the metric
        assert all(not p.meets or not p.faster or p.speedup <= chosen.speedup for p in s.plans)
    else:
        assert out.read_bytes() == files["model"].read_bytes()
        assert any("max_accuracy_drop" in w for w in r.warnings)


def test_progress_says_plan_speedup_metric_and_best_so_far(default_run):
    result = default_run[0]
    plans = [d for s, _, d in result.progress if s == "search" and d and "plan" in d]
    assert [d["plan"] for d in plans] == list(range(1, len(result.report.search.plans) + 1))
    for d, p in zip(plans, result.report.search.plans, strict=True):
        assert d["speedup"] == pytest.approx(p.speedup, abs=1e-3) and d["metric"] == pytest.approx(p.metric, abs=1e-6)
        assert "best" in d
    fractions = [f for _, f, _ in result.progress]
    assert fractions == sorted(fractions)


def test_the_report_round_trips_and_the_html_charts_the_frontier(default_run):
    r = default_run[0].report
    data = json.loads(r.model_dump_json())
    assert data["search"]["plans"][0]["options"]
    page = render_html(data)
    assert 'id="plot-search"' in page and "reproduce with" in page and "--layer-rank" in page
    assert page.count("<circle") >= len(data["search"]["plans"]) + 1  # every plan and the original
    for p in data["search"]["plans"]:
        assert f"plan {p['plan']} (" in page


def test_a_loose_drop_returns_the_fastest_plan_as_measured(files, tmp_path):
    out = tmp_path / "slim.onnx"
    r = converter.convert(files["model"], out, data=files["data"], max_accuracy_drop=0.9, **FAST).report
    s = r.search
    assert s is not None and not s.default and r.policy["default"] is False
    # uniform rank 1 is measured first and keeps agreement above 10 %; the frontier's fastest plan (every layer at
    # its cheapest) next, if it differs; the answer is the faster of them (rank 1 of these layers is about twice
    # as fast, far outside the noise)
    assert s.plans[0].step == "uniform" and s.plans[0].uniform_rank == 1 and s.plans[0].meets
    assert [p.step for p in s.plans[1:]] in ([], ["fastest"])
    chosen = next(p for p in s.plans if p.chosen)
    assert chosen.plan == s.chosen and chosen.speedup == max(p.speedup for p in s.plans if p.meets and p.faster)
    assert r.converted_layers and out.read_bytes() != files["model"].read_bytes()
    assert r.latency is not None and r.latency.speedup_low > 1.0
    assert r.fidelity is not None and r.accuracy is not None
    assert r.accuracy.top1_agreement is not None
    assert 1.0 - s.plans[0].metric == pytest.approx(s.plans[0].drop)
    assert s.plans[0].options == [f"--layer-rank {name}=1" for name in s.plans[0].layers] or \
        any(o.startswith("--exclude") for o in s.plans[0].options)


def test_without_data_the_default_is_unchanged(files, tmp_path):
    r = converter.convert(files["model"], tmp_path / "slim.onnx", latency_runs=5, latency_budget_s=5).report
    assert r.search is None and r.policy["kind"] == "energy"


def test_no_plan_within_the_drop_returns_the_original_with_the_reason(files, tmp_path):
    out = tmp_path / "slim.onnx"
    r = converter.convert(files["model"], out, data=files["data"], max_accuracy_drop=1e-6, search_metric="rel_l2",
                          **FAST).report
    s = r.search
    assert s is not None and s.chosen is None and s.metric == "rel_l2" and not s.default
    assert s.plans and not any(p.meets for p in s.plans)
    assert out.read_bytes() == files["model"].read_bytes()
    assert r.params.converted == r.params.original and not r.converted_layers
    warning = next(w for w in r.warnings if "max_accuracy_drop" in w)
    assert "unchanged" in warning and "best plan tried" in warning
    assert all("kept:" in la.reason or la.status == "skipped" for la in r.layers)


def test_a_resumed_search_replays_the_measured_plans(files, tmp_path):
    opts = {**FAST, "max_accuracy_drop": 0.05}
    ckpt = tmp_path / "ckpt"
    first = converter.convert(files["model"], tmp_path / "a.onnx", data=files["data"], checkpoint_dir=ckpt,
                              **opts).report
    assert (ckpt / "search.json").is_file() and first.search is not None and first.search.resumed_plans == 0
    # resumed with a larger budget: the same search, so the journal applies
    second = converter.convert(files["model"], tmp_path / "b.onnx", data=files["data"], checkpoint_dir=ckpt,
                               **{**opts, "search_budget_s": 90}).report
    assert second.search is not None and second.search.resumed_plans == len(first.search.plans)
    assert [(p.plan, p.index, p.speedup, p.metric) for p in second.search.plans] == \
           [(p.plan, p.index, p.speedup, p.metric) for p in first.search.plans]
    assert second.search.chosen == first.search.chosen
    assert [la.rank for la in second.layers] == [la.rank for la in first.layers]


def test_options_are_checked_before_any_work(files, tmp_path):
    with pytest.raises(InvalidOptionsError, match="needs samples"):
        converter.convert(files["model"], tmp_path / "x.onnx", max_accuracy_drop=0.01)
    with pytest.raises(InvalidOptionsError, match="choose one rank policy"):
        converter.convert(files["model"], tmp_path / "x.onnx", data=files["data"], max_accuracy_drop=0.01, rank=2)
    with pytest.raises(InvalidOptionsError, match="layer_rank"):
        converter.convert(files["model"], tmp_path / "x.onnx", data=files["data"], max_accuracy_drop=0.01,
                          layer_rank=["a=1"])
    with pytest.raises(InvalidOptionsError, match="max_accuracy_drop"):
        converter.convert(files["model"], tmp_path / "x.onnx", data=files["data"], max_accuracy_drop=1.5)


def test_with_recover_finetune_the_chosen_plan_is_fine_tuned(files, tmp_path):
    r = converter.convert(files["model"], tmp_path / "slim.onnx", data=files["data"], max_accuracy_drop=0.9,
                          recover="finetune", epochs=1, **FAST).report
    s = r.search
    assert s is not None and s.chosen is not None  # as in the loose-drop test: the fastest plan
    assert r.finetune is not None and r.finetune.epochs == 1 and r.timings.finetune_s is not None
    assert r.accuracy is not None and (r.accuracy.kept != "finetuned" or r.accuracy.finetuned is not None)
    assert {la.name for la in r.converted_layers} == set(next(p for p in s.plans if p.chosen).layers)
