"""``/jobs``: list, look up (optionally waiting), download the model and report, fine-tune a finished job,
cancel/delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse

from ...jobs.errors import BadRequestError
from ...jobs.service import FieldPart, FilePart
from ...schemas import JobPublic, JobsPublic
from ..deps import JobsDep, OwnerDep
from ..errors import ERROR_RESPONSES
from ..upload import read_multipart

__all__ = ["router"]

router = APIRouter(prefix="/jobs", tags=["jobs"])

_COMMON: dict[int | str, dict[str, Any]] = {s: ERROR_RESPONSES[s] for s in (400, 401, 404, 503)}


def _attachment(filename: str) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("", response_model=JobsPublic, responses=_COMMON)
async def list_jobs(
    owner: OwnerDep,
    jobs: JobsDep,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobsPublic:
    """List your jobs, newest first."""
    rows, count = await jobs.list(owner, offset, limit)
    return JobsPublic(data=[JobPublic.from_job(j) for j in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=_COMMON)
async def get_job(
    job_id: str,
    owner: OwnerDep,
    jobs: JobsDep,
    wait: Annotated[float, Query(ge=0, le=600, description="Seconds to block until the job has finished.")] = 0,
) -> Response:
    """Get a job (with `wait`, once it has finished or the time is up)."""
    job = await (jobs.wait(owner, job_id, wait) if wait > 0 else jobs.get(owner, job_id))
    # Serialised here, once: FastAPI would validate the model again before serialising it (the endpoint is
    # polled; response_model still documents the shape).
    return Response(JobPublic.from_job(job).model_dump_json(by_alias=True), media_type="application/json")


@router.get("/{job_id}/model", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}},
                             "description": "The converted model."},
                       409: ERROR_RESPONSES[409], **_COMMON})
async def get_model(job_id: str, owner: OwnerDep, jobs: JobsDep) -> StreamingResponse:
    """Download the converted model."""
    chunks, filename = await jobs.open_model(owner, job_id)
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Disposition": _attachment(filename)})


@router.get("/{job_id}/report", response_class=StreamingResponse,
            responses={200: {"content": {"application/json": {"schema": {"type": "object"}}},
                             "description": "The JSON report (converter.Report)."},
                       409: ERROR_RESPONSES[409], **_COMMON})
async def get_report(job_id: str, owner: OwnerDep, jobs: JobsDep) -> StreamingResponse:
    """Download the JSON report."""
    return StreamingResponse(await jobs.open_report(owner, job_id), media_type="application/json")


#: The report page holds its own styles and script and needs nothing else; keep it that way when it is opened from
#: the API's origin (a layer name is user input, and it is escaped, but a policy costs nothing).
_REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
               "frame-ancestors 'self'")


# response_class=Response (no media type): the error answers stay documented as JSON, as they are sent.
@router.get("/{job_id}/report.html", response_class=Response,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}},
                             "description": "The report as one self-contained HTML page."},
                       409: ERROR_RESPONSES[409], **_COMMON})
async def get_report_html(job_id: str, owner: OwnerDep, jobs: JobsDep) -> HTMLResponse:
    """Download the report as one self-contained HTML page."""
    return HTMLResponse(await jobs.report_html(owner, job_id),
                        headers={"Content-Security-Policy": _REPORT_CSP, "X-Content-Type-Options": "nosniff"})


#: Largest url-encoded form a fine-tune request may carry (it holds option fields only).
_MAX_FORM_BYTES = 64 * 1024


async def _form_fields(request: Request) -> AsyncIterator[FieldPart | FilePart]:
    """The option fields of an ``application/x-www-form-urlencoded`` body (or of an empty one)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise BadRequestError(f"a url-encoded form is limited to {_MAX_FORM_BYTES} bytes; send files as "
                                  "multipart/form-data")
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        yield FieldPart(name, value)


@router.post("/{job_id}/finetune", status_code=202, response_model=JobPublic,
             responses={409: ERROR_RESPONSES[409], 413: ERROR_RESPONSES[413], **_COMMON})
async def finetune_job(job_id: str, request: Request, owner: OwnerDep, jobs: JobsDep) -> JobPublic:
    """Fine-tune a succeeded job's model as a new job (optional multipart: data, eval, option fields)."""
    length = request.headers.get("content-length")
    await jobs.check_capacity(int(length) if length and length.isdigit() else None)
    content_type = request.headers.get("content-type") or ""
    parts = (read_multipart(content_type, request.stream()) if content_type.startswith("multipart/")
             else _form_fields(request))
    return JobPublic.from_job(await jobs.finetune(owner, job_id, parts))


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_COMMON)
async def delete_job(job_id: str, owner: OwnerDep, jobs: JobsDep) -> Response:
    """Cancel a job if it is queued or running, then delete its files and record."""
    await jobs.delete(owner, job_id)
    return Response(status_code=204)
