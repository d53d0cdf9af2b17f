"""Symbolic input dims with ``--data``: MACs are counted (and the model verified) at the shapes of the samples,
and the report's ``policy`` says which inputs took their shape from the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import converter
from tests.converter.test_transposed import UNetT, _images
from tests.utils.models import export_onnx, export_torchscript


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_macs_at_the_samples_shapes(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    model = UNetT().eval()
    images = _images(24)
    x = torch.from_numpy(images[:2])
    if fmt == "onnx":
        src = tmp_path / "u.onnx"
        export_onnx(model, x, src, dynamic=True)  # batch, height and width symbolic
    else:
        src = export_torchscript(model, x, tmp_path / "u.pt")  # no recorded shapes at all
    np.savez(tmp_path / "d.npz", x=images)
    # without samples: no shapes, no MACs, and the report says why
    plain = converter.convert(src, tmp_path / f"a{src.suffix}", rank=2, verify=False, measure=False).report
    assert plain.macs.original is None and any("MACs unknown" in w for w in plain.warnings)
    assert "input_shapes_from_data" not in plain.policy
    report = converter.convert(src, tmp_path / f"b{src.suffix}", rank=2, data=tmp_path / "d.npz",
                               recover="none", measure=False).report
    assert report.policy["input_shapes_from_data"] == ["x"]
    assert report.policy["input_shapes"] == {"x": [1, 1, 16, 16]}
    expected = converter.convert(src, tmp_path / f"c{src.suffix}", rank=2, verify=False, measure=False,
                                 input_shape={"x": (1, 1, 16, 16)}).report
    assert report.macs.original == expected.macs.original and report.macs.original > 0
    assert report.macs.converted == expected.macs.converted
    assert not any("MACs unknown" in w for w in report.warnings)
    assert report.fidelity is not None  # verified at those shapes too
