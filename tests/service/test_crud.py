"""The job table's state changes on SQLite and PostgreSQL: atomic claims under contention, guarded writes that a
worker which lost its job cannot make, the lease reaper, orphan re-queueing, and the migration matching the
models."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.core.db import get_engine, migrate
from service.jobs import crud
from service.models import Base, Job, JobStatus, utcnow
from tests.service.helpers import head_revision


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    assert migrate(url) == head_revision()
    return get_engine(url)


def add_jobs(engine, n: int, owner: str = "o") -> list[str]:
    ids = []
    for i in range(n):
        job_id = crud.new_job_id()
        crud.create_job(engine, Job(id=job_id, owner=owner, status=JobStatus.QUEUED, stage="queued", progress=0.0,
                                    filename=f"m{i}.onnx", options={}, input_key=f"jobs/{job_id}/input",
                                    input_bytes=1, attempts=0, cancel_requested=False,
                                    created_at=utcnow() + timedelta(milliseconds=i)))
        ids.append(job_id)
    return ids


def test_migration_matches_the_models(engine):
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert migrate(str(engine.url.render_as_string(hide_password=False))) == head_revision()  # idempotent


def test_concurrent_claims_take_each_job_exactly_once(engine):
    ids = add_jobs(engine, 30)
    claimed: list[crud.Claim] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (c := crud.claim_next(engine, f"w{n}", lease_s=60)) is not None:
            with lock:
                claimed.append(c)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.job_id for c in claimed) == sorted(ids)
    assert all(c.attempt == 1 for c in claimed)
    # Oldest first for a single worker.
    more = add_jobs(engine, 3)
    assert [crud.claim_next(engine, "w", 60).job_id for _ in range(3)] == more


def test_a_claim_is_needed_for_every_later_write(engine):
    (job_id,) = add_jobs(engine, 1)
    assert crud.claim(engine, job_id, "a", 60) is not None
    assert crud.claim(engine, job_id, "b", 60) is None  # running under a live lease: a duplicate delivery
    stranger = crud.Claim(job_id, "b", 1)
    assert not crud.heartbeat(engine, stranger, 60, progress=0.5)
    assert not crud.finish_succeeded(engine, stranger, output_key="k", output_suffix=".onnx", report_key="r",
                                     format="onnx")
    assert not crud.finish_failed(engine, stranger, "x", "y")
    mine = crud.Claim(job_id, "a", 1)
    assert crud.heartbeat(engine, mine, 60, stage="plan", progress=0.4, format="onnx")
    job = crud.get_job(engine, job_id)
    assert (job.stage, job.progress, job.format) == ("plan", 0.4, "onnx")
    assert crud.finish_succeeded(engine, mine, output_key="k", output_suffix=".onnx", report_key="r", format="onnx")
    job = crud.get_job(engine, job_id)
    assert job.status == "succeeded" and job.progress == 1.0 and job.duration_s is not None
    # A succeeded job is never claimed again (duplicate Celery delivery).
    assert crud.claim(engine, job_id, "c", 60) is None
    assert crud.reap_expired(engine, 2, now=utcnow() + timedelta(days=1)) == []


def test_cancel_stops_the_worker_and_blocks_outputs(engine):
    (job_id,) = add_jobs(engine, 1, owner="alice")
    c = crud.claim_next(engine, "w", 60)
    assert crud.mark_cancelled(engine, job_id, "bob") is None
    assert crud.mark_cancelled(engine, job_id, "alice").status == "running"
    assert not crud.is_still_mine(engine, c)
    assert not crud.heartbeat(engine, c, 60)
    assert not crud.finish_succeeded(engine, c, output_key="k", output_suffix=".pt", report_key="r", format=None)
    assert crud.get_job(engine, job_id).status == "cancelled"
    (queued,) = add_jobs(engine, 1, owner="alice")
    crud.mark_cancelled(engine, queued, "alice")
    assert crud.claim_next(engine, "w", 60) is None and crud.claim(engine, queued, "w", 60) is None


def test_reaper_requeues_then_fails_expired_leases(engine):
    (job_id,) = add_jobs(engine, 1)
    first = crud.claim_next(engine, "w1", lease_s=60)
    assert crud.reap_expired(engine, max_attempts=2) == []  # lease still valid
    later = utcnow() + timedelta(seconds=120)
    assert crud.reap_expired(engine, max_attempts=2, now=later) == [job_id]
    job = crud.get_job(engine, job_id)
    assert job.status == "queued" and job.worker_id is None and job.attempts == 1
    assert not crud.heartbeat(engine, first, 60)  # the old worker lost it
    second = crud.claim_next(engine, "w2", lease_s=60)
    assert second.attempt == 2
    assert crud.reap_expired(engine, max_attempts=2, now=utcnow() + timedelta(seconds=120)) == []
    job = crud.get_job(engine, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"
    assert "stopped responding" in job.error_message and "2 time(s)" in job.error_message


def test_expired_lease_can_be_claimed_by_a_redelivered_task(engine):
    (job_id,) = add_jobs(engine, 1)
    crud.claim(engine, job_id, "w1", lease_s=0.01)
    import time

    time.sleep(0.05)
    c = crud.claim(engine, job_id, "w2", lease_s=60)
    assert c is not None and c.attempt == 2


def test_release_gives_the_job_back_uncounted(engine):
    (job_id,) = add_jobs(engine, 1)
    c = crud.claim_next(engine, "w", 60)
    assert crud.release(engine, c)
    job = crud.get_job(engine, job_id)
    assert job.status == "queued" and job.attempts == 0


def test_orphans_of_dead_workers_are_requeued(engine):
    a, b = add_jobs(engine, 2)
    crud.claim(engine, a, "dead-one", 600)
    crud.claim(engine, b, "alive-one", 600)
    assert crud.requeue_orphans(engine, lambda w: w == "dead-one", max_attempts=2) == [a]
    assert crud.get_job(engine, a).status == "queued" and crud.get_job(engine, b).status == "running"


def test_listing_and_counts(engine):
    add_jobs(engine, 3, owner="alice")
    add_jobs(engine, 2, owner="bob")
    rows, count = crud.list_jobs(engine, "alice", 0, 2)
    assert count == 3 and len(rows) == 2 and rows[0].created_at > rows[1].created_at
    assert crud.count_queued(engine) == 5
    assert crud.count_by_status(engine)["queued"] == 5
    stats = crud.duration_stats(engine, [1.0, 10.0])
    assert stats["succeeded"] == ([0, 0], 0, 0.0)
