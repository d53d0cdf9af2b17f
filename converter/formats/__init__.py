"""Model formats: one adapter per format behind one interface (``FormatAdapter``), chosen from the registry by
the file's content. The built-in adapters (ONNX, TorchScript) are imported on first use."""

from ._base import (
    ConvLayer,
    FormatAdapter,
    InputSpec,
    ModelStats,
    Rewrite,
    Runner,
    adapter_for,
    detect_format,
    register,
    registered_formats,
    sniff_model,
)

__all__ = [
    "ConvLayer",
    "FormatAdapter",
    "InputSpec",
    "ModelStats",
    "Rewrite",
    "Runner",
    "adapter_for",
    "detect_format",
    "register",
    "registered_formats",
    "sniff_model",
]
