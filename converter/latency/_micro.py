"""Micro-models: one layer in a small generic context, written in the model's own format, for timing its
candidates where the layer's real neighbours cannot be cut out of the model.

They time every TorchScript and ``.pt2`` layer, and the ONNX layers the ONNX adapter cannot cut out with their
real neighbours (``formats._onnx._context``: a conv inside an If/Loop body, symbolic or unknown shapes…);
``_candidates`` chooses. The generic context is the layer at its real input shape and batch, between a 1×1 conv
(``M → M``) with a ReLU before it and a ReLU and a 1×1 conv (``N → N``) after it — the neighbours a conv in a
CNN usually has. They put the layer where it runs in a real model: inside the runtime's blocked layout, with an
activation to fuse, so a candidate that forces layout reorders or breaks a fusion pays for it here as it would
in the model. The real neighbours (a residual Add, a Concat of branches, a SiLU, the raw model input of a
stem) are not modelled here; the whole assembled model is measured afterwards in any case.

Candidates are produced from the original micro-model by the format's own adapter (``find_convs`` + ``apply``),
so the timed graph is exactly what the conversion would emit. Weights are random: speed does not depend on them.

Stride and padding are not recorded on ``ConvLayer``: they are chosen to reproduce its input and output spatial
sizes (dilation 1), which fixes the work done; a dilated conv is timed as its undilated equivalent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import ConvLayer

__all__ = ["MICRO_FORMATS", "LayerShape", "build_micro", "geometry"]

#: The formats a micro-model can be written in.
MICRO_FORMATS = ("onnx", "torchscript", "pt2")

#: The name of the layer inside a micro-model (ONNX node name; TorchScript module path).
LAYER = "layer"
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

    @classmethod
    def of(cls, layer: ConvLayer) -> LayerShape | None:
        """The shape of ``layer``, or None when its spatial sizes are unknown (it cannot be timed)."""
        if layer.in_spatial is None or layer.out_spatial is None or layer.transposed:
            return None
        return cls(tuple(layer.kernel), layer.in_channels, layer.out_channels, layer.groups,
                   tuple(layer.in_spatial), tuple(layer.out_spatial))

    def key(self, batch: int) -> str:
        k = "x".join(map(str, self.kernel))
        sp = "x".join(map(str, self.in_spatial)) + ">" + "x".join(map(str, self.out_spatial))
        return f"k{k}/c{self.in_channels}>{self.out_channels}/g{self.groups}/s{sp}/b{batch}"


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


def _weights(shape: LayerShape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    m, n, g = shape.in_channels, shape.out_channels, shape.groups
    ones = (1,) * len(shape.kernel)

    def w(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) / math.sqrt(max(1, int(np.prod(dims[1:]))))).astype(np.float32)

    return {
        "pre_w": w(m, m, *ones), "pre_b": np.zeros(m, np.float32),
        "layer_w": w(n, m // g, *shape.kernel), "layer_b": np.zeros(n, np.float32),
        "post_w": w(n, n, *ones), "post_b": np.zeros(n, np.float32),
    }


def build_micro(format_name: str, shape: LayerShape, batch: int, folder: Path, seed: int = 0) -> Path:
    """Write the micro-model of ``shape`` in ``format_name`` (``onnx``, ``torchscript``, ``pt2``) into ``folder``.

    Raises:
        ValueError: no micro-model builder for this format.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if format_name == "onnx":
        return _onnx(shape, batch, folder / "micro.onnx", seed)
    if format_name == "torchscript":
        return _torchscript(shape, batch, folder / "micro.pt", seed)
    if format_name == "pt2":
        return _pt2(shape, batch, folder / "micro.pt2", seed)
    raise ValueError(f"no micro-model builder for format {format_name!r}")


def _onnx(shape: LayerShape, batch: int, dest: Path, seed: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = _weights(shape, seed)
    geo = [geometry(i, o, k) for i, o, k in zip(shape.in_spatial, shape.out_spatial, shape.kernel, strict=True)]
    pads = [g[1] for g in geo] + [g[2] for g in geo]
    nodes = [
        helper.make_node("Conv", [INPUT, "pre_w", "pre_b"], ["a"], name="pre"),
        helper.make_node("Relu", ["a"], ["b"], name="pre_relu"),
        helper.make_node("Conv", ["b", "layer_w", "layer_b"], ["c"], name=LAYER, kernel_shape=list(shape.kernel),
                         strides=[g[0] for g in geo], pads=pads, group=shape.groups),
        helper.make_node("Relu", ["c"], ["d"], name="post_relu"),
        helper.make_node("Conv", ["d", "post_w", "post_b"], ["y"], name="post"),
    ]
    graph = helper.make_graph(
        nodes, "micro",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, shape.in_channels, *shape.in_spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(dest))
    return dest


def _torch_micro(shape: LayerShape, batch: int, seed: int) -> tuple[Any, Any]:
    """The micro-model as an eval-mode torch module, and an example input."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    w = {k: torch.from_numpy(v) for k, v in _weights(shape, seed).items()}
    dims = len(shape.kernel)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    geo = [geometry(i, o, k) for i, o, k in zip(shape.in_spatial, shape.out_spatial, shape.kernel, strict=True)]
    symmetric = all(g[1] == g[2] for g in geo)
    # F.pad takes (last dim begin, last dim end, second-to-last…)
    extra = [p for g in reversed(geo) for p in (g[1], g[2])]

    class Micro(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            m, n = shape.in_channels, shape.out_channels
            self.pre = conv(m, m, 1)
            self.layer = conv(m, n, shape.kernel, stride=tuple(g[0] for g in geo),
                              padding=tuple(g[1] for g in geo) if symmetric else 0, groups=shape.groups)
            self.post = conv(n, n, 1)
            with torch.no_grad():
                for name in ("pre", "layer", "post"):
                    getattr(self, name).weight.copy_(w[f"{name}_w"])
                    getattr(self, name).bias.copy_(w[f"{name}_b"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.pre(x))
            if not symmetric:
                x = F.pad(x, extra)
            return self.post(torch.relu(self.layer(x)))

    return Micro().eval(), torch.zeros(batch, shape.in_channels, *shape.in_spatial)


def _torchscript(shape: LayerShape, batch: int, dest: Path, seed: int) -> Path:
    import torch

    module, example = _torch_micro(shape, batch, seed)
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(dest))
    return dest


def _pt2(shape: LayerShape, batch: int, dest: Path, seed: int) -> Path:
    import torch

    module, example = _torch_micro(shape, batch, seed)
    program = torch.export.export(module, (example,))  # its one input is named ``x`` (``INPUT``), as forward's
    torch.export.save(program, str(dest))
    return dest
