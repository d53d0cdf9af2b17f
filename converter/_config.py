"""One typed configuration for a conversion, shared by the library, the CLI, the HTTP API and the SDK.

``ConversionConfig`` is the library's argument, the source of the CLI's flags, the API's form fields and the
stored job record, so a misspelt option fails at once (``extra="forbid"``) and the names match everywhere.
It imports pydantic only: the SDK uses it in an environment without torch or onnx.

It does not hold data (the model, verification inputs) nor anything about where a job runs.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._errors import InvalidOptionsError

__all__ = [
    "DEFAULT_ACCURACY_DROP",
    "DEFAULT_ENERGY",
    "POLICY_FIELDS",
    "REPEATABLE_FIELDS",
    "ConversionConfig",
    "parse_input_shape",
    "parse_layer_rank",
]

#: The default rank policy keeps, in every converted layer, at least this share of the kernel's squared
#: singular values (its "energy"): the relative weight error of each layer is then at most sqrt(1 - E).
#: Layers that would need so high a rank that nothing is saved stay as they are. See README, "Rank policies".
DEFAULT_ENERGY = 0.9

#: The fields that select a rank policy (at most one may be set); ``converter._policies`` has one entry each.
POLICY_FIELDS = ("rank", "energy", "target_params", "target_macs", "target_latency", "max_accuracy_drop")

#: With samples (``--data``) and no rank option, the conversion searches for the fastest model whose held-out
#: metric is within this of the original's (``max_accuracy_drop``; README "Accuracy-bounded search").
DEFAULT_ACCURACY_DROP = 0.01

Order = Literal["dw-pw", "pw-dw", "auto"]
Lowering = Literal["split", "fused", "summed", "auto"]
Device = Literal["cpu", "cuda", "auto"]
Recover = Literal["calibrate", "finetune", "none"]
SearchMetric = Literal["auto", "top1", "top1_agreement", "rel_l2"]

_SHAPE_RE = re.compile(r"^\s*([^=\s]+)\s*=\s*(\d+(?:\s*[x×,]\s*\d+)*)\s*$")
_LAYER_RANK_RE = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+)\s*$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x224x224`` into ``("NAME", (1, 3, 224, 224))``.

    Raises:
        InvalidOptionsError: the text is not of that form or a dimension is not positive.
    """
    m = _SHAPE_RE.match(text)
    if not m:
        raise InvalidOptionsError(f"input shape {text!r} is not of the form NAME=1x3x224x224")
    dims = tuple(int(d) for d in re.split(r"\s*[x×,]\s*", m.group(2)))
    if any(d <= 0 for d in dims):
        raise InvalidOptionsError(f"input shape {text!r}: every dimension must be positive")
    return m.group(1), dims


def parse_layer_rank(text: str) -> tuple[str, int]:
    """Parse ``PATTERN=K`` (a layer name or glob, and a rank) into ``("PATTERN", K)``.

    Raises:
        InvalidOptionsError: the text is not of that form or the rank is not positive.
    """
    m = _LAYER_RANK_RE.match(text)
    if not m or int(m.group(2)) < 1:
        raise InvalidOptionsError(f"layer rank {text!r} is not of the form NAME=K with K >= 1")
    return m.group(1), int(m.group(2))


class ConversionConfig(BaseModel):
    """Options of one conversion. At most one rank policy (``rank``, ``energy``, ``target_params``,
    ``target_macs``, ``target_latency``, ``max_accuracy_drop``) may be set; with none, the default policy is
    ``energy=DEFAULT_ENERGY``, or with samples (``--data``) ``max_accuracy_drop=DEFAULT_ACCURACY_DROP`` (the
    pipeline decides that, as the config does not know the data).

    Each field's description is its documentation everywhere: CLI ``--help``, the OpenAPI schema, the README.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: Annotated[int, Field(ge=1)] | None = Field(
        None, description="The same rank K for every eligible layer.")
    energy: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None, description="Per layer, the smallest rank keeping at least this share of the kernel's squared "
                          f"singular values (default policy: {DEFAULT_ENERGY}).")
    target_params: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None, description="Keep this share of the whole model's parameters (0.3 = 30 %), ranks allocated "
                          "across layers for the least total weight error.")
    target_macs: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None, description="Keep this share of the whole model's multiply-accumulates, allocated likewise.")
    order: Order = Field(
        "auto", description="dw-pw (depthwise then pointwise), pw-dw (pointwise then depthwise), or auto: per "
                            "layer the form with the smaller weight error.")
    lowering: Lowering = Field(
        "auto", description="auto: per layer the fastest as measured (split where not measured); split: K "
                            "depthwise convs of channel multiplier 1, concatenated (DW→PW) or summed; fused: one "
                            "depthwise conv with multiplier K (fewest nodes); summed: K branches added, never "
                            "concatenated (the runtime can fuse each Add into a conv).")
    exclude: list[str] = Field(
        default_factory=list, description="Glob pattern on layer names never to convert (repeatable).")
    layer_rank: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="Per-layer rank override NAME=K, NAME a layer name or glob "
                                          "(repeatable; the first match wins).")
    input_shape: dict[str, tuple[Annotated[int, Field(ge=1)], ...]] = Field(
        default_factory=dict, description="Concrete shape NAME=1x3x224x224 for an input with symbolic dims "
                                          "(repeatable; needed where the model file records no input shapes).")
    min_reduction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.1, description="Convert a layer only if it saves at least this share of its parameters (and does not "
                         "add MACs); 0 accepts any saving.")
    force: bool = Field(
        False, description="Convert eligible layers even where the chosen rank saves too little, adds MACs or "
                           "was measured slower than the original.")
    verify: bool = Field(
        True, description="Run both models side by side: output fidelity and latency.")
    latency_runs: Annotated[int, Field(ge=1, le=10_000)] = Field(
        30, description="Timed runs of each model, interleaved, after warm-up.")

    # --- latency: candidates timed on the target backend, latency policy (README "Latency") ---
    threads: Annotated[int, Field(ge=1, le=1024)] = Field(
        1, description="Intra-op threads the models are planned for and measured with: the thread count you "
                       "deploy with (default 1, the common edge case).")
    measure: bool = Field(
        True, description="Time each layer's candidates in context on the target backend and plan on measured "
                          "latency; with the default policy the result is then never slower than the original. "
                          "False (--no-measure): plan on parameters and MACs alone.")
    latency_budget_s: Annotated[float, Field(ge=0.0, le=3600.0)] = Field(
        20.0, description="Seconds at most for timing candidates (largest layers first; the rest are decided "
                          "on counts).")
    target_latency: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None, description="Keep this share of the original model's measured latency (0.6 = 60 %), ranks "
                          "allocated across layers for the least total weight error.")
    max_accuracy_drop: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="Needs --data: the fastest model found whose held-out metric is within this of the "
                          "original's (absolute: 0.01 = one point of top-1), measured on the recovered file on "
                          "this runtime, threads and batch; never slower than the original. The default with "
                          f"--data and no rank option ({DEFAULT_ACCURACY_DROP}).")
    search_metric: SearchMetric = Field(
        "auto", description="The metric max_accuracy_drop bounds: auto (top1 with labels, else top1_agreement "
                            "for class scores, else rel_l2), or one of them; with rel_l2 (outputs that are not "
                            "classifications) the drop is its ceiling.")
    search_budget_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = Field(
        120.0, description="Seconds at most for the max_accuracy_drop search's plans (each calibrated, scored "
                           "and timed); the best plan found by then is kept.")
    throughput_batch: Annotated[int, Field(ge=2, le=4096)] | None = Field(
        None, description="Also measure throughput (inferences/s) of both models at this batch size.")
    seed: int = Field(0, description="Seed of the random verification inputs.")
    device: Device = Field(
        "cpu", description="Where models run (verification, and any stage that runs a model): cpu, cuda, or "
                           "auto (cuda when the runtime has a CUDA device, else cpu).")

    # --- accuracy recovery from the user's samples (--data/--eval; README "Accuracy recovery") ---
    recover: Recover | None = Field(
        None, description="Accuracy recovery with --data: calibrate (refit the new factors to reproduce each "
                          "original layer on the samples; the default when data is given), finetune, or none.")
    holdout: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.2, description="Without --eval, this share of --data (seeded) is held out for the accuracy report.")
    calibration_samples: Annotated[int, Field(ge=1, le=100_000)] = Field(
        512, description="At most this many samples (of --data, less the held-out share) calibrate the layers.")
    batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        32, description="Samples per batch when calibrating and evaluating (memory grows with it, not with "
                        "the number of samples).")
    image_size: str | None = Field(
        None, description="An image folder as --data/--eval: resize every image to HEIGHTxWIDTH (or SIDE).",
        pattern=r"^\s*\d+\s*([x×,]\s*\d+\s*)?$")
    image_mean: list[float] = Field(
        default_factory=list, description="Image folders: per-channel mean subtracted after scaling (one value "
                                          "or one per channel; default 0).")
    image_std: list[float] = Field(
        default_factory=list, description="Image folders: per-channel std divided by after subtracting the mean "
                                          "(default 1).")
    image_layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Image folders: the model input's layout.")
    image_range: Literal["0-1", "0-255", "-1-1"] = Field(
        "0-1", description="Image folders: pixel values after scaling, before mean/std.")
    image_channels: Annotated[int, Field(ge=1, le=3)] | None = Field(
        None, description="Image folders: 1 (grayscale) or 3 (RGB); default: from the model's input shape.")

    # --- fine-tuning (recover="finetune"; README "Fine-tuning") ---
    finetune_minutes: Annotated[float, Field(gt=0.0, le=10_080.0)] = Field(
        5.0, description="Time budget of a fine-tune in minutes; it stops at the first budget spent (time or "
                         "epochs) or when the held-out loss stops improving.")
    epochs: Annotated[int, Field(ge=1, le=10_000)] = Field(
        30, description="Epoch budget of a fine-tune (passes over the training samples).")
    finetune_lr: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1e-2, description="Fine-tuning learning rate (Adam, cosine decay; weights other than the new factors "
                          "train at a tenth of it).")
    finetune_loss: Literal["auto", "kl", "mse"] = Field(
        "auto", description="Distillation loss: kl on classifier logits, mse (variance-normalised) on other "
                            "outputs, or auto (kl for [batch, classes] outputs, mse for the rest); cross-entropy "
                            "is added when the samples have labels.")
    finetune_scope: Literal["factors", "all"] = Field(
        "factors", description="factors: train the new depthwise/pointwise factors only; all: the factors first, "
                               "then every weight for the second half.")
    patience: Annotated[int, Field(ge=1, le=1000)] = Field(
        8, description="Stop a fine-tune after this many epochs without a lower held-out loss.")

    # Untrusted graphs (converter/formats/_graphcheck.py): skip the op allowlist for a model you trust. The
    # service refuses this option.
    trust_model: bool = Field(
        False, description="Skip the check that a model file which carries code holds only tensor math ops "
                           "(file, I/O, process and custom ops are refused otherwise); only for models you trust.")

    @field_validator("exclude", mode="before")
    @classmethod
    def _one_or_many_patterns(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("image_mean", "image_std", mode="before")
    @classmethod
    def _float_list(cls, v: Any) -> Any:
        """``0.485,0.456,0.406`` (one string, or repeated) as well as a list of numbers."""
        if isinstance(v, str | int | float):
            v = [v]
        if isinstance(v, list | tuple):
            out: list[Any] = []
            for item in v:
                if isinstance(item, str):
                    out.extend(p for p in re.split(r"[\s,]+", item.strip()) if p)
                else:
                    out.append(item)
            return out
        return v

    @field_validator("layer_rank", "input_shape", mode="before")
    @classmethod
    def _name_value_strings(cls, v: Any, info: ValidationInfo) -> Any:
        """The CLI and the API send these as ``NAME=VALUE`` strings (one, or a list); a dict passes through."""
        parse = parse_layer_rank if info.field_name == "layer_rank" else parse_input_shape
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list | tuple):
            return dict(parse(s) for s in v)
        return v

    @field_validator("energy", "target_params", "target_macs", "target_latency")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _one_policy(self) -> ConversionConfig:
        chosen = [k for k in POLICY_FIELDS if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one rank policy, not {' and '.join(chosen)}")
        if self.max_accuracy_drop is not None and self.layer_rank:
            raise ValueError("max_accuracy_drop searches every layer's rank: drop layer_rank, or choose a rank "
                             "policy")
        return self

    @property
    def policy(self) -> tuple[str, float]:
        """The rank policy in force as ``(kind, value)``; the default is ``("energy", DEFAULT_ENERGY)``."""
        for kind in POLICY_FIELDS:
            value = getattr(self, kind)
            if value is not None:
                return kind, value
        return "energy", DEFAULT_ENERGY

    @property
    def default_policy(self) -> bool:
        """True when no rank policy was chosen (the default policy, which promises "never slower")."""
        return all(getattr(self, k) is None for k in POLICY_FIELDS) and not self.layer_rank

    @classmethod
    def from_options(cls, config: ConversionConfig | None = None, **options: Any) -> ConversionConfig:
        """Build a config from keyword options (optionally on top of ``config``), as the library API takes them.

        Raises:
            InvalidOptionsError: an option is unknown, out of range, or contradicts another; the message names
                every offending option in one line.
        """
        try:
            if config is None:
                return cls.model_validate(options)
            if not options:
                return config
            return cls.model_validate({**config.model_dump(exclude_unset=True), **options})
        except ValidationError as e:
            raise InvalidOptionsError(describe_validation_error(e)) from None
        except InvalidOptionsError:
            raise


def _repeatable(annotation: Any) -> bool:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return origin in (list, dict) or annotation in (list, dict)


#: The fields given as a repeated flag or form field (lists, and dicts written ``NAME=VALUE``): the CLI, the
#: HTTP form and the job service all read this one set.
REPEATABLE_FIELDS: frozenset[str] = frozenset(
    name for name, f in ConversionConfig.model_fields.items() if _repeatable(f.annotation))


def describe_validation_error(e: ValidationError) -> str:
    """One line naming each offending option of a pydantic ``ValidationError``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown option"
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid options: " + "; ".join(parts)
