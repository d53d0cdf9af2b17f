"""The Celery executor with the real Redis (``SEPCONV_TEST_REDIS_URL``) and a real ``sepconv worker`` process: a
job round trip, a duplicate delivery that changes nothing, and a pool process killed mid-job (the job is run
again, never left running)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from service.core.config import Settings
from service.core.db import get_engine
from service.jobs import crud
from tests.service.helpers import free_port, serve_app, stored_files, submit, terminate, upload, wait_for

pytestmark = pytest.mark.asyncio


@pytest.fixture
def celery_settings(make_settings, redis_url: str) -> Iterator[Settings]:
    queue = f"sepconv-test-{uuid.uuid4().hex[:10]}"
    yield make_settings(broker_url=redis_url, celery_queue=queue, celery_gpu_queue=f"{queue}-gpu", job_lease_s=3)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{queue}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def celery_worker(celery_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPCONV_")}
    env.update(celery_settings.worker_env())
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--concurrency", "1"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = tmp_path / "worker.log"  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        terminate(proc)
        log.close()


def pool_processes(worker: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(worker.pid).children() if "service.jobs.sandbox" not in " ".join(p.cmdline())]


async def test_job_round_trip_and_duplicate_delivery(celery_settings, celery_worker, model_files):
    assert celery_settings.executor == "celery"
    async with serve_app(celery_settings) as client:
        assert (await client.get("/readyz")).json()["checks"]["queue"] is True
        job = await submit(client, model_files["onnx"])
        done = await wait_for(client, job["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 1, (done, celery_worker.log_path.read_text())
        assert (await client.get(f"/jobs/{job['id']}/model")).status_code == 200
        assert (await client.get(f"/jobs/{job['id']}/report")).json()["format"] == "onnx"

        # At-least-once delivery: the same task again must not run the job again.
        client.app.state.sepconv.executor.submit(job["id"])
        deadline = time.monotonic() + 30
        while "is not claimable" not in celery_worker.log_path.read_text():
            assert time.monotonic() < deadline, celery_worker.log_path.read_text()
            await asyncio.sleep(0.2)
        again = (await client.get(f"/jobs/{job['id']}")).json()
        assert again == done


async def test_pool_process_killed_mid_job_is_run_again(celery_settings, celery_worker, model_files):
    async with serve_app(celery_settings) as client:
        job = await submit(client, model_files["onnx"])
        await wait_for(client, job["id"], until=lambda j: j["status"] == "running", timeout=60)
        worker_id = crud.get_job(get_engine(celery_settings.database_url), job["id"]).worker_id
        pid = int(worker_id.split(":")[-1])
        assert pid in [p.pid for p in pool_processes(celery_worker)]
        os.kill(pid, signal.SIGKILL)
        done = await wait_for(client, job["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 2, (done, celery_worker.log_path.read_text())


async def test_broker_down_is_503_and_keeps_nothing(make_settings, model_files):
    settings = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    async with serve_app(settings) as client:
        r = await client.post("/convert", data={"rank": "2"}, files=upload(model_files["onnx"]))
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert stored_files(settings) == [] and (await client.get("/jobs")).json()["count"] == 0
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["queue"] is False
