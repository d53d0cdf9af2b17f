"""Whole-model latency: the original and the converted model file timed side by side on the real runtime, and
the report's ``latency`` section built from it.

Both files are loaded in this process with the same session options, threads and device (``_timers``), warmed
up, then run interleaved (``_harness``) until their medians are stable or ``runs`` rounds are done. The report
gives p50/p90/p99 of both, the speed-up of medians and its 95 % bootstrap interval over runs; a speed-up is a
finding only when the interval excludes 1.0. Optionally the same at a larger batch, as throughput.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._report import Latency, Throughput
from ..formats import FormatAdapter
from ._cache import Backend
from ._harness import Comparison, compare, time_interleaved
from ._timers import timed_runner

__all__ = ["batched", "compare_files", "latency_report", "speed_warning"]


def compare_files(
    adapter: FormatAdapter,
    original: Path,
    converted: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    threads: int,
    device: str,
    workdir: Path,
    runs: int,
    seed: int = 0,
) -> Comparison:
    """Time ``original`` against ``converted`` (see the module docstring); ``speedup`` > 1: converted is faster.

    ``runs`` is the most timed rounds (at least 5, and fewer only once both medians are stable to 2 %).
    """
    timers = []
    for label, path in (("original", original), ("converted", converted)):
        sub = workdir / f"latency-{label}"
        sub.mkdir(parents=True, exist_ok=True)
        timers.append(timed_runner(adapter, path, sub, threads, device, inputs))
    ta, tb = time_interleaved(timers, min_runs=min(runs, 5), max_runs=runs, warmup=max(2, min(10, runs // 10)),
                              rel_precision=0.02, seed=seed)
    return compare(ta, tb, seed=seed)


def batched(inputs: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``inputs`` with their first (batch) dim repeated up to ``batch``."""
    out = {}
    for name, a in inputs.items():
        if a.ndim == 0:
            out[name] = a
            continue
        reps = -(-batch // max(1, a.shape[0]))
        out[name] = np.ascontiguousarray(np.concatenate([a] * reps, axis=0)[:batch])
    return out


def latency_report(cmp: Comparison, backend: Backend, batch: int | None,
                   throughput: Comparison | None = None, throughput_batch: int | None = None) -> Latency:
    """The report's ``latency`` section from a comparison (and optionally one at a larger batch)."""
    a, b = cmp.a, cmp.b
    tp = None
    if throughput is not None and throughput_batch:
        tp = Throughput(
            batch=throughput_batch,
            original_per_s=round(throughput_batch / (throughput.a.p50_ms / 1e3), 3),
            converted_per_s=round(throughput_batch / (throughput.b.p50_ms / 1e3), 3),
            speedup=round(throughput.speedup, 4),
            speedup_low=round(throughput.low, 4),
            speedup_high=round(throughput.high, 4),
        )
    return Latency(
        backend=backend.label,
        device=backend.device,
        threads=backend.threads,
        runs=min(a.runs, b.runs),
        batch=batch,
        original_ms=round(a.p50_ms, 4),
        converted_ms=round(b.p50_ms, 4),
        speedup=round(cmp.speedup, 4),
        original_p90_ms=round(a.p90_ms, 4),
        converted_p90_ms=round(b.p90_ms, 4),
        original_p99_ms=round(a.p99_ms, 4),
        converted_p99_ms=round(b.p99_ms, 4),
        speedup_low=round(cmp.low, 4),
        speedup_high=round(cmp.high, 4),
        confidence=cmp.confidence,
        processor=backend.processor,
        runtime_version=backend.version,
        throughput=tp,
    )


def speed_warning(lat: Latency | None) -> str | None:
    """A warning when the converted model is slower beyond noise (the interval lies below 1.0), else None."""
    if lat is None:
        return None
    high = lat.speedup_high if lat.speedup_high is not None else lat.speedup
    if high >= 1.0:
        return None
    ci = (f", {lat.confidence:.0%} interval {lat.speedup_low:.2f}–{lat.speedup_high:.2f}"
          if lat.speedup_low is not None else "")
    return (f"the converted model ran slower than the original on {lat.backend} with {lat.threads} thread(s), "
            f"batch {lat.batch} ({lat.speedup:.2f}×{ci}); fewer MACs do not guarantee lower latency")
