"""Timed callables for saved model files on their real runtime, with inputs already on the device.

Each callable runs one inference and returns when it is finished: onnxruntime's CUDA provider is run with an
I/O binding (inputs copied to the GPU once, outputs left there, then synchronised); torch on CUDA synchronises
the device after ``forward``. On the CPU, onnxruntime gets the arrays as they are and torch gets tensors made
once. So what is timed is the model, not host-device copies or numpy conversions, and both models being
compared are timed identically.

Session options are those of ``FormatAdapter.runner``: onnxruntime at its default (full) graph optimisation,
``intra_op_num_threads = threads``, ``inter_op_num_threads = 1``; torch with ``torch.set_num_threads(threads)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .._errors import InvalidOptionsError
from .._ortlog import quiet_onnxruntime, session_severity
from ..formats._base import FormatAdapter

__all__ = ["Timed", "timed_runner"]

#: One synchronised inference.
Timed = Callable[[], object]


def timed_runner(
    adapter: FormatAdapter,
    path: Path,
    workdir: Path,
    threads: int,
    device: str,
    inputs: Mapping[str, np.ndarray],
) -> Timed:
    """A callable running the model file at ``path`` once on ``inputs`` (see the module docstring).

    Raises:
        InvalidOptionsError: ``device`` is not ``cpu`` or ``cuda``, or ``cuda`` is asked where the runtime has
            no CUDA device.
    """
    if device not in ("cpu", "cuda"):
        raise InvalidOptionsError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if adapter.name == "onnx":
        return _onnxruntime(adapter, path, workdir, threads, device, inputs)
    if adapter.name in ("torchscript", "pt2"):
        return _torch(adapter, path, threads, device, inputs)
    run, _ = adapter.runner(path, workdir, threads, device)
    return lambda: run(inputs)


def _onnxruntime(adapter: FormatAdapter, path: Path, workdir: Path, threads: int, device: str,
                 inputs: Mapping[str, np.ndarray]) -> Timed:
    import onnxruntime as ort

    quiet_onnxruntime()  # before the session exists: its log lines never reach the terminal raw
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InvalidOptionsError("device 'cuda' was asked, but this onnxruntime has no CUDA provider "
                                  "(install onnxruntime-gpu)")
    if path.suffix == ".zip":
        # An archive with external data: let the adapter unpack it safely and hand back its session.
        run, _ = adapter.runner(path, workdir, threads, device)
        return lambda: run(inputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = session_severity()  # its own log lines never reach the terminal raw
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(path.read_bytes(), sess_options=opts, providers=providers)
    feeds = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
    if device == "cpu":
        return lambda: session.run(None, feeds)
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def _torch(adapter: FormatAdapter, path: Path, threads: int, device: str,
           inputs: Mapping[str, np.ndarray]) -> Timed:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionsError("device 'cuda' was asked, but torch sees no CUDA device")
    torch.set_num_threads(threads)
    # The same checked loads as the adapters' (the file may be the user's original).
    if adapter.name == "pt2":
        from ..formats._pt2._adapter import _load as load_pt2

        module = load_pt2(Path(path)).module()
        names = list(inputs)
    else:
        from .._graphcheck import load_torchscript

        module = load_torchscript(Path(path), device).eval()
        try:
            names = [a.name for a in module.forward.schema.arguments[1:]]
        except (AttributeError, RuntimeError):
            names = list(inputs)
    if not set(names) <= set(inputs):
        names = list(inputs)
    module = module.to(device)
    tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(device) for n in names]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            module(*tensors)
        sync()

    return run
