"""Models that try to reach the host through ordinary ops, for the graph check and the confinement tests.

Each is a small CNN whose scripted ``forward`` also touches a file given at construction: ``FileWriter`` creates
and writes one with ``torch.from_file(path, shared=True)`` (a shared mapping of the file, filled with ``A``),
``FifoReader`` opens one for reading (a FIFO blocks until a writer appears). ``SetStateNet`` carries a scripted
``__setstate__`` (``torch.jit.load`` runs it), ``HiddenMethod`` the op only in an exported method ``forward``
never calls, ``CallsFunction`` only in a free function ``forward`` calls.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


def _touch_file(path: str, x: torch.Tensor) -> torch.Tensor:
    return x + torch.from_file(path, shared=True, size=16, dtype=torch.uint8).fill_(65).float().sum() * 0


class FileWriter(nn.Module):
    """Writes 16 bytes ``A`` to ``path`` (creating it) on every forward."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8).fill_(65)
        return self.conv(x) + y.float().sum() * 0


class FifoReader(nn.Module):
    """Reads 16 bytes from ``path`` (a FIFO blocks here until a writer appears)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_file(self.path, shared=False, size=16, dtype=torch.uint8)
        return self.conv(x) + y.float().sum() * 0


class CallsFunction(nn.Module):
    """The file op sits in a free function that ``forward`` calls."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _touch_file(self.path, self.conv(x))


class HiddenMethod(nn.Module):
    """The file op sits in an exported method that ``forward`` never calls."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    @torch.jit.export
    def side(self, x: torch.Tensor) -> torch.Tensor:
        return _touch_file(self.path, x)


class SetStateNet(nn.Module):
    """A module with a scripted ``__setstate__``: loading the archive runs it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8).fill_(65)


HOSTILE = {"file_writer": FileWriter, "fifo_reader": FifoReader, "calls_function": CallsFunction,
           "hidden_method": HiddenMethod, "setstate": SetStateNet}


def save_hostile(kind: str, target: Path | str, dest: Path) -> Path:
    """Script the hostile model ``kind`` aimed at ``target`` and save it to ``dest``."""
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(HOSTILE[kind](str(target)).eval()), str(dest))
    return dest
