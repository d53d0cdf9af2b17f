"""Reading a frozen TorchScript graph: conv nodes and their operands, module-path layer names, input specs, and
the probe run that records the sizes of every conv's and matrix product's operands (see the package docstring).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from ..._errors import InvalidOptionsError, one_line
from ...algebra import from_transposed
from .._base import ConvLayer, InputSpec, UniqueNames

__all__ = ["CONV_KINDS", "IN", "MATMUL_K", "NOT_CONSTANT", "OUT", "WEIGHT", "ConvRef", "Probe", "TorchScriptModel",
           "const", "conv_args", "conv_nodes", "layer_of", "probed_nodes", "run_probe", "specs", "walk"]

# ``_convolution_mode`` is what tracing records for a string padding ('same', 'valid').
_SPATIAL_CONV = ("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution_mode")
_TRANSPOSED_CONV = ("aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d")
_GENERIC_CONV = ("aten::convolution", "aten::_convolution")
CONV_KINDS = frozenset((*_SPATIAL_CONV, *_TRANSPOSED_CONV, *_GENERIC_CONV))

# Matrix products counted in MACs: kind -> index of the operand whose last dim is the reduction length.
MATMUL_K = {
    "aten::linear": 1,  # weight [out, in] (or [in])
    "aten::matmul": 0,
    "aten::mm": 0,
    "aten::bmm": 0,
    "aten::addmm": 1,
    "aten::baddbmm": 1,
}

NOT_CONSTANT = "weight is computed at run time (not a constant after torch.jit.freeze)"

# Probe slots: the sizes recorded for each probed node.
IN, WEIGHT, OUT = 0, 1, 2


# --- records ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvRef:
    """``ConvLayer.handle``: the conv's index in the frozen graph's conv traversal, which a fresh copy of the
    model shares, checked against its kind and weight shape so that a handle from another model fails loudly."""

    index: int
    kind: str
    weight_shape: tuple[int, ...] | None


@dataclass
class Probe:
    """Sizes recorded by one instrumented run: ``sizes[probed node index][slot]`` lists the sizes seen, one per
    execution, of the conv input or reduction operand (``IN``), the conv weight (``WEIGHT``), the output
    (``OUT``)."""

    sizes: dict[int, dict[int, list[tuple[int, ...]]]]


@dataclass
class TorchScriptModel:
    """A loaded TorchScript module, frozen for editing.

    Attributes:
        module: the frozen module; its ``forward`` graph is what ``find_convs`` reads, ``apply`` edits in place
            and ``save`` writes. Only the frozen module is kept: one copy of the weights in memory.
    """

    module: torch.jit.ScriptModule
    _probes: dict[tuple, Probe | None] = field(default_factory=dict, repr=False)


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
    #: a transposed conv's ``output_padding`` (None for a regular conv's schema)
    output_padding: torch._C.Value | None = None


def conv_args(node: torch._C.Node) -> _ConvArgs:
    ins = list(node.inputs())
    kind = node.kind()
    transposed: bool | None
    out_pad = None
    if kind in _SPATIAL_CONV:
        # conv{1,2,3}d (padding int[] or str) and _convolution_mode share one layout.
        x, w, b, stride, padding, dilation, groups = ins[:7]
        transposed = False
    elif kind in _TRANSPOSED_CONV:
        # input, weight, bias, stride, padding, output_padding, groups, dilation
        x, w, b, stride, padding, out_pad, groups, dilation = ins[:8]
        transposed = True
    else:
        # input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, …
        x, w, b, stride, padding, dilation, tr, out_pad, groups = ins[:9]
        flag = const(tr)
        transposed = flag if isinstance(flag, bool) else None
    g = const(groups)
    return _ConvArgs(x, w, b, stride, padding, dilation, g if isinstance(g, int) else None, transposed, out_pad)


def const(value: torch._C.Value) -> Any:
    """The value of a ``prim::Constant`` output, or None for anything else (or a None constant)."""
    if value.node().kind() != "prim::Constant":
        return None
    return value.toIValue()


def walk(block: torch._C.Block | torch._C.Graph) -> Iterator[torch._C.Node]:
    """Every node in graph order, each node's sub-blocks right after it (pre-order)."""
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from walk(sub)


def conv_nodes(graph: torch._C.Graph) -> list[torch._C.Node]:
    return [n for n in walk(graph) if n.kind() in CONV_KINDS]


def probed_nodes(graph: torch._C.Graph) -> list[torch._C.Node]:
    """The nodes the probe records, in graph order: convs and matrix products."""
    return [n for n in walk(graph) if n.kind() in CONV_KINDS or n.kind() in MATMUL_K]


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


def layer_of(node: torch._C.Node, index: int, recorded: dict[int, list[tuple[int, ...]]],
             names: UniqueNames) -> ConvLayer:
    """The ``ConvLayer`` of a conv node, named after its module path, made unique by ``names`` (a module
    called twice gives ``conv`` and ``conv_2``)."""
    args = conv_args(node)
    notes = []
    weight = const(args.weight)
    array: np.ndarray | None = None
    if isinstance(weight, torch.Tensor):
        shape: tuple[int, ...] | None = tuple(weight.shape)
        # A view of the frozen constant when it already is float32 on the CPU (the planner only reads it).
        array = weight.detach().to("cpu", torch.float32).contiguous().numpy()
    else:
        shape = recorded[WEIGHT][0] if WEIGHT in recorded else _static_shape(args.weight)
        notes.append(NOT_CONSTANT)
    if args.groups is None:
        notes.append("groups is not a constant")
    if args.transposed is None:
        notes.append("the transposed flag is not a constant")
    groups = args.groups or 1
    kernel: tuple[int, ...]
    if shape is None:
        kernel, cin, cout = (), 0, 0
    elif args.transposed:
        kernel, cin, cout = shape[2:], shape[0], shape[1] * groups
    else:
        kernel, cin, cout = shape[2:], shape[1] * groups, shape[0]
    if array is not None and args.transposed and args.groups is not None:
        array = from_transposed(array, groups)  # [in, out/g, *k] -> the regular layout ConvLayer documents
    base = _base_name(node, args)
    r = len(kernel)
    ins, outs = recorded.get(IN), recorded.get(OUT)
    convertible = not notes
    return ConvLayer(
        name=names(base),
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
        handle=ConvRef(index, node.kind(), shape if convertible else None),
    )


def forward_args(module: torch.jit.ScriptModule) -> list[Any]:
    """The forward schema's arguments after ``self``."""
    # ScriptModule.forward is typed as any callable; on a scripted module it is a ScriptMethod.
    return list(cast(torch._C.ScriptMethod, module.forward).schema.arguments)[1:]


def _numpy_dtype(dtype: torch.dtype | None) -> np.dtype:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype if dtype is not None else np.dtype(np.float32)
    except TypeError:  # bfloat16 and friends have no numpy dtype
        return np.dtype(np.float32)


#: Non-tensor ``forward`` arguments a user can give as a 0-d array (``forward(x, sr: int)``), with their dtype.
_SCALARS = {torch._C.IntType: np.dtype(np.int64), torch._C.FloatType: np.dtype(np.float64),
            torch._C.BoolType: np.dtype(np.bool_)}


def specs(module: torch.jit.ScriptModule) -> list[InputSpec]:
    """The tensor arguments of ``forward`` after ``self``, and its int/float/bool ones as scalar specs."""
    graph_inputs = list(module.graph.inputs())[1:]
    specs = []
    for arg, value in zip(forward_args(module), graph_inputs, strict=False):
        scalar = next((dt for ty, dt in _SCALARS.items() if isinstance(arg.type, ty)), None)
        if scalar is not None:
            specs.append(InputSpec(arg.name, (), scalar, scalar=True))
            continue
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
    for index, node in enumerate(probed_nodes(g)):
        if node.kind() in CONV_KINDS:
            slots = [(IN, node.inputsAt(0)), (WEIGHT, node.inputsAt(1)), (OUT, node.output())]
        else:
            slots = [(IN, node.inputsAt(MATMUL_K[node.kind()])), (OUT, node.output())]
        anchor = node
        for slot, value in slots:
            with g.insert_point_guard(node):
                # Graph.insertConstant (bound in torch's python_ir.cpp) is missing from torch/_C/__init__.pyi.
                tag_values = [g.insertConstant(index), g.insertConstant(slot)]  # type: ignore[attr-defined]
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


def run_probe(model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> Probe | None:
    """Run the instrumented forward once on zeros of the given shapes (cached per shapes); None when a forward
    argument without a default has no shape.

    Raises:
        InvalidOptionsError: the model does not run on inputs of these shapes.
    """
    key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
    if key in model._probes:
        return model._probes[key]
    by_name = {s.name: s for s in specs(model.module)}
    kwargs: dict[str, torch.Tensor] = {}
    for arg in forward_args(model.module):
        if arg.name in by_name and not by_name[arg.name].scalar and arg.name in input_shapes:
            dtype = torch.from_numpy(np.zeros(0, dtype=by_name[arg.name].dtype)).dtype
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
    model._probes[key] = result = Probe(sizes)
    return result
