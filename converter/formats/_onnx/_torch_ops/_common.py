"""What every op module shares: the ``OPS`` registry and its ``_op`` decorator, ``UnsupportedNode``, reading
attributes (``attr``, ``_in_or_attr``), and ONNX padding turned into torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, overload

import torch
import torch.nn.functional as F

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


def _need(x: Tensors, index: int) -> torch.Tensor:
    """Input ``index``, which the op requires: a node that omits it is malformed, not a tensor to guess."""
    t = x[index] if index < len(x) else None
    if t is None:
        raise UnsupportedNode(f"required input {index} is missing")
    return t


@overload
def _ints(t: torch.Tensor) -> list[int]: ...
@overload
def _ints(t: None) -> None: ...
def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _in_or_attr(node: Any, inputs: Tensors, index: int, name: str) -> list[int] | None:
    """An int list given as input ``index`` (newer opsets) or as attribute ``name`` (older ones)."""
    t = inputs[index] if len(inputs) > index else None
    return _ints(t) if t is not None else attr(node, name)


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
