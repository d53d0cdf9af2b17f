"""Running a saved ONNX file on onnxruntime: the one place a session is made (verification, scoring, timing).

Session options everywhere: onnxruntime at its default (full) graph optimisation, ``intra_op_num_threads =
threads`` (None: onnxruntime's default), ``inter_op_num_threads = 1``; the CUDA provider first on ``cuda``. The
device has been resolved once for the conversion (``converter._device``); asked for ``cuda`` where this
onnxruntime has no CUDA provider, the session is refused rather than run on the CPU under a CUDA label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._errors import InvalidOptionsError
from .._base import Runner
from ._io import open_model
from ._ortlog import quiet_onnxruntime, session_severity

__all__ = ["make_runner", "session", "timed_runner"]


def session(path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> Any:
    """An onnxruntime ``InferenceSession`` on the saved file (a ``.zip`` is unpacked safely into ``workdir``).

    Raises:
        InvalidOptionsError: ``device`` is neither ``cpu`` nor ``cuda``, or ``cuda`` where this onnxruntime
            has no CUDA provider.
        UnsupportedModelError: the file is not a readable ONNX model or its archive is unsafe.
    """
    import onnxruntime as ort

    quiet_onnxruntime()  # before the session exists: its log lines never reach the terminal raw
    if device not in ("cpu", "cuda"):
        raise InvalidOptionsError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InvalidOptionsError("device 'cuda' was asked, but this onnxruntime has no CUDA provider "
                                  "(install onnxruntime-gpu)")
    onnx_path, _, external = open_model(Path(path), Path(workdir))
    opts = ort.SessionOptions()
    opts.log_severity_level = session_severity()  # its own log lines never reach the terminal raw
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    # Without external data the bytes are handed over, so onnxruntime never guesses a format from the name.
    source: str | bytes = str(onnx_path) if external else onnx_path.read_bytes()
    return ort.InferenceSession(source, sess_options=opts, providers=providers)


def make_runner(path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
    """A runner on the saved file (see ``session``) and the label of the provider that runs it."""
    sess = session(path, workdir, threads, device)
    label = "onnxruntime-cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "onnxruntime-cpu"
    outputs = [o.name for o in sess.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> list[np.ndarray]:
        # ``names``: fetch only these outputs; onnxruntime then runs only the nodes they depend on
        return sess.run(list(names) if names is not None else outputs, dict(feeds))

    return run, label


def timed_runner(path: Path, workdir: Path, threads: int, device: str,
                 inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
    """One synchronised inference of the saved file on ``inputs``: on the CPU the arrays as they are; on CUDA
    through an I/O binding (inputs copied to the GPU once, outputs left there, then synchronised), so what is
    timed is the model, not host-device copies."""
    import onnxruntime as ort

    sess = session(path, workdir, threads, device)
    feeds = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
    if device == "cpu":
        return lambda: sess.run(None, feeds)
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda")

    def run() -> None:
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run
