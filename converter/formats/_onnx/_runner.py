"""Running a saved ONNX file on onnxruntime (verification and latency)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..._errors import InvalidOptionsError
from .._base import Runner
from ._io import open_model
from ._ortlog import quiet_onnxruntime, session_severity

__all__ = ["make_runner"]


def make_runner(path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
    """An onnxruntime session on the saved file (a ``.zip`` is unpacked safely into ``workdir`` first).

    ``threads`` sets ``intra_op_num_threads`` (None: onnxruntime's default); ``inter_op_num_threads`` is 1.
    With ``device="cuda"`` the CUDA provider is tried first where this onnxruntime build has it; the label
    says which provider actually runs (``onnxruntime-cpu`` when CUDA is not available).

    Raises:
        InvalidOptionsError: ``device`` is neither ``cpu`` nor ``cuda``.
        UnsupportedModelError: the file is not a readable ONNX model or its archive is unsafe.
    """
    import onnxruntime as ort

    quiet_onnxruntime()  # before the session exists: its log lines never reach the terminal raw
    if device not in ("cpu", "cuda"):
        raise InvalidOptionsError(f"device must be 'cpu' or 'cuda', got {device!r}")
    onnx_path, _, external = open_model(Path(path), Path(workdir))
    opts = ort.SessionOptions()
    opts.log_severity_level = session_severity()  # its own log lines never reach the terminal raw
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    # Without external data the bytes are handed over, so onnxruntime never guesses a format from the name.
    source: str | bytes = str(onnx_path) if external else onnx_path.read_bytes()
    session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    label = "onnxruntime-cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "onnxruntime-cpu"
    outputs = [o.name for o in session.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> list[np.ndarray]:
        # ``names``: fetch only these outputs; onnxruntime then runs only the nodes they depend on
        return session.run(list(names) if names is not None else outputs, dict(feeds))

    return run, label
