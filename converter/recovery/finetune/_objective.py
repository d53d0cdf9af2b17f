"""What fine-tuning minimises and what it reports: distillation losses per output and the held-out metric.

Losses (per output of the model, summed over outputs):

- ``kl`` — for classifier outputs (``[batch, classes]``): ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` with the
  temperature ``T = 2`` on logits (Hinton et al.); on an output that already is a probability vector (rows of
  non-negative values summing to 1), the KL of the probabilities themselves.
- ``mse`` — for everything else: the mean squared error divided by the teacher output's variance, so that the
  loss is scale-free (1.0 = as bad as predicting the mean).
- ``auto`` picks ``kl`` for classifier outputs and ``mse`` for the others, output by output.

With labels, cross-entropy on the first classifier output whose class count covers the labels is added.

Metric on the held-out samples: ``top1`` with labels; without, ``top1_agreement`` with the original for a
classifier, else the relative L2 distance of all outputs to the original's (``rel_l2``, lower is better).
``score`` turns each into "higher is better" for early stopping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..._errors import InvalidOptionsError

__all__ = ["TEMPERATURE", "MetricAccumulator", "Objective", "objective_for"]

TEMPERATURE = 2.0


def _is_classifier(t: np.ndarray) -> bool:
    return t.ndim == 2 and t.shape[1] >= 2


def _is_probability(t: np.ndarray) -> bool:
    return bool(t.size) and bool((t >= 0).all() and (t <= 1).all()) and bool(np.allclose(t.sum(axis=1), 1,
                                                                                         atol=1e-3))


@dataclass(frozen=True)
class Objective:
    """The loss of each output (``kl``, ``kl-prob`` or ``mse``), which output gets cross-entropy (or None),
    and the metric."""

    kinds: tuple[str, ...]
    labelled: int | None
    metric: str

    def loss(self, student: list[torch.Tensor], teacher: list[torch.Tensor],
             labels: torch.Tensor | None) -> torch.Tensor:
        """The training loss of one batch (a scalar tensor)."""
        total = student[0].new_zeros(())
        for kind, s, t in zip(self.kinds, student, teacher, strict=True):
            s = s.float()
            t = t.float()
            if kind == "kl":
                total = total + TEMPERATURE ** 2 * F.kl_div(
                    F.log_softmax(s / TEMPERATURE, dim=1), F.log_softmax(t / TEMPERATURE, dim=1),
                    log_target=True, reduction="batchmean")
            elif kind == "kl-prob":
                total = total + F.kl_div(torch.log(s.clamp_min(1e-8)), torch.log(t.clamp_min(1e-8)),
                                         log_target=True, reduction="batchmean")
            else:
                total = total + F.mse_loss(s, t) / (t.var(unbiased=False) + 1e-8)
        if self.labelled is not None and labels is not None:
            s = student[self.labelled].float()
            log_p = torch.log(s.clamp_min(1e-8)) if self.kinds[self.labelled] == "kl-prob" else F.log_softmax(s, 1)
            total = total + F.nll_loss(log_p, labels)
        return total


def objective_for(teacher: list[np.ndarray], loss: str, num_classes: int | None) -> Objective:
    """Choose each output's loss from the original model's outputs on a first batch.

    Args:
        teacher: the original model's outputs on one batch.
        loss: ``auto``, ``kl`` or ``mse``; ``kl`` on an output that is not ``[batch, classes]`` falls back to
            ``mse``.
        num_classes: the labels' class count, or None without labels.
    """
    kinds = []
    for t in teacher:
        if loss != "mse" and _is_classifier(t):
            kinds.append("kl-prob" if _is_probability(t) else "kl")
        else:
            kinds.append("mse")
    labelled = None
    if num_classes is not None:
        labelled = next((i for i, (k, t) in enumerate(zip(kinds, teacher, strict=True))
                         if k != "mse" and t.shape[1] >= num_classes), None)
        if labelled is None:
            labelled = next((i for i, t in enumerate(teacher) if _is_classifier(t) and t.shape[1] >= num_classes),
                            None)
    if labelled is not None:
        metric = "top1"
    elif _is_classifier(teacher[0]):
        metric = "top1_agreement"
    else:
        metric = "rel_l2"
    return Objective(tuple(kinds), labelled, metric)


class MetricAccumulator:
    """The held-out metric and mean loss, accumulated batch by batch."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.hits = 0
        self.count = 0
        self.err = 0.0
        self.ref = 0.0
        self.loss = 0.0
        self.batches = 0

    def add(self, student: list[np.ndarray], teacher: list[np.ndarray], labels: np.ndarray | None,
            loss: float) -> None:
        """Add one batch (numpy outputs)."""
        self.loss += loss
        self.batches += 1
        metric = self.objective.metric
        if metric == "top1":
            if self.objective.labelled is None or labels is None:
                raise InvalidOptionsError("fine-tuning scores top-1 accuracy, but the held-out samples have no labels")
            pred = student[self.objective.labelled].argmax(axis=1)
            self.hits += int((pred == labels).sum())
            self.count += int(labels.shape[0])
        elif metric == "top1_agreement":
            self.hits += int((student[0].argmax(axis=1) == teacher[0].argmax(axis=1)).sum())
            self.count += int(teacher[0].shape[0])
        else:
            for s, t in zip(student, teacher, strict=True):
                d = s.astype(np.float64) - t.astype(np.float64)
                self.err += float((d * d).sum())
                self.ref += float((t.astype(np.float64) ** 2).sum())

    @property
    def value(self) -> float:
        """The metric: a share for ``top1``/``top1_agreement``, a distance for ``rel_l2``."""
        if self.objective.metric == "rel_l2":
            return float(np.sqrt(self.err / max(self.ref, 1e-30)))
        return self.hits / max(self.count, 1)

    @property
    def score(self) -> float:
        """The metric as "higher is better"."""
        return -self.value if self.objective.metric == "rel_l2" else self.value

    @property
    def mean_loss(self) -> float:
        """Mean loss per batch."""
        return self.loss / max(self.batches, 1)
