"""The latency cost model: each candidate's in-context latency on the target backend, for the planner.

Which candidates are timed: the planner lists every (order, rank, lowering) of every layer; timing them all
would cost minutes. Per layer and order, only the ranks the rank policy can pick are timed (``focus_ranks``):
the policy's rank (``rank``, a ``layer_rank`` override), the smallest rank reaching the energy target
(``energy``, the default), or a small grid (1, 2, 4) for budget policies (with the default energy's rank
for the ``max_accuracy_drop`` search); each with every lowering that emits a
different graph, plus the next rank whose channels fill the runtime's channel block (``rounded_rank``) so the
planner can round a rank up where that is no slower. Other ranks are interpolated linearly between timed ranks
of the same order and lowering; beyond them, or where only one rank was timed, scaled by the decomposition's
MAC count. Layers are timed largest first (by MACs) until ``budget_s`` is spent; a layer left untimed, or
without known spatial sizes, has no latency (None) and is decided on counts, and the whole assembled model is
measured afterwards in any case.

Latencies are of the layer *in context* (its real neighbours where the format's adapter can cut them out, else
the generic micro-model of ``formats._micro``; see ``_candidates``): they include the same neighbours for every
candidate of a layer, so differences between candidates are the layer's, and "keep the original" is priced the
same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._config import DEFAULT_ENERGY
from .._errors import one_line
from ..algebra import Order
from ..formats import ConvLayer, LayerShape
from ._candidates import Candidate, CandidateTimer, LayerTimes, lowerings_for, rounded_rank

__all__ = ["GRID_RANKS", "LatencyModel", "MeasureSummary", "focus_ranks"]

#: Ranks timed per order for budget policies (clipped to the layer's exact rank).
GRID_RANKS = (1, 2, 4)

_ENERGY_EPS = 1e-12


def focus_ranks(kind: str, value: float, override: int | None, energies: dict[Order, Sequence[float]]) -> dict[
        Order, tuple[int, ...]]:
    """Per order, the ranks the policy can pick for a layer whose kept energy at rank ``r`` is
    ``energies[order][r - 1]``."""
    out: dict[Order, tuple[int, ...]] = {}
    for order, curve in energies.items():
        top = len(curve)
        if override is not None or kind == "rank":
            want = int(override if override is not None else value)
            out[order] = (min(want, top),)
        elif kind == "energy":
            target = float(value) if value is not None else DEFAULT_ENERGY
            reach = next((i + 1 for i, e in enumerate(curve) if e >= target - _ENERGY_EPS), top)
            out[order] = (reach,)
        elif kind == "max_accuracy_drop":
            # the search walks every rank: the grid, and the default policy's rank (where it usually ends up)
            reach = next((i + 1 for i, e in enumerate(curve) if e >= DEFAULT_ENERGY - _ENERGY_EPS), top)
            out[order] = tuple(sorted({min(r, top) for r in GRID_RANKS} | {reach}))
        else:
            out[order] = tuple(sorted({min(r, top) for r in GRID_RANKS}))
    return out


@dataclass
class MeasureSummary:
    """What the measure stage did, for the report's ``policy.latency``."""

    backend: str
    processor: str
    threads: int
    batch: int
    block: int
    budget_s: float
    spent_s: float = 0.0
    layers_timed: int = 0
    layers_cached: int = 0
    layers_untimed: list[str] = field(default_factory=list)
    candidates_timed: int = 0
    layers_in_context: int = 0
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "processor": self.processor, "threads": self.threads, "batch": self.batch,
            "channel_block": self.block, "budget_s": self.budget_s, "spent_s": round(self.spent_s, 3),
            "layers_timed": self.layers_timed, "layers_cached": self.layers_cached,
            "layers_untimed": len(self.layers_untimed), "candidates_timed": self.candidates_timed,
            "layers_in_real_context": self.layers_in_context,
            **({"failures": self.failures[:5]} if self.failures else {}),
        }


class LatencyModel:
    """Times layers' candidates (once, on first need) and answers each candidate's in-context latency.

    Args:
        timer: the candidate timer for the target backend.
        macs: ``macs(layer, order, rank)``, the counted MACs (for scaling beyond timed ranks).
        budget_s: wall-clock seconds for all timing.
        progress: called with the share of layers done.
    """

    def __init__(self, timer: CandidateTimer,
                 macs: Callable[[ConvLayer, Order | None, int | None], int | None], budget_s: float,
                 progress: Callable[[float], None] | None = None) -> None:
        self.timer = timer
        self.macs = macs
        self.budget_s = budget_s
        self.progress = progress
        self.times: dict[str, LayerTimes] = {}
        backend = timer.backend
        self.summary = MeasureSummary(backend.label, backend.processor, backend.threads, timer.batch,
                                      backend.block, budget_s)

    @property
    def block(self) -> int:
        return self.timer.backend.block

    def prepare(self, focus: Sequence[tuple[ConvLayer, dict[Order, tuple[int, ...]]]]) -> None:
        """Time the candidates of each layer at its focus ranks per order (``focus_ranks``), largest layer (by
        MACs) first, within the budget."""
        start = time.perf_counter()
        todo = [(lay, ranks) for lay, ranks in focus if lay.name not in self.times]
        todo.sort(key=lambda item: -(self.macs(item[0], None, None) or 0))
        for i, (layer, ranks) in enumerate(todo):
            shape = LayerShape.of(layer)
            left = self.budget_s - (time.perf_counter() - start)
            if shape is None or left <= 0:
                self.summary.layers_untimed.append(layer.name)
                continue
            cands = self._candidates(layer, shape, ranks)
            before = self.timer.cached_layers
            try:
                self.times[layer.name] = self.timer.time_layer(shape, cands, budget_s=min(left, max(2.0, left / 4)),
                                                               layer=layer)
            except Exception as e:  # measuring is best effort: an untimed layer is decided on counts
                self.summary.layers_untimed.append(layer.name)
                self.summary.failures.append(f"{layer.name}: {type(e).__name__}: {one_line(e, 160)}")
                continue
            if self.timer.cached_layers > before:
                self.summary.layers_cached += 1
            else:
                self.summary.layers_timed += 1
                self.summary.candidates_timed += len(cands) + 1
            if self.progress is not None:
                self.progress((i + 1) / len(todo))
        self.summary.spent_s += time.perf_counter() - start
        self.summary.layers_in_context = len(set(getattr(self.timer, "in_context", ())))
        self.timer.cache.save()

    def _candidates(self, layer: ConvLayer, shape: LayerShape,
                    focus: dict[Order, tuple[int, ...]]) -> list[Candidate]:
        out: list[Candidate] = []
        for order, ranks in focus.items():
            for rank in ranks:
                out.extend(Candidate(order, rank, low) for low in lowerings_for(order, rank, layer.groups))
                up = rounded_rank(shape, order, rank, self.block)
                if up is not None:
                    out.extend(Candidate(order, up, low) for low in lowerings_for(order, up, layer.groups))
        return list(dict.fromkeys(out))

    def latency(self, layer: ConvLayer, order: Order | None, rank: int | None, lowering: str | None) -> float | None:
        """In-context ms of the layer kept (``order`` None) or decomposed, or None if it was not timed."""
        lt = self.times.get(layer.name)
        if lt is None:
            return None
        if order is None:
            return lt.original_ms
        assert rank is not None
        low = lowering or "split"
        if low not in lowerings_for(order, rank, layer.groups):
            low = "split"  # e.g. rank 1, or "summed" where it is the same graph as "split"
        exact = lt.ms.get(Candidate(order, rank, low))
        if exact is not None:
            return exact
        points = sorted((c.rank, ms) for c, ms in lt.ms.items()
                        if c.order == order and c.lowering == low and c.rank is not None)
        if not points and low != "split":
            points = sorted((c.rank, ms) for c, ms in lt.ms.items()
                            if c.order == order and c.lowering == "split" and c.rank is not None)
        if not points:
            return None
        return _interpolate(points, rank, lambda r: self.macs(layer, order, r))


def _interpolate(points: list[tuple[int, float]], rank: int, macs: Callable[[int], int | None]) -> float:
    ranks = [p[0] for p in points]
    if len(points) >= 2 and ranks[0] <= rank <= ranks[-1]:
        return float(np.interp(rank, ranks, [p[1] for p in points]))
    # beyond the timed ranks: scale the nearest timed one by the decomposition's MACs (which grow linearly
    # with rank); this over-estimates, as the neighbours' share does not grow: conservative for larger ranks.
    r0, t0 = min(points, key=lambda p: abs(p[0] - rank))
    m0, m1 = macs(r0), macs(rank)
    if not m0 or m1 is None:
        return t0 * rank / r0
    return t0 * m1 / m0

