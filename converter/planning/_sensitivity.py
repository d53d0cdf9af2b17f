"""How much of a layer's error reaches the model's output, measured on the user's samples: the sensitivities the
``max_accuracy_drop`` search (``_search``) weighs each layer's output error by.

For each layer ``ℓ`` one perturbed pass: the original network with only ``ℓ``'s kernel replaced by a probe — the
dense kernel of its data-free factors at a probe rank, whose relative squared output error ``e_ℓ`` at the layer
is known (``_outerr``) — and the relative squared error that reaches the model's outputs,

    s_ℓ = (‖y_ℓ − y‖² / ‖y‖²) / e_ℓ

summed over the samples and every numeric output. ``s_ℓ`` is near 1 for a layer whose error passes through
unchanged, below 1 where later layers (pooling, a ReLU that clips it, a residual path that dilutes it) absorb it,
and above 1 where they amplify it. The probe rank is the one whose ``e_ℓ`` is nearest ``PROBE_ERROR`` (on a log
scale): small enough for the first-order model the search uses, large enough to stand out of round-off.

Runs through the format's ``Tap`` (no graph is rewritten); memory is one batch of the network's outputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..algebra import Order, decompose, dense
from ..data import Samples
from ..formats import ConvLayer, Tap
from ._factorize import Spectra

__all__ = ["PROBE_ERROR", "Probe", "Sensitivities", "measure_sensitivities", "probe_rank"]

#: The relative squared output error at the layer that a probe aims at.
PROBE_ERROR = 0.05


@dataclass(frozen=True)
class Probe:
    """A layer's perturbation: decomposed in ``order`` at ``rank``, whose relative squared output error at the
    layer is ``error``."""

    layer: ConvLayer
    order: Order
    rank: int
    error: float


@dataclass
class Sensitivities:
    """Per layer name its sensitivity (see the module docstring), the probes used, the samples and the time."""

    values: dict[str, float] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0


def probe_rank(errors: Mapping[tuple[Order, int], float]) -> tuple[Order, int, float] | None:
    """The (order, rank, error) among a layer's ``errors`` whose error is nearest ``PROBE_ERROR`` on a log scale
    (errors of 0 are skipped: they perturb nothing); None when every one is 0."""
    best = None
    for (order, rank), e in errors.items():
        if e <= 1e-12 or not math.isfinite(e):
            continue
        dist = abs(math.log(e / PROBE_ERROR))
        if best is None or dist < best[0]:
            best = (dist, order, rank, float(e))
    return None if best is None else best[1:]


def measure_sensitivities(tap: Tap, probes: Sequence[Probe], samples: Samples, spectra: Spectra, *,
                          batch_size: int, progress: Callable[[float], None] | None = None) -> Sensitivities:
    """One pass of the original and one per probe over ``samples``, batch by batch (module docstring)."""
    t0 = time.perf_counter()
    out = Sensitivities(samples=samples.count)
    kernels = {}
    for p in probes:
        if p.layer.name not in tap.points or p.layer.weight is None:
            continue
        dec = decompose(p.layer.weight, p.layer.groups, p.order, p.rank, spectra.get(p.layer, p.order))
        bias = tap.points[p.layer.name].bias
        kernels[p.layer.name] = (dense(dec).astype(np.float32),
                                 np.asarray(bias if bias is not None else np.zeros(dec.out_channels), np.float32))
        out.probes[p.layer.name] = p
    diff = dict.fromkeys(kernels, 0.0)
    ref2 = 0.0
    steps = max(1, -(-samples.count // batch_size))
    for i, (batch, _) in enumerate(samples.batches(batch_size) if kernels else ()):
        reference = _numeric(tap(batch, {}, [])[0])
        ref2 += sum(float(np.vdot(r, r)) for r in reference)
        for name, weights in kernels.items():
            got = _numeric(tap(batch, {name: weights}, [])[0])
            diff[name] += sum(float(np.vdot(g - r, g - r)) for g, r in zip(got, reference, strict=True))
        if progress is not None:
            progress((i + 1) / steps)
    for name, d in diff.items():
        e = out.probes[name].error
        out.values[name] = (d / ref2) / e if ref2 > 0 and e > 0 else 1.0
    out.seconds = time.perf_counter() - t0
    return out


def _numeric(outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(o, dtype=np.float64) for o in outputs if np.asarray(o).dtype.kind in "fiub"]
