"""Convolution, matrix products, normalisation and pooling ONNX ops."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ._common import Tensors, UnsupportedNode, _need, _op, _pads_for, _symmetric, _torch_pad, attr

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@_op("Conv")
def _conv(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    inp, w = _need(x, 0), _need(x, 1)
    bias = x[2] if len(x) > 2 else None
    r = w.dim() - 2
    if r not in _CONV:
        raise UnsupportedNode(f"{r}-D convolution")
    kernel = list(w.shape[2:])
    strides, dilations = attr(node, "strides", [1] * r), attr(node, "dilations", [1] * r)
    inp, pads = _symmetric(inp, _pads_for(node, inp, kernel, strides, dilations))
    return [_CONV[r](inp, w, bias, strides, pads, dilations, attr(node, "group", 1))]


@_op("ConvTranspose")
def _conv_transpose(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    inp, w = _need(x, 0), _need(x, 1)
    bias = x[2] if len(x) > 2 else None
    r = w.dim() - 2
    if r not in _CONV_T or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "") or attr(node, "output_shape"):
        raise UnsupportedNode("ConvTranspose with auto_pad or output_shape")
    pads = attr(node, "pads", [0] * (2 * r))
    if pads[:r] != pads[r:]:
        raise UnsupportedNode("ConvTranspose with asymmetric pads")
    return [_CONV_T[r](inp, w, bias, attr(node, "strides", [1] * r), pads[:r],
                       attr(node, "output_padding", [0] * r), attr(node, "group", 1),
                       attr(node, "dilations", [1] * r))]


@_op("Gemm")
def _gemm(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    a, b = _need(x, 0), _need(x, 1)
    if attr(node, "transA", 0):
        a = a.t()
    if attr(node, "transB", 0):
        b = b.t()
    out = attr(node, "alpha", 1.0) * (a @ b)
    c = x[2] if len(x) > 2 else None
    if c is not None:
        out = out + attr(node, "beta", 1.0) * c
    return [out]


@_op("MatMul")
def _matmul(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.matmul(_need(x, 0), _need(x, 1))]


@_op("BatchNormalization")
def _batch_norm(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    # Inference form: the running statistics are constants, as in the model the user runs.
    t, scale, bias, mean, var = (_need(x, i) for i in range(5))
    return [F.batch_norm(t, mean, var, scale, bias, False, 0.0, attr(node, "epsilon", 1e-5))]


@_op("InstanceNormalization")
def _instance_norm(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.instance_norm(_need(x, 0), weight=_need(x, 1), bias=_need(x, 2), eps=attr(node, "epsilon", 1e-5))]


@_op("LayerNormalization")
def _layer_norm(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    axis = attr(node, "axis", -1) % t.dim()
    shape = list(t.shape[axis:])
    bias = x[2] if len(x) > 2 else None
    return [F.layer_norm(t, shape, _need(x, 1), bias, attr(node, "epsilon", 1e-5))]


# --- pooling -------------------------------------------------------------------------------------------------------


@_op("MaxPool", "AveragePool")
def _pool(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    inp = _need(x, 0)
    kernel = attr(node, "kernel_shape")
    r = len(kernel)
    strides, dilations = attr(node, "strides", [1] * r), attr(node, "dilations", [1] * r)
    if r not in (1, 2, 3) or (len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses()):
        raise UnsupportedNode("pooling with indices output or more than 3 spatial dims")
    pads = _pads_for(node, inp, kernel, strides, dilations)
    ceil = bool(attr(node, "ceil_mode", 0))
    if node.op_type == "MaxPool":
        inp, pads = _symmetric(inp, pads, value=-math.inf)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[r]
        return [fn(inp, kernel, strides, pads, dilations, ceil_mode=ceil)]
    if any(d != 1 for d in dilations):
        raise UnsupportedNode("AveragePool with dilations")
    include = bool(attr(node, "count_include_pad", 0))
    if pads[:r] != pads[r:] or any(2 * p > k for p, k in zip(pads[:r], kernel, strict=False)):
        if not include:
            raise UnsupportedNode("AveragePool with asymmetric pads excluding padding from the count")
        inp, pads = F.pad(inp, _torch_pad(pads)), [0] * r
    else:
        pads = pads[:r]
    avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[r]
    return [avg(inp, kernel, strides, pads, ceil_mode=ceil, count_include_pad=include)]


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    dims = tuple(range(2, t.dim()))
    if node.op_type == "GlobalAveragePool":
        return [t.mean(dim=dims, keepdim=True)]
    return [t.amax(dim=dims, keepdim=True)]
