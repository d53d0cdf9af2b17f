r"""The planner's error measured on the user's samples: each candidate rank's relative squared *output* error,

    e(order, K) = ‖(W − Ŵ_K) X‖² / ‖W X‖²

with ``X`` the layer's input patches in the original network run on the calibration samples and ``Ŵ_K`` the
dense kernel of the rank-``K`` factors (``_decompose.decompose``, ``_refit.dense``). A budget policy
(``target_params``, ``target_macs``, ``target_latency``) then spends its budget where it costs the least output
error, and ``--rank K`` picks each layer's form by it, instead of by the weight error ``1 − energy``.

**Every rank at once.** Both forms truncate per-slice SVDs (notation of ``_decompose``): a slice is
``A = Σ_r (A v_r) v_rᵀ`` and rank ``K`` keeps ``r < K``, so the output residual at rank ``K`` is
``Σ_{r≥K} E_r`` with ``E_r`` the output of the layer's ``r``-th component:

    DW→PW   E_r[n, p] = Σ_{c in n's group} (A_c v_{c,r})[n] · (v_{c,r}ᵀ x_{c,p})
    PW→DW   E_r[n, p] = (B_n v_{n,r})ᵀ X_p v_{n,r}

(``x_{c,p}`` the ``k`` taps of input channel ``c`` at output position ``p``, ``X_p`` the ``C × k`` patch of
``n``'s group). DW→PW projects each channel's taps on its ``v_{c,r}`` once (``M·k·R`` per patch) and then needs
one ``N_g × C`` by ``C × P`` product per rank; PW→DW applies each rank's component kernel (``N_g × C·k``) to
the patches, one product per rank. Summing ``E_r`` from the last rank down gives every residual; their sum
over all ranks is ``W X`` (the factors are exact at full rank). Residual norms add over patches, so patches are
processed in chunks.

**The patches.** One pass of the original model over the calibration samples through the format's ``Tap``
(``formats._taps``), in batches; per layer a uniform random sample of its output positions (every position gets
a seeded random key and the ``capacity`` smallest keys are kept: bottom-k sampling), of which only the kept
patches are extracted (``_refit.patches_at``). Capacities are at most ``MAX_PATCHES``, at most ``LAYER_MACS``
of arithmetic per layer, and shrink for wide layers so that all layers' patches together stay within
``PATCH_MEMORY``; the pass's batch shrinks so that one batch of every tapped input stays within
``ACTIVATION_MEMORY``. Memory is bounded by the model, not the samples.

Not here: the energy policy (defined on the kernel: it never uses data), and layers the tap cannot reach (they
keep the weight error, and the report's ``policy`` names them).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._config import ConversionConfig
from ..algebra import Geometry, Order, Spectrum, out_shape, patches_at, spectrum
from ..data import Samples
from ..formats import ConvLayer, Tap
from ._cost import Candidate, Cost, CostModel
from ._factorize import Spectra

__all__ = [
    "ACTIVATION_MEMORY",
    "LAYER_MACS",
    "MAX_PATCHES",
    "PATCH_MEMORY",
    "OutputErrorCostModel",
    "OutputErrors",
    "PatchSample",
    "capacities",
    "error_macs",
    "measure_output_errors",
    "plans_on_output_error",
    "rank_errors",
]

#: Most input patches kept per layer.
MAX_PATCHES = 4096
#: Most bytes of patches kept across all layers.
PATCH_MEMORY = 256 << 20
#: Most multiply-adds of the error computation per layer (``error_macs`` per patch): both forms of a 512-channel
#: 3×3 layer cost 23.6 M per patch (21.2 M of it PW→DW), so such a layer gets 423 patches (about 0.4 s on one
#: core).
LAYER_MACS = 10_000_000_000
#: Most bytes of tapped layer inputs of one batch of the capture pass.
ACTIVATION_MEMORY = 256 << 20
#: The rank policies whose choices trade error between layers or forms, and so use the output error.
POLICIES = ("rank", "target_params", "target_macs", "target_latency", "max_accuracy_drop")
_CHUNK = 1024  # patches per product in ``rank_errors``


def plans_on_output_error(config: ConversionConfig) -> bool:
    """Whether, given calibration samples, this configuration's rank policy plans on the output error."""
    return config.policy[0] in POLICIES


def rank_errors(weight: np.ndarray, groups: int, order: Order, patches: np.ndarray,
                spec: Spectrum | None = None) -> np.ndarray:
    """Relative squared output error ``‖(W − Ŵ_K) X‖² / ‖W X‖²`` of the rank-``K`` factors at every rank
    ``K = 1…max_rank`` (see the module docstring).

    Args:
        weight: the conv weight ``[N, C, *kernel]``.
        groups: the conv's groups.
        order: ``dw-pw`` or ``pw-dw``.
        patches: input patches ``[P, M, k]`` (``_refit.patches``).
        spec: the layer's ``Spectrum`` for ``order``, if already computed.

    Returns:
        ``[max_rank]`` float64, 0.0 everywhere if ``W X`` is zero.
    """
    n, c = weight.shape[:2]
    k = int(np.prod(weight.shape[2:]))
    if patches.ndim != 3 or patches.shape[1:] != (groups * c, k):
        raise ValueError(f"patches of shape {patches.shape} do not fit a weight {weight.shape} in {groups} groups")
    spec = spec if spec is not None else spectrum(weight, groups, order)
    ranks = spec.sq.shape[1]
    ng = n // groups
    w = weight.astype(np.float64, copy=False).reshape(n, c, k)
    err = np.zeros(ranks)
    total = 0.0
    for gi in range(groups):
        if order == "dw-pw":
            vecs = spec.vecs[gi * c:(gi + 1) * c]  # [C, k, R]
            us = np.matmul(w[gi * ng:(gi + 1) * ng].transpose(1, 0, 2), vecs)  # A_c v_{c,r}: [C, N_g, R]
            left = np.ascontiguousarray(us.transpose(2, 1, 0), dtype=np.float32)  # [R, N_g, C]
            right = vecs.astype(np.float32)
        else:
            vecs = spec.vecs[gi * ng:(gi + 1) * ng]  # [N_g, k, R]
            us = np.matmul(w[gi * ng:(gi + 1) * ng], vecs)  # B_n v_{n,r}: [N_g, C, R]
            # the rank-r component kernel of every output channel, flattened like the patches: [R, N_g, C·k]
            left = np.empty((ranks, ng, c * k), dtype=np.float32)
            for r in range(ranks):
                left[r] = (us[:, :, r, None] * vecs[:, None, :, r]).reshape(ng, c * k)
        for s in range(0, patches.shape[0], _CHUNK):
            x = patches[s:s + _CHUNK, gi * c:(gi + 1) * c].astype(np.float32, copy=False)  # [P, C, k]
            if order == "dw-pw":
                # v_{c,r}ᵀ x_{c,p}, as [R, C, P]
                z = np.ascontiguousarray(np.matmul(x.transpose(1, 0, 2), right).transpose(2, 0, 1))
            else:
                flat = np.ascontiguousarray(x.reshape(x.shape[0], c * k).T)
            res = np.zeros((ng, x.shape[0]))
            for r in reversed(range(ranks)):
                res += left[r] @ (z[r] if order == "dw-pw" else flat)  # E_r: [N_g, P]
                sq = float(np.vdot(res, res))
                if r:
                    err[r - 1] += sq
            total += sq
    return err / total if total > 0 else err


class PatchSample:
    """A uniform random sample of at most ``capacity`` of a layer's output positions' input patches over every
    batch added (bottom-k sampling on seeded random keys). Memory: ``capacity`` patches, allocated on first use.

    Args:
        kernel: the conv's kernel shape.
        geometry: where it reads its input.
        capacity: most patches kept.
        seed: seeds the keys.
    """

    def __init__(self, kernel: tuple[int, ...], geometry: Geometry, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.kernel, self.geometry, self.capacity = tuple(kernel), geometry, int(capacity)
        self._rng = np.random.default_rng(seed)
        self._keys = np.full(self.capacity, np.inf)
        self._rows: np.ndarray | None = None
        self.seen = 0

    def add(self, x: np.ndarray) -> None:
        """Offer every output position of one batch of the layer's input ``x`` ``[B, M, *spatial]``."""
        count = x.shape[0] * math.prod(out_shape(tuple(x.shape[2:]), self.kernel, self.geometry))
        keys = self._rng.random(count)
        self.seen += count
        cand = np.flatnonzero(keys < self._keys.max())
        if cand.size > self.capacity:
            cand = cand[np.argpartition(keys[cand], self.capacity - 1)[:self.capacity]]
        if not cand.size:
            return
        merged = np.concatenate([self._keys, keys[cand]])
        keep = np.argpartition(merged, self.capacity - 1)[:self.capacity]
        kept_old = np.zeros(self.capacity, dtype=bool)
        kept_old[keep[keep < self.capacity]] = True
        new = keep[keep >= self.capacity] - self.capacity
        slots = np.flatnonzero(~kept_old)[:new.size]
        got = patches_at(x, self.kernel, self.geometry, cand[new])
        if self._rows is None:
            self._rows = np.empty((self.capacity, *got.shape[1:]), dtype=np.float32)
        self._rows[slots] = got
        self._keys[slots] = keys[cand[new]]

    @property
    def patches(self) -> np.ndarray:
        """The kept patches ``[n, M, k]`` (float32), ``n ≤ capacity``."""
        if self._rows is None:
            return np.empty((0, 0, 0), dtype=np.float32)
        return self._rows[np.isfinite(self._keys)]

    @property
    def nbytes(self) -> int:
        """Bytes held for patches."""
        return 0 if self._rows is None else int(self._rows.nbytes)


def capacities(row_bytes: Sequence[int], row_macs: Sequence[int], memory: int = PATCH_MEMORY,
               most: int = MAX_PATCHES, macs: int = LAYER_MACS) -> list[int]:
    """Patches to keep per layer, given each layer's bytes and error-computation multiply-adds per patch: at
    most ``most`` and ``macs // row_macs`` each (at least one), and ``memory`` bytes in all, shared equally, what
    a layer does not use going to the others."""
    limit = [max(1, min(most, macs // max(1, m))) for m in row_macs]
    out = [0] * len(row_bytes)
    left = memory
    order = sorted(range(len(row_bytes)), key=lambda i: limit[i] * row_bytes[i])
    for done, i in enumerate(order):
        share = left // (len(order) - done)
        out[i] = max(1, min(limit[i], share // max(1, row_bytes[i])))
        left -= out[i] * row_bytes[i]
    return out


def error_macs(layer: ConvLayer, orders: Sequence[Order]) -> int:
    """Multiply-adds of ``rank_errors`` per patch for this layer, over ``orders``."""
    n, m, g, k = layer.out_channels, layer.in_channels, layer.groups, layer.taps
    c = m // g
    per = {"dw-pw": min(n // g, k) * (m * k + n * c), "pw-dw": min(c, k) * n * c * k}
    return sum(per[o] for o in orders)


@dataclass
class OutputErrors:
    """What ``measure_output_errors`` measured.

    Attributes:
        curves: per (layer name, order), the relative squared output error at ranks ``1…max_rank``.
        samples: calibration samples run.
        patches: per measured layer, the patches its errors are computed on.
        unreached: layers that keep the weight error, with the reason.
        seconds: wall time of the capture pass and the error computation.
    """

    curves: dict[tuple[str, Order], np.ndarray] = field(default_factory=dict)
    samples: int = 0
    patches: dict[str, int] = field(default_factory=dict)
    unreached: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        """The report's ``policy`` keys: ``error`` (which error allocated the ranks) and ``output_error``."""
        most = max(self.patches.values(), default=0)
        text = f"output error on {self.samples} calibration samples (up to {most} input patches per layer)"
        if self.unreached:
            text += f"; weight error for {len(self.unreached)} layer(s) whose input could not be captured"
        return {"error": text, "output_error": {
            "samples": self.samples, "patches_per_layer": most, "layers": len(self.patches),
            "weight_error_layers": dict(self.unreached), "spent_s": round(self.seconds, 4)}}


def measure_output_errors(
    tap: Tap,
    layers: Sequence[ConvLayer],
    samples: Samples,
    spectra: Spectra,
    orders: Sequence[Order],
    *,
    batch_size: int,
    seed: int = 0,
    patch_memory: int = PATCH_MEMORY,
    max_patches: int = MAX_PATCHES,
    layer_macs: int = LAYER_MACS,
    progress: Callable[[float], None] | None = None,
) -> OutputErrors:
    """Run the original model (``tap`` with no weight overrides) over ``samples`` once, keep a bounded random
    sample of every tapped layer's input patches, and compute each layer's output error at every rank of every
    order in ``orders`` (see the module docstring). ``layers`` must have constant weights."""
    t0 = time.perf_counter()
    notify = progress or (lambda _: None)
    out = OutputErrors(samples=samples.count)
    reached = []
    for layer in layers:
        if layer.name not in tap.points:
            out.unreached[layer.name] = tap.skipped.get(layer.name, "the runtime cannot capture its input")
        else:
            reached.append(layer)
    caps = capacities([layer.in_channels * layer.taps * 4 for layer in reached],
                      [error_macs(layer, orders) for layer in reached], patch_memory, max_patches, layer_macs)
    sample = {layer.name: PatchSample(layer.kernel, tap.points[layer.name].geometry, cap, seed + i)
              for i, (layer, cap) in enumerate(zip(reached, caps, strict=True))}
    per_sample = sum(layer.in_channels * math.prod(layer.in_spatial or (1,)) * 4 for layer in reached)
    batch = max(1, min(batch_size, ACTIVATION_MEMORY // max(1, per_sample)))
    names = [layer.name for layer in reached]
    steps = max(1, -(-samples.count // batch))
    for i, (inputs, _) in enumerate(samples.batches(batch) if names else ()):
        _, got = tap(inputs, {}, names)
        for name in names:
            sample[name].add(got[name])
        del got
        notify(0.5 * (i + 1) / steps)
    for i, layer in enumerate(reached):
        rows = sample.pop(layer.name).patches
        if not rows.size:
            out.unreached[layer.name] = "no input patches were captured"
            continue
        out.patches[layer.name] = int(rows.shape[0])
        assert layer.weight is not None
        for order in orders:
            out.curves[(layer.name, order)] = rank_errors(layer.weight, layer.groups, order, rows,
                                                          spectra.get(layer, order))
        notify(0.5 + 0.5 * (i + 1) / len(reached))
    out.seconds = time.perf_counter() - t0
    return out


class OutputErrorCostModel:
    """Another cost model's costs with ``error`` filled in from measured output errors, for the decomposed
    candidates of the layers measured (the others keep what the inner model says: None, the weight error).

    Args:
        inner: the cost model whose parameters, MACs and latency are kept.
        errors: what ``measure_output_errors`` measured.
    """

    def __init__(self, inner: CostModel, errors: OutputErrors) -> None:
        self.inner = inner
        self.errors = errors

    @property
    def name(self) -> str:
        """The inner model's name: what the costs are counted or timed with."""
        return self.inner.name

    @property
    def error_report(self) -> dict[str, Any]:
        """What ``Cost.error`` measures, for the report's ``policy``."""
        return self.errors.report()

    @property
    def block(self) -> int:
        """The inner model's channel block (1 where it has none)."""
        return int(getattr(self.inner, "block", 1) or 1)

    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        """The inner model's costs, with the measured output error of each decomposed candidate."""
        out = []
        for cand, cost in zip(candidates, self.inner.costs(candidates), strict=True):
            curve = self.errors.curves.get((cand.layer.name, cand.order)) if cand.order is not None else None
            if curve is not None and cand.rank is not None:
                cost = dataclasses.replace(cost, error=float(curve[min(cand.rank, len(curve)) - 1]))
            out.append(cost)
        return out

