"""The conversion stages this package runs: ``measure`` (time candidates, plan on measured latency), ``guard``
(the default policy's never-slower check of the assembled model, before any recovery) and the latency half of
``verify`` (the whole model against the original, throughput).

Both read and update the pipeline's ``Conversion``; the pipeline lists them in its ``STEPS``.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np

from .._errors import ConversionError, SepconvError, VerificationError, map_errors
from .._report import Latency
from .._stages import StageProgress
from ..data import Samples
from ..evaluation import batches, random_inputs, verify
from ..formats import Timeable
from ..latency import (
    Backend,
    CandidateTimer,
    Comparison,
    LatencyModel,
    TimingCache,
    backend_for,
    batched,
    compare_files,
    describe,
    latency_report,
    never_slower,
    time_interleaved,
    timed_runner,
)
from ..planning import LatencyCostModel, factorize, macs_of, plan, rewrites
from ..recovery import held_out
from ._record import Conversion, StageOrderError

__all__ = ["guard_step", "measure_step", "verify_step"]


def _backend(c: Conversion) -> Backend:
    return backend_for(c.adapter, c.device, c.config.threads)


def _inputs(c: Conversion) -> tuple[dict[str, np.ndarray], str]:
    cfg = c.config
    if c.user_inputs is not None:
        others = random_inputs([s for s in c.specs if s.name not in c.user_inputs], c.shapes, cfg.seed)
        return {**others, **c.user_inputs}, "user"
    return random_inputs(c.specs, c.shapes, cfg.seed), "random"


def _batch(c: Conversion) -> int:
    """The batch latency is planned for and measured at: the verification inputs' batch, at most ``batch_size``
    (verification times its first batch)."""
    first = next(iter(c.shapes.values()), None)
    return min(int(first[0]), c.config.batch_size) if first else 1


def _timed_inputs(inputs: dict[str, np.ndarray], c: Conversion) -> dict[str, np.ndarray]:
    return next(batches(inputs, c.config.batch_size))


def measure_step(c: Conversion, progress: StageProgress) -> None:
    """Time every eligible layer's candidates in context and plan on them (the ``measure`` stage)."""
    cfg = c.config
    total_ms = None
    if c.problems:
        info = {"measured": False, "reason": f"input shapes unknown ({c.problems[0]})"}
    elif not isinstance(c.adapter, Timeable):
        info = {"measured": False, "reason": f"candidates cannot be timed in {c.adapter.name} format yet"}
    else:
        backend = _backend(c)
        batch = _batch(c)
        timer = CandidateTimer(c.adapter, backend, batch, TimingCache(backend), seed=cfg.seed, model=c.model,
                               input_shapes={name: (batch, *dims[1:]) for name, dims in c.per_sample.items()})
        model = LatencyModel(timer, macs_of, cfg.latency_budget_s, progress=progress.update)
        c.cost_model = LatencyCostModel(model, cfg, counts=c.cost_model)
        if cfg.target_latency is not None:
            total_ms = _model_ms(c, backend)
        info = {"measured": True}
    c.plan = plan(c.layers, cfg, c.cost_model, total_params=c.before.params, total_macs=c.before.macs,
                  spectra=c.spectra, total_latency_ms=total_ms)
    if isinstance(c.cost_model, LatencyCostModel):
        info.update(c.cost_model.model.summary.as_dict())
        if total_ms is not None:
            info["original_model_ms"] = round(total_ms, 4)
    c.plan.policy["latency"] = info
    c.factors = factorize(c.plan.decisions, c.spectra)
    c.spectra.clear()


def _model_ms(c: Conversion, backend: Backend) -> float:
    """The original model's median latency (for ``target_latency``)."""
    inputs = _timed_inputs(_inputs(c)[0], c)
    with map_errors("the original model could not be timed", VerificationError, limit=400, type_name=False):
        run = timed_runner(c.adapter, c.src, c.workdir("measure-model"), backend.threads, backend.device, inputs)
        (t,) = time_interleaved([run], min_runs=5, max_runs=max(5, c.config.latency_runs // 2), warmup=2)
    return t.p50_ms


def guard_step(c: Conversion, progress: StageProgress) -> None:
    """The never-slower check (``_guard``) of the default policy: the assembled model against the original,
    before any recovery, so that calibration and fine-tuning work on — and the accuracy section describes — only
    the layers that are kept. Speed does not depend on the weights, so the data-free model decides it."""
    if not c.factors or not isinstance(c.cost_model, LatencyCostModel):
        return  # nothing converted, or planned on counts (the measure stage could not time): nothing to guard
    backend = _backend(c)
    timed = _timed_inputs(_inputs(c)[0], c)
    with map_errors("saving the model to measure it failed", ConversionError):
        c.saved = c.adapter.save(c.model, c.staging / f"model-guard{c.adapter.suffix}")
    rounds = 0

    def measure(names: list[str]) -> Comparison:
        nonlocal rounds
        if frozenset(names) != frozenset(f.layer.name for f in c.factors):
            _reassemble(c, names)  # writes another file: measure the current one
        current = c.saved
        if current is None:
            raise ConversionError("internal error: the guard has no saved model to measure")
        cmp = compare_files(c.adapter, c.src, current, timed, threads=backend.threads, device=backend.device,
                            workdir=c.workdir(f"guard-{rounds}"), runs=c.config.latency_runs, seed=c.config.seed)
        rounds += 1
        progress.update(min(0.9, 0.45 * rounds))
        return cmp

    outcome = never_slower([f.layer.name for f in c.factors], _gains(c), measure)
    c.plan.policy["never_slower"] = {"rounds": outcome.rounds, "reverted_layers": len(outcome.reverted)}
    _mark_reverted(c, outcome.reverted)
    if outcome.comparison is None:  # never_slower measures at least once
        raise ConversionError("internal error: the never-slower check measured nothing")
    if outcome.unchanged:
        _reassemble(c, [])
        c.warnings.append(
            f"the converted model measured {describe(outcome.comparison)} against the original on "
            f"{backend.label}, {backend.threads} thread(s), batch {_batch(c)}: not faster, so the original is "
            "returned unchanged (the default policy is never slower; choose a rank policy to convert anyway)")
        _drop_staged(c)
        return
    if outcome.reverted:
        c.warnings.append(f"{len(outcome.reverted)} layer(s) reverted after measuring the whole model: "
                          f"with them it was not faster; without them {describe(outcome.comparison)}")
    # The kept graph was measured: recovery changes weights, not the graph, so verification reports this
    # measurement of it instead of timing the same graph again.
    c.guarded = (frozenset(f.layer.name for f in c.factors), outcome.comparison)
    _drop_staged(c)


def _drop_staged(c: Conversion) -> None:
    """Remove the file the check measured: the save stage writes the model that is returned."""
    if c.saved is not None:
        c.saved.unlink(missing_ok=True)
        c.saved = None


def verify_step(c: Conversion, progress: StageProgress) -> None:
    """Fidelity of the saved model against the original, then its latency: measured, or — when the never-slower
    check (``guard_step``) measured this same graph — that measurement."""
    cfg = c.config
    saved = c.saved
    if saved is None:
        raise StageOrderError("internal error: the verify stage ran before the model was saved")
    inputs, kind = _inputs(c)
    backend = _backend(c)
    held = _fidelity_samples(c) if kind == "random" else None
    chunks = None if held is None else (batch for batch, _ in held.batches(cfg.batch_size))
    c.fidelity, _ = verify(c.adapter, c.src, saved, inputs, kind if held is None else "held_out", cfg,
                           c.workdir("verify"), c.device, latency=False, chunks=chunks)
    if not c.factors:
        c.latency = None  # the file is the original, byte for byte: there is nothing to compare latency with
        return
    progress.update(0.3)
    timed = _timed_inputs(inputs, c)
    names = frozenset(f.layer.name for f in c.factors)
    if c.guarded is not None and c.guarded[0] == names:
        cmp = c.guarded[1]
    else:
        cmp = compare_files(c.adapter, c.src, saved, timed, threads=backend.threads, device=backend.device,
                            workdir=c.workdir("latency"), runs=cfg.latency_runs, seed=cfg.seed)
    c.latency = _latency(c, cmp, timed, backend)


#: Fidelity on the user's samples reads at most this many held-out samples (one batch in memory at a time).
FIDELITY_SAMPLES = 256


def _fidelity_samples(c: Conversion) -> Samples | None:
    """Without ``--inputs``, the user's held-out samples — ``--eval``'s, or those ``--data`` holds out from
    calibration (the same seeded split) — at most ``FIDELITY_SAMPLES``; None without samples."""
    if c.eval_samples is not None:
        held = c.eval_samples
    elif c.samples is not None:
        if c.samples.count < 2:
            return c.samples
        held = held_out(c.samples, None, c.config.holdout, c.config.seed)[1]
    else:
        return None
    return held if held.count <= FIDELITY_SAMPLES else held.subset(range(FIDELITY_SAMPLES))


def _gains(c: Conversion) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for d in c.plan.decisions:
        if d.converted:
            a, b = d.cost_before.latency_ms, d.cost_after.latency_ms
            out[d.layer.name] = None if a is None or b is None or a <= 0 else 1.0 - b / a
    return out


def _mark_reverted(c: Conversion, reverted: dict[str, str]) -> None:
    for d in c.plan.decisions:
        if d.layer.name in reverted:
            d.status, d.reason, d.cost_after = "skipped", reverted[d.layer.name], d.cost_before


def _reassemble(c: Conversion, names: list[str]) -> None:
    """Rebuild the converted file from the original with only ``names`` converted (none: the original file)."""
    keep = [f for f in c.factors if f.layer.name in set(names)]
    old = c.saved
    if old is None:
        raise ConversionError("internal error: the guard reassembled a model it had not saved")
    step = len(list(c.staging.glob("model*")))
    if not keep:
        c.factors, c.after = [], c.before
        c.saved = c.staging / f"model-original{c.adapter.output_suffix(c.src)}"
        shutil.copyfile(c.src, c.saved)
    else:
        model = c.adapter.load(c.src, c.workdir(f"guard-load-{step}"))
        layers = {lay.name: lay for lay in c.adapter.find_convs(model, c.per_sample)}
        try:
            keep = [replace(f, layer=layers[f.layer.name]) for f in keep]
        except KeyError as e:
            raise ConversionError(f"reverting layers failed: layer {e} not found on reloading") from None
        with map_errors("rewriting the graph failed", ConversionError):
            model = c.adapter.apply(model, rewrites(keep))
        c.model, c.factors = model, keep
        c.after = c.adapter.stats(model, c.per_sample)
        c.saved = c.adapter.save(model, c.staging / f"model-{step}{c.adapter.suffix}")
    if old != c.saved:
        old.unlink(missing_ok=True)


def _latency(c: Conversion, cmp: Comparison, inputs: dict[str, np.ndarray], backend: Backend) -> Latency:
    """The report's latency section, with throughput at ``throughput_batch`` when asked."""
    cfg = c.config
    tp = None
    if cfg.throughput_batch is not None and c.adapter is not None and c.saved is not None:
        try:
            tp = compare_files(c.adapter, c.src, c.saved, batched(inputs, cfg.throughput_batch),
                               threads=backend.threads, device=backend.device, workdir=c.workdir("throughput"),
                               runs=max(5, cfg.latency_runs // 3), seed=cfg.seed)
        except SepconvError:
            raise
        except Exception as e:  # a model with a fixed batch dim cannot run a larger batch
            c.warnings.append(f"throughput at batch {cfg.throughput_batch} not measured: the models did not run "
                              f"at that batch ({type(e).__name__})")
    return latency_report(cmp, backend, _batch(c), tp, cfg.throughput_batch if tp is not None else None)
