"""The maths of the conversion, as pure functions over numpy arrays: the data-free decomposition of a kernel into
a depthwise-separable pair (``_decompose``: SVD per slice, both orders, lowering of grouped factors) and the
calibration maths (``_refit``: streamed layer statistics, closed-form refits, conv geometry and patches;
``_factored``: the same for patches too large for a dense Gram matrix, in the first factor's output space), and
what transposed convs need on top (``_transposed``: weight layouts, the regular-conv view calibration fits in).

It knows no file, format, runtime or graph; everything above it (formats, planning, recovery) calls into it.
"""

from __future__ import annotations

from ._decompose import (
    ConvStep,
    Decomposition,
    Lowered,
    Lowering,
    Order,
    Spectrum,
    decompose,
    energy_curve,
    lower,
    max_rank,
    spectrum,
)
from ._factored import FactoredStats, calibrate_stats, layer_stats
from ._refit import Geometry, LayerStats, calibrate_layer, dense, out_shape, patches_at
from ._transposed import from_transposed, regular_view, to_transposed

__all__ = [
    "ConvStep",
    "Decomposition",
    "FactoredStats",
    "Geometry",
    "LayerStats",
    "Lowered",
    "Lowering",
    "Order",
    "Spectrum",
    "calibrate_layer",
    "calibrate_stats",
    "decompose",
    "dense",
    "energy_curve",
    "from_transposed",
    "layer_stats",
    "lower",
    "max_rank",
    "out_shape",
    "patches_at",
    "regular_view",
    "spectrum",
    "to_transposed",
]
