"""The calibration tap for ``.pt2`` (see ``formats._taps``): the program's module (``ExportedProgram.module()``)
run node by node by an ``torch.fx.Interpreter`` that hands each tapped conv its replacement weight and bias and
keeps the conv's input. The program itself is not edited. A transposed conv is tapped in its regular-conv view
(``algebra.regular_view``), its weight overrides regrouped to ``[in, out/g, *k]`` when fed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._errors import InvalidOptionsError, VerificationError, one_line
from ...algebra import Geometry, regular_view, to_transposed
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


def _transposed_view(args: Any, kernel: tuple[int, ...]) -> tuple[Callable[[np.ndarray], np.ndarray], Geometry] | str:
    """For a transposed conv: the map from its input to the input of the regular conv calibration fits
    (``algebra.regular_view``) and that conv's geometry, or why there is none."""
    geo = _geometry(args, kernel)
    if isinstance(geo, str):
        return geo
    pads = geo.pads
    if isinstance(pads, str) or len(args.output_padding) != len(kernel):
        return "a transposed conv whose padding is not understood"
    out_pad = tuple(args.output_padding)

    def view(x: np.ndarray) -> np.ndarray:
        return regular_view(x, kernel, geo.stride, geo.dilation, pads, out_pad)[0]

    return view, Geometry((1,) * len(kernel), geo.dilation, tuple((0, 0) for _ in kernel))


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
            edited = list(args)
            while len(edited) < 3 and "bias" not in kwargs:
                edited.append(None)
            edited[1] = w
            if "bias" in kwargs:
                kwargs = {**kwargs, "bias": b}
            else:
                edited[2] = b
            args = tuple(edited)
        return self.call_function(n.target, args, kwargs)


class Pt2Tap:
    """The interpreter-run module of a program (see ``build_tap``)."""

    def __init__(self, module: torch.fx.GraphModule, names: list[str], points: dict[str, TapPoint],
                 skipped: dict[str, str], nodes: dict[str, str],
                 views: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] | None = None) -> None:
        self.points, self.skipped = points, skipped
        self._module, self._names, self._nodes = module, names, nodes
        # Transposed convs: the regular-conv view of the captured input, and the groups of the weight feed.
        self._views = views or {}

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
        weights = {name: (to_transposed(np.asarray(w), self._views[name][1]) if name in self._views else w, b)
                   for name, (w, b) in weights.items()}
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
        got = {name: run.captured[self._nodes[name]].detach().cpu().numpy() for name in want}
        for name in set(want) & set(self._views):
            got[name] = self._views[name][0](got[name])
        return outs, got


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
    views: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {}
    for layer in layers:
        node = graph_nodes.get(layer.handle) if isinstance(layer.handle, str) else None
        if node is None or layer.handle not in module_nodes or layer.weight is None:
            skipped[layer.name] = layer.note or "not a conv node of the program's module"
            continue
        args = conv_args(node, len(layer.kernel))
        geo: Geometry | str
        if args.transposed:
            got = _transposed_view(args, tuple(layer.kernel))
            if isinstance(got, str):
                geo = got
            else:
                views[layer.name] = (got[0], layer.groups)
                geo = got[1]
        else:
            geo = _geometry(args, tuple(layer.kernel))
        bias, _ = weight_of(program, args.bias) if args.bias is not None else (None, None)
        if isinstance(geo, str) or (args.bias is not None and bias is None):
            skipped[layer.name] = geo if isinstance(geo, str) else "bias is not a constant"
            views.pop(layer.name, None)
            continue
        b = bias.detach().to("cpu", torch.float32).numpy() if bias is not None else None
        points[layer.name] = TapPoint(geo, b)
        nodes[layer.name] = layer.handle
    names = [s.name for s in input_specs(program)]
    return Pt2Tap(module, names, points, skipped, nodes, views)
