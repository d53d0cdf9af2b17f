"""Model-local functions (``ModelProto.functions``, which newer exporters emit: ``torch.onnx.export`` with
``export_modules_as_functions``, the dynamo exporter's modules, onnxscript): the convs inside them are reached
by inlining every call of a function that holds a conv, directly or through the functions it calls, at its
call site (onnx-ir's ``InlinePass``). A weight the function takes as an input then is the caller's constant,
so each call site becomes an ordinary conv that ``_convs`` finds and ``_passes`` rewrites, with its own
weights, however many times the function is called.

Functions without a conv are left as they are. Nothing else changes: the inlined model computes the same
function (the body replaces the call, its attribute references resolved from the call), and it is valid
wherever the original was (``onnx.checker`` full check), since the body's opset imports are merged into the
model's.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from ..._errors import UnsupportedModelError, one_line
from ._nodes import CONV_OPS, QUANTIZED_CONV_OPS, is_onnx_op

__all__ = ["InlineConvFunctionsPass"]

_FOUND = CONV_OPS | frozenset(QUANTIZED_CONV_OPS)


def _with_convs(model: ir.Model) -> set[ir.OperatorIdentifier]:
    """The functions that hold a conv, directly or through a call of another such function (subgraphs of
    their nodes included)."""
    calls: dict[ir.OperatorIdentifier, set[ir.OperatorIdentifier]] = {}
    found: set[ir.OperatorIdentifier] = set()
    for fid, function in model.functions.items():
        calls[fid] = set()
        for node in ir.traversal.RecursiveGraphIterator(function.graph):
            if is_onnx_op(node, _FOUND):
                found.add(fid)
            callee = (node.domain, node.op_type, node.overload)
            if callee in model.functions:
                calls[fid].add(callee)
    changed = True
    while changed:
        changed = False
        for fid, callees in calls.items():
            if fid not in found and callees & found:
                found.add(fid)
                changed = True
    return found


class InlineConvFunctionsPass(ir.passes.InPlacePass):
    """Inline every call of a model-local function that holds a conv (see the module docstring); reports
    ``modified`` only when it inlined something.

    Raises:
        UnsupportedModelError: the functions call each other in a cycle, or a body could not be inlined.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        wanted = _with_convs(model) if model.functions else set()
        if not wanted:
            return ir.passes.PassResult(model, modified=False)
        try:
            result = InlinePass(criteria=lambda f: f.identifier() in wanted)(model)
        except Exception as e:  # PreconditionError for cycles; anything else names the body that failed
            raise UnsupportedModelError(f"the model's local functions could not be inlined to reach their convs: "
                                        f"{one_line(e, 200)}") from e
        return ir.passes.PassResult(model, modified=result.modified)
