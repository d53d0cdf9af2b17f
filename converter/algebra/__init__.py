"""The maths of the conversion, as pure functions over numpy arrays: the data-free decomposition of a kernel into
a depthwise-separable pair (``_decompose``: SVD per slice, both orders, lowering of grouped factors) and the
calibration maths (``_refit``: streamed layer statistics, closed-form refits, conv geometry and patches;
``_factored``: the same for patches too large for a dense Gram matrix, in the first factor's output space),
what transposed convs need on top (``_transposed``: weight layouts, the regular-conv view calibration fits in)
and the quantization maths of int8 models (``_quant``: requantizing weights, activation ranges of new tensors).

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
from ._quant import (
    activation_params,
    bias_int32,
    conv_interval,
    conv_spread,
    dequantize,
    intermediate_intervals,
    intermediate_values,
    merge_ranges,
    quantize,
    scaled_ranges,
    symmetric_weight,
    type_range,
)
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
    "activation_params",
    "bias_int32",
    "calibrate_layer",
    "calibrate_stats",
    "conv_interval",
    "conv_spread",
    "decompose",
    "dense",
    "dequantize",
    "energy_curve",
    "from_transposed",
    "intermediate_intervals",
    "intermediate_values",
    "layer_stats",
    "lower",
    "max_rank",
    "merge_ranges",
    "out_shape",
    "patches_at",
    "quantize",
    "regular_view",
    "scaled_ranges",
    "spectrum",
    "symmetric_weight",
    "to_transposed",
    "type_range",
]
