"""How queued jobs reach a worker: the ``Executor`` protocol and the factory that picks an implementation from
``SEPCONV_EXECUTOR``.

Two implementations:

* ``EmbeddedExecutor`` (``service.jobs.embedded``, the default): ``sepconv serve`` starts ``SEPCONV_WORKERS``
  worker processes of its own that claim queued jobs from the database (polling, and woken at once on submit).
  No other service is needed.
* ``CeleryExecutor`` (``service.jobs.celery_app``): one Celery task per job on a Redis broker; workers are
  ``sepconv worker`` processes anywhere that can reach the database, the storage and the broker.

Either way the job record in the database is the truth and the runner (``service.jobs.runner``) does the work;
an executor only delivers "job X is waiting". A job never runs in the API process.

Imports go one way: this module imports an implementation only inside ``make_executor``, and the implementations
import nothing from here (their shared error lives in ``service.jobs.errors``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..core.config import Settings
from .errors import ExecutorUnavailableError

__all__ = ["Executor", "ExecutorUnavailableError", "make_executor"]


@runtime_checkable
class Executor(Protocol):
    """Delivers queued jobs to workers."""

    #: ``embedded`` or ``celery``.
    name: str

    def start(self) -> None:
        """Start what the API process owns (embedded: the worker processes). Idempotent."""
        ...

    def stop(self) -> None:
        """Stop it; running jobs are given back to the queue."""
        ...

    def submit(self, job_id: str, gpu: bool = False) -> None:
        """Tell the workers a job was queued; ``gpu``: it wants a GPU worker (a fine-tune).

        Raises:
            ExecutorUnavailableError: the jobs cannot be delivered now (broker down).
        """
        ...

    def resubmit(self, job_ids: list[str]) -> None:
        """Deliver jobs the reaper put back in the queue (best effort)."""
        ...

    def ready(self) -> bool:
        """Readiness of the queue: embedded, a live worker process; Celery, the broker answers a ping."""
        ...

    def maintain(self) -> None:
        """Periodic upkeep from the API process (embedded: replace worker processes that died)."""
        ...


def make_executor(settings: Settings) -> Executor:
    """The executor ``settings.executor`` names."""
    if settings.executor == "celery":
        from .celery_app import CeleryExecutor

        return CeleryExecutor(settings)
    from .embedded import EmbeddedExecutor

    return EmbeddedExecutor(settings)
