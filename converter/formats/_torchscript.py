"""The TorchScript adapter: reads ``torch.jit.save`` archives, finds their convolutions, replaces them by the
convs of a lowered decomposition, and saves a module that loads with plain ``torch.jit.load``.

How: a loaded module is frozen (``torch.jit.freeze``), which inlines every submodule into one ``forward``
graph, folds BatchNorm into the preceding conv and turns weights into ``prim::Constant`` tensors. Each conv
node (``aten::conv1d/2d/3d`` from scripting; ``aten::_convolution``, or ``aten::_convolution_mode`` for a
string padding, from tracing; ``aten::convolution``; ``aten::conv_transpose*``), nested ``prim::If`` and
``prim::Loop`` blocks included, becomes a ``ConvLayer`` named after its module path (``features.0``).
A rewrite inserts new ``aten::conv{1,2,3}d`` nodes (and an ``aten::cat`` or ``aten::add`` join) in the conv's
own block, reroutes its uses and removes it; dead-code elimination is a separate step at the end. ``apply``
edits a fresh copy, never the model it is given.

Spatial sizes and MACs come from one *probe* run: a copy of the frozen graph, instrumented to append the sizes
of every conv's and matrix product's operands to a list it returns, is run once on zeros of the given input
shapes. Ops in a branch that the zeros do not take get no sizes (``None``); ops in a loop count per iteration.

Deliberately not done here: decomposition math (``_decompose``), choosing layers or ranks (``_plan``), and
verification. Transposed convs are reported but never rewritten. A TorchScript file can carry code, so it is
treated as untrusted: nothing runs beyond ``torch.jit.load``, ``torch.jit.freeze``, the probe run and the
runner; sandboxing workers is the service's job. Convs in calls that freezing cannot inline (module
interfaces) are not seen. The probe executes ``forward`` once, so a module that mutates its own attributes in
``forward`` sees that mutation.
"""

from __future__ import annotations

import os
import re
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .._decompose import ConvStep, Lowered
from .._errors import ConversionError, InvalidOptionsError, UnsupportedModelError, VerificationError, one_line
from .._graphcheck import check_torchscript, check_torchscript_archive
from ._base import ConvLayer, InputSpec, ModelStats, Rewrite, Runner, register

__all__ = ["TorchScriptAdapter", "TorchScriptModel"]

# ``_convolution_mode`` is what tracing records for a string padding ('same', 'valid').
_SPATIAL_CONV = ("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution_mode")
_TRANSPOSED_CONV = ("aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d")
_GENERIC_CONV = ("aten::convolution", "aten::_convolution")
_CONV_KINDS = frozenset((*_SPATIAL_CONV, *_TRANSPOSED_CONV, *_GENERIC_CONV))

# Matrix products counted in MACs: kind -> index of the operand whose last dim is the reduction length.
_MATMUL_K = {
    "aten::linear": 1,  # weight [out, in] (or [in])
    "aten::matmul": 0,
    "aten::mm": 0,
    "aten::bmm": 0,
    "aten::addmm": 1,
    "aten::baddbmm": 1,
}

_NOT_CONSTANT = "weight is computed at run time (not a constant after torch.jit.freeze)"

# Probe slots: the sizes recorded for each probed node.
_IN, _WEIGHT, _OUT = 0, 1, 2


# --- records ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConvRef:
    """``ConvLayer.handle``: the conv's index in the frozen graph's conv traversal, which a fresh copy of the
    model shares, checked against its kind and weight shape so that a handle from another model fails loudly."""

    index: int
    kind: str
    weight_shape: tuple[int, ...] | None


@dataclass
class _Probe:
    """Sizes recorded by one instrumented run: ``sizes[probed node index][slot]`` lists the sizes seen, one per
    execution, of the conv input or reduction operand (``_IN``), the conv weight (``_WEIGHT``), the output
    (``_OUT``)."""

    sizes: dict[int, dict[int, list[tuple[int, ...]]]]


@dataclass
class TorchScriptModel:
    """A loaded TorchScript module, frozen for editing.

    Attributes:
        module: the frozen module; its ``forward`` graph is what ``find_convs`` reads, ``apply`` edits in place
            and ``save`` writes. Only the frozen module is kept: one copy of the weights in memory.
    """

    module: torch.jit.ScriptModule
    _probes: dict[tuple, _Probe | None] = field(default_factory=dict, repr=False)


# --- reading the graph -----------------------------------------------------------------------------------------


@dataclass
class _ConvArgs:
    """A conv node's operands, whatever its schema; ``groups``/``transposed`` None when not constants."""

    input: torch._C.Value
    weight: torch._C.Value
    bias: torch._C.Value
    stride: torch._C.Value
    padding: torch._C.Value
    dilation: torch._C.Value
    groups: int | None
    transposed: bool | None


def _conv_args(node: torch._C.Node) -> _ConvArgs:
    ins = list(node.inputs())
    kind = node.kind()
    transposed: bool | None
    if kind in _SPATIAL_CONV:
        # conv{1,2,3}d (padding int[] or str) and _convolution_mode share one layout.
        x, w, b, stride, padding, dilation, groups = ins[:7]
        transposed = False
    elif kind in _TRANSPOSED_CONV:
        # input, weight, bias, stride, padding, output_padding, groups, dilation
        x, w, b, stride, padding, _, groups, dilation = ins[:8]
        transposed = True
    else:
        # input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, …
        x, w, b, stride, padding, dilation, tr, _, groups = ins[:9]
        flag = _const(tr)
        transposed = flag if isinstance(flag, bool) else None
    g = _const(groups)
    return _ConvArgs(x, w, b, stride, padding, dilation, g if isinstance(g, int) else None, transposed)


def _const(value: torch._C.Value) -> Any:
    """The value of a ``prim::Constant`` output, or None for anything else (or a None constant)."""
    if value.node().kind() != "prim::Constant":
        return None
    return value.toIValue()


def _walk(block: torch._C.Block | torch._C.Graph) -> Iterator[torch._C.Node]:
    """Every node in graph order, each node's sub-blocks right after it (pre-order)."""
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _walk(sub)


def _conv_nodes(graph: torch._C.Graph) -> list[torch._C.Node]:
    return [n for n in _walk(graph) if n.kind() in _CONV_KINDS]


def _probed_nodes(graph: torch._C.Graph) -> list[torch._C.Node]:
    """The nodes the probe records, in graph order: convs and matrix products."""
    return [n for n in _walk(graph) if n.kind() in _CONV_KINDS or n.kind() in _MATMUL_K]


def _module_path(node: torch._C.Node) -> str:
    """``features(Sequential).0(Conv2d).SELF(Conv2d)`` -> ``features.0``; ``""`` when there is none."""
    hierarchy = node.getModuleHierarchy() or ""
    parts: list[str] = []
    depth, start = 0, 0
    # Split at top-level dots only: a type in parentheses may be a qualified name with dots of its own.
    for i, ch in enumerate(hierarchy + "."):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            name = hierarchy[start:i].split("(", 1)[0]
            start = i + 1
            if name and name not in ("SELF", "TOP"):
                parts.append(name)
    return ".".join(parts)


def _base_name(node: torch._C.Node, args: _ConvArgs) -> str:
    path = _module_path(node)
    if path:
        return path
    # Freezing names a weight constant after its attribute: ``self.features.0.weight``.
    m = re.fullmatch(r"self\.(.+)\.weight(?:\.\d+)?", args.weight.debugName())
    return m.group(1) if m else "conv"


def _static_shape(value: torch._C.Value) -> tuple[int, ...] | None:
    ty = value.type()
    sizes = ty.sizes() if isinstance(ty, torch._C.TensorType) else None
    return tuple(sizes) if sizes is not None and all(isinstance(s, int) for s in sizes) else None


def _layer(node: torch._C.Node, index: int, recorded: dict[int, list[tuple[int, ...]]],
           seen: dict[str, int]) -> ConvLayer:
    """The ``ConvLayer`` of a conv node; ``seen`` counts base names so that repeated ones get ``#2``…"""
    args = _conv_args(node)
    notes = []
    weight = _const(args.weight)
    array: np.ndarray | None = None
    if isinstance(weight, torch.Tensor):
        shape: tuple[int, ...] | None = tuple(weight.shape)
        # A view of the frozen constant when it already is float32 on the CPU (the planner only reads it).
        array = weight.detach().to("cpu", torch.float32).contiguous().numpy()
    else:
        shape = recorded[_WEIGHT][0] if _WEIGHT in recorded else _static_shape(args.weight)
        notes.append(_NOT_CONSTANT)
    if args.groups is None:
        notes.append("groups is not a constant")
    if args.transposed is None:
        notes.append("the transposed flag is not a constant")
    groups = args.groups or 1
    if shape is None:
        kernel, cin, cout = (), 0, 0
    elif args.transposed:
        kernel, cin, cout = shape[2:], shape[0], shape[1] * groups
    else:
        kernel, cin, cout = shape[2:], shape[1] * groups, shape[0]
    base = _base_name(node, args)
    seen[base] = seen.get(base, 0) + 1
    r = len(kernel)
    ins, outs = recorded.get(_IN), recorded.get(_OUT)
    convertible = not notes
    return ConvLayer(
        name=base if seen[base] == 1 else f"{base}#{seen[base]}",
        op=node.kind(),
        kernel=tuple(kernel),
        in_channels=cin,
        out_channels=cout,
        groups=groups,
        weight=array if convertible else None,
        transposed=bool(args.transposed),
        note="; ".join(notes) or None,
        # The last r dims, so that an unbatched input ([C, *spatial]) works too.
        in_spatial=tuple(ins[0][-r:]) if ins and r else None,
        out_spatial=tuple(outs[0][-r:]) if outs and r else None,
        handle=_ConvRef(index, node.kind(), shape if convertible else None),
    )


def _forward_args(module: torch.jit.ScriptModule) -> list[Any]:
    """The forward schema's arguments after ``self``."""
    return list(module.forward.schema.arguments)[1:]


def _numpy_dtype(dtype: torch.dtype | None) -> np.dtype:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype if dtype is not None else np.dtype(np.float32)
    except TypeError:  # bfloat16 and friends have no numpy dtype
        return np.dtype(np.float32)


def _specs(module: torch.jit.ScriptModule) -> list[InputSpec]:
    graph_inputs = list(module.graph.inputs())[1:]
    specs = []
    for arg, value in zip(_forward_args(module), graph_inputs, strict=False):
        if not isinstance(arg.type, torch._C.TensorType):
            continue
        ty = value.type()
        dtype = _numpy_dtype(ty.dtype() if isinstance(ty, torch._C.TensorType) else None)
        specs.append(InputSpec(arg.name, _static_shape(value), dtype))
    return specs


# --- the probe run ---------------------------------------------------------------------------------------------


def _instrument(graph: torch._C.Graph) -> torch._C.Graph:
    """A copy of ``graph`` that also returns ``int[][]`` rows ``[probed node index, slot, *sizes]``."""
    g = graph.copy()
    int_list = torch._C.ListType(torch._C.IntType.get())
    rows_t = torch._C.ListType(int_list)

    def after(anchor: torch._C.Node, kind: str, inputs: list[torch._C.Value], ty: Any) -> torch._C.Node:
        new = g.create(kind, inputs, 1)
        new.insertAfter(anchor)
        new.output().setType(ty)
        return new

    rows_node = g.create("prim::ListConstruct", [], 1)
    rows_node.insertBefore(next(iter(g.nodes())))
    rows_node.output().setType(rows_t)
    rows = rows_node.output()
    for index, node in enumerate(_probed_nodes(g)):
        if node.kind() in _CONV_KINDS:
            slots = [(_IN, node.inputsAt(0)), (_WEIGHT, node.inputsAt(1)), (_OUT, node.output())]
        else:
            slots = [(_IN, node.inputsAt(_MATMUL_K[node.kind()])), (_OUT, node.output())]
        anchor = node
        for slot, value in slots:
            with g.insert_point_guard(node):
                tag_values = [g.insertConstant(index), g.insertConstant(slot)]
            size = after(anchor, "aten::size", [value], int_list)
            tag = after(size, "prim::ListConstruct", tag_values, int_list)
            row = after(tag, "aten::add", [tag.output(), size.output()], int_list)
            anchor = after(row, "aten::append", [rows, row.output()], rows_t)
    outputs = list(g.outputs())
    for _ in outputs:
        g.eraseOutput(0)
    for value in [*outputs, rows]:
        g.registerOutput(value)
    # A function returns one value: (original output…, rows) as a tuple.
    g.makeMultiOutputIntoTuple()
    g.lint()
    return g


def _probe(model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> _Probe | None:
    """Run the instrumented forward once on zeros of the given shapes (cached per shapes); None when a forward
    argument without a default has no shape.

    Raises:
        InvalidOptionsError: the model does not run on inputs of these shapes.
    """
    key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
    if key in model._probes:
        return model._probes[key]
    specs = {s.name: s for s in _specs(model.module)}
    kwargs: dict[str, torch.Tensor] = {}
    for arg in _forward_args(model.module):
        if arg.name in specs and arg.name in input_shapes:
            dtype = torch.from_numpy(np.zeros(0, dtype=specs[arg.name].dtype)).dtype
            kwargs[arg.name] = torch.zeros(tuple(input_shapes[arg.name]), dtype=dtype)
        elif not arg.has_default_value():
            model._probes[key] = None
            return None
    try:
        fn = torch._C._create_function_from_graph("sepconv_probe", _instrument(model.module.graph))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The frozen graph still takes ``self`` (usually unused): pass the module itself.
            *_, rows = fn(model.module._c, **kwargs)
    except RuntimeError as e:
        shapes = ", ".join(f"{k}={list(v)}" for k, v in input_shapes.items())
        raise InvalidOptionsError(f"the TorchScript model did not run on inputs of shape {shapes}: "
                                  f"{one_line(e, 200)}") from e
    sizes: dict[int, dict[int, list[tuple[int, ...]]]] = {}
    for index, slot, *dims in rows:
        sizes.setdefault(index, {}).setdefault(slot, []).append(tuple(dims))
    model._probes[key] = probe = _Probe(sizes)
    return probe


# --- rewriting -------------------------------------------------------------------------------------------------


def _debug_name(text: str) -> str:
    """A value name the TorchScript printer keeps (``features.0.dw_0`` is ``features_0_dw_0`` in saved code)."""
    name = re.sub(r"[^A-Za-z0-9_.]", "_", text).strip(".")
    return name if name and not name[0].isdigit() else f"l_{name}"


class _Emitter:
    """Inserts nodes, in order, in front of the conv they replace (so in its block)."""

    def __init__(self, graph: torch._C.Graph, before: torch._C.Node) -> None:
        self.graph = graph
        self.before = before

    def constant(self, value: Any, name: str | None = None) -> torch._C.Value:
        with self.graph.insert_point_guard(self.before):
            out = self.graph.insertConstant(value)
        if name:
            out.setDebugName(_debug_name(name))
        return out

    def node(self, kind: str, inputs: Sequence[torch._C.Value], ty: Any, name: str | None) -> torch._C.Value:
        new = self.graph.create(kind, list(inputs), 1)
        new.insertBefore(self.before)
        # The replaced conv's source range and module call stack: profiles and later find_convs keep its path.
        new.copyMetadata(self.before)
        out = new.output()
        out.setType(ty)
        if name:
            out.setDebugName(_debug_name(name))
        return out


def _replace(graph: torch._C.Graph, node: torch._C.Node, layer: ConvLayer, lowered: Lowered) -> None:
    """Replace one conv node by the convs of ``lowered`` (the node's weight is a constant, not transposed)."""
    args = _conv_args(node)
    weight = _const(args.weight)
    rank = weight.dim() - 2
    lowered.check(weight.shape[1] * (args.groups or 1), weight.shape[0], tuple(weight.shape[2:]))
    emit = _Emitter(graph, node)
    tensor_t = torch._C.TensorType.get()
    none = emit.constant(None)
    pointwise = (emit.constant([1] * rank), emit.constant([0] * rank), emit.constant([1] * rank))
    kind = f"aten::conv{rank}d"

    def conv(step: ConvStep, x: torch._C.Value) -> torch._C.Value:
        w = torch.from_numpy(np.array(step.weight, copy=True)).to(dtype=weight.dtype, device=weight.device)
        wv = emit.constant(w, f"{layer.name}.{step.name}.weight")
        # Only the spatial conv takes the original stride/padding/dilation (a str padding picks the
        # ``.padding`` overload); 1×1 convs run with stride 1, no padding.
        stride, padding, dilation = (args.stride, args.padding, args.dilation) if step.spatial else pointwise
        bias = args.bias if step.bias else none
        return emit.node(kind, [x, wv, bias, stride, padding, dilation, emit.constant(int(step.groups))],
                         tensor_t, f"{layer.name}.{step.name}")

    def join(kind: str, outs: list[torch._C.Value]) -> torch._C.Value:
        if kind == "concat":
            parts = emit.node("prim::ListConstruct", outs, torch._C.ListType.ofTensors(), None)
            # The channel axis counted from the end, so that an unbatched input works too.
            return emit.node("aten::cat", [parts, emit.constant(-(rank + 1))], tensor_t, f"{layer.name}.cat")
        y, one = outs[0], emit.constant(1)
        for i, other in enumerate(outs[1:], 1):
            y = emit.node("aten::add", [y, other, one], tensor_t, f"{layer.name}.sum_{i}")
        return y

    y = lowered.fold(args.input, conv, join)
    y.setType(node.output().type())
    node.output().replaceAllUsesWith(y)
    node.destroy()


# --- counting --------------------------------------------------------------------------------------------------


def _params(module: torch.jit.ScriptModule) -> int:
    """Elements of the floating-point tensors the module holds, each storage counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = (t.data_ptr(), t.numel())
        if t.is_floating_point() and t.numel() and key not in seen:
            seen.add(key)
            total += t.numel()

    for node in _walk(module.graph):
        if node.kind() == "prim::Constant" and isinstance(node.output().type(), torch._C.TensorType):
            value = node.output().toIValue()
            if isinstance(value, torch.Tensor):
                add(value)
    # Freezing usually folds everything, but attributes that ``forward`` mutates stay attributes.
    for t in (*module.parameters(), *module.buffers()):
        add(t)
    return total


def _prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _macs(model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    probe = _probe(model, input_shapes) if input_shapes else None
    if probe is None:
        return None
    total = 0
    for index, node in enumerate(_probed_nodes(model.module.graph)):
        rec = probe.sizes.get(index, {})
        for i, out in enumerate(rec.get(_OUT, [])):
            if node.kind() in _CONV_KINDS:
                # Each output element (input element, for a transposed conv) meets prod(weight[1:]) weights.
                drive = rec[_IN][i] if _conv_args(node).transposed else out
                total += _prod(drive) * _prod(rec[_WEIGHT][i][1:])
            else:
                k_operand = rec[_IN][i]
                total += _prod(out) * (k_operand[-1] if k_operand else 1)
    # Per sample, like the plan's per-layer counts: the inputs' common first dim is the batch.
    batches = {s[0] for s in input_shapes.values() if len(s) > 0}
    batch = batches.pop() if len(batches) == 1 else 1
    return round(total / batch) if batch > 0 else total


# --- running ---------------------------------------------------------------------------------------------------


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    raise VerificationError(f"the TorchScript model returned a {type(value).__name__}, not tensors")


# --- the adapter -----------------------------------------------------------------------------------------------


class TorchScriptAdapter:
    """``FormatAdapter`` for TorchScript archives written by ``torch.jit.save`` (``torch.jit.script`` or
    ``torch.jit.trace`` output)."""

    name: ClassVar[str] = "torchscript"
    suffix: ClassVar[str] = ".pt"

    def detect(self, path: Path) -> bool:
        """A zip with the ``torch.jit.save`` layout: ``<root>/data.pkl``, ``<root>/constants.pkl`` and
        ``<root>/code/…``. A ``torch.save`` checkpoint (no ``code/``) is not TorchScript. Reads only the zip
        directory: never unpickles, never raises."""
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except Exception:  # whatever the file is, unreadable or foreign means "not ours"
            return False
        roots = {n.split("/", 1)[0] for n in names if "/" in n}
        return any(
            f"{r}/data.pkl" in names and f"{r}/constants.pkl" in names
            and any(n.startswith(f"{r}/code/") for n in names)
            for r in roots
        )

    def load(self, path: Path, workdir: Path) -> TorchScriptModel:
        """Load on the CPU, check its graphs (``_graphcheck``: only tensor math ops, unless trusted), switch to eval
        mode and freeze.

        Raises:
            UnsupportedModelError: the file cannot be loaded or frozen (corrupt, truncated, not TorchScript), or
                its graph holds an op outside the allowlist.
        """
        check_torchscript_archive(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # torch raises RuntimeError, ValueError, pickle and zip errors alike
            raise UnsupportedModelError(f"TorchScript file could not be loaded: {one_line(e, 200)}") from e
        check_torchscript(loaded)  # before freezing: its constant propagation runs ops
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frozen = torch.jit.freeze(loaded)
        except Exception as e:
            raise UnsupportedModelError(f"TorchScript file could not be frozen: {one_line(e, 200)}") from e
        return TorchScriptModel(module=frozen)

    def input_specs(self, model: TorchScriptModel) -> list[InputSpec]:
        """The tensor arguments of ``forward`` after ``self``, with a shape only where the graph records one
        (TorchScript usually does not), float32 unless the graph says otherwise."""
        return _specs(model.module)

    def find_convs(self, model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
        """Every conv node of the frozen graph, nested blocks included, in graph order; spatial sizes from a
        probe run on zeros when every input has a shape.

        Raises:
            InvalidOptionsError: the model does not run on inputs of the given shapes.
        """
        probe = _probe(model, input_shapes) if input_shapes else None
        layers: list[ConvLayer] = []
        seen: dict[str, int] = {}
        for probe_index, node in enumerate(_probed_nodes(model.module.graph)):
            if node.kind() in _CONV_KINDS:
                recorded = probe.sizes.get(probe_index, {}) if probe is not None else {}
                layers.append(_layer(node, len(layers), recorded, seen))
        return layers

    def apply(self, model: TorchScriptModel, rewrites: Sequence[Rewrite]) -> TorchScriptModel:
        """Replace each rewritten conv by the convs of its lowered decomposition, editing the model in place
        (a copy would hold the weights twice). Every rewrite is checked before the first edit, so a list that
        does not fit the model leaves it untouched.

        Raises:
            ConversionError: a layer is not a convertible conv of this model, or could not be rewritten; the
                message names the layer.
        """
        graph = model.module.graph
        nodes = _conv_nodes(graph)
        used: set[int] = set()
        targets = []
        for rw in rewrites:
            layer, ref = rw.layer, rw.layer.handle
            if not isinstance(ref, _ConvRef) or not 0 <= ref.index < len(nodes) or ref.index in used:
                raise ConversionError(f"layer {layer.name}: not a conv of this TorchScript model (or listed twice)")
            node = nodes[ref.index]
            args = _conv_args(node)
            weight = _const(args.weight)
            if node.kind() != ref.kind:
                raise ConversionError(f"layer {layer.name}: the model does not match the layer list")
            if not isinstance(weight, torch.Tensor):
                raise ConversionError(f"layer {layer.name}: {_NOT_CONSTANT}")
            if tuple(weight.shape) != ref.weight_shape:
                raise ConversionError(f"layer {layer.name}: the model does not match the layer list")
            if args.transposed is not False:
                raise ConversionError(f"layer {layer.name}: transposed convolutions cannot be rewritten")
            try:  # the same check _replace makes, before anything is edited
                rw.lowered.check(weight.shape[1] * (args.groups or 1), weight.shape[0], tuple(weight.shape[2:]))
            except ValueError as e:
                raise ConversionError(f"layer {layer.name}: could not rewrite the TorchScript graph: "
                                      f"{one_line(e, 200)}") from e
            used.add(ref.index)
            targets.append((node, layer, rw.lowered))
        for node, layer, lowered in targets:
            try:
                _replace(graph, node, layer, lowered)
            except (RuntimeError, ValueError, TypeError) as e:
                raise ConversionError(f"layer {layer.name}: could not rewrite the TorchScript graph: "
                                      f"{one_line(e, 200)}") from e
        try:
            torch._C._jit_pass_dce(graph)
            graph.lint()
        except RuntimeError as e:
            raise ConversionError(f"the rewritten TorchScript graph is invalid: {one_line(e, 200)}") from e
        model._probes.clear()  # sizes recorded for the old graph
        return model

    def save(self, model: TorchScriptModel, dest: Path) -> Path:
        """``torch.jit.save`` to a temporary file next to ``dest``, then rename it to ``dest``.

        Raises:
            ConversionError: the module could not be serialised or written.
        """
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            torch.jit.save(model.module, str(tmp))
            os.replace(tmp, dest)
        except Exception as e:  # serialisation (RuntimeError) and file system (OSError) failures alike
            tmp.unlink(missing_ok=True)
            raise ConversionError(f"could not save the TorchScript model to {dest.name}: {one_line(e, 200)}") from e
        return dest

    def stats(self, model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> ModelStats:
        """Floating-point tensor elements held by the frozen module; MACs of its convs and matrix products
        measured at the given input shapes, per sample (divided by the inputs' common first dim, as the plan's
        per-layer MACs are batch 1), or None without shapes. Ops in a branch that zeros do not take count
        nothing.

        Raises:
            InvalidOptionsError: the model does not run on inputs of the given shapes.
        """
        return ModelStats(params=_params(model.module), macs=_macs(model, input_shapes))

    def runner(self, path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
        """Load a saved module with plain ``torch.jit.load`` and run it under ``torch.inference_mode``; inputs
        go to ``forward`` in its argument order, tuple and list outputs are flattened.

        Raises:
            UnsupportedModelError: the file does not load.
        """
        if threads:
            torch.set_num_threads(threads)
        try:
            module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # as in load
            raise UnsupportedModelError(f"TorchScript file could not be loaded: {one_line(e, 200)}") from e
        names = [s.name for s in _specs(module)]

        def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            missing = [n for n in names if n not in inputs]
            if missing:
                raise InvalidOptionsError(f"missing model inputs: {', '.join(missing)}")
            tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(device) for n in names]
            try:
                with torch.inference_mode():
                    out = module(*tensors)
            except RuntimeError as e:
                raise VerificationError(f"the TorchScript model did not run: {one_line(e, 200)}") from e
            return [t.detach().cpu().numpy() for t in _flatten(out)]

        return run, f"torch-{torch.device(device).type}"


register(TorchScriptAdapter())
