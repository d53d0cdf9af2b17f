"""Accuracy recovery by calibration, measured on models trained on real data that ships with scikit-learn
(nothing is downloaded).

Models:
  * digits CNN (examples/digits.py): four 3×3 convs, 97 % test accuracy, as ONNX and TorchScript (and ``.pt2``
    where that format is registered);
  * digits denoiser: a small conv net that maps a noisy digit to the clean one (its output is an image, not a
    softmax classifier), as ONNX and TorchScript.

Each is converted through the library (``converter.convert``) with 256 unlabeled training images as ``data`` and
the 397 held-out test images as ``eval``, at rank 1, rank 2 and the default policy. Printed per model and policy:
the original's accuracy, data-free and calibrated accuracy on the test images (the report's ``accuracy``
section; for the denoiser, the relative L2 distance from the original's outputs, lower is better), the share
of parameters kept, which model was written, the wall time of the plan, measure, rewrite and calibrate stages
(calibrate includes scoring the held-out images) and the number of converted convs.

Then, for the digits CNN (ONNX), ``target_params`` 0.3 and 0.2 planned on the weight error and on the output error on
the same 256 samples (the default with ``data``), side by side: which ranks, the accuracy of the data-free
factors and after calibration, and the plan stage's time.

Usage: python benchmarks/recovery.py [--quick]      (--quick: ONNX only, rank 1)
Timings are wall-clock on whatever machine runs it; on a shared machine they are noisy.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
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
from digits import train as train_digits  # noqa: E402

import converter  # noqa: E402
from converter.formats import format_names  # noqa: E402

POLICIES = [{"rank": 1}, {"rank": 2}, {}]
CALIBRATION_SAMPLES = 256


class Denoiser(nn.Module):
    """Noisy digit [B, 1, 16, 16] → clean digit [B, 1, 16, 16]."""

    def __init__(self, w: int = 32) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, w, 3, padding=1)
        self.c2 = nn.Conv2d(w, w, 3, padding=1)
        self.c3 = nn.Conv2d(w, w, 3, padding=1)
        self.out = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x)))))))


def _noisy(x: torch.Tensor, seed: int) -> torch.Tensor:
    return x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def train_denoiser(epochs: int = 15) -> Denoiser:
    torch.manual_seed(0)
    xtr, _, _, _ = digits_data()
    model = Denoiser()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for epoch in range(epochs):
        noisy = _noisy(xtr, epoch)
        for i in range(0, len(xtr), 64):
            loss = F.mse_loss(model(noisy[i:i + 64]), xtr[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, example: torch.Tensor, out: Path, name: str) -> dict[str, Path]:
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths["onnx"] = out / f"{name}.onnx"
        torch.onnx.export(model, (example,), paths["onnx"], dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        paths["torchscript"] = out / f"{name}.pt"
        torch.jit.save(torch.jit.trace(model, example), str(paths["torchscript"]))
        if "pt2" in format_names():
            paths["pt2"] = out / f"{name}.pt2"
            batch = torch.export.Dim("batch", min=1)
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), paths["pt2"])
    return paths


def run(title: str, paths: dict[str, Path], data: Path, eval_: Path, out: Path, policies: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'format':<12}{'policy':<10}{'params':>7}{'original':>10}{'data-free':>10}{'calibrated':>11}"
          f"{'kept':>12}{'plan s':>8}{'measure s':>10}{'rewrite s':>10}{'calib s':>9}{'convs':>6}")
    for fmt, path in paths.items():
        for policy in policies:
            name = ",".join(f"{k}={v}" for k, v in policy.items()) or "default"
            r = converter.convert(path, out / f"slim{path.suffix}", data=data, eval=eval_, verify=False,
                                  calibration_samples=CALIBRATION_SAMPLES, **policy).report
            a, t = r.accuracy, r.timings
            kept = r.params.converted / r.params.original
            print(f"{fmt:<12}{name:<10}{kept:>7.2f}{_f(a.original):>10}{_f(a.data_free):>10}{_f(a.calibrated):>11}"
                  f"{a.kept:>12}{_f(t.plan_s, 2):>8}{_f(t.measure_s, 2):>10}{_f(t.rewrite_s, 2):>10}"
                  f"{_f(t.calibrate_s, 2):>9}{len(r.converted_layers):>6}")


def planning(path: Path, data: Path, eval_: Path, out: Path, share: float = 0.3) -> None:
    """``target_params=share`` planned on the weight error and on the output error, with the same samples."""
    print(f"\ndigits CNN (ONNX), target_params={share}: ranks planned on the weight error vs the output error on the "
          f"{CALIBRATION_SAMPLES} samples")
    print(f"{'planned on':<14}{'params':>7}{'data-free':>10}{'calibrated':>11}{'plan s':>8}  ranks (order)")
    for name in ("weight error", "output error"):
        # The library plans a budget on the output error whenever it has samples; the weight-error row switches
        # that step off, so that both rows calibrate on the same samples.
        off = (mock.patch("converter.pipeline._convert.plans_on_output_error", lambda _: False)
               if name == "weight error" else contextlib.nullcontext())
        with off:
            r = converter.convert(path, out / "slim.onnx", data=data, eval=eval_, verify=False,
                                  calibration_samples=CALIBRATION_SAMPLES, target_params=share).report
        assert r.policy["error"].startswith(name.split()[0]), r.policy["error"]
        ranks = " ".join(f"{d.rank}{d.order[0]}" for d in r.layers if d.status == "converted")
        kept = r.params.converted / r.params.original
        print(f"{name:<14}{kept:>7.2f}{_f(r.accuracy.data_free):>10}{_f(r.accuracy.calibrated):>11}"
              f"{_f(r.timings.plan_s, 2):>8}  {ranks}")


def _f(value: float | None, digits: int = 3) -> str:
    """A figure, or — for a stage that did not run (the default policy may convert nothing: never slower)."""
    return "—" if value is None else f"{value:.{digits}f}"


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    policies = POLICIES[:1] if quick else POLICIES
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        xtr, _, xte, yte = digits_data()
        np.savez(out / "calibration.npz", inputs=xtr[:CALIBRATION_SAMPLES].numpy())  # unlabeled
        np.savez(out / "test.npz", inputs=xte.numpy(), labels=yte.numpy())
        classifier, _, _ = train_digits()
        paths = export(classifier, xte[:2], out, "digits")
        if quick:
            paths = {"onnx": paths["onnx"]}
        run("digits CNN: top-1 accuracy on 397 test images (labels), calibrated on 256 unlabeled training images",
            paths, out / "calibration.npz", out / "test.npz", out, policies)
        for share in (0.3, 0.2):
            planning(paths["onnx"], out / "calibration.npz", out / "test.npz", out, share)

        np.savez(out / "noisy-calibration.npz", inputs=_noisy(xtr[:CALIBRATION_SAMPLES], 100).numpy())
        np.savez(out / "noisy-test.npz", inputs=_noisy(xte, 101).numpy())
        denoiser = train_denoiser()
        paths = export(denoiser, xte[:2], out, "denoiser")
        if quick:
            paths = {"onnx": paths["onnx"]}
        run("digits denoiser (image output): relative L2 distance from the original's outputs (lower is better)",
            paths, out / "noisy-calibration.npz", out / "noisy-test.npz", out, policies)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
