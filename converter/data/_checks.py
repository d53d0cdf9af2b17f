"""Checks shared by the ``.npz`` and image readers: whether arrays fit the model's inputs (dims, dtype), are
finite, and whether labels are in-range class indices; and the batch size a fixed batch dim allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import InvalidOptionsError
from ..formats import InputSpec

_CHUNK_ROWS_BYTES = 16 << 20  # rows read at a time when scanning a member for NaN/inf


def _fits(spec: InputSpec, arr_shape: tuple[int, ...], per_sample: bool, what: str) -> None:
    if spec.shape is None:
        return
    if len(arr_shape) != len(spec.shape):
        kind = "" if per_sample else " (a 0-d constant)"
        raise InvalidOptionsError(f"{what}{kind} has {len(arr_shape)} dims {arr_shape}, the model's input "
                                  f"{spec.name!r} has {len(spec.shape)} {tuple(spec.shape)}")
    for i, (have, want) in enumerate(zip(arr_shape, spec.shape, strict=True)):
        if i == 0 and per_sample:
            continue  # the batch dim: checked against the batch size instead
        if isinstance(want, int) and want > 0 and have != want:
            raise InvalidOptionsError(f"{what} has shape {arr_shape}, but the model's input {spec.name!r} fixes "
                                      f"dim {i} to {want} (expects {tuple(spec.shape)})")


def _dtype_fits(spec: InputSpec, dtype: np.dtype, what: str) -> np.dtype:
    want = np.dtype(spec.dtype) if spec.dtype != np.dtype(object) else dtype
    if not np.can_cast(dtype, want, casting="same_kind"):
        raise InvalidOptionsError(f"{what} has dtype {dtype}, which does not convert to the model input "
                                  f"{spec.name!r}'s {want}")
    return want


def _check_finite(arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind != "f":
        return
    if arr.ndim == 0:
        if not np.isfinite(arr):
            raise InvalidOptionsError(f"{what} is NaN or infinite")
        return
    row_bytes = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_ROWS_BYTES // row_bytes)
    for start in range(0, arr.shape[0], step):
        block = np.asarray(arr[start:start + step])
        if not np.isfinite(block).all():
            bad = start + int(np.argwhere(~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1))[0, 0])
            raise InvalidOptionsError(f"{what} holds NaN or infinite values (first in sample {bad})")


def _labels(arr: np.ndarray, count: int, num_classes: int | None, what: str) -> tuple[np.ndarray, int]:
    if arr.dtype.kind not in "iu":
        raise InvalidOptionsError(f"{what}: labels must be integer class indices, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != count:
        raise InvalidOptionsError(f"{what}: labels must be one class index per sample ({count},), got shape "
                                  f"{arr.shape}")
    labels = np.asarray(arr).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InvalidOptionsError(f"{what}: labels must be class indices >= 0, found {labels.min()}")
    top = int(labels.max()) if labels.size else -1
    if num_classes is not None and top >= num_classes:
        raise InvalidOptionsError(f"{what}: label {top} is out of range for a model with {num_classes} classes")
    return labels, num_classes if num_classes is not None else top + 1


def _batch_limit(specs: Sequence[InputSpec], names: Sequence[str], per_sample: set[str]) -> int | None:
    fixed = [s.shape[0] for s in specs if s.name in names and s.name in per_sample and s.shape
             and isinstance(s.shape[0], int) and s.shape[0] > 0]
    return min(fixed) if fixed else None
