"""``POST /convert``: upload a model (streamed, never held in memory) with conversion options; queue a job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from converter import REPEATABLE_FIELDS, ConversionConfig
from converter.formats import expected_formats

from ...jobs.service import SERVICE_REFUSED_OPTIONS
from ...schemas import JobPublic
from ..deps import JobsDep, OwnerDep
from ..errors import ERROR_RESPONSES
from ..upload import read_multipart

__all__ = ["router"]

router = APIRouter(prefix="/convert", tags=["convert"])


def _field_schema(name: str) -> dict[str, Any]:
    """The form field schema of one ConversionConfig field: list/dict fields are repeated string fields."""
    field = ConversionConfig.model_fields[name]
    prop = ConversionConfig.model_json_schema()["properties"][name]
    if name in REPEATABLE_FIELDS:
        example = {"exclude": "head*", "layer_rank": "stem.*=4", "input_shape": "x=1x3x224x224",
                   "image_mean": "0.485,0.456,0.406", "image_std": "0.229,0.224,0.225"}[name]
        return {"type": "array", "items": {"type": "string", "minLength": 1, "example": example},
                "description": field.description}
    variants = [v for v in prop.get("anyOf", [prop]) if v.get("type") != "null"]
    schema = {k: v for k, v in variants[0].items() if k != "title"}
    schema["description"] = field.description
    return schema


def _form_schema() -> dict[str, Any]:
    props: dict[str, Any] = {
        "model": {"type": "string", "format": "binary",
                  "description": f"The model: {expected_formats()}."},
        "data": {"type": "string", "format": "binary",
                 "description": "Optional .npz of samples of the model's inputs ('inputs' or arrays named like "
                                "the inputs, optional integer 'labels'): calibration recovers accuracy on them and "
                                "the report's accuracy is measured on a held-out share."},
        "eval": {"type": "string", "format": "binary",
                 "description": "Optional .npz of held-out samples for the accuracy report (same layout as data)."},
        "inputs": {"type": "string", "format": "binary",
                   "description": "Optional .npz of verification inputs ('inputs' array, or arrays named like the "
                                  "model's inputs)."},
    }
    props.update({name: _field_schema(name) for name in ConversionConfig.model_fields
                  if name not in SERVICE_REFUSED_OPTIONS})
    encoding = {name: {"style": "form", "explode": True} for name, p in props.items() if p.get("type") == "array"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["model"], "properties": props}, "encoding": encoding}}}}


@router.post("", status_code=202, response_model=JobPublic, openapi_extra=_form_schema(),
             responses={200: {"model": JobPublic, "description": "The job finished within `wait`."},
                        **{s: ERROR_RESPONSES[s] for s in (400, 401, 413, 415, 503)}})
async def convert(
    request: Request,
    response: Response,
    owner: OwnerDep,
    jobs: JobsDep,
    wait: Annotated[float, Query(ge=0, le=600, description="Seconds to block for the job to finish.")] = 0,
) -> JobPublic:
    """Upload a model and options; queue its conversion."""
    length = request.headers.get("content-length")
    await jobs.check_capacity(int(length) if length and length.isdigit() else None)
    job = await jobs.submit(owner, read_multipart(request.headers.get("content-type"), request.stream()))
    if wait > 0:
        job = await jobs.wait(owner, job.id, wait)
    if job.is_final:
        response.status_code = 200
    return JobPublic.from_job(job)
