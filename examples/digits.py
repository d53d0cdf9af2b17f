"""Train a small CNN on scikit-learn's bundled digits (nothing is downloaded) and export it for sepconv.

Writes to OUT (default ``examples/out``):
    digits.onnx       the model as ONNX (opset 17, symbolic batch)
    digits.pt         the same model as TorchScript (torch.jit.script)
    digits-test.npz   held-out images: ``inputs`` [N, 1, 16, 16] float32 and ``labels`` [N] int64
    digits-calib.npz  256 training images without labels (``inputs``): samples to calibrate on (``--data``)

Usage: python examples/digits.py [OUT]      (about 10 s on one CPU core)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv4 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        return self.fc(x.mean((2, 3)))


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits upsampled to 16×16 in [0, 1]; a fixed 1400/397 train/test split."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return x[tr], y[tr], x[te], y[te]


def train(epochs: int = 30, seed: int = 0) -> tuple[DigitsCNN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data()
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(epochs):
        for i in range(0, len(xtr), 64):
            loss = F.cross_entropy(model(xtr[i:i + 64]), ytr[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), xte, yte


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model, xte, yte = train()
    xtr = data()[0]
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (xte[:1],), out / "digits.onnx", dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    torch.jit.save(torch.jit.script(model), str(out / "digits.pt"))
    np.savez(out / "digits-test.npz", inputs=xte.numpy(), labels=yte.numpy())
    np.savez(out / "digits-calib.npz", inputs=xtr[:256].numpy())
    print(f"test accuracy {acc:.3f} on {len(yte)} images; wrote {out}/digits.onnx, digits.pt, digits-test.npz, "
          "digits-calib.npz")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out")
