"""The job runner: what a worker (embedded or Celery) does with one job.

It claims the job (an atomic update; see ``crud``), downloads the upload into a private temporary folder, and
runs the conversion in a child process (``service.jobs.sandbox``) with a clean environment, its own session and
process group, and the memory/file limits the sandbox applies to itself. While the child runs, the runner reads
its JSON-line events, writes stage/progress and renews the lease (heartbeat) in the database, polls for
cancellation (a DELETE kills the child within about half a second) and enforces the wall-clock limit by killing
the child's process group. Afterwards it uploads the converted model and the report and records success — only
if the job is still its own, so a cancelled or re-queued job never gets outputs — or records a failure with a
reason a user can act on ("ran out of memory (limit 8192 MB)", "exceeded the time limit of 1800 s", "the
conversion process crashed (signal 11, SIGSEGV)", or the converter's own error code and message).

A fine-tune (``recover="finetune"``) checkpoints into the job folder; the runner uploads each new checkpoint to
storage, and a later attempt of the same job (after a restart, a lost worker, a stopped one) starts from it, so
the fine-tune resumes instead of starting over. A ``max_accuracy_drop`` search keeps its journal of measured plans
there too (``search.json``), uploaded and restored the same way, so a resumed search does not measure those plans
again. Both are deleted once the job has succeeded or failed.

It does not decide *which* job to run or when: the embedded worker loop and the Celery task do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from converter.formats import format_names, unpack_limit

from ..core.config import Settings
from ..core.db import get_engine
from ..core.storage import ObjectNotFoundError, Storage, open_storage
from . import crud, files
from .confine import landlock_abi, seccomp_supported
from .sandbox import EXIT_OOM

# converter.recovery.finetune._checkpoint's name (not imported: the runner loads no torch)
CHECKPOINT_NAME = files.CHECKPOINT_NAMES[0]

__all__ = ["EventBudget", "JobRunner", "Outcome", "protect_worker_process", "scrub_paths", "sweep_stale_workdirs",
           "warn_if_unconfined", "worker_name"]

log = logging.getLogger("sepconv.runner")

#: How often the runner checks the cancel flag, and the granularity of its wait on the child's pipe.
CANCEL_POLL_S = 0.5
_TICK_S = 0.1
_MAX_REPORT_BYTES = 64 * 1024 * 1024
_WORKDIR_PREFIX = "sepconv-job-"
# Bounds on what the (untrusted) child can make the runner hold or write: a longer line is dropped unread, past
# the total the pipe is no longer read (the child blocks on it and meets its time limit), and past the rate
# further events of the second are dropped. ``done`` and ``error`` are kept once each (the first done, the last
# error), never appended without end.
_MAX_EVENT_BYTES = 64 * 1024
_MAX_EVENTS = 1000
_MAX_EVENT_TOTAL_BYTES = 16 * 1024 * 1024
_MAX_EVENTS_PER_S = 200
_PROGRESS_EVERY_S = 0.25
_MAX_DETAIL_ITEMS = 16
#: How often a running job's fine-tune checkpoint is looked at (and uploaded when new), and its largest size.
CHECKPOINT_SYNC_S = 5.0
_MAX_CHECKPOINT_BYTES = 4 * 1024**3
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def worker_name(kind: str) -> str:
    """A worker id: ``<kind>:<host>:<pid>``."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


def protect_worker_process() -> None:
    """Make this (worker) process undumpable: a conversion child running as the same user can then neither
    read its ``/proc/<pid>/environ`` (database URL, cloud credentials) nor ``ptrace`` it. Linux only; a no-op
    elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


@dataclass
class Outcome:
    """How a conversion ended: ``done``, ``failed``, ``cancelled`` (by the user, or the job is no longer this
    worker's) or ``stopped`` (the worker is shutting down)."""

    status: str
    code: str | None = None
    message: str | None = None
    format: str | None = None
    output: Path | None = None
    report: Path | None = None
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)


class EventBudget:
    """What the runner keeps of the child's event lines: at most ``_MAX_EVENTS`` events, each line at most
    ``_MAX_EVENT_BYTES``, ``_MAX_EVENT_TOTAL_BYTES`` read in all, ``_MAX_EVENTS_PER_S`` a second; of ``done`` and
    ``error`` one each. Feed it the bytes read from the pipe; ``events`` is what was kept."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.total = 0
        self.dropped = 0
        self._buf = b""
        self._skipping = False  # inside a line that was too long
        self._second = 0.0
        self._in_second = 0

    @property
    def exhausted(self) -> bool:
        """Whether the child has sent all it may: stop reading the pipe."""
        return self.total >= _MAX_EVENT_TOTAL_BYTES

    def feed(self, data: bytes, now: float) -> list[dict[str, Any]]:
        """Take bytes read from the pipe; returns the events newly kept."""
        self.total += len(data)
        kept = []
        *lines, rest = (self._buf + data).split(b"\n")
        for line in lines:
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > _MAX_EVENT_BYTES:
                self.dropped += 1
                continue
            event = _parse_event(line)
            if event is not None and self._keep(event, now):
                kept.append(event)
        if len(rest) > _MAX_EVENT_BYTES:  # a line without end: not ours to keep
            rest, self._skipping = b"", True
        self._buf = rest
        return kept

    def _keep(self, event: dict[str, Any], now: float) -> bool:
        kind = event["event"]
        if kind == "done":
            if any(e["event"] == "done" for e in self.events):
                return False
        elif kind == "error":
            self.events = [e for e in self.events if e["event"] != "error"]
        else:
            if int(now) != self._second:
                self._second, self._in_second = int(now), 0
            self._in_second += 1
            if self._in_second > _MAX_EVENTS_PER_S or len(self.events) >= _MAX_EVENTS:
                self.dropped += 1
                return False
        self.events.append(event)
        return True


class JobRunner:
    """Runs jobs for one worker.

    Args:
        settings: the service settings (limits, lease, database and storage URLs).
        worker_id: this worker's id, recorded on the jobs it claims.
        should_stop: polled while a job runs; when it returns True the child is killed and the job given back
            to the queue.
        storage: the storage to use (default: the one ``settings`` names).
    """

    def __init__(self, settings: Settings, worker_id: str, *, should_stop: Callable[[], bool] = lambda: False,
                 storage: Storage | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.should_stop = should_stop
        self.engine = get_engine(settings.database_url)
        self.storage = storage or open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url)
        sweep_stale_workdirs()
        warn_if_unconfined(settings, worker_id)

    def run_next(self) -> Outcome | None:
        """Claim the oldest queued job and run it; None if there was none."""
        claim = crud.claim_next(self.engine, self.worker_id, self.settings.job_lease_s)
        return self._execute(claim) if claim else None

    def run(self, job_id: str) -> Outcome | None:
        """Claim one job and run it; None if it is not claimable (finished, running elsewhere, deleted)."""
        claim = crud.claim(self.engine, job_id, self.worker_id, self.settings.job_lease_s)
        if claim is None:
            log.info("job %s is not claimable (already done, running elsewhere or deleted); skipping", job_id)
            return None
        return self._execute(claim)

    # -- one job ---------------------------------------------------------------------------------------------

    def _execute(self, claim: crud.Claim) -> Outcome:
        log.info("job %s: attempt %d on %s", claim.job_id, claim.attempt, self.worker_id)
        work = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-{claim.job_id}-"))
        try:
            outcome = self._execute_in(claim, work)
        except Exception as e:
            log.exception("job %s: the worker failed", claim.job_id)
            outcome = Outcome("failed", "internal",
                              f"internal error in the worker ({type(e).__name__}); the worker's log has the details")
            crud.finish_failed(self.engine, claim, outcome.code or "internal", outcome.message or "")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("job %s: %s%s", claim.job_id, outcome.status, f" ({outcome.code}: {outcome.message})"
                 if outcome.code else "")
        return outcome

    def _execute_in(self, claim: crud.Claim, work: Path) -> Outcome:
        job = crud.get_job(self.engine, claim.job_id)
        if job is None:
            return Outcome("cancelled")
        try:
            self.storage.download(job.input_key, work / "model.in")
            for key, name in ((job.inputs_key, "inputs.npz"), (job.data_key, "data.npz"), (job.eval_key, "eval.npz")):
                if key:
                    self.storage.download(key, work / name)
            resume = self._download_checkpoint(claim.job_id, work)
        except ObjectNotFoundError:
            if not crud.is_still_mine(self.engine, claim):
                return Outcome("cancelled")
            outcome = Outcome("failed", "internal", "the uploaded files are missing from storage")
            crud.finish_failed(self.engine, claim, outcome.code or "", outcome.message or "")
            return outcome
        if not crud.heartbeat(self.engine, claim, self.settings.job_lease_s):  # the download may have been long
            return Outcome("cancelled")

        outcome = self._supervise(claim, job.input_bytes, work, job.options, bool(job.inputs_key),
                                  bool(job.data_key), bool(job.eval_key), resume)
        if outcome.message:
            outcome.message = scrub_paths(outcome.message, work)
        sandbox = next((e for e in outcome.events if e["event"] == "sandbox"), {})
        if sandbox.get("network") == "shared":
            log.info("job %s: the kernel refused a private network namespace and a socket filter; the conversion "
                     "had network access", claim.job_id)
        if sandbox and not sandbox.get("landlock"):
            log.warning("job %s: the conversion ran without file-system confinement (no Landlock)", claim.job_id)
        # A stopped job, or one another worker took over, resumes from its checkpoint; a finished or deleted one
        # needs it no more (a deleted job's upload may have raced its deletion).
        if outcome.status in ("done", "failed") or crud.get_job(self.engine, claim.job_id) is None:
            for name in files.CHECKPOINT_NAMES:
                with contextlib.suppress(Exception):
                    self.storage.delete(files.checkpoint_key(claim.job_id, name))
        if outcome.status == "stopped":
            crud.release(self.engine, claim)
        elif outcome.status == "failed":
            crud.finish_failed(self.engine, claim, outcome.code or "internal", outcome.message or "")
        elif outcome.status == "done":
            self._store_results(claim, outcome, work)
        return outcome

    def _store_results(self, claim: crud.Claim, outcome: Outcome, work: Path) -> None:
        output = _own_file(work, outcome.output)
        report = _own_file(work, outcome.report)
        if output is None or report is None or report.stat().st_size > _MAX_REPORT_BYTES:
            outcome.status, outcome.code = "failed", "internal"
            outcome.message = "the conversion process did not leave a readable model and report"
            crud.finish_failed(self.engine, claim, outcome.code, outcome.message)
            return
        from converter import Report

        try:
            Report.model_validate_json(report.read_bytes())
        except ValueError:
            outcome.status, outcome.code = "failed", "internal"
            outcome.message = "the conversion process wrote an invalid report"
            crud.finish_failed(self.engine, claim, outcome.code, outcome.message)
            return
        if not crud.heartbeat(self.engine, claim, self.settings.job_lease_s):
            outcome.status = "cancelled"
            return
        out_key = files.output_key(claim.job_id, output.suffix.lower() or ".bin")
        rep_key = files.report_key(claim.job_id)
        try:
            with open(output, "rb") as f:
                self.storage.put(out_key, f)
            with open(report, "rb") as f:
                self.storage.put(rep_key, f)
        except Exception:
            for key in (out_key, rep_key):
                with contextlib.suppress(Exception):
                    self.storage.delete(key)
            raise
        if not crud.finish_succeeded(self.engine, claim, output_key=out_key, output_suffix=output.suffix.lower(),
                                     report_key=rep_key, format=outcome.format):
            # Cancelled or taken away while uploading: a cancelled job never gets outputs.
            for key in (out_key, rep_key):
                self.storage.delete(key)
            outcome.status = "cancelled"

    # -- the child process -----------------------------------------------------------------------------------

    def _download_checkpoint(self, job_id: str, work: Path) -> str:
        """The job's checkpoint folder, holding the checkpoint of an earlier attempt where one was stored."""
        folder = work / "checkpoint"
        folder.mkdir()
        for name in files.CHECKPOINT_NAMES:
            with contextlib.suppress(ObjectNotFoundError):
                self.storage.download(files.checkpoint_key(job_id, name), folder / name)
                log.info("job %s: resuming from the %s of an earlier attempt", job_id, name)
        return str(folder)

    def _sync_checkpoint(self, job_id: str, work: Path, seen: float, name: str = CHECKPOINT_NAME) -> float:
        """Upload the checkpoint file ``name`` (the fine-tune's, or the search's journal) when the child has
        written a new one; returns its mtime."""
        path = work / "checkpoint" / name
        try:
            info = path.lstat()
        except OSError:
            return seen
        if not stat.S_ISREG(info.st_mode) or info.st_mtime == seen or info.st_size > _MAX_CHECKPOINT_BYTES:
            return seen
        try:
            with open(path, "rb") as f:
                self.storage.put(files.checkpoint_key(job_id, name), f)
        except Exception as e:  # a failed upload costs only resumability
            log.warning("job %s: could not store the fine-tune checkpoint: %s", job_id, e)
        return info.st_mtime

    def _supervise(self, claim: crud.Claim, input_bytes: int, work: Path, options: dict[str, Any],
                   has_inputs: bool, has_data: bool = False, has_eval: bool = False,
                   checkpoint_dir: str | None = None) -> Outcome:
        s = self.settings
        spec = {
            "model": str(work / "model.in"),
            "inputs": str(work / "inputs.npz") if has_inputs else None,
            "data": str(work / "data.npz") if has_data else None,
            "eval": str(work / "eval.npz") if has_eval else None,
            "checkpoint_dir": checkpoint_dir,
            "output_dir": str(work / "out"),
            "report": str(work / "report.json"),
            "options": options,
            "memory_mb": s.job_memory_mb,
            "max_file_bytes": unpack_limit(input_bytes),  # the library's own cap on unpacked archives
            "test_hook": s.test_hook,
            "allow_unconfined": s.allow_unconfined_code,
            "parent_pid": os.getpid(),
        }
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
               "PYTHONPATH": _PACKAGE_ROOT, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
        r, w = os.pipe()
        with open(work / "sandbox.log", "wb") as log_file:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-s", "-m", "service.jobs.sandbox", str(spec_path), str(w)],
                    cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    pass_fds=(w,), start_new_session=True, close_fds=True)
            finally:
                os.close(w)
        try:
            return self._watch(claim, proc, r, work)
        finally:
            os.close(r)
            _kill_group(proc)

    def _watch(self, claim: crud.Claim, proc: subprocess.Popen[bytes], fd: int, work: Path) -> Outcome:
        s = self.settings
        started = time.monotonic()
        deadline = started + s.job_timeout_s
        beat_every = s.heartbeat_interval_s
        next_beat = next_check = next_flush = next_sync = 0.0
        checkpoint_seen = dict.fromkeys(files.CHECKPOINT_NAMES, 0.0)
        pending: dict[str, Any] = {}
        budget = EventBudget()
        events = budget.events
        eof = False
        peak_vms = 0
        limit_bytes = s.job_memory_mb * 1024 * 1024
        ended: Outcome | None = None

        while True:
            if not eof:
                ready, _, _ = select.select([fd], [], [], _TICK_S)
                if ready and not budget.exhausted:
                    data = os.read(fd, 65536)
                    if data:
                        for event in budget.feed(data, time.monotonic()):
                            pending.update(_job_fields(event))
                        events = budget.events
                    else:
                        eof = True
                elif ready:  # it has sent all it may: its further lines stay unread in the pipe
                    time.sleep(_TICK_S)
            else:
                time.sleep(_TICK_S)
            if proc.poll() is not None and (eof or budget.exhausted):
                break
            peak_vms = max(peak_vms, _tree_vms(proc.pid))
            now = time.monotonic()
            if now > deadline:
                ended = Outcome("failed", "timeout", f"exceeded the time limit of {s.job_timeout_s:g} s")
                break
            if self.should_stop():
                ended = Outcome("stopped")
                break
            if now >= next_check:
                next_check = now + CANCEL_POLL_S
                if not crud.is_still_mine(self.engine, claim):
                    ended = Outcome("cancelled")
                    break
            if now >= next_sync:
                next_sync = now + CHECKPOINT_SYNC_S
                for name in files.CHECKPOINT_NAMES:
                    checkpoint_seen[name] = self._sync_checkpoint(claim.job_id, work, checkpoint_seen[name], name)
            if now >= next_beat or (pending and now >= next_flush):
                if not crud.heartbeat(self.engine, claim, s.job_lease_s, **pending):
                    ended = Outcome("cancelled")
                    break
                pending = {}
                next_beat, next_flush = now + beat_every, now + _PROGRESS_EVERY_S

        _kill_group(proc)
        events = budget.events
        if ended is not None:
            ended.events = events
            return ended
        return _judge(proc.returncode, events, work, peak_vms, limit_bytes, s.job_memory_mb)


def warn_if_unconfined(settings: Settings, worker_id: str) -> None:
    """Say loudly, at a worker's start, when its kernel cannot confine conversions to their job folder."""
    abi = landlock_abi()
    if abi:
        log.info("worker %s: conversions are confined by Landlock ABI %d%s", worker_id, abi,
                 " and a socket filter" if seccomp_supported() else "")
        return
    what = ("TorchScript/.pt2 models are ACCEPTED anyway (SEPCONV_ALLOW_UNCONFINED_CODE)"
            if settings.allow_unconfined_code else
            "TorchScript/.pt2 models are refused (set SEPCONV_ALLOW_UNCONFINED_CODE=1 to accept them)")
    log.warning("WORKER %s HAS NO FILE-SYSTEM CONFINEMENT: this kernel offers no Landlock, so a conversion can read "
                "whatever the worker's user can read; %s. Use Linux >= 5.13 with Landlock enabled.", worker_id, what)


_TEMP_PATH = re.compile(r"""/[^\s'"]*/(?:sepconv-job-|sepconv-)[^\s'"]*""")


def scrub_paths(message: str, work: Path) -> str:
    """A failure message without the job folder's (or any other sepconv temporary folder's) path: files in it are
    named relative to it (``model.in``), anything else temporary as ``<temp>``."""
    for root in {str(work.resolve()), str(work)}:
        message = message.replace(root + "/", "").replace(root, "<job folder>")
    return _TEMP_PATH.sub("<temp>", message)


def sweep_stale_workdirs() -> int:
    """Delete job folders left in the temporary directory by workers that died (``kill -9`` gives a worker no
    chance to clean up, and the folder holds a copy of the user's model); returns how many were removed."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*"):
        try:
            pid = int(folder.name.removeprefix(_WORKDIR_PREFIX).split("-", 1)[0])
        except ValueError:
            continue
        if folder.is_dir() and not folder.is_symlink() and not psutil.pid_exists(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d job folder(s) left by workers that died", removed)
    return removed


def _stage_detail(detail: Any) -> dict[str, Any] | None:
    """A stage's detail as the job record keeps it: at most 16 entries of short names and scalar values (the
    child is not trusted); anything else is dropped."""
    if not isinstance(detail, dict):
        return None
    out: dict[str, Any] = {}
    for key, value in list(detail.items())[:_MAX_DETAIL_ITEMS]:
        if not isinstance(key, str) or len(key) > 64:
            continue
        if isinstance(value, bool | int | float) or value is None:
            out[key] = value if not isinstance(value, float) or math.isfinite(value) else None
        elif isinstance(value, str):
            out[key] = value[:200]
    return out or None


def _parse_event(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except Exception:  # anything the child writes, including JSON nested deep enough to recurse out
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def _job_fields(event: dict[str, Any]) -> dict[str, Any]:
    """What a sandbox event changes on the job row (values checked: the child is not trusted)."""
    from ..models import JobStage

    kind = event["event"]
    if kind == "progress":
        stage, progress = event.get("stage"), event.get("progress")
        if stage in {s.value for s in JobStage} and isinstance(progress, int | float) and 0 <= progress <= 1:
            return {"stage": stage, "progress": float(min(progress, 0.99)),
                    "stage_detail": _stage_detail(event.get("detail"))}
    elif kind == "format" and event.get("format") in format_names():
        return {"format": event["format"]}
    return {}


def _judge(returncode: int, events: list[dict[str, Any]], work: Path, peak_vms: int, limit_bytes: int,
           memory_mb: int) -> Outcome:
    """The outcome of a child that exited on its own."""
    fmt = next((e["format"] for e in reversed(events) if _job_fields(e).get("format")), None)
    done = next((e for e in events if e["event"] == "done"), None)
    error = next((e for e in reversed(events) if e["event"] == "error"), None)
    oom = f"ran out of memory (limit {memory_mb} MB)"
    if returncode == 0 and done is not None:
        return Outcome("done", format=fmt, output=_rel(work, done.get("output")),
                       report=_rel(work, done.get("report")), events=events)
    if error is not None:
        code = str(error.get("code") or "conversion_failed")[:64]
        # A failure at the edge of the address-space limit is a failed allocation, whatever a library made of it
        # (an import can turn a MemoryError into "…returned a result with an exception set").
        if code == "out_of_memory" or returncode == EXIT_OOM or peak_vms >= 0.9 * limit_bytes:
            return Outcome("failed", "out_of_memory", oom, format=fmt, events=events)
        return Outcome("failed", code, str(error.get("message") or "the conversion failed")[:2000], format=fmt,
                       events=events)
    tail = _log_tail(work / "sandbox.log")
    if returncode < 0:
        sig = -returncode
        if peak_vms >= 0.9 * limit_bytes or any(m in tail.lower() for m in ("bad_alloc", "memoryerror",
                                                                             "cannot allocate memory")):
            return Outcome("failed", "out_of_memory", oom, format=fmt, events=events)
        if sig == signal.SIGXFSZ:
            return Outcome("failed", "crashed", "the conversion process wrote a file larger than its limit",
                           format=fmt, events=events)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown"
        return Outcome("failed", "crashed", f"the conversion process crashed (signal {sig}, {name})", format=fmt,
                       events=events)
    last = tail.strip().splitlines()[-1][:300] if tail.strip() else "no output"
    return Outcome("failed", "crashed", f"the conversion process crashed (exit code {returncode}): {last}",
                   format=fmt, events=events)


def _rel(work: Path, value: Any) -> Path | None:
    if not isinstance(value, str):
        return None
    p = Path(value)
    return p if p.is_absolute() else work / p


def _own_file(work: Path, path: Path | None) -> Path | None:
    """``path`` if it is a regular file really inside ``work`` (no symlink out of it), else None. The child is
    dead by now, so nothing can swap the file after this check."""
    if path is None:
        return None
    try:
        real = path.resolve(strict=True)
        st = os.lstat(real)
    except (OSError, RuntimeError):
        return None
    if work.resolve() not in real.parents or not stat.S_ISREG(st.st_mode):
        return None
    return real


def _log_tail(path: Path, n: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tree_vms(pid: int) -> int:
    """The larger address space of the sandbox process and of its children (the conversion runs in a forked
    child); read from ``/proc`` directly: this runs ten times a second."""
    peak = _vms(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return peak
    for child in children:
        peak = max(peak, _vms(int(child)))
    return peak


def _vms(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole process group (it is the group leader) and every descendant of it (one that left
    the group with ``setsid``; in a PID namespace they die with its first process anyway), and reap it."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in descendants:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
        log.error("conversion process %d did not exit after SIGKILL", proc.pid)
