"""A tiny classifier for fine-tuning tests: two 3x3 convs and a linear head (4 classes on [1, 8, 8] inputs),
exported to ONNX and TorchScript, with a .npz of samples labelled by the model itself. Seeded; nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .models import export_onnx, export_torchscript


class TinyNet(nn.Module):
    """Two 3x3 convs and a linear head: 4 classes on [1, 8, 8] inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny_files(folder: Path, samples: int = 48) -> dict[str, Path]:
    """``onnx``, ``torchscript`` (the same TinyNet) and ``data`` (``inputs`` and ``labels``) in ``folder``."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(samples, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(1).numpy()
    np.savez(folder / "data.npz", inputs=x.numpy(), labels=labels)
    export_onnx(model, x[:2], folder / "tiny.onnx", dynamic="batch")
    export_torchscript(model, x[:2], folder / "tiny.pt")
    return {"onnx": folder / "tiny.onnx", "torchscript": folder / "tiny.pt", "data": folder / "data.npz"}
