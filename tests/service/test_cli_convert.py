"""``sepconv convert``: flags generated from the config, readable output, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter import ConversionConfig
from service.cli import cli
from tests.utils.models import build, export_onnx, export_pt2, export_torchscript


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    model, x = build("vgg")
    export_onnx(model, x, folder / "vgg.onnx", dynamic="batch")
    return {"onnx": folder / "vgg.onnx", "torchscript": export_torchscript(model, x, folder / "vgg.pt"),
            "pt2": export_pt2(model, x, folder / "vgg.pt2")}


def test_every_config_field_is_a_flag():
    out = CliRunner().invoke(cli, ["convert", "--help"]).output
    for name in ConversionConfig.model_fields:
        assert "--" + name.replace("_", "-") in out


def test_convert_onnx_prints_summary_and_writes_report(models, tmp_path):
    out, rep = tmp_path / "slim.onnx", tmp_path / "report.json"
    res = CliRunner().invoke(cli, ["convert", str(models["onnx"]), "-o", str(out), "--rank", "2", "--report",
                                   str(rep), "--latency-runs", "3", "--exclude", "/features/features.0/*"])
    assert res.exit_code == 0, res.output
    assert "converted" in res.output and "latency" in res.output and "params" in res.output
    report = json.loads(rep.read_text())
    assert report["format"] == "onnx" and out.exists()
    assert any(layer["reason"].startswith("excluded") for layer in report["layers"])


def test_convert_torchscript_json(models, tmp_path):
    out = tmp_path / "slim.pt"
    res = CliRunner().invoke(cli, ["convert", str(models["torchscript"]), "-o", str(out), "--energy", "0.5",
                                   "--input-shape", "x=1x3x32x32", "--latency-runs", "3", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["format"] == "torchscript" and report["fidelity"]["rel_l2"] >= 0


def test_convert_pt2_json(models, tmp_path):
    out = tmp_path / "slim.pt2"
    res = CliRunner().invoke(cli, ["convert", str(models["pt2"]), "-o", str(out), "--rank", "2",
                                   "--latency-runs", "3", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["format"] == "pt2" and report["fidelity"]["rel_l2"] >= 0 and out.exists()
    assert "torch.export" in CliRunner().invoke(cli, ["convert", "--help"]).output


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("garbage", [], "not a model sepconv reads"),
        ("empty", [], "the model file is empty"),
        ("onnx", ["--rank", "2", "--energy", "0.5"], "choose one rank policy"),
        ("onnx", ["--order", "sideways"], "Invalid value for '--order'"),
        ("onnx", ["--target-params", "0.001"], "cannot be met"),
        ("torchscript", [], "--input-shape x="),
    ],
)
def test_errors_are_one_line_without_traceback(models, tmp_path, setup, args, message):
    if setup in models:
        src = models[setup]
    else:
        src = tmp_path / "in.bin"
        src.write_bytes(b"" if setup == "empty" else b"\x13\x37" * 500)
    proc = run("convert", str(src), "-o", str(tmp_path / "out.bin"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.bin").exists()


def test_max_accuracy_drop_flag_reaches_the_search_and_the_summary(models, tmp_path):
    import numpy as np

    base = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", inputs=np.repeat(np.repeat(base, 4, axis=2), 4, axis=3))
    out, rep = tmp_path / "slim.onnx", tmp_path / "report.json"
    res = CliRunner().invoke(cli, ["convert", str(models["onnx"]), "-o", str(out), "--data", str(tmp_path / "data.npz"),
                                   "--max-accuracy-drop", "0.9", "--search-budget-s", "60", "--latency-runs", "5",
                                   "--report", str(rep)])
    assert res.exit_code == 0, res.output
    report = json.loads(rep.read_text())
    assert report["search"]["max_drop"] == 0.9 and report["search"]["default"] is False
    assert report["policy"]["kind"] == "max_accuracy_drop"
    assert "search (max_accuracy_drop 0.9 on top1_agreement, asked)" in res.output
    if report["search"]["chosen"] is not None:
        assert "reproduce with: --layer-rank" in res.output
