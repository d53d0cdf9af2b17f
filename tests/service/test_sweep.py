"""Nothing leaks: sweeps remove partial uploads and objects of no job (local and S3) once older than the grace
period, and keep everything else; a server killed mid-upload leaves a ``.part`` file that the next start sweeps."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.core.config import load_settings
from service.core.db import get_engine, migrate
from service.core.storage import LocalStorage, S3Storage, Storage, open_storage
from service.jobs import crud, files
from service.jobs.sweep import sweep_storage
from service.models import Job, JobStatus, utcnow
from tests.service.test_serve import Server, servers  # noqa: F401 - the fixture


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "files")
    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("moto_endpoint")
    s = open_storage(f"s3://bucket-{uuid.uuid4().hex[:8]}/pre", s3_endpoint_url=endpoint)
    assert isinstance(s, S3Storage)
    return s


def _engine(tmp_path: Path):
    settings = load_settings(data_dir=tmp_path / "data")
    migrate(settings.database_url)
    return get_engine(settings.database_url)


def _job(engine, job_id: str) -> None:
    crud.create_job(engine, Job(id=job_id, owner="o", status=JobStatus.QUEUED, stage="queued", progress=0.0,
                                filename="m", options={}, input_key=files.input_key(job_id), input_bytes=1,
                                attempts=0, cancel_requested=False, created_at=utcnow()))


def test_sweep_removes_partial_writes_and_orphans_only(storage: Storage, tmp_path: Path):
    storage.ensure()
    engine = _engine(tmp_path)
    live, orphan = crud.new_job_id(), crud.new_job_id()
    _job(engine, live)
    storage.put(files.input_key(live), iter([b"live"]))
    storage.put(files.input_key(orphan), iter([b"orphan"]))
    storage.put(files.report_key(orphan), iter([b"{}"]))
    partial = storage.writer(files.input_key(crud.new_job_id()))
    partial.write(b"x" * (9 * 1024 * 1024))  # S3: one part sent, so the multipart upload exists

    kept = sweep_storage(engine, storage, grace_s=3600)
    # moto dates every multipart upload 2010-11-10, so on S3 the partial upload is already "old" here.
    assert kept.orphans == 0 and kept.partial == (0 if isinstance(storage, LocalStorage) else 1)
    assert storage.exists(files.input_key(orphan))

    time.sleep(1.1)
    result = sweep_storage(engine, storage, grace_s=1)
    assert result.orphans == 2 and kept.partial + result.partial == 1
    assert storage.exists(files.input_key(live))
    assert not storage.exists(files.input_key(orphan)) and not storage.exists(files.report_key(orphan))
    assert [k for k, _ in storage.list_keys("jobs/")] == [files.input_key(live)]
    if isinstance(storage, LocalStorage):
        assert not list(storage.root.rglob(".part-*"))
    else:
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
        assert not uploads


def _stalled_upload(url: str, head: bytes, sent: threading.Event) -> None:
    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n\r\n' + head
        for _ in range(64):
            yield b"\0" * 65536
        sent.set()
        time.sleep(60)  # the server is killed meanwhile
        yield b"\r\n--b--\r\n"

    with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
        httpx.post(f"{url}/convert", content=body(), timeout=90,
                   headers={"content-type": "multipart/form-data; boundary=b"})


def test_kill_mid_upload_then_restart_leaves_no_part(tmp_path: Path, model_files, servers):  # noqa: F811
    data = tmp_path / "data"
    first = Server(data, SEPCONV_WORKERS="0", SEPCONV_SWEEP_GRACE_S="0")
    servers.append(first)
    sent = threading.Event()
    client = threading.Thread(target=_stalled_upload, args=(first.url, model_files["onnx"].read_bytes()[:4096], sent),
                              daemon=True)
    client.start()
    assert sent.wait(60)
    deadline = time.monotonic() + 30
    while not (parts := list((data / "files").rglob(".part-*"))):
        assert time.monotonic() < deadline, "no partial upload appeared"
        time.sleep(0.1)
    first.kill_hard()
    assert all(p.exists() for p in parts)  # the leak the sweep is for

    second = Server(data, SEPCONV_WORKERS="0", SEPCONV_SWEEP_GRACE_S="0")
    servers.append(second)
    deadline = time.monotonic() + 30
    while list((data / "files").rglob(".part-*")):
        assert time.monotonic() < deadline, "the partial upload was not swept"
        time.sleep(0.2)
    assert "swept storage: 1 partial upload(s)" in second.output()
    assert os.path.isdir(data / "files")
