"""Which layers to convert, in which order and at which rank: eligibility and the rank policies.

Pure: it reads ``ConvLayer`` records and weights, and returns one ``LayerDecision`` per layer. A layer that is
not converted is a value with a reason ("1×1 conv: already pointwise"), never an exception; the reason goes
straight into the per-layer report. It does not touch graphs and does not compute the factors' final form
(``lower`` does).

Costs of a rank-K decomposition of a layer with ``N`` outputs, ``M`` inputs (``C = M/g`` per group), ``k``
kernel taps, input and output spatial sizes ``P_in``, ``P_out`` (products of the spatial dims)::

    params  original  N·C·k              dw-pw  K·(M·k + N·C)            pw-dw  K·(N·C + N·k)
    MACs    original  N·C·k·P_out        dw-pw  K·(M·k + N·C)·P_out      pw-dw  K·N·C·P_in + K·N·k·P_out

(plus ``N`` for a bias, which is unchanged). The split and fused lowerings have the same costs.

Global budgets (``target_params``, ``target_macs``) are met by a greedy allocation on each layer's lower convex
hull of (cost, squared relative weight error) over all its (order, rank) options and "keep the original":
starting from the cheapest option of every layer, the step with the largest error reduction per unit of cost
that still fits the budget is taken until none fits. This minimises the sum over layers of the squared relative
weight error (exactly, up to the last partial step, for convex curves).
"""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._config import ConversionConfig
from ._decompose import Decomposition, Order, decompose, energy_curve, spectrum
from ._errors import InvalidOptionsError
from .formats._base import ConvLayer

__all__ = ["LayerDecision", "Plan", "eligibility", "plan_layers"]

_ENERGY_EPS = 1e-12


@dataclass
class LayerDecision:
    """What happens to one layer, with the numbers the report shows."""

    layer: ConvLayer
    status: str  # "converted" | "skipped"
    reason: str
    order: Order | None = None
    rank: int | None = None
    energy: float | None = None
    rel_weight_error: float | None = None
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    decomposition: Decomposition | None = field(default=None, repr=False)
    spectra: dict = field(default_factory=dict, repr=False)

    @property
    def converted(self) -> bool:
        return self.status == "converted"


@dataclass
class Plan:
    """Decisions for every layer, and how the policy was applied (for the report's ``policy`` key)."""

    decisions: list[LayerDecision]
    policy: dict


def _k(layer: ConvLayer) -> int:
    return int(np.prod(layer.kernel)) if layer.kernel else 1


def params_of(layer: ConvLayer, order: Order | None, rank: int | None) -> int:
    """Weight elements of the layer as it is (order None) or decomposed at ``rank``; a bias is carried over
    unchanged and not counted."""
    n, m, g, k = layer.out_channels, layer.in_channels, layer.groups, _k(layer)
    c = m // g
    if order is None:
        return n * c * k
    if order == "dw-pw":
        return rank * (m * k + n * c)
    return rank * (n * c + n * k)


def macs_of(layer: ConvLayer, order: Order | None, rank: int | None) -> int | None:
    """MACs of the layer (batch 1) as it is or decomposed, or None without inferred spatial sizes."""
    if layer.out_spatial is None:
        return None
    n, m, g, k = layer.out_channels, layer.in_channels, layer.groups, _k(layer)
    c = m // g
    p_out = int(np.prod(layer.out_spatial))
    if order is None:
        return n * c * k * p_out
    if order == "dw-pw":
        return rank * (m * k + n * c) * p_out
    if layer.in_spatial is None:
        return None
    p_in = int(np.prod(layer.in_spatial))
    return rank * n * c * p_in + rank * n * k * p_out


def eligibility(layer: ConvLayer, config: ConversionConfig) -> str | None:
    """Why the layer cannot be converted at all, or None if it can."""
    if layer.transposed:
        return "ConvTranspose: not supported yet"
    if layer.weight is None:
        return layer.note or "weight is not a constant"
    if _k(layer) == 1:
        return "1×1 conv: already pointwise"
    if layer.groups == layer.in_channels and layer.in_channels > 1:
        # (one input channel and groups = 1 is an ordinary dense conv: its N×k kernel still compresses)
        return "depthwise conv (groups = in channels): already depthwise"
    for pat in config.exclude:
        if fnmatch.fnmatchcase(layer.name, pat):
            return f"excluded by pattern {pat!r}"
    return None


def _orders(config: ConversionConfig) -> tuple[Order, ...]:
    return ("dw-pw", "pw-dw") if config.order == "auto" else (config.order,)


def _layer_override(layer: ConvLayer, config: ConversionConfig) -> int | None:
    for pat, k in config.layer_rank.items():
        if layer.name == pat or fnmatch.fnmatchcase(layer.name, pat):
            return k
    return None


@dataclass(frozen=True)
class _Option:
    order: Order
    rank: int
    params: int
    macs: int | None
    energy: float

    @property
    def err2(self) -> float:
        return max(0.0, 1.0 - self.energy)


def _options(layer: ConvLayer, config: ConversionConfig, curves: dict[Order, np.ndarray]) -> list[_Option]:
    out = []
    for order in _orders(config):
        curve = curves[order]
        for r in range(1, len(curve) + 1):
            out.append(_Option(order, r, params_of(layer, order, r), macs_of(layer, order, r), float(curve[r - 1])))
    return out


def _at_rank(options: list[_Option], rank: int) -> list[_Option]:
    """One candidate per order: the option at min(rank, that order's max rank)."""
    per_order: dict[str, _Option] = {}
    for o in options:
        if o.rank <= rank and (o.order not in per_order or o.rank > per_order[o.order].rank):
            per_order[o.order] = o
    return list(per_order.values())


def _for_energy(options: list[_Option], target: float) -> list[_Option]:
    """One candidate per order: the smallest rank keeping at least ``target`` of the energy."""
    per_order: dict[str, _Option] = {}
    for o in sorted(options, key=lambda o: o.rank):
        if o.energy >= target - _ENERGY_EPS and o.order not in per_order:
            per_order[o.order] = o
    return list(per_order.values())


def _by_error(o: _Option) -> tuple:
    return (round(o.err2, 12), o.params)


def _by_params(o: _Option) -> tuple:
    return (o.params, o.err2)


def _rejection(opt: _Option, d: LayerDecision, config: ConversionConfig) -> str | None:
    """Why converting with this option is not worth it (too little saved, MACs added), or None."""
    if config.force:
        return None
    limit = (1.0 - config.min_reduction) * d.params_before
    if opt.params >= d.params_before or (config.min_reduction > 0 and opt.params > limit):
        return (f"rank {opt.rank} ({opt.order}) would not reduce parameters enough "
                f"({opt.params} vs {d.params_before}; min_reduction {config.min_reduction:g})")
    if _adds_macs(opt, d):
        return f"rank {opt.rank} ({opt.order}) would add MACs ({opt.macs} > {d.macs_before})"
    return None


def _adds_macs(opt: _Option, d: LayerDecision) -> bool:
    return opt.macs is not None and d.macs_before is not None and opt.macs > d.macs_before


def _pick(candidates: list[_Option], d: LayerDecision, config: ConversionConfig,
          key: Callable[[_Option], tuple]) -> _Option:
    """Between the orders' candidates (same policy, so no rank is changed): the best by ``key`` among those
    worth converting with; if none is, the best overall, whose rejection becomes the layer's skip reason."""
    worth = [o for o in candidates if _rejection(o, d, config) is None]
    return min(worth or candidates, key=key)


def plan_layers(
    layers: Sequence[ConvLayer],
    config: ConversionConfig,
    *,
    total_params: int,
    total_macs: int | None,
) -> Plan:
    """Decide, for every layer, whether and how it is converted, and compute its factors.

    Args:
        layers: every conv of the model, as the adapter found them.
        config: the options.
        total_params: the whole model's parameters (for ``target_params``).
        total_macs: the whole model's MACs, or None if unknown (then ``target_macs`` is refused).

    Raises:
        InvalidOptionsError: a budget cannot be met (the message gives the smallest reachable share), or a
            MAC budget was asked for a model whose layer shapes could not be inferred.
    """
    kind, value = config.policy
    decisions: list[LayerDecision] = []
    candidates: list[tuple[LayerDecision, list[_Option]]] = []
    policy: dict = {"kind": kind, "value": value, "order": config.order, "lowering": config.lowering}

    for layer in layers:
        d = LayerDecision(layer=layer, status="skipped", reason="")
        d.params_before = d.params_after = params_of(layer, None, None)
        d.macs_before = d.macs_after = macs_of(layer, None, None)
        decisions.append(d)
        why = eligibility(layer, config)
        if why is not None:
            d.reason = why
            continue
        assert layer.weight is not None
        spectra = {o: spectrum(layer.weight, layer.groups, o) for o in _orders(config)}
        d.spectra = spectra
        curves = {o: energy_curve(spec) for o, spec in spectra.items()}
        options = _options(layer, config, curves)
        override = _layer_override(layer, config)
        # --order auto: the smaller weight error at a given rank; the fewer parameters at a given energy.
        if override is not None:
            best = _pick(_at_rank(options, override), d, config, _by_error)
            _choose(d, best, config, f"rank {override} set for this layer")
        elif kind == "rank":
            best = _pick(_at_rank(options, int(value)), d, config, _by_error)
            _choose(d, best, config, f"rank {int(value)} for every layer")
        elif kind == "energy":
            best = _pick(_for_energy(options, float(value)), d, config, _by_params)
            _choose(d, best, config, f"keeps ≥ {value:.4g} of kernel energy")
        else:
            candidates.append((d, options))

    if kind in ("target_params", "target_macs"):
        policy.update(_allocate(candidates, decisions, config, kind, float(value), total_params, total_macs))

    for d in decisions:
        if d.converted:
            d.decomposition = decompose(d.layer.weight, d.layer.groups, d.order, d.rank, d.spectra[d.order])
            d.energy = d.decomposition.energy
            d.rel_weight_error = d.decomposition.rel_error
        d.spectra = {}
    return Plan(decisions=decisions, policy=policy)


def _choose(d: LayerDecision, opt: _Option, config: ConversionConfig, why: str) -> None:
    d.order, d.rank, d.energy = opt.order, opt.rank, opt.energy
    d.rel_weight_error = float(np.sqrt(opt.err2))
    rejected = _rejection(opt, d, config)
    if rejected is not None:
        d.reason = rejected
        return
    d.status = "converted"
    d.reason = why
    d.params_after = opt.params
    d.macs_after = opt.macs


def _allocate(
    candidates: list[tuple[LayerDecision, list[_Option]]],
    decisions: list[LayerDecision],
    config: ConversionConfig,
    kind: str,
    share: float,
    total_params: int,
    total_macs: int | None,
) -> dict:
    metric = "params" if kind == "target_params" else "macs"
    if metric == "macs":
        unknown = [d.layer.name for d, _ in candidates if d.macs_before is None]
        if total_macs is None or unknown:
            where = f" (layer {unknown[0]})" if unknown else ""
            raise InvalidOptionsError(
                "target_macs needs every layer's output shape, which could not be inferred"
                f"{where}; pass --input-shape for symbolic inputs or use target_params")
        total = total_macs
    else:
        total = total_params
    budget = share * total

    def cost(d: LayerDecision, o: _Option | None) -> float:
        if o is None:
            return float(d.params_before if metric == "params" else d.macs_before)
        return float(o.params if metric == "params" else o.macs)

    # Each candidate's menu: "keep" (None) plus options cheaper than keeping, as a lower convex hull.
    hulls: list[list[tuple[float, float, _Option | None]]] = []
    for d, options in candidates:
        keep = cost(d, None)
        pts = [(cost(d, o), o.err2, o) for o in options if cost(d, o) < keep and (config.force or not _adds_macs(o, d))]
        pts.append((keep, 0.0, None))
        hulls.append(_lower_hull(pts))
    fixed = total - sum(cost(d, None) for d, _ in candidates)
    floor = fixed + sum(h[0][0] for h in hulls)
    if floor > budget + 1e-9:
        raise InvalidOptionsError(
            f"{kind}={share:g} cannot be met: the smallest reachable is {floor / total:.3f} of the model's "
            f"{metric} (layers that cannot be converted and non-conv layers already take "
            f"{fixed / total:.3f}); raise the target or use an energy/rank policy")
    pos = [0] * len(hulls)
    spent = floor
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        h = hulls[i]
        if pos[i] + 1 < len(h):
            (c0, e0, _), (c1, e1, _) = h[pos[i]], h[pos[i] + 1]
            slope = (e0 - e1) / max(c1 - c0, 1e-12)
            heapq.heappush(heap, (-slope, i))

    for i in range(len(hulls)):
        push(i)
    skipped: list[int] = []
    while heap:
        _, i = heapq.heappop(heap)
        h = hulls[i]
        step = h[pos[i] + 1][0] - h[pos[i]][0]
        if spent + step <= budget + 1e-9:
            spent += step
            pos[i] += 1
            push(i)
        else:
            skipped.append(i)  # does not fit; a later, smaller step of another layer may
    for (d, _), h, p in zip(candidates, hulls, pos, strict=True):
        _, _, opt = h[p]
        if opt is None:
            d.reason = f"kept: the {metric} budget is better spent on other layers"
            continue
        _choose(d, opt, config.model_copy(update={"force": True}),
                f"rank allocated for {kind}={share:g} (least total weight error)")
    achieved = spent / total if total else 0.0
    return {
        "allocation": "greedy on each layer's convex hull of (cost, squared relative weight error), "
                      "minimising their sum under the budget",
        "budget_metric": metric,
        "achieved": round(achieved, 6),
    }


def _lower_hull(pts: list[tuple[float, float, _Option | None]]) -> list[tuple[float, float, _Option | None]]:
    """Points on the lower-left convex hull of (cost, error), by increasing cost and decreasing error."""
    pts = sorted(pts, key=lambda p: (p[0], p[1]))
    # keep the Pareto front (strictly decreasing error as cost grows)
    front: list[tuple[float, float, _Option | None]] = []
    for p in pts:
        if not front or p[1] < front[-1][1] - 1e-15:
            front.append(p)
    hull: list[tuple[float, float, _Option | None]] = []
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
