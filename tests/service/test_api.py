"""The HTTP API on its own (no worker processes, so jobs stay queued): the contract of docs/http-api.md —
auth and isolation, upload checks, option validation, the queue bound, listing, deletion, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from converter import ConversionConfig
from service.core.db import get_engine
from service.models import Job
from tests.service.helpers import (
    FAST,
    KEY_ALICE,
    KEY_BOB,
    auth,
    metric,
    onnx_zip,
    serve_app,
    stored_files,
    submit,
    truncated_onnx,
    upload,
)

pytestmark = pytest.mark.asyncio

JOB_KEYS = {"id", "status", "stage", "progress", "stage_detail", "filename", "format", "options", "created_at",
            "started_at", "finished_at", "attempts", "error", "links"}


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    return body["error"]


def job_count(client: httpx.AsyncClient) -> int:
    engine = get_engine(client.app.state.sepconv.settings.database_url)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Job))


async def test_submit_queues_a_job_with_the_contract_shape(api, model_files):
    r = await api.post("/convert", headers=auth(KEY_ALICE), data={**FAST, "exclude": ["head*", "x*"]},
                       files=upload(model_files["onnx"], name="../../etc/My Net.onnx"))
    assert r.status_code == 202, r.text
    job = r.json()
    assert set(job) == JOB_KEYS
    assert job["status"] == "queued" and job["stage"] == "queued" and job["progress"] == 0.0
    assert job["filename"] == "My Net.onnx"  # the last path component only, shown, never used as a path
    assert job["options"] == {"rank": 2, "latency_runs": 1, "input_shape": {"x": [1, 3, 32, 32]},
                              "exclude": ["head*", "x*"]}
    assert job["attempts"] == 0 and job["error"] is None and job["format"] is None
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert job["links"] == {"self": f"/jobs/{job['id']}", "model": f"/jobs/{job['id']}/model",
                            "report": f"/jobs/{job['id']}/report"}
    # Storage keys come from the job id, not the user's file name.
    files = stored_files(api.app.state.sepconv.settings)
    assert [p.name for p in files] == ["input"] and job["id"] in str(files[0])
    assert files[0].read_bytes() == model_files["onnx"].read_bytes()


async def test_missing_or_unknown_key_is_401_on_every_job_endpoint(api, model_files):
    job = await submit(api, model_files["onnx"], key=KEY_ALICE)
    calls = [("POST", "/convert"), ("GET", "/jobs"), ("GET", f"/jobs/{job['id']}"),
             ("GET", f"/jobs/{job['id']}/model"), ("GET", f"/jobs/{job['id']}/report"),
             ("GET", f"/jobs/{job['id']}/report.html"), ("DELETE", f"/jobs/{job['id']}")]
    for headers in ({}, auth("not-a-configured-key-at-all"), {"Authorization": f"Basic {KEY_ALICE}"}):
        for method, path in calls:
            r = await api.request(method, path, headers=headers)
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
    for path in ("/healthz", "/metrics"):
        assert (await api.get(path)).status_code == 200


async def test_another_keys_job_is_404_on_every_endpoint(api, model_files):
    job = await submit(api, model_files["onnx"], key=KEY_ALICE)
    for method, path in [("GET", f"/jobs/{job['id']}"), ("GET", f"/jobs/{job['id']}/model"),
                         ("GET", f"/jobs/{job['id']}/report"), ("GET", f"/jobs/{job['id']}/report.html"),
                         ("DELETE", f"/jobs/{job['id']}"),
                         ("GET", f"/jobs/{job['id']}?wait=0.2")]:
        r = await api.request(method, path, headers=auth(KEY_BOB))
        assert_error(r, 404, "not_found")
    listing = (await api.get("/jobs", headers=auth(KEY_BOB))).json()
    assert listing == {"data": [], "count": 0}
    # Bob's DELETE did nothing: the job and its file are still there for Alice.
    assert (await api.get(f"/jobs/{job['id']}", headers=auth(KEY_ALICE))).status_code == 200
    assert len(stored_files(api.app.state.sepconv.settings)) == 1
    # An unknown id looks exactly like another owner's job.
    unknown = await api.get("/jobs/0123456789abcdef0123456789abcdef", headers=auth(KEY_BOB))
    assert_error(unknown, 404, "not_found")


async def test_owner_is_stored_as_a_digest_never_the_key(api, model_files):
    await submit(api, model_files["onnx"], key=KEY_ALICE)
    engine = get_engine(api.app.state.sepconv.settings.database_url)
    with engine.connect() as conn:
        owner = conn.scalar(select(Job.owner))
    assert owner != KEY_ALICE and len(owner) == 64 and KEY_ALICE not in owner


async def test_no_keys_mode_accepts_everyone_as_one_owner(make_settings, model_files):
    settings = make_settings(host="0.0.0.0")  # no keys: must not listen beyond loopback
    assert settings.host == "127.0.0.1" and any("NO API KEYS" in w for w in settings.warnings)
    async with serve_app(settings, start_executor=False) as client:
        job = await submit(client, model_files["onnx"])
        same = await client.get(f"/jobs/{job['id']}", headers=auth("anything-at-all-goes-here"))
        assert same.status_code == 200
        assert (await client.get("/jobs")).json()["count"] == 1


async def test_garbage_upload_is_415_and_nothing_is_kept(api):
    for data in (b"hello world, this is not a model" * 500, b"\x00" * 10, b"GIF89a" + b"\x01" * 9000):
        r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST, files=upload(data=data))
        assert_error(r, 415, "unsupported_model")
    assert stored_files(api.app.state.sepconv.settings) == [] and job_count(api) == 0


async def test_empty_upload_is_415(api):
    r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST, files=upload(data=b""))
    assert "empty" in assert_error(r, 415, "unsupported_model")["message"]
    assert stored_files(api.app.state.sepconv.settings) == []


async def test_model_like_uploads_are_accepted_for_the_worker_to_judge(api, model_files):
    # A truncated ONNX file and a zip still look like models from their first bytes: the worker decides.
    for data, name in ((truncated_onnx(model_files["onnx"]), "half.onnx"), (onnx_zip(model_files["onnx"]), "m.zip"),
                       (model_files["torchscript"].read_bytes(), "vgg.pt")):
        r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST, files=upload(data=data, name=name))
        assert r.status_code == 202, r.text


async def test_upload_over_the_limit_is_413_and_nothing_is_stored(make_settings, model_files):
    size = model_files["onnx"].stat().st_size
    async with serve_app(make_settings(max_upload_bytes=size - 1), start_executor=False) as client:
        r = await client.post("/convert", data=FAST, files=upload(model_files["onnx"]))
        assert_error(r, 413, "too_large")
        assert stored_files(client.app.state.sepconv.settings) == [] and job_count(client) == 0
        # model + inputs count together
        r = await client.post("/convert", data=FAST, files=upload(data=model_files["onnx"].read_bytes()[: size - 200],
                                                                  inputs=model_files["inputs"]))
        assert_error(r, 413, "too_large")
        assert stored_files(client.app.state.sepconv.settings) == [] and job_count(client) == 0


async def test_declared_content_length_over_the_limit_is_refused_before_reading(make_settings):
    async with serve_app(make_settings(max_upload_bytes=1000), start_executor=False) as client:
        read = []

        async def body():
            read.append(1)
            yield b"x" * 10

        r = await client.post("/convert", content=body(), headers={
            "content-type": "multipart/form-data; boundary=abc", "content-length": str(5 * 1024 * 1024)})
        assert_error(r, 413, "too_large")
        assert read == []


async def test_bad_options_are_400_naming_the_option(api, model_files):
    cases = {
        "rank": {"rank": "0"},
        "energy": {"energy": "1.5"},
        "nonsense": {"nonsense": "1"},
        "order": {"order": "sideways"},
        "rank and energy": {"rank": "2", "energy": "0.5"},
        "input shape": {"input_shape": "x=1xAx3"},
        "seed": {"seed": "1", "seed ": "2"},
        "given 2 times": {"rank": ["2", "3"]},
    }
    for expected, options in cases.items():
        r = await api.post("/convert", headers=auth(KEY_ALICE), data=options, files=upload(model_files["onnx"]))
        message = assert_error(r, 400, "invalid_options")["message"]
        assert expected.split()[0] in message, (options, message)
    assert stored_files(api.app.state.sepconv.settings) == [] and job_count(api) == 0


async def test_malformed_requests_are_400(api, model_files):
    r = await api.post("/convert", headers=auth(KEY_ALICE), json={"rank": 2})
    assert "multipart" in assert_error(r, 400, "invalid_options")["message"]
    r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST)  # no model part
    assert_error(r, 400, "invalid_options")
    r = await api.post("/convert", headers=auth(KEY_ALICE), data={"model": "not a file"})
    assert_error(r, 400, "invalid_options")
    r = await api.post("/convert", headers=auth(KEY_ALICE), files={"weights": ("w.bin", b"x")})
    assert_error(r, 400, "invalid_options")
    r = await api.post("/convert", headers={**auth(KEY_ALICE), "content-type": "multipart/form-data; boundary=zz"},
                       content=b"--zz\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nabc")
    assert_error(r, 400, "invalid_options")
    r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST,
                       files=upload(model_files["onnx"], inputs=model_files["onnx"]))
    assert "npz" in assert_error(r, 400, "invalid_options")["message"]
    for params in ({"wait": "-1"}, {"wait": "601"}, {"wait": "soon"}):
        r = await api.post("/convert", headers=auth(KEY_ALICE), params=params, files=upload(model_files["onnx"]))
        assert "wait" in assert_error(r, 400, "invalid_options")["message"]
    assert stored_files(api.app.state.sepconv.settings) == [] and job_count(api) == 0


async def test_queue_full_is_503_with_retry_after(make_settings, model_files):
    async with serve_app(make_settings(max_queued=2), start_executor=False) as client:
        await submit(client, model_files["onnx"])
        await submit(client, model_files["onnx"])
        r = await client.post("/convert", data=FAST, files=upload(model_files["onnx"]))
        assert_error(r, 503, "queue_full")
        assert int(r.headers["retry-after"]) > 0
        assert job_count(client) == 2 and len(stored_files(client.app.state.sepconv.settings)) == 2


async def test_list_is_paginated_newest_first(api, model_files):
    ids = [(await submit(api, model_files["onnx"], key=KEY_ALICE))["id"] for _ in range(5)]
    await submit(api, model_files["onnx"], key=KEY_BOB)
    page1 = (await api.get("/jobs", params={"limit": 2}, headers=auth(KEY_ALICE))).json()
    page2 = (await api.get("/jobs", params={"limit": 2, "offset": 2}, headers=auth(KEY_ALICE))).json()
    page3 = (await api.get("/jobs", params={"limit": 2, "offset": 4}, headers=auth(KEY_ALICE))).json()
    assert page1["count"] == page2["count"] == page3["count"] == 5
    assert [j["id"] for j in page1["data"] + page2["data"] + page3["data"]] == ids[::-1]
    default = (await api.get("/jobs", headers=auth(KEY_ALICE))).json()
    assert len(default["data"]) == 5
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "many"}):
        assert_error(await api.get("/jobs", params=params, headers=auth(KEY_ALICE)), 400, "invalid_options")


async def test_results_of_an_unfinished_job_are_409(api, model_files):
    job = await submit(api, model_files["onnx"], key=KEY_ALICE)
    for what in ("model", "report", "report.html"):
        err = assert_error(await api.get(f"/jobs/{job['id']}/{what}", headers=auth(KEY_ALICE)), 409, "not_ready")
        assert "queued" in err["message"]


async def test_wait_on_an_unfinished_job_returns_it_when_the_time_is_up(api, model_files):
    r = await api.post("/convert", params={"wait": 0.3}, headers=auth(KEY_ALICE), data=FAST,
                       files=upload(model_files["onnx"]))
    assert r.status_code == 202 and r.json()["status"] == "queued"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await api.get(f"/jobs/{r.json()['id']}", params={"wait": 0.5}, headers=auth(KEY_ALICE))
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert 0.4 < loop.time() - t0 < 5


async def test_delete_of_a_queued_job_removes_record_and_files(api, model_files):
    job = await submit(api, model_files["onnx"], key=KEY_ALICE)
    r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST,
                       files=upload(model_files["onnx"], inputs=model_files["inputs"]))
    other = r.json()
    assert len(stored_files(api.app.state.sepconv.settings)) == 3
    assert (await api.delete(f"/jobs/{other['id']}", headers=auth(KEY_ALICE))).status_code == 204
    assert_error(await api.get(f"/jobs/{other['id']}", headers=auth(KEY_ALICE)), 404, "not_found")
    assert_error(await api.delete(f"/jobs/{other['id']}", headers=auth(KEY_ALICE)), 404, "not_found")
    remaining = stored_files(api.app.state.sepconv.settings)
    assert len(remaining) == 1 and job["id"] in str(remaining[0])
    # The deleted job's folder is gone too.
    assert not any(other["id"] in str(p) for p in remaining[0].parents[2].rglob("*"))


async def test_unknown_routes_and_methods_use_the_error_shape(api):
    assert_error(await api.get("/nowhere"), 404, "not_found")
    assert_error(await api.put("/jobs"), 405, "method_not_allowed")
    assert_error(await api.get("/convert"), 405, "method_not_allowed")


async def test_internal_errors_are_500_without_a_traceback(api):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret internals /srv/x.py line 3")

    api.app.state.sepconv.jobs.list = broken
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/jobs", headers=auth(KEY_ALICE))
    err = assert_error(r, 500, "internal")
    assert "secret" not in r.text and "Traceback" not in r.text and err["detail"] is None


async def test_healthz_readyz_and_metrics(api, model_files):
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    # No worker processes in this app: the queue is not ready.
    r = await api.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {"database": True, "queue": False, "storage": True}}
    await submit(api, model_files["onnx"], key=KEY_ALICE)
    text = (await api.get("/metrics")).text
    assert metric(text, "sepconv_jobs", status="queued") == 1
    assert metric(text, "sepconv_jobs", status="succeeded") == 0
    assert metric(text, "sepconv_queue_depth") == 1
    assert metric(text, "sepconv_upload_bytes_total") == model_files["onnx"].stat().st_size
    assert metric(text, "sepconv_job_duration_seconds_count", status="succeeded") == 0


async def test_openapi_describes_the_multipart_body_with_every_option(api):
    doc = (await api.get("/openapi.json")).json()
    body = doc["paths"]["/convert"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["model"]
    files = {"model", "inputs", "data", "eval"}
    assert set(body["properties"]) == {*files, *ConversionConfig.model_fields} - {"trust_model"}
    assert body["properties"]["model"]["format"] == "binary"
    assert body["properties"]["rank"]["description"] == ConversionConfig.model_fields["rank"].description
    assert body["properties"]["exclude"]["type"] == "array"


async def test_keys_file(make_settings, model_files, tmp_path: Path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\n{KEY_BOB}\n\n")
    async with serve_app(make_settings(api_keys_file=keys), start_executor=False) as client:
        assert (await client.get("/jobs", headers=auth(KEY_BOB))).status_code == 200
        assert_error(await client.get("/jobs", headers=auth(KEY_ALICE)), 401, "unauthorized")
