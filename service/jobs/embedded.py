"""The embedded executor: worker processes owned by ``sepconv serve``, claiming jobs from the database.

``EmbeddedExecutor`` lives in the API process. ``start`` first re-queues jobs left ``running`` by worker
processes of a previous server on this machine that no longer exist (the attempt counts; past
``SEPCONV_JOB_MAX_ATTEMPTS`` the job fails with the reason), then starts ``SEPCONV_WORKERS`` processes
(``python -m service.jobs.embedded``). ``submit`` wakes them with ``SIGUSR1``; they also poll every
``SEPCONV_POLL_INTERVAL_S``, so a lost wake-up only delays a job. ``maintain`` (called by the API's periodic
task) replaces a worker that died and re-queues its job at once (not after its lease); ``stop`` asks them to
stop (``SIGTERM``): a worker kills its running conversion and gives the job back to the queue, uncounted. A worker
whose server disappears (``kill -9``) does the same within a fraction of a second.

Queued jobs need nothing on restart: they are in the database. Jobs of a server on another machine that died are
recovered by the lease reaper instead (every worker and the API run it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil

from ..core.config import Settings, load_settings
from ..core.db import get_engine
from . import crud
from .runner import JobRunner, protect_worker_process

__all__ = ["EmbeddedExecutor", "is_dead_embedded_worker", "worker_main"]

log = logging.getLogger("sepconv.embedded")

_PREFIX = "embedded"


def _worker_id(parent: int, index: int) -> str:
    return f"{_PREFIX}:{socket.gethostname()}:{parent}:{index}:{os.getpid()}"


def is_dead_embedded_worker(worker_id: str) -> bool:
    """Whether ``worker_id`` names an embedded worker process of this machine that no longer exists."""
    parts = worker_id.split(":")
    if len(parts) != 5 or parts[0] != _PREFIX or parts[1] != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(parts[4]))
        # A zombie is dead (a killed server's worker, re-parented to a PID 1 that does not reap, stays one),
        # and so is a live process that is not that worker: its pid was reused (pid_max can be 32768).
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        cmdline = proc.cmdline()
        return not ("service.jobs.embedded" in cmdline and "--parent" in cmdline
                    and cmdline[cmdline.index("--parent") + 1:][:1] == [parts[2]])
    except psutil.NoSuchProcess:
        return True
    except (ValueError, psutil.AccessDenied):
        return False


class EmbeddedExecutor:
    """Worker processes of the API's own; see the module docstring."""

    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            engine = get_engine(self.settings.database_url)
            requeued = crud.requeue_orphans(engine, is_dead_embedded_worker, self.settings.job_max_attempts)
            if requeued:
                log.warning("re-queued %d job(s) left running by a previous server: %s", len(requeued),
                            ", ".join(requeued))
            for i in range(self.settings.workers):
                self._spawn(i)
        log.info("embedded executor: %d worker process(es)", self.settings.workers)

    def _spawn(self, index: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEPCONV_")}
        env.update(self.settings.worker_env())
        # The worker starts with SIGUSR1 blocked (the mask is inherited) so that a wake-up sent before it has
        # installed its handler waits for it instead of killing it; it unblocks the signal when ready.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            self._procs[index] = subprocess.Popen(
                [sys.executable, "-m", "service.jobs.embedded", "--index", str(index), "--parent", str(os.getpid())],
                env=env, stdin=subprocess.DEVNULL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live worker processes."""
        return [p.pid for p in self._procs.values() if p.poll() is None]

    def submit(self, job_id: str, gpu: bool = False) -> None:
        # Every embedded worker takes every job (on its own device setting): there is one pool.
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    def resubmit(self, job_ids: list[str]) -> None:
        if job_ids:
            self.submit(job_ids[0])

    def ready(self) -> bool:
        return bool(self.pids)

    def maintain(self) -> None:
        with self._lock:
            if not self._started:
                return
            died = False
            for index, proc in list(self._procs.items()):
                if proc.poll() is not None:
                    log.warning("embedded worker %d (pid %d) exited with %s; starting a new one", index, proc.pid,
                                proc.returncode)
                    self._spawn(index)
                    died = True
            if died:
                # Its job need not wait for its lease: the process is gone for sure.
                requeued = crud.requeue_orphans(get_engine(self.settings.database_url), is_dead_embedded_worker,
                                                self.settings.job_max_attempts, "its worker process died")
                if requeued:
                    log.warning("re-queued %d job(s) of a worker that died: %s", len(requeued), ", ".join(requeued))
        if died:
            self.submit("")

    def stop(self, timeout: float = 15.0) -> None:
        with self._lock:
            self._started = False
            procs = list(self._procs.values())
            self._procs.clear()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("embedded worker pid %d did not stop in time; killing it", p.pid)
                p.kill()
                p.wait()


def worker_main(argv: list[str] | None = None) -> int:
    """One embedded worker process: claim, run, repeat, until told to stop or its server disappears."""
    parser = argparse.ArgumentParser(prog="python -m service.jobs.embedded")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    protect_worker_process()
    stop, wake = threading.Event(), threading.Event()

    def _on_stop(signum: int, _frame: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    signal.signal(signal.SIGUSR1, lambda *_: wake.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # blocked by the executor until now

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != args.parent

    worker_id = _worker_id(args.parent, args.index)
    runner = JobRunner(settings, worker_id, should_stop=should_stop)
    engine = get_engine(settings.database_url)
    reap_every = settings.reap_interval_s
    next_reap = 0.0
    log.info("embedded worker %s ready", worker_id)
    while not should_stop():
        try:
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + reap_every
                crud.reap_expired(engine, settings.job_max_attempts)
            outcome = runner.run_next()
        except Exception:
            log.exception("embedded worker %s: error between jobs; retrying shortly", worker_id)
            outcome = None
        if outcome is None:
            wake.wait(min(settings.poll_interval_s, reap_every))
            wake.clear()
    log.info("embedded worker %s stopping", worker_id)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
