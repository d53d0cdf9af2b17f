"""Counting an ONNX model: parameters (floating-point initializers and Constant tensors, all graphs) and MACs of
Conv, ConvTranspose, Gemm and MatMul from a shape table (every node once: both branches of an If, one iteration
of a Loop body)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx_ir as ir

from ._nodes import MAC_OPS, Dims, int_attr, is_onnx_op
from ._shapes import value_dims

__all__ = ["count_macs", "count_params"]


def count_params(model: ir.Model) -> int:
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if t is not None and t.dtype.is_floating_point():
                total += math.prod(t.shape.numpy())
    graph_likes: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for graph_like in graph_likes:
        for node in ir.traversal.RecursiveGraphIterator(graph_like):
            if not is_onnx_op(node, frozenset({"Constant"})):
                continue
            for attr in node.attributes.values():
                if not isinstance(attr, ir.Attr) or attr.is_ref():
                    continue
                if attr.name == "value" and attr.type == ir.AttributeType.TENSOR:
                    if attr.value.dtype.is_floating_point():
                        total += math.prod(attr.value.shape.numpy())
                elif attr.name == "value_float":
                    total += 1
                elif attr.name == "value_floats":
                    total += len(attr.value)
    return total


def _node_macs(node: ir.Node, table: Mapping[str, Dims | None]) -> int | None:
    def dims(i: int) -> tuple[int, ...] | None:
        return value_dims(node.inputs[i], table) if len(node.inputs) > i else None

    y = value_dims(node.outputs[0], table)
    if node.op_type in ("Conv", "ConvTranspose"):
        w = dims(1)
        if w is None or len(w) < 3:
            return None
        # Conv: every output element takes C/g·k products. ConvTranspose: every input element feeds N/g·k.
        io = y if node.op_type == "Conv" else dims(0)
        return None if io is None else math.prod(io) * math.prod(w[1:])
    a = dims(0)
    if y is None or a is None or not a:
        return None
    # every output element is a dot product of length K: Gemm A is [M, K] or [K, M]; MatMul [..., M, K]
    k = a[0] if node.op_type == "Gemm" and int_attr(node, "transA", 0) else a[-1]
    return math.prod(y) * k


def count_macs(model: ir.Model, table: Mapping[str, Dims | None]) -> int | None:
    total = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not is_onnx_op(node, MAC_OPS):
            continue
        macs = _node_macs(node, table)
        if macs is None:
            return None
        total += macs
    return total
