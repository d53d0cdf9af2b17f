"""Element-wise ONNX ops: unary and binary arithmetic, comparisons, activations, Clip, Where, Cast."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ._common import _DTYPES, OPS, Tensors, UnsupportedNode, _need, _op, attr

_Unary = Callable[[torch.Tensor], torch.Tensor]
_Binary = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _unary(name: str, fn: _Unary) -> None:
    OPS[name] = lambda node, x, opset: [fn(_need(x, 0))]


_UNARY: dict[str, _Unary] = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
    "Floor": torch.floor, "Ceil": torch.ceil, "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish,
    "HardSwish": F.hardswish, "Not": torch.logical_not, "Sin": torch.sin, "Cos": torch.cos, "Sign": torch.sign,
    "Identity": lambda t: t, "Round": torch.round,
}
for _name, _fn in _UNARY.items():
    _unary(_name, _fn)


_BINARY: dict[str, _Binary] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow, "Equal": torch.eq,
    "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or}
_VARIADIC: dict[str, _Binary] = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum}


@_op("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or")
def _binary(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    a, b = _need(x, 0), _need(x, 1)
    op = node.op_type
    if op == "Div" and not a.is_floating_point() and not b.is_floating_point():
        return [torch.div(a, b, rounding_mode="trunc")]
    out = _BINARY[op](a, b)
    if op == "Pow":
        out = out.to(a.dtype)
    return [out]


@_op("Sum", "Max", "Min", "Mean")
def _variadic(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    fn = _VARIADIC[node.op_type]
    out = _need(x, 0)
    for i in range(1, len(x)):
        out = fn(out, _need(x, i))
    return [out / len(x) if node.op_type == "Mean" else out]


@_op("LeakyRelu")
def _leaky(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.leaky_relu(_need(x, 0), attr(node, "alpha", 0.01))]


@_op("PRelu")
def _prelu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t, slope = _need(x, 0), _need(x, 1)
    return [torch.where(t >= 0, t, t * slope)]


@_op("Elu")
def _elu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.elu(_need(x, 0), attr(node, "alpha", 1.0))]


@_op("Selu")
def _selu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    alpha, gamma = attr(node, "alpha", 1.67326319217681884765625), attr(node, "gamma", 1.05070102214813232421875)
    t = _need(x, 0)
    return [gamma * torch.where(t > 0, t, alpha * (torch.exp(t) - 1))]


@_op("Gelu")
def _gelu(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.gelu(_need(x, 0), approximate=attr(node, "approximate", "none"))]


@_op("HardSigmoid")
def _hard_sigmoid(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    return [torch.clamp(alpha * _need(x, 0) + beta, 0.0, 1.0)]


@_op("Clip")
def _clip(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    if opset < 11:
        lo, hi = attr(node, "min"), attr(node, "max")
    else:
        lo = x[1] if len(x) > 1 else None
        hi = x[2] if len(x) > 2 else None
    return [torch.clamp(_need(x, 0), lo, hi)]


@_op("Where")
def _where(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.where(_need(x, 0).bool(), _need(x, 1), _need(x, 2))]


@_op("Cast")
def _cast(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    to = attr(node, "to")
    if to not in _DTYPES:
        raise UnsupportedNode(f"Cast to data type {to}")
    return [_need(x, 0).to(_DTYPES[to])]
