"""Latency of converted models on the runtimes they run on, side by side in one run: YOLO-like (320×320),
ResNet-like (ResNet-18 layout, 224×224) and MobileNet-like (MobileNetV2 layout, 224×224) nets with random
weights, each converted at the default policy and at rank 1 and 2, measured on onnxruntime CPU with 1 and 2
threads and on torch CPU (TorchScript, 1 thread), batch 1.

Prints per run: MACs cut (original / converted), measured speed-up with its 95 % interval, the realised share of
the MAC cut (speed-up / MAC cut), converted layers, and the conversion's wall time (candidate timing included).
Then a ResNet-50-sized conversion's wall time with candidate timing (target < 60 s).

These machines are shared: absolute times and intervals move with the load; read the ratios, measured
interleaved in one process, and rerun when the machine is quiet.

Usage: python benchmarks/latency.py [--models yolo,resnet,mobilenet] [--backends ort1,ort2,torch1]
       [--policies default,default*,rank 1,rank 2] [--runs 30] [--no-resnet50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _models import MobileNetLike, ResNet50, ResNetLike, YoloLike, decay_spectra, randomise_bn  # noqa: E402

import converter  # noqa: E402

MODELS = {"yolo": (YoloLike, 320), "resnet": (ResNetLike, 224), "mobilenet": (MobileNetLike, 224)}
# (format, threads): onnxruntime CPU with 1 and 2 threads, torch CPU (TorchScript) with 1
BACKENDS = (("onnx", 1), ("onnx", 2), ("torchscript", 1))
# "default*": the default policy on the same net with decaying kernel spectra (as trained kernels have), where it
# reaches its energy target at a low rank; on flat random spectra it converts nothing.
# "rank 2 nm": rank 2 planned on counts alone (--no-measure), to show what measuring changes.
POLICIES = {"default": {}, "default*": {}, "rank 1": {"rank": 1}, "rank 2": {"rank": 2},
            "rank 2 nm": {"rank": 2, "measure": False}}


def export(name: str, fmt: str, folder: Path, decayed: bool = False) -> tuple[Path, str]:
    factory, size = MODELS.get(name) or (ResNet50, 224)
    torch.manual_seed(0)
    model = randomise_bn(factory())
    if decayed:
        model = decay_spectra(model)
        name = f"{name}-decayed"
    x = torch.randn(1, 3, size, size)
    shape = f"x=1x3x{size}x{size}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            path = folder / f"{name}.onnx"
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
        else:
            path = folder / f"{name}.pt"
            torch.jit.save(torch.jit.trace(model, x, check_trace=False), str(path))
    return path, shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="yolo,resnet,mobilenet")
    ap.add_argument("--runs", type=int, default=30, help="most timed rounds of the final measurement")
    ap.add_argument("--no-resnet50", action="store_true")
    ap.add_argument("--backends", default="ort1,ort2,torch1", help="of ort1, ort2, torch1")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"of {', '.join(POLICIES)}")
    args = ap.parse_args()
    print(f"{'model':<10} {'backend':<18} {'policy':<9} {'layers':>6} {'MAC cut':>8} {'speed-up':>8} "
          f"{'95% interval':>13} {'realised':>8} {'convert s':>9}  note")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            for fmt, threads in BACKENDS:
                if f"{'ort' if fmt == 'onnx' else 'torch'}{threads}" not in args.backends.split(","):
                    continue
                plain, shape = export(name, fmt, folder)
                decayed, _ = export(name, fmt, folder, decayed=True)
                for label, options in POLICIES.items():
                    if label not in args.policies.split(","):
                        continue
                    src = decayed if label.endswith("*") else plain
                    t0 = time.perf_counter()
                    r = converter.convert(src, folder / f"out{src.suffix}", threads=threads, input_shape=[shape],
                                          latency_runs=args.runs, **options).report
                    took = time.perf_counter() - t0
                    cut = r.macs.original / r.macs.converted if r.macs.converted else float("nan")
                    lat = r.latency
                    backend = f"{'ort' if fmt == 'onnx' else 'torch'}-cpu {threads}t"
                    if lat is None:
                        print(f"{name:<10} {backend:<18} {label:<9} {len(r.converted_layers):>6} {cut:>7.2f}× "
                              f"{'1.00×':>8} {'(unchanged)':>13} {'':>8} {took:>9.1f}  {_why(r)}")
                        continue
                    realised = lat.speedup / cut if cut > 1.1 else float("nan")  # meaningless without a cut
                    print(f"{name:<10} {backend:<18} {label:<9} {len(r.converted_layers):>6} {cut:>7.2f}× "
                          f"{lat.speedup:>7.2f}× {lat.speedup_low:>6.2f}–{lat.speedup_high:<6.2f} {realised:>8.2f} "
                          f"{took:>9.1f}  p50 {lat.original_ms:.2f}→{lat.converted_ms:.2f} ms")
        if not args.no_resnet50:
            src, shape = export("resnet50", "onnx", folder, decayed=True)
            # a cold timing cache (its own folder), then the same conversion again with the cache warm
            os.environ["SEPCONV_CACHE_DIR"] = str(folder / "cache")
            for label in ("default policy, cold cache", "default policy, warm cache", "rank 2, cold cache"):
                if label == "rank 2, cold cache":
                    os.environ["SEPCONV_CACHE_DIR"] = str(folder / "cache2")
                t0 = time.perf_counter()
                r = converter.convert(src, folder / "out.onnx", threads=1, input_shape=[shape],
                                      **({"rank": 2} if "rank 2" in label else {})).report
                took = time.perf_counter() - t0
                m = r.policy.get("latency") or {}
                lat = r.latency
                speed = f"{lat.speedup:.2f}× [{lat.speedup_low:.2f}–{lat.speedup_high:.2f}]" if lat else "unchanged"
                print(f"\nResNet-50-sized ONNX (decaying spectra), 1 thread, {label}: conversion {took:.1f} s in all "
                      f"(measure stage {r.timings.model_dump().get('measure_s')} s, {m.get('layers_timed')} layers "
                      f"timed, {m.get('layers_cached')} from the cache; verify {r.timings.verify_s} s); "
                      f"speed-up {speed}")


def _why(report: converter.Report) -> str:
    return next((w for w in report.warnings if "unchanged" in w), "")[:90]


if __name__ == "__main__":
    main()
