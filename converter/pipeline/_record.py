"""``Conversion``: what the stages of one conversion share, each field written only by the stages that own it.

Every field the stages produce is a ``Slot`` naming its writers: reading it before any of them ran, or writing it
from another stage, raises ``StageOrderError`` (a programming error inside the pipeline, never a user's; it is a
``ConversionError`` so that it still reaches a user as one typed line). So "which stage produced this?" has one
answer, read off the class below, and no stage needs ``assert x is not None`` before using a field.

The request (``config``, the file paths, the scratch folder) is set when the record is made and never written.
The report's free-form parts (``report_extra``, ``layer_extra``, ``warnings``) are collections any stage adds to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import numpy as np

from .._config import ConversionConfig
from .._errors import ConversionError
from .._report import Fidelity, Latency
from ..data import Samples
from ..formats import ConvLayer, FormatAdapter, InputSpec, ModelStats
from ..planning import CostModel, Factors, Plan, Spectra

__all__ = ["START", "Conversion", "Slot", "StageOrderError"]

T = TypeVar("T")

#: The pseudo-stage that sets the record up before the first stage runs.
START = "start"


class StageOrderError(ConversionError):
    """A stage read a field before the stage that writes it ran, or wrote a field it does not own."""


class Slot(Generic[T]):
    """A ``Conversion`` field written only by the stages in ``writers``, and readable once one of them has.

    ``default`` makes a field readable before it is written (for an optional result such as ``latency``,
    whose stage may not run)."""

    _UNSET: Any = object()

    def __init__(self, *writers: str, default: Any = _UNSET) -> None:
        self.writers = writers
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Slot[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Slot[T] | T:
        if obj is None:
            return self
        values = obj.__dict__
        if self.name in values:
            return values[self.name]  # type: ignore[no-any-return]
        if self.default is not Slot._UNSET:
            return self.default  # type: ignore[no-any-return]
        raise StageOrderError(f"internal error: Conversion.{self.name} was read before "
                              f"{' or '.join(self.writers)} set it")

    def __set__(self, obj: object, value: T) -> None:
        stage = obj.__dict__.get("stage", START)
        if stage not in self.writers:
            raise StageOrderError(f"internal error: the {stage} stage wrote Conversion.{self.name}, which only "
                                  f"{' or '.join(self.writers)} may write")
        obj.__dict__[self.name] = value


@dataclass(eq=False)
class Conversion:
    """What the stages of one conversion share (see the module docstring).

    The request, set when it is made: ``config``, ``src`` (the input file), ``dest`` (where the result goes, or
    None for bytes), ``inputs_path`` (the user's verification inputs), ``work`` (a private scratch folder),
    ``data_path`` and ``eval_path`` (the user's samples for recovery and the accuracy report) and
    ``checkpoint_dir`` (where a fine-tune and the search keep their checkpoints; they resume from those found
    there) and ``search_default``.
    """

    config: ConversionConfig
    src: Path
    dest: Path | None
    inputs_path: Path | None
    work: Path
    data_path: Path | None = None
    eval_path: Path | None = None
    checkpoint_dir: Path | None = None
    #: max_accuracy_drop was set by the default with samples (``_search.resolve_policy``), not by the user
    search_default: bool = False
    #: The stage running now (``START`` before the first).
    stage: str = START
    # The report's free-form parts: keys and warnings any stage adds, per-layer fields by layer name.
    report_extra: dict[str, Any] = field(default_factory=dict)
    layer_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # load: the format, the model's inputs, the user's files, the device every stage runs on
    adapter = Slot[FormatAdapter]("load")
    specs = Slot[list[InputSpec]]("load")
    user_inputs = Slot[dict[str, np.ndarray] | None]("load")
    shapes = Slot[dict[str, tuple[int, ...]]]("load")
    problems = Slot[list[str]]("load")
    samples = Slot[Samples | None]("load")
    eval_samples = Slot[Samples | None]("load")
    device = Slot[str]("load")
    # the current model: loaded, rewritten, reverted by the guard, recalibrated, fine-tuned
    model = Slot[Any]("load", "search", "rewrite", "guard", "calibrate", "finetune")
    # plan (the measure stage plans instead when it runs)
    layers = Slot[list[ConvLayer]]("plan")
    before = Slot[ModelStats]("plan")
    spectra = Slot[Spectra](START)
    cost_model = Slot[CostModel](START, "plan", "measure")
    plan = Slot[Plan]("plan", "measure", "search")
    factors = Slot[list[Factors]]("plan", "measure", "search", "guard", "calibrate")
    after = Slot[ModelStats]("search", "rewrite", "guard", "calibrate", "finetune")
    # save: where the result is staged (next to the destination) and the file written
    staging = Slot[Path](START)
    saved = Slot[Path | None]("guard", "save")
    # guard and verify
    # the kept graph's whole-model measurement (the guard's, or the search's of its chosen plan)
    guarded = Slot[tuple[frozenset[str], Any] | None]("guard", "search", default=None)
    fidelity = Slot[Fidelity | None]("verify", default=None)
    latency = Slot[Latency | None]("verify", default=None)

    @property
    def per_sample(self) -> dict[str, tuple[int, ...]]:
        """The input shapes at batch 1: counts (MACs) are per sample whatever batch verification uses."""
        return {name: (1, *dims[1:]) for name, dims in self.shapes.items() if dims}

    def workdir(self, name: str) -> Path:
        """A private scratch folder for one purpose, created on first use."""
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path
