"""``Client`` and ``AsyncClient``: the same methods, one blocking and one ``async``.

Each has exactly one place that talks to the network, ``_send``: it builds the request from a ``Call`` (the
shared, I/O-free ``_BaseClient`` decides what to send), retries as ``_BaseClient`` decides, and maps every
httpx exception and error answer to the SDK's errors. Everything else is composed from it.

This module does not parse or validate anything itself, and it never reads a whole model into memory: uploads
and downloads are streamed.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx

from converter import Report

from ._base import HTTPX_ERRORS, MIN_POLL_INTERVAL_S, Call, _BaseClient
from ._errors import WaitTimeout
from ._io import atomic_write
from ._models import AsyncJob, Job, JobList
from ._types import Retries, Timeout

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")

DEFAULT_TIMEOUT = Timeout()
DEFAULT_RETRIES = Retries()


class Client(_BaseClient):
    """A blocking client of a sepconv server.

    Example::

        from service.sdk import Client

        with Client("http://localhost:8000", api_key="...") as client:
            job = client.convert("resnet.onnx", rank=2, exclude=["head*"])
            job.download("resnet-sepconv.onnx")
            print(job.report.latency.speedup)

    Args:
        base_url: The server, e.g. ``http://localhost:8000`` (a path prefix is kept).
        api_key: Sent as ``Authorization: Bearer <key>``; ``None`` for a server without keys.
        timeout: A ``Timeout``, or seconds for all four phases, or ``None`` for no limit.
        retries: A ``Retries``, or how many retries, or ``None`` for none (see the ``_base`` module for which
            failures are retried and why a ``POST /convert`` that may have arrived is not).
        transport: An httpx transport to send through instead of the network (``httpx.MockTransport``, or a
            WSGI/ASGI bridge in tests).

    Raises:
        SepconvClientError: ``base_url`` is not an http(s) URL.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: Timeout | float | None = DEFAULT_TIMEOUT,
                 retries: Retries | int | None = DEFAULT_RETRIES,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retries=retries)
        self._http = httpx.Client(transport=transport, timeout=self._timeout.to_httpx(), follow_redirects=False)
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (and the transport). The client cannot be used afterwards."""
        self._http.close()

    # -- the one boundary to the network ----------------------------------------------------------------------

    def _send(self, call: Call, consume: Callable[[httpx.Response], T]) -> T:
        """Send ``call`` (again, as ``_BaseClient`` decides) and return ``consume`` of its successful answer."""
        attempt, maybe_delivered = 0, False
        while True:
            try:
                with ExitStack() as stack:
                    response = self._http.send(self._build_request(call, stack), stream=True)
                    stack.callback(response.close)
                    if response.is_success:
                        if not call.stream:
                            response.read()
                        return consume(response)
                    response.read()
            except HTTPX_ERRORS as exc:
                maybe_delivered = maybe_delivered or self._maybe_delivered(exc)
                delay = self._retry_after_error(call, exc, attempt)
                if delay is None:
                    raise self._map_transport_error(call, exc) from exc
            else:
                if self._done_by_earlier_attempt(call, response, maybe_delivered):
                    return consume(response)  # only a DELETE, whose consume ignores the answer
                delay = self._retry_after_status(call, response, attempt)
                if delay is None:
                    raise self._api_error(response)
            self._sleep(delay)
            attempt += 1

    # -- API ----------------------------------------------------------------------------------------------------

    def convert(self, path: str | Path, *, inputs: str | Path | None = None, data: str | Path | None = None,
                eval: str | Path | None = None, wait: bool | float = True,
                progress: Callable[[Job], Any] | None = None,
                upload_progress: Callable[[int, int], Any] | None = None, **options: Any) -> Job:
        """Upload a model for conversion and, by default, wait for the result.

        Args:
            path: The model: ONNX, ONNX with external data as one .zip, or TorchScript. It is streamed from
                disk, never read into memory whole.
            inputs: A .npz of verification inputs (an ``inputs`` array, or arrays named like the model's inputs).
            data: A .npz of the model's real inputs (optionally ``labels``): calibration recovers accuracy on
                them (``recover``), and the report's ``accuracy`` is measured on a held-out share.
            eval: A .npz of held-out samples for the accuracy report (same layout); without it a share of
                ``data`` is held out.
            wait: ``True`` to wait until the job has finished, a number of seconds to wait at most (then
                ``WaitTimeout``), ``False`` to return the queued job at once.
            progress: Called with the job after the upload and on each change while waiting.
            upload_progress: Called with ``(bytes sent, total bytes)`` as the model is uploaded.
            **options: ``ConversionConfig`` fields (``rank=2``, ``exclude=["head*"]``,
                ``input_shape={"x": (1, 3, 224, 224)}`` or ``["x=1x3x224x224"]``, …), validated here before
                anything is uploaded.

        Returns:
            The job: succeeded if waited for, else as the server accepted it.

        Raises:
            InvalidOptions: An option is unknown or invalid, or a file does not exist (nothing was sent).
            APIError: The server refused the upload (``TooLarge``, ``UnsupportedModel``, ``BadRequest``, …).
            JobFailed, JobCancelled, WaitTimeout: While waiting, as for ``wait_job``.
            TransportError: The server could not be reached or the connection failed.
        """
        call = self._convert_call(path, inputs, options, upload_progress, {"data": data, "eval": eval})
        timeout = None if wait is False else self._wait_timeout(wait)
        job = self._send(call, lambda r: self._parse_job(r, Job))
        if wait is False:
            return job
        return self._wait(job.id, timeout, progress, seen=job)

    def finetune(self, job_id: str, *, data: str | Path | None = None, eval: str | Path | None = None,
                 wait: bool | float = True, progress: Callable[[Job], Any] | None = None, **options: Any) -> Job:
        """Fine-tune a succeeded job's model as a new job (``POST /jobs/{id}/finetune``): the model is not
        uploaded again; the job's options apply, with ``options`` (``finetune_minutes``, ``epochs``,
        ``device``…) on top.

        Args:
            job_id: The finished conversion job.
            data, eval: Samples to train on and held-out samples (default: the job's own, if it had any).
            wait, progress: As for ``convert``; ``progress`` sees the fine-tune's loss and held-out metric in
                ``job.stage_detail``.

        Returns:
            The new job: succeeded if waited for, else as the server accepted it.

        Raises:
            InvalidOptions: An option is unknown or invalid, or a file does not exist (nothing was sent).
            APIError: The job is unknown (``NotFound``) or has not succeeded (``Conflict``), or there are no samples.
            JobFailed, JobCancelled, WaitTimeout: While waiting, as for ``wait_job``.
        """
        call = self._finetune_call(job_id, data, eval, options)
        timeout = None if wait is False else self._wait_timeout(wait)
        job = self._send(call, lambda r: self._parse_job(r, Job))
        if wait is False:
            return job
        return self._wait(job.id, timeout, progress, seen=job)

    def get_job(self, job_id: str) -> Job:
        """The job's current state (``GET /jobs/{id}``).

        Raises:
            NotFound: No such job for this API key.
        """
        return self._send(self._get_job_call(job_id), lambda r: self._parse_job(r, Job))

    def wait_job(self, job_id: str, *, timeout: float | None = None,
                 progress: Callable[[Job], Any] | None = None) -> Job:
        """Block until the job has finished, long-polling ``GET /jobs/{id}?wait=``.

        Without ``progress`` each request asks the server to hold it up to 30 s; with it, 1 s, so that
        ``progress(job)`` is called about once a second whenever the status, stage, progress or attempts changed.

        Args:
            job_id: The job.
            timeout: Seconds to wait at most; ``None`` for no limit.
            progress: Called with each changed state of the job.

        Returns:
            The succeeded job.

        Raises:
            JobFailed: The job failed; the error has the server's code and message.
            JobCancelled: The job was cancelled.
            WaitTimeout: It did not finish within ``timeout`` (it keeps running on the server).
        """
        return self._wait(job_id, timeout, progress, seen=None)

    def _wait(self, job_id: str, timeout: float | None, progress: Callable[[Job], Any] | None,
              seen: Job | None) -> Job:
        deadline = None if timeout is None else self._clock() + timeout
        last = None
        job = seen
        while True:
            if job is not None:
                if progress is not None and self._progress_key(job) != last:
                    last = self._progress_key(job)
                    progress(job)
                if job.done:
                    job.raise_for_status()
                    return job
            started = self._clock()
            remaining = None if deadline is None else deadline - started
            if remaining is not None and remaining <= 0 and job is not None:
                raise WaitTimeout(job, timeout or 0.0)
            job = self._send(self._get_job_call(job_id, self._poll_wait(remaining, progress is not None)),
                             lambda r: self._parse_job(r, Job))
            if not job.done:
                pause = MIN_POLL_INTERVAL_S - (self._clock() - started)
                if deadline is not None:
                    pause = min(pause, deadline - self._clock())
                if pause > 0:
                    self._sleep(pause)

    def list_jobs(self, offset: int = 0, limit: int = 20) -> JobList[Job]:
        """One page of this API key's jobs, newest first (``GET /jobs``); ``limit`` is at most 100."""
        return self._send(self._list_jobs_call(offset, limit), lambda r: self._parse_job_list(r, JobList[Job]))

    def get_report(self, job_id: str) -> Report:
        """The conversion report of a succeeded job.

        Raises:
            NotReady: The job has not succeeded.
        """
        return self._send(self._report_call(job_id), self._parse_report)

    def download_report_html(self, job_id: str, path: str | Path) -> Path:
        """Download the report of a succeeded job as one self-contained HTML page (charts, sortable layer table).

        Written atomically, like ``download_model``.

        Args:
            job_id: The job.
            path: The file to write, or an existing directory to write ``<job id>-report.html`` into.

        Returns:
            The path written.

        Raises:
            NotReady: The job has not succeeded.
        """
        out = self._report_html_target(Path(path), job_id)

        def consume(response: httpx.Response) -> Path:
            with atomic_write(out) as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            return out

        return self._send(self._report_html_call(job_id), consume)

    def download_model(self, job_id: str, path: str | Path) -> Path:
        """Download the converted model of a succeeded job.

        The answer is streamed into a temporary file next to the target, which is renamed over it once complete:
        on any failure no partial file is left behind. A dropped download is restarted (it is a ``GET``).

        Args:
            job_id: The job.
            path: The file to write, or an existing directory to write the server's file name
                (``<stem>-sepconv<suffix>``) into.

        Returns:
            The path written.

        Raises:
            NotReady: The job has not succeeded.
        """
        target = Path(path)

        def consume(response: httpx.Response) -> Path:
            out = self._download_target(target, response, job_id)
            with atomic_write(out, fsync=True) as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            return out

        return self._send(self._model_call(job_id), consume)

    def delete_job(self, job_id: str) -> None:
        """Cancel the job if it is queued or running, then delete it with its files (``DELETE /jobs/{id}``).

        Raises:
            NotFound: No such job for this API key.
        """
        self._send(self._delete_call(job_id), lambda r: None)


class AsyncClient(_BaseClient):
    """An ``async`` client of a sepconv server: ``Client``'s methods, as coroutines.

    Example::

        async with AsyncClient("http://localhost:8000") as client:
            job = await client.convert("resnet.onnx", rank=2)
            await job.download("resnet-sepconv.onnx")
            report = await job.report

    Callbacks (``progress``) may be plain functions or coroutine functions; ``upload_progress`` must be a plain
    function (httpx reads the upload file synchronously). Downloads write each chunk to disk synchronously.

    Args:
        base_url, api_key, timeout, retries: As for ``Client``.
        transport: An async httpx transport (``httpx.ASGITransport(app)`` to talk to an app in process,
            ``httpx.MockTransport``).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: Timeout | float | None = DEFAULT_TIMEOUT,
                 retries: Retries | int | None = DEFAULT_RETRIES,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retries=retries)
        self._http = httpx.AsyncClient(transport=transport, timeout=self._timeout.to_httpx(),
                                       follow_redirects=False)
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections (and the transport). The client cannot be used afterwards."""
        await self._http.aclose()

    # -- the one boundary to the network ----------------------------------------------------------------------

    async def _send(self, call: Call, consume: Callable[[httpx.Response], T | Awaitable[T]]) -> T:
        """Send ``call`` (again, as ``_BaseClient`` decides) and return ``consume`` of its successful answer."""
        attempt, maybe_delivered = 0, False
        while True:
            try:
                async with AsyncExitStack() as stack:
                    response = await self._http.send(self._build_request(call, stack), stream=True)
                    stack.push_async_callback(response.aclose)
                    if response.is_success:
                        if not call.stream:
                            await response.aread()
                        result = consume(response)
                        return await result if inspect.isawaitable(result) else result
                    await response.aread()
            except HTTPX_ERRORS as exc:
                maybe_delivered = maybe_delivered or self._maybe_delivered(exc)
                delay = self._retry_after_error(call, exc, attempt)
                if delay is None:
                    raise self._map_transport_error(call, exc) from exc
            else:
                if self._done_by_earlier_attempt(call, response, maybe_delivered):
                    result = consume(response)  # only a DELETE, whose consume ignores the answer
                    return await result if inspect.isawaitable(result) else result
                delay = self._retry_after_status(call, response, attempt)
                if delay is None:
                    raise self._api_error(response)
            await self._sleep(delay)
            attempt += 1

    def _read_job(self, response: httpx.Response) -> AsyncJob:
        return self._parse_job(response, AsyncJob)

    @staticmethod
    async def _notify(progress: Callable[[AsyncJob], Any], job: AsyncJob) -> None:
        result = progress(job)
        if inspect.isawaitable(result):
            await result

    # -- API ----------------------------------------------------------------------------------------------------

    async def convert(self, path: str | Path, *, inputs: str | Path | None = None,
                      data: str | Path | None = None, eval: str | Path | None = None, wait: bool | float = True,
                      progress: Callable[[AsyncJob], Any] | None = None,
                      upload_progress: Callable[[int, int], Any] | None = None, **options: Any) -> AsyncJob:
        """Upload a model for conversion and, by default, wait for the result; see ``Client.convert``."""
        call = self._convert_call(path, inputs, options, upload_progress, {"data": data, "eval": eval})
        timeout = None if wait is False else self._wait_timeout(wait)
        job = await self._send(call, self._read_job)
        if wait is False:
            return job
        return await self._wait(job.id, timeout, progress, seen=job)

    async def finetune(self, job_id: str, *, data: str | Path | None = None,
                       eval: str | Path | None = None, wait: bool | float = True,
                       progress: Callable[[AsyncJob], Any] | None = None, **options: Any) -> AsyncJob:
        """Fine-tune a succeeded job's model as a new job; see ``Client.finetune``."""
        call = self._finetune_call(job_id, data, eval, options)
        timeout = None if wait is False else self._wait_timeout(wait)
        job = await self._send(call, self._read_job)
        if wait is False:
            return job
        return await self._wait(job.id, timeout, progress, seen=job)

    async def get_job(self, job_id: str) -> AsyncJob:
        """The job's current state; see ``Client.get_job``."""
        return await self._send(self._get_job_call(job_id), self._read_job)

    async def wait_job(self, job_id: str, *, timeout: float | None = None,
                       progress: Callable[[AsyncJob], Any] | None = None) -> AsyncJob:
        """Wait until the job has finished; see ``Client.wait_job``."""
        return await self._wait(job_id, timeout, progress, seen=None)

    async def _wait(self, job_id: str, timeout: float | None, progress: Callable[[AsyncJob], Any] | None,
                    seen: AsyncJob | None) -> AsyncJob:
        deadline = None if timeout is None else self._clock() + timeout
        last = None
        job = seen
        while True:
            if job is not None:
                if progress is not None and self._progress_key(job) != last:
                    last = self._progress_key(job)
                    await self._notify(progress, job)
                if job.done:
                    job.raise_for_status()
                    return job
            started = self._clock()
            remaining = None if deadline is None else deadline - started
            if remaining is not None and remaining <= 0 and job is not None:
                raise WaitTimeout(job, timeout or 0.0)
            job = await self._send(self._get_job_call(job_id, self._poll_wait(remaining, progress is not None)),
                                   self._read_job)
            if not job.done:
                pause = MIN_POLL_INTERVAL_S - (self._clock() - started)
                if deadline is not None:
                    pause = min(pause, deadline - self._clock())
                if pause > 0:
                    await self._sleep(pause)

    async def list_jobs(self, offset: int = 0, limit: int = 20) -> JobList[AsyncJob]:
        """One page of this API key's jobs, newest first; see ``Client.list_jobs``."""
        return await self._send(self._list_jobs_call(offset, limit),
                                lambda r: self._parse_job_list(r, JobList[AsyncJob]))

    async def get_report(self, job_id: str) -> Report:
        """The conversion report of a succeeded job; see ``Client.get_report``."""
        return await self._send(self._report_call(job_id), self._parse_report)

    async def download_report_html(self, job_id: str, path: str | Path) -> Path:
        """Download the report as one self-contained HTML page; see ``Client.download_report_html``."""
        out = self._report_html_target(Path(path), job_id)

        async def consume(response: httpx.Response) -> Path:
            with atomic_write(out) as f:
                async for chunk in response.aiter_bytes():
                    f.write(chunk)
            return out

        return await self._send(self._report_html_call(job_id), consume)

    async def download_model(self, job_id: str, path: str | Path) -> Path:
        """Download the converted model atomically; see ``Client.download_model``."""
        target = Path(path)

        async def consume(response: httpx.Response) -> Path:
            out = self._download_target(target, response, job_id)
            with atomic_write(out, fsync=True) as f:
                async for chunk in response.aiter_bytes():
                    f.write(chunk)
            return out

        return await self._send(self._model_call(job_id), consume)

    async def delete_job(self, job_id: str) -> None:
        """Cancel the job if it is queued or running, then delete it; see ``Client.delete_job``."""
        await self._send(self._delete_call(job_id), lambda r: None)
