"""No job stranded: a dead embedded worker's job is re-queued as soon as the server sees the process gone (not
after its lease), and jobs whose broker message was lost (a Redis flush) are published again and finish."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from service.core.db import get_engine
from service.jobs import crud
from tests.service.helpers import serve_app, submit, terminate, wait_for

pytestmark = pytest.mark.asyncio


async def test_dead_embedded_worker_job_requeued_before_its_lease(make_settings, model_files):
    settings = make_settings(job_lease_s=60, job_max_attempts=3, test_hook="sleep")
    engine = get_engine(settings.database_url)
    async with serve_app(settings) as client:
        job = await submit(client, model_files["onnx"])
        await wait_for(client, job["id"], until=lambda j: j["status"] == "running", timeout=30)
        worker_id = crud.get_job(engine, job["id"]).worker_id
        os.kill(int(worker_id.split(":")[-1]), signal.SIGKILL)
        killed = time.monotonic()
        while (row := crud.get_job(engine, job["id"])).worker_id == worker_id:
            assert time.monotonic() - killed < 20, "the job waited for its 60 s lease"
            await asyncio.sleep(0.2)
        assert row.status in ("queued", "running") and row.attempts in (1, 2)
        await client.delete(f"/jobs/{job['id']}")


def _start_worker(settings, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPCONV_")}
    env.update(settings.worker_env())
    return subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--concurrency", "1"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


async def test_broker_flush_jobs_are_published_again_and_finish(make_settings, redis_url, model_files, tmp_path):
    queue = f"sepconv-test-{uuid.uuid4().hex[:10]}"
    settings = make_settings(broker_url=redis_url, celery_queue=queue, celery_gpu_queue=f"{queue}-gpu",
                             job_lease_s=3, requeue_after_s=2)
    broker = redis.Redis.from_url(redis_url)
    worker = None
    try:
        async with serve_app(settings) as client:
            jobs = [await submit(client, model_files["onnx"]) for _ in range(3)]
            assert broker.llen(queue) == 3
            broker.delete(queue)  # what a flush (or a restart without persistence) does to these messages
            worker = _start_worker(settings, tmp_path / "worker.log")
            for job in jobs:
                done = await wait_for(client, job["id"], timeout=180)
                assert done["status"] == "succeeded", (done, (tmp_path / "worker.log").read_text()[-3000:])
    finally:
        if worker is not None:
            terminate(worker)
        for key in broker.scan_iter(f"*{queue}*"):
            broker.delete(key)
        broker.close()
