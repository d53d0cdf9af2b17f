"""Database engines and migrations.

``get_engine`` gives one SQLAlchemy engine per process and URL (a forked worker never reuses its parent's
connections). SQLite runs in WAL mode with a generous busy timeout so that the API and several worker processes
can share one file; every write the service makes is a single conditional ``UPDATE``/``INSERT`` statement, which
is what keeps claiming a job atomic on SQLite (see ``service.jobs.crud``).

``migrate`` runs Alembic's ``upgrade head`` with a configuration built here in code (there is no
``alembic.ini``): the scripts live in ``service/migrations``. Concurrent starters (several workers booting at
once) are serialised with a PostgreSQL advisory lock, or a file lock next to a SQLite database.

This module holds no queries about jobs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.pool import QueuePool

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["check_database", "current_revision", "dispose_engines", "get_engine", "migrate"]

log = logging.getLogger("sepconv.db")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# Arbitrary constant naming sepconv's migration lock among a database's advisory locks.
_PG_MIGRATION_LOCK = 0x5E9C0417

_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """This process's engine for ``url`` (created on first use)."""
    key = (os.getpid(), url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create_engine(url)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close this process's engines (tests and shutdown)."""
    with _engines_lock:
        for (pid, _), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()


def _create_engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        # A small pool: opening a SQLite connection and setting its pragmas is most of a status lookup's cost
        # (2 of 3 ms when every request opened one). WAL lets the pooled readers run beside a writer.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, poolclass=QueuePool,
                               pool_size=8, max_overflow=16, pool_timeout=30)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800)


def check_database(url: str) -> bool:
    """``SELECT 1`` answers."""
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as e:  # readiness probes report, they do not raise
        log.warning("database check failed: %s", e)
        return False


def _alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> str | None:
    """Upgrade the database at ``url`` to ``revision`` and return the revision it is at afterwards."""
    from alembic import command

    cfg = _alembic_config(url)
    engine = get_engine(url)
    with _migration_lock(url, engine), engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(url)


def current_revision(url: str) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migration_lock(url: str, engine: Engine) -> Iterator[None]:
    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
    elif u.database and u.database != ":memory:":
        with open(f"{u.database}.migrate.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        yield
