"""The conversion report: a JSON document with stable, documented keys (README, "The report").

Pydantic models only, no torch or onnx: the SDK parses ``job.report`` into these types. Keys are only ever
added, never renamed or removed, within a ``schema_version``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ._stages import TIMING_KEYS
from .formats import format_names

__all__ = [
    "Accuracy",
    "Counts",
    "Fidelity",
    "FinetuneReport",
    "Latency",
    "LayerReport",
    "Report",
    "Search",
    "SearchPlanReport",
    "StageValues",
    "Throughput",
    "Timings",
]

SCHEMA_VERSION = 1


class _Model(BaseModel):
    # Reports written by a newer server must still parse in an older SDK: ignore unknown keys.
    model_config = ConfigDict(extra="ignore")


class Counts(_Model):
    """A count before and after conversion."""

    original: int | None
    converted: int | None


class Fidelity(_Model):
    """Output agreement of the converted model with the original on the same inputs (all outputs).

    ``rel_l2``: ‖y′ − y‖₂ / ‖y‖₂ over all outputs; ``max_abs``: largest absolute difference; ``cosine``: cosine
    similarity of the flattened outputs; ``top1_agreement``: share of samples (or pixels) whose argmax over the
    class axis (axis 1 of the first output) agrees, or None when the first output has no class axis.
    ``inputs``: ``user`` (``--inputs``), ``held_out`` (the held-out samples of ``--data``, or ``--eval``'s, at most
    ``FIDELITY_SAMPLES`` of them) or ``random`` (seeded random inputs of the declared shapes).
    """

    rel_l2: float
    max_abs: float
    cosine: float
    top1_agreement: float | None
    samples: int
    inputs: Literal["random", "user", "held_out"]


class Throughput(_Model):
    """Inferences per second of each model at a larger batch (``throughput_batch``), measured like ``Latency``."""

    batch: int
    original_per_s: float
    converted_per_s: float
    speedup: float
    speedup_low: float
    speedup_high: float


class Latency(_Model):
    """Latency of one inference of each model, interleaved in one process after warm-up, on the runtime and
    device the model runs on: p50 (``*_ms``), p90 and p99; ``speedup`` is the ratio of medians, with its
    ``confidence`` bootstrap interval over runs ``[speedup_low, speedup_high]``. A difference is a finding only
    when that interval excludes 1.0."""

    backend: str
    device: str = "cpu"
    threads: int
    runs: int
    batch: int | None = None
    original_ms: float
    converted_ms: float
    speedup: float
    original_p90_ms: float | None = None
    converted_p90_ms: float | None = None
    original_p99_ms: float | None = None
    converted_p99_ms: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    confidence: float | None = None
    processor: str | None = None
    runtime_version: str | None = None
    throughput: Throughput | None = None


class StageValues(_Model):
    """One measure after each stage of recovery; None where the stage did not run (or does not apply)."""

    original: float | None = None
    data_free: float | None = None
    calibrated: float | None = None
    finetuned: float | None = None


class Accuracy(_Model):
    """Accuracy on the user's held-out samples after each stage (README, "Accuracy recovery").

    ``metric`` is ``top1`` when labels were given, else ``top1_agreement`` (share of samples whose top class
    agrees with the original's) when the first output has a class axis, else ``rel_l2`` (relative L2 distance of
    the outputs from the original's; lower is better). ``original``/``data_free``/``calibrated``/``finetuned``
    are that metric; ``top5`` (≥ 5 classes, with labels), ``top1_agreement`` and ``rel_l2`` give the others.
    ``kept`` says which stage's model was written (calibration never ships a model that is worse than the
    data-free one on these samples; ``note`` says why one was not kept).
    """

    metric: Literal["top1", "top1_agreement", "rel_l2"]
    samples: int
    held_out: str
    original: float | None = None
    data_free: float | None = None
    calibrated: float | None = None
    finetuned: float | None = None
    top5: StageValues | None = None
    top1_agreement: StageValues | None = None
    rel_l2: StageValues | None = None
    calibration_samples: int | None = None
    kept: Literal["data_free", "calibrated", "finetuned"] = "data_free"
    note: str | None = None


class LayerReport(_Model):
    """What happened to one convolution."""

    name: str
    op: str
    kernel: list[int]
    in_channels: int
    out_channels: int
    groups: int
    status: Literal["converted", "skipped"]
    reason: str
    order: Literal["dw-pw", "pw-dw"] | None = None
    rank: int | None = None
    lowering: Literal["split", "fused", "summed"] | None = None
    energy: float | None = None
    rel_weight_error: float | None = None
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None
    # accuracy recovery (README "Accuracy recovery")
    calibration: str | None = None
    output_error: StageValues | None = None


#: Wall-clock seconds of each step, derived from the stage table (``converter._stages``): ``load_s``,
#: ``convert_s`` (everything between loading and saving), ``save_s``, ``verify_s``, and ``<stage>_s`` for every
#: stage (None when it did not run).
Timings = create_model(
    "Timings",
    __base__=_Model,
    __module__=__name__,
    **{key: (float, ...) if required else (float | None, None) for key, required in TIMING_KEYS.items()},
)
Timings.__doc__ = "Wall-clock seconds of each stage that ran (see ``converter._stages``); None: it did not run."


class FinetuneReport(_Model):
    """What a fine-tune (``recover="finetune"``) did.

    ``metric`` is the held-out metric it watched (``top1`` with labels, else ``top1_agreement`` for a classifier
    or ``rel_l2`` to the original's outputs, lower is better); ``before``/``after`` its value for the converted
    model before fine-tuning and for the weights written (the lowest held-out loss seen). ``stopped``: ``epochs``,
    ``time`` or ``early_stop``. ``history``: per epoch the mean training loss and the held-out metric.
    """

    metric: str
    before: float
    after: float
    epochs: int
    stopped: Literal["epochs", "time", "early_stop"]
    seconds: float
    resumed: bool
    device: str
    scope: Literal["factors", "all"]
    train_samples: int
    holdout_samples: int
    history: list[dict[str, int | float]] = []


class SearchPlanReport(_Model):
    """One plan the ``max_accuracy_drop`` search measured (README "Accuracy-bounded search").

    ``plan`` numbers the plans in the order measured; ``index`` is its place on the predicted frontier (0 is the
    original, 1… ever faster and less accurate as predicted; null for a uniform-rank plan that is not on it);
    ``uniform_rank`` the K of a plan that is ``--rank K`` for every layer; ``step`` how the search picked it
    (``uniform``, ``fastest``, ``interpolate``, ``bisect``). ``speedup`` and its
    interval are of the assembled, recovered file against the original (latency, like ``Latency``); ``metric`` is
    the search's metric of that file on the held-out samples and ``drop`` its distance from the original's (for
    ``rel_l2``, the value itself). ``meets``: ``drop ≤ max_drop``; ``faster``: the speed-up's interval lies above
    1. ``layers``: each converted layer's form (``dw-pw rank 2 split``); ``options`` are the CLI options that plan
    the same layers at the same ranks (``--layer-rank``, with ``--exclude`` for the layers it keeps; the form of
    each layer is then the planner's, ``--order`` where all share one).
    """

    plan: int
    index: int | None = None
    uniform_rank: int | None = None
    step: str
    converted_layers: int
    speedup: float
    speedup_low: float
    speedup_high: float
    params: int
    macs: int | None = None
    metric: float
    drop: float
    meets: bool
    faster: bool
    chosen: bool
    why: str
    predicted_error: float
    seconds: float
    layers: dict[str, str] = {}
    options: list[str] = []


class Search(_Model):
    """What the ``max_accuracy_drop`` search did (README "Accuracy-bounded search").

    ``metric`` is the held-out metric bounded (``top1``, ``top1_agreement`` or ``rel_l2``), ``original`` its
    value for the original model, ``max_drop`` the bound (``default``: set by the default policy with samples).
    ``frontier_plans``: plans on the predicted frontier; ``plans``: every plan measured, in order; ``chosen``:
    the ``plan`` number of the plan returned, or None when the original was returned (``reason`` says why).
    ``sensitivity``: per layer, the share of a relative squared error at its output that reached the model's
    output. ``stopped``: ``converged``, ``budget`` or ``nothing to convert``; ``resumed_plans``: outcomes replayed
    from an earlier, interrupted run.
    """

    metric: str
    max_drop: float
    default: bool = False
    original: float | None = None
    budget_s: float
    spent_s: float
    stopped: str
    frontier_plans: int
    chosen: int | None = None
    reason: str
    sensitivity: dict[str, float] = {}
    resumed_plans: int = 0
    plans: list[SearchPlanReport] = []


class Report(_Model):
    """The report of one conversion. See README, "The report", for every key."""

    schema_version: int = SCHEMA_VERSION
    sepconv_version: str
    # A str, not a Literal, so that an older SDK still parses a report on a format added later; the schema lists
    # the registered formats.
    format: str = Field(description="The model's format.", json_schema_extra={"enum": list(format_names())})
    params: Counts
    macs: Counts
    file_bytes: Counts
    policy: dict
    fidelity: Fidelity | None = None
    latency: Latency | None = None
    finetune: FinetuneReport | None = None
    layers: list[LayerReport]
    timings: Timings
    warnings: list[str] = []
    accuracy: Accuracy | None = None
    search: Search | None = None

    @property
    def converted_layers(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.status == "converted"]
