"""Element-wise ONNX ops: unary and binary arithmetic, comparisons, activations, Clip, Where, Cast."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ._common import _DTYPES, OPS, Tensors, UnsupportedNode, _op, attr


def _unary(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    OPS[name] = lambda node, x, opset: [fn(x[0])]


for _name, _fn in {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
    "Floor": torch.floor, "Ceil": torch.ceil, "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish,
    "HardSwish": F.hardswish, "Not": torch.logical_not, "Sin": torch.sin, "Cos": torch.cos, "Sign": torch.sign,
    "Identity": lambda t: t, "Round": torch.round,
}.items():
    _unary(_name, _fn)


@_op("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or")
def _binary(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    a, b = x[0], x[1]
    op = node.op_type
    if op == "Div" and not a.is_floating_point() and not b.is_floating_point():
        return [torch.div(a, b, rounding_mode="trunc")]
    fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
          "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
          "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or}[op]
    out = fn(a, b)
    if op == "Pow":
        out = out.to(a.dtype)
    return [out]


@_op("Sum", "Max", "Min", "Mean")
def _variadic(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    out = x[0]
    for t in x[1:]:
        out = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum}[node.op_type](out, t)
    return [out / len(x) if node.op_type == "Mean" else out]


@_op("LeakyRelu")
def _leaky(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.leaky_relu(x[0], attr(node, "alpha", 0.01))]


@_op("PRelu")
def _prelu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.where(x[0] >= 0, x[0], x[0] * x[1])]


@_op("Elu")
def _elu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.elu(x[0], attr(node, "alpha", 1.0))]


@_op("Selu")
def _selu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    alpha, gamma = attr(node, "alpha", 1.67326319217681884765625), attr(node, "gamma", 1.05070102214813232421875)
    return [gamma * torch.where(x[0] > 0, x[0], alpha * (torch.exp(x[0]) - 1))]


@_op("Gelu")
def _gelu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.gelu(x[0], approximate=attr(node, "approximate", "none"))]


@_op("HardSigmoid")
def _hard_sigmoid(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    return [torch.clamp(alpha * x[0] + beta, 0.0, 1.0)]


@_op("Clip")
def _clip(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    if opset < 11:
        lo, hi = attr(node, "min"), attr(node, "max")
    else:
        lo = x[1] if len(x) > 1 and x[1] is not None else None
        hi = x[2] if len(x) > 2 and x[2] is not None else None
    return [torch.clamp(x[0], lo, hi)]


@_op("Where")
def _where(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.where(x[0].bool(), x[1], x[2])]


@_op("Cast")
def _cast(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    to = attr(node, "to")
    if to not in _DTYPES:
        raise UnsupportedNode(f"Cast to data type {to}")
    return [x[0].to(_DTYPES[to])]
