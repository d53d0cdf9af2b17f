"""Which device a conversion runs models on: ``ConversionConfig.device`` resolved to ``cpu`` or ``cuda``.

``auto`` is cuda when the runtime that will run the model has a CUDA device, else cpu. It asks the runtime that is
already loaded (torch for TorchScript, which the adapter imported to read the model), and otherwise onnxruntime,
so that deciding never imports torch for an ONNX model.
"""

from __future__ import annotations

import sys

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` for a configured ``cpu``, ``cuda`` or ``auto``."""
    if device != "auto":
        return device
    return "cuda" if _cuda_available() else "cpu"


def _cuda_available() -> bool:
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
