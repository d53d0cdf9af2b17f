"""The curated public surface is pinned: adding or removing a name is a deliberate change to this list."""

from __future__ import annotations

import subprocess
import sys

import converter

EXPECTED = {
    "Accuracy", "DEFAULT_ENERGY", "StageValues", "ConversionConfig", "ConversionError", "ConversionResult",
    "Counts", "Decomposition",
    "Fidelity", "InvalidOptionsError", "LayerReport", "Latency", "Report", "SepconvError", "Timings",
    "UnsupportedModelError", "VerificationError", "__version__", "convert", "decompose", "lower", "render_html",
    # what the service needs from the converter (it imports nothing private: tests/test_layering.py)
    "JOB_STAGES", "REPEATABLE_FIELDS", "REPORT_SCRIPT", "atomic_write", "elide", "map_errors", "report_progress",
}


def test_public_names_are_pinned():
    assert set(converter.__all__) == EXPECTED
    for name in converter.__all__:
        assert getattr(converter, name) is not None


def test_error_hierarchy():
    for err in (converter.InvalidOptionsError, converter.UnsupportedModelError, converter.ConversionError,
                converter.VerificationError):
        assert issubclass(err, converter.SepconvError)
    assert issubclass(converter.InvalidOptionsError, ValueError)


def test_import_is_light():
    """Importing the package (config, report, errors) must not pull in torch, onnx or numpy-heavy code."""
    code = ("import sys, converter; c = converter.ConversionConfig(rank=2); "
            "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
