"""The sepconv Python SDK: submit models to a sepconv server, wait for the job, fetch the model and the report.

Needs only httpx and pydantic (and the torch-free part of ``converter``: the shared ``ConversionConfig`` and
``Report``), so it installs anywhere. The public surface is what ``__all__`` lists; everything else lives in
private modules and may change.

Example::

    from service.sdk import Client

    with Client("http://localhost:8000", api_key="...") as client:
        job = client.convert("resnet.onnx", rank=2, exclude=["head*"], progress=print)
        job.download("resnet-sepconv.onnx")
        print(job.report.fidelity.rel_l2, job.report.latency.speedup)

``AsyncClient`` has the same methods as coroutines (``job = await client.convert(...)``,
``report = await job.report``). Errors derive from ``SepconvClientError`` (itself a ``converter.SepconvError``);
see ``service.sdk._errors`` for the tree. Which failures are retried, and why an upload that may have reached
the server is not sent twice, is written in ``service.sdk._base``.
"""

from __future__ import annotations

from ._client import AsyncClient, Client
from ._errors import (
    APIError,
    BadRequest,
    InvalidOptions,
    JobCancelled,
    JobFailed,
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
    WaitTimeout,
)
from ._models import AsyncJob, Job, JobFailure, JobList, JobStatus
from ._types import Retries, Timeout

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncJob",
    "BadRequest",
    "Client",
    "InvalidOptions",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobFailure",
    "JobList",
    "JobStatus",
    "NotFound",
    "NotReady",
    "Retries",
    "SepconvClientError",
    "ServerError",
    "ServiceUnavailable",
    "Timeout",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedModel",
    "WaitTimeout",
]


def __dir__() -> list[str]:
    return sorted(__all__)
