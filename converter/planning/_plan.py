"""Which layers to convert, in which order, at which rank and with which lowering: decisions only.

``plan`` reads ``ConvLayer`` records (and their weights' singular values, for the energy each rank keeps), lists
every layer's candidates, asks a cost model (``_cost``) what each costs, and applies the rank policy in force
(``_policies``). It returns one ``LayerDecision`` per layer: a status and a reason, and for a converted layer its
order, rank and lowering with the figures the report shows. A layer that is not converted is a value with a
reason ("1×1 conv: already pointwise"), never an exception.

It does not compute factors (``_factorize`` does, from the decisions) and does not touch graphs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._config import ConversionConfig
from .._errors import InvalidOptionsError
from ..algebra import Order, energy_curve
from ..formats import ConvLayer
from ..latency import lowerings_for
from ._cost import Candidate, Cost, CostModel, CountingCostModel, Lowering, error_report, macs_of, params_of
from ._factorize import Spectra
from ._policies import OVERRIDE, RANK_POLICIES, Option, RankPolicy, allocate

__all__ = ["LayerDecision", "Plan", "eligibility", "macs_of", "orders", "params_of", "plan", "priced_options"]


@dataclass
class LayerDecision:
    """What happens to one layer, with the numbers the report shows. ``cost_before`` is the layer as it is;
    ``cost_after`` the chosen candidate's (equal to ``cost_before`` for a skipped layer)."""

    layer: ConvLayer
    status: str  # "converted" | "skipped"
    reason: str
    order: Order | None = None
    rank: int | None = None
    lowering: Lowering | None = None
    energy: float | None = None
    rel_weight_error: float | None = None
    cost_before: Cost = field(default_factory=lambda: Cost(0, None))
    cost_after: Cost = field(default_factory=lambda: Cost(0, None))

    @property
    def converted(self) -> bool:
        return self.status == "converted"

    @property
    def params_before(self) -> int:
        return self.cost_before.params

    @property
    def params_after(self) -> int:
        return self.cost_after.params

    @property
    def macs_before(self) -> int | None:
        return self.cost_before.macs

    @property
    def macs_after(self) -> int | None:
        return self.cost_after.macs


@dataclass
class Plan:
    """Decisions for every layer, and how the policy was applied (for the report's ``policy`` key)."""

    decisions: list[LayerDecision]
    policy: dict


def eligibility(layer: ConvLayer, config: ConversionConfig) -> str | None:
    """Why the layer cannot be converted at all, or None if it can."""
    if layer.transposed:
        return "ConvTranspose: not supported yet"
    if layer.weight is None:
        return layer.note or "weight is not a constant"
    if layer.taps == 1:
        return "1×1 conv: already pointwise"
    if layer.groups == layer.in_channels and layer.in_channels > 1:
        # (one input channel and groups = 1 is an ordinary dense conv: its N×k kernel still compresses)
        return "depthwise conv (groups = in channels): already depthwise"
    for pat in config.exclude:
        if fnmatch.fnmatchcase(layer.name, pat):
            return f"excluded by pattern {pat!r}"
    return None


def orders(config: ConversionConfig) -> tuple[Order, ...]:
    """The forms the planner considers: both with ``order="auto"``, else the one asked for."""
    return ("dw-pw", "pw-dw") if config.order == "auto" else (config.order,)


def _lowerings(config: ConversionConfig) -> tuple[Lowering, ...]:
    # auto: every lowering, split first, so that with equal costs (counted costs always are) split wins.
    return ("split", "fused", "summed") if config.lowering == "auto" else (config.lowering,)


def _layer_override(layer: ConvLayer, config: ConversionConfig) -> int | None:
    for pat, k in config.layer_rank.items():
        if layer.name == pat or fnmatch.fnmatchcase(layer.name, pat):
            return k
    return None


def _candidates(layer: ConvLayer, config: ConversionConfig, spectra: Spectra) -> list[Candidate]:
    out = []
    for order in orders(config):
        curve = energy_curve(spectra.get(layer, order))
        for lowering in _lowerings(config):
            # auto lists a lowering only where it emits a graph of its own (rank 1: all are the same two convs)
            out.extend(Candidate(layer, order, r, lowering, float(curve[r - 1])) for r in range(1, len(curve) + 1)
                       if config.lowering != "auto" or lowering in lowerings_for(order, r, layer.groups))
    return out


def priced_options(layers: Sequence[ConvLayer], config: ConversionConfig, cost_model: CostModel,
                   spectra: Spectra) -> list[tuple[ConvLayer, Cost, list[Option]]]:
    """Every eligible layer's cost as it is and its candidates, priced in one cost-model call: the menus the
    ``max_accuracy_drop`` search (``_search``) builds its frontier from."""
    eligible = [layer for layer in layers if eligibility(layer, config) is None]
    menus = [_candidates(layer, config, spectra) for layer in eligible]
    priced = iter(cost_model.costs([Candidate(layer) for layer in eligible] + [c for m in menus for c in m]))
    kept = [next(priced) for _ in eligible]
    return [(layer, cost, [Option(c, next(priced)) for c in cands])
            for layer, cost, cands in zip(eligible, kept, menus, strict=True)]


def plan(
    layers: Sequence[ConvLayer],
    config: ConversionConfig,
    cost_model: CostModel | None = None,
    *,
    total_params: int,
    total_macs: int | None,
    spectra: Spectra | None = None,
    total_latency_ms: float | None = None,
) -> Plan:
    """Decide, for every layer, whether and how it is converted.

    Args:
        layers: every conv of the model, as the adapter found them.
        config: the options.
        cost_model: prices candidates (default: ``CountingCostModel``, parameters and MACs). Asked once, with
            every candidate of every eligible layer.
        total_params: the whole model's parameters (for ``target_params``).
        total_macs: the whole model's MACs, or None if unknown (then ``target_macs`` is refused).
        spectra: a cache of the layers' singular values, shared with ``factorize`` (default: a fresh one).
        total_latency_ms: the whole original model's measured latency (for ``target_latency``).

    Raises:
        InvalidOptionsError: a budget cannot be met (the message gives the smallest reachable share), or a
            MAC budget was asked for a model whose layer shapes could not be inferred.
    """
    cost_model = cost_model or CountingCostModel()
    spectra = spectra if spectra is not None else Spectra()
    kind, value = config.policy
    policy = RANK_POLICIES[kind]
    decisions = [LayerDecision(layer=layer, status="skipped", reason="") for layer in layers]
    eligible: list[tuple[LayerDecision, list[Candidate]]] = []
    for d in decisions:
        why = eligibility(d.layer, config)
        if why is not None:
            d.reason = why
        else:
            eligible.append((d, _candidates(d.layer, config, spectra)))

    # One call to the cost model for the whole plan: every layer as it is, then every candidate.
    asked = [Candidate(d.layer) for d in decisions] + [c for _, cands in eligible for c in cands]
    priced = iter(cost_model.costs(asked))
    for d in decisions:
        d.cost_before = d.cost_after = next(priced)
    menus = [(d, [Option(c, next(priced)) for c in cands]) for d, cands in eligible]

    info: dict = {"kind": kind, "value": value, "order": config.order, "lowering": config.lowering,
                  "cost_model": cost_model.name, "error": WEIGHT_ERROR}
    report = error_report(cost_model)
    measured = any(o.cost.error is not None for _, options in menus for o in options)
    if report is not None and measured:
        info.update(report)
    block = int(getattr(cost_model, "block", 1) or 1)
    budgeted: list[tuple[LayerDecision, list[Option]]] = []
    for d, options in menus:
        override = _layer_override(d.layer, config)
        if override is not None:
            _per_layer(d, options, OVERRIDE, override, config, block, measured)
        elif policy.budget is None:
            _per_layer(d, options, policy, float(value), config, block, measured)
        else:
            budgeted.append((d, options))
    if policy.budget is not None:
        info.update(_spend(budgeted, decisions, config, policy, float(value), total_params, total_macs,
                           total_latency_ms))
    return Plan(decisions=decisions, policy=info)


#: What the planner's error is when the cost model measures none (the report's ``policy.error``).
WEIGHT_ERROR = "weight error (1 − kept energy of the kernel)"


def _why(policy: RankPolicy, value: float, opt: Option, measured: bool) -> str:
    """A converted layer's reason: the policy, the error it minimised (``measured``: output errors were
    measured for the plan) and, where measured, this layer's."""
    if not measured:
        return policy.describe(value, "weight error")
    if opt.cost.error is None:
        return policy.describe(value, "error") + "; this layer on its weight error: its input could not be captured"
    return (policy.describe(value, "output error")
            + f"; this layer's relative output error on the calibration samples {np.sqrt(opt.err2):.3g}")


def _per_layer(d: LayerDecision, options: list[Option], policy: RankPolicy, value: float,
               config: ConversionConfig, block: int = 1, measured: bool = False) -> None:
    assert policy.narrow is not None and policy.prefer is not None
    candidates = policy.narrow(options, value)
    notes: dict[int, str] = {}
    if block > 1 and config.default_policy:  # an explicit rank policy gets exactly the rank it names
        candidates, notes = _round_ranks(d.layer, candidates, options, block)
    # Between the forms' candidates (same policy, so no rank is changed): the best among those worth converting
    # with; if none is, the best overall, whose rejection becomes the layer's skip reason. The default policy
    # promises speed: where latency was measured it prefers the fastest form.
    worth = [o for o in candidates if _rejection(o, d, config) is None] or candidates
    if _timed(worth) and config.default_policy:
        best = min(worth, key=_by_latency)
    elif _timed(worth):
        # the policy's own criterion first (error at a rank, parameters at an energy); forms within
        # _NEAR of the best by it are near-ties, broken by the measured latency
        first = min(policy.prefer(o)[0] for o in worth)
        near = [o for o in worth if policy.prefer(o)[0] <= first * (1 + _NEAR) + 1e-12]
        best = min(near, key=lambda o: (o.cost.latency_ms, policy.prefer(o)))
    else:
        best = min(worth, key=policy.prefer)
    _choose(d, best, config, _why(policy, value, best, measured) + notes.get(id(best), ""))


#: Forms whose policy criterion (error, parameters) is within this share of the best are near-ties.
_NEAR = 0.05


def _timed(options: list[Option]) -> bool:
    return bool(options) and all(o.cost.latency_ms is not None for o in options)


def _by_latency(o: Option) -> tuple:
    return (o.cost.latency_ms, o.cost.params, o.err2)


def _round_ranks(layer: ConvLayer, candidates: list[Option], options: list[Option],
                 block: int) -> tuple[list[Option], dict[int, str]]:
    """Each DW→PW candidate whose pointwise input channels per group (``C·K``) do not fill whole channel blocks
    is replaced by the same form at the next rank that does, if that measured no slower (it keeps more energy)."""
    c = layer.in_channels // layer.groups
    out, notes = [], {}
    for o in candidates:
        k = o.candidate.rank or 0
        lat = o.cost.latency_ms
        if o.candidate.order != "dw-pw" or lat is None or (c * k) % block == 0:
            out.append(o)
            continue
        up = min((u for u in options if u.form == o.form and (u.candidate.rank or 0) > k
                  and (c * (u.candidate.rank or 0)) % block == 0), key=lambda u: u.candidate.rank or 0, default=None)
        if up is not None and up.cost.latency_ms is not None and up.cost.latency_ms <= lat:
            out.append(up)
            notes[id(up)] = (f"; rank rounded up {k}→{up.candidate.rank} so that its {c}·K intermediate channels "
                             f"fill whole {block}-channel blocks (measured {up.cost.latency_ms:.3g} ms, no slower "
                             f"than {lat:.3g} ms)")
        else:
            out.append(o)
    return out, notes


def _rejection(opt: Option, d: LayerDecision, config: ConversionConfig) -> str | None:
    """Why converting with this option is not worth it (too little saved, MACs or latency added), or None."""
    if config.force:
        return None
    c, before = opt.cost, d.cost_before
    what = f"rank {opt.candidate.rank} ({opt.candidate.order})"
    limit = (1.0 - config.min_reduction) * before.params
    if c.params >= before.params or (config.min_reduction > 0 and c.params > limit):
        return (f"{what} would not reduce parameters enough "
                f"({c.params} vs {before.params}; min_reduction {config.min_reduction:g})")
    if _adds_macs(opt, d):
        return f"{what} would add MACs ({c.macs} > {before.macs})"
    # Slower in context, measured: the latency analogue of adding MACs. The default policy promises speed and
    # keeps any layer measured slower; an explicit policy asked for compression and keeps a layer only when every
    # form of its rank is clearly slower (by more than _SLOWER_MARGIN: near-ties are noise, and it gets the
    # fastest form). A stem conv on 3 input channels is the usual case: decomposed, it runs off the runtime's
    # fast kernels and can cost more than the rest of the model saves.
    if c.latency_ms is not None and before.latency_ms is not None:
        margin = 1.0 if config.default_policy else 1.0 + _SLOWER_MARGIN
        if c.latency_ms > margin * before.latency_ms:
            return (f"{what} would be slower ({c.latency_ms:.4g} ms > {before.latency_ms:.4g} ms in context)"
                    + ("" if config.default_policy else "; --force converts it anyway"))
    return None


#: Under an explicit rank policy, a layer is kept as "slower" only if its fastest form measured this much slower.
_SLOWER_MARGIN = 0.1


def _adds_macs(opt: Option, d: LayerDecision) -> bool:
    return opt.cost.macs is not None and d.macs_before is not None and opt.cost.macs > d.macs_before


def _choose(d: LayerDecision, opt: Option, config: ConversionConfig, why: str) -> None:
    c = opt.candidate
    d.order, d.rank, d.lowering, d.energy = c.order, c.rank, c.lowering, c.energy
    d.rel_weight_error = float(np.sqrt(max(0.0, 1.0 - c.energy)))
    rejected = _rejection(opt, d, config)
    if rejected is not None:
        d.reason = rejected
        return
    d.status = "converted"
    d.reason = why
    d.cost_after = opt.cost


def _spend(
    menus: list[tuple[LayerDecision, list[Option]]],
    decisions: list[LayerDecision],
    config: ConversionConfig,
    policy: RankPolicy,
    share: float,
    total_params: int,
    total_macs: int | None,
    total_latency_ms: float | None = None,
) -> dict:
    metric = policy.budget
    assert metric is not None
    if metric == "latency_ms":
        return _spend_latency(menus, config, policy, share, total_latency_ms)
    if metric == "macs":
        unknown = [d.layer.name for d, _ in menus if d.macs_before is None]
        if total_macs is None or unknown:
            where = f" (layer {unknown[0]})" if unknown else ""
            raise InvalidOptionsError(
                f"{policy.name} needs every layer's output shape, which could not be inferred"
                f"{where}; pass --input-shape for symbolic inputs or use target_params")
        total = total_macs
    else:
        total = total_params
    allowed = [(d.cost_before, [o for o in options if config.force or not _adds_macs(o, d)]) for d, options in menus]
    chosen, spent = allocate(allowed, metric, share * total, total, f"{policy.name}={share:g}")
    forced = config.model_copy(update={"force": True})
    for (d, options), opt in zip(menus, chosen, strict=True):
        if opt is None:
            d.reason = f"kept: the {metric} budget is better spent on other layers"
        else:
            _choose(d, _fastest_lowering(opt, options), forced, _why(policy, share, opt, _kind(menus) == "output"))
    return {
        "allocation": f"greedy on each layer's convex hull of (cost, squared relative {_kind(menus)} error), "
                      "minimising their sum under the budget",
        "budget_metric": metric,
        "achieved": round(spent / total if total else 0.0, 6),
    }


def _kind(menus: list[tuple[LayerDecision, list[Option]]]) -> str:
    """``output`` if any option was priced on a measured error, else ``weight``."""
    return "output" if any(o.cost.error is not None for _, options in menus for o in options) else "weight"


def _fastest_lowering(opt: Option, options: list[Option]) -> Option:
    """The same order and rank in the lowering measured fastest (counted costs are equal across lowerings)."""
    same = [o for o in options if o.candidate.order == opt.candidate.order and o.candidate.rank == opt.candidate.rank
            and o.cost.latency_ms is not None]
    return min(same, key=lambda o: o.cost.latency_ms or 0.0) if same else opt


def _spend_latency(
    menus: list[tuple[LayerDecision, list[Option]]],
    config: ConversionConfig,
    policy: RankPolicy,
    share: float,
    total_ms: float | None,
) -> dict:
    """``target_latency``: spend the measured latency budget; layers that were not timed are kept as they are."""
    if total_ms is None:
        raise InvalidOptionsError(
            f"{policy.name} needs measured latency: do not pass --no-measure, and give concrete input shapes "
            "(--input-shape)")
    timed = [(d, o) for d, o in menus if d.cost_before.latency_ms is not None]
    for d, _ in menus:
        if d.cost_before.latency_ms is None:
            d.reason = "kept: not timed (latency budget spent, or spatial sizes unknown), so not priced"
    allowed = [(d.cost_before, [o for o in options if o.cost.latency_ms is not None]) for d, options in timed]
    chosen, spent = allocate(allowed, "latency_ms", share * total_ms, total_ms, f"{policy.name}={share:g}")
    forced = config.model_copy(update={"force": True})
    for (d, _), opt in zip(timed, chosen, strict=True):
        if opt is None:
            d.reason = "kept: the latency budget is better spent on other layers"
        else:
            _choose(d, opt, forced, _why(policy, share, opt, _kind(menus) == "output"))
    return {
        "allocation": f"greedy on each layer's convex hull of (in-context latency, squared relative {_kind(menus)} "
                      "error), minimising their sum under the budget",
        "budget_metric": "latency_ms",
        "achieved": round(spent / total_ms if total_ms else 0.0, 6),
    }
