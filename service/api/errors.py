"""Error translation: every error answer of the API has one JSON shape,
``{"error": {"code": …, "message": …, "detail": …}}``, and the mapping from error codes to HTTP statuses lives
here and nowhere else.

Handlers cover the service layer's errors, the converter's (``SepconvError``: invalid options → 400),
FastAPI's request validation (→ 400 ``invalid_options`` naming the parameter), Starlette's HTTP errors (unknown
route → 404, wrong method → 405) and, last, any other exception (→ 500 ``internal``, logged with its traceback,
answered without one).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from converter import SepconvError

from ..core.storage import StorageError
from ..jobs.errors import QueueFullError, ServiceError
from ..schemas import ErrorResponse

__all__ = ["ERROR_RESPONSES", "STATUS_OF", "error_response", "install_error_handlers"]

log = logging.getLogger("sepconv.api")

#: Error code → HTTP status.
STATUS_OF = {
    "invalid_options": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "not_ready": 409,
    "too_large": 413,
    "unsupported_model": 415,
    "queue_full": 503,
    "unavailable": 503,
    "internal": 500,
}

_CODE_OF_STATUS = {400: "invalid_options", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                   409: "not_ready", 413: "too_large", 415: "unsupported_model", 503: "unavailable"}


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


#: OpenAPI ``responses`` entries for the error statuses, by status.
ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    400: _doc("Invalid options or parameters (`invalid_options`)."),
    401: _doc("Missing or unknown API key (`unauthorized`)."),
    404: _doc("No such job for this key (`not_found`)."),
    409: _doc("The job has not succeeded (`not_ready`)."),
    413: _doc("The upload exceeds SEPCONV_MAX_UPLOAD_BYTES (`too_large`)."),
    415: _doc("The upload is not ONNX, an ONNX .zip or TorchScript (`unsupported_model`)."),
    503: _doc("Queue full (`queue_full`, with Retry-After) or a dependency is down (`unavailable`)."),
}


def error_response(status: int, code: str, message: str, detail: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A response in the API's one error shape."""
    return JSONResponse({"error": {"code": code, "message": message, "detail": detail}}, status_code=status,
                        headers=headers)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:1000]


def install_error_handlers(app: FastAPI) -> None:
    """Make every error answer of ``app`` use the one shape."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
        if exc.code == "unauthorized":
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(STATUS_OF.get(exc.code, 500), exc.code, _one_line(str(exc)), headers=headers)

    @app.exception_handler(SepconvError)
    async def _converter(request: Request, exc: SepconvError) -> JSONResponse:
        status = 415 if exc.code == "unsupported_model" else 400
        code = exc.code if exc.code in STATUS_OF else "invalid_options"
        return error_response(status, code, _one_line(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "header", "body")]
            parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
        return error_response(400, "invalid_options", _one_line("invalid parameters: " + "; ".join(parts)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, "internal" if exc.status_code >= 500 else "invalid_options")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, code, _one_line(message), headers=getattr(exc, "headers", None))

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        log.error("storage error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "unavailable", "the file storage is unavailable; try again later")

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "unavailable", "the job database is unavailable; try again later")

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Not an error of ours: the client hung up (mid-upload, say). Nobody reads the answer.
        log.info("client went away during %s %s", request.method, request.url.path)
        return error_response(400, "invalid_options", "the client closed the connection before the request ended")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error (a bug in sepconv; it has been logged)")
