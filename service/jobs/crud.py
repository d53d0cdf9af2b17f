"""Every query on the ``jobs`` table, and nothing else.

Each state change is one conditional ``UPDATE`` so that it is atomic across processes on both databases:

* claiming: ``UPDATE … SET status='running' WHERE id = (SELECT oldest queued …) AND status='queued' RETURNING``,
  with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so concurrent workers do not queue behind each other; SQLite
  serialises writers, and the ``status='queued'`` guard makes a lost race claim nothing;
* everything a worker writes afterwards (heartbeat, progress, success, failure, release) is guarded by
  ``worker_id`` *and* ``attempts``, so a worker that lost its lease (the reaper gave the job to someone else) or
  whose job was cancelled changes nothing, and learns so from the row count;
* the reaper's re-queue/fail is guarded by ``lease_expires_at < now``, so several reapers can run at once.

Times are taken on the caller's clock, in UTC.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, bindparam, case, delete, func, select, update
from sqlalchemy.orm import Session

from ..models import FINAL_STATUSES, Job, JobStage, JobStatus, utcnow

__all__ = [
    "Claim",
    "claim",
    "claim_next",
    "count_by_status",
    "count_queued",
    "create_job",
    "delete_job",
    "duration_stats",
    "existing_ids",
    "finish_failed",
    "finish_succeeded",
    "get_job",
    "heartbeat",
    "is_still_mine",
    "list_jobs",
    "mark_cancelled",
    "new_job_id",
    "reap_expired",
    "release",
    "requeue_orphans",
    "stale_queued",
]


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a running job: the pair every later write is guarded by."""

    job_id: str
    worker_id: str
    attempt: int


def new_job_id() -> str:
    """A fresh opaque job id."""
    return uuid.uuid4().hex


def _mine(c: Claim) -> Any:
    return (Job.id == c.job_id) & (Job.worker_id == c.worker_id) & (Job.attempts == c.attempt) & (
        Job.status == JobStatus.RUNNING)


def create_job(engine: Engine, job: Job) -> Job:
    """Insert a new job row and return it (detached, loaded)."""
    with Session(engine, expire_on_commit=False) as s, s.begin():
        s.add(job)
    return job


_BY_ID = select(*Job.__table__.columns).where(Job.id == bindparam("job_id"))


def get_job(engine: Engine, job_id: str, owner: str | None = None) -> Job | None:
    """The job, or None if it does not exist or (with ``owner``) belongs to someone else.

    One Core ``SELECT`` (cached statement, no ORM session or identity map): the status endpoint calls this on
    every request, and a session cost more than the query."""
    with engine.connect() as conn:
        row = conn.execute(_BY_ID, {"job_id": job_id}).first()
    if row is None or (owner is not None and row.owner != owner):
        return None
    return Job(**row._mapping)


def list_jobs(engine: Engine, owner: str, offset: int, limit: int) -> tuple[list[Job], int]:
    """One owner's jobs, newest first, and how many they have in all."""
    with Session(engine, expire_on_commit=False) as s:
        rows = list(s.scalars(select(Job).where(Job.owner == owner)
                              .order_by(Job.created_at.desc(), Job.id.desc()).offset(offset).limit(limit)))
        count = s.scalar(select(func.count()).select_from(Job).where(Job.owner == owner)) or 0
        s.expunge_all()
        return rows, int(count)


def count_queued(engine: Engine) -> int:
    """Jobs waiting for a worker."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)) or 0)


def count_by_status(engine: Engine) -> dict[str, int]:
    """Number of jobs in each status (every status present, zeros included)."""
    out = {s.value: 0 for s in JobStatus}
    with engine.connect() as conn:
        for status, n in conn.execute(select(Job.status, func.count()).group_by(Job.status)):
            out[status] = int(n)
    return out


def duration_stats(engine: Engine, buckets: Sequence[float]) -> dict[str, tuple[list[int], int, float]]:
    """For finished jobs by status (succeeded, failed): cumulative counts of durations ``<=`` each bucket bound,
    the total count and the sum of durations in seconds."""
    out = {}
    cols = [func.sum(case((Job.duration_s <= b, 1), else_=0)) for b in buckets]
    with engine.connect() as conn:
        for status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            row = conn.execute(select(func.count(), func.coalesce(func.sum(Job.duration_s), 0.0), *cols)
                               .where(Job.status == status, Job.duration_s.is_not(None))).one()
            out[status.value] = ([int(v or 0) for v in row[2:]], int(row[0]), float(row[1]))
    return out


def _claim_values(worker_id: str, lease_s: float) -> dict[str, Any]:
    now = utcnow()
    return {
        "status": JobStatus.RUNNING,
        "stage": JobStage.LOAD,
        "progress": 0.0,
        "stage_detail": None,
        "worker_id": worker_id,
        "attempts": Job.attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_s),
    }


def _run_claim(engine: Engine, stmt: Any, worker_id: str) -> Claim | None:
    with Session(engine) as s, s.begin():
        row = s.execute(stmt.returning(Job.id, Job.attempts)).first()
    return Claim(row[0], worker_id, int(row[1])) if row else None


def claim_next(engine: Engine, worker_id: str, lease_s: float) -> Claim | None:
    """Atomically take the oldest queued job for ``worker_id`` (embedded workers)."""
    oldest = (select(Job.id).where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
              .order_by(Job.created_at, Job.id).limit(1))
    if engine.dialect.name == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    stmt = (update(Job).where(Job.id == oldest.scalar_subquery(), Job.status == JobStatus.QUEUED)
            .values(**_claim_values(worker_id, lease_s)).execution_options(synchronize_session=False))
    return _run_claim(engine, stmt, worker_id)


def claim(engine: Engine, job_id: str, worker_id: str, lease_s: float) -> Claim | None:
    """Atomically take one job (Celery tasks): only if it is queued, or running under a lease that expired (its
    worker died and the broker redelivered the task). A finished, cancelled, deleted or live-running job is not
    taken, which makes duplicate deliveries harmless."""
    now = utcnow()
    claimable = (Job.status == JobStatus.QUEUED) | ((Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now))
    stmt = (update(Job).where(Job.id == job_id, claimable, Job.cancel_requested.is_(False))
            .values(**_claim_values(worker_id, lease_s)).execution_options(synchronize_session=False))
    return _run_claim(engine, stmt, worker_id)


def _rowcount(res: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched. Its result is a ``CursorResult``; ``Session.execute`` is typed as
    returning any ``Result``, which has no ``rowcount``."""
    return cast(CursorResult[Any], res).rowcount


def heartbeat(engine: Engine, c: Claim, lease_s: float, **fields: Any) -> bool:
    """Renew the lease (and set ``stage``/``progress``/``format`` if given). False: the job is no longer this
    worker's (cancelled, deleted, or re-queued by a reaper)."""
    now = utcnow()
    values = {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease_s), **fields}
    with Session(engine) as s, s.begin():
        res = s.execute(update(Job).where(_mine(c), Job.cancel_requested.is_(False)).values(**values)
                        .execution_options(synchronize_session=False))
    return _rowcount(res) == 1


def is_still_mine(engine: Engine, c: Claim) -> bool:
    """Whether the job is still running under this claim and not cancelled (a cheap read, polled often)."""
    with engine.connect() as conn:
        row = conn.execute(select(Job.cancel_requested).where(_mine(c))).first()
    return row is not None and not row[0]


def _finish(engine: Engine, c: Claim, values: dict[str, Any]) -> bool:
    with engine.connect() as conn:
        started = conn.scalar(select(Job.started_at).where(_mine(c)))
    now = utcnow()
    duration = (now - started).total_seconds() if started is not None else None
    with Session(engine) as s, s.begin():
        res = s.execute(update(Job).where(_mine(c), Job.cancel_requested.is_(False))
                        .values(finished_at=now, lease_expires_at=None, duration_s=duration, **values)
                        .execution_options(synchronize_session=False))
    return _rowcount(res) == 1


def finish_succeeded(engine: Engine, c: Claim, *, output_key: str, output_suffix: str, report_key: str,
                     format: str | None) -> bool:
    """Record success; False if the job stopped being this worker's (the caller then deletes its outputs)."""
    return _finish(engine, c, {"status": JobStatus.SUCCEEDED, "stage": JobStage.DONE, "progress": 1.0,
                               "output_key": output_key, "output_suffix": output_suffix, "report_key": report_key,
                               "format": format, "error_code": None, "error_message": None})


def finish_failed(engine: Engine, c: Claim, code: str, message: str) -> bool:
    """Record failure with an error code and a one-line reason."""
    return _finish(engine, c, {"status": JobStatus.FAILED, "error_code": code, "error_message": message[:2000]})


def release(engine: Engine, c: Claim) -> bool:
    """Give a job back to the queue uncounted (its worker is shutting down cleanly)."""
    with Session(engine) as s, s.begin():
        res = s.execute(update(Job).where(_mine(c)).values(
            status=JobStatus.QUEUED, stage=JobStage.QUEUED, progress=0.0, stage_detail=None, worker_id=None,
            lease_expires_at=None,
            attempts=Job.attempts - 1).execution_options(synchronize_session=False))
    return _rowcount(res) == 1


def mark_cancelled(engine: Engine, job_id: str, owner: str) -> Job | None:
    """Flag an owner's job cancelled (a running worker sees the flag and kills its conversion) and return it as
    it was; None if there is no such job for this owner."""
    with Session(engine, expire_on_commit=False) as s, s.begin():
        job = s.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))
        if job is None:
            return None
        s.expunge(job)
        if job.status not in FINAL_STATUSES:
            s.execute(update(Job).where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                      .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=utcnow(),
                              lease_expires_at=None)
                      .execution_options(synchronize_session=False))
    return job


def delete_job(engine: Engine, job_id: str) -> None:
    """Delete the job's row."""
    with Session(engine) as s, s.begin():
        s.execute(delete(Job).where(Job.id == job_id).execution_options(synchronize_session=False))


def _requeue_or_fail(engine: Engine, rows: Sequence[Any], guard: Callable[[Any], Any], max_attempts: int,
                     reason: str) -> list[str]:
    requeued = []
    for job_id, attempts in rows:
        with Session(engine) as s, s.begin():
            if attempts >= max_attempts:
                now = utcnow()
                values: dict[str, Any] = {
                    "status": JobStatus.FAILED, "finished_at": now, "lease_expires_at": None,
                    "error_code": "worker_lost",
                    "error_message": f"{reason} while it ran, {attempts} time(s); giving up "
                                     f"(SEPCONV_JOB_MAX_ATTEMPTS={max_attempts})"}
            else:
                values = {"status": JobStatus.QUEUED, "stage": JobStage.QUEUED, "progress": 0.0, "worker_id": None,
                          "lease_expires_at": None}
            res = s.execute(update(Job).where(Job.id == job_id, Job.attempts == attempts, guard(Job))
                            .values(**values).execution_options(synchronize_session=False))
        if _rowcount(res) == 1 and values["status"] == JobStatus.QUEUED:
            requeued.append(job_id)
    return requeued


def reap_expired(engine: Engine, max_attempts: int, now: datetime | None = None) -> list[str]:
    """Re-queue (or, past ``max_attempts``, fail) running jobs whose lease expired; returns the re-queued ids.
    Safe to run in several processes at once."""
    now = now or utcnow()
    with engine.connect() as conn:
        rows = conn.execute(select(Job.id, Job.attempts).where(Job.status == JobStatus.RUNNING,
                                                               Job.lease_expires_at < now)).all()
    return _requeue_or_fail(
        engine, rows, lambda J: (J.status == JobStatus.RUNNING) & (J.lease_expires_at < now), max_attempts,
        "its worker stopped responding")


def existing_ids(engine: Engine, job_ids: Sequence[str]) -> set[str]:
    """Which of ``job_ids`` have a job row."""
    if not job_ids:
        return set()
    with engine.connect() as conn:
        return set(conn.scalars(select(Job.id).where(Job.id.in_(list(job_ids)))))


def stale_queued(engine: Engine, before: datetime, limit: int = 1000) -> list[str]:
    """Ids of jobs queued since before ``before`` (oldest first) and not cancelled: their message may be lost."""
    with engine.connect() as conn:
        return list(conn.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED,
                                                      Job.cancel_requested.is_(False), Job.created_at < before)
                                 .order_by(Job.created_at, Job.id).limit(limit)))


def _running_on(worker: str) -> Callable[[Any], Any]:
    """The guard of a job still running on ``worker``."""
    return lambda J: (J.status == JobStatus.RUNNING) & (J.worker_id == worker)


def requeue_orphans(engine: Engine, is_orphan: Callable[[str], bool], max_attempts: int,
                    reason: str = "the server stopped") -> list[str]:
    """Re-queue (or fail) running jobs whose worker ``is_orphan`` says is gone for sure (an embedded server's
    worker processes that no longer exist), without waiting for their lease; returns the re-queued ids."""
    with engine.connect() as conn:
        rows = conn.execute(select(Job.id, Job.attempts, Job.worker_id)
                            .where(Job.status == JobStatus.RUNNING)).all()
    mine = {(r[0], r[1]): r[2] for r in rows if r[2] and is_orphan(r[2])}
    out = []
    for (job_id, attempts), worker in mine.items():
        out += _requeue_or_fail(engine, [(job_id, attempts)],
                                _running_on(worker),
                                max_attempts, reason)
    return out
