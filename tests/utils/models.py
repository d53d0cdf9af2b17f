"""Small CNNs built in torch for the tests: VGG-, ResNet-, MobileNet-, UNet-like, a 1-D audio CNN, a 3-D CNN,
a model with a data-dependent branch, and exporters to ONNX and TorchScript.

Nothing is downloaded: every model is defined here and initialised from a fixed seed. BatchNorm statistics
are randomised so that folding them is actually exercised.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class TinyVGG(nn.Module):
    """Plain 3×3 convs with bias, max-pooling, a linear head. Input [B, 3, 32, 32]."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * w * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + identity)


class TinyResNet(nn.Module):
    """ResNet-like: 7×7 stride-2 stem, basic blocks with 1×1 downsampling shortcuts. Input [B, 3, 32, 32]."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = BasicBlock(w, w)
        self.layer2 = BasicBlock(w, 2 * w, stride=2)
        self.layer3 = BasicBlock(2 * w, 4 * w, stride=2)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyMobileNet(nn.Module):
    """MobileNet-like: a regular stem conv, then depthwise (skipped) + pointwise (skipped) pairs, a grouped
    3×3 conv (groups=4, eligible) and a 5×5 conv. Input [B, 3, 32, 32]."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(3, w, 3, 2)
        self.dw1 = _conv_bn(w, w, 3, 1, groups=w)
        self.pw1 = _conv_bn(w, 2 * w, 1)
        self.grouped = _conv_bn(2 * w, 2 * w, 3, 2, groups=4)
        self.conv5 = _conv_bn(2 * w, 2 * w, 5)
        self.head = nn.Linear(2 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.grouped(self.pw1(self.dw1(self.stem(x)))))
        return self.head(x.mean((2, 3)))


class TinyUNet(nn.Module):
    """UNet-like: encoder, ConvTranspose upsampling (skipped), skip concatenation, per-pixel logits.
    Input [B, 3, 32, 32], output [B, classes, 32, 32]."""

    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        w = width
        self.enc1 = _conv_bn(3, w)
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), _conv_bn(w, 2 * w))
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec = _conv_bn(2 * w, w)
        self.out = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        return self.out(self.dec(torch.cat([self.up(e2), e1], 1)))


class AudioCNN(nn.Module):
    """1-D audio CNN on raw waveforms [B, 1, 400]: k=5 and k=3 convs, one dilated."""

    def __init__(self, width: int = 16, classes: int = 5) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv1d(1, w, 5, stride=2, padding=2), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, w, 3, padding=1), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, 2 * w, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv1d(2 * w, 2 * w, 5, stride=2), nn.ReLU(),
        )
        self.fc = nn.Linear(2 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).mean(2))


class Video3D(nn.Module):
    """3-D CNN on clips [B, 3, 8, 16, 16] with 3×3×3 convs."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(nn.Conv3d(3, w, 3, padding=1), nn.ReLU(),
                                 nn.Conv3d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).mean((2, 3, 4)))


class BranchyNet(nn.Module):
    """Convs inside a data-dependent branch (If in ONNX, prim::If in TorchScript). Input [B, 3, 16, 16]."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        if bool(y.mean() > 0.0):  # noqa: SIM108 (a real branch: prim::If / ONNX If)
            y = self.a(y)
        else:
            y = self.b(y)
        return y


#: name -> (factory, example input shape)
ZOO: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "vgg": (TinyVGG, (2, 3, 32, 32)),
    "resnet": (TinyResNet, (2, 3, 32, 32)),
    "mobilenet": (TinyMobileNet, (2, 3, 32, 32)),
    "unet": (TinyUNet, (2, 3, 32, 32)),
    "audio": (AudioCNN, (2, 1, 400)),
    "video": (Video3D, (2, 3, 8, 16, 16)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model in eval mode with randomised BN statistics, and an example input."""
    factory, shape = ZOO.get(name, (BranchyNet, (2, 3, 16, 16)))
    torch.manual_seed(seed)
    model = _randomise_bn(factory(), seed)
    return model, torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path | None = None, *, opset: int = 17,
                dynamic: bool | str = True) -> bytes:
    """Export with the TorchScript-based exporter (any opset 11–21): batch and spatial dims symbolic when
    ``dynamic`` is True, only the batch when it is ``"batch"`` (the common case), none when False. Returns the
    bytes, and writes them to ``path`` if given."""
    f = io.BytesIO()
    spatial = {i: f"d{i}" for i in range(2, example.dim())} if dynamic is True else {}
    axes = {"x": {0: "batch", **spatial}, "y": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), f, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes if dynamic else None)
    data = f.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, mode: str = "script") -> Path:
    """Save ``torch.jit.script`` (mode ``script``) or ``torch.jit.trace`` (mode ``trace``) of the model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = torch.jit.script(model) if mode == "script" else torch.jit.trace(model, example)
    torch.jit.save(sm, str(path))
    return Path(path)


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool = True,
               decompose: bool = False) -> Path:
    """Save ``torch.export.export`` of the model (batch dim dynamic when ``dynamic_batch``) with
    ``torch.export.save``; with ``decompose`` the program is lowered to core ATen first (convs become
    ``aten.convolution``)."""
    dims = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), dynamic_shapes=dims)
        if decompose:
            program = program.run_decompositions()
    torch.export.save(program, str(path))
    return Path(path)
