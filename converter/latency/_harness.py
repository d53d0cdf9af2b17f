"""Timing harness: warm-up, interleaved runs of several callables, percentiles, and a speed-up with a bootstrap
confidence interval over runs.

Interleaving (a round-robin whose starting point rotates every round) exposes every callable to the same drift
of a shared machine (other processes, clock changes, thermal state), so ratios stay honest when absolute times
wander. A round runs each callable once; rounds continue until the medians are stable (the bootstrap interval
of each median is within ``rel_precision`` of it) or ``max_runs`` or the time ``budget_s`` is reached.

It knows nothing about models: it times callables. Device synchronisation is the callables' job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Comparison", "Timing", "compare", "speedup_interval", "time_interleaved"]

#: Bootstrap resamples; 2000 keeps the 2.5 % / 97.5 % quantiles stable to about ±0.5 % and costs a few ms.
_RESAMPLES = 2000
_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed run of one callable (warm-up excluded), and its summary statistics in ms."""

    runs_s: tuple[float, ...]

    @property
    def runs(self) -> int:
        return len(self.runs_s)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.runs_s, q)) * 1e3 if self.runs_s else math.nan

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p90_ms(self) -> float:
        return self.percentile_ms(90)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)


@dataclass(frozen=True)
class Comparison:
    """Two timings side by side: ``speedup`` is the ratio of medians ``a / b`` (above 1: ``b`` is faster) with
    a bootstrap ``confidence`` interval ``[low, high]`` over runs."""

    a: Timing
    b: Timing
    speedup: float
    low: float
    high: float
    confidence: float = _CONFIDENCE

    @property
    def faster(self) -> bool:
        """``b`` is faster than ``a`` beyond noise: the interval lies above 1.0."""
        return self.low > 1.0

    @property
    def slower(self) -> bool:
        """``b`` is slower than ``a`` beyond noise: the interval lies below 1.0."""
        return self.high < 1.0


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    min_runs: int = 5,
    max_runs: int = 50,
    warmup: int = 2,
    budget_s: float | None = None,
    rel_precision: float = 0.03,
    seed: int = 0,
) -> list[Timing]:
    """Time callables interleaved after ``warmup`` untimed rounds.

    Args:
        fns: the callables (each runs one inference, synchronised).
        min_runs, max_runs: bounds on timed rounds.
        warmup: untimed rounds first (allocators, lazy kernel selection, caches).
        budget_s: stop after ``min_runs`` once this many seconds have passed since the start (warm-up included).
        rel_precision: stop after ``min_runs`` once every median's 95 % bootstrap interval is within this share
            of it.
        seed: of the bootstrap.

    Returns:
        One ``Timing`` per callable, in order.
    """
    if not fns:
        return []
    start = time.perf_counter()
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    rng = np.random.default_rng(seed)
    n = len(fns)
    for i in range(max_runs):
        for j in range(n):
            k = (i + j) % n  # rotate who goes first
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
        done = i + 1
        if done < min_runs:
            continue
        if budget_s is not None and time.perf_counter() - start >= budget_s:
            break
        if done % 5 == 0 and all(_median_precision(t, rng) <= rel_precision for t in times):
            break
    return [Timing(tuple(t)) for t in times]


def _median_precision(runs: list[float], rng: np.random.Generator) -> float:
    """Half-width of the 95 % bootstrap interval of the median, relative to it."""
    a = np.asarray(runs)
    med = float(np.median(a))
    if med <= 0:
        return math.inf
    boot = np.median(a[rng.integers(0, len(a), (400, len(a)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(hi - lo) / 2 / med


def speedup_interval(a: Sequence[float], b: Sequence[float], *, seed: int = 0,
                     confidence: float = _CONFIDENCE) -> tuple[float, float, float]:
    """Ratio of medians ``median(a) / median(b)`` and its percentile-bootstrap interval.

    Runs are resampled in interleaved pairs (round ``i`` of ``a`` with round ``i`` of ``b``) when both have the
    same count, so drift common to a round cancels as it did when measured; otherwise independently.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not len(x) or not len(y) or np.median(y) <= 0:
        return math.nan, math.nan, math.nan
    ratio = float(np.median(x) / np.median(y))
    rng = np.random.default_rng(seed)
    if len(x) == len(y):
        idx = rng.integers(0, len(x), (_RESAMPLES, len(x)))
        bx, by = x[idx], y[idx]
    else:
        bx = x[rng.integers(0, len(x), (_RESAMPLES, len(x)))]
        by = y[rng.integers(0, len(y), (_RESAMPLES, len(y)))]
    boot = np.median(bx, axis=1) / np.maximum(np.median(by, axis=1), 1e-12)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return ratio, float(lo), float(hi)


def compare(a: Timing, b: Timing, *, seed: int = 0) -> Comparison:
    """``a`` against ``b``: speed-up of ``b`` over ``a`` with its interval."""
    ratio, lo, hi = speedup_interval(a.runs_s, b.runs_s, seed=seed)
    return Comparison(a=a, b=b, speedup=ratio, low=lo, high=hi)
