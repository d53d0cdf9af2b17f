"""The calibrate stage's wall time on a ResNet-50-sized ONNX model (torchvision's layout, 25.6 M parameters,
random BN statistics and decaying spatial spectra, see ``_models``) at 224×224, rank 2, with 128 calibration
samples and 32 held-out samples (random images: the benchmark measures time, not accuracy), on this machine.

Printed: the stage's wall time (``report.timings.calibrate_s``, which includes scoring the held-out samples for
the original, data-free and calibrated models), how many forward passes the tap ran (and how many sample
passes: a pass over a batch of 32 counts 32), the time spent inside those passes, the time spent in the
statistics and the fits, the converted layers and the held-out relative L2 error data-free vs calibrated.

Usage: python benchmarks/calibrate_speed.py [--samples N] [--held N] [--size S] [--profile] [--whole]
(--profile: also print the 25 most expensive functions by cumulative time; --whole: every pass runs the whole
network, as before calibration's passes stopped at the captured input.)
Timings are wall-clock on whatever machine runs it; on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import ResNet50, decay_spectra, randomise_bn

import converter
from converter.formats._onnx import _tap as onnx_tap

RANK = 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--held", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--whole", action="store_true",
                    help="run the whole network on every pass, as before passes stopped at the captured input")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = decay_spectra(randomise_bn(ResNet50()))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        x = torch.randn(1, 3, args.size, args.size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), out / "r50.onnx", dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        rng = np.random.default_rng(0)
        np.savez(out / "calib.npz", inputs=rng.standard_normal((args.samples, 3, args.size, args.size), np.float32))
        np.savez(out / "held.npz", inputs=rng.standard_normal((args.held, 3, args.size, args.size), np.float32))

        counts = {"calls": 0, "samples": 0, "seconds": 0.0}
        call = onnx_tap.OnnxTap.__call__

        def counted(self, inputs, weights, want, outputs=True):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            got = call(self, inputs, weights, want, outputs or args.whole)
            counts["seconds"] += time.perf_counter() - t
            counts["calls"] += 1
            counts["samples"] += len(next(iter(inputs.values())))
            return got

        onnx_tap.OnnxTap.__call__ = counted  # type: ignore[method-assign]
        prof = cProfile.Profile() if args.profile else None
        if prof:
            prof.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        report = converter.convert(out / "r50.onnx", out / "slim.onnx", rank=RANK, data=out / "calib.npz",
                                   eval=out / "held.npz", verify=False, measure=False,
                                   calibration_samples=args.samples).report
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        if prof:
            prof.disable()
        onnx_tap.OnnxTap.__call__ = call  # type: ignore[method-assign]
    a, t = report.accuracy, report.timings
    layers = [d for d in report.layers if d.status == "converted"]
    print(f"ResNet-50-sized ONNX, {args.size}x{args.size}, rank {RANK}, {args.samples} calibration + {args.held} "
          f"held-out samples, {len(layers)} converted layers, passes {'whole' if args.whole else 'up to the input'}")
    print(f"  convert total {total:.1f} s wall, {cpu:.1f} s CPU (all threads; on a loaded machine the CPU time "
          f"is the steadier figure); calibrate stage {t.calibrate_s:.1f} s wall")
    print(f"  tap passes: {counts['calls']} runs, {counts['samples']} sample passes, {counts['seconds']:.1f} s "
          f"inside the runtime; the rest of the stage {t.calibrate_s - counts['seconds']:.1f} s (statistics, fits)")
    print(f"  held-out {a.metric}: original {a.original}, data-free {a.data_free}, calibrated {a.calibrated} "
          f"(kept {a.kept})")
    methods: dict[str, int] = {}
    for d in layers:
        m = str(getattr(d, "calibration", None))
        methods[m] = methods.get(m, 0) + 1
    print(f"  methods: {methods}")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
