"""Sweeps of what crashes leave in storage: partial uploads (a server killed mid-upload leaves a ``.part-*`` file
or an S3 multipart upload of up to ``SEPCONV_MAX_UPLOAD_BYTES``) and objects of jobs that do not exist (a server
killed between storing an upload and recording its job; a delete that could not reach the storage).

Only what is older than ``SEPCONV_SWEEP_GRACE_S`` is touched, so an upload in progress, or one whose job row is
being written, is never taken. The API process runs it at start and every ``SEPCONV_SWEEP_INTERVAL_S``; several
replicas sweeping at once only delete the same things. It does not touch job rows, nor keys outside ``jobs/``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from ..core.storage import Storage
from . import crud

__all__ = ["SweepResult", "sweep_storage"]

log = logging.getLogger("sepconv.sweep")

_BATCH = 500


@dataclass(frozen=True)
class SweepResult:
    """What one sweep removed."""

    partial: int
    orphans: int


def sweep_storage(engine: Engine, storage: Storage, grace_s: float) -> SweepResult:
    """Remove partial writes and job objects with no job, older than ``grace_s`` seconds."""
    cutoff = time.time() - grace_s
    partial = storage.sweep_partial(cutoff)
    by_job: dict[str, list[str]] = {}
    for key, modified in storage.list_keys("jobs/"):
        parts = key.split("/")
        if len(parts) == 3 and modified < cutoff:
            by_job.setdefault(parts[1], []).append(key)
    ids = list(by_job)
    known: set[str] = set()
    for i in range(0, len(ids), _BATCH):
        known |= crud.existing_ids(engine, ids[i:i + _BATCH])
    orphans = 0
    for job_id, keys in by_job.items():
        if job_id not in known:
            for key in keys:
                storage.delete(key)
                orphans += 1
    if partial or orphans:
        log.warning("swept storage: %d partial upload(s) and %d object(s) of no job, older than %g s", partial,
                    orphans, grace_s)
    return SweepResult(partial=partial, orphans=orphans)
