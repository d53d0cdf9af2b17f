"""Latency on a GPU: the ResNet-like and YOLO-like nets of `latency.py`, converted with `device="cuda"` (candidates
timed on the GPU, the final measurement too), as ONNX on onnxruntime's CUDA provider and as TorchScript and
torch.export `.pt2` on torch CUDA, at batch 1 and 8, at the default policy and at rank 2. A few minutes on one GPU.

Prints per run: converted layers, MAC cut, measured speed-up with its 95 % interval, p50 of both models,
conversion wall time. Needs a CUDA device (and onnxruntime-gpu for the ONNX rows; they are skipped without it).

Usage: python benchmarks/gpu_latency.py [--models resnet,yolo] [--batches 1,8] [--runs 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _models import ResNetLike, YoloLike, randomise_bn  # noqa: E402

import converter  # noqa: E402

MODELS = {"resnet": (ResNetLike, 224), "yolo": (YoloLike, 320)}
POLICIES = {"default": {}, "rank 2": {"rank": 2}}


def export(name: str, fmt: str, batch: int, folder: Path) -> Path:
    factory, size = MODELS[name]
    torch.manual_seed(0)
    model = randomise_bn(factory())
    x = torch.randn(batch, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            path = folder / f"{name}-b{batch}.onnx"
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
        elif fmt == "pt2":
            path = folder / f"{name}-b{batch}.pt2"
            torch.export.save(torch.export.export(model, (x,)), str(path))
        else:
            path = folder / f"{name}-b{batch}.pt"
            torch.jit.save(torch.jit.trace(model, x, check_trace=False), str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet,yolo")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs one")
    import onnxruntime as ort

    formats = ["torchscript", "pt2"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        formats.insert(0, "onnx")
    else:
        print("onnxruntime has no CUDA provider (install onnxruntime-gpu): ONNX rows skipped")
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{'model':<8} {'backend':<18} {'batch':>5} {'policy':<8} {'layers':>6} {'MAC cut':>8} {'speed-up':>8} "
          f"{'95% interval':>13} {'p50 ms':>17} {'convert s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            size = MODELS[name][1]
            for fmt in formats:
                for batch in (int(b) for b in args.batches.split(",")):
                    src = export(name, fmt, batch, folder)
                    for label, options in POLICIES.items():
                        t0 = time.perf_counter()
                        r = converter.convert(src, folder / f"out{src.suffix}", device="cuda",
                                              input_shape=[f"x={batch}x3x{size}x{size}"], latency_runs=args.runs,
                                              **options).report
                        took = time.perf_counter() - t0
                        cut = r.macs.original / r.macs.converted if r.macs.converted else float("nan")
                        lat = r.latency
                        head = (f"{name:<8} {(lat.backend if lat else fmt):<18} {batch:>5} {label:<8} "
                                f"{len(r.converted_layers):>6} {cut:>7.2f}×")
                        if lat is None:
                            print(f"{head} {'1.00×':>8} {'(unchanged)':>13} {'':>17} {took:>9.1f}")
                        else:
                            print(f"{head} {lat.speedup:>7.2f}× {lat.speedup_low:>6.2f}–{lat.speedup_high:<6.2f} "
                                  f"{lat.original_ms:>7.2f}→{lat.converted_ms:<7.2f} {took:>9.1f}")


if __name__ == "__main__":
    main()
