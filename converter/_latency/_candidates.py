"""Candidates per layer, and timing them in context on the target backend.

A candidate is one way to run a layer: the original, or its decomposition in one order, at one rank, in one
lowering. ``CandidateTimer.time_layer`` builds the layer's micro-model (``_micro``), has the format's adapter
emit every candidate from it, and times them all interleaved with the original on the backend of the final
measurement (same runtime, device, threads, batch and session options). Results are cached per backend
(``_cache``); a layer is re-timed as a whole when any candidate asked for is missing, so the numbers compared
with each other always come from one interleaved run.

It decides nothing: the cost model (``_cost``) and the planner read the numbers.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._decompose import Order, decompose, lower, max_rank
from ..formats._base import FormatAdapter, Rewrite
from ._cache import Backend, TimingCache
from ._harness import time_interleaved
from ._micro import INPUT, LAYER, LayerShape, build_micro
from ._timers import timed_runner

__all__ = ["ORIGINAL", "Candidate", "CandidateTimer", "LayerTimes", "lowerings_for", "rounded_rank"]


@dataclass(frozen=True, order=True)
class Candidate:
    """The original (all None) or a decomposition ``(order, rank, lowering)``."""

    order: Order | None = None
    rank: int | None = None
    lowering: str | None = None

    @property
    def label(self) -> str:
        return "original" if self.order is None else f"{self.order}/r{self.rank}/{self.lowering}"


ORIGINAL = Candidate()


def lowerings_for(order: Order, rank: int, groups: int) -> tuple[str, ...]:
    """The lowerings that emit different graphs for this order, rank and groups (``lower``)."""
    if rank == 1:
        return ("split",)  # every lowering is the same two convs
    if order == "dw-pw" and groups == 1:
        return ("split", "fused", "summed")
    return ("split", "fused")


def rounded_rank(shape: LayerShape, order: Order, rank: int, block: int) -> int | None:
    """The smallest rank above ``rank`` whose DW→PW intermediate channels per group (``C·K``, the pointwise
    conv's input in every lowering that concatenates or fuses) fill whole blocks of the runtime's channel
    block, when ``rank`` does not; None if it already does, does not apply (PW→DW, no blocking) or no such
    rank is within the layer's exact rank."""
    if order != "dw-pw" or block <= 1:
        return None
    c = shape.in_channels // shape.groups
    if (c * rank) % block == 0:
        return None
    top = max_rank((shape.out_channels, c, *shape.kernel), shape.groups, order)
    for r in range(rank + 1, top + 1):
        if (c * r) % block == 0:
            return r
    return None


@dataclass
class LayerTimes:
    """Median in-context latency (ms) of a layer's candidates on one backend; ``cached`` if no run was
    needed."""

    ms: dict[Candidate, float] = field(default_factory=dict)
    cached: bool = False

    @property
    def original_ms(self) -> float | None:
        return self.ms.get(ORIGINAL)


class CandidateTimer:
    """Times candidates of layers in context on one backend (see the module docstring)."""

    def __init__(self, adapter: FormatAdapter, backend: Backend, batch: int, cache: TimingCache,
                 *, seed: int = 0, max_runs: int = 15) -> None:
        self.adapter = adapter
        self.backend = backend
        self.batch = batch
        self.cache = cache
        self.seed = seed
        self.max_runs = max_runs
        self.timed_layers = 0
        self.cached_layers = 0

    def key(self, shape: LayerShape, cand: Candidate) -> str:
        return f"{shape.key(self.batch)}|{cand.label}"

    def time_layer(self, shape: LayerShape, candidates: Sequence[Candidate], *,
                   budget_s: float | None = None) -> LayerTimes:
        """Median latency of the original and each candidate of a layer of this shape, in context.

        Args:
            shape: the layer's shape.
            candidates: decompositions to time (the original is always timed with them).
            budget_s: a soft limit on this layer's timing runs (at least a few runs are made).
        """
        wanted = [ORIGINAL, *dict.fromkeys(c for c in candidates if c != ORIGINAL)]
        cached = {c: self.cache.get(self.key(shape, c)) for c in wanted}
        if all(v is not None for v in cached.values()):
            self.cached_layers += 1
            return LayerTimes(ms={c: float(v) for c, v in cached.items() if v is not None}, cached=True)
        work = Path(tempfile.mkdtemp(prefix="sepconv-micro-"))
        try:
            runners = self._runners(shape, wanted, work)
            timings = time_interleaved([r for _, r in runners], min_runs=5, max_runs=self.max_runs,
                                       warmup=2, budget_s=budget_s, seed=self.seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out = LayerTimes()
        for (cand, _), t in zip(runners, timings, strict=True):
            out.ms[cand] = t.p50_ms
            self.cache.put(self.key(shape, cand), t.p50_ms)
        self.timed_layers += 1
        return out

    def _runners(self, shape: LayerShape, wanted: list[Candidate], work: Path) -> list[tuple[Candidate, object]]:
        adapter = self.adapter
        src = build_micro(adapter.name, shape, self.batch, work / "src", self.seed)
        x = np.random.default_rng(self.seed).standard_normal(
            (self.batch, shape.in_channels, *shape.in_spatial)).astype(np.float32)
        feeds = {INPUT: x}
        shapes = {INPUT: x.shape}
        runners = []
        for i, cand in enumerate(wanted):
            sub = work / f"c{i}"
            sub.mkdir()
            if cand == ORIGINAL:
                path = src
            else:
                model = adapter.load(src, sub)
                layer = next(lay for lay in adapter.find_convs(model, shapes) if lay.name == LAYER)
                assert layer.weight is not None and cand.order is not None and cand.rank is not None
                dec = decompose(layer.weight, layer.groups, cand.order, cand.rank)
                model = adapter.apply(model, [Rewrite(layer, lower(dec, cand.lowering or "split"))])
                path = adapter.save(model, sub / f"model{adapter.suffix}")
            runners.append((cand, timed_runner(adapter, path, sub, self.backend.threads, self.backend.device, feeds)))
        return runners


def spend(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (a ``time.perf_counter`` value), or None without one."""
    return None if deadline is None else max(0.0, deadline - time.perf_counter())
