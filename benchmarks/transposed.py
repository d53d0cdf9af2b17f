"""Transposed convs: a UNet-like net whose decoder upsamples with two ConvTranspose layers, trained for a minute
on scikit-learn's bundled digits (denoising, 64×64 by default), exported to ONNX and converted at rank 1, rank 2 and the
default policy (energy 0.9), each data-free and calibrated on 256 samples.

Printed per policy: which layers were converted (and the transposed ones among them), parameters, the
relative L2 output error on 200 held-out digits (data-free and calibrated, from the report's ``accuracy``),
and latency on onnxruntime (1 thread, batch 1): the original and the converted model timed side by side in one
process, interleaved in rounds, median of the per-round medians, so both see the same machine load.

    .venv/bin/python benchmarks/transposed.py [--steps 300] [--rounds 7] [--width 32] [--scale 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

import converter


def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())


class UNet(nn.Module):
    """64×64 → 64×64; encoder 32-64-128 channels, decoder with two transposed convs and skip connections."""

    def __init__(self, w: int = 32) -> None:
        super().__init__()
        self.e1, self.e2, self.e3 = cbr(1, w), cbr(w, 2 * w, 2), cbr(2 * w, 4 * w, 2)
        self.mid = cbr(4 * w, 4 * w)
        self.up1 = nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1)  # 16 -> 32
        self.d1 = cbr(4 * w, 2 * w)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1)  # 32 -> 64
        self.d2 = cbr(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(a)
        c = self.mid(self.e3(b))
        d = self.d1(torch.cat([torch.relu(self.up1(c)), b], 1))
        return self.out(self.d2(torch.cat([torch.relu(self.up2(d)), a], 1)))


def digits(scale: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clean digits at (8·scale)² in [0, 1] and noisy copies."""
    images = load_digits().images.astype(np.float32) / 16.0
    clean = np.kron(images, np.ones((scale, scale), np.float32))[:, None]
    noisy = clean + 0.3 * np.random.default_rng(seed).standard_normal(clean.shape).astype(np.float32)
    return clean, noisy


def train(model: nn.Module, clean: np.ndarray, noisy: np.ndarray, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    rng = np.random.default_rng(0)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = rng.choice(len(clean), 32, replace=False)
        loss = nn.functional.mse_loss(model(torch.from_numpy(noisy[idx])), torch.from_numpy(clean[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def side_by_side(a: Path, b: Path, x: np.ndarray, rounds: int, runs: int = 20) -> tuple[float, float]:
    sa, sb = session(a), session(b)
    feeds = {sa.get_inputs()[0].name: x}
    for s in (sa, sb):
        for _ in range(3):
            s.run(None, feeds)
    med: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for i, s in enumerate((sa, sb)):
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times.append(time.perf_counter() - t0)
            med[i].append(statistics.median(times))
    return statistics.median(med[0]) * 1e3, statistics.median(med[1]) * 1e3


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"  # None: nothing was calibrated (no layer converted)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--width", type=int, default=32, help="channels of the first level (then ×2, ×4)")
    ap.add_argument("--scale", type=int, default=8, help="digits upsampled to (8·scale)² pixels")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    clean, noisy = digits(args.scale)
    model = UNet(args.width)
    t0 = time.perf_counter()
    loss = train(model, clean[:1500], noisy[:1500], args.steps)
    model.eval()
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s, train MSE {loss:.4f}")
    folder = Path(tempfile.mkdtemp(prefix="sepconv-transposed-"))
    src = folder / "unet.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(noisy[:1]),), str(src), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    np.savez(folder / "calib.npz", x=noisy[1500:1756])
    np.savez(folder / "test.npz", x=noisy[1597:1797])
    x1 = noisy[1500:1501]
    rows = []
    for label, options in (("rank 1", {"rank": 1}), ("rank 2", {"rank": 2}), ("default (energy 0.9)", {})):
        out = folder / f"{label.split()[0]}-{options.get('rank', 'e')}.onnx"
        result = converter.convert(src, out, data=folder / "calib.npz", eval=folder / "test.npz", threads=1,
                                   **options)
        r = result.report
        ups = [la for la in r.layers if la.op == "ConvTranspose"]
        acc = r.accuracy
        t_orig, t_conv = side_by_side(src, result.output_path, x1, args.rounds)
        rows.append((label, f"{sum(la.status == 'converted' for la in r.layers)}/{len(r.layers)}",
                     f"{sum(la.status == 'converted' for la in ups)}/{len(ups)}",
                     f"{r.params.converted / r.params.original:.2f}",
                     _fmt(acc.rel_l2.data_free), _fmt(acc.rel_l2.calibrated), acc.kept,
                     f"{t_orig:.2f}", f"{t_conv:.2f}", f"{t_orig / t_conv:.2f}×"))
        for la in ups:
            print(f"  {label}: {la.name} {la.status} ({la.reason})")
        print("  " + " | ".join(rows[-1]), flush=True)
    head = ("policy", "convs conv.", "ConvT conv.", "params", "rel L2 data-free", "rel L2 calibrated", "kept",
            "orig ms", "conv ms", "speedup")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print("latency: onnxruntime CPU, 1 thread, batch 1, original and converted interleaved in "
          f"{args.rounds} rounds (median of round medians); the machine is shared, so ratios are the figure to read")


if __name__ == "__main__":
    main()
