"""Quantized ONNX models: their convolutions are found and reported as skipped with the precise reason (integer
ConvInteger/QLinearConv; QDQ DequantizeLinear → Conv), never as "no convolutions", and the model comes back
unchanged. The models are made by onnxruntime's own quantization tools from a small float CNN."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import converter
from tests.utils.models import build, export_onnx

quantization = pytest.importorskip("onnxruntime.quantization")


class _Samples(quantization.CalibrationDataReader):
    def __init__(self, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(0)
        self._it = iter([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

    def get_next(self) -> dict | None:
        return next(self._it, None)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quantized")
    net, x = build("vgg")
    export_onnx(net, x, folder / "float.onnx", dynamic=False)
    out = {k: folder / f"{k}.onnx" for k in ("dynamic", "qdq", "qoperator")}
    quantization.quantize_dynamic(folder / "float.onnx", out["dynamic"], op_types_to_quantize=["Conv"],
                                  weight_type=quantization.QuantType.QInt8)
    for name, fmt in (("qdq", quantization.QuantFormat.QDQ), ("qoperator", quantization.QuantFormat.QOperator)):
        quantization.quantize_static(folder / "float.onnx", out[name], _Samples(tuple(x.shape)),
                                     quant_format=fmt)
    return out


@pytest.mark.parametrize(("kind", "op", "reason"), [
    ("dynamic", "ConvInteger", "ConvInteger: an integer conv of a dynamically quantized model, not converted"),
    ("qoperator", "QLinearConv", "QLinearConv: an integer conv of a statically quantized model, not converted"),
    ("qdq", "Conv", "weight is quantized (QDQ: DequantizeLinear → Conv), not converted"),
])
def test_quantized_convs_are_reported_with_why_they_are_not_converted(quantized, tmp_path, kind, op, reason):
    path = quantized[kind]
    assert Counter(n.op_type for n in onnx.load(path).graph.node)[op] == 4
    result = converter.convert(path, tmp_path / "out.onnx", latency_runs=2)
    report = result.report
    assert [layer.op for layer in report.layers] == [op] * 4
    assert [(layer.in_channels, layer.out_channels, layer.kernel) for layer in report.layers] == [
        (3, 16, [3, 3]), (16, 16, [3, 3]), (16, 32, [3, 3]), (32, 32, [3, 3])]
    for layer in report.layers:
        assert layer.status == "skipped" and layer.reason.startswith(reason)
        assert "convert the float model, then quantize the result" in layer.reason
    nothing = [w for w in report.warnings if w.startswith("no layer was converted")]
    assert len(nothing) == 1 and reason in nothing[0] and "no convolutions" not in nothing[0]
    assert (tmp_path / "out.onnx").read_bytes() == path.read_bytes()
