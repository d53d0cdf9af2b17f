"""The adapter hook calibration uses: run a model on the format's own runtime with conv weights swapped and the
inputs of chosen convs returned, so that activations can be captured without a trainable copy of the model.

An adapter builds a ``Tap`` for a loaded (not yet rewritten) model and a list of conv layers. Calling it runs
the original graph once, where each tapped conv uses the dense kernel and bias given for it (a depthwise-separable
factorisation multiplied back into one kernel is the same function), and returns the model's outputs together
with the input activation of every tapped conv. Layers it cannot tap (inside a loop body, a weight that is not a
constant, a geometry it cannot read) are listed with the reason, so calibration leaves them data-free.

Format-neutral records only; the ONNX and TorchScript taps live next to their adapters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..algebra import Geometry

__all__ = ["Tap", "TapPoint"]


@dataclass(frozen=True)
class TapPoint:
    """A conv the tap can capture: where it reads its input (``geometry``) and its original bias (None if it
    has none)."""

    geometry: Geometry
    bias: np.ndarray | None = field(repr=False)


class Tap(Protocol):
    """A model prepared for capture (see the module docstring)."""

    #: The layers that can be captured and overridden, by name.
    points: dict[str, TapPoint]
    #: Layers asked for that cannot be, by name, with the reason.
    skipped: dict[str, str]

    def __call__(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
        want: Sequence[str],
        outputs: bool = True,
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Run the model once. ``weights`` maps tapped layer names to a replacement ``(dense kernel, bias)``
        (the other tapped layers keep their own); returns the model's outputs and, for each name in ``want``,
        that conv's input. ``outputs=False``: the model's outputs are not wanted (an empty list may come back),
        so a runtime that can stops once the wanted inputs are computed (ONNX fetches only them, ``.pt2``
        stops its interpreter; TorchScript runs the whole graph)."""
        ...
