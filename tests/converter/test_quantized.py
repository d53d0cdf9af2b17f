"""Quantized ONNX models in, quantized ONNX models out: QDQ (int8/uint8 activations, per-tensor and per-channel
int8, uint8, int16 and int4 weights), QOperator (``QLinearConv``) and dynamic (``ConvInteger``) models made by
onnxruntime's own quantization tools from a small float CNN are converted, stay quantized in their own style,
pass ``onnx.checker``'s full check, run on onnxruntime and equal the quantized original at full rank up to
quantization error; calibration of the new tensors' ranges beats the data-free estimate. A pattern that is not
one of these (a weight-only QDQ conv) is reported with the reason and left alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converter
from tests.utils.models import build, export_onnx

quantization = pytest.importorskip("onnxruntime.quantization")
Q = quantization.QuantType

SHAPE = (1, 3, 32, 32)


class _Samples(quantization.CalibrationDataReader):
    def __init__(self, batches: np.ndarray) -> None:
        self._it = iter([{"x": b[None]} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:])).astype(np.float32)


#: style name -> how it is made (static: QDQ/QOperator with keyword arguments; dynamic: quantize_dynamic).
STYLES = {
    "qdq-s8-tensor": ("QDQ", {"per_channel": False}),
    "qdq-s8-channel": ("QDQ", {"per_channel": True}),
    "qdq-u8": ("QDQ", {"per_channel": True, "activation_type": Q.QUInt8, "weight_type": Q.QUInt8}),
    "qdq-s16": ("QDQ", {"per_channel": True, "activation_type": Q.QInt16, "weight_type": Q.QInt16}),
    "qdq-s4-weights": ("QDQ", {"per_channel": True, "weight_type": Q.QInt4}),
    "qop-tensor": ("QOperator", {"per_channel": False}),
    "qop-channel": ("QOperator", {"per_channel": True}),
    "dynamic": ("dynamic", {}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quantized")
    net, _ = build("vgg")
    x = _inputs(1, 0)
    import torch

    export_onnx(net, torch.from_numpy(x), folder / "float.onnx", dynamic=True)
    out = {"float": folder / "float.onnx"}
    for name, (fmt, kwargs) in STYLES.items():
        out[name] = folder / f"{name}.onnx"
        if fmt == "dynamic":
            quantization.quantize_dynamic(out["float"], out[name], op_types_to_quantize=["Conv"],
                                          weight_type=Q.QInt8)
            continue
        try:
            quantization.quantize_static(out["float"], out[name], _Samples(_inputs(16, 1)),
                                         quant_format=getattr(quantization.QuantFormat, fmt), **kwargs)
        except Exception as e:  # a quantizer too old for the type: that style is skipped, with the reason
            out.pop(name)
            print(f"{name}: not made ({type(e).__name__}: {e})")
    np.savez(folder / "calib.npz", x=_inputs(32, 2))
    np.savez(folder / "verify.npz", x=_inputs(8, 3))
    return out


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _need(models: dict[str, Path], style: str) -> Path:
    if style not in models:
        pytest.skip(f"onnxruntime's quantizer could not make a {style} model here")
    return models[style]


def _convert(models, style, tmp_path, **kwargs) -> tuple[Path, converter.ConversionResult]:
    out = tmp_path / f"{style}.onnx"
    result = converter.convert(_need(models, style), out, inputs=models["float"].parent / "verify.npz",
                               measure=False, latency_runs=1, **kwargs)
    return out, result


def _int_convs(path: Path) -> Counter:
    """Convs by kind: QLinearConv, ConvInteger, QDQ (a Conv whose weight and input are dequantized), float."""
    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    kinds: Counter = Counter()
    for n in graph.node:
        if n.op_type in ("QLinearConv", "ConvInteger"):
            kinds[n.op_type] += 1
        elif n.op_type == "Conv":
            dq = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2]]
            kinds["QDQ" if all(dq) else "float"] += 1
    return kinds


@pytest.mark.parametrize("style", list(STYLES))
def test_full_rank_equals_the_quantized_original_up_to_quantization_error(models, tmp_path, style):
    """Tolerance: the converted model's relative L2 distance to the quantized original at most twice the
    quantized original's own quantization error (its distance to the float model), plus 1 %: every converted layer
    adds one rounding of its weights (per-channel int8, half a step per weight) and one quantized tensor (its
    intermediate activation, with calibrated ranges) to the roundings the layer already had, so the error may
    grow by about what quantizing cost in the first place, not more. Dynamic quantization rounds at run time
    on each tensor's own range, so the same holds without data."""
    data = None if style == "dynamic" else models["float"].parent / "calib.npz"
    out, result = _convert(models, style, tmp_path, rank=9, force=True, lowering="fused", data=data,
                           recover="none")  # the ranges of the new tensors are calibrated, the factors exact
    assert [layer.status for layer in result.report.layers] == ["converted"] * 4
    onnx.checker.check_model(onnx.load(out), full_check=True)
    x = _inputs(8, 3)
    quantized, original_float = _run(models[style], x), _run(models["float"], x)
    own = _rel(quantized, original_float)
    got = _rel(_run(out, x), quantized)
    assert got <= 2 * own + 0.01, (style, got, own)


@pytest.mark.parametrize(("style", "kind"), [
    ("qdq-s8-channel", "QDQ"), ("qdq-u8", "QDQ"), ("qop-channel", "QLinearConv"), ("dynamic", "ConvInteger")])
def test_the_converted_model_stays_quantized_in_its_own_style(models, tmp_path, style, kind):
    before = _int_convs(models[style])
    out, result = _convert(models, style, tmp_path, rank=1)
    after = _int_convs(out)
    assert before == Counter({kind: 4})
    assert after == Counter({kind: 8}), after  # every conv a depthwise + pointwise pair, none of them float
    assert all(layer.status == "converted" for layer in result.report.layers)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    if kind == "QDQ":  # each new intermediate tensor has its own Q/DQ pair
        assert ops["QuantizeLinear"] - Counter(n.op_type for n in onnx.load(models[style]).graph.node)[
            "QuantizeLinear"] == 4
    # onnxruntime runs every new conv on its integer kernel: after its graph optimisations, no float Conv is left
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    optimised = Counter(n.op_type for n in onnx.load(tmp_path / "optimised.onnx").graph.node)
    assert not [op for op in optimised if op in ("Conv", "FusedConv") or op.startswith("Nchwc")], optimised


@pytest.mark.parametrize("style", ["qdq-s8-channel", "qop-tensor"])
def test_calibrated_activation_ranges_beat_the_data_free_estimate(models, tmp_path, style):
    x = _inputs(8, 3)
    quantized = _run(_need(models, style), x)
    free, _ = _convert(models, style, tmp_path / "free", rank=9, force=True, lowering="fused")
    calibrated, result = _convert(models, style, tmp_path / "calibrated", rank=9, force=True, lowering="fused",
                                  data=models["float"].parent / "calib.npz", recover="none")
    assert result.report.accuracy is not None
    e_free, e_cal = _rel(_run(free, x), quantized), _rel(_run(calibrated, x), quantized)
    assert e_cal < 0.8 * e_free, (e_cal, e_free)


def test_a_weight_only_qdq_conv_is_reported_and_left_alone(models, tmp_path):
    """A QDQ conv whose input is float (weight-only quantization) has no integer kernel to keep: not converted."""
    model = onnx.load(_need(models, "qdq-s8-channel"))
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    first.input[0] = "x"
    path = tmp_path / "weight-only.onnx"
    onnx.save(model, path)
    result = converter.convert(path, tmp_path / "out.onnx", rank=1, measure=False, latency_runs=1,
                               inputs=models["float"].parent / "verify.npz")
    layers = result.report.layers
    assert layers[0].status == "skipped" and "weight-only quantization" in layers[0].reason
    assert [layer.status for layer in layers[1:]] == ["converted"] * 3


def test_int8_candidates_are_timed_with_their_quantization(models, tmp_path):
    """The planner's cut of a QDQ conv keeps its Q/DQ nodes (so onnxruntime times the int8 kernel)."""
    from converter.formats._onnx import OnnxAdapter

    adapter = OnnxAdapter()
    for style, ops in (("qdq-s8-channel", {"DequantizeLinear", "Conv", "QuantizeLinear"}),
                       ("qop-channel", {"QLinearConv"}), ("dynamic", {"DynamicQuantizeLinear", "ConvInteger"})):
        model = adapter.load(models[style], tmp_path / style)
        layers = adapter.find_convs(model, {"x": SHAPE})
        context = adapter.context(model, layers[1], {"x": SHAPE})
        assert not isinstance(context, str), context
        assert ops <= set(context.ops)
        folder = tmp_path / f"{style}-cut"
        path = context.write(folder)
        cut = adapter.load(path, folder)
        (layer,) = adapter.find_convs(cut, {k: v[0] for k, v in context.inputs.items()})
        assert layer.quantized == layers[1].quantized
