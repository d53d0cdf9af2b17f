"""Model formats: one adapter per format behind one interface (``FormatAdapter``), chosen from the registry by
the file's content. Importing this package is cheap: it holds the light descriptors (``FormatInfo``) only;
each adapter (and onnx or torch with it) is imported on first use."""

from ._base import (
    ConvLayer,
    FormatAdapter,
    FormatInfo,
    InputSpec,
    ModelStats,
    Rewrite,
    Runner,
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
    register,
    sniff_formats,
)

__all__ = [
    "ConvLayer",
    "FormatAdapter",
    "FormatInfo",
    "InputSpec",
    "ModelStats",
    "Rewrite",
    "Runner",
    "UniqueNames",
    "adapter_for",
    "describe_unknown",
    "detect_format",
    "expected_formats",
    "format_info",
    "format_names",
    "formats",
    "node_name",
    "register",
    "sniff_formats",
]
