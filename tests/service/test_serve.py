"""``sepconv serve`` as a real process on a loopback port: a restart loses no job (queued ones wait in the
database, a running one is re-queued), a graceful stop gives running jobs back, and a 1 GB upload streams
through without the server's memory growing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.service.helpers import FAST, free_port, metric, sampled_rss, streamed_model_upload, terminate, upload


class Server:
    """``sepconv serve`` in its own process group."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SEPCONV_")},
                    "SEPCONV_DATA_DIR": str(data_dir), "SEPCONV_PORT": str(self.port), "SEPCONV_POLL_INTERVAL_S": "0.2",
                    "SEPCONV_LOG_LEVEL": "warning", **env}
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "sepconv serve did not start"
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_hard(self) -> list[psutil.Process]:
        """SIGKILL the server and its workers at once (a crash, an OOM kill, a pulled plug)."""
        procs = self.processes()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()
        return procs

    def stop(self) -> int:
        if self.proc.poll() is None:
            terminate(self.proc, 40)
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()
        if s.proc.poll() is None:  # pragma: no cover
            os.killpg(s.proc.pid, signal.SIGKILL)


def wait_all(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    jobs: dict[str, dict] = {}
    while True:
        jobs = {i: client.get(f"/jobs/{i}").json() for i in ids}
        if all(j.get("status") in ("succeeded", "failed") for j in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, jobs
        time.sleep(0.2)


def test_restart_loses_no_job(tmp_path: Path, model_files, servers):
    data = tmp_path / "data"
    first = Server(data, SEPCONV_WORKERS="1", SEPCONV_JOB_LEASE_S="60")
    servers.append(first)
    with httpx.Client(base_url=first.url, timeout=30) as client:
        ids = [client.post("/convert", data=FAST, files=upload(model_files["onnx"])).json()["id"] for _ in range(3)]
        deadline = time.monotonic() + 30
        while client.get(f"/jobs/{ids[0]}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    procs = first.kill_hard()
    time.sleep(0.5)
    # Nothing of the old server survives: not the API, not its worker, not the conversion (parent-death signal).
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    # The lease (60 s) has not expired: the new server re-queues the dead worker's job at start.
    second = Server(data, SEPCONV_WORKERS="2", SEPCONV_JOB_LEASE_S="60")
    servers.append(second)
    with httpx.Client(base_url=second.url, timeout=30) as client:
        jobs = wait_all(client, ids, timeout=120)
        assert [j["status"] for j in jobs.values()] == ["succeeded"] * 3, jobs
        assert jobs[ids[0]]["attempts"] == 2 and jobs[ids[1]]["attempts"] == jobs[ids[2]]["attempts"] == 1
        assert client.get(f"/jobs/{ids[0]}/model").status_code == 200
    assert second.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown


def test_graceful_stop_gives_running_jobs_back(tmp_path: Path, model_files, servers):
    data = tmp_path / "data"
    first = Server(data, SEPCONV_TEST_HOOK="sleep")
    servers.append(first)
    with httpx.Client(base_url=first.url, timeout=30) as client:
        job_id = client.post("/convert", data=FAST, files=upload(model_files["onnx"])).json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    procs = first.processes()
    t0 = time.monotonic()
    assert first.stop() in (0, -signal.SIGTERM)
    assert time.monotonic() - t0 < 20
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    second = Server(data, SEPCONV_WORKERS="0")
    servers.append(second)
    with httpx.Client(base_url=second.url, timeout=30) as client:
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "queued" and job["attempts"] == 0  # given back, uncounted


def test_large_upload_streams_without_growing_memory(tmp_path: Path, model_files, servers):
    size = 1024**3
    server = Server(tmp_path / "data", SEPCONV_WORKERS="0")  # only the API: the upload is all we measure
    servers.append(server)
    headers, body = streamed_model_upload(model_files["onnx"].read_bytes()[:4096], size)  # looks like ONNX
    with sampled_rss(server.proc.pid) as rss:
        r = httpx.post(f"{server.url}/convert", content=body, timeout=300, headers=headers)
    assert r.status_code == 202, r.text
    stored = next((tmp_path / "data" / "files").rglob("input"))
    assert stored.stat().st_size == size
    growth = max(rss) - rss[0]
    assert growth < 100 * 1024**2, f"the API's RSS grew by {growth / 1024**2:.0f} MB during a 1 GB upload"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric(metrics, "sepconv_upload_bytes_total") >= size


def test_oversized_upload_is_answered_413_over_a_real_socket(tmp_path: Path, model_files, servers):
    # The server answers before reading the whole body; the client must still get the answer, not a reset.
    server = Server(tmp_path / "data", SEPCONV_WORKERS="0", SEPCONV_MAX_UPLOAD_BYTES=str(1024**2))
    servers.append(server)
    head = model_files["onnx"].read_bytes()[:4096]

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n\r\n' + head
        for _ in range(800):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    r = httpx.post(f"{server.url}/convert", content=body(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = httpx.post(f"{server.url}/convert", files=upload(data=head + bytes(2 * 1024**2)), timeout=60)
    assert r.status_code == 413
    assert not [p for p in (tmp_path / "data" / "files").rglob("*") if p.is_file()]


def test_without_keys_the_server_says_it_is_open_and_stays_on_loopback(tmp_path: Path, servers):
    """No keys: the start-up log says so, and a non-loopback --host is refused in favour of 127.0.0.1."""
    open_server = Server(tmp_path / "open", SEPCONV_HOST="0.0.0.0")
    servers.append(open_server)
    out = open_server.output()
    assert "no API keys are configured" in out and "listens on 127.0.0.1 (loopback) only" in out
    listening = {c.laddr.ip for p in open_server.processes() for c in p.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    keyed = Server(tmp_path / "keyed", SEPCONV_API_KEYS="k" * 24)
    servers.append(keyed)
    assert "no API keys are configured" not in keyed.output()
