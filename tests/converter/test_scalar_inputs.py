"""Scalar model inputs (a sample rate, a threshold) given as 0-d arrays in the ``--inputs`` ``.npz`` reach the model
as scalars: they were turned into shape ``(1,)`` and refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.evaluation._verify import load_user_inputs, random_inputs
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


class _VadLike(torch.nn.Module):
    """A 1-D CNN whose forward takes the sample rate as a Python int, like silero VAD's ``forward(x, sr)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Sequential(torch.nn.Conv1d(4, 16, 5, padding=2), torch.nn.ReLU(),
                                        torch.nn.Conv1d(16, 16, 5, padding=2))

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        if sr != 8000 and sr != 16000:
            raise ValueError("supported sample rates are 8000 and 16000")
        return self.conv(x) * (sr / 16000.0)


@pytest.fixture(scope="module")
def vad(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vad") / "vad.pt"
    torch.jit.script(_VadLike().eval()).save(str(path))
    return path


def test_torchscript_int_argument_is_given_from_the_npz(vad, tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 4, 64)).astype(np.float32)
    errors = {}
    for sr in (8000, 16000):
        np.savez(tmp_path / "in.npz", x=x, sr=np.array(sr))
        report = converter.convert(vad, tmp_path / "out.pt", rank=1, force=True, latency_runs=2,
                                   inputs=tmp_path / "in.npz").report
        assert report.fidelity.inputs == "user" and report.latency is not None
        assert report.policy["input_shapes"] == {"x": [1, 4, 64], "sr": []}
        errors[sr] = report.fidelity.max_abs
    assert errors[8000] / errors[16000] == pytest.approx(0.5, rel=1e-4)  # the model got each sr


def test_torchscript_int_argument_missing_or_refused_by_the_model(vad, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 4, 64), np.float32))
    with pytest.raises(converter.InvalidOptionsError, match=r"input 'sr' is a number .*sr=np\.array\(16000\)"):
        converter.convert(vad, tmp_path / "out.pt", rank=1, inputs=tmp_path / "x.npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros((1, 4, 64), np.float32), sr=np.array(44100))
    with pytest.raises(converter.VerificationError, match="supported sample rates are 8000 and 16000"):
        converter.convert(vad, tmp_path / "out.pt", rank=1, inputs=tmp_path / "bad.npz")
    # Without verification the argument is not needed.
    report = converter.convert(vad, tmp_path / "out.pt", rank=1, force=True, verify=False).report
    assert report.converted_layers
