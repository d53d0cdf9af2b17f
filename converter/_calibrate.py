"""Calibration: refit each converted layer's factors on the user's samples so that it reproduces the original
layer, layer by layer in network order, each layer's input taken from the network converted (and calibrated)
up to it, so that errors do not pile up. Then measure, on held-out samples, the original, the data-free and the
calibrated model.

The math is in ``_refit`` (closed-form, from streamed statistics); activations come from the format's own
runtime through the adapter's ``Tap`` (``formats._taps``), which runs the original graph with each converted
layer's factors multiplied back into one dense kernel: the same function as the rewritten graph, so nothing is
rewritten until the factors are final. Consecutive layers are captured in the same passes over the samples
(a *chunk*, see ``calibrate``), within fixed memory budgets: memory is one batch of the chunk's input activations
plus the chunk's statistics, whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._accuracy import Scorer, better
from ._config import ConversionConfig
from ._data import Samples
from ._decompose import Decomposition
from ._errors import InvalidOptionsError
from ._refit import LayerStats, calibrate_layer, dense, stats_bytes
from ._report import Accuracy, StageValues
from .formats._base import ConvLayer, Rewrite
from .formats._taps import Tap

__all__ = ["Calibration", "LayerOutcome", "Recovery", "calibrate", "chunks", "default_cap", "evaluate", "held_out",
           "overrides", "recover"]

#: Calibration captures consecutive layers in the same passes (``calibrate``) while their statistics fit in
#: this many bytes, one batch of their inputs (both networks) in ``ACTIVATION_BUDGET``, and they are at most
#: ``default_cap`` layers.
STATS_BUDGET = 1 << 30
ACTIVATION_BUDGET = 1 << 30
MAX_CHUNK = 4


def default_cap(layers: int) -> int:
    """The most layers one chunk holds by default when ``layers`` are calibrated: ``MAX_CHUNK``, and fewer so
    that there are at least four chunks (a shallow net is calibrated layer by layer).

    Measured (``benchmarks/calibration_speed.py``): on a ResNet-18-like net (17 layers, rank 2, 32 samples)
    chunks of 4 cut the runtime's passes from 33 to 10 (their time by 75 %) and the calibration's time by
    24–38 % (the rest is accumulating statistics and fitting, which chunks do not change), with the same
    held-out output error; on the 4-layer digits CNN at rank 1, chunks of 2 lost 1.8 points of top-1 and
    chunks of 4 six (a later layer of a chunk does not compensate the earlier ones' error, and a shallow net
    has few chunks left to do it).
    """
    return max(1, min(MAX_CHUNK, layers // 4))

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


def chunks(stats: Sequence[int], activations: Sequence[int], *, stats_budget: int, activation_budget: int,
           max_layers: int) -> list[list[int]]:
    """Group layers (by index, in network order) into runs of consecutive layers captured in the same passes.

    A run grows while its layers' statistics (``stats``, bytes each) stay within ``stats_budget``, one batch of
    their inputs (``activations``, bytes per batch each) within ``activation_budget``, and it has at most
    ``max_layers`` layers. A layer that alone exceeds a budget is a run of its own (as when calibrated alone).
    """
    if max_layers < 1:
        raise ValueError("max_layers must be >= 1")
    out: list[list[int]] = []
    used_stats = used_acts = 0
    for i, (st, act) in enumerate(zip(stats, activations, strict=True)):
        if out and len(out[-1]) < max_layers and used_stats + st <= stats_budget \
                and used_acts + act <= activation_budget:
            out[-1].append(i)
            used_stats += st
            used_acts += act
        else:
            out.append([i])
            used_stats, used_acts = st, act
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
    max_chunk: int | None = None,
    stats_budget: int | None = None,
    activation_budget: int | None = None,
) -> Calibration:
    """Calibrate the converted layers ``items`` (layer, data-free factors), in the order given (network order).

    Consecutive layers are calibrated in chunks (``chunks``): at most ``max_chunk`` layers (by default
    ``default_cap``) whose statistics fit in ``stats_budget`` bytes and one batch of whose inputs, in both
    networks, fits in ``activation_budget`` bytes (``STATS_BUDGET``, ``ACTIVATION_BUDGET``); the last layer is
    a chunk of its own. Per batch a chunk takes two passes: the original network, and the network with every
    layer of the earlier chunks calibrated (one pass for the first chunk, whose inputs are the same in both);
    each pass captures the inputs of all layers of the chunk. Then each layer of the chunk is fitted.

    So a layer later in a chunk sees its input through the earlier layers of its own chunk as they are in the
    original network, not yet calibrated: it does not compensate their calibration error. The first layer of
    the next chunk does (it sees the network calibrated up to it), which is why the last layer, with no layer
    after it, is always alone and why the cap is small. With ``max_chunk=1`` this is exactly layer-by-layer
    calibration. Passes over the samples: about ``2 × chunks`` instead of ``2 × layers``; with ``max_chunk > 1``
    one more pass, of a single sample, measures the layers' input sizes.
    """
    stats_budget = STATS_BUDGET if stats_budget is None else stats_budget
    activation_budget = ACTIVATION_BUDGET if activation_budget is None else activation_budget
    result = Calibration(samples=samples.count)
    todo = []
    for layer, dec in items:
        if layer.name not in tap.points:
            result.skipped[layer.name] = tap.skipped.get(layer.name, "the runtime cannot capture its input")
        elif layer.weight is None:
            result.skipped[layer.name] = "weight is not a constant"
        else:
            todo.append((layer, dec))
    if not todo:
        return result
    max_chunk = default_cap(len(todo)) if max_chunk is None else max_chunk
    sizes = [stats_bytes(layer.weight.shape, layer.groups) for layer, _ in todo]
    acts = [0] * len(todo)
    if max_chunk > 1 and len(todo) > 2 and samples.count:
        one, _ = next(samples.batches(1, indices=[0]))
        _, got = tap(one, {}, [layer.name for layer, _ in todo])
        # Both networks' inputs of every layer of the chunk are held for one batch.
        acts = [2 * batch_size * got[layer.name].size * 4 for layer, _ in todo]
        del got
    # The last layer is a chunk of its own: no later layer is left to absorb the error it would not see.
    groups = [*chunks(sizes[:-1], acts[:-1], stats_budget=stats_budget, activation_budget=activation_budget,
                      max_layers=max_chunk), [len(todo) - 1]]
    batches = max(1, -(-samples.count // batch_size))
    done: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    finished = 0
    for group in groups:
        stats: dict[int, LayerStats] = {}
        for i in group:
            layer, _ = todo[i]
            try:
                stats[i] = LayerStats(layer.weight, tap.points[layer.name].bias, layer.groups,
                                      tap.points[layer.name].geometry, seed=seed + i)
            except ValueError as e:  # too large for a dense Gram matrix
                result.skipped[layer.name] = str(e)
        names = [todo[i][0].name for i in stats]
        if names:
            for b, (batch, _) in enumerate(samples.batches(batch_size)):
                _, orig = tap(batch, {}, names)
                conv = tap(batch, done, names)[1] if done else orig
                for i, st in stats.items():
                    name = todo[i][0].name
                    st.update(conv[name], orig[name])
                del orig, conv
                if progress is not None:
                    progress((finished + len(group) * (b + 1) / (batches + 1)) / len(todo))
        fitted = {}
        for i, st in stats.items():
            layer, dec = todo[i]
            chosen = calibrate_layer(st, dec, ridge)
            result.factors[layer.name] = (chosen.decomposition, chosen.bias)
            result.layers[layer.name] = LayerOutcome(
                chosen.method, chosen.errors["data-free"], chosen.errors[chosen.method])
            fitted[layer.name] = (chosen.decomposition, chosen.bias)
        del stats
        done.update(overrides(tap, fitted))
        finished += len(group)
        if progress is not None:
            progress(finished / len(todo))
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
        model: the original model rewritten with the calibrated factors, or None to keep the data-free one.
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
    adapter: Any,
    src: Path,
    workdir: Path,
    factors: Sequence[Any],
    input_shapes: dict[str, tuple[int, ...]],
    data: Samples,
    eval_: Samples | None,
    config: ConversionConfig,
    progress: Progress | None = None,
) -> Recovery:
    """Calibrate the converted layers on ``data`` (unless ``recover="none"``), score the original, data-free and
    calibrated models on the held-out samples, and keep the calibrated factors only if they are at least as
    good there. ``factors`` are the data-free ``Factors`` of the converted layers (the pipeline's)."""
    notify = progress or (lambda _: None)
    if not hasattr(adapter, "tap"):
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
            layers[name] = {"calibration": outcome.method if keep else f"{outcome.method} (not kept)",
                            "output_error": StageValues(data_free=outcome.data_free,
                                                        calibrated=outcome.calibrated)}
        for name, reason in result.skipped.items():
            layers[name] = {"calibration": f"skipped: {reason}"}
    if not keep:
        return Recovery(None, None, accuracy, layers, warnings)
    new = []
    for f in factors:
        if f.layer.name in result.factors:
            dec, bias = result.factors[f.layer.name]
            f = f.with_weights(dec.first if dec.order == "dw-pw" else dec.second,
                               dec.second if dec.order == "dw-pw" else dec.first, bias)
        new.append(f)
    # The rewrite goes onto the freshly loaded original (the tap left it as it was), with that model's layers.
    rewrites = [Rewrite(by_name.get(f.layer.name, f.layer), f.lowered(), f.bias) for f in new]
    model = adapter.apply(fresh, rewrites)
    return Recovery(model, new, accuracy, layers, warnings)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
