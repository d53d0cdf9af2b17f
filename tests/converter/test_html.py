"""The HTML report: self-contained, renders what the report holds (and only that), escapes user strings. The
CLI's use of it is tested in tests/service/test_cli_report.py."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

import converter
from converter.report._svg import elide
from tests.utils.models import build, export_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("html")
    net, x = build("vgg")
    export_onnx(net, x, folder / "vgg.onnx")
    return folder / "vgg.onnx"


@pytest.fixture(scope="module")
def report(model: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("html-out") / "slim.onnx"
    result = converter.convert(model, out, rank=2, latency_runs=5, input_shape={"x": (1, 3, 32, 32)},
                               exclude=["/features/features.0/*"])
    return result.report.model_dump(mode="json")


def ids(page: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page))


def test_page_is_self_contained_and_has_every_panel_the_report_supports(report):
    page = converter.render_html(report, title="vgg.onnx")
    assert page.startswith("<!doctype html>") and "<title>vgg.onnx · sepconv report</title>" in page
    # Nothing to fetch: no external scripts, styles, images or fonts (the SVG namespace is not a fetch).
    assert not re.search(r'(src|href)\s*=\s*"(?!#)', page)
    assert re.sub(r'xmlns="http://www.w3.org/2000/svg"', "", page).count("http") == 0
    assert {"verdict", "plot-params", "plot-macs", "plot-rank", "plot-energy", "plot-latency", "plot-timings",
            "layer-table", "warnings"} <= ids(page)
    assert "plot-accuracy" not in ids(page)  # this report has no accuracy: no empty panel
    assert page.count("<svg") == 6
    # The verdict states size, MACs, speed-up and fidelity from the report's own numbers.
    verdict = re.search(r'id="verdict">([^<]*)<', page).group(1)
    n = sum(la["status"] == "converted" for la in report["layers"])
    assert verdict.startswith(f"{n} of {len(report['layers'])} convolutions converted")
    assert f"speed-up {report['latency']['speedup']:.2f}×" in verdict and "output error" in verdict
    # Every layer is a table row with its skip reason, the full name kept (charts elide it).
    body = page.split('id="layer-table"')[1]
    assert body.count("<tr class=") == len(report["layers"])
    for layer in report["layers"]:
        assert f'data-v="{layer["name"]}">{layer["name"]}</td>' in body
        assert layer["reason"].replace("'", "&#x27;") in body
    for warning in report["warnings"]:
        assert warning.replace("'", "&#x27;") in page


def test_report_without_verification_renders_without_latency_or_fidelity(report):
    bare = copy.deepcopy(report)
    bare["fidelity"] = bare["latency"] = None
    bare["warnings"] = []
    page = converter.render_html(bare)
    assert "plot-latency" not in ids(page) and "warnings" not in ids(page)
    assert "speed-up" not in page and "output error" not in page
    assert "plot-params" in ids(page)


def test_keys_added_by_newer_reports_render(report):
    """Accuracy by stage, latency runs with a CI and percentiles, per-stage timings, per-layer output errors and
    keys this version does not know at all: each gets its panel when present."""
    rich = copy.deepcopy(report)
    rich["accuracy"] = {"metric": "top1", "samples": 397, "held_out": "20 % of --data (seed 0)", "original": 0.935,
                        "data_free": 0.31, "calibrated": 0.88, "finetuned": 0.924, "kept": "finetuned",
                        "top5": {"original": 0.99, "data_free": 0.6, "calibrated": 0.97, "finetuned": 0.985}}
    rich["latency"].update(original_p99_ms=0.9, converted_p99_ms=0.7, speedup_low=1.05, speedup_high=1.31,
                           confidence=0.95,
                           original_samples_ms=[0.5 + i * 0.01 for i in range(40)],
                           converted_samples_ms=[0.4 + i * 0.01 for i in range(40)])
    rich["timings"].update(load_s=0.1, plan_s=0.2, rewrite_s=0.05, calibrate_s=1.5, save_s=0.01, verify_s=0.3)
    for layer in rich["layers"]:
        if layer["status"] == "converted":
            layer["output_error"] = {"data_free": 0.4, "calibrated": 0.05, "finetuned": None}
            layer["calibration"] = "refit"
    rich["finetune"] = {"metric": "top1", "before": 0.88, "after": 0.924, "epochs": 3, "stopped": "early_stop",
                        "seconds": 42.0, "resumed": False, "device": "cpu", "scope": "factors", "train_samples": 300,
                        "holdout_samples": 97, "history": [{"epoch": e, "loss": 1.0 / e, "metric": 0.88 + e / 100}
                                                           for e in (1, 2, 3)]}
    rich["brand_new_section"] = {"answer": 42}
    page = converter.render_html(rich)
    assert {"plot-accuracy", "plot-latency", "plot-finetune"} <= ids(page)
    assert "top1 0.88 → 0.924 · 3 epoch(s), stopped by early_stop · 42 s on cpu" in page
    assert 'aria-label="loss per epoch"' in page and 'aria-label="metric per epoch"' in page
    assert "Latency per run" in page  # a distribution, not just percentiles
    assert "95 % CI 1.05–1.31×" in page and "top1 93.5 % → 92.4 % (fine-tuned)" in page
    for stage in ("data-free", "calibrated", "fine-tuned"):
        assert f">{stage}</text>" in page
    assert "calibrate 1.50 s" in page and "plan 0.20 s" in page
    assert "output error calibrated" in page and "output error data free" in page  # plotted, and table columns
    assert "output error finetuned" not in page
    assert ">calibration</th>" in page and ">refit</td>" in page  # a layer key this version does not know
    assert "<th scope=\"row\">top5</th><td>0.99</td>" in page and "kept: fine-tuned" in page
    assert "20 % of --data (seed 0)" in page
    assert "brand_new_section" in page and "42" in page


def test_user_strings_are_escaped(report):
    evil = copy.deepcopy(report)
    evil["layers"][0]["name"] = '<script>alert("x")</script>'
    evil["layers"][0]["reason"] = "<img src=x onerror=alert(1)>"
    evil["warnings"] = ["<b>bold</b>"]
    page = converter.render_html(evil, title="<i>t</i>")
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "<i>t</i>" not in page
    assert "&lt;script&gt;" in page
    assert page.count("<script>") == 1  # the sorting script only


def test_not_a_report_is_a_one_line_error():
    with pytest.raises(converter.InvalidOptionsError, match="not a sepconv report: sepconv_version"):
        converter.render_html({"format": "onnx"})


def test_elide_keeps_both_ends():
    assert elide("/features/features.10/Conv", 14) == "/featu…10/Conv"
    assert len(elide("x" * 100, 22)) == 22 and elide("short", 22) == "short"


def test_the_kept_stage_is_the_verdict_and_lower_is_better_metrics_say_so(report):
    rich = copy.deepcopy(report)
    rich["accuracy"] = {"metric": "rel_l2", "samples": 50, "held_out": "--eval", "original": None,
                        "data_free": 0.62, "calibrated": 0.08, "finetuned": 0.11, "kept": "calibrated"}
    page = converter.render_html(rich)
    verdict = re.search(r'id="verdict">([^<]*)<', page).group(1)
    assert verdict.endswith("rel_l2 0.62 → 0.08 (calibrated)")
    assert "rel_l2 (lower is better) by recovery stage" in page
    assert "62.0 %" not in page  # an error is not shown as a percentage of anything
