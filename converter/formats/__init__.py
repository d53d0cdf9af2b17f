"""Model formats: one adapter per format behind one interface (``FormatAdapter``), chosen from the registry by
the file's content. Importing this package is cheap: it holds the light descriptors (``FormatInfo``) only;
each adapter (and onnx or torch with it) is imported on first use."""

from typing import TYPE_CHECKING, Any

from ._archive import unpack_limit
from ._base import (
    Contextual,
    ConvLayer,
    FormatAdapter,
    FormatInfo,
    InputSpec,
    LayerContext,
    ModelStats,
    Rewrite,
    Runner,
    Tappable,
    Timeable,
    Timed,
    Trainable,
    UniqueNames,
    node_name,
)
from ._registry import (
    adapter_for,
    describe_unknown,
    detect_format,
    expected_formats,
    format_info,
    format_names,
    formats,
    precheck,
    register,
    sniff_formats,
)

if TYPE_CHECKING:
    from ._graphcheck import trusting
    from ._micro import INPUT, LAYER, LayerShape
    from ._taps import Tap
    from ._trainable import TrainableView, digest

__all__ = [
    "INPUT",
    "LAYER",
    "Contextual",
    "ConvLayer",
    "FormatAdapter",
    "FormatInfo",
    "InputSpec",
    "LayerContext",
    "LayerShape",
    "ModelStats",
    "Rewrite",
    "Runner",
    "Tap",
    "Tappable",
    "Timeable",
    "Timed",
    "Trainable",
    "TrainableView",
    "UniqueNames",
    "adapter_for",
    "describe_unknown",
    "detect_format",
    "digest",
    "expected_formats",
    "format_info",
    "format_names",
    "formats",
    "node_name",
    "precheck",
    "register",
    "sniff_formats",
    "trusting",
    "unpack_limit",
]

# Lazily: these need numpy (the registry above must stay importable without it).
_LAZY = {"Tap": "._taps", "trusting": "._graphcheck", "LayerShape": "._micro", "LAYER": "._micro",
         "INPUT": "._micro", "TrainableView": "._trainable", "digest": "._trainable"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'converter.formats' has no attribute {name!r}")
