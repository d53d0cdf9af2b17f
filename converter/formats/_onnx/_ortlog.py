"""Keep onnxruntime's own log lines off the user's terminal.

onnxruntime logs from C++ straight to the process's stderr (``[W:onnxruntime:…] … VerifyOutputSizes``,
``[E:onnxruntime:…]``), with no Python hook to receive them; capturing them would mean redirecting the process's
stderr, which also carries the CLI's progress bar. So its logger is told to report nothing below ``fatal``:
its warnings are about the runtime's internals (a declared output shape that a user's batch differs from,
memory-pattern choices) and its errors also come back as the Python exception that our one-line errors quote.
With the ``sepconv`` logger at DEBUG (``SEPCONV_LOG_LEVEL=debug``), its warnings are let through for diagnosis.

This module does not create sessions: the places that create them (the ONNX runner, the latency timers) call
``quiet_onnxruntime()`` just before and set ``session_severity()`` in their options too; a conversion that
creates none (a cached plan, no verification) does not import onnxruntime at all.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_onnxruntime", "session_severity"]

log = logging.getLogger("sepconv.onnxruntime")

_WARNING, _FATAL = 2, 4  # onnxruntime's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def session_severity() -> int:
    """The severity for ``SessionOptions.log_severity_level`` and ``RunOptions.log_severity_level``."""
    return _WARNING if log.isEnabledFor(logging.DEBUG) else _FATAL


def quiet_onnxruntime() -> None:
    """Set onnxruntime's default logger (used by every session created afterwards) to ``session_severity()``.

    A no-op when onnxruntime is not installed (TorchScript-only use).
    """
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency, but the library may run without it
        return
    ort.set_default_logger_severity(session_severity())
