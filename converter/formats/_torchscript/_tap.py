"""The calibration tap for TorchScript (see ``_taps``): a copy of the frozen forward graph whose tapped convs
take their weight and bias as extra graph inputs and which also returns each tapped conv's input, run as a
TorchScript function on the module. The model itself is not edited."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._errors import InvalidOptionsError, VerificationError, one_line
from ...algebra import Geometry
from .._taps import TapPoint
from ._adapter import _flatten
from ._graph import ConvRef, const, conv_args, conv_nodes, forward_args

__all__ = ["TorchScriptTap", "build_tap"]


def _geometry(args: Any, kernel: tuple[int, ...]) -> Geometry | str:
    r = len(kernel)
    stride, padding, dilation = const(args.stride), const(args.padding), const(args.dilation)
    if not isinstance(stride, list | tuple) or not isinstance(dilation, list | tuple):
        return "stride or dilation is not a constant"
    stride = tuple(stride) * r if len(stride) == 1 else tuple(stride)
    dilation = tuple(dilation) * r if len(dilation) == 1 else tuple(dilation)
    if padding == "valid":
        pads = tuple((0, 0) for _ in range(r))
    elif padding == "same":
        # torch pads (k - 1)·d in total, the odd one at the end (stride is 1 for "same")
        pads = tuple(((k - 1) * d // 2, (k - 1) * d - (k - 1) * d // 2) for k, d in zip(kernel, dilation, strict=True))
    elif isinstance(padding, list | tuple):
        p = tuple(padding) * r if len(padding) == 1 else tuple(padding)
        pads = tuple((int(v), int(v)) for v in p)
    else:
        return "padding is not a constant"
    if len(stride) != r or len(dilation) != r or len(pads) != r:
        return "stride, padding or dilation does not fit the kernel"
    return Geometry(tuple(int(s) for s in stride), tuple(int(d) for d in dilation), pads)


def _top_level(node: torch._C.Node) -> bool:
    return node.owningBlock().owningNode() is None


class TorchScriptTap:
    """The tapped forward function of a frozen module (see ``build_tap``)."""

    def __init__(self, fn: Any, module: Any, points: dict[str, TapPoint], skipped: dict[str, str],
                 args: list[Any], slots: dict[str, tuple[str, str, int]],
                 defaults: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.points, self.skipped = points, skipped
        self._fn, self._module, self._args, self._slots, self._defaults = fn, module, args, slots, defaults

    def __call__(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
        want: Sequence[str],
        outputs: bool = True,  # the scripted graph runs whole either way
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        kwargs: dict[str, Any] = {}
        for arg in self._args:
            if arg.name in inputs:
                value = inputs[arg.name]
                is_tensor = isinstance(arg.type, torch._C.TensorType)
                kwargs[arg.name] = torch.from_numpy(np.ascontiguousarray(value)) if is_tensor else value.item()
            elif not arg.has_default_value():
                raise InvalidOptionsError(f"missing model input {arg.name!r}")
        for name, (w_in, b_in, _) in self._slots.items():
            w, b = weights.get(name, self._defaults[name])
            kwargs[w_in] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            kwargs[b_in] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = self._fn(self._module._c, **kwargs)
        except RuntimeError as e:
            raise VerificationError(f"the TorchScript model did not run: {one_line(e, 200)}") from e
        original, *taps = result
        outs = [t.detach().cpu().numpy() for t in _flatten(original)]
        return outs, {name: taps[self._slots[name][2]].detach().cpu().numpy() for name in want}


def build_tap(adapter: Any, model: Any, layers: Sequence[Any], workdir: Path,
              threads: int | None = None) -> TorchScriptTap:
    """The tapped copy of ``model``'s forward graph for these layers (``adapter`` and ``workdir`` unused: the
    copy lives in memory)."""
    if threads:
        torch.set_num_threads(threads)
    module = model.module
    graph = module.graph.copy()
    nodes = conv_nodes(graph)
    points: dict[str, TapPoint] = {}
    skipped: dict[str, str] = {}
    slots: dict[str, tuple[str, str, int]] = {}
    defaults: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    taps: list[torch._C.Value] = []
    for layer in layers:
        ref = layer.handle
        if not isinstance(ref, ConvRef) or not 0 <= ref.index < len(nodes) or layer.weight is None:
            skipped[layer.name] = layer.note or "weight is not a constant"
            continue
        node = nodes[ref.index]
        args = conv_args(node)
        bias = const(args.bias)
        geo = _geometry(args, tuple(layer.kernel)) if args.transposed is False else "a transposed convolution"
        reason = geo if isinstance(geo, str) else None
        if reason is None and not _top_level(node):
            reason = "inside a loop or branch of the TorchScript graph"
        if reason is None and bias is not None and not isinstance(bias, torch.Tensor):
            reason = "bias is not a constant"
        if reason is None and not isinstance(const(args.weight), torch.Tensor):
            reason = "weight is not a constant"
        if reason is not None:
            skipped[layer.name] = reason
            continue
        assert isinstance(geo, Geometry)
        b = bias.detach().to("cpu", torch.float32).numpy() if isinstance(bias, torch.Tensor) else None
        points[layer.name] = TapPoint(geo, b)
        i = len(slots)
        w_in = graph.addInput(f"sepconv_tap_{i}_weight")
        w_in.setType(torch._C.TensorType.get())
        b_in = graph.addInput(f"sepconv_tap_{i}_bias")
        b_in.setType(torch._C.TensorType.get())
        node.replaceInput(1, w_in)
        node.replaceInput(2, b_in)
        slots[layer.name] = (w_in.debugName(), b_in.debugName(), len(taps))
        defaults[layer.name] = (layer.weight, b if b is not None else np.zeros(layer.out_channels, np.float32))
        taps.append(node.inputsAt(0))
    outputs = list(graph.outputs())
    for _ in outputs:
        graph.eraseOutput(0)
    for value in [*outputs, *taps]:
        graph.registerOutput(value)
    graph.makeMultiOutputIntoTuple()
    torch._C._jit_pass_dce(graph)
    graph.lint()
    fn = torch._C._create_function_from_graph("sepconv_tap", graph)
    return TorchScriptTap(fn, module, points, skipped, forward_args(module), slots, defaults)
