"""Confinement of the conversion process (service/jobs/confine.py, sandbox.py): the two file-touching models are
refused by the graph check in the service, and — with the check skipped by the ``unchecked`` test hook — stopped
by Landlock (no file written outside the job folder, no hang on a FIFO) and the socket filter. Each test skips,
saying why, only where the kernel lacks the feature."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from service.core.db import get_engine
from service.jobs import crud
from service.jobs.confine import landlock_abi, seccomp_supported
from service.jobs.runner import JobRunner
from tests.service.test_runner import make_job
from tests.utils.hostile_models import save_hostile

needs_landlock = pytest.mark.skipif(landlock_abi() == 0, reason="this kernel offers no Landlock")
OPTIONS = {"rank": 2, "latency_runs": 1, "input_shape": {"x": [1, 3, 8, 8]}}


def _hostile(tmp_path: Path, kind: str) -> tuple[bytes, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim"
    if kind == "fifo_reader":
        os.mkfifo(target)
    return save_hostile(kind, target, tmp_path / "m.pt").read_bytes(), target


@pytest.mark.parametrize("kind", ["file_writer", "fifo_reader"])
def test_graph_check_refuses_file_ops_in_the_service(make_settings, tmp_path, kind):
    s = make_settings()
    model, target = _hostile(tmp_path, kind)
    job_id = make_job(s, model, OPTIONS)
    outcome = JobRunner(s, "w").run_next()
    assert outcome.status == "failed" and outcome.code == "unsupported_model", outcome
    assert "aten::from_file" in outcome.message and "/tmp" not in outcome.message
    job = crud.get_job(get_engine(s.database_url), job_id)
    assert job.error_code == "unsupported_model"
    if kind == "file_writer":
        assert not target.exists()


@needs_landlock
def test_confinement_stops_a_file_write_outside_the_job(make_settings, tmp_path):
    s = make_settings(test_hook="unchecked")
    model, target = _hostile(tmp_path, "file_writer")
    make_job(s, model, OPTIONS)
    outcome = JobRunner(s, "w").run_next()
    assert outcome.status == "failed", outcome
    assert "Permission denied" in outcome.message, outcome.message
    assert not target.exists()
    assert next(e for e in outcome.events if e["event"] == "sandbox")["landlock"] >= 1


@needs_landlock
def test_confinement_stops_a_fifo_read_without_hanging(make_settings, tmp_path):
    s = make_settings(test_hook="unchecked", job_timeout_s=60)
    model, _ = _hostile(tmp_path, "fifo_reader")
    make_job(s, model, OPTIONS)
    started = time.monotonic()
    outcome = JobRunner(s, "w").run_next()
    assert outcome.status == "failed" and outcome.code != "timeout", outcome
    assert "Permission denied" in outcome.message, outcome.message
    assert time.monotonic() - started < 50


def test_unchecked_hook_without_confinement_would_write(tmp_path):
    """The control experiment: the same model outside the sandbox does write the file, so the test above shows
    the confinement (not a broken model) stopping it."""
    model, target = _hostile(tmp_path, "file_writer")
    import converter

    converter.convert(model, input_shape={"x": (1, 3, 8, 8)}, trust_model=True, verify=False)
    assert target.read_bytes() == b"A" * 16


def _confined_python(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    work = tmp_path / "job"
    work.mkdir()
    script = textwrap.dedent("""
        import ctypes, sys
        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
        from pathlib import Path
        from service.jobs.confine import confine
        print(confine(Path.cwd()))
    """) + textwrap.dedent(code)
    root = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.defpath, "PYTHONPATH": root, "TMPDIR": str(work), "HOME": str(work)})


@needs_landlock
def test_landlock_allows_the_job_folder_and_nothing_else(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    r = _confined_python(tmp_path, f"""
        Path("inside.txt").write_text("ok")
        assert Path("inside.txt").read_text() == "ok"
        for attempt in (lambda: Path({str(secret)!r}).read_text(),
                        lambda: Path({str(tmp_path / 'new')!r}).write_text("x"),
                        lambda: __import__("os").listdir({str(tmp_path)!r})):
            try:
                attempt()
            except PermissionError:
                continue
            sys.exit("escaped")
        import numpy, torch  # the read-only system paths are enough to run
        print("confined")
    """)
    assert r.returncode == 0 and "confined" in r.stdout, r.stderr[-2000:]
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not seccomp_supported(), reason="no seccomp socket filter on this architecture")
def test_no_socket_can_be_made(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    path = tmp_path / "s.sock"
    server.bind(str(path))
    server.listen()
    r = _confined_python(tmp_path, """
        import socket
        for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            try:
                socket.socket(family)
            except PermissionError:
                continue
            sys.exit(f"socket {family} made")
        print("no sockets")
    """)
    server.close()
    assert r.returncode == 0 and "no sockets" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("allow", [False, True])
def test_code_formats_refused_where_unconfined(model_files, tmp_path, allow):
    """Where the kernel offers no Landlock, a TorchScript conversion is refused with a clear reason unless the
    operator opted in (the sandbox's decision, given a confinement that has no Landlock)."""
    from converter import UnsupportedModelError
    from service.jobs.confine import Confinement
    from service.jobs.sandbox import _Channel, _convert

    r, w = os.pipe()
    spec = {"model": str(model_files["torchscript"]), "output_dir": str(tmp_path / "out"),
            "report": str(tmp_path / "report.json"), "options": {"rank": 2, "verify": False,
                                                                 "input_shape": {"x": [1, 3, 32, 32]}},
            "allow_unconfined": allow}
    try:
        if allow:
            _convert(spec, _Channel(w), Confinement(landlock_abi=0, seccomp=True))
            assert (tmp_path / "report.json").is_file()
        else:
            with pytest.raises(UnsupportedModelError, match="SEPCONV_ALLOW_UNCONFINED_CODE"):
                _convert(spec, _Channel(w), Confinement(landlock_abi=0, seccomp=True))
    finally:
        os.close(r)


@pytest.mark.parametrize("allow", [False, True])
def test_worker_says_loudly_when_unconfined(make_settings, monkeypatch, caplog, allow):
    import logging

    from service.jobs import runner

    monkeypatch.setattr(runner, "landlock_abi", lambda: 0)
    with caplog.at_level(logging.INFO, logger="sepconv.runner"):
        runner.warn_if_unconfined(make_settings(allow_unconfined_code=allow), "w1")
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "HAS NO FILE-SYSTEM CONFINEMENT" in warning.getMessage()
    assert ("ACCEPTED anyway" if allow else "are refused") in warning.getMessage()


def test_failure_messages_hold_no_temporary_paths(tmp_path):
    from service.jobs.runner import scrub_paths

    work = tmp_path / "sepconv-job-1-abc-x"
    message = f"could not read '{work}/model.in'; see {work} and /tmp/sepconv-k2j3/unpacked/m.onnx"
    assert scrub_paths(message, work) == "could not read 'model.in'; see <job folder> and <temp>"
