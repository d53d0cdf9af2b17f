"""Reductions and normalising outputs: Reduce*, ArgMax/ArgMin, Softmax/LogSoftmax, Dropout (identity)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ._common import Tensors, _ints, _need, _op, attr


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")
def _reduce(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    moved = opset >= 18 or (node.op_type == "ReduceSum" and opset >= 13)
    axes = _ints(x[1] if len(x) > 1 else None) if moved else attr(node, "axes")
    keep = bool(attr(node, "keepdims", 1))
    t = _need(x, 0)
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return [t]
        axes = list(range(t.dim()))
    dims = tuple(a % t.dim() for a in axes)
    if node.op_type == "ReduceMean":
        return [t.mean(dim=dims, keepdim=keep)]
    if node.op_type == "ReduceSum":
        return [t.sum(dim=dims, keepdim=keep)]
    if node.op_type == "ReduceL2":
        return [torch.sqrt((t * t).sum(dim=dims, keepdim=keep))]
    fn = torch.amax if node.op_type == "ReduceMax" else torch.amin
    return [fn(t, dim=dims, keepdim=keep)]


@_op("ArgMax", "ArgMin")
def _argmax(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    return [fn(_need(x, 0), dim=attr(node, "axis", 0), keepdim=bool(attr(node, "keepdims", 1)))]


@_op("Softmax", "LogSoftmax")
def _softmax(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    t = _need(x, 0)
    if opset >= 13:
        return [fn(t, dim=attr(node, "axis", -1))]
    # Before opset 13 the input is flattened to 2-D at ``axis`` and normalised over the second dim.
    axis = attr(node, "axis", 1) % t.dim()
    flat = t.reshape(math.prod(t.shape[:axis]), -1)
    return [fn(flat, dim=1).reshape(t.shape)]


@_op("Dropout")
def _dropout(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    # Inference semantics, as onnxruntime runs it; a mask output is all ones.
    t = _need(x, 0)
    return [t, torch.ones_like(t, dtype=torch.bool)][: len(node.outputs)]
