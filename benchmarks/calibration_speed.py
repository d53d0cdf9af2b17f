"""Calibration in chunks (several consecutive layers captured in the same passes over the samples) against
layer-by-layer calibration (chunks of one layer: the old behaviour), side by side in one run.

1. digits CNN (examples/digits.py, ONNX): top-1 on the 397 test images after calibration on 256 unlabeled
   training images, at rank 1, rank 2 and the default policy, through the library (``converter.convert``), for
   each chunk cap; and the calibrate stage's wall time (which includes scoring the held-out images).
2. ResNet-18-like (and with ``--resnet50`` ResNet-50-sized) net, random weights with decaying spectra and random
   BN statistics, rank 2, random 224×224 samples: wall time of ``calibrate()`` alone, the time spent in the
   runtime's passes (tap calls) and their number, and the relative L2 distance of the model's outputs from the
   original's on held-out samples (data-free, and calibrated per chunk cap).

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/calibration_speed.py [--samples 32] [--resnet50] [--no-digits]
Timings are wall-clock on whatever machine runs it; set OPENBLAS_NUM_THREADS=1 (numpy's BLAS otherwise
oversubscribes a loaded machine) and read them as noisy on a shared one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _models import ResNet50, ResNetLike, decay_spectra, randomise_bn  # noqa: E402
from digits import data as digits_data  # noqa: E402
from digits import train as train_digits  # noqa: E402

import converter  # noqa: E402
from converter import _calibrate  # noqa: E402
from converter._calibrate import calibrate  # noqa: E402
from converter._data import load_samples  # noqa: E402
from converter._decompose import decompose  # noqa: E402
from converter.formats import detect_format  # noqa: E402

CAPS: list[int | None] = [1, 2, 4, None]  # 1: layer by layer (the old calibration); None: the default cap
POLICIES = [{"rank": 1}, {"rank": 2}, {}]


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def digits(out: Path) -> None:
    xtr, _, xte, yte = digits_data()
    np.savez(out / "calibration.npz", inputs=xtr[:256].numpy())
    np.savez(out / "test.npz", inputs=xte.numpy(), labels=yte.numpy())
    model, _, _ = train_digits()
    path = _export(model, xte[:2], out / "digits.onnx")
    print("digits CNN (ONNX): top-1 on 397 test images after calibration on 256 unlabeled images")
    print(f"{'policy':<10}{'chunk cap':>10}{'original':>10}{'data-free':>10}{'calibrated':>11}{'calib s':>9}")
    for policy in POLICIES:
        name = ",".join(f"{k}={v}" for k, v in policy.items()) or "default"
        for cap in CAPS:
            with mock.patch.object(_calibrate, "calibrate", partial(calibrate, max_chunk=cap)):
                r = converter.convert(path, out / "slim.onnx", data=out / "calibration.npz", eval=out / "test.npz",
                                      verify=False, calibration_samples=256, **policy).report
            a = r.accuracy
            print(f"{name:<10}{_cap(cap, 4):>10}{a.original:>10.3f}{a.data_free:>10.3f}"
                  f"{'—' if a.calibrated is None else f'{a.calibrated:.3f}':>11}{r.timings.calibrate_s:>9.1f}")


class Counting:
    """A tap that counts its calls and the time spent in them."""

    def __init__(self, tap: object) -> None:
        self.tap, self.calls, self.seconds = tap, 0, 0.0
        self.points, self.skipped = tap.points, tap.skipped  # type: ignore[attr-defined]

    def __call__(self, *args: object) -> object:
        t = time.perf_counter()
        try:
            return self.tap(*args)  # type: ignore[operator]
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - t


def resnet(out: Path, name: str, model: torch.nn.Module, samples: int) -> None:
    torch.manual_seed(0)
    model = randomise_bn(decay_spectra(model))
    path = _export(model, torch.randn(1, 3, 224, 224), out / f"{name}.onnx")
    adapter = detect_format(path)
    (out / "work").mkdir(exist_ok=True)
    loaded = adapter.load(path, out / "work")
    layers = [c for c in adapter.find_convs(loaded, {"x": (1, 3, 224, 224)})
              if c.weight is not None and int(np.prod(c.kernel)) > 1]
    tap = Counting(adapter.tap(loaded, layers, out / "work"))
    rng = np.random.default_rng(0)
    np.savez(out / "x.npz", x=rng.standard_normal((samples + 8, 3, 224, 224)).astype(np.float32))
    from converter.formats._base import InputSpec

    all_ = load_samples(out / "x.npz", [InputSpec("x", None, np.dtype(np.float32))])
    cal, held = all_.head(samples), all_.subset(np.arange(samples, samples + 8))
    items = [(layer, decompose(layer.weight, layer.groups, "dw-pw", 2)) for layer in layers]
    free = _calibrate.overrides(tap, {layer.name: (d, None) for layer, d in items})  # type: ignore[arg-type]
    variants = {"data-free": free}
    print(f"\n{name}: {len(items)} spatial convs at rank 2, {samples} calibration samples of 224×224, batch 32")
    print(f"{'chunk cap':>10}{'calibrate s':>12}{'in passes s':>12}{'tap calls':>10}")
    for cap in (1, 2, None):
        tap.calls, tap.seconds = 0, 0.0
        t = time.perf_counter()
        result = calibrate(tap, items, cal, batch_size=32, max_chunk=cap)  # type: ignore[arg-type]
        took = time.perf_counter() - t
        print(f"{_cap(cap, len(items)):>10}{took:>12.1f}{tap.seconds:>12.1f}{tap.calls:>10}", flush=True)
        variants[f"cap {_cap(cap, len(items))}"] = _calibrate.overrides(tap, result.factors)  # type: ignore[arg-type]
    scorer = _calibrate.evaluate(tap, variants, held, batch_size=8, num_classes=None)  # type: ignore[arg-type]
    print("relative L2 distance of the outputs from the original's on 8 held-out samples: "
          + ", ".join(f"{v} {scorer.values(v)['rel_l2']:.4f}" for v in variants))


def _cap(cap: int | None, layers: int) -> str:
    return str(cap) if cap is not None else f"{_calibrate.default_cap(layers)} (dflt)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--resnet50", action="store_true")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--no-resnet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if not args.no_digits:
            digits(out)
        if not args.no_resnet:
            resnet(out, "ResNet-18-like", ResNetLike(), args.samples)
        if args.resnet50:
            resnet(out, "ResNet-50-sized", ResNet50(), args.samples)


if __name__ == "__main__":
    main()
