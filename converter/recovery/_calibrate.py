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
from pathlib import Path
from typing import Any

import numpy as np

from .._config import ConversionConfig
from .._errors import InvalidOptionsError
from .._report import Accuracy, StageValues
from ..algebra import Decomposition, calibrate_stats, dense, layer_stats
from ..data import Samples
from ..evaluation import Scorer, better
from ..formats import ConvLayer, FormatAdapter, Rewrite, Tap, Tappable
from ._ranges import activation_ranges

__all__ = ["Calibration", "LayerOutcome", "Recovery", "calibrate", "evaluate", "held_out", "overrides", "recover"]

#: ``progress(fraction)`` within the stage.
Progress = Callable[[float], None]


@dataclass(frozen=True)
class LayerOutcome:
    """One layer's calibration: the method chosen and the layer's relative output error on the calibration
    samples (input from the calibrated network up to it) with the data-free and with the chosen factors, and
    which statistics measured them (``full``: the patch Gram matrix; ``factored``: statistics in the first
    factor's output space, for patches too large for it, see ``algebra._factored``)."""

    method: str
    data_free: float
    calibrated: float
    statistics: str = "full"


@dataclass
class Calibration:
    """What calibration chose.

    Attributes:
        factors: per calibrated layer name, the chosen factors and bias (None: the original bias).
        layers: per calibrated layer name, its outcome.
        skipped: layers left data-free, with the reason (the tap cannot reach them, a weight that is not
            a constant).
        samples: calibration samples used.
        passes: forward passes of the tap over a batch (a layer takes two per batch, the original network's and
            the calibrated one's, one for the first layer; factored statistics take the samples two or four times).
    """

    factors: dict[str, tuple[Decomposition, np.ndarray | None]] = field(default_factory=dict)
    layers: dict[str, LayerOutcome] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    passes: int = 0


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
            todo.append((layer, layer.weight, dec))
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, (layer, weight, dec) in enumerate(todo):
        point = tap.points[layer.name]
        stats = layer_stats(weight, point.bias, layer.groups, point.geometry, dec, seed=seed + i, ridge=ridge)
        while True:  # factored statistics take further passes over the same samples
            for batch, _ in samples.batches(batch_size):
                _, orig = tap(batch, {}, [layer.name], outputs=False)
                conv = tap(batch, done, [layer.name], outputs=False)[1] if done else orig
                result.passes += 2 if done else 1
                stats.update(conv[layer.name], orig[layer.name])
            if not stats.next_pass():
                break
        chosen = calibrate_stats(stats, dec, ridge)
        bias = chosen.bias
        result.factors[layer.name] = (chosen.decomposition, bias)
        result.layers[layer.name] = LayerOutcome(
            chosen.method, chosen.errors["data-free"], chosen.errors[chosen.method], chosen.statistics)
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


@dataclass
class Recovery:
    """What the calibrate stage hands back to the pipeline.

    Attributes:
        model: the original model rewritten with the calibrated factors, or None to keep the data-free one (a
            quantized model is rewritten again even then: its new tensors' ranges are calibrated).
        factors: the calibrated factors (as ``Factors``), or None.
        accuracy: the report's ``accuracy`` section.
        layers: per layer name, report fields (``calibration``, ``output_error``).
        warnings: for the report.
    """

    model: Any
    factors: list[Any] | None
    accuracy: Accuracy
    layers: dict[str, dict[str, Any]]
    warnings: list[str]


def held_out(data: Samples, eval_: Samples | None, share: float, seed: int) -> tuple[Samples, Samples, str]:
    """``(calibration samples, held-out samples, how they were chosen)``."""
    if eval_ is not None:
        return data, eval_, f"{eval_.description}: {eval_.count} samples"
    kept, held = data.split(share, seed)
    return kept, held, (f"{held.count} of {data.count} samples of {data.description} ({share:.0%}, seed {seed}) "
                        "held out, not used for calibration")


def recover(
    adapter: FormatAdapter,
    src: Path,
    workdir: Path,
    factors: Sequence[Any],
    input_shapes: dict[str, tuple[int, ...]],
    data: Samples,
    eval_: Samples | None,
    config: ConversionConfig,
    progress: Progress | None = None,
    calibration_data: bool = True,
) -> Recovery:
    """Calibrate the converted layers on ``data`` (unless ``recover="none"``), score the original, data-free and
    calibrated models on the held-out samples, and keep the calibrated factors only if they are at least as
    good there. ``factors`` are the data-free ``Factors`` of the converted layers (the pipeline's).

    Quantized layers get their new tensors' ranges from the calibration samples whenever ``data`` are
    calibration samples (``calibration_data``; not when only ``--eval`` samples were given), also with
    ``recover="none"``: observing ranges does not change the factors."""
    notify = progress or (lambda _: None)
    if not isinstance(adapter, Tappable):
        raise InvalidOptionsError(f"calibration and accuracy on samples are not available for {adapter.name} models "
                                  "yet (no activation tap for this format); convert without --data/--eval")
    fresh = adapter.load(src, _mkdir(workdir / "original"))
    by_name = {layer.name: layer for layer in adapter.find_convs(fresh, input_shapes)}
    ours = [by_name[f.layer.name] for f in factors if f.layer.name in by_name]
    tap = adapter.tap(fresh, ours, _mkdir(workdir / "tap"), config.threads)
    calib, held, how = held_out(data, eval_, config.holdout, config.seed)
    calib = calib.head(config.calibration_samples)
    data_free = {f.layer.name: (f.decomposition, f.bias) for f in factors}
    variants = {"data_free": overrides(tap, data_free)}
    result = None
    warnings: list[str] = []
    if config.recover != "none" and factors:
        items = [(by_name[f.layer.name], f.decomposition) for f in factors if f.layer.name in by_name]
        result = calibrate(tap, items, calib, batch_size=config.batch_size, seed=config.seed,
                           progress=lambda x: notify(0.8 * x))
        variants["calibrated"] = overrides(tap, {**data_free, **result.factors})
        if result.skipped:
            names = ", ".join(sorted(result.skipped)[:3])
            warnings.append(f"{len(result.skipped)} converted layer(s) could not be calibrated and stay data-free "
                            f"({names}: {next(iter(result.skipped.values()))})")
    scorer = evaluate(tap, variants, held, batch_size=config.batch_size, num_classes=held.num_classes,
                      progress=lambda x: notify(0.8 + 0.2 * x) if result is not None else notify(x))
    keep = result is not None and better(scorer, "calibrated", "data_free")
    metric = scorer.metric
    values = {name: scorer.values(name) for name in ("original", *variants)}
    note = None
    if result is not None and not keep:
        note = (f"calibration did not improve the held-out {metric} ({values['calibrated'][metric]} vs "
                f"{values['data_free'][metric]} data-free): the data-free factors were kept")
        warnings.append(note)

    def stage(key: str) -> StageValues | None:
        got = {name: v[key] for name, v in values.items()}
        if all(v is None for v in got.values()):
            return None
        return StageValues(**got)

    accuracy = Accuracy(
        metric=metric, samples=scorer.samples, held_out=how,
        original=values["original"][metric], data_free=values["data_free"][metric],
        calibrated=values["calibrated"][metric] if "calibrated" in values else None,
        top5=stage("top5"), top1_agreement=stage("top1_agreement"), rel_l2=stage("rel_l2"),
        calibration_samples=result.samples if result is not None else None,
        kept="calibrated" if keep else "data_free", note=note,
    )
    layers: dict[str, dict[str, Any]] = {}
    if result is not None:
        for name, outcome in result.layers.items():
            method = outcome.method if outcome.statistics == "full" else f"{outcome.method} ({outcome.statistics})"
            layers[name] = {"calibration": method if keep else f"{method} (not kept)",
                            "output_error": StageValues(data_free=outcome.data_free,
                                                        calibrated=outcome.calibrated)}
        for name, reason in result.skipped.items():
            layers[name] = {"calibration": f"skipped: {reason}"}
    if not keep or result is None:
        if not calibration_data or not any(f.layer.quantized for f in factors):
            return Recovery(None, None, accuracy, layers, warnings)
        new = list(factors)  # data-free factors, but the quantized layers' ranges are calibrated below
        return Recovery(_rewritten(adapter, fresh, tap, by_name, new, calib, config), new, accuracy, layers,
                        warnings)
    new = []
    for f in factors:
        if f.layer.name in result.factors:
            dec, bias = result.factors[f.layer.name]
            f = f.with_weights(dec.first if dec.order == "dw-pw" else dec.second,
                               dec.second if dec.order == "dw-pw" else dec.first, bias)
        new.append(f)
    return Recovery(_rewritten(adapter, fresh, tap, by_name, new, calib, config), new, accuracy, layers, warnings)


def _rewritten(adapter: Any, fresh: Any, tap: Tap, by_name: dict[str, ConvLayer], factors: list[Any],
               calib: Samples, config: ConversionConfig) -> Any:
    """The freshly loaded original (the tap left it as it was) rewritten with ``factors`` and that model's layers;
    quantized layers get their new tensors' ranges observed on the calibration samples (``_ranges``)."""
    ranges = activation_ranges(tap, factors, overrides(tap, {f.layer.name: (f.decomposition, f.bias)
                                                            for f in factors}), calib, config.batch_size)
    rewrites = [Rewrite(by_name.get(f.layer.name, f.layer), f.lowered(), f.bias, ranges.get(f.layer.name))
                for f in factors]
    return adapter.apply(fresh, rewrites)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
