"""What the rest of the converter sees of the user's samples: ``Samples`` (counts, splits, batches) over a
``_Source`` that reads rows, and ``ImageSpec``, the explicit preprocessing that turns an image into a model input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .._errors import InvalidOptionsError


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes a model input.

    Attributes:
        size: ``(height, width)`` every image is resized to (bilinear).
        mean, std: per-channel normalisation after scaling, ``(x - mean) / std``; one value applies to every
            channel.
        layout: ``NCHW`` or ``NHWC``.
        value_range: pixel values after scaling, before normalisation: ``0-1`` (x/255), ``0-255``, or ``-1-1``.
        channels: 1 (grayscale) or 3 (RGB); None takes it from the model's input shape, else from mean/std.
    """

    size: tuple[int, int]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    value_range: Literal["0-1", "0-255", "-1-1"] = "0-1"
    channels: int | None = None

    def __post_init__(self) -> None:
        if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
            raise InvalidOptionsError(f"image size must be HEIGHTxWIDTH with positive sides, got {self.size}")
        if any(s == 0 or not math.isfinite(s) for s in self.std) or not all(math.isfinite(m) for m in self.mean):
            raise InvalidOptionsError("image mean and std must be finite, and std non-zero")
        if self.layout not in ("NCHW", "NHWC"):
            raise InvalidOptionsError(f"image layout must be NCHW or NHWC, got {self.layout!r}")
        if self.value_range not in ("0-1", "0-255", "-1-1"):
            raise InvalidOptionsError(f"image value range must be 0-1, 0-255 or -1-1, got {self.value_range!r}")
        if self.channels not in (None, 1, 3):
            raise InvalidOptionsError(f"image channels must be 1 or 3, got {self.channels}")


def image_spec_from(config: Any) -> ImageSpec | None:
    """The ``ImageSpec`` a ``ConversionConfig``'s ``image_*`` fields describe, or None without ``image_size``."""
    if config.image_size is None:
        return None
    sides = [int(p) for p in re.split(r"\s*[x×,]\s*", config.image_size.strip())]
    return ImageSpec(
        size=(sides[0], sides[-1]),
        mean=tuple(config.image_mean) or (0.0,),
        std=tuple(config.image_std) or (1.0,),
        layout=config.image_layout,
        value_range=config.image_range,
        channels=config.image_channels,
    )


class _Source:
    """Rows of named arrays, by index; subclasses read them."""

    count: int
    names: list[str]
    labels: np.ndarray | None
    class_names: list[str] | None = None

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


@dataclass
class Samples:
    """A view of the user's samples (all of them, or a split): counts and batches.

    Attributes:
        names: the model inputs the samples feed, in the model's order.
        count: samples in this view.
        has_labels: whether class labels came with the samples.
        num_classes: classes the labels index (the model's, when it was given to ``load_samples``; else the
            largest label + 1), or None without labels.
        class_names: class folder names of an image folder, index = label; else None.
        description: where the samples came from, for the report (``data.npz``, ``images/ (3 classes)``).
    """

    _source: _Source = field(repr=False)
    _rows: np.ndarray = field(repr=False)
    num_classes: int | None = None
    description: str = ""
    _batch_limit: int | None = field(default=None, repr=False)

    @property
    def names(self) -> list[str]:
        return list(self._source.names)

    @property
    def count(self) -> int:
        return int(self._rows.shape[0])

    @property
    def has_labels(self) -> bool:
        return self._source.labels is not None

    @property
    def class_names(self) -> list[str] | None:
        return self._source.class_names

    @property
    def labels(self) -> np.ndarray | None:
        """This view's labels (int64, one per sample), or None."""
        return None if self._source.labels is None else self._source.labels[self._rows]

    def batches(
        self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield ``(inputs, labels)`` batches of at most ``batch_size`` samples (capped at the model's fixed
        batch dim, if it has one), in order. ``indices`` picks samples of this view (positions ``0..count-1``);
        by default all of them. ``labels`` is None without labels. Only one batch is decoded at a time.

        Raises:
            InvalidOptionsError: an image cannot be decoded (the message names the file).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self._batch_limit is not None:
            batch_size = min(batch_size, self._batch_limit)
        pos = np.arange(self.count) if indices is None else np.asarray(indices, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.count):
            raise IndexError(f"sample index out of range for {self.count} samples")
        rows = self._rows[pos]
        for start in range(0, rows.shape[0], batch_size):
            chunk = rows[start:start + batch_size]
            labels = None if self._source.labels is None else self._source.labels[chunk]
            yield self._source.read(chunk), labels

    def subset(self, indices: Sequence[int] | np.ndarray) -> Samples:
        """The view of these samples (positions in this view)."""
        pos = np.asarray(indices, dtype=np.int64)
        return Samples(self._source, self._rows[pos], self.num_classes, self.description, self._batch_limit)

    def split(self, holdout_share: float, seed: int) -> tuple[Samples, Samples]:
        """``(kept, held_out)``: a seeded random ``holdout_share`` of the samples held out (at least one of each
        when there are two or more samples), both in their original order.

        Raises:
            InvalidOptionsError: the share is not in (0, 1), or there are fewer than two samples.
        """
        if not 0.0 < holdout_share < 1.0:
            raise InvalidOptionsError(f"the held-out share must be between 0 and 1, got {holdout_share}")
        if self.count < 2:
            raise InvalidOptionsError(f"{self.count} sample(s) cannot be split into calibration and held-out "
                                      "samples; give more, or an --eval file")
        n_out = min(max(1, round(self.count * holdout_share)), self.count - 1)
        perm = np.random.default_rng(seed).permutation(self.count)
        held = np.sort(perm[:n_out])
        kept = np.sort(perm[n_out:])
        return self.subset(kept), self.subset(held)

    def head(self, n: int) -> Samples:
        """The first ``n`` samples of this view (all of them if fewer)."""
        return self.subset(np.arange(min(n, self.count)))
