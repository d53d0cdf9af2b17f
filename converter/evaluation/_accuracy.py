"""Accuracy on the user's held-out samples, streamed batch by batch: top-1 (and top-5) against labels, or
agreement with the original model (top-1 agreement and relative L2 of the outputs) without them.

``Scorer`` is fed, per batch, the original model's outputs, each variant's outputs (data-free, calibrated,
fine-tuned…) and the labels, and keeps only running counts; ``Scorer.section`` turns them into the report's
``accuracy`` values. It runs no model and knows no format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._errors import InvalidOptionsError

__all__ = ["Scorer", "better"]


@dataclass
class _Counts:
    top1: int = 0
    top5: int = 0
    agree: int = 0
    positions: int = 0
    diff2: float = 0.0
    ref2: float = 0.0


def _numeric(outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(o, dtype=np.float64) for o in outputs if np.asarray(o).dtype.kind in "fiub"]


@dataclass
class Scorer:
    """Running accuracy counts of several variants of a model against its original.

    Args:
        num_classes: the labels' class count, checked against the first output's class axis; None without
            labels.
    """

    num_classes: int | None = None
    samples: int = 0
    counts: dict[str, _Counts] = field(default_factory=dict)
    _class_axis: bool | None = None

    @property
    def has_labels(self) -> bool:
        return self.num_classes is not None

    def _check(self, first: np.ndarray) -> None:
        if self._class_axis is not None:
            return
        self._class_axis = first.ndim >= 2 and first.shape[1] > 1
        if self.has_labels:
            if first.ndim != 2:
                raise InvalidOptionsError(f"labels were given, but the model's first output has shape "
                                          f"{tuple(first.shape)}, not one score per class [batch, classes]")
            if self.num_classes is not None and self.num_classes > first.shape[1]:
                raise InvalidOptionsError(f"the labels name {self.num_classes} classes, but the model's first "
                                          f"output scores {first.shape[1]}")

    def add(self, reference: Sequence[np.ndarray], variants: Mapping[str, Sequence[np.ndarray]],
            labels: np.ndarray | None) -> None:
        """Add one batch: the original's outputs, each variant's outputs, the labels (or None)."""
        ref = _numeric(reference)
        if not ref:
            raise InvalidOptionsError("the model has no numeric output to measure accuracy on")
        first = ref[0]
        self._check(first)
        self.samples += int(first.shape[0]) if first.ndim else 1
        ref_top1 = first.argmax(axis=1) if self._class_axis else None
        for name, outs in {"original": reference, **variants}.items():
            got = _numeric(outs)
            c = self.counts.setdefault(name, _Counts())
            if labels is not None and self.has_labels:
                c.top1 += int((got[0].argmax(axis=1) == labels).sum())
                if got[0].shape[1] >= 5:
                    top5 = np.argpartition(-got[0], 4, axis=1)[:, :5]
                    c.top5 += int((top5 == labels[:, None]).any(axis=1).sum())
            if ref_top1 is not None:
                c.agree += int((got[0].argmax(axis=1) == ref_top1).sum())
                c.positions += int(ref_top1.size)
            for a, b in zip(ref, got, strict=True):
                c.diff2 += float(np.sum((b - a) ** 2))
                c.ref2 += float(np.sum(a * a))

    def values(self, name: str) -> dict[str, float | None]:
        """``top1``, ``top5``, ``top1_agreement``, ``rel_l2`` of one variant (None where not measured)."""
        c = self.counts.get(name)
        if c is None or self.samples == 0:
            return {"top1": None, "top5": None, "top1_agreement": None, "rel_l2": None}
        labelled = self.has_labels
        five = labelled and self.num_classes is not None and self.num_classes >= 5
        return {
            "top1": round(c.top1 / self.samples, 6) if labelled else None,
            "top5": round(c.top5 / self.samples, 6) if five else None,
            "top1_agreement": round(c.agree / c.positions, 6) if c.positions else None,
            "rel_l2": round(float(np.sqrt(c.diff2 / c.ref2)), 6) if c.ref2 > 0 else 0.0,
        }

    @property
    def metric(self) -> str:
        """The headline metric: ``top1`` with labels, else ``top1_agreement`` for outputs with a class axis,
        else ``rel_l2``."""
        if self.has_labels:
            return "top1"
        return "top1_agreement" if self._class_axis else "rel_l2"


def better(scorer: Scorer, a: str, b: str) -> bool:
    """Whether variant ``a`` is at least as good as ``b`` on the headline metric (relative L2 breaks ties)."""
    va, vb = scorer.values(a), scorer.values(b)
    metric = scorer.metric
    if metric != "rel_l2" and va[metric] != vb[metric]:
        return (va[metric] or 0.0) > (vb[metric] or 0.0)
    return (va["rel_l2"] or 0.0) <= (vb["rel_l2"] or 0.0)
