"""Timed callables for saved model files on their real runtime, with inputs already on the device.

Each callable runs one inference and returns when it is finished; how is the format's own business
(``formats.Timeable.timed_runner``: onnxruntime with an I/O binding on CUDA, torch with a device synchronise),
so what is timed is the model, not host-device copies or numpy conversions, and both models being compared are
timed identically. A format that is not timeable is timed through its plain runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._errors import InvalidOptionsError
from ..formats import FormatAdapter, Timeable, Timed

__all__ = ["Timed", "timed_runner"]


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
    if isinstance(adapter, Timeable):
        return adapter.timed_runner(path, workdir, threads, device, inputs)
    run, _ = adapter.runner(path, workdir, threads, device)
    return lambda: run(inputs)
