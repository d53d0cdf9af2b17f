"""ONNX model-local functions (``ModelProto.functions``): the convs inside them are found (the functions that
hold them are inlined at their call sites), converted, and the result stays valid (``onnx.checker`` full check)
and equal at full rank (relative L2 ≤ 1e-5 on onnxruntime); functions without a conv are kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.formats import detect_format
from converter.formats._onnx import OnnxModel
from converter.formats._onnx._adapter import OnnxAdapter
from converter.formats._onnx._functions import InlineConvFunctionsPass
from tests.utils.onnx_models import ort_run, rel_l2

EXACT = 1e-5
LOCAL = "local"


def _functions() -> list[onnx.FunctionProto]:
    # Block(x, w, b): LeakyRelu(Conv(x, w, b)), the slope an attribute reference; the conv weight is an input.
    slope = helper.make_attribute_ref("alpha", onnx.AttributeProto.FLOAT)
    leaky = helper.make_node("LeakyRelu", ["c"], ["y"])
    leaky.attribute.append(slope)
    block = helper.make_function(
        LOCAL, "Block", ["x", "w", "b"], ["y"],
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), leaky],
        [helper.make_opsetid("", 17)], attributes=["alpha"])
    # Stem(x): a conv whose weight is a Constant inside the function, then a call of Block (nested).
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) / 5, "wc")
    b = numpy_helper.from_array(np.zeros(6, np.float32), "bc")
    stem = helper.make_function(
        LOCAL, "Stem", ["x", "w2", "b2"], ["y"],
        [helper.make_node("Constant", [], ["wc"], value=w), helper.make_node("Constant", [], ["bc"], value=b),
         helper.make_node("Conv", ["x", "wc", "bc"], ["s"], pads=[1, 1, 1, 1]),
         helper.make_node("Block", ["s", "w2", "b2"], ["y"], domain=LOCAL, alpha=0.1)],
        [helper.make_opsetid("", 17), helper.make_opsetid(LOCAL, 1)])
    # Act(x): no conv; kept as a function.
    act = helper.make_function(LOCAL, "Act", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                               [helper.make_opsetid("", 17)])
    return [block, stem, act]


def function_model(seed: int = 0) -> onnx.ModelProto:
    """x → Stem (a conv, then Block) → Act → Block (another call, other weights) → y; [2, 3, 8, 8] → [2, 6, 8, 8]."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / 5).astype(np.float32), name)

    nodes = [
        helper.make_node("Stem", ["x", "w1", "b1"], ["a"], domain=LOCAL, name="stem"),
        helper.make_node("Act", ["a"], ["r"], domain=LOCAL, name="act"),
        helper.make_node("Block", ["r", "w2", "b2"], ["y"], domain=LOCAL, name="block", alpha=0.2),
    ]
    graph = helper.make_graph(
        nodes, "functions", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 8, 8])],
        [init("w1", 6, 6, 3, 3), init("b1", 6), init("w2", 6, 6, 3, 3), init("b2", 6)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(LOCAL, 1)],
                              functions=_functions(), ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_convs_inside_functions_are_found() -> None:
    proto = function_model()
    model = OnnxModel.from_proto(proto)
    layers = OnnxAdapter().find_convs(model, {"x": (1, 3, 8, 8)})
    assert len(layers) == 3  # Stem's own conv, Block inside Stem, Block at the top level
    assert all(la.weight is not None and la.note is None for la in layers)
    assert all(la.out_spatial == (8, 8) for la in layers)
    assert [f.name for f in model.model.functions.values()] == ["Act"]  # the function without a conv stays


def test_inline_pass_reports_modified_only_when_it_inlined() -> None:
    model = OnnxModel.from_proto(function_model()).model
    assert not InlineConvFunctionsPass()(model).modified  # already inlined by from_proto


@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
def test_full_rank_conversion_is_valid_and_exact(tmp_path: Path, order: str) -> None:
    proto = function_model()
    src = tmp_path / "f.onnx"
    onnx.save(proto, str(src))
    result = converter.convert(src, tmp_path / "slim.onnx", rank=99, force=True, order=order, measure=False,
                               input_shape={"x": (1, 3, 8, 8)})
    assert [la.status for la in result.report.layers] == ["converted"] * 3
    out = onnx.load(str(result.output_path))
    onnx.checker.check_model(out, full_check=True)
    assert [f.name for f in out.functions] == ["Act"]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert rel_l2(ort_run(out, {"x": x})[0], ort_run(proto, {"x": x})[0]) <= EXACT
    assert detect_format(result.output_path).name == "onnx"


def test_a_model_without_functions_is_untouched() -> None:
    from tests.utils.onnx_models import zoo_onnx

    proto = onnx.load_from_string(zoo_onnx("vgg"))
    model = OnnxModel.from_proto(proto).model
    assert not model.functions and not InlineConvFunctionsPass()(model).modified
