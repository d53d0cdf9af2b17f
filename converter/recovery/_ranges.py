"""Calibrated activation ranges of the new tensors of quantized layers: the ``(min, max)`` each intermediate
tensor of a converted quantized layer (the depthwise output before the pointwise conv, a join of branches) takes
on the calibration samples, from which the rewrite derives its quantization parameters.

The same tap that calibrates captures each layer's input in the network as converted (the final factors of every
earlier layer in place), and ``algebra.intermediate_values`` runs the layer's lowered program on it in numpy: one
more pass over the calibration samples, memory one batch of activations. Float layers are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..algebra import intermediate_values, merge_ranges
from ..data import Samples
from ..formats import Tap

__all__ = ["activation_ranges"]


def activation_ranges(tap: Tap, factors: Sequence[Any], weights: dict[str, tuple[np.ndarray, np.ndarray]],
                      samples: Samples, batch_size: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Per quantized converted layer that the tap reaches, its intermediate tensors' observed ranges (keys as
    ``algebra.intermediate_values``). ``factors`` are the final ``Factors``; ``weights`` the tap's overrides for
    them (the network as converted)."""
    todo = [f for f in factors if f.layer.quantized and f.layer.name in tap.points]
    if not todo:
        return {}
    out: dict[str, dict[str, tuple[float, float]]] = {f.layer.name: {} for f in todo}
    programs = {f.layer.name: f.lowered() for f in todo}
    for batch, _ in samples.batches(batch_size):
        _, got = tap(batch, weights, [f.layer.name for f in todo])
        for f in todo:
            name = f.layer.name
            point = tap.points[name]
            bias = f.bias if f.bias is not None else point.bias
            seen = intermediate_values(programs[name], got[name], f.layer.kernel, point.geometry, bias)
            out[name] = merge_ranges(out[name], seen)
    return out
