"""The same job flow on the other backends: PostgreSQL (migrated by the app at start) and S3 storage (moto's
server on loopback), with real embedded worker processes."""

from __future__ import annotations

import boto3
import onnx
import pytest

from service.core.db import current_revision
from tests.service.helpers import head_revision, serve_app, submit, upload, wait_for

pytestmark = pytest.mark.asyncio


async def test_job_flow_on_postgresql(make_settings, pg_url, model_files):
    settings = make_settings(database_url=pg_url)
    async with serve_app(settings) as client:
        assert current_revision(settings.database_url) == head_revision()
        ready = (await client.get("/readyz")).json()
        assert ready["checks"]["database"] is True
        job = await submit(client, model_files["onnx"])
        done = await wait_for(client, job["id"], timeout=120)
        assert done["status"] == "succeeded", done
        onnx.checker.check_model(onnx.load_from_string((await client.get(f"/jobs/{job['id']}/model")).content))
        listing = (await client.get("/jobs")).json()
        assert listing["count"] == 1 and listing["data"][0]["id"] == job["id"]
        assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204


async def test_job_flow_on_s3(make_settings, moto_endpoint, aws_env, model_files):
    settings = make_settings(storage_url="s3://sepconv-test/prefix", s3_endpoint_url=moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    async with serve_app(settings) as client:  # the app creates the bucket at start
        assert (await client.get("/readyz")).json()["checks"]["storage"] is True
        job = await submit(client, model_files["onnx"])
        done = await wait_for(client, job["id"], timeout=120)
        assert done["status"] == "succeeded", done
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="sepconv-test")["Contents"]}
        assert keys == {f"prefix/jobs/{job['id']}/{name}" for name in ("input", "output.onnx", "report.json")}
        model = (await client.get(f"/jobs/{job['id']}/model")).content
        onnx.checker.check_model(onnx.load_from_string(model))
        assert (await client.get(f"/jobs/{job['id']}/report")).json()["format"] == "onnx"
        # An upload refused half-way leaves no object (nor multipart upload) behind.
        r = await client.post("/convert", data={"rank": "0"}, files=upload(model_files["onnx"]))
        assert r.status_code == 400
        assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204
        assert s3.list_objects_v2(Bucket="sepconv-test").get("KeyCount") == 0
        assert s3.list_multipart_uploads(Bucket="sepconv-test").get("Uploads", []) == []
