"""The stages of a conversion, as data: one table of (name, share of progress), and the helper that times a
stage and reports progress within it.

Everything that names or counts stages derives from ``STAGES``: the pipeline's order, the job record's
``stage`` column and the API schema (``JOB_STAGES``), and the report's ``timings`` (``TIMING_KEYS``). A stage a
conversion does not run (no calibration data, ``verify=False``…) is skipped: it gets no progress event and no
timing, and the shares of the stages that do run are stretched to fill the bar.

Pure standard library: the service and the SDK import it without numpy, onnx or torch.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JOB_STAGES",
    "STAGES",
    "STAGE_NAMES",
    "TIMING_KEYS",
    "ProgressCallback",
    "Stage",
    "StageClock",
    "StageProgress",
    "report_progress",
    "timings_from",
]


@dataclass(frozen=True)
class Stage:
    """One step of a conversion: its name and its share of the progress bar (relative to the other stages)."""

    name: str
    share: float


#: Every stage, in the order a conversion runs them. Verification dominates when it runs (two models are loaded
#: and timed); fine-tuning dominates when it runs.
STAGES: tuple[Stage, ...] = (
    Stage("load", 0.10),
    Stage("plan", 0.25),
    Stage("measure", 0.20),
    Stage("search", 1.50),
    Stage("rewrite", 0.05),
    Stage("guard", 0.30),
    Stage("calibrate", 0.20),
    Stage("finetune", 1.50),
    Stage("save", 0.10),
    Stage("verify", 0.40),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)

#: What a job's ``stage`` can be: waiting, one of the converter's stages, or finished.
JOB_STAGES: tuple[str, ...] = ("queued", *STAGE_NAMES, "done")

# The report's coarse keys (kept from before stages were data): ``convert_s`` is everything between loading and
# saving. Every stage also has its own ``<stage>_s``; load, save and verify are their own coarse keys.
_COARSE = {"load_s": ("load",), "convert_s": ("plan", "measure", "search", "rewrite", "guard", "calibrate",
                                                       "finetune"),
           "save_s": ("save",), "verify_s": ("verify",)}
_REQUIRED = ("load_s", "convert_s", "save_s")

#: Keys of the report's ``timings``: the coarse ones, then ``<stage>_s`` for every stage, and whether each is
#: always present.
TIMING_KEYS: dict[str, bool] = {
    **{k: k in _REQUIRED for k in _COARSE},
    **{f"{s}_s": False for s in STAGE_NAMES if f"{s}_s" not in _COARSE},
}

#: ``progress(stage, fraction)``, or ``progress(stage, fraction, detail)`` for a callback that takes a third
#: parameter: ``fraction`` in [0, 1] is the whole conversion's progress, never decreasing; ``detail`` is a small
#: dict a stage may report (``{"epoch": 2, "loss": 0.41}`` while fine-tuning), or None.
ProgressCallback = Callable[..., None]


def timings_from(seconds: Mapping[str, float]) -> dict[str, float | None]:
    """The report's ``timings`` from each stage's seconds (stages that did not run are absent): the coarse keys
    summed over their stages, and one ``<stage>_s`` per stage that ran, rounded to 0.1 ms."""
    out: dict[str, float | None] = {}
    for key, stages in _COARSE.items():
        ran = [seconds[s] for s in stages if s in seconds]
        out[key] = round(sum(ran), 4) if ran or key in _REQUIRED else None
    for name in STAGE_NAMES:
        key = f"{name}_s"
        if key not in out:
            out[key] = round(seconds[name], 4) if name in seconds else None
    return out


def report_progress(callback: Callable[..., None], stage: str, fraction: float,
                    detail: Mapping[str, Any] | None = None) -> None:
    """Call a progress callback the way ``convert`` does: with the detail dict where it takes a third parameter
    (``progress(stage, fraction, detail)``), else ``progress(stage, fraction)``."""
    if _takes_detail(callback):
        callback(stage, fraction, dict(detail) if detail is not None else None)
    else:
        callback(stage, fraction)


def _takes_detail(callback: Callable[..., None]) -> bool:
    try:
        params = list(inspect.signature(callback).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: call it the old way
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3


class StageProgress:
    """Handed to the code of a running stage, to report how far it is (``update``)."""

    def __init__(self, clock: StageClock, name: str, begin: float, end: float) -> None:
        self._clock, self.name, self._begin, self._end = clock, name, begin, end

    def update(self, within: float, detail: Mapping[str, Any] | None = None) -> None:
        """Report that ``within`` (0…1) of this stage is done, optionally with a small detail dict."""
        share = min(max(float(within), 0.0), 1.0)
        self._clock.emit(self.name, self._begin + (self._end - self._begin) * share, detail)


class StageClock:
    """Times the stages of one conversion and turns their progress into the whole conversion's.

    Args:
        callback: the user's progress callback, or None.
        active: names of the stages this conversion will run (in any order; the table gives the order). Their
            shares are stretched to fill [0, 1].
    """

    def __init__(self, callback: ProgressCallback | None, active: Iterable[str]) -> None:
        self.callback = callback
        self.detail_ok = callback is not None and _takes_detail(callback)
        wanted = set(active)
        unknown = wanted - set(STAGE_NAMES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; the stages are {list(STAGE_NAMES)}")
        ran = [s for s in STAGES if s.name in wanted]
        total = sum(s.share for s in ran) or 1.0
        self.spans: dict[str, tuple[float, float]] = {}
        at = 0.0
        for s in ran:
            self.spans[s.name] = (at, at + s.share / total)
            at += s.share / total
        self.seconds: dict[str, float] = {}
        self._last = 0.0

    def emit(self, stage: str, fraction: float, detail: Mapping[str, Any] | None = None) -> None:
        """Send one progress event (never below the last one sent)."""
        self._last = max(self._last, min(round(fraction, 4), 1.0))
        if self.callback is None:
            return
        if self.detail_ok:
            self.callback(stage, self._last, dict(detail) if detail else None)
        else:
            self.callback(stage, self._last)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageProgress]:
        """Run one stage: report its start, time it (added to ``seconds[name]``), and hand the stage a
        ``StageProgress`` for progress within it."""
        if name not in self.spans:
            raise ValueError(f"stage {name!r} is not one this conversion runs ({list(self.spans)})")
        begin, end = self.spans[name]
        self.emit(name, begin)
        t0 = time.perf_counter()
        try:
            yield StageProgress(self, name, begin, end)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def finish(self) -> None:
        """Report the end of the conversion (progress 1.0, under the last stage that ran)."""
        last = next(reversed(self.spans), "load") if self.spans else "load"
        self.emit(last, 1.0)
