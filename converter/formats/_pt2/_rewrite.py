"""The ``.pt2`` rewrite: replace conv nodes of an ``ExportedProgram``'s FX graph by the convs of their ``Lowered``
programs and build a new ``ExportedProgram`` around the edited graph. For each rewritten conv, every step's weight
becomes a new parameter (placeholder after the program's last parameter, an ``InputSpec`` of kind PARAMETER at the
same place, the tensor in the state dict under ``<layer>.<step>.weight``), every step a new conv node in front of
the old one (same overload family: a ``convolution`` stays a ``convolution``, a string padding keeps its
``.padding`` overload), joined by ``aten.cat``/``aten.add``; a transposed conv's spatial step stays transposed
(its weight regrouped, its output padding kept; ``algebra._transposed``), its 1×1 steps are regular convs. The old
conv node then becomes the last node of the replacement (it takes the final step's target and operands), so its
name, and with it the program's output names and signature, stay. Weights nothing reads any more are dropped from
the graph, the signature and the state dict. Each new node's ``meta["val"]`` is computed under the program's own
fake mode, so shapes stay symbolic where they were (dynamic dims) and ``torch.export.save`` can serialise them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch._guards import detect_fake_mode
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec, TensorArgument

from ..._errors import ConversionError, one_line
from ...algebra import ConvStep, Lowered, to_transposed
from .._base import Rewrite, UniqueNames, node_name
from ._graph import conv_args, conv_nodes, weight_of

__all__ = ["rewrite_program"]

_aten = torch.ops.aten
_GENERIC = (_aten.convolution.default, _aten._convolution.default)


_Todo = list[tuple[torch.fx.Node, Rewrite, torch.Tensor]]


def _checked(program: ExportedProgram, rewrites: Sequence[Rewrite]) -> _Todo:
    """Each rewrite's node, after checking that it is a conv of this program with a constant weight that its
    ``Lowered`` fits; nothing is edited before every rewrite passed."""
    nodes = {n.name: n for n in conv_nodes(program)}
    used: set[str] = set()
    todo = []
    for rw in rewrites:
        handle, name = rw.layer.handle, rw.layer.name
        node = nodes.get(handle) if isinstance(handle, str) else None
        if node is None or handle in used:
            raise ConversionError(f"layer {name}: not a conv of this .pt2 program (or listed twice)")
        weight, _ = weight_of(program, node.args[1])
        if weight is None:
            raise ConversionError(f"layer {name}: the weight is computed at run time; cannot be rewritten")
        args = conv_args(node, weight.dim() - 2)
        cin, cout = ((weight.shape[0], weight.shape[1] * args.groups) if args.transposed
                     else (weight.shape[1] * args.groups, weight.shape[0]))
        regular = (cout, cin // args.groups, *weight.shape[2:])  # the layout ConvLayer.weight has
        if rw.layer.weight is not None and regular != rw.layer.weight.shape:
            raise ConversionError(f"layer {name}: the program does not match the layer list")
        try:
            rw.lowered.check(cin, cout, tuple(weight.shape[2:]))
        except ValueError as e:
            raise ConversionError(f"layer {name}: {one_line(e, 200)}") from e
        if rw.bias is not None and tuple(np.shape(rw.bias)) != (cout,):
            raise ConversionError(f"layer {name}: the replacement bias has shape {np.shape(rw.bias)}")
        used.add(handle)
        todo.append((node, rw, weight))
    return todo


class _Editor:
    """Adds parameters and nodes to one program's graph and keeps its signature and state dict in step."""

    def __init__(self, program: ExportedProgram) -> None:
        self.program = program
        self.graph = program.graph_module.graph
        self.specs = list(program.graph_signature.input_specs)
        self.state_dict = dict(program.state_dict)
        self.constants = dict(program.constants)
        fake = detect_fake_mode([n.meta.get("val") for n in self.graph.nodes if n.op == "placeholder"])
        if fake is None:  # torch.export records one on every placeholder; an edited or foreign graph may not
            raise ConversionError("the .pt2 program's placeholders carry no fake tensors (meta['val']): its "
                                  "graph cannot be edited")
        self.fake = fake
        self.targets = UniqueNames([*self.state_dict, *self.constants])

    def parameter(self, fqn: str, tensor: torch.Tensor) -> torch.fx.Node:
        target = self.targets(fqn)
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        param_names = {s.arg.name for s in self.specs if s.kind == InputKind.PARAMETER}
        last = [n for n in placeholders if n.name in param_names]
        if last:
            with self.graph.inserting_after(last[-1]):
                node = self.graph.placeholder("p_" + target.replace(".", "_"))
            index = max(i for i, s in enumerate(self.specs) if s.kind == InputKind.PARAMETER) + 1
        else:
            with self.graph.inserting_before(placeholders[0]):
                node = self.graph.placeholder("p_" + target.replace(".", "_"))
            index = 0
        node.target = node.name
        param = torch.nn.Parameter(tensor, requires_grad=False)
        node.meta["val"] = self.fake.from_tensor(param, static_shapes=True)
        self.specs.insert(index, InputSpec(InputKind.PARAMETER, TensorArgument(node.name), target))
        self.state_dict[target] = param
        return node

    def call(self, op: Any, args: tuple, name: str | None, like: torch.fx.Node) -> torch.fx.Node:
        with self.graph.inserting_before(like):
            node = self.graph.create_node("call_function", op, args, {}, name=name)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node"):
            if key in like.meta:
                node.meta[key] = like.meta[key]
        with self.fake:
            node.meta["val"] = op(*torch.fx.node.map_arg(args, lambda a: a.meta["val"]))
        return node

    def drop_unused_weights(self) -> None:
        for node in [n for n in self.graph.nodes if n.op == "placeholder" and not n.users]:
            spec = next((s for s in self.specs if getattr(s.arg, "name", None) == node.name), None)
            if spec is None or spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                continue
            if spec.kind == InputKind.BUFFER and spec.persistent is not False:
                continue  # a buffer may be mutated or read by name: keep it
            self.specs.remove(spec)
            self.graph.erase_node(node)
            if not any(s.target == spec.target for s in self.specs):
                self.state_dict.pop(spec.target, None)
                self.constants.pop(spec.target, None)

    def program_out(self) -> ExportedProgram:
        gm = self.program.graph_module
        gm.graph.lint()
        gm.recompile()
        old = self.program
        return ExportedProgram(
            root=gm, graph=gm.graph,
            graph_signature=ExportGraphSignature(self.specs, list(old.graph_signature.output_specs)),
            state_dict=self.state_dict, range_constraints=old.range_constraints,
            module_call_graph=old.module_call_graph, example_inputs=old.example_inputs, constants=self.constants,
            verifiers=old.verifiers,
        )


def _replace(edit: _Editor, node: torch.fx.Node, layer: str, lowered: Lowered, weight: torch.Tensor,
             new_bias: np.ndarray | None = None) -> None:
    rank = weight.dim() - 2
    args = conv_args(node, rank)
    bias = args.bias
    if new_bias is not None:  # a replacement bias (calibration's) becomes a parameter of its own
        b = torch.from_numpy(np.array(new_bias, copy=True)).to(dtype=weight.dtype, device=weight.device)
        bias = edit.parameter(node_name(layer, "bias").replace("/", "."), b)
    generic = node.target in _GENERIC
    ones, zeros = [1] * rank, [0] * rank

    def emit(x: Any, w: torch.fx.Node, bias: Any, spatial: bool, groups: int, name: str) -> torch.fx.Node:
        stride, padding, dilation = (args.stride, args.padding, args.dilation) if spatial else (ones, zeros, ones)
        if args.transposed and spatial:  # the spatial step of a transposed conv stays transposed
            if generic:
                return edit.call(_aten.convolution.default, (x, w, bias, stride, padding, dilation, True,
                                                             args.output_padding, groups), name, node)
            op = _aten.conv_transpose1d.default if rank == 1 else getattr(_aten, f"conv_transpose{rank}d").input
            return edit.call(op, (x, w, bias, stride, padding, args.output_padding, groups, dilation), name, node)
        if generic:
            return edit.call(_aten.convolution.default, (x, w, bias, stride, padding, dilation, False, zeros, groups),
                             name, node)
        overload = "padding" if isinstance(padding, str) else "default"
        op = getattr(getattr(_aten, f"conv{rank}d"), overload)
        return edit.call(op, (x, w, bias, stride, padding, dilation, groups), name, node)

    def conv(step: ConvStep, x: Any) -> torch.fx.Node:
        array = (to_transposed(step.weight, step.groups) if args.transposed and step.spatial
                 else np.array(step.weight, copy=True))
        w = torch.from_numpy(array).to(dtype=weight.dtype, device=weight.device)
        name = node_name(layer, step.name)
        w_node = edit.parameter(name.replace("/", ".") + ".weight", w)
        return emit(x, w_node, bias if step.bias else None, step.spatial, int(step.groups), name)

    def join(kind: str, outs: list[torch.fx.Node]) -> torch.fx.Node:
        if kind == "concat":
            return edit.call(_aten.cat.default, (outs, -(rank + 1)), node_name(layer, "concat"), node)
        y = outs[0]
        for other in outs[1:]:
            y = edit.call(_aten.add.Tensor, (y, other), node_name(layer, "sum"), node)
        return y

    final = lowered.fold(args.input, conv, join)
    # The old node becomes the final step: its name (an output's, perhaps) and its users stay.
    node.target, node.args, node.kwargs = final.target, final.args, final.kwargs
    node.meta["val"] = final.meta["val"]
    edit.graph.erase_node(final)


def rewrite_program(program: ExportedProgram, rewrites: Sequence[Rewrite]) -> ExportedProgram:
    """A new ``ExportedProgram`` with the listed convs replaced; ``program`` must not be used afterwards (its
    graph module is edited and taken over).

    Raises:
        ConversionError: a layer is not a convertible conv of this program, its decomposition does not fit, or
            the edited graph does not verify; the message names the layer or step.
    """
    todo = _checked(program, rewrites)
    if not todo:
        return program
    edit = _Editor(program)
    for node, rw, weight in todo:
        try:
            _replace(edit, node, rw.layer.name, rw.lowered, weight, rw.bias)
        except ConversionError:
            raise
        except Exception as e:
            raise ConversionError(f"layer {rw.layer.name}: could not rewrite the .pt2 graph: {one_line(e, 200)}") from e
    try:
        edit.drop_unused_weights()
        return edit.program_out()
    except Exception as e:
        raise ConversionError(f"the rewritten .pt2 program does not verify: {one_line(e, 200)}") from e
