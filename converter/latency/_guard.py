"""Never slower by default: keep a conversion only if the assembled model is measured faster than the original.

The planner's per-layer choices rest on timings of each layer in a small context; a whole model has more
context (residual Adds, Concats, layout changes between layers, caches), so the assembled model is measured
against the original (``_whole``, interleaved, bootstrap interval). It is *faster* only when the whole 95 %
interval of the speed-up lies above 1.0. If it is not:

1. the layers that do not pay are reverted — those whose in-context gain was under ``min_gain`` of the layer's
   time, or unknown; if that reverts nothing, the half with the smaller gains — and the model is measured again;
2. if it is still not faster, the original comes back unchanged, with the reason (the measured speed-up).

At most ``rounds`` measurements are made. Pure logic: the caller supplies ``measure(layers)``, which assembles
the model with only those layers converted and compares it with the original.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ._harness import Comparison

__all__ = ["GuardResult", "describe", "never_slower"]


@dataclass
class GuardResult:
    """The outcome: the layers kept converted, those reverted (name → reason), the last comparison (of the
    model returned, or of the last attempt when nothing is kept), and each round measured."""

    kept: list[str]
    reverted: dict[str, str] = field(default_factory=dict)
    comparison: Comparison | None = None
    rounds: list[dict] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return not self.kept


def describe(cmp: Comparison) -> str:
    return f"{cmp.speedup:.2f}× ({cmp.confidence:.0%} interval {cmp.low:.2f}–{cmp.high:.2f})"


def never_slower(
    layers: Sequence[str],
    gains: Mapping[str, float | None],
    measure: Callable[[list[str]], Comparison],
    *,
    min_gain: float = 0.05,
    rounds: int = 2,
) -> GuardResult:
    """Choose which converted layers to keep so that the model is measured faster, or none.

    Args:
        layers: the converted layers, as planned.
        gains: per layer, its in-context gain as a share of its time (``1 - t_new / t_original``), None if
            not measured.
        measure: compares the model with only the given layers converted against the original.
        min_gain: a layer gaining less than this share in context "does not pay".
        rounds: most whole-model measurements.
    """
    kept = list(layers)
    result = GuardResult(kept=kept)
    if not kept:
        return result
    for attempt in range(rounds):
        cmp = measure(kept)
        result.comparison = cmp
        result.rounds.append({"converted_layers": len(kept), "speedup": round(cmp.speedup, 4),
                              "speedup_low": round(cmp.low, 4), "speedup_high": round(cmp.high, 4)})
        if cmp.faster:
            result.kept = kept
            return result
        if attempt == rounds - 1:
            break
        why = f"reverted: the model with it converted measured {describe(cmp)}, not faster"
        weak = [n for n in kept if gains.get(n) is None or (gains[n] or 0.0) < min_gain]
        if not weak:
            by_gain = sorted(kept, key=lambda n: gains.get(n) or 0.0)
            weak = by_gain[: max(1, len(kept) // 2)]
        for n in weak:
            result.reverted[n] = f"{why}, and this layer gained little in context ({_share(gains.get(n))})"
        kept = [n for n in kept if n not in weak]
        if not kept:
            break
    last = result.comparison
    assert last is not None
    for n in kept:
        result.reverted[n] = (f"reverted: the converted model measured {describe(last)} against the original, "
                              "not faster; the original is returned unchanged")
    result.kept = []
    return result


def _share(gain: float | None) -> str:
    return "not measured" if gain is None else f"{gain:+.0%}"
