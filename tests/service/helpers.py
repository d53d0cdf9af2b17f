"""Helpers of the service tests (the fixtures are in ``conftest.py``): the in-process app and client, upload
and polling shortcuts, and odd model files."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.core.config import Settings
from service.main import create_app


def head_revision() -> str:
    """The newest migration's revision (what a migrated database is at)."""
    from alembic.script import ScriptDirectory

    from service.core.db import MIGRATIONS

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


#: Options that keep a real conversion of the tiny test model to about a second (after the imports).
FAST = {"rank": "2", "latency_runs": "1", "input_shape": "x=1x3x32x32"}

#: Figures a test hands to the end of the run through ``config.stash`` (the compose test's image size and step
#: times), printed by conftest's terminal summary: pytest shows a passing test's output nowhere else.
FIGURES = pytest.StashKey[list[str]]()

KEY_ALICE = "alice-key-0123456789abcdef"
KEY_BOB = "bob-key-0123456789abcdef00"

TEST_DATABASE_URL = os.environ.get("SEPCONV_TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("SEPCONV_TEST_REDIS_URL")

needs_postgres = pytest.mark.skipif(not TEST_DATABASE_URL, reason="SEPCONV_TEST_DATABASE_URL is not set "
                                    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
needs_redis = pytest.mark.skipif(not TEST_REDIS_URL, reason="SEPCONV_TEST_REDIS_URL is not set "
                                 "(e.g. redis://127.0.0.1:6379/0)")


@contextlib.asynccontextmanager
async def serve_app(settings: Settings, *, start_executor: bool = True,
                    **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running (migrations, executor), behind an in-process client."""
    app = create_app(settings, start_executor=start_executor, **kw)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sepconv.test", timeout=120) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def auth(key: str) -> dict[str, str]:
    """The Authorization header of a key."""
    return {"Authorization": f"Bearer {key}"}


def upload(path: Path | None = None, *, data: bytes | None = None, name: str = "vgg.onnx",
           inputs: Path | None = None) -> dict[str, Any]:
    """The ``files=`` argument of a POST /convert."""
    content = data if data is not None else path.read_bytes()  # type: ignore[union-attr]
    files: dict[str, Any] = {"model": (name, content, "application/octet-stream")}
    if inputs is not None:
        files["inputs"] = ("inputs.npz", inputs.read_bytes(), "application/octet-stream")
    return files


async def submit(client: httpx.AsyncClient, path: Path, *, key: str | None = None,
                 options: dict[str, Any] | None = None, name: str | None = None, wait: float = 0) -> dict[str, Any]:
    """POST /convert and return the job (asserting it was accepted)."""
    r = await client.post("/convert", params={"wait": wait} if wait else None,
                          headers=auth(key) if key else None, data=options if options is not None else FAST,
                          files=upload(path, name=name or path.name))
    assert r.status_code in (200, 202), r.text
    return r.json()


async def wait_for(client: httpx.AsyncClient, job_id: str, *, key: str | None = None, timeout: float = 90,
                   until: Callable[[dict[str, Any]], bool] = lambda j: j["status"] in ("succeeded", "failed")
                   ) -> dict[str, Any]:
    """Poll a job until ``until`` holds (default: finished); fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/jobs/{job_id}", headers=auth(key) if key else None)
        assert r.status_code == 200, r.text
        job = r.json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job did not get there in {timeout} s: {job}"
        await asyncio.sleep(0.1)


def stored_files(settings: Settings) -> list[Path]:
    """Every file in the local storage folder."""
    root = Path(settings.storage_url.removeprefix("file://"))
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def truncated_onnx(path: Path) -> bytes:
    """The first half of an ONNX file: it still looks like ONNX, but does not parse."""
    data = path.read_bytes()
    return data[: len(data) // 2]


def onnx_zip(path: Path) -> bytes:
    """An ONNX model in a zip (no external data): recognised as a zip at upload."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.onnx", path.read_bytes())
    return buf.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels} in the metrics")


def streamed_model_upload(head: bytes, size: int, boundary: str = "sepconvboundary"
                          ) -> tuple[dict[str, str], Iterator[bytes]]:
    """Headers and a generated multipart body for a ``model`` part of ``size`` bytes (``head``, then random
    padding), produced as it is sent: an upload of any size without holding it in this process's memory."""
    block = os.urandom(4 * 1024 * 1024)
    prefix = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="big.onnx"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n").encode()
    suffix = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield prefix + head
        sent = len(head)
        while sent < size:
            chunk = block[: min(len(block), size - sent)]
            sent += len(chunk)
            yield chunk
        yield suffix

    headers = {"content-type": f"multipart/form-data; boundary={boundary}",
               "content-length": str(len(prefix) + size + len(suffix))}
    return headers, body()


@contextlib.contextmanager
def sampled_rss(pid: int, interval: float = 0.05) -> Iterator[list[int]]:
    """Sample a process's RSS from a thread while the block runs; yields the growing list of samples."""
    proc = psutil.Process(pid)
    samples = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                samples.append(proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()


def terminate(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a process started in its own session; after ``timeout`` s, SIGKILL its whole process group."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
