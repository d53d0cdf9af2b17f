"""Rough edges a new user hit on the command line: onnxruntime's own log lines on the terminal, and scalar inputs
(0-d arrays in a ``.npz``) that could not be given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=300)


def conv_model(path: Path, *, declared_batch: int | str) -> Path:
    """One 3×3 conv whose declared output batch may differ from the inputs' (onnxruntime warns about that)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [declared_batch, 8, 8, 8])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnxruntime_warnings_never_reach_the_terminal(tmp_path):
    # The model declares an output batch of 1; the user's inputs have 2, so every run makes onnxruntime warn
    # "VerifyOutputSizes" from C++. The conversion is fine and must print only our own output.
    model = conv_model(tmp_path / "m.onnx", declared_batch=1)
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4, 8, 8), np.float32))
    res = run("convert", str(model), "-o", str(tmp_path / "out.onnx"), "--inputs", str(tmp_path / "in.npz"),
              "--rank", "1", "--force", "--latency-runs", "3")
    assert res.returncode == 0, res.stderr
    for stream in (res.stdout, res.stderr):
        assert "onnxruntime:" not in stream and "VerifyOutputSizes" not in stream, stream
    assert "1 of 1 convolutions converted" in res.stdout


def test_onnxruntime_errors_are_our_one_line(tmp_path):
    model = conv_model(tmp_path / "m.onnx", declared_batch="N")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 3, 8, 8), np.float32))  # 3 channels where the model has 4
    res = run("convert", str(model), "-o", str(tmp_path / "out.onnx"), "--inputs", str(tmp_path / "in.npz"))
    assert res.returncode == 2
    assert res.stdout == "" and res.stderr.count("\n") == 1 and res.stderr.startswith("sepconv: error: ")
    assert "[E:onnxruntime" not in res.stderr and "[W:onnxruntime" not in res.stderr
