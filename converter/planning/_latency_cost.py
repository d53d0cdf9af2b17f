"""``LatencyCostModel``: the planner's cost-model protocol (``converter._cost.CostModel``) answered with measured
latency — counted parameters and MACs as ``CountingCostModel`` gives them, plus each candidate's in-context
latency on the target backend (``LatencyModel``).

The planner asks once with every candidate of every layer; from those candidates (their kept energy per order
and rank) this model works out the ranks the policy can pick (``focus_ranks``), times only those (and their
block-rounded neighbours), and interpolates the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .._config import ConversionConfig
from ..algebra import Order
from ..formats import ConvLayer
from ..latency import LatencyModel, focus_ranks
from ._cost import Candidate, Cost, CostModel, CountingCostModel, error_report

__all__ = ["LatencyCostModel"]


class LatencyCostModel:
    """Counted costs plus measured in-context latency (see the module docstring).

    Args:
        model: times candidates on the target backend.
        config: the options (which rank policy, which per-layer overrides).
        counts: the counting model for parameters and MACs (default ``CountingCostModel``); errors it fills
            (``OutputErrorCostModel``) are kept.
    """

    name = "latency"

    def __init__(self, model: LatencyModel, config: ConversionConfig, counts: CostModel | None = None) -> None:
        self.model = model
        self.config = config
        self.counts = counts or CountingCostModel()

    @property
    def block(self) -> int:
        """The runtime's channel block (1: no blocking)."""
        return self.model.block

    @property
    def error_report(self) -> Mapping[str, Any] | None:
        """What the counting model's ``Cost.error`` measures (measured output error, say), if anything."""
        return error_report(self.counts)

    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        """Counted costs (and the counting model's errors) with ``latency_ms`` filled in where the layer was timed."""
        counted = self.counts.costs(candidates)
        self.model.prepare(self._focus(candidates, counted))
        return [dataclasses.replace(cost, latency_ms=self.model.latency(c.layer, c.order, c.rank, c.lowering))
                for c, cost in zip(candidates, counted, strict=True)]

    def _focus(self, candidates: Sequence[Candidate],
               counted: Sequence[Cost]) -> list[tuple[ConvLayer, dict[Order, tuple[int, ...]]]]:
        curves: dict[str, dict[Order, dict[int, float]]] = {}
        layers: dict[str, ConvLayer] = {}
        kept: dict[str, Cost] = {}
        priced: dict[tuple[str, Order, int], Cost] = {}
        for c, cost in zip(candidates, counted, strict=True):
            if c.order is None or c.rank is None:
                kept[c.layer.name] = cost
                continue
            layers[c.layer.name] = c.layer
            curves.setdefault(c.layer.name, {}).setdefault(c.order, {})[c.rank] = c.energy
            priced[(c.layer.name, c.order, c.rank)] = cost
        kind, value = self.config.policy
        out = []
        for name, per_order in curves.items():
            energies = {o: [e for _, e in sorted(r.items())] for o, r in per_order.items()}
            focus = focus_ranks(kind, value, _override(name, self.config), energies)
            # a rank the counts already rule out (too little saved, MACs added) is not worth timing
            focus = {o: tuple(r for r in ranks if self._worth(priced.get((name, o, r)), kept.get(name)))
                     for o, ranks in focus.items()}
            focus = {o: ranks for o, ranks in focus.items() if ranks}
            if focus:
                out.append((layers[name], focus))
        return out

    def _worth(self, cost: Cost | None, before: Cost | None) -> bool:
        cfg = self.config
        if cost is None or before is None or cfg.force or cfg.policy[0].startswith("target_"):
            return True
        if cost.params >= before.params or cost.params > (1.0 - cfg.min_reduction) * before.params:
            return False
        return cost.macs is None or before.macs is None or cost.macs <= before.macs


def _override(name: str, config: ConversionConfig) -> int | None:
    import fnmatch

    for pat, k in config.layer_rank.items():
        if name == pat or fnmatch.fnmatchcase(name, pat):
            return k
    return None
