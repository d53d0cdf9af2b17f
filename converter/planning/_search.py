r"""The accuracy-bounded search (``max_accuracy_drop``): the fastest plan whose measured metric stays within
``D`` of the original's, given a cost model it does not know the inside of and a callback that measures a plan.

**The frontier.** Each layer ``ℓ`` has options (kept, or an order × rank × lowering), each with a cost
``t`` (its in-context latency where measured, else a proxy on the same scale) and a predicted error

    w_ℓ(o) = s_ℓ · e_ℓ(o)

with ``e_ℓ`` the option's relative squared *output* error of the layer on the samples (``_outerr``) and
``s_ℓ`` the layer's *sensitivity*: how much of a relative squared error at the layer's output reaches the model's
output (measured by the caller, one perturbed pass per layer). A plan's predicted error is ``Σ_ℓ w_ℓ`` (the
first-order, additive model) and its cost ``Σ_ℓ t_ℓ``. Each layer's options are reduced to the lower convex hull
of (cost, predicted error); starting from every layer kept, the step with the least added error per unit of cost
saved is taken, one at a time, until every layer is at its cheapest. Each step is one plan, so the chain
``P_0`` (the original) … ``P_n`` runs along the predicted frontier, cost decreasing and error increasing; on
convex per-layer curves each ``P_i`` has the least predicted error of any plan of its cost (the same greedy as
the budget policies' ``allocate``, stopped at every step instead of at a budget).

**The search** measures plans (the caller calibrates, assembles, scores and times each) in two passes:

0. **Uniform ranks first** (``uniform_plans``: what ``--rank K`` would give, for every ``K``), by bisection over
   ``K`` from rank 1 up. The predicted frontier rests on a first-order model — each layer's *data-free* error,
   weighted by a sensitivity measured with one perturbation, added over layers — while calibration shrinks the
   layers' errors by different factors and the metric is not additive; on the digits CNN the predicted frontier
   alone stopped at 1.4× where ``--rank 2`` measured 1.9× within the same drop. Measuring the uniform scale
   first costs ``log₂`` of the largest rank in plans and makes the answer at least the best uniform rank's.
1. **Then the predicted frontier**, keeping the interval ``[lo, hi)`` between the last plan known to meet ``D``
   (``P_0`` does) and the first known not to, to find a plan faster than that:

1. the fastest plan ``P_n`` first (usually the uniform rank 1, already measured): if it meets ``D``, done;
2. then the index where the predicted error, mapped linearly onto the measured drops at ``lo`` and ``hi``,
   reaches ``D`` (regula falsi: the drop grows about proportionally with the predicted error, so this usually
   lands next to the boundary);
3. a bisection step whenever that did not halve the interval, so it never takes more than twice as many plans as
   plain bisection (``⌈2·log₂ n⌉``).

A plan is measured at most once (by its key): a chain plan equal to a uniform one reuses its measurement.

A plan *meets D* when its measured drop is at most ``D``; it is *faster* when the caller's measurement says so
(the interval of its speed-up lies above 1). The answer is the plan with the largest measured speed-up among
those that meet ``D`` and are faster, or none (the original). The search stops when the interval is closed or
when the next plan would not fit in the budget (the longest plan so far is the estimate; the first plan always
runs, as there is no answer without one).

Pure: menus and a callback in, trials out. It measures nothing, and it knows no format or runtime.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._policies import _lower_hull

__all__ = ["Choice", "LayerMenu", "Outcome", "SearchPlan", "SearchResult", "Trial", "frontier", "search",
           "uniform_plans"]


@dataclass(frozen=True)
class Choice:
    """One way to convert one layer: its form, and its cost and predicted error (see the module docstring).

    ``cost`` is on one scale for every layer (ms where measured); ``error`` is the layer's relative squared
    output error ``e`` (not yet weighted by the sensitivity). ``params`` and ``macs`` are counted."""

    order: str
    rank: int
    lowering: str | None
    cost: float
    error: float
    params: int = 0
    macs: int | None = None
    payload: Any = field(default=None, compare=False, repr=False)


@dataclass
class LayerMenu:
    """A layer's options: kept (``cost``, ``params``, ``macs``), or one of ``choices``; ``sensitivity`` is the
    share of a relative squared error at its output that reaches the model's output."""

    name: str
    cost: float
    params: int
    macs: int | None
    sensitivity: float
    choices: list[Choice]
    payload: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SearchPlan:
    """One plan: per layer (in the menus' order) its choice, or None (kept); ``index`` its place on the chain
    (-1: not on it), ``uniform_rank`` the rank of a ``uniform_plans`` plan."""

    index: int
    choices: tuple[Choice | None, ...]
    cost: float
    predicted_error: float
    uniform_rank: int | None = None

    def converted(self, menus: Sequence[LayerMenu]) -> dict[str, Choice]:
        """Layer name → choice, for the converted layers."""
        return {m.name: c for m, c in zip(menus, self.choices, strict=True) if c is not None}

    @property
    def key(self) -> tuple:
        """What identifies the plan's model: each layer's (order, rank, lowering) or None."""
        return tuple(None if c is None else (c.order, c.rank, c.lowering) for c in self.choices)


@dataclass(frozen=True)
class Outcome:
    """What the caller measured of a plan: its metric value, its drop from the original (for a metric where lower
    is better, the value itself), its speed-up over the original with the interval, and whether it is faster."""

    metric: float
    drop: float
    speedup: float
    low: float
    high: float
    faster: bool
    extra: Any = field(default=None, compare=False, repr=False)


@dataclass
class Trial:
    """One plan measured: the plan, the outcome, how the search picked it, how long it took."""

    plan: SearchPlan
    outcome: Outcome
    meets: bool
    step: str  # "uniform" | "fastest" | "interpolate" | "bisect"
    seconds: float


@dataclass
class SearchResult:
    """Every plan measured, in order; the chosen one (None: keep the original) and why; why the search stopped."""

    trials: list[Trial]
    chosen: Trial | None
    reason: str
    stopped: str  # "converged" | "budget" | "nothing to convert"
    chain: int = 0  # plans on the chain, the original excluded

    @property
    def best_tried(self) -> Trial | None:
        """The trial closest to meeting ``D`` (lowest drop), for the report when nothing was chosen."""
        return min(self.trials, key=lambda t: (t.outcome.drop, -t.outcome.speedup), default=None)


def frontier(menus: Sequence[LayerMenu]) -> list[SearchPlan]:
    """The chain of plans along the predicted frontier, ``P_0`` (every layer kept) first (module docstring)."""
    hulls: list[list[tuple[float, float, Choice | None]]] = []
    for m in menus:
        pts: list[tuple[float, float, Choice | None]] = [
            (c.cost, max(0.0, m.sensitivity) * max(0.0, c.error), c) for c in m.choices
            if math.isfinite(c.cost) and c.cost < m.cost]
        pts.append((m.cost, 0.0, None))
        hull = _lower_hull(pts)
        if hull[-1][2] is not None:  # an option as cheap in error as keeping the layer: kept still comes first
            hull.append((m.cost, 0.0, None))
        hulls.append(hull)
    # each layer starts at its last hull point (kept: the most cost, no error) and moves towards its first
    pos = [len(h) - 1 for h in hulls]
    heap: list[tuple[float, float, int]] = []

    def push(i: int) -> None:
        h, p = hulls[i], pos[i]
        if p > 0:
            saved = h[p][0] - h[p - 1][0]
            added = h[p - 1][1] - h[p][1]
            heapq.heappush(heap, (added / max(saved, 1e-12), -saved, i))

    for i in range(len(hulls)):
        push(i)
    cost = sum(m.cost for m in menus)
    error = 0.0
    current: list[Choice | None] = [None] * len(menus)
    chain = [SearchPlan(0, tuple(current), cost, 0.0)]
    while heap:
        _, _, i = heapq.heappop(heap)
        h, p = hulls[i], pos[i]
        cost -= h[p][0] - h[p - 1][0]
        error += h[p - 1][1] - h[p][1]
        pos[i] = p - 1
        current[i] = h[p - 1][2]
        chain.append(SearchPlan(len(chain), tuple(current), cost, error))
        push(i)
    return chain


def uniform_plans(menus: Sequence[LayerMenu]) -> list[SearchPlan]:
    """The plans ``--rank K`` would give, for every K: each layer at K (clipped to its largest rank), in the form
    with the least error at it (``--order auto``), kept where that is not cheaper than the layer as it is; by
    decreasing cost, duplicates and the all-kept plan left out. ``index`` is -1: they are not on the chain."""
    top = max((c.rank for m in menus for c in m.choices), default=0)
    out: dict[tuple, SearchPlan] = {}
    for k in range(top, 0, -1):
        picks: list[Choice | None] = []
        for m in menus:
            at = [c for c in m.choices if c.rank == min(k, max(x.rank for x in m.choices))] if m.choices else []
            best = min(at, key=lambda c: (c.error, c.cost), default=None)
            picks.append(best if best is not None and best.cost < m.cost else None)
        if all(c is None for c in picks):
            continue
        cost = sum(m.cost if c is None else c.cost for m, c in zip(menus, picks, strict=True))
        err = sum(0.0 if c is None else m.sensitivity * c.error for m, c in zip(menus, picks, strict=True))
        plan = SearchPlan(-1, tuple(picks), cost, err, uniform_rank=k)
        out.setdefault(plan.key, plan)
    return sorted(out.values(), key=lambda p: -p.cost)


def search(
    chain: Sequence[SearchPlan],
    evaluate: Callable[[SearchPlan], Outcome],
    max_drop: float,
    budget_s: float,
    *,
    anchors: Sequence[SearchPlan] = (),
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[Trial, Trial | None, int], None] | None = None,
) -> SearchResult:
    """Measure plans to find the fastest that meets ``max_drop`` (module docstring).

    Args:
        chain: the plans of the frontier (``frontier``), ``chain[0]`` the original (never measured: its drop is
            0 and its speed-up 1).
        evaluate: measures one plan (calibrates, assembles, scores and times it).
        max_drop: ``D``: a plan meets it when its measured drop is at most ``D``.
        budget_s: seconds at most for the search (see the module docstring for how it is kept).
        anchors: plans measured first, by bisection over their order (slowest first), e.g. ``uniform_plans``.
        clock: seconds, monotonic (a fake one in tests).
        progress: called after each plan with the trial, the best so far (None: none yet) and the plan count.
    """
    n = len(chain) - 1
    if n <= 0 and not anchors:
        return SearchResult([], None, "no layer can be converted at a lower cost", "nothing to convert", 0)
    run = _Run(evaluate, max_drop, budget_s, clock, progress)
    if anchors:
        run.bisect([None, *anchors], "uniform")
    if n > 0 and not run.spent():
        run.bisect(chain, "frontier")
    chosen = _best(run.trials)
    stopped = "budget" if run.out_of_time else "converged"
    return SearchResult(run.trials, chosen, _reason(chosen, run.trials, max_drop, stopped), stopped, n)


class _Run:
    """One search's measurements: each plan measured once (by key), within the budget."""

    def __init__(self, evaluate: Callable[[SearchPlan], Outcome], max_drop: float, budget_s: float,
                 clock: Callable[[], float], progress: Callable[[Trial, Trial | None, int], None] | None) -> None:
        self.evaluate, self.max_drop, self.budget_s, self.clock, self.progress = (
            evaluate, max_drop, budget_s, clock, progress)
        self.start = clock()
        self.longest = 0.0
        self.trials: list[Trial] = []
        self.seen: dict[tuple, Trial] = {}
        self.out_of_time = False

    def spent(self) -> bool:
        """Whether the next plan would not fit in the budget (the first always runs)."""
        if self.trials and self.clock() - self.start + self.longest > self.budget_s:
            self.out_of_time = True
        return self.out_of_time

    def measure(self, plan: SearchPlan, step: str) -> Trial:
        known = self.seen.get(plan.key)
        if known is not None:
            return known
        t0 = self.clock()
        outcome = self.evaluate(plan)
        took = self.clock() - t0
        self.longest = max(self.longest, took)
        trial = Trial(plan, outcome, outcome.drop <= self.max_drop + 1e-12, step, took)
        self.trials.append(trial)
        self.seen[plan.key] = trial
        if self.progress is not None:
            self.progress(trial, _best(self.trials), len(self.trials))
        return trial

    def bisect(self, plans: Sequence[SearchPlan | None], kind: str) -> None:
        """Narrow in on the last plan of ``plans`` (ordered by increasing predicted error; ``plans[0]`` the
        original, known to meet D) that meets D: the last plan first, then interpolation on the predicted error
        (on the chain) or bisection."""
        n = len(plans) - 1
        lo, hi = 0, n + 1
        drop_lo, drop_hi = 0.0, math.nan
        bisect_next = False
        first = True
        while (first or hi - lo > 1) and not self.spent():
            if first:
                i, step = n, "fastest" if kind == "frontier" else "uniform"
            elif bisect_next or not math.isfinite(drop_hi) or kind != "frontier":
                i, step = (lo + hi) // 2, "bisect" if kind == "frontier" else "uniform"
            else:
                i, step = _interpolate(plans, lo, hi, drop_lo, drop_hi, self.max_drop), "interpolate"
            first = False
            width = hi - lo
            plan = plans[i]
            assert plan is not None
            trial = self.measure(plan, step)
            if trial.meets:
                lo, drop_lo = i, trial.outcome.drop
            else:
                hi, drop_hi = i, trial.outcome.drop
            # an interpolation that did not halve the interval is followed by a bisection
            bisect_next = step == "interpolate" and (hi - lo) * 2 > width


def _interpolate(chain: Sequence[SearchPlan | None], lo: int, hi: int, drop_lo: float, drop_hi: float,
                 max_drop: float) -> int:
    def error(j: int) -> float:
        p = chain[j]
        return 0.0 if p is None else p.predicted_error

    e_lo, e_hi = error(lo), error(hi)
    if drop_hi <= drop_lo or e_hi <= e_lo:
        return (lo + hi) // 2
    target = e_lo + (max_drop - drop_lo) * (e_hi - e_lo) / (drop_hi - drop_lo)
    i = max((j for j in range(lo + 1, hi) if error(j) <= target), default=lo + 1)
    return min(max(i, lo + 1), hi - 1)


def _best(trials: Sequence[Trial]) -> Trial | None:
    ok = [t for t in trials if t.meets and t.outcome.faster]
    return max(ok, key=lambda t: (t.outcome.speedup, -t.outcome.drop)) if ok else None


def _reason(chosen: Trial | None, trials: Sequence[Trial], max_drop: float, stopped: str) -> str:
    how = f"{len(trials)} plan(s) measured" + (", search budget spent" if stopped == "budget" else "")
    if chosen is not None:
        return (f"the fastest measured plan within the drop of {max_drop:g} ({chosen.outcome.speedup:.2f}× "
                f"faster, drop {chosen.outcome.drop:.4g}; {how})")
    met = [t for t in trials if t.meets]
    if met:
        return (f"no plan within the drop of {max_drop:g} measured faster than the original ({how}): the "
                "original is returned unchanged")
    return (f"no plan kept the metric within {max_drop:g} of the original's ({how}): the original is returned "
            "unchanged")
