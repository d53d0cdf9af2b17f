"""Scalar model inputs (a sample rate, a threshold) given as 0-d arrays in the ``--inputs`` ``.npz`` reach the model
as scalars: they were turned into shape ``(1,)`` and refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter._verify import load_user_inputs, random_inputs
from converter.formats._base import InputSpec


def scaled_conv(path: Path) -> Path:
    """y = conv(x) · float(sr), with ``sr`` an int64 scalar input (shape ``[]``), like silero VAD's sample rate."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["c", "srf"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_0d_array_stays_a_scalar(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 4, 8, 8), np.float32), sr=np.array(16000))
    specs = [InputSpec("x", (1, 4, 8, 8), np.dtype(np.float32)), InputSpec("sr", (), np.dtype(np.int64))]
    got = load_user_inputs(tmp_path / "in.npz", specs)
    assert got["sr"].shape == () and got["sr"].dtype == np.int64 and int(got["sr"]) == 16000
    assert got["x"].shape == (1, 4, 8, 8) and got["x"].flags.c_contiguous
    rand = random_inputs(specs, {"x": (1, 4, 8, 8), "sr": ()}, seed=0)
    assert isinstance(rand["sr"], np.ndarray) and rand["sr"].shape == ()


def test_a_scalar_input_is_passed_to_the_model(tmp_path):
    model = scaled_conv(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    errors = {}
    for sr in (1, 1000):
        np.savez(tmp_path / f"in{sr}.npz", x=x, sr=np.array(sr, dtype=np.int64))
        result = converter.convert(model, tmp_path / "out.onnx", rank=1, force=True, latency_runs=2,
                                   inputs=tmp_path / f"in{sr}.npz")
        assert result.report.fidelity.inputs == "user"
        assert result.report.policy["input_shapes"] == {"x": [1, 4, 8, 8], "sr": []}
        errors[sr] = result.report.fidelity.max_abs
    # The outputs are conv(x)·sr, so the largest difference between the models scales with the given sr.
    assert errors[1000] / errors[1] == pytest.approx(1000, rel=1e-3)


def test_a_scalar_given_where_the_model_wants_a_tensor_is_refused(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.array(1.0, np.float32))
    with pytest.raises(converter.InvalidOptionsError, match="array for 'x' has 0 dims, the model expects 4"):
        load_user_inputs(tmp_path / "in.npz", [InputSpec("x", (1, 4, 8, 8), np.dtype(np.float32))])
