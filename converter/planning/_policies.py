"""Rank policies: how a layer's (order, rank, lowering) is chosen among its candidates. A small registry, keyed by
the ``ConversionConfig`` field that selects the policy (``rank``, ``energy``, ``target_params``,
``target_macs``).

A *per-layer* policy narrows a layer's options to one candidate per form (order × lowering) — "rank K", "the
smallest rank keeping energy E" — and says how to prefer between forms. A *budget* policy spends a whole-model
budget of a counted cost (parameters, MACs) across layers: each layer's options and "keep the original" are
reduced to the lower convex hull of (cost, squared relative error), and starting from every layer's cheapest
option, the step with the largest error reduction per unit of cost that still fits is taken until none fits. This
minimises the sum over layers of the squared relative error (exactly, up to the last partial step, for convex
curves).

Pure: options in, options out. Costs come from the planner's cost model (``_cost``); nothing here touches weights.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from .._config import DEFAULT_ENERGY
from .._errors import InvalidOptionsError
from ._cost import Candidate, Cost

__all__ = ["RANK_POLICIES", "Option", "RankPolicy", "allocate", "register_policy"]

_ENERGY_EPS = 1e-12


@dataclass(frozen=True)
class Option:
    """A candidate with its cost."""

    candidate: Candidate
    cost: Cost

    @property
    def err2(self) -> float:
        """Squared relative error the option adds: measured if the cost model knows it, else ``1 - energy``."""
        if self.cost.error is not None:
            return max(0.0, float(self.cost.error))
        return max(0.0, 1.0 - self.candidate.energy)

    @property
    def form(self) -> tuple:
        return (self.candidate.order, self.candidate.lowering)


def _at_rank(options: list[Option], rank: float) -> list[Option]:
    """One candidate per form: the option at min(rank, that form's max rank)."""
    per_form: dict[tuple, Option] = {}
    for o in options:
        r = o.candidate.rank or 0
        if r <= rank and (o.form not in per_form or r > (per_form[o.form].candidate.rank or 0)):
            per_form[o.form] = o
    return list(per_form.values())


def _for_energy(options: list[Option], target: float) -> list[Option]:
    """One candidate per form: the smallest rank keeping at least ``target`` of the energy."""
    per_form: dict[tuple, Option] = {}
    for o in sorted(options, key=lambda o: o.candidate.rank or 0):
        if o.candidate.energy >= target - _ENERGY_EPS and o.form not in per_form:
            per_form[o.form] = o
    return list(per_form.values())


def _latency(o: Option) -> float:
    return o.cost.latency_ms if o.cost.latency_ms is not None else 0.0


def _by_error(o: Option) -> tuple:
    return (round(o.err2, 12), o.cost.params, _latency(o))


def _by_params(o: Option) -> tuple:
    return (o.cost.params, o.err2, _latency(o))


@dataclass(frozen=True)
class RankPolicy:
    """One rank policy.

    Attributes:
        name: the ``ConversionConfig`` field that selects it.
        describe: the reason a converted layer gets in the report, from the policy's value and what the error
            the policy minimised is (``weight error``, ``output error …``).
        narrow: per-layer policies: a layer's options → one candidate per form, given the policy's value.
        prefer: per-layer policies: sort key between those candidates (smallest first).
        budget: budget policies: the counted cost the budget is on (``params`` or ``macs``).
    """

    name: str
    describe: Callable[[float, str], str]
    narrow: Callable[[list[Option], float], list[Option]] | None = None
    prefer: Callable[[Option], tuple] | None = None
    budget: str | None = None


RANK_POLICIES: dict[str, RankPolicy] = {}


def register_policy(policy: RankPolicy) -> RankPolicy:
    """Add a policy to the registry (keyed by its name) and return it."""
    RANK_POLICIES[policy.name] = policy
    return policy


# --order auto: the smaller error at a given rank; the fewer parameters at a given energy.
register_policy(RankPolicy("rank", lambda v, e: f"rank {int(v)} for every layer", _at_rank, _by_error))
register_policy(RankPolicy("energy", lambda v, e: f"keeps ≥ {v:.4g} of kernel energy", _for_energy, _by_params))
register_policy(RankPolicy("target_params", lambda v, e: f"rank allocated for target_params={v:g} (least total "
                                                          f"{e})", budget="params"))
register_policy(RankPolicy("target_macs", lambda v, e: f"rank allocated for target_macs={v:g} (least total {e})",
                           budget="macs"))
register_policy(RankPolicy("target_latency", lambda v, e: f"rank allocated for target_latency={v:g} (least total "
                                                           f"{e}, measured latency)", budget="latency_ms"))

# max_accuracy_drop: the search (``_search``) decides every layer; the planner's own pass (which times the candidates
# on the way) gives each layer the default energy's rank, a plan the search replaces.
register_policy(RankPolicy("max_accuracy_drop", lambda v, e: f"searched for max_accuracy_drop={v:g}",
                           lambda options, _: _for_energy(options, DEFAULT_ENERGY), _by_params))

#: The per-layer override (``layer_rank``) behaves like the rank policy for the layers it names.
OVERRIDE = RankPolicy("layer_rank", lambda v, e: f"rank {int(v)} set for this layer", _at_rank, _by_error)


def allocate(
    menus: list[tuple[Cost, list[Option]]],
    metric: str,
    budget: float,
    total: float,
    label: str,
) -> tuple[list[Option | None], float]:
    """Spend ``budget`` of ``metric`` across layers (see the module docstring).

    Args:
        menus: per layer, the cost of keeping it and its options (already filtered to those allowed).
        metric: ``params`` or ``macs``.
        budget: the most the whole model may cost.
        total: the whole model's cost as it is (for messages).
        label: the policy as the user set it (``target_params=0.3``), for messages.

    Returns:
        Per layer the chosen option (None: keep), and what the model costs with them.

    Raises:
        InvalidOptionsError: the budget cannot be met even with every layer at its cheapest.
    """

    def cost(c: Cost) -> float:
        return float(getattr(c, metric))

    hulls: list[list[tuple[float, float, Option | None]]] = []
    for kept, options in menus:
        keep = cost(kept)
        pts: list[tuple[float, float, Option | None]] = [(cost(o.cost), o.err2, o) for o in options
                                                         if cost(o.cost) < keep]
        pts.append((keep, 0.0, None))
        hulls.append(_lower_hull(pts))
    fixed = total - sum(cost(kept) for kept, _ in menus)
    floor = fixed + sum(h[0][0] for h in hulls)
    if floor > budget + 1e-9:
        raise InvalidOptionsError(
            f"{label} cannot be met: the smallest reachable is {floor / total:.3f} of the model's "
            f"{metric} (layers that cannot be converted and non-conv layers already take "
            f"{fixed / total:.3f}); raise the target or use an energy/rank policy")
    pos = [0] * len(hulls)
    spent = floor
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        h = hulls[i]
        if pos[i] + 1 < len(h):
            (c0, e0, _), (c1, e1, _) = h[pos[i]], h[pos[i] + 1]
            heapq.heappush(heap, (-(e0 - e1) / max(c1 - c0, 1e-12), i))

    for i in range(len(hulls)):
        push(i)
    while heap:
        _, i = heapq.heappop(heap)
        h = hulls[i]
        step = h[pos[i] + 1][0] - h[pos[i]][0]
        if spent + step <= budget + 1e-9:
            spent += step
            pos[i] += 1
            push(i)
        # else: does not fit; a later, smaller step of another layer may
    return [h[p][2] for h, p in zip(hulls, pos, strict=True)], spent


def _lower_hull(pts: list[tuple[float, float, Option | None]]) -> list[tuple[float, float, Option | None]]:
    """Points on the lower-left convex hull of (cost, error), by increasing cost and decreasing error."""
    pts = sorted(pts, key=lambda p: (p[0], p[1]))  # stable: among equal points the earlier option stays
    front: list[tuple[float, float, Option | None]] = []
    for p in pts:  # the Pareto front (strictly decreasing error as cost grows)
        if not front or p[1] < front[-1][1] - 1e-15:
            front.append(p)
    hull: list[tuple[float, float, Option | None]] = []
    for p in front:
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            # drop the middle point if it lies on or above the segment from hull[-2] to p
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull
