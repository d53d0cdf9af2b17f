"""The TorchScript format: archives written by ``torch.jit.save`` (``torch.jit.script`` or ``torch.jit.trace``).

This package's ``__init__`` is light (standard library only): the registry's ``FORMAT`` descriptor and the
zip-layout check it shares with the adapter. ``_graph`` (reading the frozen graph, the probe run) and
``_adapter`` (rewriting, counting, running) import torch, on first use.

How: a loaded module is frozen (``torch.jit.freeze``), which inlines every submodule into one ``forward``
graph, folds BatchNorm into the preceding conv and turns weights into ``prim::Constant`` tensors. Each conv
node (``aten::conv1d/2d/3d`` from scripting; ``aten::_convolution``, or ``aten::_convolution_mode`` for a
string padding, from tracing; ``aten::convolution``; ``aten::conv_transpose*``), nested ``prim::If`` and
``prim::Loop`` blocks included, becomes a ``ConvLayer`` named after its module path (``features.0``; a module
called twice gives ``features.0_2``). A rewrite inserts new ``aten::conv{1,2,3}d`` nodes (and an ``aten::cat``
or ``aten::add`` join) in the conv's own block, named ``node_name(layer, step)`` with ``/`` and ``.`` as ``_``,
reroutes its uses and removes it; dead-code elimination is a separate step at the end. ``apply`` edits the
model in place, after checking every rewrite.

Spatial sizes and MACs come from one *probe* run: a copy of the frozen graph, instrumented to append the sizes
of every conv's and matrix product's operands to a list it returns, is run once on zeros of the given input
shapes. Ops in a branch that the zeros do not take get no sizes (``None``); ops in a loop count per iteration.

Deliberately not done here: decomposition math (``_decompose``), choosing layers or ranks (``_plan``), and
verification. Transposed convs are reported but never rewritten. A TorchScript file can carry code, so it is
treated as untrusted: every load goes through ``_graphcheck.load_torchscript`` (the archive and every compiled
function checked), nothing runs beyond that, ``torch.jit.freeze``, the probe run and the runner, and by default
``converter.convert`` does all of it in the confined child process (``service.jobs.local``). Convs in calls
that freezing cannot inline (module interfaces) are not seen. The probe executes ``forward`` once, so a module
that mutates its own attributes in ``forward`` sees that mutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._archive import ZIP_MAGIC, member_names
from .._base import FormatInfo
from .._torchzip import looks_like_torch_archive

__all__ = ["FORMAT", "TorchScriptAdapter", "TorchScriptModel", "is_torchscript_layout"]


def is_torchscript_layout(names: Sequence[tuple[str, ...]]) -> bool:
    """Whether an archive's files (path components) have the ``torch.jit.save`` layout: ``<root>/data.pkl``,
    ``<root>/constants.pkl`` and ``<root>/code/…``. A ``torch.save`` checkpoint has no ``code/``."""
    roots: dict[str, set[str]] = {}
    for parts in names:
        if len(parts) >= 2:
            roots.setdefault(parts[0], set()).add(parts[1])
    return any({"data.pkl", "constants.pkl", "code"} <= entries for entries in roots.values())


def _sniff(head: bytes) -> bool:
    return looks_like_torch_archive(head)


def _diagnose(path: Path, head: bytes) -> str | None:
    """torch.save checkpoints, old or new: the most common wrong upload."""
    export = "export the model with torch.export, torch.jit.script/torch.jit.trace or torch.onnx.export"
    if head[:1] == b"\x80":
        return f"a Python pickle (an old torch.save checkpoint?); {export}"
    if head[:4] in ZIP_MAGIC:
        names = member_names(path) or []
        if any(p[-1] == "data.pkl" for p in names) and not any("code" in p[:-1] for p in names):
            return f"a torch.save checkpoint (weights, no code); {export}"
    return None


FORMAT = FormatInfo(
    name="torchscript",
    title="TorchScript (torch.jit.save, .pt)",
    suffixes=(".pt", ".pth"),
    sniff=_sniff,
    adapter="converter.formats._torchscript._adapter:TorchScriptAdapter",
    diagnose=_diagnose,
    carries_code=True,
    precheck="converter.formats._graphcheck:check_torchscript_archive",
)


def __getattr__(name: str) -> Any:
    if name in ("TorchScriptAdapter", "TorchScriptModel"):
        from . import _adapter

        return getattr(_adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
