"""What the two torch formats (TorchScript and ``.pt2``) share at run time: the generic micro-model
(``formats._micro``) as a torch module and written in either format, and a synchronised timed call of a loaded
module. Each format's package loads its own files; nothing here reads a user's model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InvalidOptionsError
from ._micro import LayerShape, geometry, micro_weights, transposed_geometry

__all__ = ["micro_module", "timed_call", "write_pt2_micro", "write_torchscript_micro"]


def micro_module(shape: LayerShape, batch: int, seed: int) -> tuple[Any, Any]:
    """The micro-model as an eval-mode torch module, and an example input."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    w = {k: torch.from_numpy(v) for k, v in micro_weights(shape, seed).items()}
    dims = len(shape.kernel)
    # Typed loosely on purpose: each class takes a kernel of its rank, which its stubs spell per class.
    conv: Callable[..., nn.Module] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    convt: Callable[..., nn.Module] = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    spatial = list(zip(shape.in_spatial, shape.out_spatial, shape.kernel, strict=True))
    if shape.transposed:
        tgeo = [transposed_geometry(i, o, k) for i, o, k in spatial]
        geo = [g[:3] for g in tgeo]
    else:
        geo = [geometry(i, o, k) for i, o, k in spatial]
    symmetric = all(g[1] == g[2] for g in geo)
    # F.pad takes (last dim begin, last dim end, second-to-last…)
    extra = [p for g in reversed(geo) for p in (g[1], g[2])]
    # A transposed conv's padding crops its output: asymmetric crops are taken by slicing.
    crop = (slice(None), slice(None), *(slice(g[1], -g[2] or None) for g in geo))

    class Micro(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            m, n = shape.in_channels, shape.out_channels
            self.pre = conv(m, m, 1)
            if shape.transposed:
                self.layer = convt(m, n, shape.kernel, stride=tuple(g[0] for g in tgeo),
                                   padding=tuple(g[1] for g in tgeo) if symmetric else 0,
                                   output_padding=tuple(g[3] for g in tgeo), groups=shape.groups)
            else:
                self.layer = conv(m, n, shape.kernel, stride=tuple(g[0] for g in geo),
                                  padding=tuple(g[1] for g in geo) if symmetric else 0, groups=shape.groups)
            self.post = conv(n, n, 1)
            with torch.no_grad():
                for name in ("pre", "layer", "post"):
                    getattr(self, name).weight.copy_(w[f"{name}_w"])
                    getattr(self, name).bias.copy_(w[f"{name}_b"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.pre(x))
            if shape.transposed:
                y = self.layer(x)
                return self.post(torch.relu(y if symmetric else y[crop]))
            if not symmetric:
                x = F.pad(x, extra)
            return self.post(torch.relu(self.layer(x)))

    return Micro().eval(), torch.zeros(batch, shape.in_channels, *shape.in_spatial)


def write_torchscript_micro(shape: LayerShape, batch: int, dest: Path, seed: int) -> Path:
    import torch

    module, example = micro_module(shape, batch, seed)
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(dest))
    return dest


def write_pt2_micro(shape: LayerShape, batch: int, dest: Path, seed: int) -> Path:
    import torch

    module, example = micro_module(shape, batch, seed)
    program = torch.export.export(module, (example,))  # its one input is named ``x`` (``INPUT``), as forward's
    torch.export.save(program, str(dest))
    return dest


def timed_call(module: Any, names: Sequence[str], threads: int, device: str,
               inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
    """One synchronised inference of a loaded torch module on ``inputs`` (tensors made once, on ``device``):
    ``forward`` under ``torch.inference_mode``, then ``torch.cuda.synchronize()`` on CUDA.

    Raises:
        InvalidOptionsError: ``cuda`` is asked where torch sees no CUDA device.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionsError("device 'cuda' was asked, but torch sees no CUDA device")
    torch.set_num_threads(threads)
    if not set(names) <= set(inputs):
        names = list(inputs)
    module = module.to(device)
    tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(device) for n in names]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            module(*tensors)
        sync()

    return run
