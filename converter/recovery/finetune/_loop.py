"""Fine-tuning a converted model by knowledge distillation from the original, and writing the result.

``finetune`` takes the converted model file (the student), the original (the teacher, run on its own runtime:
onnxruntime for ONNX, torch for TorchScript and ``.pt2``), training and held-out samples, and writes the
trained model in the student's format. The recipe:

1. Build the student's trainable view and check it against the student's own runtime on one held-out batch
   (a view that disagrees would train something else than what is written).
2. Adam with a one-epoch linear warm-up, then a cosine-decayed learning rate over the planned epochs; the new
   factors train first, and with ``scope="all"`` every weight joins for the second half (at a tenth of the
   learning rate).
3. After every epoch: the held-out loss and metric; the weights with the lowest held-out loss are kept (the
   metric breaks ties: on a few hundred samples accuracy is a noisy judge); training stops after ``patience``
   epochs without improvement (counted in the second half of the planned epochs only), or when the epochs or the
   time budget run out. The weights written are the best seen, the converted model's own included: fine-tuning
   never returns a model worse on the held-out samples.
4. The written model is run on its runtime and compared with the trained module.

Determinism: shuffling, initial state and every update are seeded; two runs stopping at the same epoch
(the epoch budget or early stopping, not the clock) give the same weights on the same device. The number of
planned epochs is fixed after the first epoch from its duration and the time budget, and kept in the
checkpoint, so a resumed run follows the same schedule.

Checkpoints (with ``checkpoint_dir``) are written at every epoch end and at least every ``CHECKPOINT_EVERY_S``
seconds mid-epoch; a fine-tune restarted with the same original, samples, options and converted graph (weight
names and shapes: the same layers, ranks and lowerings) resumes where the last one stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..._device import resolve_device
from ..._errors import ConversionError, InvalidOptionsError
from ...formats import adapter_for
from ._checkpoint import file_digest, fingerprint, load_checkpoint, save_checkpoint
from ._objective import MetricAccumulator, Objective, objective_for
from ._view import TrainableView, original_digests, trainable_view

__all__ = ["CHECKPOINT_EVERY_S", "FinetuneOptions", "FinetuneResult", "SampleSource", "finetune"]

CHECKPOINT_EVERY_S = 30.0
#: Relative L2 the written model may differ from the trained module by (float32 accumulation order).
WRITE_TOLERANCE = 1e-3

#: ``progress(fraction, detail)``: fraction of the fine-tune done in [0, 1]; detail holds ``epoch``, the mean
#: training ``loss`` of the last epoch and the held-out metric of the best weights so far under its own name
#: (``top1``, ``top1_agreement`` or ``rel_l2``).
FinetuneProgress = Callable[[float, dict[str, Any]], None]


class SampleSource(Protocol):
    """What fine-tuning reads from the user's samples (``converter._data.Samples``)."""

    @property
    def count(self) -> int: ...

    @property
    def has_labels(self) -> bool: ...

    num_classes: int | None

    def batches(self, batch_size: int, indices: Any = None) -> Iterator[tuple[dict[str, np.ndarray],
                                                                              np.ndarray | None]]: ...


@dataclass(frozen=True)
class FinetuneOptions:
    """How to fine-tune (the ``ConversionConfig`` fields of the same meaning)."""

    epochs: int = 30
    minutes: float = 5.0
    lr: float = 1e-2
    batch_size: int = 32
    loss: str = "auto"
    scope: str = "factors"
    patience: int = 8
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_config(cls, config: Any, device: str | None = None) -> FinetuneOptions:
        """The fine-tune options of a ``ConversionConfig``; ``device`` the conversion's resolved device (None:
        the config's, resolved for torch)."""
        device = device or resolve_device(config.device, runtime="torch")
        return cls(epochs=config.epochs, minutes=config.finetune_minutes, lr=config.finetune_lr,
                   batch_size=config.batch_size, loss=config.finetune_loss, scope=config.finetune_scope,
                   patience=config.patience, seed=config.seed, device=device)


@dataclass
class FinetuneResult:
    """What a fine-tune did.

    Attributes:
        path: the written model.
        metric: the held-out metric's name (``top1``, ``top1_agreement`` or ``rel_l2``).
        before, after: the metric on the held-out samples before fine-tuning and for the weights written.
        epochs: epochs completed (a partial last epoch counts when the clock stopped it).
        stopped: why it stopped: ``epochs``, ``time``, ``early_stop``.
        seconds: training time, resumed runs included.
        resumed: whether it continued from a checkpoint.
        device: where it trained.
        scope: ``factors`` or ``all``.
        improved: whether the weights written differ from the converted model's (a lower held-out loss was seen).
        history: per epoch ``{epoch, loss, metric}``.
    """

    path: Path
    metric: str
    before: float
    after: float
    epochs: int
    stopped: str
    seconds: float
    resumed: bool
    device: str
    scope: str
    improved: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def _tensors(feeds: dict[str, np.ndarray], names: list[str], device: str) -> list[torch.Tensor]:
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InvalidOptionsError(f"the samples have no values for model input(s) {', '.join(missing)}")
    return [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in names]


def _predict(view: TrainableView, feeds: dict[str, np.ndarray], device: str) -> list[np.ndarray]:
    with torch.no_grad():
        out = view.module(*_tensors(feeds, view.input_names, device))
    return [t.detach().float().cpu().numpy() for t in out]


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return max((len(v) for v in feeds.values() if np.ndim(v) > 0), default=1)


def _rel_l2(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    err = sum(float(np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2)) for x, y in zip(a, b, strict=True))
    ref = sum(float(np.sum(y.astype(np.float64) ** 2)) for y in b)
    return math.sqrt(err / max(ref, 1e-30))


class _Run:
    """One fine-tune's moving parts (kept together so the epoch loop reads short)."""

    def __init__(self, view: TrainableView, teacher: Callable, objective: Objective, options: FinetuneOptions,
                 device: str) -> None:
        self.view, self.teacher, self.objective, self.options, self.device = view, teacher, objective, options, device
        factors = [view.params[n] for n in view.factors]
        rest = [p for n, p in view.params.items() if n not in set(view.factors)]
        groups: list[dict[str, Any]] = [{"params": factors, "lr": options.lr}]
        if options.scope == "all" and rest:
            groups.append({"params": rest, "lr": options.lr / 10})
        self.trained = list(view.factors) + ([n for n in view.params if n not in set(view.factors)]
                                             if options.scope == "all" else [])
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = torch.optim.Adam(groups)
        self.set_phase(1)

    def set_phase(self, phase: int) -> None:
        self.phase = phase
        factor_set = set(self.view.factors)
        for name, p in self.view.params.items():
            p.requires_grad_(name in factor_set or (phase == 2 and name in self.trained))

    def set_lr(self, progress: float, epochs_done: float) -> None:
        # Cosine decay over the planned epochs after a one-epoch linear warm-up: a full step at once would throw
        # away a good start (calibrated factors) before the optimizer's moments have settled.
        scale = 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * min(1.0, 0.1 + epochs_done)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * max(scale, 0.01)

    def step(self, feeds: dict[str, np.ndarray], labels: np.ndarray | None) -> float:
        inputs = _tensors(feeds, self.view.input_names, self.device)
        with torch.no_grad():
            target = [torch.from_numpy(np.asarray(t)).to(self.device) for t in self.teacher(feeds)]
        y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        loss = self.objective.loss(self.view.module(*inputs), target, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def predict(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return _predict(self.view, feeds, self.device)

    def evaluate(self, holdout: SampleSource, batch_size: int) -> MetricAccumulator:
        acc = MetricAccumulator(self.objective)
        for feeds, labels in holdout.batches(batch_size):
            student = self.predict(feeds)
            teacher = [np.asarray(t, dtype=np.float32) for t in self.teacher(feeds)]
            y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
            with torch.no_grad():
                loss = self.objective.loss([torch.from_numpy(s) for s in student],
                                           [torch.from_numpy(t) for t in teacher], y)
            acc.add(student, teacher, labels, float(loss))
        return acc

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: self.view.params[n].detach().cpu().clone() for n in self.trained}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, t in state.items():
                self.view.params[n].copy_(t.to(self.view.params[n].device))


def finetune(student: Path, teacher: Path, dest: Path, *, fmt: str, train: SampleSource, holdout: SampleSource,
             options: FinetuneOptions, workdir: Path, checkpoint_dir: Path | None = None,
             progress: FinetuneProgress | None = None, threads: int | None = None) -> FinetuneResult:
    """Fine-tune the converted model ``student`` towards the original ``teacher`` and write it to ``dest``.

    Raises:
        InvalidOptionsError: no sample, no converted layer to train, or a device that is not there.
        UnsupportedModelError: the trainable view cannot run a node of the model (the message names it).
        ConversionError: the trainable view disagrees with the model's runtime, or the written model with the
            trained module.
    """
    entered = time.monotonic()  # the time budget covers setting up (runners, view, first evaluation) too
    if train.count < 1 or holdout.count < 1:
        raise InvalidOptionsError("fine-tuning needs at least one training and one held-out sample")
    device = resolve_device(options.device, runtime="torch")  # training runs on torch
    torch.manual_seed(options.seed)
    workdir = Path(workdir)
    adapter = adapter_for(fmt)
    teacher_run, _ = adapter.runner(Path(teacher), workdir / "teacher", threads, device)
    student_run, _ = adapter.runner(Path(student), workdir / "student-run", threads, device)
    view = trainable_view(fmt, Path(student), workdir / "student", original_digests(fmt, Path(teacher),
                                                                                     workdir / "original"), device)
    if not view.factors:
        raise InvalidOptionsError("nothing to fine-tune: the converted model has no converted layer")
    view.module.to(device)
    bs = options.batch_size
    first, _ = next(iter(holdout.batches(bs)))
    agree = _rel_l2(_predict(view, first, device), [np.asarray(t) for t in student_run(first)])
    if not agree <= WRITE_TOLERANCE:
        raise ConversionError(f"the trainable view of the {fmt} model disagrees with its runtime (relative L2 "
                              f"{agree:.2g}); it cannot be fine-tuned")
    objective = objective_for([np.asarray(t) for t in teacher_run(first)], options.loss,
                              train.num_classes if train.has_labels else None)
    run = _Run(view, teacher_run, objective, options, device)
    # The checkpoint fits when the original, the options, the samples and the converted graph's weights (names
    # and shapes) are the same; the converted model's values may differ (a rerun of a job calibrates again).
    structure = sorted((name, list(p.shape)) for name, p in view.params.items())
    key = fingerprint(file_digest(Path(teacher)), asdict(options), train.count, holdout.count, fmt, structure)
    state = load_checkpoint(checkpoint_dir, key)
    resumed = state is not None
    if state is None:
        base = run.evaluate(holdout, bs)
        state = {"key": key, "epoch": 0, "pos": 0, "loss_sum": 0.0, "loss_n": 0, "elapsed": 0.0,
                 "planned": options.epochs, "before": base.value, "best_score": base.score,
                 "best_metric": base.value, "best_loss": base.mean_loss, "best": run.snapshot(), "bad": 0,
                 "history": [], "stopped": "", "improved": False}
    else:
        run.restore(state["params"])
        run.optimizer.load_state_dict(state["optimizer"])
    budget = options.minutes * 60.0
    start = (entered if not resumed else time.monotonic()) - state["elapsed"]
    last_save = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - start

    def save() -> None:
        if checkpoint_dir is not None:
            state.update(elapsed=elapsed(), params=run.snapshot(), optimizer=run.optimizer.state_dict())
            save_checkpoint(Path(checkpoint_dir), state)

    def report(loss: float | None) -> None:
        if progress is not None:
            done = max(min(1.0, (state["epoch"] + state["pos"] / max(train.count, 1)) / state["planned"]),
                       min(1.0, elapsed() / budget))
            progress(done, {"epoch": state["epoch"], "loss": loss, objective.metric: state["best_metric"]})

    report(None)
    while not state["stopped"]:
        epoch = state["epoch"]
        if epoch >= state["planned"]:
            state["stopped"] = "epochs"
            break
        run.set_phase(2 if options.scope == "all" and epoch >= state["planned"] // 2 else 1)
        order = np.random.default_rng([options.seed, epoch]).permutation(train.count)
        epoch_start = elapsed()
        out_of_time = False
        for feeds, labels in train.batches(bs, order[state["pos"]:]):
            done = epoch + state["pos"] / train.count
            run.set_lr(done / state["planned"], done)
            state["loss_sum"] += run.step(feeds, labels)
            state["loss_n"] += 1
            state["pos"] += _rows(feeds)
            if elapsed() >= budget:
                out_of_time = True
                break
            if time.monotonic() - last_save >= CHECKPOINT_EVERY_S:
                save()
                last_save = time.monotonic()
                report(state["loss_sum"] / state["loss_n"])
        if epoch == 0 and not out_of_time:
            per_epoch = max(elapsed() - epoch_start, 1e-6)
            state["planned"] = max(1, min(options.epochs, int(budget / per_epoch)))
        acc = run.evaluate(holdout, bs)
        loss = state["loss_sum"] / max(state["loss_n"], 1)
        state["history"].append({"epoch": epoch + 1, "loss": round(loss, 6), "metric": round(acc.value, 6)})
        # The held-out loss decides (a few hundred samples make accuracy a noisy judge), the metric breaks ties.
        if (-acc.mean_loss, acc.score) > (-state["best_loss"], state["best_score"]):
            state.update(best_score=acc.score, best_metric=acc.value, best_loss=acc.mean_loss, best=run.snapshot(),
                         bad=0, improved=True)
        else:
            state["bad"] += 1
        state.update(epoch=epoch + 1, pos=0, loss_sum=0.0, loss_n=0)
        if out_of_time:
            state["stopped"] = "time"
        elif state["bad"] >= options.patience and epoch + 1 >= state["planned"] // 2:
            # Not in the first half: at the schedule's high learning rates the held-out loss may rise for a while.
            state["stopped"] = "early_stop"
        save()
        last_save = time.monotonic()
        report(loss)
    run.restore(state["best"])
    return _write(run, state, dest, fmt, adapter, workdir, first, threads, device, resumed, elapsed())


def _write(run: _Run, state: dict[str, Any], dest: Path, fmt: str, adapter: Any, workdir: Path,
           sample: dict[str, np.ndarray], threads: int | None, device: str, resumed: bool,
           seconds: float) -> FinetuneResult:
    written = run.view.write(Path(dest), run.trained)
    check, _ = adapter.runner(written, workdir / "written", threads, device)
    diff = _rel_l2([np.asarray(t, dtype=np.float32) for t in check(sample)], run.predict(sample))
    if not diff <= WRITE_TOLERANCE:
        raise ConversionError(f"the fine-tuned {fmt} model as written differs from the trained one (relative L2 "
                              f"{diff:.2g})")
    return FinetuneResult(path=written, metric=run.objective.metric, before=float(state["before"]),
                          after=float(state["best_metric"]), epochs=int(state["epoch"]), stopped=state["stopped"],
                          seconds=round(seconds, 3), resumed=resumed, device=device, scope=run.options.scope,
                          improved=bool(state["improved"]), history=list(state["history"]))
