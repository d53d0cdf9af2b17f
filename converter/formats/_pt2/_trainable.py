"""The trainable view of a ``.pt2`` file (``torch.export``): the exported program's own parameters.

``ExportedProgram.module()`` is an ordinary module whose parameters are the program's state dict, so it trains as
it is. ``write`` puts the trained values into the *same* exported program's state dict (same names, dtypes and
devices; graph, signature, dynamic shapes and everything else untouched) and saves it with ``torch.export.save``
through a temporary file; ``torch.export.load`` reads the result.

Factors are the weights and biases of convs whose weight the original model does not have (by content).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._errors import ConversionError, UnsupportedModelError, one_line
from ..._files import atomic_path
from .._trainable import TrainableView, digest

__all__ = ["pt2_view"]

_CONVS = ("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d",
          "conv_transpose3d")


def _load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as e:  # torch raises many kinds for foreign or damaged archives
        raise UnsupportedModelError(f".pt2 file could not be loaded: {one_line(e, 200)}") from e


def _conv_params(program: Any) -> list[tuple[str, str | None]]:
    """(weight, bias) parameter names of every conv of the exported graph whose weight is a parameter."""
    to_param = program.graph_signature.inputs_to_parameters
    out = []
    for node in program.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if node.op != "call_function" or name not in _CONVS:
            continue
        args = list(node.args) + [None] * 3
        w, b = args[1], args[2]
        if getattr(w, "name", None) in to_param:
            out.append((to_param[w.name], to_param.get(getattr(b, "name", None))))
    return out


class _Outputs(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        out = self.inner(*inputs)
        flat, _ = torch.utils._pytree.tree_flatten(out)
        return [t for t in flat if isinstance(t, torch.Tensor)]


def pt2_view(path: Path, workdir: Path, original: set[str], device: str = "cpu") -> TrainableView:
    """The trainable view of a converted ``.pt2`` file (``original``: digests of the original conv weights)."""
    program = _load(path)
    module = program.module()
    module.to(device)
    params = {name: p for name, p in module.named_parameters(remove_duplicate=True) if p.is_floating_point()}
    for p in module.parameters():
        p.requires_grad_(False)
    factors: list[str] = []
    for w, b in _conv_params(program):
        if w in params and digest(params[w].detach().cpu().numpy()) not in original:
            factors += [n for n in (w, b) if n is not None and n in params and n not in factors]
    specs = program.graph_signature.user_inputs
    input_names = [str(n) for n in specs]

    def write(dest: Path, names: Iterable[str]) -> Path:
        target = _load(path)
        for name in names:
            old = target.state_dict[name]
            new = params[name].detach().to(device=old.device, dtype=old.dtype).clone()
            target.state_dict[name] = nn.Parameter(new, requires_grad=old.requires_grad) \
                if isinstance(old, nn.Parameter) else new
        dest = Path(dest)
        try:
            with atomic_path(dest) as tmp:
                torch.export.save(target, str(tmp))
        except Exception as e:
            raise ConversionError(f"could not save the fine-tuned .pt2 model: {one_line(e, 200)}") from e
        return dest

    return TrainableView("pt2", _Outputs(module), input_names, params, factors, write)
