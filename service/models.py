"""The database's one table, ``jobs``, as a SQLAlchemy 2 declarative model, and the job's vocabulary (statuses
and stages).

A row is the whole truth about a job: who owns it (a digest of their API key), what was asked (the options the
user set, validated by ``ConversionConfig``), where its files are (storage keys, never derived from a user's file
name), how far it got, and who is running it under which lease. Queries live in ``service.jobs.crud``; the
HTTP shapes in ``service.schemas``. Migrations (``service/migrations``) create this table; nothing calls
``create_all``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from converter import JOB_STAGES

__all__ = ["FINAL_STATUSES", "Base", "Job", "JobStage", "JobStatus", "UTCDateTime", "utcnow"]


class JobStatus(StrEnum):
    """Where a job is in its life. ``cancelled`` is transient: a cancelled job's record is deleted."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: What a job is doing: ``queued``, one of the converter's stages (``converter._stages``, the one list), then
#: ``done``. Members are the names upper-cased: ``JobStage.QUEUED``, ``JobStage.LOAD``, …, ``JobStage.DONE``.
if TYPE_CHECKING:  # a type checker cannot read members made at run time: these are the ones the service names
    class JobStage(StrEnum):
        QUEUED = "queued"
        LOAD = "load"
        DONE = "done"
else:
    JobStage = StrEnum("JobStage", [(name.upper(), name) for name in JOB_STAGES], module=__name__)


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC instant stored as a naive UTC timestamp on every database and read back timezone-aware, so that
    SQLite and PostgreSQL compare leases the same way."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the service's tables."""


class Job(Base):
    """One conversion job. See the module docstring."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    stage: Mapped[str] = mapped_column(String(16), default=JobStage.QUEUED)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str | None] = mapped_column(String(16), default=None)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    input_key: Mapped[str] = mapped_column(String(255))
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    inputs_key: Mapped[str | None] = mapped_column(String(255), default=None)
    data_key: Mapped[str | None] = mapped_column(String(255), default=None)
    eval_key: Mapped[str | None] = mapped_column(String(255), default=None)
    output_key: Mapped[str | None] = mapped_column(String(255), default=None)
    output_suffix: Mapped[str | None] = mapped_column(String(16), default=None)
    report_key: Mapped[str | None] = mapped_column(String(255), default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(255), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    duration_s: Mapped[float | None] = mapped_column(Float, default=None)

    @property
    def needs_gpu(self) -> bool:
        """Whether the job belongs on a GPU worker: it fine-tunes (calibration stays on the normal queue)."""
        return (self.options or {}).get("recover") == "finetune"

    @property
    def is_final(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.status in FINAL_STATUSES


# GET /jobs: one owner's jobs, newest first. Workers: the oldest queued job. The reaper: running jobs by lease.
Index("ix_jobs_owner_created", Job.owner, Job.created_at.desc(), Job.id.desc())
Index("ix_jobs_status_created", Job.status, Job.created_at)
Index("ix_jobs_status_lease", Job.status, Job.lease_expires_at)
