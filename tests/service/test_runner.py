"""The job runner and its sandboxed conversion process, driven directly (no HTTP, no worker loop): the real
memory and time limits, crashes, the clean environment, duplicate deliveries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from service.core.config import Settings
from service.core.db import get_engine, migrate
from service.core.storage import open_storage
from service.jobs import crud, files
from service.jobs.runner import JobRunner, sweep_stale_workdirs
from service.models import Job, JobStatus, utcnow

FAST_OPTIONS = {"rank": 2, "latency_runs": 1, "input_shape": {"x": [1, 3, 32, 32]}}


def make_job(settings: Settings, model: bytes, options: dict | None = None) -> str:
    """A queued job whose upload is ``model``."""
    migrate(settings.database_url)
    storage = open_storage(settings.storage_url)
    storage.ensure()
    job_id = crud.new_job_id()
    storage.put(files.input_key(job_id), iter([model]))
    crud.create_job(get_engine(settings.database_url), Job(
        id=job_id, owner="o", status=JobStatus.QUEUED, stage="queued", progress=0.0, filename="m.onnx",
        options=options if options is not None else FAST_OPTIONS,
        input_key=files.input_key(job_id), input_bytes=len(model), attempts=0, cancel_requested=False,
        created_at=utcnow()))
    return job_id


def sandbox_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "service.jobs.sandbox" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for_sandbox(timeout: float = 20) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = sandbox_processes()
        if procs:
            return procs[0]
        time.sleep(0.05)
    raise AssertionError("no sandbox process appeared")


def run_in_thread(runner: JobRunner) -> tuple[threading.Thread, list]:
    result: list = []
    t = threading.Thread(target=lambda: result.append(runner.run_next()))
    t.start()
    return t, result


def test_success_stores_model_and_report(make_settings, model_files):
    s = make_settings()
    job_id = make_job(s, model_files["onnx"].read_bytes())
    outcome = JobRunner(s, "test-worker").run_next()
    assert outcome.status == "done", outcome
    job = crud.get_job(get_engine(s.database_url), job_id)
    assert job.status == "succeeded" and job.stage == "done" and job.progress == 1.0 and job.format == "onnx"
    assert job.output_key == f"jobs/{job_id}/output.onnx" and job.output_suffix == ".onnx"
    storage = open_storage(s.storage_url)
    assert storage.exists(job.output_key) and storage.exists(job.report_key)
    stages = [e["stage"] for e in outcome.events if e["event"] == "progress"]
    assert stages[0] == "load" and "verify" in stages
    # A duplicate delivery of a succeeded job does nothing.
    assert JobRunner(s, "other-worker").run(job_id) is None
    assert crud.get_job(get_engine(s.database_url), job_id).attempts == 1


def test_converter_errors_fail_the_job_with_their_code(make_settings, model_files):
    s = make_settings()
    data = model_files["onnx"].read_bytes()
    bad = {
        make_job(s, data[: len(data) // 2]): "unsupported_model",
        make_job(s, b"PK\x03\x04" + b"\x00" * 100): "unsupported_model",
        make_job(s, data, {"rank": 2, "input_shape": {"nope": [1, 3, 32, 32]}, "latency_runs": 1}): None,
    }
    for job_id, code in bad.items():
        outcome = JobRunner(s, "w").run(job_id)
        job = crud.get_job(get_engine(s.database_url), job_id)
        assert job.status == "failed" and job.error_message, job
        assert "Traceback" not in job.error_message
        if code:
            assert job.error_code == code
        assert outcome.status == "failed"
        assert not open_storage(s.storage_url).exists(files.report_key(job_id))


def test_memory_limit(make_settings):
    s = make_settings(job_memory_mb=512, test_hook="allocate")
    job_id = make_job(s, b"irrelevant")
    t0 = time.monotonic()
    JobRunner(s, "w").run_next()
    job = crud.get_job(get_engine(s.database_url), job_id)
    assert (job.status, job.error_code) == ("failed", "out_of_memory")
    assert job.error_message == "ran out of memory (limit 512 MB)"
    assert time.monotonic() - t0 < 30


def test_memory_limit_on_a_real_conversion(make_settings, model_files):
    # Too little address space for torch/onnxruntime themselves: the real conversion cannot even start.
    s = make_settings(job_memory_mb=200)
    job_id = make_job(s, model_files["onnx"].read_bytes())
    JobRunner(s, "w").run_next()
    job = crud.get_job(get_engine(s.database_url), job_id)
    assert (job.status, job.error_code, job.error_message) == ("failed", "out_of_memory",
                                                               "ran out of memory (limit 200 MB)")


def test_time_limit_kills_the_process_group(make_settings):
    s = make_settings(job_timeout_s=1.5, test_hook="sleep")
    job_id = make_job(s, b"irrelevant")
    t, _ = run_in_thread(JobRunner(s, "w"))
    child = wait_for_sandbox()
    t.join(timeout=30)
    assert not t.is_alive()
    job = crud.get_job(get_engine(s.database_url), job_id)
    assert (job.status, job.error_code) == ("failed", "timeout")
    assert job.error_message == "exceeded the time limit of 1.5 s"
    assert 1.5 <= job.duration_s < 10
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert sandbox_processes() == []


def test_a_crash_is_reported_with_its_signal(make_settings):
    s = make_settings(test_hook="sleep")
    job_id = make_job(s, b"irrelevant")
    t, _ = run_in_thread(JobRunner(s, "w"))
    os.kill(wait_for_sandbox().pid, signal.SIGSEGV)
    t.join(timeout=30)
    job = crud.get_job(get_engine(s.database_url), job_id)
    assert (job.status, job.error_code) == ("failed", "crashed")
    assert job.error_message == "the conversion process crashed (signal 11, SIGSEGV)"


def test_sandbox_is_confined(make_settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("SEPCONV_API_KEYS", "do-not-leak-either-0123456789")
    s = make_settings(job_memory_mb=1024, test_hook="sleep", database_url=None)
    job_id = make_job(s, b"irrelevant")
    runner = JobRunner(s, "w")
    t, _ = run_in_thread(runner)
    child = wait_for_sandbox()
    try:
        time.sleep(0.5)  # let it confine itself
        env = child.environ()
        assert not [k for k in env if k.startswith(("SEPCONV", "AWS"))], env
        assert "do-not-leak" not in str(env) and s.database_url not in str(env)
        assert child.rlimit(psutil.RLIMIT_AS) == (1024 * 1024 * 1024,) * 2
        assert child.rlimit(psutil.RLIMIT_CORE) == (0, 0)
        assert os.getsid(child.pid) == child.pid != os.getsid(0)  # its own session and process group
        status = Path(f"/proc/{child.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status
        if _user_namespaces_allowed():
            assert os.readlink(f"/proc/{child.pid}/ns/net") != os.readlink("/proc/self/ns/net")  # no network
        assert Path(child.cwd()).name.startswith(f"sepconv-job-{os.getpid()}-{job_id}-")  # private, per job
    finally:
        crud.mark_cancelled(get_engine(s.database_url), job_id, "o")  # cancel: the runner kills it
        t.join(timeout=10)
    assert sandbox_processes() == []


def _user_namespaces_allowed() -> bool:
    code = "import ctypes; print(ctypes.CDLL(None).unshare(0x10000000 | 0x40000000))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "0"


def test_cancel_while_running_kills_quickly_and_stores_nothing(make_settings):
    s = make_settings(test_hook="sleep")
    job_id = make_job(s, b"irrelevant")
    t, result = run_in_thread(JobRunner(s, "w"))
    child = wait_for_sandbox()
    t0 = time.monotonic()
    crud.mark_cancelled(get_engine(s.database_url), job_id, "o")
    t.join(timeout=10)
    assert time.monotonic() - t0 < 2.5  # polled every 0.5 s; slack for a loaded machine
    assert result[0].status == "cancelled"
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    storage = open_storage(s.storage_url)
    assert not storage.exists(files.report_key(job_id))
    assert crud.get_job(get_engine(s.database_url), job_id).output_key is None


def test_stop_gives_the_job_back(make_settings):
    s = make_settings(test_hook="sleep")
    job_id = make_job(s, b"irrelevant")
    stop = threading.Event()
    t, result = run_in_thread(JobRunner(s, "w", should_stop=stop.is_set))
    wait_for_sandbox()
    stop.set()
    t.join(timeout=10)
    assert result[0].status == "stopped"
    job = crud.get_job(get_engine(s.database_url), job_id)
    assert job.status == "queued" and job.attempts == 0 and sandbox_processes() == []


def test_folders_of_dead_workers_are_swept(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"sepconv-job-{dead.pid}-abc-xyz"
    live = tmp_path / f"sepconv-job-{os.getpid()}-def-uvw"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.in").write_bytes(b"a user's model")
    assert sweep_stale_workdirs() == 1
    assert not stale.exists() and live.exists()


def test_stage_detail_from_the_child_is_bounded():
    from service.jobs.runner import _job_fields

    event = {"event": "progress", "stage": "finetune", "progress": 0.5,
             "detail": {"epoch": 2, "loss": 0.25, "nan": float("nan"), "note": "x" * 500, "nested": {"a": 1},
                        **{f"k{i}": i for i in range(40)}}}
    fields = _job_fields(event)
    assert fields["stage"] == "finetune" and fields["progress"] == 0.5
    detail = fields["stage_detail"]
    assert detail["epoch"] == 2 and detail["loss"] == 0.25 and detail["nan"] is None
    assert len(detail["note"]) == 200 and "nested" not in detail and len(detail) <= 16
    assert _job_fields({"event": "progress", "stage": "plan", "progress": 0.3})["stage_detail"] is None
    assert _job_fields({"event": "progress", "stage": "distill", "progress": 0.3}) == {}
