"""sepconv's converter: standard CNNs (ONNX, TorchScript, torch.export .pt2) in, depthwise-separable CNNs out.

The public surface is what ``__all__`` lists; everything else lives in private modules and may change.
Importing this package is cheap and needs only pydantic: the heavy parts (numpy, onnx, torch) load on first use
of ``convert``, ``decompose`` or ``lower``, so the torch-free SDK can share ``ConversionConfig`` and ``Report``.

Example::

    import converter
    result = converter.convert("model.onnx", "slim.onnx", rank=2)
    print(result.report.fidelity.rel_l2, result.report.latency.speedup)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import DEFAULT_ENERGY, REPEATABLE_FIELDS, ConversionConfig
from ._errors import (
    ConversionError,
    InvalidOptionsError,
    SepconvError,
    UnsupportedModelError,
    VerificationError,
    map_errors,
)
from ._files import atomic_write
from ._report import Accuracy, Counts, Fidelity, Latency, LayerReport, Report, StageValues, Timings
from ._stages import JOB_STAGES, report_progress
from ._version import __version__

if TYPE_CHECKING:
    from .algebra import Decomposition, decompose, lower
    from .pipeline import ConversionResult, convert
    from .report import REPORT_SCRIPT, elide, render_html

__all__ = [
    "DEFAULT_ENERGY",
    "JOB_STAGES",
    "REPEATABLE_FIELDS",
    "REPORT_SCRIPT",
    "Accuracy",
    "ConversionConfig",
    "ConversionError",
    "ConversionResult",
    "Counts",
    "Decomposition",
    "Fidelity",
    "InvalidOptionsError",
    "Latency",
    "LayerReport",
    "Report",
    "SepconvError",
    "StageValues",
    "Timings",
    "UnsupportedModelError",
    "VerificationError",
    "__version__",
    "atomic_write",
    "convert",
    "decompose",
    "elide",
    "lower",
    "map_errors",
    "render_html",
    "report_progress",
]

_LAZY = {
    "convert": ".pipeline",
    "ConversionResult": ".pipeline",
    "decompose": ".algebra",
    "lower": ".algebra",
    "Decomposition": ".algebra",
    "render_html": ".report",
    "REPORT_SCRIPT": ".report",
    "elide": ".report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'converter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
