"""Reading an ``ExportedProgram``'s FX graph: its conv nodes and their operands, where each weight lives
(parameter, buffer or lifted constant), layer names, input specs, and one shape-propagation run on fake tensors
that gives every conv's and matrix product's operand sizes (no compute, no memory for activations)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from ..._errors import InvalidOptionsError, one_line
from ...algebra import from_transposed
from .._base import ConvLayer, InputSpec, UniqueNames

__all__ = ["CONV_OPS", "ConvArgs", "Pt2Model", "conv_args", "conv_nodes", "find_layers", "input_specs", "macs",
           "params", "weight_of"]

_aten = torch.ops.aten
#: Conv overloads found; ``convolution``/``_convolution`` carry a ``transposed`` flag.
CONV_OPS = frozenset({
    _aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default,
    _aten.conv1d.padding, _aten.conv2d.padding, _aten.conv3d.padding,
    _aten.convolution.default, _aten._convolution.default,
    _aten.conv_transpose1d.default, _aten.conv_transpose2d.input, _aten.conv_transpose3d.input,
})
_TRANSPOSED = frozenset({_aten.conv_transpose1d.default, _aten.conv_transpose2d.input,
                         _aten.conv_transpose3d.input})
_GENERIC = frozenset({_aten.convolution.default, _aten._convolution.default})
# Matrix products counted in MACs: op -> index of the operand whose last dim is the reduction length.
_MATMUL_K = {_aten.linear.default: 0, _aten.matmul.default: 0, _aten.mm.default: 0, _aten.bmm.default: 0,
             _aten.addmm.default: 1, _aten.baddbmm.default: 1}
_NOT_CONSTANT = "weight is computed at run time (not a parameter, buffer or constant of the program)"


@dataclass
class Pt2Model:
    """A loaded ``ExportedProgram``; ``apply`` replaces ``program`` by the rewritten one.

    Attributes:
        program: the program (its graph module, signature, state dict and constants).
    """

    program: ExportedProgram
    _shapes: dict[tuple, dict[str, dict[str, tuple[int, ...]]]] = field(default_factory=dict, repr=False)


@dataclass
class ConvArgs:
    """A conv node's operands whatever its overload; ``padding`` may be a string (``same``/``valid``)."""

    input: Any
    weight: Any
    bias: Any
    stride: list[int]
    padding: list[int] | str
    dilation: list[int]
    groups: int
    transposed: bool
    #: a transposed conv's output padding (zeros otherwise)
    output_padding: list[int] = field(default_factory=list)


def _arg(node: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# Positions of (stride, padding, dilation, groups, transposed) in each overload family's schema.
_LAYOUT_GENERIC = (3, 4, 5, 8, 6)  # input, weight, bias, stride, padding, dilation, transposed, out_pad, groups
_LAYOUT_TRANSPOSED = (3, 4, 7, 6, None)  # input, weight, bias, stride, padding, output_padding, groups, dilation
_LAYOUT_CONV = (3, 4, 5, 6, None)  # input, weight, bias, stride, padding, dilation, groups


def conv_args(node: torch.fx.Node, rank: int) -> ConvArgs:
    """The operands of a conv node of spatial rank ``rank``, defaults filled in."""
    layout: tuple[int, int, int, int, int | None]
    if node.target in _GENERIC:
        layout = _LAYOUT_GENERIC
    elif node.target in _TRANSPOSED:
        layout = _LAYOUT_TRANSPOSED
    else:
        layout = _LAYOUT_CONV
    i_stride, i_padding, i_dilation, i_groups, i_transposed = layout
    padding = _arg(node, i_padding, "padding", [0])
    if i_transposed is not None:
        transposed = bool(_arg(node, i_transposed, "transposed", False))
        out_pad = _arg(node, 7, "output_padding", [0])
    else:
        transposed = node.target in _TRANSPOSED
        out_pad = _arg(node, 5, "output_padding", [0]) if transposed else [0]
    return ConvArgs(
        input=_arg(node, 0, "input", None),
        weight=_arg(node, 1, "weight", None),
        bias=_arg(node, 2, "bias", None),
        stride=_expand(_arg(node, i_stride, "stride", [1]), rank),
        padding=padding if isinstance(padding, str) else _expand(padding, rank),
        dilation=_expand(_arg(node, i_dilation, "dilation", [1]), rank),
        groups=int(_arg(node, i_groups, "groups", 1)),
        transposed=transposed,
        output_padding=_expand(out_pad, rank),
    )


def _expand(value: Any, rank: int) -> list[int]:
    values = [int(v) for v in (value if isinstance(value, list | tuple) else [value])]
    return values * rank if len(values) == 1 else values


def conv_nodes(program: ExportedProgram) -> list[torch.fx.Node]:
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target in CONV_OPS]


def weight_of(program: ExportedProgram, node: Any) -> tuple[torch.Tensor | None, str | None]:
    """The tensor behind a weight operand (a parameter, buffer or lifted constant placeholder) and its target
    name, or (None, None)."""
    if not isinstance(node, torch.fx.Node) or node.op != "placeholder":
        return None, None
    for spec in program.graph_signature.input_specs:
        if getattr(spec.arg, "name", None) != node.name or spec.target is None:
            continue
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            tensor = program.state_dict.get(spec.target)
            if tensor is None:
                tensor = program.constants.get(spec.target)  # a non-persistent buffer
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            tensor = program.constants.get(spec.target)
        else:
            return None, None
        return (tensor, spec.target) if isinstance(tensor, torch.Tensor) else (None, None)
    return None, None


def _layer_name(node: torch.fx.Node, target: str | None) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return str(path)
    if target and target.endswith(".weight"):
        return target[: -len(".weight")]
    return node.name


def _target_name(node: torch.fx.Node) -> str:
    """``conv2d.default`` for a call of ``aten.conv2d.default`` (FX also allows a method name as target)."""
    return node.target.__name__ if callable(node.target) else node.target


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    try:
        return tuple(int(d) for d in val.shape)
    except (TypeError, ValueError):  # a symbolic dim
        return None


#: What a conv inside a control-flow body is skipped for (``torch.cond`` branches, ``map`` bodies…).
NOTE_CONTROL_FLOW = ("inside a {what} of the .pt2 program ({body}): convs in control-flow bodies are found but "
                     "not converted (their weights are operands of the body, not the program's own nodes)")


def _bodies(node: torch.fx.Node, root: torch.nn.Module) -> tuple[list[tuple[str, torch.fx.GraphModule]], list[Any]]:
    """The graph modules a higher-order op (``torch.cond``, ``map``, ``while_loop``…) runs, by attribute name,
    and the operands it passes them (the flattened arguments after the last body: each body's placeholders in
    order)."""
    bodies: list[tuple[str, torch.fx.GraphModule]] = []
    operands: list[Any] = []
    for arg in node.args:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            sub = getattr(root, str(arg.target), None)
            if isinstance(sub, torch.fx.GraphModule):
                bodies.append((str(arg.target), sub))
                operands = []
                continue
        if bodies:
            operands.extend(arg if isinstance(arg, list | tuple) else [arg])
    return bodies, operands


def _kernel_channels(wshape: Any, rank: int, args: Any) -> tuple[tuple[int, ...], int, int]:
    """A conv's kernel, input and output channels from its weight shape (a transposed conv's weight is
    ``[in, out/g, *k]``); empty and zero where the shape is unknown."""
    if wshape is None or rank == 0:
        return (), 0, 0
    if args.transposed:
        return tuple(wshape[2:]), int(wshape[0]), int(wshape[1] * args.groups)
    return tuple(wshape[2:]), int(wshape[1] * args.groups), int(wshape[0])


def _control_flow_layer(node: torch.fx.Node, what: str, body: str, names: UniqueNames,
                        target: str | None) -> ConvLayer:
    """A conv inside a control-flow body: reported with its shape (from the traced metadata) and skipped."""
    wshape = _shape(node.args[1]) if len(node.args) > 1 else None
    rank = len(wshape) - 2 if wshape is not None and len(wshape) >= 3 else 0
    args = conv_args(node, rank)
    kernel, cin, cout = _kernel_channels(wshape, rank, args)
    x, y = _shape(args.input), _shape(node)
    return ConvLayer(
        name=names(_layer_name(node, target)), op=f"aten.{getattr(node.target, '__name__', node.target)}",
        kernel=tuple(kernel),
        in_channels=int(cin), out_channels=int(cout), groups=args.groups, weight=None, transposed=args.transposed,
        note=NOTE_CONTROL_FLOW.format(what=what, body=body),
        in_spatial=x[-rank:] if x is not None and rank else None,
        out_spatial=y[-rank:] if y is not None and rank else None,
        handle=f"{body}/{node.name}",  # no node of the program's own graph: the tap and the rewrite refuse it
    )


def _what(node: torch.fx.Node) -> str:
    """How a higher-order op's bodies are called in the report: ``torch.cond branch``, ``torch.map body``…"""
    name = getattr(node.target, "__name__", str(node.target)).split(".")[-1]
    return {"cond": "torch.cond branch", "map_impl": "torch.map body"}.get(name, f"{name} body")


def _nested(program: ExportedProgram, graph_module: torch.fx.GraphModule, names: UniqueNames, prefix: str = "",
            outer: Mapping[str, Any] | None = None, what: str = "") -> list[ConvLayer]:
    """The convs of the control-flow bodies the graph's higher-order ops run, in graph order (nested bodies
    too). ``outer`` maps a body's placeholder names to the program's own nodes they are fed from (weights are
    named after the parameter they come from)."""
    out = []
    outer = outer or {}
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if prefix and node.target in CONV_OPS:
            w = node.args[1] if len(node.args) > 1 else None
            source = outer.get(w.name) if isinstance(w, torch.fx.Node) else None
            _, target = weight_of(program, source)
            out.append(_control_flow_layer(node, what, prefix, names, target))
            continue
        bodies, operands = _bodies(node, graph_module)
        for attr, sub in bodies:
            holders = [n for n in sub.graph.nodes if n.op == "placeholder"]
            fed = {h.name: (outer.get(o.name, o) if prefix else o) if isinstance(o, torch.fx.Node) else None
                   for h, o in zip(holders, operands, strict=False)}
            out.extend(_nested(program, sub, names, f"{prefix}/{attr}" if prefix else attr, fed, _what(node)))
    return out


def find_layers(model: Pt2Model, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
    """Every conv node of the program's graph in graph order, as ``ConvLayer``s (``handle`` is the node's
    name), then the convs inside control-flow bodies (``torch.cond`` branches, ``map`` bodies), skipped with
    ``NOTE_CONTROL_FLOW``."""
    program = model.program
    sizes = _probe(model, input_shapes) if input_shapes else {}
    names = UniqueNames()
    layers = []
    for node in conv_nodes(program):
        tensor, target = weight_of(program, node.args[1] if len(node.args) > 1 else None)
        wshape = tuple(tensor.shape) if tensor is not None else _shape(node.args[1])
        rank = len(wshape) - 2 if wshape is not None and len(wshape) >= 3 else 0
        args = conv_args(node, rank)
        notes = [] if tensor is not None else [_NOT_CONSTANT]
        if tensor is not None and not tensor.is_floating_point():
            notes.append(f"weight has dtype {tensor.dtype}, not a floating-point type")
        kernel, cin, cout = _kernel_channels(wshape, rank, args)
        rec = sizes.get(node.name, {})
        weight = None
        if not notes and tensor is not None:
            weight = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
            if args.transposed:  # [in, out/g, *k] -> the regular layout ConvLayer documents
                weight = from_transposed(weight, args.groups)
        layers.append(ConvLayer(
            name=names(_layer_name(node, target)), op=f"aten.{_target_name(node)}", kernel=tuple(kernel),
            in_channels=int(cin), out_channels=int(cout), groups=args.groups, weight=weight,
            transposed=args.transposed, note="; ".join(notes) or None,
            in_spatial=rec["in"][-rank:] if "in" in rec and rank else None,
            out_spatial=rec["out"][-rank:] if "out" in rec and rank else None,
            handle=node.name,  # node names survive save and load: a rewrite may come from another copy
        ))
    return layers + _nested(program, program.graph_module, names)


def _user_inputs(program: ExportedProgram) -> list[torch.fx.Node]:
    users = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in users]


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:  # bfloat16 and friends have no numpy dtype
        return np.dtype(np.float32)


def input_specs(program: ExportedProgram) -> list[InputSpec]:
    """The tensor user inputs in call order; symbolic dims are their symbol's name (``s0``)."""
    specs = []
    for node in _user_inputs(program):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        shape = tuple(int(d) if isinstance(d, int) or not hasattr(d, "node") else str(d) for d in val.shape)
        specs.append(InputSpec(node.name, shape, _numpy_dtype(val.dtype)))
    return specs


def _probe(model: Pt2Model, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Sizes of every conv's and matrix product's input (``in``), weight and output (``out``), by node name,
    from one run of the graph on fake tensors of the given shapes (cached per shapes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
    if key in model._shapes:
        return model._shapes[key]
    program = model.program
    users = {n.name: n for n in _user_inputs(program)}
    unknown = [k for k in input_shapes if k not in users]
    if unknown:
        raise InvalidOptionsError(f"input shape given for {unknown[0]!r}, which is not an input of the program "
                                  f"(inputs: {', '.join(users) or 'none'})")
    records: dict[str, dict[str, tuple[int, ...]]] = {}
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        args = []
        for node in program.graph.nodes:
            if node.op != "placeholder":
                continue
            if node.name in users:
                val = node.meta.get("val")
                if node.name not in input_shapes or not isinstance(val, torch.Tensor):
                    model._shapes[key] = {}
                    return {}
                args.append(torch.zeros(tuple(input_shapes[node.name]), dtype=val.dtype))
            else:
                tensor, _ = weight_of(program, node)
                val = node.meta.get("val")
                args.append(mode.from_tensor(tensor) if tensor is not None else val)
        try:
            _Recorder(program.graph_module, records).run(*args)
        except Exception as e:
            shapes = ", ".join(f"{k}={list(v)}" for k, v in input_shapes.items())
            raise InvalidOptionsError(f"the .pt2 program did not run on inputs of shape {shapes}: "
                                      f"{one_line(e, 200)}") from e
    model._shapes[key] = records
    return records


class _Recorder(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, records: dict[str, dict[str, tuple[int, ...]]]) -> None:
        super().__init__(module)
        self.records = records

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.op == "call_function" and (n.target in CONV_OPS or n.target in _MATMUL_K):
            args = [self.env[a] if isinstance(a, torch.fx.Node) else a for a in n.args]
            operand = args[0] if n.target in CONV_OPS else args[_MATMUL_K[n.target]]
            weight = args[1] if len(args) > 1 else None
            if not isinstance(operand, torch.Tensor) or not isinstance(out, torch.Tensor):
                return out  # a conv or matrix product always takes and gives tensors (FakeTensors here)
            rec = {"in": tuple(operand.shape), "out": tuple(out.shape)}
            if isinstance(weight, torch.Tensor):
                rec["weight"] = tuple(weight.shape)
            self.records[n.name] = rec
        return out


def macs(model: Pt2Model, input_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """MACs of convs and matrix products at the given shapes, per sample (divided by the inputs' common first
    dim), or None without shapes."""
    records = _probe(model, input_shapes) if input_shapes else {}
    if not records:
        return None
    total = 0
    for node in model.program.graph.nodes:
        rec = records.get(node.name)
        if rec is None:
            continue
        if node.target in CONV_OPS:
            transposed = node.target in _TRANSPOSED or (node.target in _GENERIC and _arg(node, 6, "", False) is True)
            drive = rec["in"] if transposed else rec["out"]
            total += math.prod(drive) * math.prod(rec.get("weight", (0,))[1:])
        else:
            total += math.prod(rec["out"]) * (rec["in"][-1] if rec["in"] else 1)
    batches = {s[0] for s in input_shapes.values() if len(s) > 0}
    batch = batches.pop() if len(batches) == 1 else 1
    return round(total / batch) if batch > 0 else total


def params(program: ExportedProgram) -> int:
    """Elements of the floating-point tensors the program holds (state dict and constants), each storage once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in (*program.state_dict.values(), *program.constants.values()):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            key = (t.untyped_storage().data_ptr(), t.numel())
            if key not in seen:
                seen.add(key)
                total += t.numel()
    return total
