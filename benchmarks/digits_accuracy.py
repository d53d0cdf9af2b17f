"""Accuracy on real data after a data-free conversion: a small CNN trained on scikit-learn's bundled digits
(examples/digits.py), converted through the real pipeline (ONNX, onnxruntime), evaluated on the 397 held-out
images under several rank policies.

Prints per policy: converted layers, parameter share, mean kept energy, output fidelity, test accuracy (original
and converted, measured with onnxruntime on the saved files), and measured latency.

Usage: python benchmarks/digits_accuracy.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from digits import main as build_digits  # noqa: E402

import converter  # noqa: E402

POLICIES = [
    {},  # the default policy (energy 0.9, never slower on the measured backend)
    {"rank": 1}, {"rank": 2}, {"rank": 3}, {"energy": 0.5}, {"energy": 0.8}, {"energy": 0.9},
    {"energy": 0.95}, {"target_params": 0.5}, {"target_macs": 0.5},
]


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        build_digits(out)
        data = np.load(out / "digits-test.npz")
        x, y = data["inputs"], data["labels"]
        base = accuracy(out / "digits.onnx", x, y)
        print(f"original test accuracy {base:.3f} ({len(y)} images)\n")
        print(f"{'policy':<22}{'conv':>5}{'params':>8}{'energy':>8}{'rel_l2':>8}{'top1 agr':>9}{'acc':>7}"
              f"{'speedup':>9}")
        for policy in POLICIES:
            dest = out / "slim.onnx"
            r = converter.convert(out / "digits.onnx", dest, inputs=out / "digits-test.npz", threads=1,
                                  **policy).report
            conv = r.converted_layers
            energy = np.mean([layer.energy for layer in conv]) if conv else float("nan")
            acc = accuracy(dest, x, y)
            name = ",".join(f"{k}={v}" for k, v in policy.items()) or "default"
            speed = f"{r.latency.speedup:>8.2f}×" if r.latency is not None else "  unchanged"
            print(f"{name:<22}{len(conv):>5}{r.params.converted / r.params.original:>8.2f}{energy:>8.2f}"
                  f"{r.fidelity.rel_l2:>8.3f}{r.fidelity.top1_agreement:>9.3f}{acc:>7.3f}{speed}")


if __name__ == "__main__":
    main()
