"""The generic micro-model every timeable format writes: one layer in a small generic context, for timing its
candidates where the layer's real neighbours cannot be cut out of the model (``latency._candidates`` chooses).

The generic context is the layer at its real input shape and batch, between a 1×1 conv (``M → M``) with a ReLU
before it and a ReLU and a 1×1 conv (``N → N``) after it — the neighbours a conv in a CNN usually has. They put
the layer where it runs in a real model: inside the runtime's blocked layout, with an activation to fuse, so a
candidate that forces layout reorders or breaks a fusion pays for it here as it would in the model. The real
neighbours (a residual Add, a Concat of branches, a SiLU, the raw model input of a stem) are not modelled here;
the whole assembled model is measured afterwards in any case.

This module holds what is the same in every format: the layer's shape (``LayerShape``), the stride and padding
that reproduce its spatial sizes (``geometry``) and the random weights (``micro_weights``). Each format writes
the model in its own way (``Timeable.micro_model``: ``_onnx/_micro.py``, ``_torch.py``); candidates are then
produced from it by the format's own ``find_convs`` + ``apply``, so the timed graph is exactly what the
conversion would emit. Weights are random: speed does not depend on them.

Stride and padding are not recorded on ``ConvLayer``: they are chosen to reproduce its input and output spatial
sizes (dilation 1), which fixes the work done; a dilated conv is timed as its undilated equivalent. A transposed
layer is timed as a transposed conv (``transposed_geometry``: stride, padding and output padding that map its
input size to its output size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._base import ConvLayer

__all__ = ["INPUT", "LAYER", "LayerShape", "geometry", "micro_weights", "transposed_geometry"]

#: The name of the layer inside a micro-model (ONNX node name; TorchScript module path).
LAYER = "layer"
#: The micro-model's one input.
INPUT = "x"


@dataclass(frozen=True)
class LayerShape:
    """What a layer's latency depends on, apart from the backend: its conv shape and spatial sizes."""

    kernel: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    #: a transposed conv (its stride upsamples: see ``transposed_geometry``)
    transposed: bool = False

    @classmethod
    def of(cls, layer: ConvLayer) -> LayerShape | None:
        """The shape of ``layer``, or None when its spatial sizes are unknown (it cannot be timed)."""
        if layer.in_spatial is None or layer.out_spatial is None:
            return None
        return cls(tuple(layer.kernel), layer.in_channels, layer.out_channels, layer.groups,
                   tuple(layer.in_spatial), tuple(layer.out_spatial), layer.transposed)

    def key(self, batch: int) -> str:
        k = "x".join(map(str, self.kernel))
        sp = "x".join(map(str, self.in_spatial)) + ">" + "x".join(map(str, self.out_spatial))
        return f"k{k}/c{self.in_channels}>{self.out_channels}/g{self.groups}/s{sp}/b{batch}" + (
            "/t" if self.transposed else "")

    def layer_weight_shape(self) -> tuple[int, ...]:
        """The layer's weight shape as its format stores it: ``[out, in/g, *k]``, or ``[in, out/g, *k]``
        when transposed."""
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)


def transposed_geometry(in_size: int, out_size: int, kernel: int) -> tuple[int, int, int, int]:
    """``(stride, pad_begin, pad_end, output_padding)`` of a dilation-1 transposed conv mapping ``in_size`` to
    ``out_size`` with this kernel: the conv mapping ``out_size`` back to ``in_size`` (``geometry``), and the
    output padding that makes up for what its floor division dropped (the closest reachable size if none)."""
    stride, pb, pe = geometry(out_size, in_size, kernel)
    pad_out = out_size - ((in_size - 1) * stride - pb - pe + kernel)
    return stride, pb, pe, min(max(pad_out, 0), stride - 1)


def geometry(in_size: int, out_size: int, kernel: int) -> tuple[int, int, int]:
    """``(stride, pad_begin, pad_end)`` of a dilation-1 conv mapping ``in_size`` to ``out_size`` with this
    kernel, preferring symmetric padding; the closest reachable output size if none is exact."""
    best: tuple[int, int, int, int] | None = None
    guess = max(1, round(in_size / max(out_size, 1)))
    for stride in sorted(range(1, max(kernel, guess) + 2), key=lambda s: abs(s - guess)):
        for total in range(0, 2 * kernel + 1):
            out = (in_size + total - kernel) // stride + 1
            if out < 1:
                continue
            miss = abs(out - out_size) * 4 + (total % 2)  # an exact size first, then symmetric padding
            if best is None or miss < best[0]:
                best = (miss, stride, total // 2, total - total // 2)
            if miss == 0:
                return stride, total // 2, total - total // 2
    assert best is not None
    return best[1], best[2], best[3]


def micro_weights(shape: LayerShape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    m, n = shape.in_channels, shape.out_channels
    ones = (1,) * len(shape.kernel)

    def w(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) / math.sqrt(max(1, int(np.prod(dims[1:]))))).astype(np.float32)

    return {
        "pre_w": w(m, m, *ones), "pre_b": np.zeros(m, np.float32),
        "layer_w": w(*shape.layer_weight_shape()), "layer_b": np.zeros(n, np.float32),
        "post_w": w(n, n, *ones), "post_b": np.zeros(n, np.float32),
    }
