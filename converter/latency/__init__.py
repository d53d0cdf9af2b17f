"""Measured latency, and nothing else: a timing harness (``_harness``), a persistent cache of candidate timings
(``_cache``), candidates per layer timed in context on the target backend (``_candidates``, ``_timers``; the
micro-models and timed calls themselves are each format's, behind ``formats.Timeable``), the latency model
built from those timings (``_model``), whole-model timing (``_whole``) and the never-slower rule (``_guard``).

It decides nothing about layers (``planning`` does, from its figures).
"""

from __future__ import annotations

from ._cache import Backend, TimingCache, backend_for
from ._candidates import Candidate as TimedCandidate
from ._candidates import CandidateTimer, LayerTimes, lowerings_for, rounded_rank
from ._guard import describe, never_slower
from ._harness import Comparison, compare, time_interleaved
from ._model import LatencyModel, focus_ranks
from ._timers import timed_runner
from ._whole import batched, compare_files, latency_report, speed_warning

__all__ = [
    "Backend",
    "CandidateTimer",
    "Comparison",
    "LatencyModel",
    "LayerTimes",
    "TimedCandidate",
    "TimingCache",
    "backend_for",
    "batched",
    "compare",
    "compare_files",
    "describe",
    "focus_ranks",
    "latency_report",
    "lowerings_for",
    "never_slower",
    "rounded_rank",
    "speed_warning",
    "time_interleaved",
    "timed_runner",
]
