"""onnxruntime's own logger reports only fatal errors unless the ``sepconv.onnxruntime`` logger is at DEBUG (its
effect on a real CLI run: tests/service/test_cli_rough_edges.py)."""

from __future__ import annotations

import logging

from converter.formats._onnx._ortlog import session_severity


def test_severity_follows_our_logger():
    log = logging.getLogger("sepconv.onnxruntime")
    before = log.level
    try:
        log.setLevel(logging.WARNING)
        assert session_severity() == 4  # fatal only
        log.setLevel(logging.DEBUG)
        assert session_severity() == 2  # warnings, for diagnosis
    finally:
        log.setLevel(before)
