"""Calibration of wide 1-D kernels, whose patches are too large for the dense patch Gram matrix (C·k + 1 > 6000):
a 1-D CNN trained on real data that ships with scikit-learn (the digits, each 16×16 image read row by row as a
256-sample signal; nothing is downloaded), with two 128-channel convs of 64 taps (patches of 8,192 values).

Converted through the library (ONNX) at rank 1 and rank 2 with 256 unlabeled training signals as ``data`` and the
397 test signals (labelled) as ``eval``. Printed per rank, side by side in one run:

* ``skipped (before)``: the wide layers left data-free, the others calibrated — what calibration did before
  (it refused patches above 5,999 values);
* ``factored``: the default now (statistics in the first factor's output space, ``algebra/_factored.py``);
* ``full Gram``: the dense patch Gram matrix forced on the wide layers (the limit raised; 0.5 GB per layer
  here, 34 GB at 1024 × 64), the most accurate method, for reference.

Then per converted layer (factored run): patch size, order, statistics, method, output error data-free vs
calibrated.

Usage: python benchmarks/wide_kernels.py [--epochs N]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from digits import data as digits_data  # noqa: E402

import converter  # noqa: E402
from converter.algebra import _factored, _refit  # noqa: E402
from converter.recovery import _calibrate  # noqa: E402

CALIBRATION_SAMPLES = 256


class WideNet(nn.Module):
    """[B, 1, 256] → 10 classes; two 128-input-channel convs of 64 taps."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 128, 9, stride=2, padding=4)
        self.c2 = nn.Conv1d(128, 128, 64, stride=4, padding=32)
        self.c3 = nn.Conv1d(128, 32, 64, stride=2, padding=32)
        self.c4 = nn.Conv1d(32, 32, 9, padding=4)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.fc(F.relu(self.c4(x)).mean(2))


def signals() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    xtr, ytr, xte, yte = digits_data()
    return xtr.reshape(len(xtr), 1, -1), ytr, xte.reshape(len(xte), 1, -1), yte


def train(epochs: int) -> tuple[WideNet, float]:
    torch.manual_seed(0)
    xtr, ytr, xte, yte = signals()
    model = WideNet()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    return model, acc


_calibrate_stats = _calibrate.calibrate_stats


def _data_free_for_factored(stats, dec, ridge=1e-3):  # type: ignore[no-untyped-def]
    """What calibration did before: a layer too large for the Gram matrix stays data-free."""
    got = _calibrate_stats(stats, dec, ridge)
    if got.statistics != "factored":
        return got
    return _refit.CalibratedLayer(dec, None, "data-free", {"data-free": got.errors["data-free"]}, "factored")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model, acc = train(args.epochs)
    print(f"WideNet on digits-as-signals: test top-1 {acc:.3f} after {args.epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s)")
    xtr, _, xte, yte = signals()
    variants = {
        "skipped (before)": mock.patch.object(_calibrate, "calibrate_stats", _data_free_for_factored),
        "factored": contextlib.nullcontext(),
        "full Gram": mock.patch.object(_factored, "MAX_PATCH_DIM", 8193 + 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (xte[:1],), out / "wide.onnx", dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
        np.savez(out / "calib.npz", x=xtr[:CALIBRATION_SAMPLES].numpy())
        np.savez(out / "test.npz", x=xte.numpy(), labels=yte.numpy())
        print(f"\n{'rank':<6}{'calibration':<18}{'original':>9}{'data-free':>10}{'calibrated':>11}{'kept':>12}"
              f"{'calib s':>9}")
        details = {}
        for rank in (1, 2):
            for name, patch in variants.items():
                # the full Gram matrix: LayerStats' own limit raised too (it guards its constructor)
                extra = (mock.patch.object(_refit, "MAX_PATCH_DIM", 8193 + 1) if name == "full Gram"
                         else contextlib.nullcontext())
                with patch, extra:
                    r = converter.convert(out / "wide.onnx", out / "slim.onnx", rank=rank, data=out / "calib.npz",
                                          eval=out / "test.npz", verify=False, measure=False,
                                          calibration_samples=CALIBRATION_SAMPLES).report
                a = r.accuracy
                print(f"{rank:<6}{name:<18}{a.original:>9.3f}{a.data_free:>10.3f}{a.calibrated:>11.3f}"
                      f"{a.kept:>12}{r.timings.calibrate_s:>9.1f}")
                details[(rank, name)] = r
        for rank in (1, 2):
            print(f"\nrank {rank}, per converted layer: relative output error on the calibration samples")
            print(f"{'layer':<10}{'patch':>7}{'order':>7}  {'before':<22}{'factored':<28}{'full Gram':<26}")
            rows = {name: {d.name: d for d in details[(rank, name)].layers if d.status == "converted"}
                    for name in variants}
            for lname, d in rows["factored"].items():
                conv = next((m for n, m in model.named_children() if f"/{n}/" in lname or lname == n), None)
                patch = int(np.prod(conv.weight.shape[1:])) if conv is not None else 0
                cells = []
                for name in variants:
                    x = rows[name].get(lname)
                    oe = x.output_error if x is not None else None
                    cells.append("—" if oe is None else f"{oe.data_free:.3f}→{oe.calibrated:.3f} {x.calibration}")
                print(f"{lname:<10}{patch:>7}{d.order:>7}  {cells[0]:<22}{cells[1]:<28}{cells[2]:<26}")


if __name__ == "__main__":
    main()
