"""Calibration: refit each converted layer's factors on the user's samples so that it reproduces the original
layer, layer by layer in network order, each layer's input taken from the network converted (and calibrated)
up to it, so that errors do not pile up. Then measure, on held-out samples, the original, the data-free and the
calibrated model.

The math is in ``_refit`` (closed-form, from streamed statistics); activations come from the format's own
runtime through the adapter's ``Tap`` (``formats._taps``), which runs the original graph with each converted
layer's factors multiplied back into one dense kernel: the same function as the rewritten graph, so nothing is
rewritten until the factors are final. Memory is one batch of activations plus one layer's statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._accuracy import Scorer
from ._data import Samples
from ._decompose import Decomposition
from ._refit import LayerStats, calibrate_layer, dense
from .formats._base import ConvLayer
from .formats._taps import Tap

__all__ = ["Calibration", "LayerOutcome", "calibrate", "evaluate", "overrides"]

#: ``progress(fraction)`` within the stage.
Progress = Callable[[float], None]


@dataclass(frozen=True)
class LayerOutcome:
    """One layer's calibration: the method chosen and the layer's relative output error on the calibration
    samples (input from the calibrated network up to it) with the data-free and with the chosen factors."""

    method: str
    data_free: float
    calibrated: float


@dataclass
class Calibration:
    """What calibration chose.

    Attributes:
        factors: per calibrated layer name, the chosen factors and bias (None: the original bias).
        layers: per calibrated layer name, its outcome.
        skipped: layers left data-free, with the reason (the tap cannot reach them, too large…).
        samples: calibration samples used.
    """

    factors: dict[str, tuple[Decomposition, np.ndarray | None]] = field(default_factory=dict)
    layers: dict[str, LayerOutcome] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0


def overrides(tap: Tap, factors: dict[str, tuple[Decomposition, np.ndarray | None]]
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The tap's weight overrides for these factors: each dense kernel, with its bias or the original one."""
    out = {}
    for name, (dec, bias) in factors.items():
        if name not in tap.points:
            continue
        if bias is None:
            orig = tap.points[name].bias
            bias = orig if orig is not None else np.zeros(dec.out_channels, np.float32)
        out[name] = (dense(dec).astype(np.float32), np.asarray(bias, np.float32))
    return out


def calibrate(
    tap: Tap,
    items: Sequence[tuple[ConvLayer, Decomposition]],
    samples: Samples,
    *,
    batch_size: int,
    ridge: float = 1e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> Calibration:
    """Calibrate the converted layers ``items`` (layer, data-free factors), in the order given (network order).

    Each layer takes two passes over ``samples`` per batch (the original network, and the network as calibrated
    so far; one for the first layer, whose input is the same in both).
    """
    result = Calibration(samples=samples.count)
    todo = []
    for layer, dec in items:
        if layer.name not in tap.points:
            result.skipped[layer.name] = tap.skipped.get(layer.name, "the runtime cannot capture its input")
        elif layer.weight is None:
            result.skipped[layer.name] = "weight is not a constant"
        else:
            todo.append((layer, dec))
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, (layer, dec) in enumerate(todo):
        point = tap.points[layer.name]
        try:
            stats = LayerStats(layer.weight, point.bias, layer.groups, point.geometry, seed=seed + i)
        except ValueError as e:  # too large for a dense Gram matrix
            result.skipped[layer.name] = str(e)
            continue
        for batch, _ in samples.batches(batch_size):
            _, orig = tap(batch, {}, [layer.name])
            conv = tap(batch, done, [layer.name])[1] if done else orig
            stats.update(conv[layer.name], orig[layer.name])
        chosen = calibrate_layer(stats, dec, ridge)
        bias = chosen.bias
        result.factors[layer.name] = (chosen.decomposition, bias)
        result.layers[layer.name] = LayerOutcome(
            chosen.method, chosen.errors["data-free"], chosen.errors[chosen.method])
        done.update(overrides(tap, {layer.name: (chosen.decomposition, bias)}))
        if progress is not None:
            progress((i + 1) / len(todo))
    return result


def evaluate(
    tap: Tap,
    variants: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    samples: Samples,
    *,
    batch_size: int,
    num_classes: int | None,
    progress: Progress | None = None,
) -> Scorer:
    """Score each variant (a name and its weight overrides) against the original on ``samples``."""
    scorer = Scorer(num_classes=num_classes if samples.has_labels else None)
    total = max(1, -(-samples.count // batch_size))
    for i, (batch, labels) in enumerate(samples.batches(batch_size)):
        reference, _ = tap(batch, {}, [])
        outs = {name: tap(batch, weights, [])[0] for name, weights in variants.items()}
        scorer.add(reference, outs, labels)
        if progress is not None:
            progress((i + 1) / total)
    return scorer
