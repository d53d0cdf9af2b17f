"""The ``.pt2`` format: programs saved with ``torch.export.save`` (an ``ExportedProgram``).

This package's ``__init__`` is light (standard library only): the registry's ``FORMAT`` descriptor and the
archive-layout check the adapter shares. The parts that import torch load on first use:

    _archive    what may be in a ``.pt2`` before ``torch.export.load`` reads it (no pickles, no compiled code)
    _graph      convs of the FX graph, their weights (parameters, buffers, lifted constants), input specs,
                and one shape-propagation run on fake tensors (sizes and MACs)
    _rewrite    the FX rewrite: new depthwise/pointwise conv nodes and parameters, a new ``ExportedProgram``
    _adapter    ``Pt2Adapter``: load, find, apply, save (``torch.export.save``), stats, runner

A layer is named after its module path (``features.0``; a module called twice gives ``features.0_2``); new nodes
are ``node_name(layer, step)`` spelled with ``_`` (FX names are identifiers), new parameters
``<layer>.<step>.weight``. The replaced conv's node stays as the last node of its replacement (its name, and so
the program's outputs and signature, do not change). Declared dynamic dims are kept: the rewrite leaves the
user inputs and range constraints as they are, and the new nodes' shapes are symbolic where the conv's were.

Not done: convs inside control-flow subgraphs (``torch.cond`` branches, ``map`` bodies) are not seen;
transposed convs are reported but not rewritten; ``.pt2`` files of torch before 2.6 (no ``archive_format``)
are not read.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._base import FormatInfo
from .._torchzip import looks_like_torch_archive

__all__ = ["FORMAT", "Pt2Adapter", "is_pt2_layout", "pt2_root"]


def pt2_root(names: Sequence[tuple[str, ...]]) -> str | None:
    """The archive's root folder if its files have the ``torch.export.save`` layout (``<root>/archive_format``
    and ``<root>/models/<name>.json``), else None."""
    roots: dict[str, set[str]] = {}
    for parts in names:
        if len(parts) >= 2:
            roots.setdefault(parts[0], set()).add("/".join(parts[1:]))
    for root, entries in roots.items():
        if "archive_format" in entries and any(e.startswith("models/") and e.endswith(".json") for e in entries):
            return root
    return None


def is_pt2_layout(path: Path, names: Sequence[tuple[str, ...]]) -> bool:
    """``pt2_root`` is found and its ``archive_format`` says ``pt2``."""
    root = pt2_root(names)
    if root is None:
        return False
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{root}/archive_format")
        if info.file_size > 64:
            return False
        return zf.read(info).strip() == b"pt2"


def _sniff(head: bytes) -> bool:
    return looks_like_torch_archive(head)


FORMAT = FormatInfo(
    name="pt2",
    title="a torch.export program (torch.export.save, .pt2)",
    suffixes=(".pt2",),
    sniff=_sniff,
    adapter="converter.formats._pt2._adapter:Pt2Adapter",
    carries_code=True,
    precheck="converter.formats._pt2._archive:check_pt2_archive",
)


def __getattr__(name: str) -> Any:
    if name == "Pt2Adapter":
        from ._adapter import Pt2Adapter

        return Pt2Adapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
