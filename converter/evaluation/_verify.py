"""Verification: run the original and the converted model file on the same inputs, measure how far their outputs
are apart and how fast each runs, interleaved in one process on the real runtime.

It deliberately runs the *saved files* (what the user gets), never in-memory graphs, and it never claims a
speed-up it did not measure. It does not decide anything about layers; it reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .._config import ConversionConfig
from .._errors import InvalidOptionsError, VerificationError, map_errors
from .._report import Fidelity, Latency
from ..formats import FormatAdapter, InputSpec, Runner

__all__ = ["FidelityStats", "batches", "fidelity", "load_user_inputs", "random_inputs", "resolve_input_shapes",
           "verify"]


def resolve_input_shapes(
    specs: Sequence[InputSpec], config: ConversionConfig, user_inputs: Mapping[str, np.ndarray] | None = None
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete shapes for the model's inputs, and the problems left for inputs that have none.

    A user's arrays fix their inputs' shapes; ``--input-shape`` fixes the others; otherwise the declared shape
    is used with a symbolic first (batch) dim taken as 1. Any other symbolic dim, or an input with no declared
    shape (TorchScript), is a problem: verification and MAC budgets need it, a plain conversion does not.

    Raises:
        InvalidOptionsError: ``--input-shape`` names an unknown input, or contradicts a fixed dim or the rank.
    """
    names = [s.name for s in specs]
    unknown = sorted(set(config.input_shape) - set(names))
    if unknown:
        raise InvalidOptionsError(f"--input-shape names {', '.join(map(repr, unknown))}, but the model's inputs "
                                  f"are {', '.join(map(repr, names))}")
    shapes: dict[str, tuple[int, ...]] = {}
    problems: list[str] = []
    for spec in specs:
        if user_inputs is not None and spec.name in user_inputs:
            shapes[spec.name] = tuple(int(d) for d in user_inputs[spec.name].shape)
            continue
        if spec.scalar:
            problems.append(f"input {spec.name!r} is a number (a non-tensor argument of forward) with no value to "
                            f"guess; give it in --inputs as a 0-d array, e.g. np.savez('in.npz', "
                            f"{spec.name}=np.array(16000), …)")
            continue
        given = config.input_shape.get(spec.name)
        if given is not None:
            if spec.shape is not None:
                if len(given) != len(spec.shape):
                    raise InvalidOptionsError(
                        f"--input-shape {spec.name}: {len(given)} dims given, the model declares {len(spec.shape)}")
                for i, (g, d) in enumerate(zip(given, spec.shape, strict=True)):
                    if isinstance(d, int) and d > 0 and d != g:
                        raise InvalidOptionsError(
                            f"--input-shape {spec.name}: dim {i} is {g}, but the model fixes it to {d}")
            shapes[spec.name] = tuple(given)
            continue
        if spec.shape is None:
            problems.append(f"input {spec.name!r} has no recorded shape; pass --input-shape "
                            f"{spec.name}=1x3x224x224 (its real dims)")
            continue
        dims = list(spec.shape)
        symbolic = [i for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
        if symbolic and symbolic[0] == 0:
            dims[0] = 1
            symbolic = symbolic[1:]
        if symbolic:
            problems.append(f"input {spec.name!r} has symbolic dims "
                            f"{', '.join(repr(spec.shape[i]) for i in symbolic)}; pass --input-shape "
                            f"{spec.name}={'x'.join(str(d) if isinstance(d, int) and d > 0 else 'N' for d in dims)}")
            continue
        shapes[spec.name] = tuple(int(d) for d in dims)
    for spec in specs:
        if spec.name in shapes and (user_inputs is None or spec.name not in user_inputs):
            _check_size(spec, shapes[spec.name])
    return shapes, problems


#: The largest input tensor sepconv makes up (random verification inputs, the probe's zeros), in bytes.
MAX_INPUT_BYTES = 2 * 2**30


def _check_size(spec: InputSpec, shape: tuple[int, ...]) -> None:
    """Refuse, before anything is allocated, an input whose declared or given dims would need more than
    ``MAX_INPUT_BYTES``."""
    size = int(np.dtype(spec.dtype).itemsize)
    for d in shape:
        size *= int(d)
    if size > MAX_INPUT_BYTES:
        dims = "x".join(map(str, shape))
        raise InvalidOptionsError(
            f"input {spec.name!r} of shape {dims} would need {size / 2**30:,.1f} GiB ({np.dtype(spec.dtype).name}) "
            f"to make verification inputs, more than the {MAX_INPUT_BYTES / 2**30:g} GiB limit; give its real dims "
            f"with --input-shape {spec.name}=…")


def load_user_inputs(path: Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Verification inputs from a user's ``.npz``: an ``inputs`` array (for the first input), or arrays named
    like the model's inputs.

    Raises:
        InvalidOptionsError: the file is not a readable ``.npz``, or its arrays fit no input.
    """
    from ..data import read_npz

    try:
        with open(path, "rb") as f:
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise InvalidOptionsError("the inputs file is not a .npz (numpy.savez) archive")
    except OSError as e:
        raise InvalidOptionsError(f"the inputs file could not be read: {e.strerror}") from None
    # Headers checked (sizes against the file and the memory limit) before any array is read; numpy raises many
    # types for a bad file.
    with map_errors("the inputs file is not a readable .npz", InvalidOptionsError, type_name=False):
        arrays = read_npz(path, "the inputs file")
    names = [s.name for s in specs]
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in arrays:
            out[spec.name] = arrays[spec.name]
    if not out and "inputs" in arrays:
        out[names[0]] = arrays["inputs"]
    if not out:
        raise InvalidOptionsError(f"the inputs file has arrays {sorted(arrays)}; expected 'inputs' or the model's "
                                  f"input names {names}")
    for spec in specs:
        if spec.name in out:
            a = out[spec.name]
            if spec.shape is not None and a.ndim != len(spec.shape):
                raise InvalidOptionsError(f"inputs file: array for {spec.name!r} has {a.ndim} dims, the model "
                                          f"expects {len(spec.shape)}")
            if a.dtype.kind not in "biuf":
                raise InvalidOptionsError(f"inputs file: array for {spec.name!r} is not numeric ({a.dtype})")
            if a.ndim and a.shape[0] == 0:
                raise InvalidOptionsError(f"inputs file: array for {spec.name!r} has no samples (shape {a.shape})")
            if a.dtype.kind == "f":
                bad = a.size - int(np.count_nonzero(np.isfinite(a)))
                if bad:
                    raise InvalidOptionsError(f"inputs file: array for {spec.name!r} has {bad} NaN or infinite "
                                              "value(s); verification inputs must be finite")
            a = a.astype(spec.dtype, copy=False)
            # Not np.ascontiguousarray: it turns a 0-d array (a scalar input such as a sample rate) into shape (1,).
            out[spec.name] = a if a.flags.c_contiguous else np.array(a, order="C")
    return out


def random_inputs(
    specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]], seed: int
) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (small non-negative integers for integer inputs), seeded."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape = shapes[spec.name]
        if np.issubdtype(spec.dtype, np.floating):
            # Drawn in float32 where that is the input's type: no float64 copy twice the size.
            draw = np.float32 if np.dtype(spec.dtype) == np.float32 else np.float64
            out[spec.name] = rng.standard_normal(shape, dtype=draw).astype(spec.dtype, copy=False)
        elif spec.dtype == np.bool_:
            out[spec.name] = np.asarray(rng.integers(0, 2, shape)).astype(np.bool_)
        else:
            out[spec.name] = np.asarray(rng.integers(0, 10, shape)).astype(spec.dtype)
    return out


class FidelityStats:
    """Output agreement accumulated batch by batch (sums, not outputs, are kept: memory is one batch's)."""

    def __init__(self) -> None:
        self.sq_diff = self.sq_ref = self.sq_cand = self.dot = self.max_abs = 0.0
        self.top1_hits = self.top1_count = self.samples = 0
        self.top1_possible = True
        self.batches = 0

    def add(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> None:
        """Add one batch's outputs of both models.

        Raises:
            VerificationError: the outputs differ in number or shape, or are not finite.
        """
        if len(reference) != len(candidate):
            raise VerificationError(f"the converted model has {len(candidate)} outputs, the original "
                                    f"{len(reference)}")
        for i, (a, b) in enumerate(zip(reference, candidate, strict=True)):
            if np.shape(a) != np.shape(b):
                raise VerificationError(f"output {i}: shape {np.shape(b)} after conversion, {np.shape(a)} before")
            if not _numeric(a):
                continue
            y0 = np.asarray(a, dtype=np.float64).ravel()
            y1 = np.asarray(b, dtype=np.float64).ravel()
            if not np.isfinite(y0).all():
                raise VerificationError(f"the original model's output {i} is not finite (NaN or inf) on the "
                                        "verification inputs; fidelity cannot be measured")
            if not np.isfinite(y1).all():
                raise VerificationError(f"the converted model's output {i} is not finite (NaN or inf) where the "
                                        "original's is: the conversion is numerically broken for this model")
            diff = y1 - y0
            self.sq_diff += float(np.dot(diff, diff))
            self.sq_ref += float(np.dot(y0, y0))
            self.sq_cand += float(np.dot(y1, y1))
            self.dot += float(np.dot(y0, y1))
            if diff.size:
                self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
        first0, first1 = np.asarray(reference[0]), np.asarray(candidate[0])
        if first0.ndim >= 2 and first0.shape[1] > 1 and _numeric(first0):
            self.top1_hits += int(np.sum(np.argmax(first0, axis=1) == np.argmax(first1, axis=1)))
            self.top1_count += int(np.prod(np.delete(first0.shape, 1)))
        else:
            self.top1_possible = False
        self.samples += int(first0.shape[0]) if first0.ndim >= 1 else 1
        self.batches += 1

    def result(self, inputs: str) -> Fidelity:
        """The ``Fidelity`` of everything added."""
        n0, n1 = math.sqrt(self.sq_ref), math.sqrt(self.sq_cand)
        err = math.sqrt(self.sq_diff)
        rel = err / n0 if n0 > 0 else err
        cos = self.dot / (n0 * n1) if n0 > 0 and n1 > 0 else float(n0 == n1)
        top1 = self.top1_hits / self.top1_count if self.top1_possible and self.top1_count else None
        return Fidelity(rel_l2=rel, max_abs=self.max_abs, cosine=cos, top1_agreement=top1, samples=self.samples,
                        inputs=inputs)


def fidelity(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], inputs: str) -> Fidelity:
    """Agreement of ``candidate`` outputs with ``reference`` outputs (see ``Fidelity``), for one batch."""
    stats = FidelityStats()
    stats.add(reference, candidate)
    return stats.result(inputs)


def batches(inputs: Mapping[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """``inputs`` in slices of at most ``size`` along the first (batch) dim, as views; whole when the inputs do not
    share one first dim (nothing to split by)."""
    firsts = {a.shape[0] if a.ndim else None for a in inputs.values()}
    count = firsts.pop() if len(firsts) == 1 else None
    if count is None or count <= size:
        yield dict(inputs)
        return
    for start in range(0, count, size):
        yield {k: v[start:start + size] for k, v in inputs.items()}


def _numeric(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.number)


def verify(
    adapter: FormatAdapter,
    original: Path,
    converted: Path,
    inputs: Mapping[str, np.ndarray],
    input_kind: str,
    config: ConversionConfig,
    workdir: Path,
    device: str = "cpu",
    *,
    latency: bool = True,
    chunks: Iterable[Mapping[str, np.ndarray]] | None = None,
) -> tuple[Fidelity, Latency | None]:
    """Fidelity and latency of ``converted`` against ``original`` (both model files) on ``inputs``; latency
    (``converter._latency``: interleaved, p50/p90/p99, speed-up with its interval) only if ``latency``. Fidelity
    is measured on ``chunks`` (batches, e.g. streamed from the user's samples) instead, when given.

    Raises:
        VerificationError: either model does not run on the inputs; the message says which and why.
    """
    threads = config.threads
    runners: list[Runner] = []
    backend = ""
    for label, path in (("original", original), ("converted", converted)):
        sub = workdir / f"verify-{label}"
        sub.mkdir(parents=True, exist_ok=True)
        with map_errors(f"the {label} model could not be loaded for verification", VerificationError, limit=400,
                        type_name=False):
            run, backend = adapter.runner(path, sub, threads, device)
        runners.append(run)
    # Fidelity batch by batch (``batch_size`` samples at a time), whatever the number of user samples: memory is
    # bounded by one batch's inputs, activations and outputs. Latency is timed on the first batch.
    stats = FidelityStats()
    timed: dict[str, np.ndarray] | None = None
    for chunk in (chunks if chunks is not None else batches(inputs, config.batch_size)):
        timed = chunk if timed is None else timed
        outs = []
        for label, run in zip(("original", "converted"), runners, strict=True):
            with map_errors(f"the {label} model failed on the verification inputs ({_shapes(chunk)})",
                            VerificationError, limit=400, type_name=False):
                outs.append([np.asarray(o) for o in run(chunk)])
        stats.add(outs[0], outs[1])
        del outs
    fid = stats.result(input_kind)
    if not latency:
        return fid, None
    from ..latency import backend_for, compare_files, latency_report

    inputs = timed if timed is not None else inputs
    backend = backend_for(adapter, device, threads)
    cmp = compare_files(adapter, original, converted, inputs, threads=threads, device=device, workdir=workdir,
                        runs=config.latency_runs, seed=config.seed)
    first = next(iter(inputs.values()), None)
    return fid, latency_report(cmp, backend, int(first.shape[0]) if first is not None and first.ndim else None)


def _shapes(inputs: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in inputs.items())
