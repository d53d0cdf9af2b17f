"""The bad-input corpus of the library (and so of the CLI and the conversion process): every kind of bad model,
archive, ``.npz`` file or option gets a typed ``SepconvError`` with its own code and one line naming the problem —
never a raw numpy/torch/onnx exception, never a temporary path.

Each case builds its bad input in a temporary folder and says which error type it must raise. The HTTP side
(form fields, headers, uploads) is ``tests/service/test_bad_inputs.py``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import converter
from converter import InvalidOptionsError, SepconvError, UnsupportedModelError, VerificationError
from converter.formats import _archive
from tests.utils.hostile_models import save_hostile
from tests.utils.models import build, export_onnx, export_torchscript
from tests.utils.onnx_models import make_model, make_zip, output, save_external, with_external_location

SHAPE = {"x": (1, 3, 16, 16)}


def _conv(w_shape: tuple[int, ...], in_shape: list[Any], op: str = "Conv", domain: str = "",
          **attrs: Any) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).random(w_shape, dtype=np.float32), "W")
    node = helper.make_node(op, ["x", "W"], ["y"], domain=domain, **{"kernel_shape": list(w_shape[2:]), **attrs})
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [output("y", 4)], [w])
    return make_model(graph)


def _vgg_onnx(folder: Path) -> Path:
    model, x = build("vgg")
    path = folder / "vgg.onnx"
    export_onnx(model, x, path)
    return path


def _vgg_ts(folder: Path) -> Path:
    model, x = build("vgg")
    path = folder / "vgg.pt"
    export_torchscript(model, x, path)
    return path


def _npz(folder: Path, **arrays: Any) -> Path:
    path = folder / "inputs.npz"
    np.savez(path, **arrays)
    return path


@dataclass
class Case:
    """A bad input: ``make(folder)`` returns ``(model path, extra convert kwargs)``."""

    make: Callable[[Path], tuple[Path, dict[str, Any]]]
    error: type[SepconvError]
    text: str = ""


def _file(data: bytes, name: str = "m.bin") -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        path = folder / name
        path.write_bytes(data)
        return path, {}
    return make


def _onnx(proto_of: Callable[[], onnx.ModelProto], **kw: Any) -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        path = folder / "m.onnx"
        onnx.save(proto_of(), path)
        return path, kw
    return make


def _zip(files: list[tuple[str, bytes]] = (), *, with_model: bool = False,
         **kw: Any) -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    """A zip of ``files`` (and, with ``with_model``, a real model.onnx with its external data first)."""
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        members = list(files)
        if with_model:
            ext = save_external(onnx.load(_vgg_onnx(folder)), folder / "ext")
            members = [(p.name, p.read_bytes()) for p in sorted(ext.parent.iterdir())] + members
        return make_zip(folder / "m.zip", members, **kw), {}
    return make


def _with_inputs(**arrays: Any) -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        return _vgg_onnx(folder), {"inputs": _npz(folder, **arrays)}
    return make


def _vgg_with(**kw: Any) -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        return _vgg_onnx(folder), kw
    return make


def _hostile(kind: str) -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        (folder / "outside").mkdir()
        target = folder / "outside" / "victim"
        if kind == "fifo_reader":
            os.mkfifo(target)
        return save_hostile(kind, target, folder / "m.pt"), {"input_shape": {"x": (1, 3, 8, 8)}}
    return make


def _torch_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / "ckpt.pt"
    torch.save({"w": torch.zeros(3)}, path)
    return path, {}


def _truncated_ts(folder: Path) -> tuple[Path, dict[str, Any]]:
    data = _vgg_ts(folder).read_bytes()
    path = folder / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    return path, {}


def _truncated_onnx(folder: Path) -> tuple[Path, dict[str, Any]]:
    data = _vgg_onnx(folder).read_bytes()
    path = folder / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path, {}


def _external_outside(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / "m.onnx"
    onnx.save(with_external_location(onnx.load(_vgg_onnx(folder)), "../../etc/passwd"), path)
    return path, {}


def _zip_bomb(folder: Path) -> tuple[Path, dict[str, Any]]:
    ext = save_external(onnx.load(_vgg_onnx(folder)), folder / "ext")
    files = [(p.name, p.read_bytes()) for p in ext.parent.iterdir()] + [("padding.bin", bytes(4 * 2**20))]
    path = folder / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(name, data)
    return path, {}


def _two_models_zip(folder: Path) -> tuple[Path, dict[str, Any]]:
    data = _vgg_onnx(folder).read_bytes()
    return make_zip(folder / "two.zip", [("a.onnx", data), ("b.onnx", data)]), {}


def _not_npz(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / "inputs.npz"
    path.write_bytes(b"certainly not a zip")
    return _vgg_onnx(folder), {"inputs": path}


def _pickled_npz(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / "inputs.npz"
    np.savez(path, inputs=np.array([{"a": 1}], dtype=object))
    return _vgg_onnx(folder), {"inputs": path}


def _same_output(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = _vgg_onnx(folder)
    return path, {"output": path}


def _missing(folder: Path) -> tuple[Path, dict[str, Any]]:
    return folder / "nowhere.onnx", {}


def _x(*dims: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(dims).astype(np.float32)


CORPUS: dict[str, Case] = {
    # models
    "empty file": Case(_file(b""), UnsupportedModelError),
    "random bytes": Case(_file(os.urandom(4096)), UnsupportedModelError),
    "text file": Case(_file(b"hello, this is not a model\n" * 50, "m.txt"), UnsupportedModelError),
    "truncated onnx": Case(_truncated_onnx, UnsupportedModelError),
    "truncated torchscript": Case(_truncated_ts, UnsupportedModelError),
    "torch.save checkpoint": Case(_torch_checkpoint, UnsupportedModelError),
    "onnx conv with an unknown op domain": Case(_onnx(lambda: _conv((8, 3, 3, 3), [1, 3, 16, 16], "Conv",
                                                                      "com.evil"), rank=1), SepconvError),
    "onnx conv weight contradicting its input": Case(_onnx(lambda: _conv((8, 5, 3, 3), [1, 3, 16, 16]), rank=1),
                                                     VerificationError, "channels"),
    "onnx conv groups contradicting its weight": Case(_onnx(lambda: _conv((8, 3, 3, 3), [1, 3, 16, 16], group=2),
                                                            rank=1), VerificationError, "channels"),
    "onnx conv kernel_shape contradicting its weight": Case(
        _onnx(lambda: _conv((8, 3, 3, 3), [1, 3, 16, 16], kernel_shape=[5, 5]), rank=1), UnsupportedModelError,
        "kernel_shape [5, 5] contradicts its weight"),
    "onnx conv weight of the wrong rank": Case(_onnx(lambda: _conv((8, 3, 3), [1, 3, 16, 16], kernel_shape=[3, 3]),
                                                     rank=1), UnsupportedModelError, "contradicts its weight"),
    "the same, unverified": Case(_onnx(lambda: _conv((8, 3, 3), [1, 3, 16, 16], kernel_shape=[3, 3]), rank=1,
                                       verify=False), UnsupportedModelError, "contradicts its weight"),
    "onnx conv with zero output channels": Case(_onnx(lambda: _conv((0, 3, 3, 3), [1, 3, 16, 16]), rank=1),
                                                VerificationError),
    "onnx conv with zero strides": Case(_onnx(lambda: _conv((8, 3, 3, 3), [1, 3, 16, 16], strides=[0, 0]), rank=1),
                                        UnsupportedModelError),
    "onnx conv with negative pads": Case(_onnx(lambda: _conv((8, 3, 3, 3), [1, 3, 16, 16], pads=[-5] * 4), rank=1),
                                         VerificationError, "pads"),
    "huge declared input dims": Case(_onnx(lambda: _conv((8, 3, 3, 3), [1, 3, 100000, 100000]), rank=1),
                                     InvalidOptionsError, "GiB"),
    "huge --input-shape": Case(_onnx(lambda: _conv((8, 3, 3, 3), [1, 3, "h", "w"]), rank=1,
                                     input_shape={"x": (1, 3, 60000, 60000)}), InvalidOptionsError, "GiB"),
    "symbolic dims without --input-shape": Case(_onnx(lambda: _conv((8, 3, 3, 3), [1, 3, "h", "w"]), rank=1),
                                                InvalidOptionsError, "--input-shape"),
    "torchscript writing a file": Case(_hostile("file_writer"), UnsupportedModelError, "aten::from_file"),
    "torchscript reading a fifo": Case(_hostile("fifo_reader"), UnsupportedModelError, "aten::from_file"),
    "torchscript op in a called function": Case(_hostile("calls_function"), UnsupportedModelError, "from_file"),
    "torchscript op in an unused method": Case(_hostile("hidden_method"), UnsupportedModelError, "from_file"),
    "torchscript __setstate__": Case(_hostile("setstate"), UnsupportedModelError, "__setstate__"),
    # archives
    "empty zip": Case(_zip([]), UnsupportedModelError),
    "zip without a model": Case(_zip([("readme.txt", b"hi")]), UnsupportedModelError),
    "zip with a .. member": Case(_zip([("../evil.bin", b"x")], with_model=True), UnsupportedModelError, "zip"),
    "zip with an absolute member": Case(_zip([("/etc/evil.bin", b"x")], with_model=True), UnsupportedModelError,
                                        "zip"),
    "zip with a symlink member": Case(_zip(symlinks=[("link.bin", "/etc/passwd")], with_model=True),
                                      UnsupportedModelError, "symbolic link"),
    "zip with a fifo member": Case(_zip(fifos=["pipe.bin"], with_model=True), UnsupportedModelError,
                                   "not a regular file"),
    "zip with two models": Case(_two_models_zip, UnsupportedModelError),
    "zip bomb (ratio)": Case(_zip_bomb, UnsupportedModelError, "unpacks to more than"),
    "external data outside the model": Case(_external_outside, UnsupportedModelError),
    # verification inputs (.npz)
    "npz with NaN": Case(_with_inputs(inputs=np.full((1, 3, 32, 32), np.nan, np.float32)), InvalidOptionsError,
                         "NaN"),
    "npz with inf": Case(_with_inputs(inputs=np.full((1, 3, 32, 32), np.inf, np.float32)), InvalidOptionsError,
                         "infinite"),
    "npz not a zip": Case(_not_npz, InvalidOptionsError, ".npz"),
    "npz with a pickled array": Case(_pickled_npz, InvalidOptionsError),
    "npz with unknown names": Case(_with_inputs(images=_x(1, 3, 32, 32)), InvalidOptionsError, "expected"),
    "npz with strings": Case(_with_inputs(inputs=np.full((1, 3, 32, 32), "a")), InvalidOptionsError, "not numeric"),
    "npz with the wrong rank": Case(_with_inputs(inputs=_x(3, 32, 32)), InvalidOptionsError, "dims"),
    "npz with no samples": Case(_with_inputs(inputs=_x(0, 3, 32, 32)), InvalidOptionsError, "no samples"),
    "npz with the wrong channels": Case(_with_inputs(inputs=_x(2, 4, 32, 32)), VerificationError),
    "npz with complex numbers": Case(_with_inputs(inputs=np.zeros((1, 3, 32, 32), np.complex64)),
                                     InvalidOptionsError, "not numeric"),
    # options
    "rank 0": Case(_vgg_with(rank=0), InvalidOptionsError, "rank"),
    "energy above 1": Case(_vgg_with(energy=2.0), InvalidOptionsError, "energy"),
    "energy NaN": Case(_vgg_with(energy=float("nan")), InvalidOptionsError, "energy"),
    "two rank policies": Case(_vgg_with(rank=2, energy=0.9), InvalidOptionsError, "one rank policy"),
    "unknown option": Case(_vgg_with(rnak=2), InvalidOptionsError, "unknown option"),
    "malformed --input-shape": Case(_vgg_with(input_shape="x=1by3"), InvalidOptionsError, "input shape"),
    "--input-shape of an unknown input": Case(_vgg_with(input_shape={"nope": (1, 3, 32, 32)}), InvalidOptionsError,
                                              "nope"),
    "--input-shape of the wrong rank": Case(_vgg_with(input_shape={"x": (1, 3, 32)}), InvalidOptionsError, "dims"),
    "malformed --layer-rank": Case(_vgg_with(layer_rank="features.0"), InvalidOptionsError, "layer rank"),
    "output path is the input": Case(_same_output, InvalidOptionsError, "output path"),
    "model file missing": Case(_missing, InvalidOptionsError, "not found"),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_gets_a_typed_one_line_error(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_archive, "MIN_UNPACK_CAP", 2**20)  # the ratio rule, without gigabytes of test data
    case = CORPUS[name]
    folder = tmp_path / "case"
    folder.mkdir()
    model, kwargs = case.make(folder)
    output = kwargs.pop("output", tmp_path / "out" / "converted.bin")
    output.parent.mkdir(exist_ok=True)
    kwargs.setdefault("latency_runs", 1)
    with pytest.raises(case.error) as info:
        converter.convert(model, output, **kwargs)
    error = info.value
    message = str(error)
    assert isinstance(error, SepconvError) and error.code != "sepconv_error", repr(error)
    assert message and "\n" not in message and len(message) <= 2000, message
    assert "sepconv-" not in message and "/tmp/" not in message.replace(str(tmp_path), ""), message
    assert case.text in message, message
    assert "failed unexpectedly" not in message and "internal" not in message.lower(), message


def test_corpus_covers_forty_kinds() -> None:
    assert len(CORPUS) >= 40


def test_fidelity_in_batches_equals_the_whole(tmp_path: Path) -> None:
    from converter.evaluation._verify import FidelityStats, batches, fidelity

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((100, 10)), rng.standard_normal((100, 10))
    whole = fidelity([a], [b], "user")
    stats = FidelityStats()
    for lo in range(0, 100, 7):
        stats.add([a[lo:lo + 7]], [b[lo:lo + 7]])
    parts = stats.result("user")
    assert parts.samples == whole.samples == 100
    for key in ("rel_l2", "max_abs", "cosine", "top1_agreement"):
        assert getattr(parts, key) == pytest.approx(getattr(whole, key), rel=1e-9), key
    chunks = list(batches({"x": np.zeros((10, 2)), "y": np.zeros((10,))}, 4))
    assert [c["x"].shape[0] for c in chunks] == [4, 4, 2]
    assert len(list(batches({"x": np.zeros((10, 2)), "y": np.zeros((3,))}, 4))) == 1  # no common batch dim


def test_verification_runs_user_samples_in_batches(tmp_path: Path) -> None:
    model = _vgg_onnx(tmp_path)
    inputs = _npz(tmp_path, inputs=_x(50, 3, 32, 32))
    result = converter.convert(model, tmp_path / "o.onnx", inputs=inputs, rank=2, batch_size=8, latency_runs=1)
    assert result.report.fidelity.samples == 50
    assert result.report.latency.batch == 8  # timed on one batch, not on all 50 samples at once
