"""What ``Client`` and ``AsyncClient`` share, none of which does I/O: URL building, request payloads, answer
parsing, error mapping and retry decisions.

The two clients differ only in how they send (``httpx.Client`` vs ``httpx.AsyncClient``), sleep and call
callbacks; everything that decides *what* to send and *what an answer means* is here, once, and is unit-tested
without a network.

Retry policy (``Retries`` sets how many and how long):

* ``429`` and ``503`` answers are retried for every request, ``POST /convert`` included: the server refused
  the request before doing anything (the contract's ``queue_full``/``unavailable``), so sending it again cannot
  create a second job. ``Retry-After`` is honoured.
* ``502``/``504`` (a proxy in front of the server) are retried for ``GET`` and ``DELETE`` only.
* Transport failures: a connect error or timeout, or a pool timeout, means the request never left this
  process, so it is retried for every request. A dropped connection, a read/write error or a read timeout
  may come *after* the server received the request; that is retried only for ``GET`` and ``DELETE``, which
  are idempotent. ``POST /convert`` is then *not* resent: the server may already have queued the job, the
  contract has no idempotency key, and a second upload would run (and bill) a duplicate job. The caller gets a
  ``TransportError`` and can look for the job with ``list_jobs()``.
* ``POST /convert`` is sent without ``?wait=``: the upload request ends as soon as the job is queued, and the
  waiting is done by ``GET /jobs/{id}?wait=`` long-polls, which can be retried safely. (A POST held open for
  minutes would be the one request whose dropped connection cannot be retried.)
* When a ``POST /convert`` is resent, the model (and inputs) file is opened again from disk for each attempt,
  so a retry never depends on the previous attempt's half-consumed stream.
* A ``DELETE`` retried after a possibly-delivered attempt that then answers 404 is taken as done: the first
  attempt deleted the job.
"""

from __future__ import annotations

import email.message
import email.utils
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from converter import ConversionConfig, InvalidOptionsError, Report, __version__

from ._errors import (
    APIError,
    BadRequest,
    InvalidOptions,
    NotFound,
    NotReady,
    SepconvClientError,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedModel,
)
from ._io import ProgressReader
from ._models import JobBase, JobList, JobT
from ._types import Retries, Timeout

__all__ = ["HTTPX_ERRORS", "Call", "FilePart", "_BaseClient", "encode_options"]

M = TypeVar("M", bound=BaseModel)

#: Everything httpx raises on purpose; caught at the single boundary in each client's ``_send``.
HTTPX_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)

#: Transport failures after which the request certainly did not reach the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport failures worth retrying for an idempotent request (the connection dropped or stalled).
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

_STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 409: NotReady, 413: TooLarge, 415: UnsupportedModel,
    503: ServiceUnavailable,
}
_RETRY_ALWAYS = frozenset({429, 503})
_RETRY_IDEMPOTENT = frozenset({502, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE"})

#: Longest ``?wait=`` of one long-poll when nobody watches progress (proxies often cut idle requests at 60 s).
LONG_POLL_S = 30.0
#: ``?wait=`` of one poll while a progress callback is watching: how often it sees an update.
WATCH_POLL_S = 1.0
#: Least time between two polls, should a server answer before ``wait`` is over or ignore it.
MIN_POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class FilePart:
    """A file of a multipart upload, opened anew for each attempt.

    Attributes:
        name: The form field (``model``, ``inputs``).
        path: The local file.
        on_read: Called with ``(bytes sent, total bytes)`` as the file is read for sending.
    """

    name: str
    path: Path
    on_read: Callable[[int, int], object] | None = None


@dataclass(frozen=True)
class Call:
    """One API request as data: what to send, and how it may be retried.

    Attributes:
        method: HTTP method.
        path: Path relative to the base URL (no leading slash).
        params: Query parameters.
        data: Form fields (a list value repeats the field).
        files: Files of a multipart body.
        extra_read: Seconds to add to the read timeout (the server was asked to hold the answer that long).
        stream: Hand the answer's body to the caller as a stream (a download) instead of reading it whole.
    """

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    data: Mapping[str, str | list[str]] | None = None
    files: tuple[FilePart, ...] = field(default_factory=tuple)
    extra_read: float = 0.0
    stream: bool = False

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice does no more than sending it once."""
        return self.method in _IDEMPOTENT_METHODS


def _encode_value(name: str, value: Any) -> str | list[str]:
    if isinstance(value, bool):
        return "true" if value else "false"
    if name == "input_shape":
        return [f"{k}={'x'.join(str(d) for d in dims)}" for k, dims in value.items()]
    if isinstance(value, Mapping):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return str(value)


def encode_options(options: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Validate conversion options with ``ConversionConfig`` and encode those given as the contract's form fields.

    Lists repeat the field (``exclude=a``, ``exclude=b``), ``input_shape``/``layer_rank`` become ``NAME=...``
    strings, booleans ``true``/``false``. Options passed as ``None`` are left out (the server's default).

    Raises:
        InvalidOptions: An option is unknown, out of range or contradicts another; the message names it.
    """
    try:
        config = ConversionConfig.from_options(**options)
    except InvalidOptionsError as e:
        raise InvalidOptions(str(e)) from None
    given = config.model_dump(include=config.model_fields_set)
    return {name: _encode_value(name, value) for name, value in given.items() if value is not None}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _attachment_filename(response: httpx.Response) -> str | None:
    value = response.headers.get("content-disposition")
    if not value:
        return None
    msg = email.message.Message()
    msg["content-disposition"] = value
    name = msg.get_filename()
    if not name:
        return None
    name = Path(name.replace("\\", "/")).name  # never let the server choose a directory
    return name if name not in ("", ".", "..") else None


class _BaseClient:
    """State and logic shared by ``Client`` and ``AsyncClient``; no I/O.

    Args:
        base_url: The server, e.g. ``http://localhost:8000`` (a path prefix is kept: ``https://host/sepconv``).
        api_key: Sent as ``Authorization: Bearer <key>``; ``None`` for a server without keys.
        timeout: A ``Timeout``, or seconds for all four timeouts, or ``None`` for none.
        retries: A ``Retries``, or the number of retries, or ``None`` for none.
    """

    def __init__(self, base_url: str, *, api_key: str | None, timeout: Timeout | float | None,
                 retries: Retries | int | None) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError) as e:
            raise SepconvClientError(f"invalid server URL {base_url!r}: {e}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise SepconvClientError(f"invalid server URL {base_url!r}: expected http://HOST[:PORT][/PREFIX]")
        if not url.raw_path.endswith(b"/"):
            url = url.copy_with(raw_path=url.raw_path + b"/")
        self._base_url = url.copy_with(query=None, fragment=None)
        self._timeout = Timeout.coerce(timeout)
        self._retries = Retries.coerce(retries)
        self._headers = {"User-Agent": f"sepconv-sdk/{__version__}", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # Seams for tests (and for callers with their own clocks): the clients sleep and read time only here.
        self._clock: Callable[[], float] = time.monotonic

    @property
    def base_url(self) -> str:
        """The server's base URL, with a trailing slash."""
        url = str(self._base_url)
        return url if url.endswith("/") else url + "/"

    @property
    def timeout(self) -> Timeout:
        """The timeouts of every request."""
        return self._timeout

    @property
    def retries(self) -> Retries:
        """The retry policy."""
        return self._retries

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- requests -------------------------------------------------------------------------------------------

    @staticmethod
    def _job_path(job_id: str, suffix: str = "") -> str:
        if not isinstance(job_id, str) or not job_id:
            raise SepconvClientError(f"a job id is a non-empty string, not {job_id!r}")
        return "jobs/" + quote(job_id, safe="") + suffix

    def _build_request(self, call: Call, files: ExitStack | AsyncExitStack) -> httpx.Request:
        """The ``httpx.Request`` for ``call``; its files are opened into ``files``, which closes them."""
        parts: list[tuple[str, tuple[str, IO[bytes], str]]] = []
        for part in call.files:
            handle = files.enter_context(open(part.path, "rb"))  # noqa: SIM115 (closed by the ExitStack)
            # httpx reads any file-like object (read, seek, tell, fileno); its types name only IO[bytes].
            body = cast(IO[bytes], ProgressReader(handle, part.on_read)) if part.on_read is not None else handle
            parts.append((part.name, (part.path.name, body, "application/octet-stream")))
        timeout = self._timeout.to_httpx(extra_read=call.extra_read)
        return httpx.Request(
            call.method, self._base_url.join(call.path), params=call.params, headers=self._headers,
            data=call.data, files=parts or None, extensions={"timeout": timeout.as_dict()},
        )

    def _convert_call(self, path: str | Path, inputs: str | Path | None, options: Mapping[str, Any],
                      upload_progress: Callable[[int, int], object] | None,
                      samples: Mapping[str, str | Path | None] | None = None) -> Call:
        data = encode_options(options)
        model = Path(path)
        files = [FilePart("model", model, upload_progress)]
        if inputs is not None:
            files.append(FilePart("inputs", Path(inputs)))
        for name, file in (samples or {}).items():  # ``data`` and ``eval``: samples for recovery and accuracy
            if file is not None:
                files.append(FilePart(name, Path(file)))
        for part in files:
            if not part.path.is_file():
                raise InvalidOptions(f"{part.name} file not found: {part.path}")
        return Call("POST", "convert", data=data, files=tuple(files))

    @staticmethod
    def _sample_parts(data_path: str | Path | None, eval_path: str | Path | None) -> list[FilePart]:
        parts = [FilePart(name, Path(p)) for name, p in (("data", data_path), ("eval", eval_path)) if p is not None]
        for part in parts:
            if not part.path.is_file():
                raise InvalidOptions(f"{part.name} file not found: {part.path}")
        return parts

    def _finetune_call(self, job_id: str, data_path: str | Path | None, eval_path: str | Path | None,
                       options: Mapping[str, Any]) -> Call:
        return Call("POST", self._job_path(job_id, "/finetune"), data=encode_options(options),
                    files=tuple(self._sample_parts(data_path, eval_path)))

    def _get_job_call(self, job_id: str, wait: float = 0.0) -> Call:
        if wait > 0:
            return Call("GET", self._job_path(job_id), params={"wait": f"{wait:g}"}, extra_read=wait)
        return Call("GET", self._job_path(job_id))

    def _list_jobs_call(self, offset: int, limit: int) -> Call:
        return Call("GET", "jobs", params={"offset": offset, "limit": limit})

    def _report_call(self, job_id: str) -> Call:
        return Call("GET", self._job_path(job_id, "/report"))

    def _report_html_call(self, job_id: str) -> Call:
        return Call("GET", self._job_path(job_id, "/report.html"), stream=True)

    @staticmethod
    def _report_html_target(path: Path, job_id: str) -> Path:
        """The HTML report's file: ``path``, or ``<job id>-report.html`` inside ``path`` when it is a folder."""
        return path / f"{job_id}-report.html" if path.is_dir() else path

    def _model_call(self, job_id: str) -> Call:
        return Call("GET", self._job_path(job_id, "/model"), stream=True)

    def _delete_call(self, job_id: str) -> Call:
        return Call("DELETE", self._job_path(job_id))

    @staticmethod
    def _wait_timeout(wait: bool | float) -> float | None:
        """``convert(wait=…)`` as a timeout: ``True`` → no limit, a number → that many seconds."""
        if wait is True:
            return None
        if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
            raise SepconvClientError(f"wait is True, False or a number of seconds >= 0, not {wait!r}")
        return float(wait)

    @staticmethod
    def _poll_wait(remaining: float | None, watching: bool) -> float:
        """``?wait=`` for the next poll: short while a progress callback watches, long otherwise."""
        wait = WATCH_POLL_S if watching else LONG_POLL_S
        return max(0.0, wait if remaining is None else min(wait, remaining))

    @staticmethod
    def _progress_key(job: JobBase) -> tuple:
        return job.status, job.stage, job.progress, job.attempts

    @staticmethod
    def _download_target(path: Path, response: httpx.Response, job_id: str) -> Path:
        """The file to write: ``path``, or in directory ``path`` the name the server suggests."""
        if path.is_dir():
            return path / (_attachment_filename(response) or f"{job_id}-sepconv.bin")
        return path

    # -- answers --------------------------------------------------------------------------------------------

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as e:
            what = f"{response.request.method} {response.request.url.path}"
            first: Mapping[str, Any] = e.errors()[0] if e.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise UnexpectedResponse(
                f"the server's answer to {what} is not a valid {model.__name__}"
                f" ({where + ': ' if where else ''}{first.get('msg', 'invalid')})") from None

    def _parse_job(self, response: httpx.Response, job_type: type[JobT]) -> JobT:
        job = self._parse(response, job_type)
        job._client = self
        return job

    def _parse_job_list(self, response: httpx.Response, list_type: type[JobList[JobT]]) -> JobList[JobT]:
        page = self._parse(response, list_type)
        for job in page.data:
            job._client = self
        return page

    def _parse_report(self, response: httpx.Response) -> Report:
        return self._parse(response, Report)

    @staticmethod
    def _api_error(response: httpx.Response) -> APIError:
        """The SDK error for a non-2xx answer, from the contract's ``{"error": {...}}`` body when it has one."""
        status = response.status_code
        code, message, detail = f"http_{status}", "", None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            code = str(err.get("code") or code)
            message = str(err.get("message") or "")
            detail = err.get("detail")
        if not message:
            text = " ".join(response.text.split())[:200] if response.content else ""
            message = f"{response.request.method} {response.request.url.path}: HTTP {status} " \
                      f"{response.reason_phrase}" + (f": {text}" if text else "")
        cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else APIError)
        return cls(status, code, message, detail, retry_after=_retry_after(response))

    @staticmethod
    def _map_transport_error(call: Call, exc: Exception) -> SepconvClientError:
        """The SDK error for an httpx exception (the one place where httpx errors are translated)."""
        what = f"{call.method} /{call.path}"
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return TransportError(f"could not connect to the server for {what}: {exc or type(exc).__name__}")
        if isinstance(exc, httpx.TimeoutException):
            kind = {httpx.ReadTimeout: "waiting for the answer", httpx.WriteTimeout: "sending",
                    httpx.PoolTimeout: "waiting for a free connection"}.get(type(exc), "")
            return TransportError(f"{what} timed out{' ' + kind if kind else ''}")
        if isinstance(exc, httpx.RemoteProtocolError | httpx.NetworkError):
            return TransportError(f"{what}: the connection dropped ({exc or type(exc).__name__})")
        return TransportError(f"{what} failed: {type(exc).__name__}: {exc}")

    # -- retries --------------------------------------------------------------------------------------------

    def _retry_after_error(self, call: Call, exc: Exception, attempt: int) -> float | None:
        """Seconds to wait before resending after transport error ``exc``, or ``None`` not to resend."""
        if isinstance(exc, _NOT_SENT) or (call.idempotent and isinstance(exc, _TRANSIENT)):
            return self._retries.delay(attempt)
        return None

    def _retry_after_status(self, call: Call, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before resending after error answer ``response``, or ``None`` not to resend."""
        status = response.status_code
        if status in _RETRY_ALWAYS or (call.idempotent and status in _RETRY_IDEMPOTENT):
            return self._retries.delay(attempt, _retry_after(response))
        return None

    @staticmethod
    def _maybe_delivered(exc: Exception) -> bool:
        """Whether the server may have received (and acted on) a request that failed with ``exc``."""
        return not isinstance(exc, _NOT_SENT)

    @staticmethod
    def _done_by_earlier_attempt(call: Call, response: httpx.Response, maybe_delivered: bool) -> bool:
        """A retried ``DELETE`` answered 404 after an attempt that may have arrived: that attempt deleted it."""
        return call.method == "DELETE" and response.status_code == 404 and maybe_delivered
