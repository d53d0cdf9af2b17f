"""``convert``: the one entry point that runs a conversion end to end.

Data flows one way: file → format adapter (load, find convs) → plan (decisions) → factorise → rewrite (adapter)
→ save → verify (the saved files, on the real runtime) → report. Each step is its own module; this one only runs
the stages of the table in ``_stages`` in order — each a function of a ``Conversion`` (what the stages share)
listed in ``STEPS`` with the condition under which it runs — and publishes the result. It has no web, job or
storage code.

Adding a stage (calibration, fine-tuning, latency measurement) is one entry in ``STEPS``: a function that reads
and updates the ``Conversion`` and reports progress through the ``StageProgress`` it is handed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._config import ConversionConfig
from .._device import resolve_device
from .._errors import ConversionError, InvalidOptionsError, SepconvError, map_errors
from .._report import FinetuneReport, Report
from .._stages import STAGE_NAMES, ProgressCallback, StageClock, StageProgress
from ..data import Samples, image_spec_from, load_samples
from ..evaluation import load_user_inputs, resolve_input_shapes
from ..formats import Tappable, Timeable, detect_format, format_info, trusting
from ..planning import (
    CountingCostModel,
    OutputErrorCostModel,
    OutputErrors,
    Spectra,
    eligibility,
    factorize,
    measure_output_errors,
    orders,
    plan,
    plans_on_output_error,
    rewrites,
)
from ..recovery import held_out, recover
from ..report import build_report
from ._measure import guard_step, measure_step, verify_step
from ._record import Conversion, StageOrderError
from ._search import resolve_policy, search_step, searching

__all__ = ["STEPS", "Conversion", "ConversionResult", "ProgressCallback", "convert"]

log = logging.getLogger("sepconv")


@dataclass
class ConversionResult:
    """The outcome of ``convert``.

    Attributes:
        report: the report (see ``Report``).
        format: the model's format (a name from ``converter.formats.format_names()``).
        output_path: where the converted model was written, when ``output`` was given.
        data: the converted model's bytes, when no ``output`` was given.
    """

    report: Report
    format: str
    output_path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def to_bytes(self) -> bytes:
        """The converted model file's bytes."""
        if self.data is not None:
            return self.data
        assert self.output_path is not None
        return self.output_path.read_bytes()

    def save(self, path: str | Path) -> Path:
        """Write the converted model to ``path`` and return it."""
        path = Path(path)
        if self.output_path is not None and self.output_path.resolve() != path.resolve():
            shutil.copyfile(self.output_path, path)
        elif self.data is not None:
            path.write_bytes(self.data)
        return path


def _load(c: Conversion, _: StageProgress) -> None:
    c.adapter = adapter = detect_format(c.src)
    runtime = adapter.runtime()[0] if isinstance(adapter, Timeable) else "onnxruntime"
    c.device = resolve_device(c.config.device, runtime)  # once, for every stage
    c.model = adapter.load(c.src, c.workdir("load"))
    c.specs = adapter.input_specs(c.model)
    c.user_inputs = load_user_inputs(c.inputs_path, c.specs) if c.inputs_path is not None else None
    _load_samples(c)
    c.shapes, c.problems = resolve_input_shapes(c.specs, c.config, c.user_inputs)
    c.shapes_from_data = _shapes_from_samples(c)
    if c.problems and (c.config.verify or c.config.target_macs is not None):
        need = "verification" if c.config.verify else "a MAC budget"
        raise InvalidOptionsError(f"{need} needs concrete input shapes: {c.problems[0]}")


def _shapes_from_samples(c: Conversion) -> list[str]:
    """Inputs whose shapes neither the model, ``--inputs`` nor ``--input-shape`` fix (symbolic dims) take the
    shape of the first sample of ``--data`` (or ``--eval``), batch 1, so that MACs are counted (and the model
    verified) at the shapes it will really see; returns those inputs' names (the report says so)."""
    samples = c.samples if c.samples is not None else c.eval_samples
    missing = [s.name for s in c.specs if s.name not in c.shapes]
    if samples is None or not missing or samples.count == 0:
        return []
    first, _ = next(iter(samples.batches(1)))
    taken = {name: first[name] for name in missing if name in first}
    if not taken:
        return []
    c.shapes, c.problems = resolve_input_shapes(c.specs, c.config, {**(c.user_inputs or {}), **taken})
    return sorted(taken)


def _load_samples(c: Conversion) -> None:
    """The user's samples, checked against the model's inputs before any long work starts."""
    cfg = c.config
    if c.data_path is None and cfg.recover in ("calibrate", "finetune"):
        raise InvalidOptionsError(f"recover={cfg.recover} needs samples of the model's inputs: give --data")
    image = image_spec_from(cfg)
    c.samples = (load_samples(c.data_path, c.specs, image_spec=image, what="data")
                 if c.data_path is not None else None)
    c.eval_samples = (load_samples(c.eval_path, c.specs, image_spec=image, what="eval")
                      if c.eval_path is not None else None)


def _plan(c: Conversion, within: StageProgress) -> None:
    c.layers = c.adapter.find_convs(c.model, c.per_sample)
    c.before = c.adapter.stats(c.model, c.per_sample)
    if c.samples is not None and plans_on_output_error(c.config) and isinstance(c.adapter, Tappable):
        c.cost_model = OutputErrorCostModel(c.cost_model, _output_errors(c, within))
    if c.config.measure:
        return  # the measure stage plans, on measured latency
    c.plan = plan(c.layers, c.config, c.cost_model, total_params=c.before.params, total_macs=c.before.macs,
                  spectra=c.spectra)
    c.factors = factorize(c.plan.decisions, c.spectra)
    c.spectra.clear()


def _output_errors(c: Conversion, within: StageProgress) -> OutputErrors:
    """Each eligible layer's output error at every rank on the calibration samples (``_outerr``), for a rank
    policy that trades error (a budget, ``rank``). The samples are those calibration will use: the held-out
    ones are not looked at."""
    cfg = c.config
    if c.samples is None or not isinstance(c.adapter, Tappable):  # _plan's condition
        raise StageOrderError("internal error: output errors measured without samples or a tap")
    calib = held_out(c.samples, c.eval_samples, cfg.holdout, cfg.seed)[0].head(cfg.calibration_samples)
    layers = [layer for layer in c.layers if eligibility(layer, cfg) is None]
    with map_errors("measuring the layers' output errors failed", ConversionError):
        tap = c.adapter.tap(c.model, layers, c.workdir("plan-tap"), cfg.threads)
        return measure_output_errors(tap, layers, calib, c.spectra, orders(cfg), batch_size=cfg.batch_size,
                                     seed=cfg.seed, progress=within.update)


def _rewrite(c: Conversion, _: StageProgress) -> None:
    if not c.factors:
        c.after = c.before
        return
    with map_errors("rewriting the graph failed", ConversionError):
        c.model = c.adapter.apply(c.model, rewrites(c.factors))
    c.after = c.adapter.stats(c.model, c.per_sample)


def _calibrate(c: Conversion, within: StageProgress) -> None:
    data = c.samples if c.samples is not None else c.eval_samples
    if data is None:  # the step's condition (_has_samples) guarantees one
        raise StageOrderError("internal error: the calibrate stage ran without samples")
    cfg = c.config if c.samples is not None else c.config.model_copy(update={"recover": "none"})
    with map_errors("calibration failed", ConversionError):
        out = recover(c.adapter, c.src, c.workdir("calibrate"), c.factors, c.per_sample, data,
                      c.eval_samples if c.samples is not None else None, cfg, within.update,
                      calibration_data=c.samples is not None)
    c.report_extra["accuracy"] = out.accuracy
    c.layer_extra.update(out.layers)
    c.warnings.extend(out.warnings)
    if out.model is not None and out.factors is not None:  # (recover sets both or neither)
        c.model, c.factors = out.model, out.factors
        c.after = c.adapter.stats(c.model, c.per_sample)


def _save(c: Conversion, _: StageProgress) -> None:
    if c.factors:
        c.saved = c.adapter.save(c.model, c.staging / f"model{c.adapter.suffix}")
    else:
        # Nothing to convert: the user gets their file back byte for byte.
        c.saved = c.staging / f"model{c.adapter.output_suffix(c.src)}"
        shutil.copyfile(c.src, c.saved)


def _finetune(c: Conversion, within: StageProgress) -> None:
    """Fine-tune the rewritten (and calibrated) model by distillation from the original
    (``converter.recovery.finetune``) on the calibration split of the samples, early-stopping on the held-out one;
    the trained model replaces ``c.model``, so the save stage writes it as any converted model."""
    from ..recovery.finetune import FinetuneOptions, finetune

    if c.samples is None:  # config validation makes recover=finetune need --data
        raise StageOrderError("internal error: the finetune stage ran without samples")
    if not c.factors:
        c.warnings.append("fine-tuning skipped: no layer was converted")
        return
    train, held, _ = held_out(c.samples, c.eval_samples, c.config.holdout, c.config.seed)
    folder = c.workdir("finetune")
    with map_errors("saving the model for fine-tuning failed", ConversionError):
        student = c.adapter.save(c.model, folder / f"student{c.adapter.suffix}")
    result = finetune(student, c.src, folder / f"tuned{student.suffix}", fmt=c.adapter.name, train=train,
                      holdout=held, options=FinetuneOptions.from_config(c.config, c.device),
                      workdir=c.workdir("finetune-work"), checkpoint_dir=c.checkpoint_dir,
                      progress=within.update, threads=c.config.threads)
    if result.improved:
        c.model = c.adapter.load(result.path, c.workdir("finetune-load"))
    c.report_extra["finetune"] = FinetuneReport(
        metric=result.metric, before=round(result.before, 6), after=round(result.after, 6), epochs=result.epochs,
        stopped=result.stopped, seconds=result.seconds, resumed=result.resumed, device=result.device,
        scope=result.scope, train_samples=train.count, holdout_samples=held.count, history=result.history)
    accuracy = c.report_extra.get("accuracy")
    if accuracy is None:
        return
    if result.improved:
        # The fine-tuned file is what gets written: score it on the accuracy section's own held-out samples and
        # metric (fine-tuning may have early-stopped on another one, e.g. agreement when the data has no labels).
        values = _score_file(c, result.path, held)
        update: dict[str, Any] = {"finetuned": values[accuracy.metric], "kept": "finetuned"}
        for key in ("top5", "top1_agreement", "rel_l2"):
            stage_values = getattr(accuracy, key)
            if stage_values is not None and values[key] is not None:
                update[key] = stage_values.model_copy(update={"finetuned": values[key]})
        c.report_extra["accuracy"] = accuracy.model_copy(update=update)
    elif accuracy.metric == result.metric:
        # Not kept; the same held-out samples and metric as the accuracy section's other stages.
        c.report_extra["accuracy"] = accuracy.model_copy(update={"finetuned": round(result.after, 6)})


def _score_file(c: Conversion, path: Path, samples: Samples) -> dict[str, float | None]:
    """Accuracy values of the model file ``path`` against the original on ``samples``, batch by batch, each
    model on its format's own runtime."""
    from ..evaluation import Scorer

    with map_errors("scoring the fine-tuned model failed", ConversionError):
        original, _ = c.adapter.runner(c.src, c.workdir("score-original"), c.config.threads, c.device)
        tuned, _ = c.adapter.runner(path, c.workdir("score-finetuned"), c.config.threads, c.device)
        scorer = Scorer(num_classes=samples.num_classes if samples.has_labels else None)
        for batch, labels in samples.batches(c.config.batch_size):
            scorer.add(original(batch), {"finetuned": tuned(batch)}, labels)
    return scorer.values("finetuned")


def _always(_: Conversion) -> bool:
    return True


def _has_samples(c: Conversion) -> bool:
    # With --eval alone the stage only measures accuracy; with --recover none, too.
    return c.data_path is not None or c.eval_path is not None


#: A stage's code: reads and updates the conversion, reports progress within the stage.
Step = Callable[[Conversion, StageProgress], None]

#: The code of each stage of ``_stages.STAGES`` and whether it runs, decided before the first stage from the
#: options and the files given (``Conversion.config``, ``inputs_path``…). A stage of the table without an entry
#: here does not run.
STEPS: dict[str, tuple[Callable[[Conversion], bool], Step]] = {
    "load": (_always, _load),
    "plan": (_always, _plan),
    "measure": (lambda c: c.config.measure, measure_step),
    # max_accuracy_drop (the default with --data): the search assembles, recovers and times the plans itself
    "search": (searching, search_step),
    "rewrite": (lambda c: not searching(c), _rewrite),
    # the default policy's never-slower check: needs the whole models measured, and measured planning
    "guard": (lambda c: c.config.verify and c.config.measure and c.config.default_policy, guard_step),
    "calibrate": (lambda c: _has_samples(c) and not searching(c), _calibrate),
    "finetune": (lambda c: c.config.recover == "finetune", _finetune),
    "save": (_always, _save),
    "verify": (lambda c: c.config.verify, verify_step),
}


def convert(
    model: str | Path | bytes,
    output: str | Path | None = None,
    *,
    config: ConversionConfig | None = None,
    inputs: str | Path | None = None,
    data: str | Path | None = None,
    eval: str | Path | None = None,
    progress: ProgressCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    sandbox: bool | None = None,
    **options: Any,
) -> ConversionResult:
    """Convert a CNN's eligible convolutions into depthwise-separable pairs and report on the result.

    Args:
        model: path to a model file (ONNX, an ONNX ``.zip`` with external data, TorchScript…) or its bytes. The
            format is detected from the content.
        output: where to write the converted model (same format as the input; an ONNX model that came with
            external data is written as a ``.zip``). Without it the bytes are returned in ``result.data``.
        config: options as a ``ConversionConfig``; keyword ``options`` (the same names) override it.
        inputs: a ``.npz`` of verification inputs (an ``inputs`` array, or arrays named like the model's inputs).
        data: samples of the model's real inputs (a ``.npz``, optionally with ``labels``, or an image folder with
            the ``image_*`` options): calibration recovers accuracy on them (``recover``), and the report's
            ``accuracy`` is measured on held-out samples (README, "Accuracy recovery").
        eval: held-out samples for the accuracy report (same layout); without it ``holdout`` of ``data`` is
            held out.
        progress: called as ``progress(stage, fraction)`` while the conversion runs (``progress(stage, fraction,
            detail)`` if it takes a third parameter); see ``converter._stages``.
        checkpoint_dir: where a fine-tune (``recover="finetune"``) keeps its checkpoint; run again with the same
            folder and inputs, an interrupted fine-tune resumes instead of starting over.
        sandbox: where a model whose format carries code (TorchScript, ``.pt2``) is loaded and converted. None
            (the default): unless ``trust_model``, in the service's confined child process (Landlock, socket
            filter, PID namespace, memory/time limits; ``service.jobs.local``), as the CLI does; refused on a
            kernel without Landlock unless ``SEPCONV_ALLOW_UNCONFINED_CODE=1``. False: in this process (for a
            caller that confines itself, like the service's sandbox). Formats without code always run here.
        **options: any ``ConversionConfig`` field, e.g. ``rank=2``, ``order="dw-pw"``, ``device="cuda"``.

    Returns:
        The report and the converted model.

    Raises:
        InvalidOptionsError: unknown, out-of-range or contradictory options, or shapes/inputs that do not fit.
        UnsupportedModelError: the input is not a model sepconv reads.
        ConversionError: a layer could not be rewritten or the result not saved.
        VerificationError: a model would not run on the verification inputs.
    """
    asked = ConversionConfig.from_options(config, **options)
    cfg, search_default = resolve_policy(asked, data is not None)
    with tempfile.TemporaryDirectory(prefix="sepconv-") as tmp:
        work = Path(tmp)
        if isinstance(model, bytes | bytearray | memoryview):
            src = work / "input.model"
            src.write_bytes(bytes(model))
        else:
            src = Path(model)
            if not src.is_file():
                raise InvalidOptionsError(f"model file not found: {src}")
        dest = Path(output) if output is not None else None
        if dest is not None and dest.resolve() == src.resolve():
            raise InvalidOptionsError("the output path is the input model; choose another")
        if (SANDBOX_BY_DEFAULT if sandbox is None else sandbox) and not cfg.trust_model and _carries_code(src):
            from service.jobs.local import convert_confined  # the same distribution; loaded only for such models

            # the options as asked: the confined conversion resolves the default policy itself
            return convert_confined(src, dest, config=asked, inputs=_path(inputs), data=_path(data),
                                    eval=_path(eval), checkpoint_dir=_path(checkpoint_dir), progress=progress)
        conversion = Conversion(cfg, src, dest, Path(inputs) if inputs is not None else None, work,
                                data_path=Path(data) if data is not None else None,
                                eval_path=Path(eval) if eval is not None else None,
                                checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
                                search_default=search_default)
        with trusting(cfg.trust_model):  # every load of the user's file, verification's and timing's included
            return _run(conversion, progress)


#: Whether ``convert(sandbox=None)`` confines code-carrying formats (the test suite turns it off for speed and
#: runs the confined path in its own tests).
SANDBOX_BY_DEFAULT = True


def _carries_code(src: Path) -> bool:
    try:
        return format_info(detect_format(src).name).carries_code
    except SepconvError:
        return False  # undetected: the in-process load says what is wrong, and loads nothing


def _path(p: str | Path | None) -> Path | None:
    return Path(p) if p is not None else None


def _run(c: Conversion, progress: ProgressCallback | None) -> ConversionResult:
    active = [name for name in STAGE_NAMES if name in STEPS and STEPS[name][0](c)]
    clock = StageClock(progress, active)
    # Staged next to the destination (same file system, so the final move is a rename) and moved there only
    # after verification: a failed conversion never leaves a file at the destination.
    c.staging = (Path(tempfile.mkdtemp(prefix=".sepconv-", dir=_mkdir(c.dest.parent))) if c.dest
                 else c.workdir("out"))
    c.cost_model, c.spectra = CountingCostModel(), Spectra()
    try:
        for name in active:
            c.stage = name
            with clock.stage(name) as within:
                STEPS[name][1](c, within)
        result = _publish(c, _report(c, clock.seconds))
    finally:
        if c.dest is not None:
            shutil.rmtree(c.staging, ignore_errors=True)
    clock.finish()
    return result


def _report(c: Conversion, seconds: dict[str, float]) -> Report:
    return build_report(
        format=c.adapter.name, before=c.before, after=c.after or c.before,
        file_bytes=(c.src.stat().st_size, c.saved.stat().st_size if c.saved is not None else 0),
        policy={**c.plan.policy, **({"input_shapes_from_data": c.shapes_from_data} if c.shapes_from_data else {})},
        decisions=c.plan.decisions, factors=c.factors, shapes=c.shapes, problems=c.problems,
        fidelity=c.fidelity, latency=c.latency, seconds=seconds, extra=c.report_extra, warnings=c.warnings,
        layer_extra=c.layer_extra)


def _publish(c: Conversion, report: Report) -> ConversionResult:
    result = ConversionResult(report=report, format=c.adapter.name)
    if c.saved is None:
        raise StageOrderError("internal error: nothing was saved")
    if c.dest is None:
        result.data = c.saved.read_bytes()
    else:
        # Where the adapter wrote another kind of file than its usual one (an ONNX model with external data
        # travels as a .zip), say so in the name rather than hide it.
        odd = c.saved.suffix != c.adapter.suffix and c.dest.suffix != c.saved.suffix
        final = c.dest.with_suffix(c.saved.suffix) if odd else c.dest
        os.replace(c.saved, final)
        result.output_path = final
    return result


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


