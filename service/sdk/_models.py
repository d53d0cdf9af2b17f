"""Typed jobs: the contract's ``Job`` and ``{"data": [...], "count": n}`` answers as pydantic models.

A ``Job`` returned by a ``Client`` is bound to it, so it can ``refresh()``, ``wait()``, ``download()``,
``cancel()`` and fetch its ``report``; an ``AsyncJob`` (from an ``AsyncClient``) has the same methods as
coroutines. The models ignore keys they do not know, so an older SDK still reads a newer server's jobs; the
HTTP work itself is the client's (this module sends nothing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

from converter import Report

from ._errors import JobCancelled, JobFailed, SepconvClientError, WaitTimeout

if TYPE_CHECKING:
    from ._client import AsyncClient, Client

__all__ = ["AsyncJob", "Job", "JobBase", "JobFailure", "JobList", "JobStatus"]

#: Status of a job; the last three are final.
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobFailure(BaseModel):
    """Why a job failed: the server's error ``code`` and ``message``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: str
    message: str


class JobBase(BaseModel):
    """The fields of a job, as the server reports them (see docs/http-api.md, "Job").

    Attributes:
        id: Opaque identifier.
        status: ``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``.
        stage: ``queued``, one of the converter's stages (``load``, ``plan``, ``measure``, ``rewrite``,
            ``guard``, ``calibrate``, ``finetune``, ``save``, ``verify``) or ``done`` (a plain string, so a stage
            added by a newer server does not break an older SDK).
        progress: Fraction done, 0–1.
        stage_detail: What the running stage last reported besides progress (e.g. loss while fine-tuning).
        filename: The uploaded file's name.
        format: the model's format once detected (``onnx``, ``torchscript``, … as the server registers them).
        options: The conversion options that were set.
        created_at, started_at, finished_at: Timestamps (timezone-aware).
        attempts: How many times a worker has started the job.
        error: Why it failed, when it did.
        links: URLs of the job, its model and its report, relative to the server.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    status: JobStatus
    stage: str = "queued"
    progress: float = 0.0
    stage_detail: dict[str, Any] | None = None
    filename: str | None = None
    format: str | None = None
    options: dict[str, Any] = {}
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    error: JobFailure | None = None
    links: dict[str, str] = {}

    @property
    def done(self) -> bool:
        """Whether the job has reached a final status (succeeded, failed or cancelled)."""
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        """Whether the job succeeded: its model and report can be fetched."""
        return self.status == "succeeded"

    def raise_for_status(self) -> None:
        """Raise ``JobFailed`` or ``JobCancelled`` if the job ended so; do nothing otherwise."""
        if self.status == "failed":
            raise JobFailed(self)
        if self.status == "cancelled":
            raise JobCancelled(self)

    #: The client that fetched the job (``Job`` and ``AsyncJob`` narrow it to theirs); set by the client.
    _client: Any = PrivateAttr(default=None)

    def _update_from(self, other: JobBase) -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(other, name))


class Job(JobBase):
    """A conversion job of a ``Client``. Methods that talk to the server update this object in place."""

    _client: Client | None = PrivateAttr(default=None)
    _report: Report | None = PrivateAttr(default=None)

    def _bound(self) -> Client:
        if self._client is None:
            raise SepconvClientError(f"job {self.id} is not bound to a client; get it from Client.get_job()")
        return self._client

    def refresh(self) -> Job:
        """Fetch the job's current state from the server.

        Returns:
            This job, updated.
        """
        self._update_from(self._bound().get_job(self.id))
        return self

    def wait(self, timeout: float | None = None, progress: Callable[[Job], Any] | None = None) -> Job:
        """Block until the job has finished; see ``Client.wait_job``.

        Returns:
            This job, updated, once it has succeeded.

        Raises:
            JobFailed: The job failed (the server's code and message are in the error).
            JobCancelled: The job was cancelled.
            WaitTimeout: It did not finish within ``timeout`` seconds (it keeps running).
        """
        try:
            self._update_from(self._bound().wait_job(self.id, timeout=timeout, progress=progress))
        except (JobFailed, JobCancelled, WaitTimeout) as e:
            if e.job is not None:
                self._update_from(e.job)
            raise
        return self

    def download(self, path: str | Path) -> Path:
        """Download the converted model; see ``Client.download_model``.

        Returns:
            The path written.
        """
        return self._bound().download_model(self.id, path)

    def download_report_html(self, path: str | Path) -> Path:
        """Download the report as one self-contained HTML page; see ``Client.download_report_html``."""
        return self._bound().download_report_html(self.id, path)

    @property
    def report(self) -> Report:
        """The conversion report (a ``converter.Report``), fetched on first access and then cached.

        Raises:
            NotReady: The job has not succeeded.
        """
        if self._report is None:
            self._report = self._bound().get_report(self.id)
        return self._report

    def cancel(self) -> None:
        """Cancel the job if it is queued or running, and delete it with its files (``DELETE /jobs/{id}``)."""
        self._bound().delete_job(self.id)


class AsyncJob(JobBase):
    """A conversion job of an ``AsyncClient``: the methods of ``Job``, as coroutines (``await job.report``)."""

    _client: AsyncClient | None = PrivateAttr(default=None)
    _report: Report | None = PrivateAttr(default=None)

    def _bound(self) -> AsyncClient:
        if self._client is None:
            raise SepconvClientError(f"job {self.id} is not bound to a client; get it from AsyncClient.get_job()")
        return self._client

    async def refresh(self) -> AsyncJob:
        """Fetch the job's current state from the server; see ``Job.refresh``."""
        self._update_from(await self._bound().get_job(self.id))
        return self

    async def wait(self, timeout: float | None = None,
                   progress: Callable[[AsyncJob], Any] | None = None) -> AsyncJob:
        """Wait until the job has finished; see ``Job.wait``. ``progress`` may be a coroutine function."""
        try:
            self._update_from(await self._bound().wait_job(self.id, timeout=timeout, progress=progress))
        except (JobFailed, JobCancelled, WaitTimeout) as e:
            if e.job is not None:
                self._update_from(e.job)
            raise
        return self

    async def download(self, path: str | Path) -> Path:
        """Download the converted model; see ``AsyncClient.download_model``."""
        return await self._bound().download_model(self.id, path)

    async def download_report_html(self, path: str | Path) -> Path:
        """Download the report as one self-contained HTML page; see ``Client.download_report_html``."""
        return await self._bound().download_report_html(self.id, path)

    @property
    def report(self) -> Awaitable[Report]:
        """The conversion report, to be awaited: ``report = await job.report`` (fetched once, then cached)."""
        return self._fetch_report()

    async def _fetch_report(self) -> Report:
        if self._report is None:
            self._report = await self._bound().get_report(self.id)
        return self._report

    async def cancel(self) -> None:
        """Cancel the job and delete it with its files; see ``Job.cancel``."""
        await self._bound().delete_job(self.id)


JobT = TypeVar("JobT", bound=JobBase)


class JobList(BaseModel, Generic[JobT]):
    """One page of jobs, newest first (``Client.list_jobs``).

    Attributes:
        data: The jobs of this page.
        count: How many jobs this API key has in all.
    """

    model_config = ConfigDict(extra="ignore")

    data: list[JobT]
    count: int
