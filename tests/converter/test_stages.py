"""The stage table and the helper that times stages and reports progress (no model involved), and the pipeline
running by the table: progress in order and never decreasing, every stage that ran in the report's timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import converter
from converter import Timings
from converter._stages import JOB_STAGES, STAGE_NAMES, STAGES, TIMING_KEYS, StageClock, timings_from
from converter.pipeline._convert import STEPS
from tests.utils.models import build, export_onnx


def test_table_order_and_derived_names():
    assert STAGE_NAMES == ("load", "plan", "measure", "search", "rewrite", "guard", "calibrate", "finetune", "save",
                           "verify")
    assert all(s.share > 0 for s in STAGES)
    assert ("queued", *STAGE_NAMES, "done") == JOB_STAGES
    assert set(Timings.model_fields) == set(TIMING_KEYS)
    assert {f"{s}_s" for s in STAGE_NAMES} <= set(TIMING_KEYS)
    assert set(STEPS) <= set(STAGE_NAMES)  # every step is a stage of the table


def test_service_vocabulary_derives_from_the_table():
    from service.models import JobStage
    from service.schemas import JobPublic

    assert [s.value for s in JobStage] == list(JOB_STAGES)
    assert JobPublic.model_json_schema()["properties"]["stage"]["enum"] == list(JOB_STAGES)


def test_clock_progress_is_monotonic_and_spans_the_active_stages():
    seen: list[tuple[str, float, dict | None]] = []
    clock = StageClock(lambda stage, fraction, detail: seen.append((stage, fraction, detail)),
                       ["load", "plan", "finetune", "save"])
    for name in ("load", "plan", "finetune", "save"):
        with clock.stage(name) as p:
            if name == "finetune":
                for epoch in range(3):
                    p.update((epoch + 1) / 3, {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
                p.update(0.1)  # going back is clamped: progress never decreases
    clock.finish()
    fractions = [f for _, f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert [s for s, _, _ in seen if _ is not None] == ["finetune"] * 3
    assert seen[-1][0] == "save"
    assert set(clock.seconds) == {"load", "plan", "finetune", "save"}
    # finetune's share is the largest: its span is wider than the others'
    widths = {n: b - a for n, (a, b) in clock.spans.items()}
    assert max(widths, key=widths.get) == "finetune" and sum(widths.values()) == pytest.approx(1.0)


def test_two_argument_callbacks_get_no_detail():
    seen = []
    clock = StageClock(lambda stage, fraction: seen.append((stage, fraction)), ["load"])
    with clock.stage("load") as p:
        p.update(0.5, {"x": 1})
    assert seen == [("load", 0.0), ("load", 0.5)]


def test_clock_refuses_unknown_stages():
    with pytest.raises(ValueError, match="unknown stage"):
        StageClock(None, ["load", "distill"])
    clock = StageClock(None, ["load"])
    with pytest.raises(ValueError, match="not one this conversion runs"), clock.stage("verify"):
        pass


def test_timings_from_seconds():
    t = timings_from({"load": 0.5, "plan": 1.0, "rewrite": 0.25, "save": 0.1})
    assert t["load_s"] == 0.5 and t["convert_s"] == 1.25 and t["save_s"] == 0.1 and t["verify_s"] is None
    assert t["plan_s"] == 1.0 and t["rewrite_s"] == 0.25 and t["calibrate_s"] is None
    Timings(**t)  # a valid report section


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    model, x = build("resnet")
    path = tmp_path_factory.mktemp("m") / "resnet.onnx"
    export_onnx(model, x, path, dynamic="batch")
    return path


@pytest.mark.parametrize("verify", [True, False])
def test_pipeline_runs_the_table(small_onnx, tmp_path, verify):
    seen: list[tuple[str, float]] = []
    result = converter.convert(small_onnx, tmp_path / "o.onnx", rank=2, verify=verify, latency_runs=3,
                               progress=lambda s, f: seen.append((s, f)))
    ran = ["load", "plan", "measure", "rewrite", "save", *(["verify"] if verify else [])]
    assert list(dict.fromkeys(s for s, _ in seen))[: len(ran)] == ran
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    timings = json.loads(result.report.model_dump_json())["timings"]
    for name in STAGE_NAMES:
        assert (timings[f"{name}_s"] is not None) == (name in ran), name
    assert timings["convert_s"] == pytest.approx(timings["plan_s"] + timings["measure_s"] + timings["rewrite_s"],
                                                 abs=2e-4)


def test_record_fields_are_owned_by_their_stages(tmp_path):
    """Each field of the shared record is written by the stages that own it, and read only after one did."""
    from converter import ConversionConfig, ConversionError
    from converter.pipeline._record import Conversion, StageOrderError

    c = Conversion(ConversionConfig(), tmp_path / "m.onnx", None, None, tmp_path)
    with pytest.raises(StageOrderError, match="read before load set it"):
        _ = c.adapter
    c.stage = "plan"
    with pytest.raises(StageOrderError, match=r"the plan stage wrote Conversion\.adapter"):
        c.adapter = object()
    c.stage = "load"
    c.device = "cpu"
    assert c.device == "cpu"
    assert c.latency is None  # an optional result reads as None until verify writes it
    assert issubclass(StageOrderError, ConversionError)
