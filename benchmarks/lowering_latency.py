"""Latency of the two lowerings against the original, measured by the pipeline itself on the real runtime
(interleaved p50 after warm-up, in one process): a ResNet-50-sized model at 224×224, batch 1, at rank 2,
as ONNX (onnxruntime CPU) and TorchScript (torch CPU). Random weights: only speed is measured.

Prints, per format, order and lowering: MACs ratio, p50 original and converted, speed-up.

Usage: python benchmarks/lowering_latency.py [--threads 1] [--runs 20] [--formats onnx,torchscript]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from convert_speed import build  # noqa: E402

import converter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--formats", default="onnx,torchscript")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fmt in args.formats.split(","):
            src = build(fmt, folder)
            for order in ("dw-pw", "pw-dw"):
                for lowering in ("split", "fused"):
                    r = converter.convert(src, folder / f"out{src.suffix}", rank=args.rank, order=order,
                                          lowering=lowering, threads=args.threads, latency_runs=args.runs,
                                          input_shape=["x=1x3x224x224"]).report
                    lt = r.latency
                    print(f"[{fmt:<11}] {order} {lowering:<5} MACs {r.macs.converted / r.macs.original:.2f}× "
                          f"original {lt.original_ms:7.2f} ms  converted {lt.converted_ms:7.2f} ms  "
                          f"speed-up {lt.speedup:.2f}× ({lt.backend}, {lt.threads} thread(s), "
                          f"{len(r.converted_layers)} layers converted)")


if __name__ == "__main__":
    main()
