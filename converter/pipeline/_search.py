"""The ``search`` stage: ``max_accuracy_drop`` — the fastest plan found whose held-out metric stays within ``D``
of the original's, each plan measured as the user will run it (README "Accuracy-bounded search").

What it does, in order:

1. **Menus.** Every eligible layer's candidates priced by the cost model the plan and measure stages left
   (counted parameters and MACs, in-context latency from the timing cache, the layer's output error at every
   rank on the calibration samples: ``planning.priced_options``); per (order, rank) the fastest lowering.
2. **Sensitivities.** One perturbed pass per layer on a few calibration samples (``planning._sensitivity``).
3. **Frontier and search** (``planning._search``): plans along the predicted latency/error frontier, the
   uniform ranks first (what ``--rank K`` gives), then narrowing between the last plan that met ``D`` and the
   first that did not.
4. **Each plan measured** (``_Evaluator``): factors at the plan's ranks, calibrated (``recovery.recover``, a
   black box), assembled into a file, that *file* scored on the held-out samples against the original on the
   format's runtime, and timed against the original (threads, batch and device of the conversion).
5. **The answer**: the chosen plan's model, factors, accuracy section and timing become the conversion's (the
   rewrite, guard and calibrate stages do not run; verification reuses this stage's timing of the same graph),
   or, when no plan met ``D`` faster than the original, the original unchanged with the reason.

**What is reused between plans, and why it stays correct.** The timing cache and the per-layer output errors
and sensitivities are measured once: they depend on the original model and the samples only. The spectra
(SVDs) are computed once per (layer, order): the data-free factors at any rank are truncations of them. A
plan measured once is never measured again (keyed by every layer's (order, rank, lowering)): the same key
gives the same factors, the same calibration (seeded, deterministic) and so the same file. Calibrated
factors are *not* shared between plans that differ: a layer's calibrated factors depend on every converted
layer before it (its input is the calibrated network up to it), so they are the same only for an identical
prefix of decisions — reusing them needs calibration to start from a given prefix, which it cannot yet.

**Resuming.** With a ``checkpoint_dir`` each measured plan's outcome is appended to ``search.json`` there (keyed
by the model's, the samples' and the options' digests — the budget aside —, like a fine-tune checkpoint); a
resumed conversion replays those outcomes without measuring them again and rebuilds only the chosen plan's file.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._config import DEFAULT_ACCURACY_DROP, ConversionConfig
from .._errors import ConversionError, InvalidOptionsError, map_errors
from .._files import atomic_write
from .._report import Search, SearchPlanReport
from .._stages import StageProgress
from ..data import Samples
from ..evaluation import Scorer
from ..formats import Tappable, trusting
from ..latency import Comparison, compare_files
from ..planning import (
    Choice,
    LayerDecision,
    LayerMenu,
    Outcome,
    Plan,
    Probe,
    SearchPlan,
    SearchResult,
    Spectra,
    Trial,
    eligibility,
    factorize,
    frontier,
    measure_sensitivities,
    priced_options,
    probe_rank,
    rewrites,
    search,
    uniform_plans,
)
from ..recovery import held_out, recover
from ._measure import _backend, _inputs, _timed_inputs

if TYPE_CHECKING:
    from ._convert import Conversion

__all__ = ["JOURNAL_NAME", "resolve_policy", "search_step", "searching"]

#: The search's journal in the checkpoint folder (see the module docstring).
JOURNAL_NAME = "search.json"
#: Calibration samples the sensitivity passes use.
SENSITIVITY_SAMPLES = 64


def resolve_policy(config: ConversionConfig, has_data: bool) -> tuple[ConversionConfig, bool]:
    """The configuration a conversion runs with, and whether the search is on by default: with samples, no rank
    option, and the whole model measured (verify and measure, as the never-slower promise needs), the default is
    ``max_accuracy_drop=DEFAULT_ACCURACY_DROP``.

    Raises:
        InvalidOptionsError: ``max_accuracy_drop`` without samples.
    """
    if config.max_accuracy_drop is not None:
        if not has_data:
            raise InvalidOptionsError("max_accuracy_drop needs samples of the model's inputs: give --data")
        return config, False
    if has_data and config.default_policy and config.verify and config.measure:
        return config.model_copy(update={"max_accuracy_drop": DEFAULT_ACCURACY_DROP}), True
    return config, False


def searching(c: Conversion) -> bool:
    """Whether this conversion runs the search (its configuration sets ``max_accuracy_drop``)."""
    return c.config.max_accuracy_drop is not None


def search_step(c: Conversion, progress: StageProgress) -> None:
    """The ``search`` stage (see the module docstring)."""
    assert c.adapter is not None and c.before is not None and c.samples is not None
    cfg = c.config
    drop = float(cfg.max_accuracy_drop or DEFAULT_ACCURACY_DROP)
    if c.problems:
        raise InvalidOptionsError(f"max_accuracy_drop times every plan and needs concrete input shapes: "
                                  f"{c.problems[0]}")
    if not isinstance(c.adapter, Tappable):
        raise InvalidOptionsError(f"max_accuracy_drop is not available for {c.adapter.name} models yet (no "
                                  "activation tap for this format); choose a rank policy")
    spectra = Spectra()
    menus = _menus(c, spectra)
    progress.update(0.02, {"step": "sensitivity", "layers": len(menus)})
    calib, held, _ = held_out(c.samples, c.eval_samples, cfg.holdout, cfg.seed)
    sens = _sensitivities(c, menus, spectra, calib.head(min(cfg.calibration_samples, SENSITIVITY_SAMPLES)))
    for m in menus:
        m.sensitivity = sens.get(m.name, m.sensitivity)
    chain = frontier(menus)
    evaluator = _Evaluator(c, menus, spectra, held, drop)
    t_start = time.monotonic()

    def report(trial: Trial, best: Trial | None, count: int) -> None:
        spent = time.monotonic() - t_start
        expected = max(1, 2 * math.ceil(math.log2(len(chain) + 1)))
        progress.update(min(0.98, 0.05 + 0.93 * max(spent / cfg.search_budget_s, count / expected)), {
            "plan": count, "speedup": round(trial.outcome.speedup, 3), "metric": round(trial.outcome.metric, 6),
            "best": None if best is None else round(best.outcome.speedup, 3)})

    with trusting(cfg.trust_model):
        result = search(chain, evaluator, drop, cfg.search_budget_s, anchors=uniform_plans(menus), progress=report)
        evaluator.finish(result)
    _apply(c, menus, result, evaluator, drop, sens, time.monotonic() - t_start)


def _menus(c: Conversion, spectra: Spectra) -> list[LayerMenu]:
    """Every eligible layer's choices on one cost scale: measured ms where the layer was timed, else its MACs
    (or parameters) times the median ms per MAC of the timed layers."""
    assert c.adapter is not None
    priced = priced_options(c.layers, c.config, c.cost_model, spectra)
    rates = [cost.latency_ms / cost.macs for _, cost, _ in priced
             if cost.latency_ms is not None and cost.macs]
    rate = float(np.median(rates)) if rates else 1.0

    def scale(latency: float | None, macs: int | None, params: int) -> float:
        if latency is not None and rates:
            return float(latency)
        return float(macs if macs is not None else params) * rate

    menus = []
    for layer, kept, options in priced:
        timed = kept.latency_ms is not None
        best: dict[tuple[str, int], Choice] = {}
        for o in options:
            cand, cost = o.candidate, o.cost
            assert cand.order is not None and cand.rank is not None
            ms = scale(cost.latency_ms if timed else None, cost.macs, cost.params)
            choice = Choice(cand.order, cand.rank, cand.lowering, ms, o.err2, cost.params, cost.macs, payload=o)
            key = (cand.order, cand.rank)
            if key not in best or choice.cost < best[key].cost:
                best[key] = choice
        menus.append(LayerMenu(layer.name, scale(kept.latency_ms if timed else None, kept.macs, kept.params),
                               kept.params, kept.macs, 1.0, sorted(best.values(), key=lambda ch: ch.cost),
                               payload=(layer, kept)))
    return menus


def _sensitivities(c: Conversion, menus: list[LayerMenu], spectra: Spectra, samples: Samples) -> dict[str, float]:
    assert isinstance(c.adapter, Tappable)
    probes = []
    for m in menus:
        layer = m.payload[0]
        pick = probe_rank({(ch.order, ch.rank): ch.error for ch in m.choices})
        if pick is not None:
            probes.append(Probe(layer, *pick))
    if not probes:
        return {}
    layers = [p.layer for p in probes]
    with trusting(c.config.trust_model), map_errors("measuring the layers' sensitivities failed", ConversionError):
        tap = c.adapter.tap(c.model, layers, c.workdir("search-tap"), c.config.threads)
        got = measure_sensitivities(tap, probes, samples, spectra, batch_size=c.config.batch_size)
    return got.values


@dataclass
class _Built:
    """A measured plan's model, its factors, its calibration outcome and its file (the best so far keeps its)."""

    model: Any
    factors: list[Any]
    recovery: Any
    path: Path | None
    comparison: Comparison | None


class _Evaluator:
    """Measures one plan: calibrate, assemble, score the file, time it (module docstring, step 4)."""

    def __init__(self, c: Conversion, menus: list[LayerMenu], spectra: Spectra, held: Samples, drop: float) -> None:
        assert c.adapter is not None
        self.c, self.menus, self.spectra, self.held, self.drop = c, menus, spectra, held, drop
        self.metric = _metric(c.config, held)
        self.original: float | None = None
        self.folder = c.workdir("search")
        self.built: dict[tuple, _Built] = {}
        self.best_key: tuple | None = None
        self.best_speedup = -1.0
        self.timed = _timed_inputs(_inputs(c)[0], c)
        self.backend = _backend(c)
        self.journal = _Journal(c)
        self.count = 0

    def __call__(self, plan: SearchPlan) -> Outcome:
        cached = self.journal.get(plan.key)
        if cached is not None:
            self.original = cached.extra.get("original", self.original) if cached.extra else self.original
            return cached
        c = self.c
        assert c.adapter is not None and c.samples is not None
        self.count += 1
        work = c.workdir(f"search-{self.count}")
        built = self._build(plan, work)
        values = self._score(built.path)
        value = values[self.metric]
        assert value is not None
        cmp = compare_files(c.adapter, c.src, built.path, self.timed, threads=self.backend.threads,
                            device=self.backend.device, workdir=work / "latency", runs=c.config.latency_runs,
                            seed=c.config.seed)
        built.comparison = cmp
        outcome = Outcome(metric=float(value), drop=self._drop(value), speedup=float(cmp.speedup),
                          low=float(cmp.low), high=float(cmp.high), faster=bool(cmp.faster),
                          extra={"original": self.original, "params": self._params(plan),
                                 "macs": self._macs(plan)})
        self.journal.put(plan.key, outcome)
        if outcome.drop <= self.drop + 1e-12 and outcome.faster and outcome.speedup > self.best_speedup:
            if self.best_key is not None:
                self._forget(self.best_key)
            self.best_key, self.best_speedup = plan.key, outcome.speedup
            self.built[plan.key] = built
        else:
            self._drop_files(built)
        shutil.rmtree(work / "latency", ignore_errors=True)
        return outcome

    def _build(self, plan: SearchPlan, work: Path) -> _Built:
        c = self.c
        assert c.adapter is not None and c.samples is not None
        decisions = _decisions(c, self.menus, plan, self.drop)
        factors = factorize(decisions, self.spectra)
        with map_errors("calibrating a plan failed", ConversionError):
            rec = recover(c.adapter, c.src, work / "calibrate", factors, c.per_sample, c.samples, c.eval_samples,
                          c.config)
        model, used = rec.model, rec.factors
        if model is None:  # calibration not kept (or recover="none"): the data-free factors
            with map_errors("rewriting the graph failed", ConversionError):
                model = c.adapter.apply(c.adapter.load(c.src, work / "load"), rewrites(factors))
            used = factors
        with map_errors("saving a plan's model failed", ConversionError):
            path = c.adapter.save(model, work / f"plan{c.adapter.suffix}")
        return _Built(model, list(used or []), rec, path, None)

    def _score(self, path: Path | None) -> dict[str, float | None]:
        c = self.c
        assert c.adapter is not None and path is not None
        with map_errors("scoring a plan's model failed", ConversionError):
            original, _ = c.adapter.runner(c.src, c.workdir("search-original"), c.config.threads, c.device)
            plan, _ = c.adapter.runner(path, path.parent / "score", c.config.threads, c.device)
            scorer = Scorer(num_classes=self.held.num_classes if self.held.has_labels else None)
            for batch, labels in self.held.batches(c.config.batch_size):
                scorer.add(original(batch), {"plan": plan(batch)}, labels)
        if self.metric not in ("auto", "rel_l2") and scorer.values("original")[self.metric] is None:
            raise InvalidOptionsError(f"search_metric {self.metric} cannot be measured on these outputs "
                                      f"(the metric here is {scorer.metric}); choose search_metric=rel_l2")
        if self.metric == "auto":  # the accuracy section's metric, now that the outputs are known
            self.metric = scorer.metric
        self.original = scorer.values("original")[self.metric]
        return scorer.values("plan")

    def _drop(self, value: float) -> float:
        if self.metric == "rel_l2":
            return float(value)
        return float((self.original if self.original is not None else 1.0) - value)

    def _params(self, plan: SearchPlan) -> int:
        assert self.c.before is not None
        saved = sum(m.params - ch.params for m, ch in zip(self.menus, plan.choices, strict=True) if ch is not None)
        return int(self.c.before.params - saved)

    def _macs(self, plan: SearchPlan) -> int | None:
        assert self.c.before is not None
        if self.c.before.macs is None:
            return None
        saved = 0
        for m, ch in zip(self.menus, plan.choices, strict=True):
            if ch is not None:
                if m.macs is None or ch.macs is None:
                    return None
                saved += m.macs - ch.macs
        return int(self.c.before.macs - saved)

    def _forget(self, key: tuple) -> None:
        built = self.built.pop(key, None)
        if built is not None:
            self._drop_files(built)

    @staticmethod
    def _drop_files(built: _Built) -> None:
        if built.path is not None:
            shutil.rmtree(built.path.parent, ignore_errors=True)
            built.path = None

    def finish(self, result: SearchResult) -> None:
        """Make sure the chosen plan has its model (rebuilt when its outcome came from the journal)."""
        chosen = result.chosen
        if chosen is None or chosen.plan.key in self.built:
            return
        self.count += 1
        self.built[chosen.plan.key] = self._build(chosen.plan, self.c.workdir(f"search-{self.count}"))


def _metric(config: ConversionConfig, held: Samples) -> str:
    if config.search_metric != "auto":
        if config.search_metric == "top1" and not held.has_labels:
            raise InvalidOptionsError("search_metric top1 needs labels in the held-out samples")
        return config.search_metric
    # the accuracy section's metric; without labels, agreement for class scores (decided on the first batch by
    # the scorer) — resolved in _Evaluator._score when the outputs have no class axis
    return "top1" if held.has_labels else "auto"


def _decisions(c: Conversion, menus: list[LayerMenu], plan: SearchPlan, drop: float) -> list[LayerDecision]:
    """The decisions of every layer for ``plan``: its choices converted, the other eligible layers kept, the
    ineligible ones with their reason."""
    chosen = plan.converted(menus)
    out = []
    for layer in c.layers:
        d = LayerDecision(layer=layer, status="skipped", reason="")
        why = eligibility(layer, c.config)
        menu = next((m for m in menus if m.name == layer.name), None)
        kept = menu.payload[1] if menu is not None else None
        if kept is not None:
            d.cost_before = d.cost_after = kept
        elif c.plan is not None:
            prior = next((p for p in c.plan.decisions if p.layer is layer), None)
            if prior is not None:
                d.cost_before = d.cost_after = prior.cost_before
        if why is not None:
            d.reason = why
        elif layer.name in chosen:
            ch = chosen[layer.name]
            opt = ch.payload
            cand = opt.candidate
            d.status, d.order, d.rank, d.lowering, d.energy = "converted", cand.order, cand.rank, cand.lowering, \
                cand.energy
            d.rel_weight_error = float(np.sqrt(max(0.0, 1.0 - cand.energy)))
            d.cost_after = opt.cost
            d.reason = (f"searched for max_accuracy_drop={drop:g}: rank {cand.rank} ({cand.order}) on the "
                        f"latency/error frontier; relative output error here {np.sqrt(ch.error):.3g}")
        else:
            d.reason = f"kept: the searched plan (max_accuracy_drop={drop:g}) keeps it"
        out.append(d)
    return out


def _options(menus: list[LayerMenu], plan: SearchPlan, order: str) -> list[str]:
    """CLI options that plan this again: each converted layer's rank, every other eligible layer excluded."""
    out = []
    orders = {ch.order for ch in plan.choices if ch is not None}
    for m, ch in zip(menus, plan.choices, strict=True):
        out.append(f"--layer-rank {m.name}={ch.rank}" if ch is not None else f"--exclude {m.name}")
    if len(orders) == 1 and order == "auto":
        out.append(f"--order {next(iter(orders))}")
    return out if any(ch is not None for ch in plan.choices) else []


def _apply(c: Conversion, menus: list[LayerMenu], result: SearchResult, ev: _Evaluator, drop: float,
           sens: dict[str, float], seconds: float) -> None:
    """Make the chosen plan (or the original) the conversion's, and write the report's ``search`` section."""
    assert c.adapter is not None and c.before is not None
    chosen = result.chosen
    rows = []
    for number, t in enumerate(result.trials, 1):
        extra = t.outcome.extra or {}
        is_chosen = chosen is not None and t is chosen
        rows.append(SearchPlanReport(
            plan=number, index=t.plan.index if t.plan.index >= 0 else None, uniform_rank=t.plan.uniform_rank,
            step=t.step, converted_layers=sum(ch is not None for ch in t.plan.choices),
            speedup=round(t.outcome.speedup, 4), speedup_low=round(t.outcome.low, 4),
            speedup_high=round(t.outcome.high, 4), params=int(extra.get("params") or c.before.params),
            macs=extra.get("macs"), metric=round(t.outcome.metric, 6), drop=round(t.outcome.drop, 6),
            meets=t.meets, faster=t.outcome.faster, chosen=is_chosen,
            why=_why(t, is_chosen, drop), predicted_error=round(t.plan.predicted_error, 6),
            seconds=round(t.seconds, 3), options=_options(menus, t.plan, c.config.order),
            layers={name: f"{ch.order} rank {ch.rank} {ch.lowering or 'split'}"
                    for name, ch in t.plan.converted(menus).items()}))
    metric = ev.metric if ev.metric != "auto" else "top1_agreement"
    section = Search(
        metric=metric, max_drop=drop, default=c.search_default,
        original=ev.original, budget_s=c.config.search_budget_s, spent_s=round(seconds, 3),
        stopped=result.stopped, frontier_plans=result.chain,
        chosen=None if chosen is None else result.trials.index(chosen) + 1, reason=result.reason,
        sensitivity={k: round(v, 6) for k, v in sens.items()}, resumed_plans=ev.journal.replayed,
        plans=rows)
    c.report_extra["search"] = section
    policy = {"kind": "max_accuracy_drop", "value": drop, "order": c.config.order,
              "lowering": c.config.lowering, "cost_model": c.cost_model.name,
              "default": section.default, "error": "measured on the held-out samples (search)"}
    if c.plan is not None and "latency" in c.plan.policy:
        policy["latency"] = c.plan.policy["latency"]
    if chosen is None:
        decisions = _decisions(c, menus, SearchPlan(0, (None,) * len(menus), 0.0, 0.0), drop)
        for d in decisions:
            if d.reason.startswith("kept: the searched plan"):
                d.reason = f"kept: {result.reason}"
        c.plan = Plan(decisions, policy)
        c.factors, c.after = [], c.before
        best = result.best_tried
        tried = (f"; the best plan tried: {best.outcome.speedup:.2f}× with {metric} {best.outcome.metric:.4g} "
                 f"(drop {best.outcome.drop:.4g})") if best is not None else ""
        c.warnings.append(f"max_accuracy_drop={drop:g}: {result.reason}{tried}")
        return
    built = ev.built[chosen.plan.key]
    c.plan = Plan(_decisions(c, menus, chosen.plan, drop), policy)
    names = {f.layer.name for f in built.factors}
    by_name = {d.layer.name: d for d in c.plan.decisions}
    # the report pairs decisions and factors by layer identity: the factors carry the decisions' layers
    c.factors = [replace(f, layer=by_name[f.layer.name].layer) for f in built.factors if f.layer.name in by_name]
    c.model = built.model
    c.after = c.adapter.stats(c.model, c.per_sample)
    rec = built.recovery
    c.report_extra["accuracy"] = rec.accuracy
    c.layer_extra.update(rec.layers)
    c.warnings.extend(rec.warnings)
    if built.comparison is not None:
        # verification reports this measurement of the same graph (recovery changes weights, not the graph)
        c.guarded = (frozenset(names), built.comparison)


def _why(t: Trial, chosen: bool, drop: float) -> str:
    o = t.outcome
    if chosen:
        return f"chosen: the fastest plan measured within the drop of {drop:g} and faster than the original"
    if not t.meets:
        return f"rejected: drop {o.drop:.4g} > {drop:g}"
    if not o.faster:
        return f"rejected: not measured faster than the original ({o.speedup:.2f}×, interval {o.low:.2f}–{o.high:.2f})"
    return "within the drop, but a faster plan was found"


class _Journal:
    """The measured plans' outcomes in ``checkpoint_dir/search.json`` (module docstring, "Resuming")."""

    def __init__(self, c: Conversion) -> None:
        self.path = c.checkpoint_dir / JOURNAL_NAME if c.checkpoint_dir is not None else None
        self.key = _fingerprint(c) if self.path is not None else ""
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.replayed = 0
        if self.path is not None and self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                if isinstance(doc, dict) and doc.get("key") == self.key and isinstance(doc.get("plans"), dict):
                    self.outcomes = doc["plans"]
            except (OSError, ValueError):  # a torn or foreign file: start over rather than trust it
                self.outcomes = {}

    def get(self, key: tuple) -> Outcome | None:
        row = self.outcomes.get(json.dumps(key))
        if row is None:
            return None
        try:
            out = Outcome(float(row["metric"]), float(row["drop"]), float(row["speedup"]), float(row["low"]),
                          float(row["high"]), bool(row["faster"]), extra=dict(row.get("extra") or {}))
        except (KeyError, TypeError, ValueError):
            return None
        self.replayed += 1
        return out

    def put(self, key: tuple, o: Outcome) -> None:
        if self.path is None:
            return
        self.outcomes[json.dumps(key)] = {"metric": o.metric, "drop": o.drop, "speedup": o.speedup, "low": o.low,
                                          "high": o.high, "faster": o.faster, "extra": o.extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as f:
            f.write(json.dumps({"key": self.key, "plans": self.outcomes}).encode())


def _fingerprint(c: Conversion) -> str:
    h = hashlib.blake2b(digest_size=16)
    for path in (c.src, c.data_path, c.eval_path):
        h.update(b"|")
        if path is not None and path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    # every option but the budget: a run resumed with more time replays what the first one measured
    options = c.config.model_dump(mode="json", exclude={"search_budget_s"})
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()
