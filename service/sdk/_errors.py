"""The exceptions the SDK raises, and nothing else.

Every error derives from one base, which is itself a ``converter.SepconvError`` so that a caller (the
``sepconv`` CLI among them) catches one type for every sepconv failure and prints its one-line message::

    SepconvError                         (converter)
    └── SepconvClientError               base of every SDK error
        ├── InvalidOptions               options rejected: client-side, before any upload (also a
        │                                converter.InvalidOptionsError and a ValueError)
        ├── APIError                     the server answered with an error: .status, .code, .message, .detail
        │   ├── BadRequest         400   invalid_options (also an InvalidOptions)
        │   ├── Unauthorized       401   unauthorized
        │   ├── NotFound           404   not_found (unknown job, or another key's job)
        │   ├── NotReady           409   not_ready (model/report of a job that has not succeeded)
        │   ├── TooLarge           413   too_large
        │   ├── UnsupportedModel   415   unsupported_model
        │   ├── ServiceUnavailable 503   queue_full / unavailable (.retry_after)
        │   └── ServerError        5xx   internal, or a proxy's 502/504
        ├── TransportError               could not talk to the server (connect, read, write, timeout, protocol)
        ├── UnexpectedResponse           the server answered 2xx with a body that does not match the contract
        ├── JobFailed                    the job ended "failed": .job, .code, .message (the server's)
        ├── JobCancelled                 the job ended "cancelled": .job
        └── WaitTimeout                  the job did not finish in time (it keeps running): .job; a TimeoutError

httpx exceptions are mapped into these types in one place (``_BaseClient._map_transport_error``, called from
the single ``_send`` of each client), so no httpx exception reaches a caller. This module holds no logic
beyond building messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from converter import InvalidOptionsError, SepconvError

if TYPE_CHECKING:
    from ._models import JobBase

__all__ = [
    "APIError",
    "BadRequest",
    "InvalidOptions",
    "JobCancelled",
    "JobFailed",
    "NotFound",
    "NotReady",
    "SepconvClientError",
    "ServerError",
    "ServiceUnavailable",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedModel",
    "WaitTimeout",
]


class SepconvClientError(SepconvError):
    """Base of every error the SDK raises. Its message is one line a user can act on."""

    code = "client_error"


class InvalidOptions(SepconvClientError, InvalidOptionsError):
    """Conversion options are unknown, out of range or contradictory; raised before anything is uploaded."""

    code = "invalid_options"


class APIError(SepconvClientError):
    """The server answered with an error status.

    Attributes:
        status: The HTTP status code.
        code: The machine-readable code of the contract's error body (``invalid_options``, ``not_found``, …);
            ``http_<status>`` when the body was not the contract's (a proxy's HTML page, say).
        message: The server's one-line message.
        detail: The server's ``detail`` value, if any.
        retry_after: Seconds the server asked to wait (``Retry-After``), if it said.
    """

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(APIError, InvalidOptions):
    """400: the server rejected the options or a query parameter."""


class Unauthorized(APIError):
    """401: the API key is missing or unknown."""


class NotFound(APIError):
    """404: no such job for this API key (or no such route)."""


class NotReady(APIError):
    """409: the model or report of a job that has not succeeded was asked for."""


class TooLarge(APIError):
    """413: the upload is larger than the server accepts."""


class UnsupportedModel(APIError):
    """415: the upload is not ONNX, an ONNX .zip or TorchScript."""


class ServiceUnavailable(APIError):
    """503: the queue is full or a dependency of the server is down; see ``retry_after``."""


class ServerError(APIError):
    """500 or another 5xx: a bug in the server or a failing proxy in front of it."""


class TransportError(SepconvClientError):
    """The request could not be completed: the connection failed, dropped, or timed out."""

    code = "transport_error"


class UnexpectedResponse(SepconvClientError):
    """The server answered with success, but the body does not match the HTTP contract."""

    code = "unexpected_response"


class JobFailed(SepconvClientError):
    """The job ended with status ``failed``.

    Attributes:
        job: The job as last seen.
        code: The server's error code for the job (``conversion_failed``, ``unsupported_model``, …).
        message: The server's message.
    """

    def __init__(self, job: JobBase) -> None:
        err = job.error
        self.job = job
        self.code = err.code if err is not None else "failed"
        self.message = err.message if err is not None else "the job failed without saying why"
        super().__init__(f"job {job.id} failed: {self.message} ({self.code})")


class JobCancelled(SepconvClientError):
    """The job ended with status ``cancelled``. Attributes: ``job``, the job as last seen."""

    code = "cancelled"

    def __init__(self, job: JobBase) -> None:
        self.job = job
        super().__init__(f"job {job.id} was cancelled")


class WaitTimeout(SepconvClientError, TimeoutError):
    """The job did not finish within the time given; it is still queued or running on the server.

    Attributes:
        job: The job as last seen.
        timeout: The seconds that were waited.
    """

    code = "wait_timeout"

    def __init__(self, job: JobBase | None, timeout: float, job_id: str = "") -> None:
        self.job = job
        self.timeout = timeout
        where = f" (still {job.status}, stage {job.stage}, {job.progress:.0%})" if job is not None else ""
        super().__init__(f"job {job.id if job is not None else job_id} did not finish within {timeout:g} s{where}")
