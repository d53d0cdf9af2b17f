"""The ONNX format: ``.onnx`` files, or a ``.zip`` of one ``.onnx`` and its external data.

This package's ``__init__`` is light (standard library only): it holds the registry's ``FORMAT`` descriptor.
The adapter and its parts import onnx and onnx-ir, on first use:

    _wire       the protobuf wire format at the top level (sniffing, detection, field prefixes for writing)
    _io         reading files (parse, external data checks) and writing them (streaming writer, .zip)
    _nodes      small helpers on onnx-ir nodes (attributes, the ONNX domain)
    _shapes     shape inference with stubbed weights, and ``ShapeCache`` (owned by ``OnnxModel``)
    _functions  inlining the model-local functions that hold convs, so that their convs are found
    _convs      finding convolutions and their constant weights
    _quant      quantized convs (QDQ, QLinearConv, ConvInteger): read dequantized, rewritten in their own style
    _qcontext   a quantized conv cut out with its quantization, for timing on onnxruntime's integer kernels
    _passes     the rewrite as onnx-ir passes (``DecomposeConvsPass`` and the cleanup)
    _stats      parameter and MAC counts
    _runner     onnxruntime sessions
    _adapter    ``OnnxAdapter``, tying them together

Archive safety (zip members, external data paths, sizes) is shared with other formats in ``formats._archive``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._archive import ZIP_MAGIC, member_names
from .._base import FormatInfo
from ._wire import sniff

__all__ = ["FORMAT", "DecomposeConvsPass", "OnnxAdapter", "OnnxModel", "RemoveUnusedInitializersPass",
           "decompose_convs"]


def _sniff(head: bytes) -> bool:
    # A .zip may hold an .onnx and its external data: its first bytes alone cannot tell.
    return head[:4] in ZIP_MAGIC or sniff(head)


def _diagnose(path: Path, head: bytes) -> str | None:
    if head[:4] not in ZIP_MAGIC:
        return None
    names = member_names(path) or []
    models = [n for n in names if n[-1].lower().endswith(".onnx")]
    if len(models) > 1:
        return "a zip archive with more than one .onnx model: put exactly one model and its external data in it"
    return None


FORMAT = FormatInfo(
    name="onnx",
    title="ONNX (an .onnx file, or a .zip of one .onnx and its external data)",
    suffixes=(".onnx", ".zip"),
    sniff=_sniff,
    adapter="converter.formats._onnx._adapter:OnnxAdapter",
    diagnose=_diagnose,
)

_LAZY = {
    "OnnxAdapter": "_adapter",
    "OnnxModel": "_adapter",
    "DecomposeConvsPass": "_passes",
    "RemoveUnusedInitializersPass": "_passes",
    "decompose_convs": "_passes",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
