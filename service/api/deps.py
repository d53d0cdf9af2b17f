"""FastAPI dependencies as ``Annotated`` aliases: the app's state, the job service, and the caller's owner id
from the ``Authorization: Bearer`` header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from ..core.auth import KeyRing
from ..core.config import Settings
from ..core.storage import Storage
from ..jobs.errors import ServiceError
from ..jobs.executor import Executor
from ..jobs.metrics import Metrics
from ..jobs.service import JobService

__all__ = ["AppState", "JobsDep", "OwnerDep", "StateDep"]


@dataclass
class AppState:
    """Everything the routes need, built once per app by ``service.main.create_app``."""

    settings: Settings
    engine: Engine
    storage: Storage
    executor: Executor
    keys: KeyRing
    metrics: Metrics
    jobs: JobService


class UnauthorizedError(ServiceError):
    """Missing or unknown API key."""

    code = "unauthorized"


async def get_state(request: Request) -> AppState:
    """The app's state. (``async``, like every dependency here: FastAPI runs a plain ``def`` dependency in its
    thread pool, and two such hops cost more than the whole status lookup.)"""
    return request.app.state.sepconv


StateDep = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="An API key from SEPCONV_API_KEYS / SEPCONV_API_KEYS_FILE "
                                                   "(not needed when the server has none configured).")


async def get_owner(state: StateDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The caller's owner id (``anonymous`` when no key is configured).

    Raises:
        UnauthorizedError: keys are configured and the request has none of them.
    """
    owner = state.keys.owner_of(credentials.credentials if credentials else None)
    if owner is None:
        raise UnauthorizedError("missing or unknown API key; send 'Authorization: Bearer <key>'")
    return owner


async def get_jobs(state: StateDep) -> JobService:
    """The job service."""
    return state.jobs


OwnerDep = Annotated[str, Depends(get_owner)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
