"""Which device a conversion runs models on: ``ConversionConfig.device`` resolved to ``cpu`` or ``cuda``, once,
for every stage (planning, calibration, fine-tuning, verification), by this one function.

``auto`` is cuda when the runtime that will run the model has a CUDA device, else cpu. ``cuda`` where that
runtime has none is refused here, with one line naming the runtime, rather than run on the CPU under a CUDA
label. The runtime is the format's (``formats.Timeable.runtime``: onnxruntime for ONNX, torch for TorchScript
and ``.pt2``); training always runs on torch. Deciding never imports torch for an ONNX model.
"""

from __future__ import annotations

from ._errors import InvalidOptionsError

__all__ = ["DEVICES", "resolve_device"]

#: The devices a conversion can be configured for.
DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str, runtime: str = "onnxruntime") -> str:
    """``cpu`` or ``cuda`` for a configured ``cpu``, ``cuda`` or ``auto``, on ``runtime`` (``onnxruntime`` or
    ``torch``).

    Raises:
        InvalidOptionsError: an unknown device, or ``cuda`` where the runtime sees no CUDA GPU.
    """
    if device not in DEVICES:
        raise InvalidOptionsError(f"device must be cpu, cuda or auto, got {device!r}")
    if device == "cpu":
        return device
    available = _cuda_available(runtime)
    if device == "auto":
        return "cuda" if available else "cpu"
    if not available:
        hint = "install onnxruntime-gpu, or use cpu or auto" if runtime == "onnxruntime" else "use cpu or auto"
        raise InvalidOptionsError(f"device 'cuda' was asked for, but {runtime} sees no CUDA GPU ({hint})")
    return device


def _cuda_available(runtime: str) -> bool:
    if runtime == "torch":
        import torch

        return bool(torch.cuda.is_available())
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
