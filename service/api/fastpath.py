"""A fast path for the most polled request, ``GET /jobs/{id}`` (no query): a plain ASGI middleware that answers it
without FastAPI's routing and dependency machinery.

Why: clients poll job status. Profiled under ``wrk`` (50 connections), FastAPI's per-request dependency solving
(the bearer scheme, the owner and service dependencies, a scratch response per request) cost about as much as a
whole ``GET /healthz``, and the status lookup as much again; with those, the endpoint served about a third of
``/healthz``'s requests per second. This path does the same work — the bearer key to an owner (``KeyRing``), the
job from the service layer (``JobService.get``, which shares one database read among concurrent pollers of a
job), the public view (``JobPublic``) — directly.

It answers only the success case. Anything else (no or unknown key, no such job, a database error, a query
string such as ``?wait=``) falls through to the FastAPI route, which gives the API's one error shape; so the
behaviour, and the OpenAPI description, are the route's.
"""

from __future__ import annotations

import re
from typing import Any

from ..schemas import JobPublic

__all__ = ["JobStatusFastPath"]

_JOB_PATH = re.compile(r"/jobs/([A-Za-z0-9_-]{1,64})")

Scope = dict[str, Any]


class JobStatusFastPath:
    """ASGI middleware; ``state`` is the app's ``AppState`` (keys and job service)."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("query_string"):
            match = _JOB_PATH.fullmatch(scope["path"])
            if match is not None:
                body = await self._status(scope, match.group(1))
                if body is not None:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _status(self, scope: Scope, job_id: str) -> bytes | None:
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    token = credentials.strip()
                break
        owner = self.state.keys.owner_of(token)
        if owner is None:
            return None
        try:
            job = await self.state.jobs.get(owner, job_id)
        except Exception:  # not found, database down…: the route says what went wrong, in the API's error shape
            return None
        return JobPublic.from_job(job).model_dump_json(by_alias=True).encode()
