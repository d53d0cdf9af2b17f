"""Quantized models in, quantized models out, measured on real data that ships with scikit-learn (nothing is
downloaded).

The model: the digits CNN of examples/digits.py at width 64 (convs 1→64→64→128→128, 3×3, on 16×16 digits),
trained here, exported to ONNX and quantized by onnxruntime's own static quantizer (int8 activations and
per-channel int8 weights, calibrated on 256 training images) in both formats, QDQ and QOperator. Each int8 model
is converted through the library (``converter.convert``) at rank 1, rank 2 and the default policy, data-free
and calibrated (``data``: the same 256 training images, unlabeled: the factors are refitted against the int8
original's outputs and the new intermediate tensors get their ranges from them).

Printed, one row per model: top-1 accuracy on the 397 held-out test images (run on onnxruntime from the saved
files), latency at batch 1 on one thread (median of interleaved rounds, all models of one format side by side in
one process, after warm-up), the speed-up over the int8 original, and the convs onnxruntime runs after its graph
optimisations (integer ``QLinearConv`` vs float ``Conv``: "stays int8").

Usage: python benchmarks/quantized.py [--quick]      (--quick: QDQ only, rank 1 only)
Timings are wall-clock on whatever machine runs it; on a shared machine they are noisy (the interleaving keeps
the ratios fair, not the absolute numbers).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime import quantization

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from digits import DigitsCNN  # noqa: E402
from digits import data as digits_data  # noqa: E402

import converter  # noqa: E402

POLICIES = [("rank 1", {"rank": 1}), ("rank 2", {"rank": 2}), ("default", {})]
CALIBRATION = 256
ROUNDS, PER_ROUND = 30, 20


def train(width: int = 64, epochs: int = 12, seed: int = 0) -> tuple[DigitsCNN, np.ndarray, np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a shared machine: more threads ran 8× slower here
    xtr, ytr, xte, yte = digits_data()
    model = DigitsCNN(width)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for i in range(0, len(xtr), 32):
            loss = torch.nn.functional.cross_entropy(model(xtr[i:i + 32]), ytr[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), xtr[:CALIBRATION].numpy(), xte.numpy(), yte.numpy()


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self._it = iter([{"x": x[i:i + 32]} for i in range(0, len(x), 32)])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((session(path).run(None, {"x": x})[0].argmax(1) == y).mean())


def kernels(path: Path, folder: Path) -> str:
    """The convs onnxruntime runs after its graph optimisations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{path.stem}-optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    convs = {k: v for k, v in ops.items() if "Conv" in k}
    return " ".join(f"{k}×{v}" for k, v in sorted(convs.items()))


def latencies(paths: dict[str, Path], x: np.ndarray) -> dict[str, float]:
    """Median ms per inference at batch 1, one thread, all models interleaved round by round."""
    sessions = {k: session(p) for k, p in paths.items()}
    feed = {"x": x[:1]}
    for s in sessions.values():
        for _ in range(50):
            s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(ROUNDS):
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(PER_ROUND):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t) / PER_ROUND * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(quick: bool = False) -> None:
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        model, xcal, xte, yte = train()
        float_path = folder / "float.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (torch.from_numpy(xte[:1]),), float_path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
        np.savez(folder / "calib.npz", x=xcal)
        np.savez(folder / "verify.npz", x=xte[:64])
        print(f"trained the width-64 digits CNN in {time.perf_counter() - t0:.0f} s; "
              f"{len(xcal)} calibration images, {len(yte)} test images; onnxruntime {ort.__version__}", flush=True)
        formats = [("QDQ", quantization.QuantFormat.QDQ)]
        if not quick:
            formats.append(("QOperator", quantization.QuantFormat.QOperator))
        policies = POLICIES[:1] if quick else POLICIES
        for fmt_name, fmt in formats:
            int8 = folder / f"int8-{fmt_name}.onnx"
            quantization.quantize_static(float_path, int8, _Reader(xcal), quant_format=fmt, per_channel=True)
            paths = {"float original": float_path, "int8 original": int8}
            notes: dict[str, str] = {}
            for label, policy in policies:
                for how in ("data-free", "calibrated"):
                    out = folder / f"{fmt_name}-{label.replace(' ', '')}-{how}.onnx"
                    t = time.perf_counter()
                    result = converter.convert(int8, out, inputs=folder / "verify.npz",
                                               data=folder / "calib.npz" if how == "calibrated" else None,
                                               **policy)
                    converted = sum(layer.status == "converted" for layer in result.report.layers)
                    ranks = ",".join(str(layer.rank) for layer in result.report.layers if layer.rank)
                    notes[f"{label}, {how}"] = (f"{converted}/{len(result.report.layers)} convs (ranks {ranks or '-'}),"
                                                f" {time.perf_counter() - t:.0f} s")
                    paths[f"{label}, {how}"] = out if converted else int8
            ms = latencies(paths, xte)
            base = ms["int8 original"]
            print(f"\n{fmt_name} (int8 activations, per-channel int8 weights), batch 1, 1 thread")
            print(f"{'model':<24}{'top-1':>8}{'ms':>9}{'× int8':>9}  {'convs run by onnxruntime':<34} conversion")
            for name, path in paths.items():
                print(f"{name:<24}{accuracy(path, xte, yte):>8.3f}{ms[name]:>9.3f}{base / ms[name]:>9.2f}  "
                      f"{kernels(path, folder):<34} {notes.get(name, '')}", flush=True)


if __name__ == "__main__":
    main("--quick" in sys.argv[1:])
