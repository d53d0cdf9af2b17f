"""``convert``: the one entry point that runs a conversion end to end.

Data flows one way: file → format adapter (load, find convs) → plan (which layers, which order and rank) →
rewrite (adapter) → save → verify (the saved files, on the real runtime) → report. Each step is its own module;
this one only sequences them, times them and reports progress. It has no web, job or storage code.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._config import ConversionConfig
from ._decompose import lower
from ._errors import ConversionError, InvalidOptionsError, SepconvError, one_line
from ._graphcheck import trusting
from ._ortlog import quiet_onnxruntime
from ._plan import LayerDecision, plan_layers
from ._report import Counts, LayerReport, Report, Timings
from ._verify import load_user_inputs, random_inputs, resolve_input_shapes, verify
from ._version import __version__
from .formats import Rewrite, detect_format

__all__ = ["ConversionResult", "ProgressCallback", "convert"]

log = logging.getLogger("sepconv")

#: ``progress(stage, fraction)``: stage is one of load, plan, rewrite, save, verify, done; fraction in [0, 1]
#: is the whole conversion's progress.
ProgressCallback = Callable[[str, float], None]

# Share of the progress bar each stage ends at (verification dominates when it runs).
_STAGE_END = {"load": 0.1, "plan": 0.4, "rewrite": 0.5, "save": 0.6, "verify": 1.0}


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


def convert(
    model: str | Path | bytes,
    output: str | Path | None = None,
    *,
    config: ConversionConfig | None = None,
    inputs: str | Path | None = None,
    progress: ProgressCallback | None = None,
    device: str = "cpu",
    **options: Any,
) -> ConversionResult:
    """Convert a CNN's eligible convolutions into depthwise-separable pairs and report on the result.

    Args:
        model: path to an ONNX file, an ONNX ``.zip`` with external data, or a TorchScript file; or its bytes.
            The format is detected from the content.
        output: where to write the converted model (same format as the input; an ONNX model that came with
            external data is written as a ``.zip``). Without it the bytes are returned in ``result.data``.
        config: options as a ``ConversionConfig``; keyword ``options`` (the same names) override it.
        inputs: a ``.npz`` of verification inputs (an ``inputs`` array, or arrays named like the model's inputs).
        progress: called as ``progress(stage, fraction)`` while the conversion runs.
        device: ``cpu`` or ``cuda`` for the verification runs.
        **options: any ``ConversionConfig`` field, e.g. ``rank=2``, ``order="dw-pw"``, ``exclude=["head*"]``.

    Returns:
        The report and the converted model.

    Raises:
        InvalidOptionsError: unknown, out-of-range or contradictory options, or shapes/inputs that do not fit.
        UnsupportedModelError: the input is not a model sepconv reads.
        ConversionError: a layer could not be rewritten or the result not saved.
        VerificationError: a model would not run on the verification inputs.
    """
    cfg = ConversionConfig.from_options(config, **options)
    quiet_onnxruntime()  # before any session exists: its log lines never reach the terminal raw
    notify = _Progress(progress)
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
        return _run(src, dest, cfg, Path(inputs) if inputs is not None else None, notify, device, work)


class _Progress:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.start = 0.0

    def __call__(self, stage: str, within: float = 0.0) -> None:
        if self.callback is None:
            return
        end = _STAGE_END.get(stage, 1.0)
        begin = max([v for v in _STAGE_END.values() if v < end], default=0.0)
        self.callback(stage, round(begin + (end - begin) * min(max(within, 0.0), 1.0), 4))


def _run(
    src: Path,
    dest: Path | None,
    cfg: ConversionConfig,
    inputs_path: Path | None,
    notify: _Progress,
    device: str,
    work: Path,
) -> ConversionResult:
    t0 = time.perf_counter()
    notify("load")
    adapter = detect_format(src)
    with trusting(cfg.trust_model):
        model = adapter.load(src, _mkdir(work / "load"))
    specs = adapter.input_specs(model)
    user_inputs = load_user_inputs(inputs_path, specs) if inputs_path is not None else None
    shapes, problems = resolve_input_shapes(specs, cfg, user_inputs)
    if problems and (cfg.verify or cfg.target_macs is not None):
        need = "verification" if cfg.verify else "a MAC budget"
        raise InvalidOptionsError(f"{need} needs concrete input shapes: {problems[0]}")
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    notify("plan")
    # Counts are per sample: MACs at batch 1 whatever batch the verification inputs have.
    per_sample = {name: (1, *dims[1:]) for name, dims in shapes.items() if dims}
    layers = adapter.find_convs(model, per_sample)
    before = adapter.stats(model, per_sample)
    plan = plan_layers(layers, cfg, total_params=before.params, total_macs=before.macs)
    decisions = plan.decisions
    converted = [d for d in decisions if d.converted]
    notify("rewrite")
    rewrites = [Rewrite(d.layer, lower(d.decomposition, cfg.lowering)) for d in converted]
    if rewrites:
        model = _wrap(lambda: adapter.apply(model, rewrites), "rewriting the graph")
        after = adapter.stats(model, per_sample)
    else:
        after = before
    t_convert = time.perf_counter() - t1

    # Staged next to the destination (same file system, so the final move is a rename) and moved there only
    # after verification: a failed conversion never leaves a file at the destination.
    stage = Path(tempfile.mkdtemp(prefix=".sepconv-", dir=_mkdir(dest.parent))) if dest else _mkdir(work / "out")
    try:
        t2 = time.perf_counter()
        notify("save")
        if rewrites:
            saved = adapter.save(model, stage / f"model{adapter.suffix}")
        else:
            # Nothing to convert: the user gets their file back byte for byte.
            saved = stage / f"model{adapter.output_suffix(src)}"
            shutil.copyfile(src, saved)
        t_save = time.perf_counter() - t2

        fid = lat = None
        t_verify = None
        if cfg.verify:
            t3 = time.perf_counter()
            notify("verify")
            if user_inputs is not None:
                others = random_inputs([s for s in specs if s.name not in user_inputs], shapes, cfg.seed)
                inputs, kind = {**others, **user_inputs}, "user"
            else:
                inputs, kind = random_inputs(specs, shapes, cfg.seed), "random"
            fid, lat = verify(adapter, src, saved, inputs, kind, cfg, _mkdir(work / "verify"), device)
            t_verify = time.perf_counter() - t3

        report = Report(
            sepconv_version=__version__,
            format=adapter.name,
            params=Counts(original=before.params, converted=after.params),
            macs=Counts(original=before.macs, converted=after.macs),
            file_bytes=Counts(original=src.stat().st_size, converted=saved.stat().st_size),
            policy={**plan.policy, "converted_layers": len(converted), "total_layers": len(decisions),
                    "input_shapes": {k: list(v) for k, v in shapes.items()}},
            fidelity=fid,
            latency=lat,
            layers=[_layer_report(d) for d in decisions],
            timings=Timings(load_s=round(t_load, 4), convert_s=round(t_convert, 4),
                            verify_s=round(t_verify, 4) if t_verify is not None else None, save_s=round(t_save, 4)),
            warnings=_warnings(decisions, fid, lat, problems),
        )
        result = ConversionResult(report=report, format=adapter.name)
        if dest is None:
            result.data = saved.read_bytes()
        else:
            # An ONNX model with external data travels as a .zip; say so in the name rather than hide it.
            final = dest.with_suffix(".zip") if saved.suffix == ".zip" and dest.suffix != ".zip" else dest
            os.replace(saved, final)
            result.output_path = final
    finally:
        if dest is not None:
            shutil.rmtree(stage, ignore_errors=True)
    notify("verify", 1.0)
    return result


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _wrap(fn: Callable[[], Any], step: str) -> Any:
    try:
        return fn()
    except SepconvError:
        raise
    except Exception as e:
        raise ConversionError(f"{step} failed: {type(e).__name__}: {one_line(e)}") from e


def _layer_report(d: LayerDecision) -> LayerReport:
    layer = d.layer
    return LayerReport(
        name=layer.name,
        op=layer.op,
        kernel=list(layer.kernel),
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        groups=layer.groups,
        status="converted" if d.converted else "skipped",
        reason=d.reason,
        order=d.order if d.converted else None,
        rank=d.rank if d.converted else None,
        energy=_round(d.energy),
        rel_weight_error=_round(d.rel_weight_error),
        params_before=d.params_before,
        params_after=d.params_after,
        macs_before=d.macs_before,
        macs_after=d.macs_after,
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _warnings(decisions: list[LayerDecision], fid: Any, lat: Any, problems: list[str]) -> list[str]:
    out = []
    conv = [d for d in decisions if d.converted]
    if not conv:
        reasons = sorted({d.reason for d in decisions}) or ["the model has no convolutions"]
        out.append("no layer was converted; the model is returned unchanged (" + "; ".join(reasons[:4]) + ")")
    low = [d for d in conv if d.energy is not None and d.energy < 0.6]
    if low:
        worst = min(low, key=lambda d: d.energy)
        out.append(f"{len(low)} converted layer(s) keep less than 60 % of their kernel energy (worst: "
                   f"{worst.layer.name}, {worst.energy:.0%}); expect an accuracy drop until fine-tuned")
    if fid is not None:
        if not np.isfinite(fid.rel_l2):
            out.append("the converted model's outputs are not finite")
        elif fid.rel_l2 > 0.1:
            out.append(f"outputs differ from the original by {fid.rel_l2:.1%} (relative L2) on the verification "
                       "inputs; check accuracy on real data and fine-tune to recover it")
    if lat is not None and lat.speedup < 1.0:
        out.append(f"the converted model ran slower than the original on {lat.backend} with {lat.threads} "
                   f"thread(s) ({lat.speedup:.2f}×); fewer MACs do not guarantee lower latency")
    out.extend(f"MACs unknown: {p}" for p in problems)
    return out
