"""Factorising: from the planner's decisions to each converted layer's factors, which a later step (calibration)
may refine before the adapter rewrites the graph.

The algebra is in ``_decompose``; this module only applies it to the decided layers and keeps the singular values
the planner already computed (``Spectra``), so each layer's SVD is done once per order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..algebra import Decomposition, Lowered, Order, Spectrum, decompose, lower, spectrum
from ..formats import ConvLayer, Rewrite

if TYPE_CHECKING:
    from ._cost import Lowering
    from ._plan import LayerDecision

__all__ = ["Factors", "Spectra", "factorize", "rewrites"]


class Spectra:
    """Each layer's ``Spectrum`` per order, computed on first use and kept (planner and factorising share it)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, Order], Spectrum] = {}
        # the last layer's weight in float64: both orders of a layer are asked for one after the other, and
        # converting the weight once serves both (only one at a time is kept, so memory stays that of a layer)
        self._last: tuple[ConvLayer, np.ndarray] | None = None

    def get(self, layer: ConvLayer, order: Order) -> Spectrum:
        """The layer's spectrum for ``order`` (its weight must be a constant)."""
        key = (id(layer), order)
        if key not in self._cache:
            self._cache[key] = spectrum(self._weight64(layer), layer.groups, order)
        return self._cache[key]

    def _weight64(self, layer: ConvLayer) -> np.ndarray:
        if self._last is None or self._last[0] is not layer:
            assert layer.weight is not None
            self._last = (layer, layer.weight.astype(np.float64))
        return self._last[1]

    def clear(self) -> None:
        """Drop every cached spectrum (they hold float64 copies of the weights' singular vectors)."""
        self._cache.clear()
        self._last = None


@dataclass
class Factors:
    """One converted layer's factors.

    Attributes:
        layer: the layer.
        decomposition: the two factors (``first``, ``second``; see ``Decomposition``) and their weight error.
        lowering: how they are emitted as convs.
        bias: a replacement bias for the layer's output, or None to keep the original (the adapter carries it
            over). Calibration may set it.
    """

    layer: ConvLayer
    decomposition: Decomposition
    lowering: Lowering
    bias: np.ndarray | None = field(default=None, repr=False)

    @property
    def order(self) -> Order:
        return self.decomposition.order

    @property
    def rank(self) -> int:
        return self.decomposition.rank

    @property
    def depthwise(self) -> np.ndarray:
        """The spatial (depthwise or grouped) factor's weight."""
        d = self.decomposition
        return d.first if d.order == "dw-pw" else d.second

    @property
    def pointwise(self) -> np.ndarray:
        """The 1×1 factor's weight."""
        d = self.decomposition
        return d.second if d.order == "dw-pw" else d.first

    def with_weights(self, depthwise: np.ndarray, pointwise: np.ndarray, bias: np.ndarray | None = None) -> Factors:
        """The same factors with refined weights (same shapes), e.g. after calibration."""
        d = self.decomposition
        if depthwise.shape != self.depthwise.shape or pointwise.shape != self.pointwise.shape:
            raise ValueError(f"layer {self.layer.name}: refined factors must keep their shapes "
                             f"{self.depthwise.shape} and {self.pointwise.shape}")
        first, second = (depthwise, pointwise) if d.order == "dw-pw" else (pointwise, depthwise)
        dec = replace(d, first=np.asarray(first, np.float32), second=np.asarray(second, np.float32))
        return replace(self, decomposition=dec, bias=bias if bias is not None else self.bias)

    def lowered(self) -> Lowered:
        """The factors as convs, in this layer's lowering."""
        return lower(self.decomposition, self.lowering)


def factorize(decisions: Iterable[LayerDecision], spectra: Spectra | None = None) -> list[Factors]:
    """The factors of every converted layer, in the decisions' order."""
    spectra = spectra if spectra is not None else Spectra()
    out = []
    for d in decisions:
        if not d.converted:
            continue
        assert d.order is not None and d.rank is not None and d.layer.weight is not None
        dec = decompose(d.layer.weight, d.layer.groups, d.order, d.rank, spectra.get(d.layer, d.order))
        out.append(Factors(d.layer, dec, d.lowering or "split"))
    return out


def rewrites(factors: Iterable[Factors]) -> list[Rewrite]:
    """What the adapter is asked to do: replace each layer by its lowered factors (and replacement bias)."""
    return [Rewrite(f.layer, f.lowered(), f.bias) for f in factors]
