"""The calibration tap for ``.pt2`` (see ``formats._taps``): the program's module (``ExportedProgram.module()``)
run node by node by an ``torch.fx.Interpreter`` that hands each tapped conv its replacement weight and bias and
keeps the conv's input. The program itself is not edited."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._errors import InvalidOptionsError, VerificationError, one_line
from ...algebra import Geometry
from .._taps import TapPoint
from ._graph import conv_args, conv_nodes, input_specs, weight_of

__all__ = ["Pt2Tap", "build_tap"]


def _geometry(args: Any, kernel: tuple[int, ...]) -> Geometry | str:
    r = len(kernel)
    if args.padding == "valid":
        pads = tuple((0, 0) for _ in range(r))
    elif args.padding == "same":
        pads = tuple(((k - 1) * d // 2, (k - 1) * d - (k - 1) * d // 2)
                     for k, d in zip(kernel, args.dilation, strict=True))
    elif isinstance(args.padding, list):
        pads = tuple((int(p), int(p)) for p in args.padding)
    else:
        return "padding is not understood"
    if len(args.stride) != r or len(args.dilation) != r or len(pads) != r:
        return "stride, padding or dilation does not fit the kernel"
    return Geometry(tuple(args.stride), tuple(args.dilation), pads)


class _Captured(Exception):
    """Every wanted input is captured and the outputs are not wanted: the rest of the program need not run."""


class _Interpreter(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 want: set[str], stop: bool = False) -> None:
        super().__init__(module)
        self.weights, self.want, self.stop = weights, want, stop
        self.captured: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op != "call_function" or (n.name not in self.weights and n.name not in self.want):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.name in self.want:
            self.captured[n.name] = args[0]
            if self.stop and len(self.captured) == len(self.want):
                raise _Captured
        if n.name in self.weights:
            w, b = self.weights[n.name]
            args = list(args)
            while len(args) < 3 and "bias" not in kwargs:
                args.append(None)
            args[1] = w
            if "bias" in kwargs:
                kwargs = {**kwargs, "bias": b}
            else:
                args[2] = b
            args = tuple(args)
        return n.target(*args, **kwargs)


class Pt2Tap:
    """The interpreter-run module of a program (see ``build_tap``)."""

    def __init__(self, module: torch.fx.GraphModule, names: list[str], points: dict[str, TapPoint],
                 skipped: dict[str, str], nodes: dict[str, str]) -> None:
        self.points, self.skipped = points, skipped
        self._module, self._names, self._nodes = module, names, nodes

    def __call__(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
        want: Sequence[str],
        outputs: bool = True,
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        missing = [n for n in self._names if n not in inputs]
        if missing:
            raise InvalidOptionsError(f"missing model inputs: {', '.join(missing)}")
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._names]
        swap = {self._nodes[name]: (torch.from_numpy(np.ascontiguousarray(w, np.float32)),
                                    torch.from_numpy(np.ascontiguousarray(b, np.float32)))
                for name, (w, b) in weights.items() if name in self._nodes}
        run = _Interpreter(self._module, swap, {self._nodes[name] for name in want}, stop=not outputs and bool(want))
        out = None
        try:
            with torch.inference_mode():
                out = run.run(*tensors)
        except _Captured:
            pass
        except Exception as e:
            raise VerificationError(f"the .pt2 program did not run: {one_line(e, 200)}") from e
        outs = [] if out is None else [t.detach().cpu().numpy() for t in torch.utils._pytree.tree_leaves(out)]
        return outs, {name: run.captured[self._nodes[name]].detach().cpu().numpy() for name in want}


def build_tap(adapter: Any, model: Any, layers: Sequence[Any], workdir: Path, threads: int | None = None) -> Pt2Tap:
    """The tap of ``model``'s program for these layers (``adapter`` and ``workdir`` unused)."""
    if threads:
        torch.set_num_threads(threads)
    program = model.program
    module = program.module()
    graph_nodes = {n.name: n for n in conv_nodes(program)}
    module_nodes = {n.name for n in module.graph.nodes if n.op == "call_function"}
    points: dict[str, TapPoint] = {}
    skipped: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for layer in layers:
        node = graph_nodes.get(layer.handle) if isinstance(layer.handle, str) else None
        reason = None
        if node is None or layer.handle not in module_nodes or layer.weight is None:
            reason = layer.note or "not a conv node of the program's module"
        else:
            args = conv_args(node, len(layer.kernel))
            geo = _geometry(args, tuple(layer.kernel)) if not args.transposed else "a transposed convolution"
            bias, _ = weight_of(program, args.bias) if args.bias is not None else (None, None)
            if isinstance(geo, str):
                reason = geo
            elif args.bias is not None and bias is None:
                reason = "bias is not a constant"
        if reason is not None:
            skipped[layer.name] = reason
            continue
        b = bias.detach().to("cpu", torch.float32).numpy() if bias is not None else None
        points[layer.name] = TapPoint(geo, b)
        nodes[layer.name] = layer.handle
    names = [s.name for s in input_specs(program)]
    return Pt2Tap(module, names, points, skipped, nodes)
