"""What a candidate conversion of a layer costs: the cost-model protocol the planner asks, and the counting model
(parameters and MACs) used by default.

The planner (``_plan``) never computes a cost itself. It lists candidates — a layer kept as it is, or decomposed
in one order at one rank with one lowering — and asks a ``CostModel`` for all of them in one call, so that a
model that measures (latency timed in context, output error on user data) can batch and cache its work. A cost
model may leave a figure unknown (None); the planner then falls back to what it can compute (weight error from
the singular values) or ignores the figure (no latency: no "slower" check).

Costs of a rank-K decomposition of a layer with ``N`` outputs, ``M`` inputs (``C = M/g`` per group), ``k``
kernel taps, input and output spatial sizes ``P_in``, ``P_out`` (products of the spatial dims)::

    params  original  N·C·k              dw-pw  K·(M·k + N·C)            pw-dw  K·(N·C + N·k)
    MACs    original  N·C·k·P_out        dw-pw  K·(M·k + N·C)·P_out      pw-dw  K·N·C·P_in + K·N·k·P_out

(plus ``N`` for a bias, which is unchanged). Every lowering (split, fused, summed) has the same counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..algebra import Lowering, Order
from ..formats import ConvLayer

__all__ = ["Candidate", "Cost", "CostModel", "CountingCostModel", "Lowering", "error_report", "macs_of", "params_of"]


@dataclass(frozen=True)
class Candidate:
    """One way to treat a layer: kept (``order`` None) or decomposed in ``order`` at ``rank``, lowered as
    ``lowering``. ``energy`` is the share of the kernel's squared singular values that rank keeps (1.0 kept)."""

    layer: ConvLayer
    order: Order | None = None
    rank: int | None = None
    lowering: Lowering | None = None
    energy: float = 1.0

    @property
    def keeps(self) -> bool:
        """Whether this is "keep the original layer"."""
        return self.order is None


@dataclass(frozen=True)
class Cost:
    """A candidate's cost. ``params`` and ``macs`` (batch 1; None when spatial sizes are unknown) are counted;
    ``latency_ms`` (None: not measured) and ``error`` (squared relative error the candidate adds; None: the
    planner uses the weight error ``1 - energy``) come from models that measure."""

    params: int
    macs: int | None
    latency_ms: float | None = None
    error: float | None = None


@runtime_checkable
class CostModel(Protocol):
    """Prices candidates for the planner. Implementations may be expensive: they get every candidate of a plan
    in one call and may batch, cache or measure."""

    @property
    def name(self) -> str:
        """A short name for the report's ``policy`` (``counts``, ``latency``…)."""
        ...

    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        """One ``Cost`` per candidate, in order."""
        ...


def params_of(layer: ConvLayer, order: Order | None, rank: int | None) -> int:
    """Weight elements of the layer as it is (order None) or decomposed at ``rank``; a bias is carried over
    unchanged and not counted."""
    n, m, g, k = layer.out_channels, layer.in_channels, layer.groups, layer.taps
    c = m // g
    if order is None:
        return n * c * k
    assert rank is not None
    if order == "dw-pw":
        return rank * (m * k + n * c)
    return rank * (n * c + n * k)


def macs_of(layer: ConvLayer, order: Order | None, rank: int | None) -> int | None:
    """MACs of the layer (batch 1) as it is or decomposed, or None without inferred spatial sizes. A transposed
    conv's spatial steps do their work per *input* position (each feeds ``N/g·k`` outputs)."""
    if layer.out_spatial is None:
        return None
    n, m, g, k = layer.out_channels, layer.in_channels, layer.groups, layer.taps
    c = m // g
    p_out = int(math.prod(layer.out_spatial))
    if layer.transposed:
        if layer.in_spatial is None:
            return None
        p_in = int(math.prod(layer.in_spatial))
        if order is None:
            return n * c * k * p_in
        assert rank is not None
        if order == "dw-pw":  # depthwise transposed (M·K·k per input position), pointwise at the output
            return rank * (m * k * p_in + n * c * p_out)
        return rank * (n * c + n * k) * p_in  # pointwise and grouped transposed, both at the input positions
    if order is None:
        return n * c * k * p_out
    assert rank is not None
    if order == "dw-pw":
        return rank * (m * k + n * c) * p_out
    if layer.in_spatial is None:
        return None
    p_in = int(math.prod(layer.in_spatial))
    return rank * n * c * p_in + rank * n * k * p_out


class CountingCostModel:
    """Parameters and MACs, counted from the layer's shape (see the module docstring); no latency, no error."""

    name = "counts"

    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        """Counted costs of each candidate."""
        return [Cost(params_of(c.layer, c.order, c.rank), macs_of(c.layer, c.order, c.rank)) for c in candidates]


def error_report(model: CostModel) -> Mapping[str, Any] | None:
    """What a cost model's ``Cost.error`` measures, for the report's ``policy`` (its optional ``error_report``
    attribute: an ``error`` sentence and any further keys), or None for a model that fills no error."""
    return getattr(model, "error_report", None)
