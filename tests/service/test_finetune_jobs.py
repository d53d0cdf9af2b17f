"""Fine-tune jobs through the service: POST /convert with samples and recover=finetune, POST /jobs/{id}/finetune on a
finished job (no re-upload), resume from a stored checkpoint, cancel, the SDK, and Celery routing to the GPU queue
with a CPU worker listening only there."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import converter
from service.core.storage import open_storage
from service.jobs import files
from service.jobs.runner import JobRunner
from tests.service.helpers import KEY_ALICE, auth, serve_app, stored_files, terminate, wait_for
from tests.utils.finetune_models import tiny_files

pytestmark = pytest.mark.asyncio

# No latency measurement: its plan depends on timings, and the resume test needs the same converted graph twice.
OPTIONS = {"rank": "1", "recover": "finetune", "epochs": "2", "batch_size": "12", "verify": "false",
           "measure": "false", "input_shape": "x=2x1x8x8"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_files(tmp_path_factory.mktemp("tiny"))


async def _convert(client: httpx.AsyncClient, tiny: dict[str, Path], options: dict[str, str],
                   data: bool = True) -> dict[str, Any]:
    parts: dict[str, Any] = {"model": ("tiny.onnx", tiny["onnx"].read_bytes(), "application/octet-stream")}
    if data:
        parts["data"] = ("data.npz", tiny["data"].read_bytes(), "application/octet-stream")
    r = await client.post("/convert", data=options, files=parts)
    assert r.status_code == 202, r.text
    return r.json()


async def test_finetune_job_and_finetune_of_a_finished_job(make_settings, tiny):
    settings = make_settings(workers=1)
    async with serve_app(settings) as client:
        # Enough epochs that the fine-tune stage outlasts the job record's progress updates and the 0.1 s polls
        # (two epochs of the tiny model could start and end between two of them).
        job = await _convert(client, tiny, {**OPTIONS, "epochs": "60", "patience": "1000"})
        seen: list[dict] = []
        done = await wait_for(client, job["id"], timeout=180,
                              until=lambda j: seen.append(j) or j["status"] in ("succeeded", "failed"))
        assert done["status"] == "succeeded", done
        report = (await client.get(f"/jobs/{job['id']}/report")).json()
        assert report["finetune"]["epochs"] >= 1 and report["finetune"]["metric"] == "top1"
        assert report["timings"]["finetune_s"] > 0
        # Progress while fine-tuning carries the loss and the held-out metric.
        details = [j["stage_detail"] for j in seen if j["stage"] == "finetune" and j["stage_detail"]]
        assert any("loss" in d and "top1" in d for d in details), seen

        # Fine-tune the finished job again: no model upload, the job's own samples, options on top.
        r = await client.post(f"/jobs/{job['id']}/finetune", data={"epochs": "1", "finetune_scope": "all"})
        assert r.status_code == 202, r.text
        again = await wait_for(client, r.json()["id"], timeout=180)
        assert again["status"] == "succeeded", again
        second = (await client.get(f"/jobs/{again['id']}/report")).json()["finetune"]
        assert second["epochs"] == 1 and second["scope"] == "all"
        assert (await client.get(f"/jobs/{again['id']}/model")).status_code == 200

        # A job converted without samples needs a data part; an unknown job is 404; a queued one 409.
        plain = await wait_for(client, (await _convert(client, tiny, {**OPTIONS, "recover": "none"},
                                                       data=False))["id"], timeout=120)
        r = await client.post(f"/jobs/{plain['id']}/finetune")
        assert r.status_code == 400 and "data" in r.json()["error"]["message"]
        r = await client.post(f"/jobs/{plain['id']}/finetune", data={"epochs": "1"},
                              files={"data": ("d.npz", tiny["data"].read_bytes(), "application/octet-stream")})
        assert r.status_code == 202, r.text
        assert (await wait_for(client, r.json()["id"], timeout=180))["status"] == "succeeded"
        assert (await client.post("/jobs/nope/finetune")).status_code == 404


async def test_finetune_job_resumes_from_the_stored_checkpoint(make_settings, tiny, tmp_path):
    settings = make_settings()
    # The checkpoint an earlier attempt left: the same model, samples and options, run through the library.
    library = {k: v for k, v in OPTIONS.items() if k != "input_shape"} | {"input_shape": {"x": (2, 1, 8, 8)}}
    converter.convert(tiny["onnx"], tmp_path / "lib.onnx", data=tiny["data"], checkpoint_dir=tmp_path / "ck",
                      **library)
    async with serve_app(settings, start_executor=False) as client:
        job = await _convert(client, tiny, OPTIONS)
        storage = open_storage(settings.storage_url)
        with open(tmp_path / "ck" / "finetune.ckpt", "rb") as f:
            storage.put(files.checkpoint_key(job["id"]), f)
        outcome = await asyncio.to_thread(JobRunner(settings, "test-worker").run, job["id"])
        assert outcome is not None and outcome.status == "done", outcome
        report = (await client.get(f"/jobs/{job['id']}/report")).json()
        assert report["finetune"]["resumed"] is True
        assert not storage.exists(files.checkpoint_key(job["id"]))  # gone once the job succeeded


@pytest.mark.asyncio(loop_scope="function")
async def test_runner_uploads_a_new_checkpoint(make_settings, tmp_path):
    settings = make_settings()
    runner = JobRunner(settings, "test-worker")
    (tmp_path / "checkpoint").mkdir()
    assert runner._sync_checkpoint("job1", tmp_path, 0.0) == 0.0  # none yet
    (tmp_path / "checkpoint" / "finetune.ckpt").write_bytes(b"state")
    seen = runner._sync_checkpoint("job1", tmp_path, 0.0)
    assert seen > 0 and b"".join(runner.storage.get(files.checkpoint_key("job1"))) == b"state"
    assert runner._sync_checkpoint("job1", tmp_path, seen) == seen  # unchanged: not uploaded again
    # the max_accuracy_drop search's journal travels the same way, under its own key
    (tmp_path / "checkpoint" / "search.json").write_text('{"key": "k", "plans": {}}')
    assert runner._sync_checkpoint("job1", tmp_path, 0.0, "search.json") > 0
    assert b"".join(runner.storage.get(files.checkpoint_key("job1", "search.json"))) == b'{"key": "k", "plans": {}}'
    (tmp_path / "again").mkdir()
    folder = Path(runner._download_checkpoint("job1", tmp_path / "again"))
    assert (folder / "search.json").read_text() == '{"key": "k", "plans": {}}'
    assert (folder / "finetune.ckpt").read_bytes() == b"state"


async def test_cancel_a_running_finetune(make_settings, tiny):
    settings = make_settings(workers=1)
    async with serve_app(settings) as client:
        job = await _convert(client, tiny, {**OPTIONS, "epochs": "10000", "finetune_minutes": "10"})
        await wait_for(client, job["id"], timeout=180, until=lambda j: j["stage"] == "finetune")
        assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204
        assert (await client.get(f"/jobs/{job['id']}")).status_code == 404
        deadline = time.monotonic() + 10
        while stored_files(settings) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert stored_files(settings) == []  # model, samples and any checkpoint are gone


async def test_sdk_convert_and_finetune(make_settings, tiny):
    from service.sdk import AsyncClient

    settings = make_settings(workers=1)
    async with serve_app(settings) as api:
        transport = httpx.ASGITransport(app=api.app)  # the running app, in process
        async with AsyncClient("http://test", transport=transport) as client:
            job = await client.convert(tiny["onnx"], data=tiny["data"], rank=1, recover="finetune", epochs=1,
                                       verify=False, input_shape={"x": (2, 1, 8, 8)}, wait=180)
            report = await job.report
            assert report.finetune is not None and report.finetune.epochs == 1
            tuned = await client.finetune(job.id, epochs=1, wait=180)
            assert tuned.id != job.id and (await tuned.report).finetune.epochs == 1


@pytest.fixture
def gpu_queue_worker(make_settings, redis_url: str, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A Celery worker (CPU) that consumes only the GPU queue."""
    queue = f"sepconv-test-{uuid.uuid4().hex[:10]}"
    settings = make_settings(broker_url=redis_url, celery_queue=queue, celery_gpu_queue=f"{queue}-gpu",
                             job_lease_s=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPCONV_")}
    env.update(settings.worker_env())
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--queues", settings.celery_gpu_queue,
                             "--concurrency", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield settings, tmp_path / "worker.log"
    finally:
        terminate(proc)
        log.close()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"*{queue}*"):
            client.delete(key)
        client.close()


async def test_celery_routes_finetune_jobs_to_the_gpu_queue(gpu_queue_worker, tiny):
    settings, log = gpu_queue_worker
    async with serve_app(settings) as client:
        plain = await _convert(client, tiny, {**OPTIONS, "recover": "none"}, data=False)
        tuned = await _convert(client, tiny, OPTIONS)
        done = await wait_for(client, tuned["id"], timeout=180)
        assert done["status"] == "succeeded", (done, log.read_text())
        # The conversion without fine-tuning went to the normal queue, which nobody here consumes.
        assert (await client.get(f"/jobs/{plain['id']}")).json()["status"] == "queued"



async def test_a_finetune_longer_than_the_job_time_limit_is_refused(api, tiny):
    parts = {"model": ("tiny.onnx", tiny["onnx"].read_bytes(), "application/octet-stream"),
             "data": ("data.npz", tiny["data"].read_bytes(), "application/octet-stream")}
    r = await api.post("/convert", data={**OPTIONS, "finetune_minutes": "100"}, files=parts, headers=auth(KEY_ALICE))
    assert r.status_code == 400 and "finetune_minutes" in r.json()["error"]["message"], r.text
