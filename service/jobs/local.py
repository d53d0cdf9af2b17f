"""One conversion in the service's confined child process, for the CLI and the library (no database, no storage).

``converter.convert`` calls ``convert_confined`` for a model whose format carries code (TorchScript, ``.pt2``)
unless the user trusts it (``trust_model``, CLI ``--trust-model``): the model is loaded and converted by
``python -m service.jobs.sandbox`` — the very process a service job runs in, with the same Landlock rules
(its private folder read-write; the model, the sample files and the checkpoint folder the user named, and
what Python needs, read-only — the checkpoint folder read-write), socket filter, PID namespace and memory,
file and time limits — and this process only copies the result out. The limits are the service's settings
(``SEPCONV_JOB_MEMORY_MB``, ``SEPCONV_JOB_TIMEOUT_S``); on a kernel without Landlock such a model is refused
unless ``SEPCONV_ALLOW_UNCONFINED_CODE=1`` (then it still runs in the child, with the other limits).

What it does not do: decide whether to confine (``converter.convert`` does), or run formats without code.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter import (
    ConversionConfig,
    ConversionError,
    ConversionResult,
    InvalidOptionsError,
    Report,
    SepconvError,
    UnsupportedModelError,
    VerificationError,
    report_progress,
)
from converter.formats import precheck, unpack_limit

from .runner import _PACKAGE_ROOT, EventBudget, _judge, _kill_group, _tree_vms, scrub_paths

__all__ = ["convert_confined"]

_ERRORS: dict[str, type[SepconvError]] = {
    "invalid_options": InvalidOptionsError,
    "unsupported_model": UnsupportedModelError,
    "conversion_failed": ConversionError,
    "verification_failed": VerificationError,
}
_TICK_S = 0.1


def _limits() -> tuple[int, float, bool]:
    from ..core.config import SettingsError, load_settings

    try:
        s = load_settings()
    except SettingsError as e:
        raise InvalidOptionsError(str(e)) from None
    return s.job_memory_mb, s.job_timeout_s, s.allow_unconfined_code


def convert_confined(model: Path, output: Path | None, *, config: ConversionConfig, inputs: Path | None = None,
                     data: Path | None = None, eval: Path | None = None, checkpoint_dir: Path | None = None,
                     progress: Callable[[str, float, dict[str, Any] | None], None] | None = None,
                     ) -> ConversionResult:
    """Run ``converter.convert`` for these arguments in the confined child; returns its result (the output moved
    to ``output``, or its bytes in ``data`` without one).

    Raises:
        SepconvError: the child's error, of the same type and message; a ``ConversionError`` when it ran out of
            memory or time, or crashed.
    """
    memory_mb, timeout_s, allow_unconfined = _limits()
    model = Path(model).resolve()
    _precheck(model)
    work = Path(tempfile.mkdtemp(prefix="sepconv-local-"))
    try:
        read_only = [str(Path(p).resolve()) for p in (model, inputs, data, eval) if p is not None]
        read_write = []
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            read_write.append(str(Path(checkpoint_dir).resolve()))
        spec = {
            "model": str(model),
            "inputs": str(Path(inputs).resolve()) if inputs is not None else None,
            "data": str(Path(data).resolve()) if data is not None else None,
            "eval": str(Path(eval).resolve()) if eval is not None else None,
            "checkpoint_dir": read_write[0] if read_write else None,
            "output_dir": str(work / "out"),
            "report": str(work / "report.json"),
            "options": config.model_dump(mode="json", exclude_unset=True),
            "memory_mb": memory_mb,
            "max_file_bytes": unpack_limit(model.stat().st_size),
            "allow_unconfined": allow_unconfined,
            "parent_pid": os.getpid(),
            "read_only": read_only,
            "read_write": read_write,
        }
        outcome = _run(spec, work, timeout_s, memory_mb, progress)
        if outcome.status != "done":
            message = scrub_paths(outcome.message or "the conversion failed", work)
            if outcome.code == "out_of_memory":
                message += "; raise SEPCONV_JOB_MEMORY_MB, or pass --trust-model to convert in-process"
            raise _ERRORS.get(outcome.code or "", ConversionError)(message)
        report = Report.model_validate_json((work / "report.json").read_bytes())
        produced = outcome.output if outcome.output is not None else None
        if produced is None or not produced.resolve().is_relative_to(work.resolve()) or not produced.is_file():
            raise ConversionError("the confined conversion did not leave a model")
        result = ConversionResult(report=report, format=outcome.format or report.format)
        if output is None:
            result.data = produced.read_bytes()
        else:
            dest = Path(output)
            # An ONNX model with external data travels as a .zip (not a code format today; kept like the library)
            final = dest.with_suffix(".zip") if produced.suffix == ".zip" and dest.suffix != ".zip" else dest
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(produced), final)
            result.output_path = final
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _precheck(model: Path) -> None:
    """The archive checks, which read the zip and its JSON and run nothing of the model, here already: a file
    they refuse is refused without starting the child (the child makes them again)."""
    precheck(model)


def _run(spec: dict[str, Any], work: Path, timeout_s: float, memory_mb: int,
         progress: Callable[[str, float, dict[str, Any] | None], None] | None) -> Any:
    from .runner import Outcome

    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
           "PYTHONPATH": _PACKAGE_ROOT, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    r, w = os.pipe()
    with open(work / "sandbox.log", "wb") as log_file:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-s", "-m", "service.jobs.sandbox", str(spec_path), str(w)],
                cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                pass_fds=(w,), start_new_session=True, close_fds=True)
        finally:
            os.close(w)
    budget = EventBudget()
    deadline = time.monotonic() + timeout_s
    peak_vms = 0
    eof = False
    try:
        while True:
            if not eof:
                ready, _, _ = select.select([r], [], [], _TICK_S)
                if ready and not budget.exhausted:
                    chunk = os.read(r, 65536)
                    if not chunk:
                        eof = True
                    for event in budget.feed(chunk, time.monotonic()):
                        _forward(event, progress)
                elif ready:
                    time.sleep(_TICK_S)
            else:
                time.sleep(_TICK_S)
            if proc.poll() is not None and (eof or budget.exhausted):
                break
            peak_vms = max(peak_vms, _tree_vms(proc.pid))
            if time.monotonic() > deadline:
                return Outcome("failed", "timeout", f"exceeded the time limit of {timeout_s:g} s "
                                                    "(SEPCONV_JOB_TIMEOUT_S)")
    except KeyboardInterrupt:
        raise
    finally:
        os.close(r)
        _kill_group(proc)
    return _judge(proc.returncode, budget.events, work, peak_vms, memory_mb * 1024 * 1024, memory_mb)


def _forward(event: dict[str, Any], progress: Callable[..., None] | None) -> None:
    if progress is None or event.get("event") != "progress":
        return
    stage, fraction, detail = event.get("stage"), event.get("progress"), event.get("detail")
    if isinstance(stage, str) and isinstance(fraction, int | float):
        report_progress(progress, stage, float(fraction), detail if isinstance(detail, dict) else None)
