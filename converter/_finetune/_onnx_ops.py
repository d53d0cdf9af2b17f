"""ONNX operators as torch functions: the op set CNNs use, for the trainable view of an ONNX model.

Each entry of ``OPS`` takes ``(node, inputs, opset)`` — the ``onnx_ir`` node, its input tensors (``None`` for an
omitted optional input) and the model's default-domain opset — and returns the node's output tensors. Semantics
follow the ONNX operator specification at that opset (attributes that later opsets moved into inputs are read
from either place). Everything is plain differentiable torch, so gradients reach any tensor fed in.

Deliberately not here: control flow (If, Loop, Scan), sequences, random ops, quantized ops and anything else a
CNN's forward pass rarely holds; the interpreter names such a node in a one-line error instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["OPS", "OpFn", "UnsupportedNode"]

Tensors = Sequence[torch.Tensor | None]
OpFn = Callable[[Any, Tensors, int], list[torch.Tensor]]

OPS: dict[str, OpFn] = {}

# ONNX TensorProto data types -> torch dtypes (the ones a CNN graph casts to).
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


class UnsupportedNode(Exception):
    """A node the interpreter cannot run (an unknown op or an attribute value it does not implement)."""


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn
    return register


def attr(node: Any, name: str, default: Any = None) -> Any:
    """An attribute's value (tensors as torch tensors), or ``default``."""
    a = node.attributes.get(name)
    if a is None:
        return default
    value = a.value
    if hasattr(value, "numpy") and not isinstance(value, torch.Tensor):
        return torch.from_numpy(value.numpy().copy())
    if isinstance(value, bytes):
        return value.decode()
    return list(value) if isinstance(value, tuple) else value


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _in_or_attr(node: Any, inputs: Tensors, index: int, name: str) -> list[int] | None:
    """An int list given as input ``index`` (newer opsets) or as attribute ``name`` (older ones)."""
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    return attr(node, name)


# --- element-wise ----------------------------------------------------------------------------------------------


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


# --- convolution, matrix products, normalisation ---------------------------------------------------------------


def _pads_for(node: Any, x: torch.Tensor, kernel: list[int], strides: list[int],
              dilations: list[int]) -> list[int]:
    """ONNX ``pads`` ([begin…, end…]), resolving ``auto_pad`` from the input's spatial size."""
    auto = attr(node, "auto_pad", "NOTSET")
    r = len(kernel)
    if auto in ("NOTSET", "", None):
        return attr(node, "pads", [0] * (2 * r))
    if auto == "VALID":
        return [0] * (2 * r)
    begin, end = [], []
    for i in range(r):
        size = x.shape[2 + i]
        out = math.ceil(size / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, …, e1, e2, …] -> torch's (last dim first) [b_last, e_last, …]."""
    r = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(r)):
        out += [pads[i], pads[r + i]]
    return out


def _symmetric(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Pads torch can pass to the op itself (begin == end); otherwise pad explicitly and pass zeros."""
    r = len(pads) // 2
    if pads[:r] == pads[r:]:
        return x, pads[:r]
    return F.pad(x, _torch_pad(pads), value=value), [0] * r


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@_op("Conv")
def _conv(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    inp, w = x[0], x[1]
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
    inp, w = x[0], x[1]
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
    a, b = x[0], x[1]
    if attr(node, "transA", 0):
        a = a.t()
    if attr(node, "transB", 0):
        b = b.t()
    out = attr(node, "alpha", 1.0) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        out = out + attr(node, "beta", 1.0) * x[2]
    return [out]


@_op("MatMul")
def _matmul(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.matmul(x[0], x[1])]


@_op("BatchNormalization")
def _batch_norm(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    # Inference form: the running statistics are constants, as in the model the user runs.
    return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, attr(node, "epsilon", 1e-5))]


@_op("InstanceNormalization")
def _instance_norm(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=attr(node, "epsilon", 1e-5))]


@_op("LayerNormalization")
def _layer_norm(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axis = attr(node, "axis", -1) % x[0].dim()
    shape = list(x[0].shape[axis:])
    bias = x[2] if len(x) > 2 else None
    return [F.layer_norm(x[0], shape, x[1], bias, attr(node, "epsilon", 1e-5))]


# --- pooling ---------------------------------------------------------------------------------------------------


@_op("MaxPool", "AveragePool")
def _pool(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    inp = x[0]
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
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[r]
    return [fn(inp, kernel, strides, pads, ceil_mode=ceil, count_include_pad=include)]


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    dims = tuple(range(2, x[0].dim()))
    if node.op_type == "GlobalAveragePool":
        return [x[0].mean(dim=dims, keepdim=True)]
    return [x[0].amax(dim=dims, keepdim=True)]


# --- shapes ----------------------------------------------------------------------------------------------------


@_op("Flatten")
def _flatten(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axis = attr(node, "axis", 1) % (x[0].dim() or 1) if x[0].dim() else 0
    lead = math.prod(x[0].shape[:axis])
    return [x[0].reshape(lead, -1)]


@_op("Reshape")
def _reshape(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    shape = _ints(x[1]) if opset >= 5 else attr(node, "shape")
    if not attr(node, "allowzero", 0):
        shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x[0].reshape(shape)]


@_op("Transpose")
def _transpose(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    perm = attr(node, "perm") or list(reversed(range(x[0].dim())))
    return [x[0].permute(perm)]


@_op("Concat")
def _concat(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.cat([t for t in x if t is not None], dim=attr(node, "axis"))]


@_op("Split")
def _split(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axis = attr(node, "axis", 0)
    sizes = _in_or_attr(node, x, 1, "split")
    n = len(node.outputs)
    if sizes is None:
        size = x[0].shape[axis]
        chunk = math.ceil(size / n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    return list(torch.split(x[0], sizes, dim=axis))


@_op("Slice")
def _slice(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = x[0]
    if opset < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    else:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 else None
        steps = _ints(x[4]) if len(x) > 4 else None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index: list[slice] = [slice(None)] * t.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        axis %= t.dim()
        size = t.shape[axis]
        if step < 0:
            # torch slices forward only: take the reversed range, then flip it.
            lo = max(-1, min(size - 1, end + size if end < 0 else end))
            hi = max(-1, min(size - 1, start + size if start < 0 else start))
            index[axis] = slice(lo + 1, hi + 1)
            flips.append((axis, -step))
            continue
        index[axis] = slice(max(0, min(size, start + size if start < 0 else start)),
                            max(0, min(size, end + size if end < 0 else end)), step)
    out = t[tuple(index)]
    for axis, step in flips:
        out = out.flip(axis)
        if step != 1:
            out = out[(slice(None),) * axis + (slice(None, None, step),)]
    return [out]


@_op("Squeeze")
def _squeeze(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axes = _in_or_attr(node, x, 1, "axes")
    if axes is None:
        return [x[0].squeeze()]
    out = x[0]
    for axis in sorted((a % x[0].dim() for a in axes), reverse=True):
        out = out.squeeze(axis)
    return [out]


@_op("Unsqueeze")
def _unsqueeze(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axes = _in_or_attr(node, x, 1, "axes")
    rank = x[0].dim() + len(axes)
    out = x[0]
    for axis in sorted(a % rank for a in axes):
        out = out.unsqueeze(axis)
    return [out]


@_op("Shape")
def _shape(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    dims = list(x[0].shape)[attr(node, "start", 0):attr(node, "end", None)]
    return [torch.tensor(dims, dtype=torch.int64)]


@_op("Size")
def _size(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.tensor(x[0].numel(), dtype=torch.int64)]


@_op("Gather")
def _gather(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axis = attr(node, "axis", 0) % x[0].dim()
    idx = x[1].long()
    idx = torch.where(idx < 0, idx + x[0].shape[axis], idx)
    out = torch.index_select(x[0], axis, idx.reshape(-1).to(x[0].device))
    return [out.reshape(*x[0].shape[:axis], *idx.shape, *x[0].shape[axis + 1:])]


@_op("ConstantOfShape")
def _constant_of_shape(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    value = attr(node, "value")
    fill = value.reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return [torch.full(_ints(x[0]), fill.item(), dtype=fill.dtype)]


@_op("Expand")
def _expand(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    shape = torch.broadcast_shapes(tuple(x[0].shape), tuple(_ints(x[1])))
    return [x[0].expand(shape)]


@_op("Tile")
def _tile(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [x[0].repeat(_ints(x[1]))]


@_op("Range")
def _range(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)]


@_op("Pad")
def _pad(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    mode = attr(node, "mode", "constant")
    if opset < 11:
        pads, value, axes = attr(node, "pads"), attr(node, "value", 0.0), None
    else:
        pads = _ints(x[1])
        value = x[2].item() if len(x) > 2 and x[2] is not None and x[2].numel() else 0.0
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
    rank = x[0].dim()
    if axes is not None:
        full = [0] * (2 * rank)
        for i, axis in enumerate(a % rank for a in axes):
            full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
        pads = full
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise UnsupportedNode(f"Pad mode {mode!r}")
    # torch pads only the trailing dims in the non-constant modes: leave untouched leading dims out.
    lead = next((i for i in range(rank) if pads[i] or pads[rank + i]), rank)
    tail = _torch_pad(pads[lead:rank] + pads[rank + lead:]) if lead < rank else []
    if torch_mode == "constant":
        return [F.pad(x[0], tail, value=value)]
    return [F.pad(x[0], tail, mode=torch_mode)]


@_op("Resize", "Upsample")
def _resize(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = x[0]
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    if node.op_type == "Upsample" or opset < 11:
        scales = x[1] if len(x) > 1 else attr(node, "scales")
        sizes = None
    else:
        scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
        sizes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
    size = sizes[2:] if sizes else [math.floor(s * float(f)) for s, f in
                                    zip(t.shape[2:], torch.as_tensor(scales).reshape(-1).tolist()[2:],
                                        strict=False)]
    if mode == "nearest":
        nearest = attr(node, "nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nearest == "floor":
            return [F.interpolate(t, size=size, mode="nearest")]
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor", "round_prefer_ceil"):
            return [F.interpolate(t, size=size, mode="nearest-exact")]
    elif mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[t.dim() - 2]
        return [F.interpolate(t, size=size, mode=kind, align_corners=ctm == "align_corners")]
    raise UnsupportedNode(f"Resize mode {mode!r} with coordinate_transformation_mode {ctm!r}")


# --- reductions and normalising outputs ------------------------------------------------------------------------


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")
def _reduce(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    moved = opset >= 18 or (node.op_type == "ReduceSum" and opset >= 13)
    axes = (_ints(x[1]) if len(x) > 1 and x[1] is not None else None) if moved else attr(node, "axes")
    keep = bool(attr(node, "keepdims", 1))
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return [x[0]]
        axes = list(range(x[0].dim()))
    dims = tuple(a % x[0].dim() for a in axes)
    t = x[0]
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
    return [fn(x[0], dim=attr(node, "axis", 0), keepdim=bool(attr(node, "keepdims", 1)))]


@_op("Softmax", "LogSoftmax")
def _softmax(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    t = x[0]
    if opset >= 13:
        return [fn(t, dim=attr(node, "axis", -1))]
    # Before opset 13 the input is flattened to 2-D at ``axis`` and normalised over the second dim.
    axis = attr(node, "axis", 1) % t.dim()
    flat = t.reshape(math.prod(t.shape[:axis]), -1)
    return [fn(flat, dim=1).reshape(t.shape)]


@_op("Dropout")
def _dropout(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    # Inference semantics, as onnxruntime runs it; a mask output is all ones.
    return [x[0], torch.ones_like(x[0], dtype=torch.bool)][: len(node.outputs)]
