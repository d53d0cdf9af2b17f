"""TorchScript-specific test models (beyond the zoo in ``models.py``) and helpers for the TorchScript adapter's
tests: a single configurable conv with a 1×1 head, convs in a loop, a conv module called twice, two convs
with a tied weight, a conv whose weight is a forward argument, a two-input/two-output model, and a
``BranchyNet`` whose two branches are both reachable.

Nothing is downloaded; every model is initialised from a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.utils.models import BranchyNet

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@dataclass(frozen=True)
class ConvCase:
    """One conv configuration of the exactness grid."""

    kernel: tuple[int, ...]
    stride: int = 1
    padding: int | tuple[int, ...] | str = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    cin: int = 8
    cout: int = 12
    batch: int = 3

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def spatial(self) -> tuple[int, ...]:
        return {1: (23,), 2: (11, 10), 3: (6, 7, 5)}[self.rank]

    def __str__(self) -> str:
        k = "x".join(map(str, self.kernel))
        pad = self.padding if isinstance(self.padding, str) else "p" + "-".join(map(str, np.atleast_1d(self.padding)))
        return f"k{k}_s{self.stride}_{pad}_d{self.dilation}_g{self.groups}_{'b' if self.bias else 'nob'}"


#: The exactness grid every format's adapter is tested on: 1-D/2-D/3-D, stride, dilation, padding, groups, bias.
CONV_GRID = [
    ConvCase((1, 3), padding=(0, 1)),
    ConvCase((3, 1), stride=2, padding=(1, 0), bias=False),
    ConvCase((3, 3), padding=1),
    ConvCase((3, 3), stride=2, padding=1, groups=2, bias=False),
    ConvCase((3, 3), padding=2, dilation=2, groups=4),
    ConvCase((3, 3), stride=2, padding=(2, 1), dilation=2),
    ConvCase((3, 3), padding="same", dilation=2, bias=False),
    ConvCase((3, 3), padding="valid", groups=2),
    ConvCase((5, 5), stride=2, padding=2),
    ConvCase((5, 5), padding="same", groups=4, bias=False),
    ConvCase((7, 7), stride=2, padding=3, bias=False),
    ConvCase((3,), padding=1, groups=2),
    ConvCase((5,), stride=2, padding=2, dilation=2, bias=False),
    ConvCase((5,), padding="same", groups=4),
    ConvCase((3, 3, 3), padding=1),
    ConvCase((3, 3, 3), stride=2, padding=1, groups=2, bias=False),
    ConvCase((3, 3, 3), padding="same", groups=4),
    ConvCase((3, 3, 3), padding="valid", dilation=2),
]


class SingleConv(nn.Module):
    """The conv under test, then a ReLU and a 1×1 ``head`` conv that no rewrite should touch."""

    def __init__(self, case: ConvCase) -> None:
        super().__init__()
        conv = _CONV[case.rank]
        self.conv = conv(case.cin, case.cout, case.kernel, stride=case.stride, padding=case.padding,
                         dilation=case.dilation, groups=case.groups, bias=case.bias)
        self.head = conv(case.cout, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


def single_conv(case: ConvCase, seed: int = 0) -> tuple[SingleConv, torch.Tensor]:
    """The model of one grid case in eval mode, and an example input of ``case.batch`` samples."""
    torch.manual_seed(seed)
    model = SingleConv(case).eval()
    x = torch.randn(case.batch, case.cin, *case.spatial, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


class LoopNet(nn.Module):
    """One conv applied ``x.size(-1) // 8`` times: the trip count is only known at run time, so freezing keeps
    a ``prim::Loop``. Input [B, 4, 16, 16] runs it twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(x.size(-1) // 8):
            x = torch.relu(self.conv(x))
        return x


class SharedConv(nn.Module):
    """The same conv module called twice: two conv nodes with the same module path. Input [B, 4, 12, 12]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x)))


class TiedConvs(nn.Module):
    """Two conv modules sharing one weight parameter (each with its own bias). Input [B, 4, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class DynamicWeight(nn.Module):
    """A regular conv, then a conv whose weight is a forward argument (not a constant after freezing)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.conv(x), w, padding=1)


class TwoInOut(nn.Module):
    """Two inputs ``image`` [B, 3, H, W] and ``signal`` [B, 2, L]; returns a tuple with a nested list."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.c1 = nn.Conv1d(2, 4, 5, padding=2)

    def forward(self, image: torch.Tensor, signal: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.c2(image), [self.c1(signal), signal.sum(1)]


def branchy_both_ways(seed: int = 0) -> tuple[BranchyNet, torch.Tensor, torch.Tensor]:
    """``BranchyNet`` with a negative stem bias, so that zeros take branch ``b`` (the ReLU output is all zero)
    while a large random input takes branch ``a``. Returns the model, an input for ``a`` and one for ``b``."""
    torch.manual_seed(seed)
    model = BranchyNet().eval()
    with torch.no_grad():
        model.stem.bias.fill_(-1.0)
    takes_a = 10 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 1))
    takes_b = torch.zeros(2, 3, 16, 16)
    return model, takes_a, takes_b


def takes_branch_a(model: BranchyNet, x: torch.Tensor) -> bool:
    """The branch condition of ``BranchyNet.forward``, evaluated in eager mode."""
    with torch.no_grad():
        return bool(torch.relu(model.stem(x)).mean() > 0.0)


def rel_l2(got: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    """‖got − ref‖₂ / ‖ref‖₂ in float64."""
    g, r = (np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
            for a in (got, ref))
    return float(np.linalg.norm(g - r) / np.linalg.norm(r))
