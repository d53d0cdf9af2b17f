"""Fixtures of the service tests: settings on a temporary folder, the app (with or without its embedded worker
processes) behind an in-process ``httpx.AsyncClient``, tiny model files, and the external services that run on
this machine and on CI (PostgreSQL via ``SEPCONV_TEST_DATABASE_URL``, Redis via ``SEPCONV_TEST_REDIS_URL``,
S3 via moto's server on loopback).

Every database test gets its own PostgreSQL schema, every Celery test its own queue, so parallel runs do not
collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from sqlalchemy import create_engine, text

from service.core.config import Settings, load_settings
from service.core.db import dispose_engines
from tests.service.helpers import FIGURES, KEY_ALICE, KEY_BOB, TEST_DATABASE_URL, TEST_REDIS_URL, serve_app
from tests.utils.models import build, export_onnx, export_pt2, export_torchscript


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the figures tests handed over (``FIGURES``) at the end of the run."""
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.write_sep("-", "figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Settings come from the fixtures, never from the developer's shell.
    for name in list(os.environ):
        if name.startswith("SEPCONV_") and not name.startswith("SEPCONV_TEST_"):
            monkeypatch.delenv(name)
    yield
    dispose_engines()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny VGG as ONNX, TorchScript and ``.pt2`` (torch.export), and verification inputs for it."""
    folder = tmp_path_factory.mktemp("models")
    model, x = build("vgg")
    export_onnx(model, x, folder / "vgg.onnx")
    export_torchscript(model, x, folder / "vgg.pt")
    export_pt2(model, x, folder / "vgg.pt2")
    np.savez(folder / "inputs.npz", inputs=np.random.default_rng(0).standard_normal((1, 3, 32, 32), np.float32))
    return {"onnx": folder / "vgg.onnx", "torchscript": folder / "vgg.pt", "pt2": folder / "vgg.pt2",
            "inputs": folder / "inputs.npz"}


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on this test's temporary folder, with short leases and polls; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "poll_interval_s": 0.2, "job_lease_s": 10.0,
                                  "log_level": "info"}
        values.update(overrides)
        return load_settings(**values)

    return make




@pytest_asyncio.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """The API alone (no worker processes: jobs stay queued), keys for alice and bob."""
    async with serve_app(make_settings(api_keys=[KEY_ALICE, KEY_BOB]), start_executor=False) as client:
        yield client


















@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema (dropped afterwards)."""
    if not TEST_DATABASE_URL:
        pytest.skip("SEPCONV_TEST_DATABASE_URL is not set")
    schema = f"sepconv_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in TEST_DATABASE_URL else "?"
    try:
        yield f"{TEST_DATABASE_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        dispose_engines()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    """The test Redis URL."""
    if not TEST_REDIS_URL:
        pytest.skip("SEPCONV_TEST_REDIS_URL is not set")
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3 endpoint (moto's server) on loopback."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials (moto accepts any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


