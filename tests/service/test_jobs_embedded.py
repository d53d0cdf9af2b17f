"""Jobs end to end with the embedded executor: real worker processes, real conversions of a tiny model, through
the in-process API — upload → job → poll → download; ``?wait=``; cancellation of a running job; bad models; a
worker killed with SIGKILL mid-job (retried, or failed with a reason — never left running)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
import zipfile

import onnx
import psutil
import pytest
import torch

from converter import Report
from service.core.db import get_engine
from service.jobs import crud
from tests.service.helpers import (
    FAST,
    KEY_ALICE,
    KEY_BOB,
    auth,
    metric,
    serve_app,
    stored_files,
    submit,
    truncated_onnx,
    upload,
    wait_for,
)

pytestmark = pytest.mark.asyncio


def sandboxes_of(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            for p in psutil.Process(pid).children(recursive=True):
                if "service.jobs.sandbox" in " ".join(p.cmdline()):
                    out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


async def test_onnx_and_torchscript_end_to_end(make_settings, model_files, tmp_path):
    settings = make_settings(workers=2)
    async with serve_app(settings) as client:
        assert (await client.get("/readyz")).json()["status"] == "ok"
        onnx_job = await submit(client, model_files["onnx"], name="my net.onnx", options=FAST)
        r = await client.post("/convert", data={**FAST, "input_shape": "x=1x3x32x32"},
                              files=upload(model_files["torchscript"], name="vgg.pt", inputs=model_files["inputs"]))
        ts_job = r.json()
        seen_running = await wait_for(client, onnx_job["id"], until=lambda j: j["status"] != "queued")
        assert seen_running["started_at"] is not None and seen_running["attempts"] == 1
        done = {j["id"]: await wait_for(client, j["id"]) for j in (onnx_job, ts_job)}
        for job in done.values():
            assert job["status"] == "succeeded", job
            assert job["stage"] == "done" and job["progress"] == 1.0 and job["error"] is None
            assert job["started_at"] <= job["finished_at"]
        assert done[onnx_job["id"]]["format"] == "onnx" and done[ts_job["id"]]["format"] == "torchscript"

        r = await client.get(f"/jobs/{onnx_job['id']}/model")
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        assert 'filename="my net-sepconv.onnx"' in r.headers["content-disposition"]
        onnx.checker.check_model(onnx.load_from_string(r.content))
        report = Report.model_validate_json((await client.get(f"/jobs/{onnx_job['id']}/report")).content)
        assert report.format == "onnx" and report.params.converted < report.params.original

        r = await client.get(f"/jobs/{ts_job['id']}/model")
        assert 'filename="vgg-sepconv.pt"' in r.headers["content-disposition"]
        scripted = torch.jit.load(io.BytesIO(r.content))
        assert scripted(torch.randn(1, 3, 32, 32)).shape == (1, 10)
        ts_report = json.loads((await client.get(f"/jobs/{ts_job['id']}/report")).content)
        assert ts_report["fidelity"]["inputs"] == "user"  # the uploaded .npz was used

        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "sepconv_jobs", status="succeeded") == 2
        assert metric(metrics, "sepconv_job_duration_seconds_count", status="succeeded") == 2
        assert 0 < metric(metrics, "sepconv_job_duration_seconds_sum", status="succeeded") < 240
        assert metric(metrics, "sepconv_job_duration_seconds_bucket", status="succeeded", le="+Inf") == 2
        assert metric(metrics, "sepconv_queue_depth") == 0

        # Deleting a finished job removes its model, report and upload.
        assert (await client.delete(f"/jobs/{ts_job['id']}")).status_code == 204
        assert not [p for p in stored_files(settings) if ts_job["id"] in str(p)]


async def test_wait_returns_the_finished_job(make_settings, model_files):
    async with serve_app(make_settings()) as client:
        t0 = time.monotonic()
        r = await client.post("/convert", params={"wait": 90}, data=FAST, files=upload(model_files["onnx"]))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "succeeded" and time.monotonic() - t0 < 90
        job = await client.get(f"/jobs/{r.json()['id']}", params={"wait": 30})
        assert job.json()["status"] == "succeeded"


async def test_bad_models_fail_with_a_clear_message(make_settings, model_files):
    async with serve_app(make_settings(workers=2)) as client:
        truncated_job = (await client.post("/convert", data=FAST, files=upload(
            data=truncated_onnx(model_files["onnx"]), name="half.onnx"))).json()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("readme.txt", "not a model")
        zip_job = (await client.post("/convert", data=FAST, files=upload(data=buf.getvalue(), name="x.zip"))).json()
        checkpoint = io.BytesIO()
        torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), checkpoint)  # weights without code: the wrong format
        ckpt_job = (await client.post("/convert", data=FAST, files=upload(data=checkpoint.getvalue(),
                                                                         name="weights.pt"))).json()
        for job_id in (truncated_job["id"], zip_job["id"], ckpt_job["id"]):
            job = await wait_for(client, job_id)
            assert job["status"] == "failed" and job["error"]["code"] == "unsupported_model", job
            assert job["error"]["message"].startswith("not a model sepconv reads")
            assert job["finished_at"] and job["attempts"] == 1
            r = await client.get(f"/jobs/{job_id}/model")
            assert r.status_code == 409 and "failed" in r.json()["error"]["message"]


async def test_delete_of_a_running_job_kills_its_process(make_settings, model_files):
    settings = make_settings(test_hook="sleep")  # the conversion would never end by itself
    async with serve_app(settings) as client:
        job = await submit(client, model_files["onnx"])
        await wait_for(client, job["id"], until=lambda j: j["status"] == "running")
        executor = client.app.state.sepconv.executor
        deadline = time.monotonic() + 30
        while not (children := sandboxes_of(executor.pids)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204
        while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() - t0 < 2.5, "the conversion process outlived the DELETE"
            await asyncio.sleep(0.05)
        assert (await client.get(f"/jobs/{job['id']}")).status_code == 404
        await asyncio.sleep(0.5)
        assert stored_files(settings) == []
        # The worker is free again.
        assert executor.pids and not sandboxes_of(executor.pids)


async def test_worker_killed_mid_job_is_retried(make_settings, model_files):
    settings = make_settings(job_lease_s=2, job_max_attempts=2)
    async with serve_app(settings) as client:
        job = await submit(client, model_files["onnx"])
        await wait_for(client, job["id"], until=lambda j: j["status"] == "running", timeout=30)
        worker_pid = int(crud.get_job(get_engine(settings.database_url), job["id"]).worker_id.split(":")[-1])
        os.kill(worker_pid, signal.SIGKILL)
        done = await wait_for(client, job["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        assert worker_pid not in client.app.state.sepconv.executor.pids  # replaced by a fresh worker


async def test_worker_killed_on_its_last_attempt_fails_the_job(make_settings, model_files):
    settings = make_settings(job_lease_s=2, job_max_attempts=1, test_hook="sleep")
    async with serve_app(settings) as client:
        job = await submit(client, model_files["onnx"])
        await wait_for(client, job["id"], until=lambda j: j["status"] == "running", timeout=30)
        worker_pid = int(crud.get_job(get_engine(settings.database_url), job["id"]).worker_id.split(":")[-1])
        children = sandboxes_of([worker_pid])
        os.kill(worker_pid, signal.SIGKILL)
        done = await wait_for(client, job["id"], timeout=30)
        assert done["status"] == "failed" and done["error"]["code"] == "worker_lost", done
        # The API sees the process gone (or, later, its lease expire): either way a reason, never left running.
        assert "worker process died" in done["error"]["message"] or "stopped responding" in done["error"]["message"]
        # The orphaned conversion died with its worker (PR_SET_PDEATHSIG).
        await asyncio.sleep(0.5)
        assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)


async def test_owner_isolation_holds_for_finished_jobs(make_settings, model_files):
    async with serve_app(make_settings(api_keys=[KEY_ALICE, KEY_BOB])) as client:
        job = await submit(client, model_files["onnx"], key=KEY_ALICE, wait=90)
        assert job["status"] == "succeeded"
        for path in (f"/jobs/{job['id']}/model", f"/jobs/{job['id']}/report", f"/jobs/{job['id']}"):
            assert (await client.get(path, headers=auth(KEY_BOB))).status_code == 404
            assert (await client.get(path, headers=auth(KEY_ALICE))).status_code == 200


async def test_dead_worker_detection_sees_zombies_and_reused_pids():
    """A job's worker is dead if its process is gone, a zombie, or a pid now used by another program; only a
    live embedded worker of the same parent on this host counts as alive."""
    import socket
    import subprocess
    import sys
    import time

    from service.jobs.embedded import is_dead_embedded_worker

    host = socket.gethostname()

    def wid(parent: int, pid: int) -> str:
        return f"embedded:{host}:{parent}:0:{pid}"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert is_dead_embedded_worker(wid(1, gone.pid))

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not waited for: a zombie
    deadline = time.monotonic() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert is_dead_embedded_worker(wid(1, zombie.pid))
    zombie.wait()

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # a reused pid
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "service.jobs.embedded",
                               "--index", "0", "--parent", "4242"])
    try:
        assert is_dead_embedded_worker(wid(4242, stranger.pid))
        assert not is_dead_embedded_worker(wid(4242, worker.pid))
        assert is_dead_embedded_worker(wid(999, worker.pid))  # a worker of another server: its pid was reused
        assert not is_dead_embedded_worker(f"embedded:another-host:4242:0:{gone.pid}")  # not ours to judge
    finally:
        for p in (stranger, worker):
            p.kill()
            p.wait()
