"""The trainable view of a TorchScript model: frozen weight constants lifted into graph inputs.

A converted TorchScript file is a frozen module: its weights are ``prim::Constant`` tensors of the ``forward``
graph, and it has no parameters. To train them, a copy of the graph gets one extra input per weight constant
(the weight and bias operands of convs, ``linear``, ``matmul`` and the normalisations), every use of the
constant is rerouted to that input, and the copy is compiled into a function that autograd differentiates as
any TorchScript code. The parameters are fed as those inputs.

``write`` goes back to the user's graph itself: each trained constant is replaced by a new constant holding the
trained tensor (same dtype and device), and the module is saved with the TorchScript adapter, so the result is
an ordinary frozen module that plain ``torch.jit.load`` reads.

Not done: weights that are module attributes (freezing folds them all unless ``forward`` mutates them).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._errors import UnsupportedModelError, one_line
from .._graphcheck import load_torchscript
from .._registry import adapter_for
from .._trainable import TrainableView, digest
from ._adapter import _flatten

__all__ = ["torchscript_view"]

_CONVS = frozenset({"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution", "aten::_convolution_mode",
                    "aten::convolution", "aten::conv_transpose1d", "aten::conv_transpose2d",
                    "aten::conv_transpose3d"})
# Operand slots holding learnable weights, per op kind: what "train everything" trains.
_SLOTS = {**{k: (1, 2) for k in _CONVS}, "aten::linear": (1, 2), "aten::matmul": (0, 1), "aten::addmm": (0, 2),
          "aten::batch_norm": (1, 2), "aten::layer_norm": (2, 3), "aten::group_norm": (2, 3),
          "aten::instance_norm": (1, 2), "aten::prelu": (1,)}


def _walk(block: Any) -> Iterator[Any]:
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _walk(sub)


def _weight_constants(graph: Any) -> list[tuple[Any, bool]]:
    """The distinct floating-point tensor constants in weight slots, in graph order, each with whether it is
    a conv weight or bias (a candidate factor)."""
    seen: dict[int, int] = {}
    out: list[tuple[Any, bool]] = []
    for node in _walk(graph):
        for i in _SLOTS.get(node.kind(), ()):
            if i >= node.inputsSize():
                continue
            value = node.inputsAt(i)
            if value.node().kind() != "prim::Constant":
                continue
            tensor = value.toIValue()
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                continue
            if value.unique() in seen:
                continue
            seen[value.unique()] = len(out)
            out.append((value, node.kind() in _CONVS))
    return out


def _load(path: Path, device: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.freeze(load_torchscript(Path(path), device).eval())
    except UnsupportedModelError:
        raise
    except Exception as e:  # torch raises RuntimeError, ValueError, pickle and zip errors alike
        raise UnsupportedModelError(f"TorchScript file could not be loaded: {one_line(e, 200)}") from e


class _Lifted(nn.Module):
    """The frozen forward graph with its weight constants as inputs; ``forward(*inputs)`` returns the outputs
    flattened into a list."""

    def __init__(self, module: torch.jit.ScriptModule, names: list[str], params: dict[str, nn.Parameter],
                 n_inputs: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList([params[n] for n in names])
        self._module = [module]  # not a submodule: its (frozen) state is not ours to train or move
        self._fn: Any = None
        self.n_inputs = n_inputs

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the lifted graph with the current parameter values."""
        out = self._fn(self._module[0]._c, *inputs, *self.weights)
        return _flatten(out, _not_tensors)


def _not_tensors(value: Any) -> Exception:
    return UnsupportedModelError(f"fine-tuning needs tensor outputs; the model returned a {type(value).__name__}")


def torchscript_view(path: Path, workdir: Path, original: set[str], device: str = "cpu") -> TrainableView:
    """The trainable view of a converted TorchScript file (``original``: digests of the original conv weights;
    a conv weight not among them is a new factor)."""
    module = _load(path, device)
    graph = module.graph.copy()
    constants = _weight_constants(graph)
    names = [f"w{i}" for i in range(len(constants))]
    params: dict[str, nn.Parameter] = {}
    factors: list[str] = []
    conv_weight_new: set[int] = set()
    for node in _walk(graph):
        if node.kind() in _CONVS and node.inputsAt(1).node().kind() == "prim::Constant":
            w = node.inputsAt(1).toIValue()
            if isinstance(w, torch.Tensor) and digest(w.detach().cpu().float().numpy()) not in original:
                conv_weight_new.update(node.inputsAt(i).unique() for i in (1, 2))
    for name, (value, is_conv) in zip(names, constants, strict=True):
        tensor = value.toIValue().detach()
        params[name] = nn.Parameter(tensor.float().clone(), requires_grad=False)
        if is_conv and value.unique() in conv_weight_new:
            factors.append(name)
    # Lift: one new graph input per constant, in ``names`` order, after the model's own inputs.
    n_inputs = len(list(graph.inputs())) - 1
    for value, _ in constants:
        lifted = graph.addInput()
        lifted.setType(value.type())
        value.replaceAllUsesWith(lifted)
    torch._C._jit_pass_dce(graph)
    lifted_module = _Lifted(module, names, params, n_inputs)
    try:
        lifted_module._fn = torch._C._create_function_from_graph("sepconv_finetune", graph)
    except RuntimeError as e:
        raise UnsupportedModelError(f"fine-tuning could not compile the TorchScript graph: {one_line(e, 200)}") from e
    input_names = [a.name for a in list(module.forward.schema.arguments)[1:]]
    adapter = adapter_for("torchscript")

    def write(dest: Path, trained: Iterable[str]) -> Path:
        chosen = set(trained)
        target = adapter.load(Path(path), Path(workdir))
        tgraph = target.module.graph
        for name, (value, _) in zip(names, _weight_constants(tgraph), strict=True):
            if name not in chosen:
                continue
            old = value.toIValue()
            new = params[name].detach().to(device=old.device, dtype=old.dtype).clone()
            with tgraph.insert_point_guard(value.node()):
                replacement = tgraph.insertConstant(new)
            if not value.debugName().isdigit():
                replacement.setDebugName(value.debugName())
            value.replaceAllUsesWith(replacement)
        torch._C._jit_pass_dce(tgraph)
        return adapter.save(target, Path(dest))

    return TrainableView("torchscript", lifted_module, input_names, params, factors, write)
