"""The report of a finished conversion, built from what the stages left: the decisions, the factors, the counts,
the verification and each stage's time. Warnings are worked out here, once, from those figures.

It reads; it does not run, measure or decide anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._report import Counts, Fidelity, Latency, LayerReport, Report, Timings
from .._stages import timings_from
from .._version import __version__
from ..formats import ModelStats
from ..latency import speed_warning
from ..planning import Factors, LayerDecision

__all__ = ["build_report"]


def build_report(
    *,
    format: str,
    before: ModelStats,
    after: ModelStats,
    file_bytes: tuple[int, int],
    policy: dict,
    decisions: list[LayerDecision],
    factors: list[Factors],
    shapes: Mapping[str, tuple[int, ...]],
    problems: list[str],
    fidelity: Fidelity | None,
    latency: Latency | None,
    seconds: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
    warnings: list[str] | None = None,
    layer_extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Report:
    """The report (see ``Report``); ``extra`` adds keys other stages contribute, ``warnings`` theirs, and
    ``layer_extra`` per-layer fields by layer name."""
    by_layer = {id(f.layer): f for f in factors}
    converted = [d for d in decisions if d.converted]
    return Report(
        sepconv_version=__version__,
        format=format,
        params=Counts(original=before.params, converted=after.params),
        macs=Counts(original=before.macs, converted=after.macs),
        file_bytes=Counts(original=file_bytes[0], converted=file_bytes[1]),
        policy={**policy, "converted_layers": len(converted), "total_layers": len(decisions),
                "input_shapes": {k: list(v) for k, v in shapes.items()}},
        fidelity=fidelity,
        latency=latency,
        layers=[_layer_report(d, by_layer.get(id(d.layer)), (layer_extra or {}).get(d.layer.name, {}))
                for d in decisions],
        timings=Timings(**timings_from(seconds)),
        warnings=[*_warnings(decisions, fidelity, latency, problems, recovered="accuracy" in (extra or {})),
                  *(warnings or [])],
        **(extra or {}),
    )


def _op(layer: Any) -> str:
    """The layer's op as its format spells it; a transposed conv behind a generic op (``aten::_convolution``
    with ``transposed=True``) says so."""
    if layer.transposed and "transpose" not in layer.op.lower():
        return f"{layer.op} (ConvTranspose)"
    return layer.op


def _layer_report(d: LayerDecision, f: Factors | None, extra: Mapping[str, Any]) -> LayerReport:
    layer = d.layer
    energy, error = d.energy, d.rel_weight_error
    if f is not None:  # the factors as they are (calibration may have refined them)
        energy, error = f.decomposition.energy, f.decomposition.rel_error
    return LayerReport(
        name=layer.name,
        op=_op(layer),
        kernel=list(layer.kernel),
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        groups=layer.groups,
        status="converted" if d.converted else "skipped",
        reason=d.reason,
        order=d.order if d.converted else None,
        rank=d.rank if d.converted else None,
        lowering=d.lowering if d.converted else None,
        energy=_round(energy),
        rel_weight_error=_round(error),
        params_before=d.params_before,
        params_after=d.params_after,
        macs_before=d.macs_before,
        macs_after=d.macs_after,
        latency_ms_before=_round(d.cost_before.latency_ms),
        latency_ms_after=_round(d.cost_after.latency_ms),
        **extra,
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _warnings(decisions: list[LayerDecision], fid: Fidelity | None, lat: Latency | None,
              problems: list[str], recovered: bool = False) -> list[str]:
    # ``recovered``: accuracy was measured on the user's samples (the report's ``accuracy`` says how much was
    # kept), so the guesses from kernel energy and random inputs would only repeat it less precisely.
    out = []
    conv = [d for d in decisions if d.converted]
    if not conv:
        reasons = sorted({d.reason for d in decisions}) or ["the model has no convolutions"]
        out.append("no layer was converted; the model is returned unchanged (" + "; ".join(reasons[:4]) + ")")
    low = [d for d in conv if d.energy is not None and d.energy < 0.6]
    if low and not recovered:
        worst = min(low, key=lambda d: d.energy or 0.0)
        out.append(f"{len(low)} converted layer(s) keep less than 60 % of their kernel energy (worst: "
                   f"{worst.layer.name}, {worst.energy:.0%}); expect an accuracy drop until fine-tuned")
    if fid is not None:
        if not np.isfinite(fid.rel_l2):
            out.append("the converted model's outputs are not finite")
        elif fid.rel_l2 > 0.1 and not recovered:
            out.append(f"outputs differ from the original by {fid.rel_l2:.1%} (relative L2) on the verification "
                       "inputs; check accuracy on real data and fine-tune to recover it")
    slower = speed_warning(lat)  # only when the speed-up's interval lies below 1.0: noise is not a finding
    if slower is not None:
        out.append(slower)
    out.extend(f"MACs unknown: {p}" for p in problems)
    return out
