"""ONNX ops that move, reshape, slice, gather, pad or resize tensors, or compute shapes."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ._common import Tensors, UnsupportedNode, _in_or_attr, _ints, _need, _op, _torch_pad, attr


@_op("Flatten")
def _flatten(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    axis = attr(node, "axis", 1) % (t.dim() or 1) if t.dim() else 0
    lead = math.prod(t.shape[:axis])
    return [t.reshape(lead, -1)]


@_op("Reshape")
def _reshape(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    shape = _ints(_need(x, 1)) if opset >= 5 else attr(node, "shape")
    if not attr(node, "allowzero", 0):
        shape = [t.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [t.reshape(shape)]


@_op("Transpose")
def _transpose(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    perm = attr(node, "perm") or list(reversed(range(t.dim())))
    return [t.permute(perm)]


@_op("Concat")
def _concat(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.cat([t for t in x if t is not None], dim=attr(node, "axis"))]


@_op("Split")
def _split(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axis = attr(node, "axis", 0)
    sizes = _in_or_attr(node, x, 1, "split")
    n = len(node.outputs)
    t = _need(x, 0)
    if sizes is None:
        size = t.shape[axis]
        chunk = math.ceil(size / n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    return list(torch.split(t, sizes, dim=axis))


@_op("Slice")
def _slice(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    starts: list[int]
    ends: list[int]
    axes: list[int] | None
    steps: list[int] | None
    if opset < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    else:
        starts, ends = _ints(_need(x, 1)), _ints(_need(x, 2))
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
    out = _need(x, 0)
    if axes is None:
        return [out.squeeze()]
    rank = out.dim()
    for axis in sorted((a % rank for a in axes), reverse=True):
        out = out.squeeze(axis)
    return [out]


@_op("Unsqueeze")
def _unsqueeze(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    axes = _in_or_attr(node, x, 1, "axes")
    if axes is None:
        raise UnsupportedNode("Unsqueeze without axes")
    out = _need(x, 0)
    rank = out.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        out = out.unsqueeze(axis)
    return [out]


@_op("Shape")
def _shape(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    dims = list(_need(x, 0).shape)[attr(node, "start", 0):attr(node, "end", None)]
    return [torch.tensor(dims, dtype=torch.int64)]


@_op("Size")
def _size(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [torch.tensor(_need(x, 0).numel(), dtype=torch.int64)]


@_op("Gather")
def _gather(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    axis = attr(node, "axis", 0) % t.dim()
    idx = _need(x, 1).long()
    idx = torch.where(idx < 0, idx + t.shape[axis], idx)
    out = torch.index_select(t, axis, idx.reshape(-1).to(t.device))
    return [out.reshape(*t.shape[:axis], *idx.shape, *t.shape[axis + 1:])]


@_op("ConstantOfShape")
def _constant_of_shape(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    value = attr(node, "value")
    fill = value.reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return [torch.full(_ints(_need(x, 0)), fill.item(), dtype=fill.dtype)]


@_op("Expand")
def _expand(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    shape = torch.broadcast_shapes(tuple(t.shape), tuple(_ints(_need(x, 1))))
    return [t.expand(shape)]


@_op("Tile")
def _tile(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    return [_need(x, 0).repeat(_ints(_need(x, 1)))]


@_op("Range")
def _range(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    start, limit, delta = (_need(x, i) for i in range(3))
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


@_op("Pad")
def _pad(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    mode = attr(node, "mode", "constant")
    if opset < 11:
        pads, value, axes = attr(node, "pads"), attr(node, "value", 0.0), None
    else:
        pads = _ints(_need(x, 1))
        fill = x[2] if len(x) > 2 else None
        value = fill.item() if fill is not None and fill.numel() else 0.0
        axes = _ints(x[3] if len(x) > 3 else None)
    t = _need(x, 0)
    rank = t.dim()
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
        return [F.pad(t, tail, value=value)]
    return [F.pad(t, tail, mode=torch_mode)]


@_op("Resize", "Upsample")
def _resize(node: Any, x: Tensors, opset: int) -> list[torch.Tensor]:
    t = _need(x, 0)
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    if node.op_type == "Upsample" or opset < 11:
        scales = x[1] if len(x) > 1 else attr(node, "scales")
        sizes = None
    else:
        scales = x[2] if len(x) > 2 else None
        scales = scales if scales is not None and scales.numel() else None
        sizes = _ints(x[3] if len(x) > 3 else None)
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
