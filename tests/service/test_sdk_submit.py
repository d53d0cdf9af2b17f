"""``sepconv submit`` against the in-memory contract of ``test_sdk.FakeServer``: flags, output, errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from service._submit import submit
from tests.service.test_sdk import BASE, REPORT, FakeServer, error_response, parse_multipart


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(b"\x08\x07" + bytes(5000))
    return path


def run(server: FakeServer, *args: str, env: dict | None = None):
    # No stages: the first poll finds the job done, so the client never sleeps between polls.
    return CliRunner(env=env).invoke(submit, [*args], obj={"transport": httpx.MockTransport(server)},
                                     prog_name="sepconv submit")


def test_submit_uploads_waits_downloads_and_prints_the_summary(model_file: Path, tmp_path: Path):
    server = FakeServer(stages=())
    out = tmp_path / "out"
    out.mkdir()
    result = run(server, str(model_file), "--server", BASE, "-o", str(out), "--rank", "2", "--exclude", "head*",
                 "--exclude", "fc", "--no-verify", "--report", str(tmp_path / "r.json"),
                 env={"SEPCONV_API_KEY": "k" * 20})
    assert result.exit_code == 0, result.output
    assert (out / "tiny-sepconv.onnx").read_bytes() == server.model
    assert json.loads((tmp_path / "r.json").read_text())["layers"][0]["name"] == "conv1"
    assert "1 of 1 convolutions converted" in result.stdout
    assert f"wrote {out / 'tiny-sepconv.onnx'}" in result.stdout.replace("\n", "")
    assert f"job job1 queued on {BASE}/" in result.stderr
    fields = [(n, c.decode()) for n, f, c in server.uploads[0] if f is None]
    assert fields == [("rank", "2"), ("exclude", "head*"), ("exclude", "fc"), ("verify", "false")]
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer " + "k" * 20}


def test_submit_json_prints_the_report_and_defaults_to_the_current_folder(model_file: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    server = FakeServer(stages=())
    result = run(server, str(model_file), "--server", BASE, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["params"] == REPORT["params"]
    assert (tmp_path / "tiny-sepconv.onnx").is_file()
    assert "authorization" not in server.requests[0].headers


def test_submit_sends_inputs(model_file: Path, tmp_path: Path):
    inputs = tmp_path / "x.npz"
    inputs.write_bytes(b"PK")
    server = FakeServer(stages=())
    result = run(server, str(model_file), "--server", BASE, "-o", str(tmp_path / "slim.onnx"),
                 "--inputs", str(inputs), "--input-shape", "x=1x3x8x8")
    assert result.exit_code == 0, result.output
    assert [(n, f) for n, f, _ in parse_multipart(server.requests[0])] == [
        ("input_shape", None), ("model", "tiny.onnx"), ("inputs", "x.npz")]
    assert (tmp_path / "slim.onnx").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--rank", "0"], "sepconv: error: invalid options: rank: Input should be greater than or equal to 1"),
    (["--rank", "2", "--energy", "0.9"], "sepconv: error: invalid options: choose one rank policy"),
    (["--layer-rank", "conv"],
     "sepconv: error: invalid options: layer_rank: layer rank 'conv' is not of the form NAME=K with K >= 1"),
    (["--inputs", "missing.npz"], "sepconv: error: inputs file not found: missing.npz"),
    (["-o", "no/such/folder/x.onnx"], "sepconv: error: output folder does not exist: no/such/folder"),
])
def test_bad_flags_fail_in_one_line_before_any_upload(model_file: Path, args: list[str], message: str):
    server = FakeServer()
    result = run(server, str(model_file), "--server", BASE, *args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[0].startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert server.requests == []


def test_a_missing_model_or_a_bad_server_url(tmp_path: Path, model_file: Path):
    result = run(FakeServer(), str(tmp_path / "nope.onnx"), "--server", BASE)
    assert result.exit_code == 2 and result.stderr.startswith("sepconv: error: model file not found")
    result = run(FakeServer(), str(model_file), "--server", "localhost:8000")
    assert result.exit_code == 2 and result.stderr.startswith("sepconv: error: invalid server URL 'localhost:8000'")


@pytest.mark.parametrize(("answer", "message"), [
    (error_response(401, "unauthorized", "missing or unknown API key"),
     "sepconv: error: missing or unknown API key (HTTP 401, unauthorized)"),
    (error_response(415, "unsupported_model", "not ONNX or TorchScript"),
     "sepconv: error: not ONNX or TorchScript (HTTP 415, unsupported_model)"),
])
def test_server_errors_are_one_line(model_file: Path, answer: httpx.Response, message: str):
    server = FakeServer()
    server.fail_next("POST", "/convert", answer)
    result = run(server, str(model_file), "--server", BASE)
    assert result.exit_code == 2
    assert result.stderr.strip() == message
    assert "Traceback" not in result.output


def test_a_failed_job_is_one_line(model_file: Path, tmp_path: Path):
    server = FakeServer(final="failed", stages=())
    result = run(server, str(model_file), "--server", BASE, "-o", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == \
        "sepconv: error: job job1 failed: layer conv1: rank 9 exceeds 8 (conversion_failed)"
    assert not (tmp_path / "tiny-sepconv.onnx").exists()


def test_the_command_documents_every_conversion_flag():
    result = CliRunner().invoke(submit, ["--help"])
    assert result.exit_code == 0
    for flag in ("--server", "--api-key", "SEPCONV_API_KEY", "--output", "--inputs", "--report", "--json",
                 "--timeout", "--rank", "--target-params", "--input-shape", "--layer-rank", "--no-verify"):
        assert flag in result.output, flag
