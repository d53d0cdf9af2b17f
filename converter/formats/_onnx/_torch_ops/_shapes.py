"""ONNX ops that move, reshape, slice, gather, pad or resize tensors, or compute shapes."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ._common import Tensors, UnsupportedNode, _in_or_attr, _ints, _op, _torch_pad, attr


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
