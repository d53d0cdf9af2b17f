"""``GET /jobs/{id}`` under load: the ASGI fast path answers exactly what the FastAPI route answers, leaves every
error to the route, and concurrent polls of one job share one database read."""

from __future__ import annotations

import asyncio

import pytest

from service.jobs import crud
from tests.service.helpers import KEY_ALICE, KEY_BOB, auth, submit

pytestmark = pytest.mark.asyncio


async def test_fast_path_answers_like_the_route(api, model_files):
    job = await submit(api, model_files["onnx"], key=KEY_ALICE)
    fast = await api.get(f"/jobs/{job['id']}", headers=auth(KEY_ALICE))
    route = await api.get(f"/jobs/{job['id']}", headers=auth(KEY_ALICE), params={"wait": 0})  # a query: the route
    assert fast.status_code == route.status_code == 200
    assert fast.headers["content-type"] == "application/json"
    assert fast.json() == route.json() == job


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "unauthorized"),
    (auth("not-a-configured-key-at-all"), 401, "unauthorized"),
    ({"Authorization": f"Basic {KEY_ALICE}"}, 401, "unauthorized"),
    (auth(KEY_BOB), 404, "not_found"),
])
async def test_errors_come_from_the_route(api, model_files, headers, status, code):
    job = await submit(api, model_files["onnx"], key=KEY_ALICE)
    r = await api.get(f"/jobs/{job['id']}", headers=headers)
    assert r.status_code == status and r.json()["error"]["code"] == code


async def test_concurrent_polls_share_one_read(api, model_files, monkeypatch):
    job = await submit(api, model_files["onnx"], key=KEY_ALICE)
    reads = []
    real = crud.get_job

    def counted(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(crud, "get_job", counted)
    answers = await asyncio.gather(*(api.get(f"/jobs/{job['id']}", headers=auth(KEY_ALICE)) for _ in range(20)))
    assert all(r.status_code == 200 and r.json()["id"] == job["id"] for r in answers)
    assert 1 <= len(reads) < 20
