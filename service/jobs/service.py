"""The service layer: what the API can do with jobs — submit an upload, look jobs up, wait for them, list,
cancel/delete, open their results — with the rules that go with it (queue bound, upload limit, content sniffing,
option validation, ownership). Routes call this and translate its errors to HTTP; they hold no logic of their own.

It is async because uploads stream: file parts arrive as async chunk iterators (``service.api.upload``) and
go to storage as they arrive, in ``SUBMIT_FLUSH`` pieces through a worker thread, so the API never holds a
whole model in memory. Database and storage calls (synchronous SQLAlchemy and boto3) run in worker threads and
never block the event loop. Jobs are executed elsewhere (``executor``); this module only queues them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
from anyio import to_thread
from sqlalchemy import Engine

from converter import REPEATABLE_FIELDS, ConversionConfig, InvalidOptionsError, render_html
from converter.formats import describe_unknown, format_info, formats, sniff_formats

from ..core.config import Settings
from ..core.storage import ObjectNotFoundError, ObjectWriter, Storage
from ..models import Job, JobStage, JobStatus, utcnow
from . import crud, files
from .errors import (
    BadRequestError,
    JobNotFoundError,
    JobNotReadyError,
    QueueFullError,
    UnavailableError,
    UnsupportedUploadError,
    UploadTooLargeError,
)
from .executor import Executor, ExecutorUnavailableError
from .sweep import SweepResult, sweep_storage

__all__ = ["SAMPLE_PARTS", "SERVICE_REFUSED_OPTIONS", "FieldPart", "FilePart", "JobService"]

log = logging.getLogger("sepconv.jobs")

#: Bytes looked at to recognise a model (``converter.formats.sniff_formats``).
SNIFF_BYTES = 4096
#: Storage writes are batched to this size.
SUBMIT_FLUSH = 1024 * 1024
#: Multipart framing and form fields a request may carry beyond its files, for the early Content-Length check.
FORM_ALLOWANCE = 1024 * 1024
#: Retry-After (seconds) of a "queue full" answer.
RETRY_AFTER_S = 30

#: File parts holding the user's samples for accuracy recovery (stored at ``files.data_key``/``eval_key``).
SAMPLE_PARTS = ("data", "eval")

#: ConversionConfig options a library user may set but the service refuses.
SERVICE_REFUSED_OPTIONS = ("trust_model",)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class FieldPart:
    """A text form field."""

    name: str
    value: str


@dataclass
class FilePart:
    """A file form field; ``chunks`` must be consumed before the next part."""

    name: str
    filename: str
    chunks: AsyncIterator[bytes]


def clean_filename(name: str | None) -> str:
    """The last path component of a client-supplied file name, without control characters, at most 200
    characters; ``model`` when nothing is left. Only ever displayed — never used as a path or storage key."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = _CONTROL.sub("", base).strip()
    if base in ("", ".", ".."):
        return "model"
    return base[-200:]


def options_from_form(fields: dict[str, list[str]]) -> dict[str, Any]:
    """Form fields (each possibly repeated) → keyword options for ``ConversionConfig.from_options``: list and
    dict options take every value; any other option must be given once."""
    out: dict[str, Any] = {}
    for name, values in fields.items():
        if name not in ConversionConfig.model_fields:
            out[name] = values[0]  # refused by the config as an unknown option, by name
        elif name in REPEATABLE_FIELDS:
            out[name] = values
        elif len(values) > 1:
            raise InvalidOptionsError(f"invalid options: {name}: given {len(values)} times; give it once")
        else:
            out[name] = values[0]
    return out


class JobService:
    """Jobs as the API sees them. All methods take the caller's ``owner`` (a key digest) and treat another
    owner's job as nonexistent.

    Args:
        settings: limits (upload size, queue bound).
        engine: the job database.
        storage: where files go.
        executor: tells workers about new jobs.
        on_upload_bytes: called with the size of every file chunk received (metrics).
    """

    def __init__(self, settings: Settings, engine: Engine, storage: Storage, executor: Executor,
                 on_upload_bytes: typing.Callable[[int], None] = lambda n: None) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.executor = executor
        self.on_upload_bytes = on_upload_bytes
        self._reads: dict[str, asyncio.Future[Job | None]] = {}
        self._republished: dict[str, float] = {}
        self._next_sweep = 0.0

    # -- submit ----------------------------------------------------------------------------------------------

    async def check_capacity(self, content_length: int | None) -> None:
        """Refuse early: a declared body over the limit (413), a full queue (503)."""
        if content_length is not None and content_length > self.settings.max_upload_bytes + FORM_ALLOWANCE:
            raise UploadTooLargeError(f"the upload is {content_length} bytes; the limit is "
                                      f"{self.settings.max_upload_bytes} bytes (SEPCONV_MAX_UPLOAD_BYTES)")
        queued = await to_thread.run_sync(crud.count_queued, self.engine)
        if queued >= self.settings.max_queued:
            raise QueueFullError(f"{queued} jobs are queued, the most this server accepts "
                                 f"(SEPCONV_MAX_QUEUED={self.settings.max_queued}); try again later", RETRY_AFTER_S)

    async def submit(self, owner: str, parts: AsyncIterator[FieldPart | FilePart]) -> Job:
        """Store an upload's files, validate its options and queue a job.

        Raises:
            UploadTooLargeError: the files exceed ``SEPCONV_MAX_UPLOAD_BYTES`` (nothing is kept).
            UnsupportedUploadError: the model is empty or not a model format (nothing is kept).
            InvalidOptionsError: an option is unknown, malformed or out of range.
            BadRequestError: the form is malformed or lacks the model.
            UnavailableError: the job could not be handed to the executor.
        """
        job_id = crud.new_job_id()
        stored: list[str] = []
        fields: dict[str, list[str]] = {}
        model: tuple[str, int] | None = None
        npz_keys = {"inputs": files.inputs_key, "data": files.data_key, "eval": files.eval_key}
        npz_bytes: dict[str, int] = {}
        budget = self.settings.max_upload_bytes
        try:
            async for part in parts:
                if isinstance(part, FieldPart):
                    if part.name == "model" or part.name in npz_keys:
                        raise BadRequestError(f"'{part.name}' must be a file part")
                    fields.setdefault(part.name, []).append(part.value)
                elif part.name == "model":
                    if model is not None:
                        raise BadRequestError("give one 'model' file part")
                    key = files.input_key(job_id)
                    size = await self._store(part.chunks, key, budget, self._check_model)
                    stored.append(key)
                    budget -= size
                    model = (clean_filename(part.filename), size)
                elif part.name in npz_keys:  # inputs (verification), data and eval (samples): each a .npz
                    if part.name in npz_bytes:
                        raise BadRequestError(f"give one '{part.name}' file part")
                    key = npz_keys[part.name](job_id)
                    size = await self._store(part.chunks, key, budget, _check_npz(part.name))
                    npz_bytes[part.name] = size
                    stored.append(key)
                    budget -= size
                else:
                    raise BadRequestError(f"unexpected file part {part.name!r}; the files are 'model', "
                                          f"{', '.join(repr(k) for k in npz_keys)}")
            if model is None:
                raise BadRequestError("the request has no 'model' file part")
            config = ConversionConfig.from_options(**options_from_form(fields))
            self._check_budget(config)
            refused = [name for name in SERVICE_REFUSED_OPTIONS if getattr(config, name)]
            if refused:
                raise InvalidOptionsError(f"invalid options: {refused[0]}: not accepted by the service (uploaded "
                                          "graphs are always checked)")
            job = Job(id=job_id, owner=owner, status=JobStatus.QUEUED, stage=JobStage.QUEUED, progress=0.0,
                      filename=model[0], options=config.model_dump(mode="json", exclude_unset=True),
                      input_key=files.input_key(job_id), input_bytes=model[1],
                      inputs_key=files.inputs_key(job_id) if "inputs" in npz_bytes else None,
                      data_key=files.data_key(job_id) if "data" in npz_bytes else None,
                      eval_key=files.eval_key(job_id) if "eval" in npz_bytes else None, attempts=0,
                      cancel_requested=False, created_at=utcnow())
            await to_thread.run_sync(crud.create_job, self.engine, job)
        except BaseException:
            with anyio.CancelScope(shield=True):  # clean up even when the client went away
                for key in stored:
                    await to_thread.run_sync(self.storage.delete, key)
            raise
        await self._queue(job)
        log.info("job %s queued (%s, %d bytes)", job_id, job.filename, job.input_bytes)
        return job

    async def _store_samples(self, part: FilePart, job_id: str, budget: int, stored: list[str]) -> int:
        """Store a ``data``/``eval`` part (a .npz) at its job key; refuses a second part of the same name."""
        key = files.data_key(job_id) if part.name == "data" else files.eval_key(job_id)
        if key in stored:
            raise BadRequestError(f"give one '{part.name}' file part")
        size = await self._store(part.chunks, key, budget, _check_npz(part.name))
        stored.append(key)
        return size

    def _check_budget(self, config: ConversionConfig) -> None:
        """A fine-tune must fit the job time limit, or the worker would kill it at the limit."""
        if config.recover == "finetune" and config.finetune_minutes * 60 >= self.settings.job_timeout_s:
            raise InvalidOptionsError(f"invalid options: finetune_minutes: {config.finetune_minutes:g} min does not "
                                      f"fit this server's job time limit of {self.settings.job_timeout_s:g} s "
                                      "(SEPCONV_JOB_TIMEOUT_S); give less")

    async def _queue(self, job: Job) -> None:
        """Hand a created job to the executor (a fine-tune to the GPU queue), or forget it if that fails."""
        try:
            self.executor.submit(job.id, gpu=job.needs_gpu)
        except ExecutorUnavailableError as e:
            await self._forget(job)
            raise UnavailableError(str(e)) from None

    async def finetune(self, owner: str, job_id: str, parts: AsyncIterator[FieldPart | FilePart]) -> Job:
        """Queue a fine-tune of a finished conversion job as a new job: the same model (copied in storage, not
        uploaded again) and options, ``recover=finetune``, the option fields given here on top, and the
        ``data``/``eval`` parts given here or else the job's own.

        Raises:
            JobNotFoundError: no such job.
            JobNotReadyError: the job has not succeeded.
            InvalidOptionsError: an option is unknown or out of range, or there are no samples to train on.
            BadRequestError: the form is malformed.
            UnavailableError: the job could not be handed to the executor.
        """
        parent = await self._succeeded(owner, job_id, "fine-tune")
        new_id = crud.new_job_id()
        stored: list[str] = []
        fields: dict[str, list[str]] = {}
        budget = self.settings.max_upload_bytes
        try:
            async for part in parts:
                if isinstance(part, FieldPart):
                    if part.name in SAMPLE_PARTS:
                        raise BadRequestError(f"'{part.name}' must be a file part")
                    fields.setdefault(part.name, []).append(part.value)
                elif part.name in SAMPLE_PARTS:
                    budget -= await self._store_samples(part, new_id, budget, stored)
                else:
                    raise BadRequestError(f"unexpected file part {part.name!r}; a fine-tune takes 'data' and 'eval'")
            options = {**parent.options, **options_from_form(fields), "recover": "finetune"}
            config = ConversionConfig.from_options(**options)
            self._check_budget(config)
            copies = [(parent.input_key, files.input_key(new_id))]
            for own, key_of in ((parent.inputs_key, files.inputs_key), (parent.data_key, files.data_key),
                                (parent.eval_key, files.eval_key)):
                if own and key_of(new_id) not in stored:
                    copies.append((own, key_of(new_id)))
            has = set(stored) | {dst for _, dst in copies}
            if files.data_key(new_id) not in has:
                raise InvalidOptionsError("a fine-tune needs samples: give a 'data' file part (the job was "
                                          "converted without data)")
            for src, dst in copies:
                await to_thread.run_sync(self._copy, src, dst)
                stored.append(dst)
            job = Job(id=new_id, owner=owner, status=JobStatus.QUEUED, stage=JobStage.QUEUED, progress=0.0,
                      filename=parent.filename, options=config.model_dump(mode="json", exclude_unset=True),
                      input_key=files.input_key(new_id), input_bytes=parent.input_bytes,
                      inputs_key=files.inputs_key(new_id) if files.inputs_key(new_id) in has else None,
                      data_key=files.data_key(new_id), eval_key=files.eval_key(new_id)
                      if files.eval_key(new_id) in has else None, attempts=0, cancel_requested=False,
                      created_at=utcnow())
            await to_thread.run_sync(crud.create_job, self.engine, job)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for key in stored:
                    await to_thread.run_sync(self.storage.delete, key)
            raise
        await self._queue(job)
        log.info("job %s queued: fine-tune of job %s", new_id, parent.id)
        return job

    def _copy(self, src: str, dst: str) -> None:
        try:
            self.storage.put(dst, self.storage.get(src))
        except ObjectNotFoundError:
            raise JobNotFoundError(f"the files of job {dst.split('/')[1]} are no longer stored") from None

    async def _store(self, chunks: AsyncIterator[bytes], key: str, budget: int,
                     check: typing.Callable[[bytes, bool], None]) -> int:
        """Stream one file part into storage; ``check(head, complete)`` judges its first bytes before anything
        is written. Returns the size."""
        head = bytearray()
        buf = bytearray()
        writer: ObjectWriter | None = None
        total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                self.on_upload_bytes(len(chunk))
                if total > budget:
                    raise UploadTooLargeError(f"the upload exceeds the limit of {self.settings.max_upload_bytes} "
                                              "bytes (SEPCONV_MAX_UPLOAD_BYTES)")
                if writer is None:
                    head += chunk
                    if len(head) < SNIFF_BYTES:
                        continue
                    check(bytes(head[:SNIFF_BYTES]), False)
                    writer = await to_thread.run_sync(self.storage.writer, key)
                    buf, head = head, bytearray()
                else:
                    buf += chunk
                if len(buf) >= SUBMIT_FLUSH:
                    await to_thread.run_sync(writer.write, bytes(buf))
                    buf.clear()
            if writer is None:
                check(bytes(head), True)
                writer = await to_thread.run_sync(self.storage.writer, key)
                buf = head
            if buf:
                await to_thread.run_sync(writer.write, bytes(buf))
            await to_thread.run_sync(writer.commit)
            return total
        except BaseException:
            if writer is not None:
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(writer.abort)
            raise

    def _check_model(self, head: bytes, complete: bool) -> None:
        _check_model(head, complete, refuse_code=not self.settings.allow_unconfined_code and not _kernel_confines())

    async def _forget(self, job: Job) -> None:
        await to_thread.run_sync(files.delete_job_files, self.storage, job)
        await to_thread.run_sync(crud.delete_job, self.engine, job.id)

    # -- read ------------------------------------------------------------------------------------------------

    async def get(self, owner: str, job_id: str) -> Job:
        """The owner's job.

        Concurrent lookups of one job share one database read (started no earlier than the first of them
        arrived), so clients polling the same job cost one query per round, not one each.

        Raises:
            JobNotFoundError: no such job for this owner.
        """
        pending = self._reads.get(job_id)
        if pending is None:
            pending = asyncio.ensure_future(to_thread.run_sync(crud.get_job, self.engine, job_id))
            self._reads[job_id] = pending
            pending.add_done_callback(lambda _: self._reads.pop(job_id, None))
        job = await asyncio.shield(pending)
        if job is None or job.owner != owner:
            raise JobNotFoundError(f"no job {job_id!r}")
        return job

    async def wait(self, owner: str, job_id: str, timeout: float) -> Job:
        """The job once it has finished, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        job = await self.get(owner, job_id)
        delay = 0.05
        while not job.is_final and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)
            job = await self.get(owner, job_id)
        return job

    async def list(self, owner: str, offset: int, limit: int) -> tuple[list[Job], int]:
        """A page of the owner's jobs, newest first, and their total number."""
        return await to_thread.run_sync(crud.list_jobs, self.engine, owner, offset, limit)

    async def open_model(self, owner: str, job_id: str) -> tuple[Iterator[bytes], str]:
        """The converted model's bytes (streamed) and its download name ``<stem>-sepconv<suffix>``.

        Raises:
            JobNotFoundError: no such job.
            JobNotReadyError: the job has not succeeded.
        """
        job = await self._succeeded(owner, job_id, "model")
        stem = job.filename.rsplit(".", 1)[0] if "." in job.filename.strip(".") else job.filename
        return await self._open(job, job.output_key), f"{stem}-sepconv{job.output_suffix or ''}"

    async def open_report(self, owner: str, job_id: str) -> Iterator[bytes]:
        """The JSON report's bytes (streamed).

        Raises:
            JobNotFoundError: no such job.
            JobNotReadyError: the job has not succeeded.
        """
        job = await self._succeeded(owner, job_id, "report")
        return await self._open(job, job.report_key)

    async def report_html(self, owner: str, job_id: str) -> str:
        """The report as one self-contained HTML page (``converter.render_html``), titled with the model's name.

        Raises:
            JobNotFoundError: no such job.
            JobNotReadyError: the job has not succeeded.
        """
        job = await self._succeeded(owner, job_id, "report")
        chunks = await self._open(job, job.report_key)

        def render() -> str:
            return render_html(json.loads(b"".join(chunks)), title=job.filename)

        return await to_thread.run_sync(render)

    async def _succeeded(self, owner: str, job_id: str, what: str) -> Job:
        job = await self.get(owner, job_id)
        if job.status != JobStatus.SUCCEEDED:
            hint = f": {job.error_message}" if job.status == JobStatus.FAILED and job.error_message else ""
            raise JobNotReadyError(f"job {job_id} is {job.status}{hint}; its {what} is available once it has "
                                   "succeeded")
        return job

    async def _open(self, job: Job, key: str | None) -> Iterator[bytes]:
        try:
            if key is None:
                raise ObjectNotFoundError(key)
            return await to_thread.run_sync(self.storage.get, key)
        except ObjectNotFoundError:
            raise JobNotFoundError(f"the files of job {job.id} are no longer stored") from None

    # -- delete ----------------------------------------------------------------------------------------------

    async def delete(self, owner: str, job_id: str) -> None:
        """Cancel the job if it is queued or running (its worker kills the conversion within about a second
        and never stores outputs), then delete its files and its record.

        Raises:
            JobNotFoundError: no such job.
        """
        job = await to_thread.run_sync(crud.mark_cancelled, self.engine, job_id, owner)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        await self._forget(job)
        log.info("job %s deleted (was %s)", job_id, job.status)

    # -- upkeep ----------------------------------------------------------------------------------------------

    async def maintain(self) -> None:
        """Periodic upkeep from the API process: re-queue jobs whose worker's lease expired, keep the
        executor's workers alive."""
        requeued = await to_thread.run_sync(crud.reap_expired, self.engine, self.settings.job_max_attempts)
        if requeued:
            log.warning("re-queued %d job(s) whose worker stopped responding: %s", len(requeued),
                        ", ".join(requeued))
            await to_thread.run_sync(self.executor.resubmit, requeued)
        await to_thread.run_sync(self.executor.maintain)
        await self._republish_stale()
        if time.monotonic() >= self._next_sweep:
            await self.sweep()

    async def sweep(self) -> SweepResult:
        """Remove leaked partial uploads and objects of no job (``sweep``); the next one is due in
        ``SEPCONV_SWEEP_INTERVAL_S``."""
        self._next_sweep = time.monotonic() + self.settings.sweep_interval_s
        return await to_thread.run_sync(sweep_storage, self.engine, self.storage, self.settings.sweep_grace_s)

    async def _republish_stale(self) -> None:
        """Publish again the jobs queued longer than ``SEPCONV_REQUEUE_AFTER_S`` (a broker that lost its messages:
        a flush, a restart without persistence); each at most once per that period. Claims are idempotent, so a
        message that was not lost after all only costs a skipped delivery."""
        after = self.settings.requeue_after_s
        stale = await to_thread.run_sync(crud.stale_queued, self.engine, utcnow() - timedelta(seconds=after))
        now = time.monotonic()
        self._republished = {j: t for j, t in self._republished.items() if j in set(stale)}
        due = [j for j in stale if now - self._republished.get(j, -math.inf) >= after]
        if due:
            log.warning("re-publishing %d job(s) queued for more than %g s without a worker taking them: %s",
                        len(due), after, ", ".join(due[:20]))
            await to_thread.run_sync(self.executor.resubmit, due)
            self._republished.update(dict.fromkeys(due, now))


def _check_model(head: bytes, complete: bool, *, refuse_code: bool = False) -> None:
    if not head:
        raise UnsupportedUploadError("the uploaded model is empty")
    kinds = sniff_formats(head)
    if not kinds:
        raise UnsupportedUploadError(describe_unknown(None, head))
    if refuse_code and any(format_info(k).carries_code for k in kinds):
        raise UnsupportedUploadError(f"{_code_titles()} carry code, and this server's kernel offers no Landlock "
                                     "confinement for their conversion; the operator can accept them with "
                                     "SEPCONV_ALLOW_UNCONFINED_CODE=1")


def _code_titles() -> str:
    names = [f.name for f in formats() if f.carries_code]
    return "models in the formats " + ", ".join(names) if len(names) != 1 else f"{names[0]} models"


@functools.cache
def _kernel_confines() -> bool:
    from .confine import landlock_abi

    return landlock_abi() > 0


def _check_npz(part: str) -> Callable[[bytes, bool], None]:
    """The first-bytes check of an uploaded ``.npz`` part (``inputs``, ``data``, ``eval``)."""
    what = {"inputs": "verification inputs", "data": "samples of the model's inputs",
            "eval": "held-out samples"}[part]

    def check(head: bytes, complete: bool) -> None:
        if not head.startswith(b"PK\x03\x04"):
            raise InvalidOptionsError(f"{part}: expected a .npz file (numpy.savez) of {what}")

    return check
