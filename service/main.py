"""Builds the FastAPI app: settings → database, storage, executor, keys, metrics, job service → routers, error
handlers and a lifespan that migrates the database, prepares the storage, starts the executor (embedded worker
processes) and runs the periodic upkeep (lease reaper, worker supervision).

``sepconv serve`` calls ``create_app`` and hands the app to uvicorn; ``uvicorn --factory service.main:create_app``
works too (settings from the environment). Importing this module builds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from converter import __version__

from .api.deps import AppState
from .api.errors import install_error_handlers
from .api.fastpath import JobStatusFastPath
from .api.routes import convert, health, jobs, web
from .core.auth import KeyRing
from .core.config import Settings, load_settings
from .core.db import get_engine, migrate
from .core.storage import open_storage
from .jobs.executor import Executor, make_executor
from .jobs.metrics import Metrics
from .jobs.service import JobService

__all__ = ["create_app"]

log = logging.getLogger("sepconv.api")


def build_state(settings: Settings, executor: Executor | None = None) -> AppState:
    """The app's collaborators, wired from ``settings`` (nothing is connected or started yet)."""
    engine = get_engine(settings.database_url)
    storage = open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url)
    executor = executor if executor is not None else make_executor(settings)
    metrics = Metrics(engine)
    service = JobService(settings, engine, storage, executor, on_upload_bytes=metrics.upload_bytes.inc)
    return AppState(settings=settings, engine=engine, storage=storage, executor=executor,
                    keys=KeyRing(settings.load_api_keys()), metrics=metrics, jobs=service)


def create_app(settings: Settings | None = None, *, executor: Executor | None = None, start_executor: bool = True,
               migrate_on_start: bool = True) -> FastAPI:
    """The sepconv API.

    Args:
        settings: the settings (default: read from ``SEPCONV_*`` variables).
        executor: the executor to use (default: the one ``settings.executor`` names).
        start_executor: start it in the lifespan (embedded: spawn the worker processes). Tests of the API alone
            pass False.
        migrate_on_start: run ``alembic upgrade head`` in the lifespan.
    """
    settings = settings or load_settings()
    state = build_state(settings, executor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.log_warnings()
        if state.keys.open:
            log.warning("no API keys are configured (SEPCONV_API_KEYS / SEPCONV_API_KEYS_FILE): the API accepts "
                        "every request, so it listens on %s (loopback) only", settings.host)
        if migrate_on_start:
            await to_thread.run_sync(migrate, settings.database_url)
        await to_thread.run_sync(state.storage.ensure)
        try:  # what a crash left behind (a killed upload's partial file); later sweeps run with the upkeep
            await state.jobs.sweep()
        except Exception as e:
            log.warning("storage sweep at start failed: %s", e)
        if start_executor:
            await to_thread.run_sync(state.executor.start)
        upkeep = asyncio.create_task(_upkeep(state))
        try:
            yield
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            if start_executor:
                await to_thread.run_sync(state.executor.stop)

    app = FastAPI(
        title="sepconv",
        version=__version__,
        summary="Turn standard CNNs (ONNX, TorchScript) into depthwise-separable ones, with an honest report.",
        lifespan=lifespan,
    )
    app.state.sepconv = state
    install_error_handlers(app)
    app.add_middleware(JobStatusFastPath, state=state)
    app.include_router(convert.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(web.router)
    _document_errors_truthfully(app)
    return app


def _document_errors_truthfully(app: FastAPI) -> None:
    """FastAPI documents a 422 validation error on every route with parameters; this API answers 400
    ``invalid_options`` instead (``service.api.errors``), so the schema says that."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            for path in doc.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    # FastAPI declares openapi as a method; its documented way to customise the schema is to assign one.
    app.openapi = openapi  # type: ignore[method-assign]


async def _upkeep(state: AppState) -> None:
    every = state.settings.upkeep_interval_s
    while True:
        await asyncio.sleep(every)
        try:
            await state.jobs.maintain()
        except Exception as e:  # the database may be down for a while; keep trying
            log.warning("upkeep failed: %s", e)
