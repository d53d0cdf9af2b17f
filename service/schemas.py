"""The HTTP API's JSON shapes (see ``docs/http-api.md``): ``JobPublic``/``JobsPublic``, the one error shape, and
the health answers. They are built from ``service.models.Job`` rows; nothing here touches the database."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from converter import JOB_STAGES
from converter.formats import format_names

from .models import Job

#: The registered model formats (``converter.formats``): the one list the API schema takes them from. Known only at
#: run time, so a type checker sees a string (as it does the job stages below); pydantic sees the Literal.
if TYPE_CHECKING:
    FormatName = str
    JobStageName = str
else:
    FormatName = Literal[format_names()]
    JobStageName = Literal[JOB_STAGES]  # from the stage table, the one list

__all__ = ["ErrorBody", "ErrorResponse", "Health", "JobError", "JobLinks", "JobPublic", "JobsPublic", "Readiness",
           "ReadinessChecks"]

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(description="Stable machine-readable code: the converter's (invalid_options, "
                                  "unsupported_model, conversion_failed, verification_failed) or the service's "
                                  "(out_of_memory, timeout, crashed, worker_lost, internal).")
    message: str = Field(description="One line a user can act on.")


class JobLinks(BaseModel):
    """Where to find the job and its results."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    self_: str = Field(alias="self")
    model: str
    report: str


class JobPublic(BaseModel):
    """A conversion job as the API shows it."""

    id: str = Field(description="Opaque job id.")
    status: JobStatusName
    stage: JobStageName
    progress: float = Field(ge=0.0, le=1.0)
    stage_detail: dict[str, Any] | None = Field(
        None, description="What the running stage last reported besides its progress (e.g. epoch, loss and "
                          "metric while fine-tuning); null when it reports nothing.")
    filename: str = Field(description="The uploaded file's name.")
    format: FormatName | None = Field(description="The model's format, once detected.")
    options: dict[str, Any] = Field(description="The ConversionConfig fields that were set.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int = Field(ge=0, description="Times a worker started the job.")
    error: JobError | None
    links: JobLinks

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        """The public view of a job row."""
        base = f"/jobs/{job.id}"
        return cls(
            id=job.id, status=job.status, stage=job.stage, progress=job.progress, stage_detail=job.stage_detail,
            filename=job.filename,
            format=job.format, options=job.options or {}, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at, attempts=job.attempts,
            error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            links=JobLinks(self_=base, model=f"{base}/model", report=f"{base}/report"))


class JobsPublic(BaseModel):
    """A page of jobs, newest first, and the total number of the caller's jobs."""

    data: list[JobPublic]
    count: int


class ErrorBody(BaseModel):
    """An error: a stable code, one line a user can act on, and optional structured detail."""

    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    """Every error answer has this shape."""

    error: ErrorBody


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"


class ReadinessChecks(BaseModel):
    """Each dependency: does it answer?"""

    database: bool
    queue: bool
    storage: bool


class Readiness(BaseModel):
    """Readiness: ok when every check passes."""

    status: Literal["ok", "unavailable"]
    checks: ReadinessChecks
