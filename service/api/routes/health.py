"""Liveness (``/healthz``), readiness (``/readyz``: database, queue, storage) and Prometheus ``/metrics``. None
of them needs an API key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ...core.db import check_database
from ...jobs.errors import UnavailableError
from ...schemas import Health, Readiness, ReadinessChecks
from ..deps import StateDep
from ..errors import ERROR_RESPONSES

__all__ = ["router"]

router = APIRouter(tags=["health"])

#: Seconds each readiness check may take before it counts as failed.
CHECK_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


async def _check(fn: Callable[..., Any], *args: Any) -> bool:
    try:
        return bool(await asyncio.wait_for(to_thread.run_sync(fn, *args, abandon_on_cancel=True),
                                           CHECK_TIMEOUT_S))
    except Exception:
        return False


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "A dependency does not answer."}})
async def readyz(state: StateDep) -> JSONResponse:
    """Readiness: the database, the job queue and the storage answer."""
    database, queue, storage = await asyncio.gather(
        _check(check_database, state.settings.database_url), _check(state.executor.ready),
        _check(state.storage.check))
    checks = ReadinessChecks(database=database, queue=queue, storage=storage)
    ok = database and queue and storage
    body = Readiness(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition."}, 503: ERROR_RESPONSES[503]})
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: jobs by status, durations, queue depth, upload bytes."""
    try:
        text = await to_thread.run_sync(state.metrics.render)
    except Exception as e:
        raise UnavailableError(f"metrics are unavailable: the job database does not answer ({type(e).__name__})") \
            from None
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
