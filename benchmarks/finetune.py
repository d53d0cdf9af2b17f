"""Fine-tuning on real data: the digits CNN (examples/digits.py, trained on scikit-learn's bundled digits) with
every 3x3 conv at rank 1, data-free and then calibrated and fine-tuned on the CPU by distillation from the original,
in ONNX, TorchScript and .pt2. Accuracy is measured on the 397 test images with each format's own runtime (onnxruntime,
torch.jit.load) on the saved files; the fine-tune (``converter.convert(recover="finetune")``, the real pipeline)
sees only the 1400 training images (labels used), holding out 20 % of them for early stopping.

Target (issue 7): within 0.5 points of the original in at most 2 minutes on the CPU.

Usage: python benchmarks/finetune.py [--minutes M] [--epochs N] [--formats onnx,torchscript] [--scope factors|all]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

from digits import data, train  # noqa: E402

import converter  # noqa: E402


def accuracy(fmt: str, path: Path, x: np.ndarray, y: np.ndarray) -> float:
    if fmt == "onnx":
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    elif fmt == "pt2":
        with torch.no_grad():
            logits = torch.export.load(str(path)).module()(torch.from_numpy(x)).numpy()
    else:
        with torch.no_grad():
            logits = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--formats", default="onnx,torchscript,pt2")
    ap.add_argument("--scope", default="factors")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--verbose", action="store_true", help="print the held-out metric and loss of every epoch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        model, xte, yte = train()
        xtr, ytr, _, _ = data()
        np.savez(out / "train.npz", inputs=xtr.numpy(), labels=ytr.numpy())
        x, y = xte.numpy(), yte.numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (xte[:1],), out / "digits.onnx", dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
        torch.jit.save(torch.jit.script(model), str(out / "digits.pt"))
        program = torch.export.export(model, (xte[:2],), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(program, str(out / "digits.pt2"))
        print(f"digits CNN trained in {time.perf_counter() - t0:.1f} s; fine-tune: {args.minutes} min budget, "
              f"{args.epochs} epochs, scope {args.scope}, lr {args.lr}, 1 CPU thread\n")
        print(f"{'format':<12}{'conv params':>12}{'original':>10}{'data-free':>11}{'fine-tuned':>11}{'Δ points':>9}"
              f"{'epochs':>7}{'stopped':>11}{'train s':>8}{'total s':>8}")
        for fmt in args.formats.split(","):
            suffix = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}[fmt]
            src, slim, tuned = out / f"digits{suffix}", out / f"slim{suffix}", out / f"tuned{suffix}"
            common = {"rank": 1, "verify": False, "measure": False, "input_shape": {"x": (1, 1, 16, 16)}, "threads": 1}
            report = converter.convert(src, slim, recover="none", **common).report
            conv = [layer for layer in report.layers if layer.kernel == [3, 3]]
            share = sum(la.params_after for la in conv) / sum(la.params_before for la in conv)
            start = time.perf_counter()
            tuned_report = converter.convert(
                src, tuned, recover="finetune", data=out / "train.npz", holdout=0.2, batch_size=32,
                epochs=args.epochs, finetune_minutes=args.minutes, finetune_lr=args.lr, finetune_scope=args.scope,
                device="cpu", **common).report
            seconds = time.perf_counter() - start
            ft = tuned_report.finetune
            base, free, tuned_acc = (accuracy(fmt, p, x, y) for p in (src, slim, tuned))
            acc = tuned_report.accuracy
            print(f"{fmt:<12}{share:>11.1%} {base:>10.3f}{free:>11.3f}{tuned_acc:>11.3f}"
                  f"{100 * (tuned_acc - base):>+9.2f}{ft.epochs:>7}{ft.stopped:>11}{ft.seconds:>8.1f}"
                  f"{seconds:>8.1f}")
            if args.verbose:
                print(f"  held-out {acc.metric}: original {acc.original}, data-free {acc.data_free}, calibrated "
                      f"{acc.calibrated}, fine-tuned {acc.finetuned} (kept {acc.kept})")
                print(f"  held-out {ft.metric}: {ft.before:.3f} -> {ft.after:.3f}; timings "
                      f"{tuned_report.timings.model_dump(exclude_none=True)}; history {ft.history}")

if __name__ == "__main__":
    main()
