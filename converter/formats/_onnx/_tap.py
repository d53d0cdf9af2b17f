"""The calibration tap for ONNX (see ``_taps``): a copy of the model whose tapped convs take their weight and
bias as extra graph inputs and whose graph also outputs each tapped conv's input, run on onnxruntime.

A ConvTranspose is tapped in its regular-conv view (``algebra.regular_view``): the captured input is mapped to
the input of the regular conv that computes the same outputs, and its weight overrides (regular layout, like
``ConvLayer.weight``) are regrouped to the ConvTranspose layout when fed. A quantized conv is tapped as the float
conv of its dequantized weight with the model's quantization around it (``_quant.floatify``): its captured input
is the dequantized activation the integer kernel sees.

The copy is written once (the adapter's own save), so the model held in memory is edited only for the moment of
writing and then restored exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ...algebra import Geometry, regular_view, to_transposed
from .._taps import TapPoint
from . import _quant
from ._adapter import _unwrap
from ._convs import constant_weight
from ._nodes import auto_pad, ints

__all__ = ["OnnxTap", "build_tap"]


def _geometry(node: ir.Node, rank: int) -> Geometry | str:
    strides = tuple(ints(node, "strides", [1] * rank))
    dilations = tuple(ints(node, "dilations", [1] * rank))
    mode = auto_pad(node)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return Geometry(strides, dilations, "SAME_UPPER" if mode == "SAME_UPPER" else "SAME_LOWER")
    if mode == "VALID":
        return Geometry(strides, dilations, tuple((0, 0) for _ in range(rank)))
    if mode not in ("NOTSET", ""):
        return f"auto_pad {mode!r} is not understood"
    pads = ints(node, "pads", [0] * (2 * rank))
    return Geometry(strides, dilations, tuple((pads[i], pads[i + rank]) for i in range(rank)))


def _transposed_view(node: ir.Node, rank: int) -> Callable[[np.ndarray], np.ndarray] | str:
    """For a ConvTranspose: the map from its input to the input of the regular conv calibration fits
    (``algebra.regular_view``), or why there is none."""
    if auto_pad(node) not in ("NOTSET", ""):
        return f"ConvTranspose with auto_pad {auto_pad(node)!r} (the tap reads explicit pads only)"
    if "output_shape" in node.attributes:
        return "ConvTranspose with output_shape (the tap reads explicit pads only)"
    kernel = tuple(ints(node, "kernel_shape", []))
    if len(kernel) != rank:
        weight = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1] is not None else None
        dims = list(weight)[2:] if weight is not None else []
        if not all(isinstance(d, int) for d in dims):
            return "ConvTranspose whose kernel size is symbolic"
        kernel = tuple(int(d) for d in dims if isinstance(d, int))
    strides = tuple(ints(node, "strides", [1] * rank))
    dilations = tuple(ints(node, "dilations", [1] * rank))
    pads = ints(node, "pads", [0] * (2 * rank))
    out_pad = tuple(ints(node, "output_padding", [0] * rank))
    pairs = tuple((pads[i], pads[i + rank]) for i in range(rank))
    if len(kernel) != rank:
        return "the ConvTranspose's kernel shape is unknown"
    return lambda x: regular_view(x, kernel, strides, dilations, pairs, out_pad)[0]


class OnnxTap:
    """An onnxruntime session on the tapped copy of a model (see ``build_tap``)."""

    def __init__(self, run: Any, n_outputs: int, points: dict[str, TapPoint], skipped: dict[str, str],
                 feeds: dict[str, tuple[str, str, np.dtype]], defaults: dict[str, tuple[np.ndarray, np.ndarray]],
                 captured: dict[str, tuple[str, int | None]], names: list[str],
                 views: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] | None = None) -> None:
        self.points, self.skipped = points, skipped
        self._names = names  # the tapped copy's output names, by index
        self._run, self._n, self._feeds, self._defaults, self._captured = run, n_outputs, feeds, defaults, captured
        # ConvTranspose layers: the regular-conv view of the captured input, and the groups of the weight feed.
        self._views = views or {}

    def __call__(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
        want: Sequence[str],
        outputs: bool = True,
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        feeds = dict(inputs)
        for name, (w_in, b_in, dtype) in self._feeds.items():
            w, b = weights.get(name, self._defaults[name])
            if name in self._views:
                w = to_transposed(np.asarray(w), self._views[name][1])
            feeds[w_in] = np.ascontiguousarray(w, dtype=dtype)
            feeds[b_in] = np.ascontiguousarray(b, dtype=dtype)
        got = {}
        if outputs:
            outs = self._run(feeds)
        else:  # only the captured values: onnxruntime runs the part of the graph they depend on
            indices = (self._captured[name][1] for name in want)
            fetch = sorted({i for i in indices if i is not None})
            outs = dict(zip(fetch, self._run(feeds, [self._names[i] for i in fetch]) if fetch else [], strict=True))
        for name in want:
            source, index = self._captured[name]
            got[name] = np.asarray(inputs[source] if index is None else outs[index])
            if name in self._views:
                got[name] = self._views[name][0](got[name])
        return (list(outs[:self._n]) if outputs else []), got


def build_tap(adapter: Any, model: Any, layers: Sequence[Any], workdir: Path, threads: int | None = None) -> OnnxTap:
    """Write the tapped copy of ``model`` for these layers into ``workdir`` and open it on onnxruntime."""
    m = _unwrap(model)
    graph = m.graph
    points: dict[str, TapPoint] = {}
    skipped: dict[str, str] = {}
    plan = []
    views: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {}
    for layer in layers:
        node = layer.handle
        reason = None
        dtype = None
        quant = _quant.read(node) if isinstance(node, ir.Node) else None
        if isinstance(quant, str):
            reason = quant
        elif not isinstance(node, ir.Node) or (node.op_type not in ("Conv", "ConvTranspose") and quant is None):
            reason = "not a Conv or ConvTranspose node"
        elif node.graph is not graph:
            reason = "inside a subgraph (If/Loop/Scan body)"
        elif layer.weight is None:
            reason = layer.note or "weight is not a constant"
        tensor = None
        if reason is None and quant is None:
            tensor, note = constant_weight(m, node.inputs[1])
            if tensor is None or tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
                reason = note or "weight is not a float tensor"
            else:
                dtype = tensor.dtype
        elif reason is None:
            dtype = ir.DataType.FLOAT  # a quantized conv is tapped in float (its dequantized weight)
        geo: Geometry | str | None = None
        if reason is None and node.op_type == "ConvTranspose":
            view = _transposed_view(node, len(layer.kernel))
            if isinstance(view, str):
                reason = view
            else:
                views[layer.name] = (view, layer.groups)
                geo = Geometry((1,) * len(layer.kernel), tuple(ints(node, "dilations", [1] * len(layer.kernel))),
                               tuple((0, 0) for _ in layer.kernel))
        elif reason is None:
            geo = _geometry(node, len(layer.kernel))
        if isinstance(geo, str):
            reason = geo
        bias = None
        if reason is None and quant is not None and not isinstance(quant, str):
            # a quantized conv is tapped as the float conv of its dequantized weight, its quantization around it
            bias = quant.bias
        elif reason is None and len(node.inputs) > 2 and node.inputs[2] is not None:
            b_tensor, note = constant_weight(m, node.inputs[2])
            if b_tensor is None:
                reason = f"bias: {note}"
            else:
                bias = np.asarray(b_tensor.numpy(), dtype=np.float32)
        if reason is not None:
            skipped[layer.name] = reason
            continue
        assert isinstance(geo, Geometry) and dtype is not None  # set wherever no reason was given
        points[layer.name] = TapPoint(geo, bias)
        plan.append((layer, quant if quant is not None else node, dtype))

    added_inputs: list[ir.Value] = []
    added_outputs: list[ir.Value] = []
    restore: list[tuple[ir.Node, list[ir.Value | None]]] = []
    feeds: dict[str, tuple[str, str, np.dtype]] = {}
    defaults: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    captured: dict[str, tuple[str, int | None]] = {}
    n_outputs = len(graph.outputs)
    graph_inputs = {v.name for v in graph.inputs}
    out_index: dict[int, int] = {}
    initializers: list[ir.Value] = []
    undo: list[Callable[[], None]] = []
    try:
        for i, (layer, node, dtype) in enumerate(plan):
            if isinstance(node, _quant.QuantConv):
                node, back = _quant.floatify(node, layer.name)
                undo.append(back)
            w_name, b_name = f"sepconv_tap_{i}_weight", f"sepconv_tap_{i}_bias"
            tensor_shape = (to_transposed(layer.weight, layer.groups).shape if layer.name in views
                            else layer.weight.shape)
            w_val = ir.Value(name=w_name, type=ir.TensorType(dtype), shape=ir.Shape(tensor_shape))
            b_val = ir.Value(name=b_name, type=ir.TensorType(dtype),
                             shape=ir.Shape([layer.out_channels]))
            graph.inputs.extend([w_val, b_val])
            added_inputs += [w_val, b_val]
            restore.append((node, list(node.inputs)))
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(1, w_val)
            node.replace_input_with(2, b_val)
            np_dtype = np.dtype(dtype.numpy())
            feeds[layer.name] = (w_name, b_name, np_dtype)
            bias = points[layer.name].bias
            defaults[layer.name] = (layer.weight, bias if bias is not None else np.zeros(layer.out_channels))
            x = node.inputs[0]
            if x.name in graph_inputs and x.is_graph_input():
                captured[layer.name] = (x.name, None)
                continue
            if id(x) not in out_index:
                out_index[id(x)] = n_outputs + len(added_outputs)
                graph.outputs.append(x)
                added_outputs.append(x)
            captured[layer.name] = ("", out_index[id(x)])
        # Weights no node reads any more would be written (and warned about): leave them out of the copy.
        initializers = list(graph.initializers.values())
        for name, value in list(graph.initializers.items()):
            if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                graph.initializers.pop(name)
        names = [v.name or "" for v in graph.outputs]  # (every output of a loaded model is named)
        path = adapter.save(model, workdir / "tap.onnx")
    finally:
        if initializers:
            graph.initializers.clear()
            for value in initializers:
                graph.register_initializer(value)
        for _ in added_outputs:
            graph.outputs.pop()
        for node, inputs in reversed(restore):
            node.resize_inputs(len(inputs))
            for j, v in enumerate(inputs):
                node.replace_input_with(j, v)
        for _ in added_inputs:
            graph.inputs.pop()
        for back in reversed(undo):
            back()
    run, _ = adapter.runner(path, workdir / "tap", threads)
    return OnnxTap(run, n_outputs, points, skipped, feeds, defaults, captured, names, views)
