"""Storage keys of a job's files, in one place. Keys are built from the job id only — never from the name a
user gave their upload — so they cannot be used to reach outside a job's folder."""

from __future__ import annotations

import logging
import re

from ..core.storage import Storage
from ..models import Job

__all__ = ["CHECKPOINT_NAMES", "checkpoint_key", "data_key", "delete_job_files", "eval_key", "input_key", "inputs_key",
           "output_key", "report_key"]

log = logging.getLogger("sepconv.jobs")

_SUFFIX_RE = re.compile(r"^\.[a-z0-9]{1,8}$")


def input_key(job_id: str) -> str:
    """The uploaded model."""
    return f"jobs/{job_id}/input"


def inputs_key(job_id: str) -> str:
    """The uploaded verification inputs (.npz)."""
    return f"jobs/{job_id}/inputs.npz"


def data_key(job_id: str) -> str:
    """The uploaded samples for calibration and the accuracy report (.npz)."""
    return f"jobs/{job_id}/data.npz"


def eval_key(job_id: str) -> str:
    """The uploaded held-out samples for the accuracy report (.npz)."""
    return f"jobs/{job_id}/eval.npz"


#: The files a conversion keeps in its checkpoint folder: the fine-tune's checkpoint, and the max_accuracy_drop
#: search's journal of measured plans (the converter's names; not imported: the runner loads no torch).
CHECKPOINT_NAMES = ("finetune.ckpt", "search.json")


def checkpoint_key(job_id: str, name: str = CHECKPOINT_NAMES[0]) -> str:
    """The latest checkpoint file ``name`` of a running job (so another worker resumes it); removed when it ends."""
    if name not in CHECKPOINT_NAMES:
        raise ValueError(f"unknown checkpoint file {name!r}")
    return f"jobs/{job_id}/{name}"


def output_key(job_id: str, suffix: str) -> str:
    """The converted model; ``suffix`` is the converter's (``.onnx``, ``.zip``, ``.pt``)."""
    if not _SUFFIX_RE.match(suffix):
        raise ValueError(f"invalid output suffix {suffix!r}")
    return f"jobs/{job_id}/output{suffix}"


def report_key(job_id: str) -> str:
    """The JSON report."""
    return f"jobs/{job_id}/report.json"


def delete_job_files(storage: Storage, job: Job) -> None:
    """Delete every file of a job that exists; failures are logged, not raised (the record goes anyway)."""
    for key in (job.input_key, job.inputs_key, job.data_key, job.eval_key, job.output_key, job.report_key,
                *(checkpoint_key(job.id, name) for name in CHECKPOINT_NAMES)):
        if key:
            try:
                storage.delete(key)
            except Exception as e:
                log.warning("could not delete %s of job %s: %s", key, job.id, e)
