"""``sepconv convert --html`` and ``sepconv report``: the HTML report from the command line, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from tests.utils.models import build, export_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    net, x = build("vgg")
    path = tmp_path_factory.mktemp("cli-html") / "vgg.onnx"
    export_onnx(net, x, path)
    return path


def test_cli_convert_html_and_report_command(model, tmp_path):
    out, rep, html = tmp_path / "slim.onnx", tmp_path / "r.json", tmp_path / "r.html"
    res = CliRunner().invoke(cli, ["convert", str(model), "-o", str(out), "--rank", "2", "--latency-runs", "2",
                                   "--input-shape", "x=1x3x32x32", "--report", str(rep), "--html", str(html)])
    assert res.exit_code == 0, res.output
    assert str(html) in res.output
    page = html.read_text()
    assert "<title>vgg.onnx · sepconv report</title>" in page and "plot-params" in page

    res = CliRunner().invoke(cli, ["report", str(rep)])
    assert res.exit_code == 0, res.output
    again = (tmp_path / "r.html").read_text()
    assert "plot-latency" in again and "<title>r · sepconv report</title>" in again
    res = CliRunner().invoke(cli, ["report", str(rep), "-o", str(tmp_path / "x.html"), "--title", "mine"])
    assert res.exit_code == 0 and "<title>mine" in (tmp_path / "x.html").read_text()


@pytest.mark.parametrize(("content", "message"), [
    ("{", "is not a JSON file"),
    ("[1, 2]", "is not a sepconv report"),
    (json.dumps({"format": "onnx"}), "not a sepconv report: sepconv_version"),
])
def test_cli_report_errors_are_one_line(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    res = CliRunner().invoke(cli, ["report", str(bad)])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
