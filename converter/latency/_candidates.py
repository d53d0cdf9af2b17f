"""Candidates per layer, and timing them in context on the target backend.

A candidate is one way to run a layer: the original, or its decomposition in one order, at one rank, in one
lowering. ``CandidateTimer.time_layer`` takes the layer in context, has the format's adapter emit every
candidate from it, and times them all interleaved with the original on the backend of the final measurement
(same runtime, device, threads, batch and session options). The context is, where the adapter can cut it out
(``FormatAdapter.context``: ONNX), the layer with its *real* neighbours at the model's concrete shapes, fed
seeded random inputs; otherwise (TorchScript, ``.pt2``, or a layer the adapter cannot cut out: inside a
subgraph, symbolic shapes…) the generic micro-model of its shape (``formats._micro``). Either way the layer is found
by its name in the small model, so candidates come from the same adapter path as the conversion's.

Results are cached per backend (``_cache``), keyed by the layer's shape and batch and, for a real context, the
hash of its structure (``LayerContext.key``: no weights, no names, so repeated identical blocks share one
entry). A layer is re-timed as a whole when any candidate asked for is missing, so the numbers compared with
each other always come from one interleaved run.

It decides nothing: the cost model (``_cost``) and the planner read the numbers.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import one_line
from ..algebra import Lowering, Order, decompose, lower, max_rank
from ..formats import (
    INPUT,
    LAYER,
    Contextual,
    ConvLayer,
    FormatAdapter,
    LayerContext,
    LayerShape,
    Rewrite,
    Timeable,
    Timed,
)
from ._cache import Backend, TimingCache
from ._harness import time_interleaved
from ._timers import timed_runner

__all__ = ["ORIGINAL", "Candidate", "CandidateTimer", "LayerTimes", "lowerings_for", "rounded_rank"]


@dataclass(frozen=True, order=True)
class Candidate:
    """The original (all None) or a decomposition ``(order, rank, lowering)``."""

    order: Order | None = None
    rank: int | None = None
    lowering: Lowering | None = None

    @property
    def label(self) -> str:
        return "original" if self.order is None else f"{self.order}/r{self.rank}/{self.lowering}"


ORIGINAL = Candidate()


def lowerings_for(order: Order, rank: int, groups: int) -> tuple[Lowering, ...]:
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


@dataclass(frozen=True)
class _Source:
    """The small model a layer's candidates are emitted from: its file, the layer's name in it, its inputs."""

    path: Path
    layer: str
    feeds: dict[str, np.ndarray]


class CandidateTimer:
    """Times candidates of layers in context on one backend (see the module docstring).

    Args:
        adapter: the model's format adapter.
        backend: where to time.
        batch: the batch timed.
        cache: the timing cache of ``backend``.
        seed: of random weights and inputs.
        max_runs: most interleaved rounds per layer.
        model: the loaded model, whose layers are cut out with their real neighbours where the adapter can
            (``FormatAdapter.context``); None: every layer in its generic micro-model.
        input_shapes: the model's input shapes at ``batch`` (with ``model``).
    """

    def __init__(self, adapter: FormatAdapter, backend: Backend, batch: int, cache: TimingCache,
                 *, seed: int = 0, max_runs: int = 15, model: Any = None,
                 input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.adapter = adapter
        self.backend = backend
        self.batch = batch
        self.cache = cache
        self.seed = seed
        self.max_runs = max_runs
        self.model = model
        self.input_shapes = dict(input_shapes or {})
        self.timed_layers = 0
        self.cached_layers = 0
        #: Layers timed (or found in the cache) with their real neighbours.
        self.in_context: list[str] = []
        #: Layers timed in the generic micro-model although a model was given: name → why.
        self.fallbacks: dict[str, str] = {}

    def key(self, shape: LayerShape, cand: Candidate, context: LayerContext | None = None) -> str:
        where = f"|ctx{context.key}" if context is not None else ""
        return f"{shape.key(self.batch)}{where}|{cand.label}"

    def context(self, layer: ConvLayer | None) -> LayerContext | None:
        """``layer`` with its real neighbours, or None (then its generic micro-model is used; see
        ``fallbacks``)."""
        if layer is None or self.model is None or not isinstance(self.adapter, Contextual):
            return None
        try:
            found = self.adapter.context(self.model, layer, self.input_shapes)
        except Exception as e:  # best effort: the micro-model still times the layer
            found = f"{type(e).__name__}: {one_line(e, 160)}"
        if isinstance(found, str):
            self.fallbacks[layer.name] = found
            return None
        return found

    def time_layer(self, shape: LayerShape, candidates: Sequence[Candidate], *,
                   budget_s: float | None = None, layer: ConvLayer | None = None) -> LayerTimes:
        """Median latency of the original and each candidate of a layer of this shape, in context.

        Args:
            shape: the layer's shape.
            candidates: decompositions to time (the original is always timed with them).
            budget_s: a soft limit on this layer's timing runs (at least a few runs are made).
            layer: the layer itself, to time it with its real neighbours where the adapter can cut them out
                of ``model``; without it, or where they cannot be, the generic micro-model of ``shape``.
        """
        wanted = [ORIGINAL, *dict.fromkeys(c for c in candidates if c != ORIGINAL)]
        context = self.context(layer)
        cached = {c: self.cache.get(self.key(shape, c, context)) for c in wanted}
        if all(v is not None for v in cached.values()):
            self.cached_layers += 1
            if context is not None and layer is not None:
                self.in_context.append(layer.name)
            return LayerTimes(ms={c: float(v) for c, v in cached.items() if v is not None}, cached=True)
        work = Path(tempfile.mkdtemp(prefix="sepconv-micro-"))
        try:
            try:
                runners = self._runners(self._source(shape, context, work / "src"), wanted, work)
            except Exception as e:
                if context is None:
                    raise
                # a cut the runtime or the rewrite refused: time the layer as if it had none
                assert layer is not None
                self.fallbacks[layer.name] = f"its context failed: {type(e).__name__}: {one_line(e, 160)}"
                context = None
                runners = self._runners(self._source(shape, None, work / "src-micro"), wanted, work / "micro")
            timings = time_interleaved([r for _, r in runners], min_runs=5, max_runs=self.max_runs,
                                       warmup=2, budget_s=budget_s, seed=self.seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out = LayerTimes()
        for (cand, _), t in zip(runners, timings, strict=True):
            out.ms[cand] = t.p50_ms
            self.cache.put(self.key(shape, cand, context), t.p50_ms)
        self.timed_layers += 1
        if context is not None and layer is not None:
            self.in_context.append(layer.name)
        return out

    def _source(self, shape: LayerShape, context: LayerContext | None, folder: Path) -> _Source:
        rng = np.random.default_rng(self.seed)
        if context is None:
            assert isinstance(self.adapter, Timeable)  # the measure stage times only timeable formats
            path = self.adapter.micro_model(shape, self.batch, folder, self.seed)
            x = rng.standard_normal((self.batch, shape.in_channels, *shape.in_spatial)).astype(np.float32)
            return _Source(path, LAYER, {INPUT: x})
        feeds = {name: rng.standard_normal(dims).astype(dtype) for name, (dims, dtype) in context.inputs.items()}
        return _Source(context.write(folder), context.layer, feeds)

    def _runners(self, src: _Source, wanted: list[Candidate], work: Path) -> list[tuple[Candidate, Timed]]:
        adapter = self.adapter
        shapes = {name: x.shape for name, x in src.feeds.items()}
        runners = []
        for i, cand in enumerate(wanted):
            sub = work / f"c{i}"
            sub.mkdir(parents=True)
            if cand == ORIGINAL:
                path = src.path
            else:
                model = adapter.load(src.path, sub)
                layer = next(lay for lay in adapter.find_convs(model, shapes) if lay.name == src.layer)
                assert layer.weight is not None and cand.order is not None and cand.rank is not None
                dec = decompose(layer.weight, layer.groups, cand.order, cand.rank)
                model = adapter.apply(model, [Rewrite(layer, lower(dec, cand.lowering or "split"))])
                path = adapter.save(model, sub / f"model{adapter.suffix}")
            runners.append((cand, timed_runner(adapter, path, sub, self.backend.threads, self.backend.device,
                                               src.feeds)))
        return runners


def spend(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (a ``time.perf_counter`` value), or None without one."""
    return None if deadline is None else max(0.0, deadline - time.perf_counter())
