"""The Celery executor: one task per job on a Redis broker, run by ``sepconv worker`` processes.

Delivery is at-least-once and the job record makes it exactly-once in effect:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it returns, and a task
  whose pool process was killed goes back to the queue; ``worker_prefetch_multiplier=1`` keeps a worker from
  hoarding jobs; the broker's ``visibility_timeout`` is longer than a job can stay reserved (see
  ``Settings.visibility_timeout_s``) so a live job is not redelivered under its worker's feet.
* the task only runs a job it can *claim* (queued, or running under an expired lease), so a duplicate delivery of
  a succeeded, failed, cancelled or live job does nothing.
* a lease reaper thread in every pool process re-queues jobs whose worker died (``kill -9`` of a whole worker
  host) and sends their task again.

Jobs go to ``SEPCONV_CELERY_QUEUE``; jobs that fine-tune (``recover=finetune``) go to ``SEPCONV_CELERY_GPU_QUEUE``,
which a GPU worker (``sepconv worker --queues sepconv-gpu``, the compose file's ``gpu`` profile) consumes;
calibration stays on the normal queue. This module has no HTTP code.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals
from kombu import Queue
from sqlalchemy.exc import OperationalError

from converter import map_errors

from ..core.config import Settings, load_settings
from ..core.db import get_engine
from . import crud
from .errors import ExecutorUnavailableError
from .runner import JobRunner, worker_name

__all__ = ["TASK_NAME", "CeleryExecutor", "celery_app", "configure", "node_name"]

log = logging.getLogger("sepconv.celery")

TASK_NAME = "sepconv.run_job"

#: The worker side's app; ``configure`` (called by ``sepconv worker``) points it at the broker.
celery_app = Celery("sepconv")

_state: dict[str, Any] = {}


def node_name(pid: int | None = None) -> str:
    """The Celery node name of the worker process ``pid`` (default: this one) of this host and PID namespace:
    ``sepconv@<host>-<pid namespace>-<pid>``.

    The PID namespace's number tells apart workers in containers that share the host's name (host networking)
    and run as the same PID; ``deploy/healthcheck.py`` pings ``sepconv@<host>-<pid namespace>-*`` to reach the
    worker of its own container.
    """
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # pragma: no cover - not Linux
        namespace = 0
    return f"sepconv@{os.uname().nodename}-{namespace}-{pid or os.getpid()}"


def configure(app: Celery, settings: Settings) -> Celery:
    """Apply the service's settings to a Celery app (broker, queues, delivery guarantees)."""
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.celery_queue,
        task_queues=[Queue(settings.celery_queue), Queue(settings.celery_gpu_queue)],
        task_routes={TASK_NAME: {"queue": settings.celery_queue}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if app is celery_app:
        _state["settings"] = settings
    return app


def _settings() -> Settings:
    if "settings" not in _state:
        configure(celery_app, load_settings())
    return _state["settings"]


@celery_app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
                 ignore_result=True, autoretry_for=(OperationalError,), retry_backoff=2, retry_backoff_max=300)
def run_job(self: Any, job_id: str) -> str:
    """Run one job if it can be claimed (duplicate deliveries are no-ops). While the database is unreachable the
    task is retried with backoff, so a queued job never loses its message."""
    settings = _settings()
    runner = _state.get("runner")
    if runner is None:
        runner = _state["runner"] = JobRunner(settings, worker_name("celery"))
    outcome = runner.run(job_id)
    if outcome is not None and outcome.status == "stopped":
        # The job went back to the queue; its message must too.
        raise self.retry(countdown=1)
    return outcome.status if outcome is not None else "skipped"


def _reap_forever(settings: Settings, stop: threading.Event) -> None:
    engine = get_engine(settings.database_url)
    every = settings.reap_interval_s
    executor = CeleryExecutor(settings, app=celery_app)
    while not stop.wait(every):
        try:
            executor.resubmit(crud.reap_expired(engine, settings.job_max_attempts))
        except Exception as e:
            log.warning("lease reaper: %s", e)


@signals.worker_process_init.connect
def _start_reaper(**_: Any) -> None:
    # In each pool process (not the main one, which forks them: a thread there could be forked holding a lock).
    settings = _settings()
    stop = threading.Event()
    _state["reaper_stop"] = stop
    threading.Thread(target=_reap_forever, args=(settings, stop), name="sepconv-reaper", daemon=True).start()


@signals.worker_process_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    stop = _state.get("reaper_stop")
    if stop is not None:
        stop.set()


class CeleryExecutor:
    """Sends one task per job to the Celery queue; see the module docstring."""

    name = "celery"

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app if app is not None else configure(Celery("sepconv-api"), settings)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def submit(self, job_id: str, gpu: bool = False) -> None:
        queue = self.settings.celery_gpu_queue if gpu else self.settings.celery_queue
        with map_errors("the job queue (Celery broker) is unavailable", ExecutorUnavailableError, keep=(),
                        type_name=False):
            self.app.send_task(TASK_NAME, args=[job_id], queue=queue, retry=True,
                               retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})

    def resubmit(self, job_ids: list[str]) -> None:
        engine = get_engine(self.settings.database_url)
        for job_id in job_ids:
            try:
                job = crud.get_job(engine, job_id)
                self.submit(job_id, gpu=job is not None and job.needs_gpu)
            except ExecutorUnavailableError as e:
                log.warning("could not resubmit job %s: %s", job_id, e)

    def ready(self) -> bool:
        import redis

        if self.settings.broker_url is None:  # the settings refuse the Celery executor without one
            return False
        try:
            client = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception as e:
            log.warning("broker check failed: %s", e)
            return False

    def maintain(self) -> None:
        pass
