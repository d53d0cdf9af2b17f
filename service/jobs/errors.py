"""The service layer's errors. Each has a stable ``code`` (the one in the API's error body); the API maps codes to
HTTP statuses in ``service.api.errors`` and nowhere else. Converter errors (``converter.SepconvError``) pass
through unchanged and carry their own codes."""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ExecutorUnavailableError",
    "JobNotFoundError",
    "JobNotReadyError",
    "QueueFullError",
    "ServiceError",
    "UnavailableError",
    "UnsupportedUploadError",
    "UploadTooLargeError",
]


class ServiceError(Exception):
    """Base of the service layer's errors; the message is one line a user can act on."""

    code = "internal"


class BadRequestError(ServiceError):
    """The request is malformed (not multipart, no model part, an unknown file part)."""

    code = "invalid_options"


class JobNotFoundError(ServiceError):
    """No such job for this owner (another owner's job is not found either)."""

    code = "not_found"


class JobNotReadyError(ServiceError):
    """A result was asked of a job that has not succeeded."""

    code = "not_ready"


class QueueFullError(ServiceError):
    """Too many jobs are queued; try again after ``retry_after`` seconds."""

    code = "queue_full"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UploadTooLargeError(ServiceError):
    """The upload exceeds ``SEPCONV_MAX_UPLOAD_BYTES``."""

    code = "too_large"


class UnsupportedUploadError(ServiceError):
    """The uploaded model's first bytes are not ONNX, an ONNX .zip or TorchScript (or it is empty)."""

    code = "unsupported_model"


class ExecutorUnavailableError(Exception):
    """The executor cannot accept jobs now (e.g. the broker is unreachable); the job service turns it into an
    ``UnavailableError`` for the API."""


class UnavailableError(ServiceError):
    """A dependency (database, storage, broker) does not answer."""

    code = "unavailable"
