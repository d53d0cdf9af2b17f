"""Benchmark models: a ResNet-50-sized network (25.6 M parameters, torchvision's layout, defined here because
no torchvision is installed and nothing may be downloaded). Random weights: the benchmarks that use it
measure conversion speed and memory, not accuracy."""

from __future__ import annotations

import torch
import torch.nn as nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(torch.mean(x, (2, 3)), 1))


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, act: type[nn.Module] = nn.ReLU,
         groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act())


class _C2f(nn.Module):
    """YOLOv8's C2f: a 1×1 conv, split in two, n residual 3×3 bottlenecks on one half, concat, a 1×1 conv."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        self.half = cout // 2
        self.cv1 = _cbr(cin, cout, 1, act=nn.SiLU)
        self.m = nn.ModuleList(nn.Sequential(_cbr(self.half, self.half, 3, act=nn.SiLU),
                                             _cbr(self.half, self.half, 3, act=nn.SiLU)) for _ in range(n))
        self.cv2 = _cbr((2 + n) * self.half, cout, 1, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split(self.half, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloLike(nn.Module):
    """A YOLOv8n-sized backbone and neck (channels 16…256, C2f blocks, SPPF, an upsampling path), SiLU."""

    def __init__(self) -> None:
        super().__init__()
        s = nn.SiLU
        self.b1 = nn.Sequential(_cbr(3, 16, 3, 2, s), _cbr(16, 32, 3, 2, s), _C2f(32, 32, 1))
        self.b2 = nn.Sequential(_cbr(32, 64, 3, 2, s), _C2f(64, 64, 2))
        self.b3 = nn.Sequential(_cbr(64, 128, 3, 2, s), _C2f(128, 128, 2))
        self.b4 = nn.Sequential(_cbr(128, 256, 3, 2, s), _C2f(256, 256, 1))
        self.sppf_cv1 = _cbr(256, 128, 1, act=s)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.sppf_cv2 = _cbr(512, 256, 1, act=s)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.n3 = _C2f(256 + 128, 128, 1)
        self.head3 = nn.Sequential(_cbr(128, 64, 3, act=s), nn.Conv2d(64, 80, 1))
        self.head4 = nn.Sequential(_cbr(256, 64, 3, act=s), nn.Conv2d(64, 80, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p3 = self.b3(self.b2(self.b1(x)))
        p4 = self.b4(p3)
        y = self.sppf_cv1(p4)
        a = self.pool(y)
        b = self.pool(a)
        p4 = self.sppf_cv2(torch.cat([y, a, b, self.pool(b)], 1))
        n3 = self.n3(torch.cat([self.up(p4), p3], 1))
        return self.head3(n3), self.head4(p4)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = _cbr(cin, cout, 3, stride)
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return torch.relu(self.c2(self.c1(x)) + skip)


class ResNetLike(nn.Module):
    """ResNet-18's layout (basic blocks of two 3×3 convs, 64…512 channels)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
            blocks.append(_Basic(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.mean(self.blocks(self.stem(x)), (2, 3)), 1))


class _Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_cbr(cin, mid, 1, act=nn.ReLU6), _cbr(mid, mid, 3, stride, nn.ReLU6, groups=mid),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.skip else y


class MobileNetLike(nn.Module):
    """MobileNetV2's layout: a 3×3 stem, inverted residual blocks (1×1 expand, 3×3 depthwise, 1×1 project)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(3, 32, 3, 2, nn.ReLU6)]
        cin = 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)):
            for i in range(n):
                layers.append(_Inverted(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_cbr(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.mean(self.features(x), (2, 3)), 1))


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics (so that folding them changes the weights as trained ones would), eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


def decay_spectra(model: nn.Module, decay: float = 0.35) -> nn.Module:
    """Give every spatial conv kernel a geometrically decaying spatial spectrum (singular values of the
    ``[N·C, k]`` kernel matrix scaled by ``decay**r``), as trained kernels tend to have: the default policy's
    energy target is then reached at a low rank. Random weights alone have flat spectra."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and m.groups == 1:
                w = m.weight
                flat = w.reshape(w.shape[0] * w.shape[1], -1).double()
                u, s, vt = torch.linalg.svd(flat, full_matrices=False)
                s = s * decay ** torch.arange(len(s), dtype=s.dtype)
                w.copy_(((u * s) @ vt).reshape(w.shape))
    return model
