"""ONNX test models: conv graphs built with ``onnx.helper`` (one graph holding a grid of conv configurations,
weights as Constant nodes, behind Identity, as graph inputs or computed at run time, convs inside If and Loop
bodies), exports of the torch zoo in ``tests/utils/models.py``, archives with external data or unsafe members,
and a small onnxruntime runner for protos.

Nothing is downloaded: every tensor comes from a seeded generator. Hand-built models use IR version 8, which
onnxruntime 1.31 reads (onnx 1.23's default, IR 14, it does not).
"""

from __future__ import annotations

import functools
import itertools
import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from .models import build, export_onnx

IR_VERSION = 8
OPSET = 17

F32 = TensorProto.FLOAT


def make_model(graph: onnx.GraphProto, opset: int = OPSET, ir_version: int = IR_VERSION) -> onnx.ModelProto:
    """A model of ``graph`` with the default opset only, at an IR version onnxruntime reads."""
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def output(name: str, rank: int, dtype: int = F32) -> onnx.ValueInfoProto:
    """A graph output of known rank and unknown dims (the checker wants a shape on graph outputs)."""
    return helper.make_tensor_value_info(name, dtype, [None] * rank)


def ort_run(model: onnx.ModelProto | bytes, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model in onnxruntime (CPU, one thread) and return all its outputs."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative L2 error ``‖actual − expected‖ / ‖expected‖`` in float64."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------------------------
# A grid of single convs in one graph


@dataclass(frozen=True)
class ConvSpec:
    """One conv configuration: kernel, stride, dilation, padding mode, groups and bias."""

    kernel: tuple[int, ...]
    stride: int = 1
    dilation: int = 1
    padding: str = "explicit"  # "explicit" (asymmetric pads), "SAME_UPPER" or "VALID"
    groups: int = 1
    bias: bool = True

    @property
    def label(self) -> str:
        k = "x".join(map(str, self.kernel))
        return f"k{k}_s{self.stride}_d{self.dilation}_{self.padding}_g{self.groups}_{'bias' if self.bias else 'nobias'}"

    def attrs(self) -> dict:
        d = len(self.kernel)
        out: dict = {"kernel_shape": list(self.kernel), "strides": [self.stride] * d,
                     "dilations": [self.dilation] * d, "group": self.groups}
        if self.padding == "explicit":
            # asymmetric on purpose: begin pads the full half-kernel, end one less
            begin = [self.dilation * (k // 2) for k in self.kernel]
            out["pads"] = begin + [max(0, b - 1) for b in begin]
        else:
            out["auto_pad"] = self.padding
        return out


def grid_specs(kernel: tuple[int, ...]) -> list[ConvSpec]:
    """Every combination of stride 1/2, dilation 1/2, explicit/SAME_UPPER/VALID padding, groups 1/2/4 and bias
    on/off for one kernel, except SAME_UPPER with dilation 2, which onnxruntime does not run ("Dilation not
    supported for AutoPadType::SAME_UPPER"): 60 convs."""
    return [ConvSpec(kernel, s, d, p, g, b) for s, d, p, g, b in
            itertools.product((1, 2), (1, 2), ("explicit", "SAME_UPPER", "VALID"), (1, 2, 4), (True, False))
            if not (p == "SAME_UPPER" and d > 1)]


def conv_grid_model(specs: Sequence[ConvSpec], *, channels: int = 8, spatial: Sequence[int], batch: int = 2,
                    seed: int = 0, dtype: int = F32) -> onnx.ModelProto:
    """One input ``x`` [batch, channels, *spatial] feeding one Conv per spec (nodes ``conv<i>``, weights
    ``w<i>``, biases ``b<i>``, outputs ``y<i>``), all ``channels`` → ``channels``."""
    rng = _rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    nodes, inits, outputs = [], [], []
    for i, spec in enumerate(specs):
        w = rng.standard_normal((channels, channels // spec.groups, *spec.kernel)).astype(np_dtype)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inputs = ["x", f"w{i}"]
        if spec.bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(channels).astype(np_dtype), f"b{i}"))
            inputs.append(f"b{i}")
        nodes.append(helper.make_node("Conv", inputs, [f"y{i}"], name=f"conv{i}", **spec.attrs()))
        outputs.append(output(f"y{i}", 2 + len(spec.kernel), dtype))
    x = helper.make_tensor_value_info("x", dtype, [batch, channels, *spatial])
    return make_model(helper.make_graph(nodes, "conv_grid", [x], outputs, inits))


# --------------------------------------------------------------------------------------------------------------
# Where a weight comes from


def weight_source_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    """``x`` [2, 4, 8, 8] → ``conv`` (3×3, pads 1, weight from ``kind``) → Relu → ``head`` (1×1, an
    initializer) → ``y``.

    ``kind``: ``initializer``; ``constant`` (weight and bias as Constant nodes, as Paddle writes them);
    ``identity`` (an initializer behind two Identity nodes); ``graph_input`` (an initializer that is also a
    graph input); ``computed`` (``Mul(w0, scale)``, known only at run time).
    """
    rng = _rng(seed)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    head = rng.standard_normal((3, 6, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(head, "head.weight")]
    nodes = []
    inputs = [helper.make_tensor_value_info("x", F32, [2, 4, 8, 8])]
    bias_name = "conv.bias"
    if kind == "constant":
        nodes.append(helper.make_node("Constant", [], ["conv.weight"], name="w_const",
                                      value=numpy_helper.from_array(w, "conv.weight")))
        nodes.append(helper.make_node("Constant", [], ["conv.bias"], name="b_const",
                                      value=numpy_helper.from_array(b, "conv.bias")))
        weight_name = "conv.weight"
    else:
        inits.append(numpy_helper.from_array(b, "conv.bias"))
        if kind == "initializer":
            inits.append(numpy_helper.from_array(w, "conv.weight"))
            weight_name = "conv.weight"
        elif kind == "identity":
            inits.append(numpy_helper.from_array(w, "conv.weight"))
            nodes.append(helper.make_node("Identity", ["conv.weight"], ["w_id1"], name="id1"))
            nodes.append(helper.make_node("Identity", ["w_id1"], ["w_id2"], name="id2"))
            weight_name = "w_id2"
        elif kind == "graph_input":
            inits.append(numpy_helper.from_array(w, "conv.weight"))
            inputs.append(helper.make_tensor_value_info("conv.weight", F32, list(w.shape)))
            weight_name = "conv.weight"
        elif kind == "computed":
            inits.append(numpy_helper.from_array(w, "w0"))
            inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "scale"))
            nodes.append(helper.make_node("Mul", ["w0", "scale"], ["w_scaled"], name="scale_w"))
            weight_name = "w_scaled"
        else:
            raise ValueError(kind)
    nodes += [
        helper.make_node("Conv", ["x", weight_name, bias_name], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "head.weight"], ["y"], name="head"),
    ]
    graph = helper.make_graph(nodes, f"weights_{kind}", inputs, [output("y", 4)],
                              inits)
    return make_model(graph)


# --------------------------------------------------------------------------------------------------------------
# Subgraphs


def if_model(seed: int = 0) -> onnx.ModelProto:
    """``stem`` conv in the main graph, then an If on the bool input ``cond``: the then-branch holds ``then_conv``
    (weight a main-graph initializer, read from the outer scope), the else-branch ``else_conv`` (weight a
    subgraph initializer) followed by ``else_conv2`` (weight a Constant node inside the subgraph)."""
    rng = _rng(seed)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["s", "then.weight", "then.bias"], ["t_out"], name="then_conv", pads=[1, 1, 1, 1])],
        "then", [], [output("t_out", 4)])
    else_graph = helper.make_graph(
        [helper.make_node("Conv", ["s", "else.weight"], ["e_mid"], name="else_conv", pads=[2, 2, 2, 2]),
         helper.make_node("Constant", [], ["else2.weight"], name="else2_const",
                          value=numpy_helper.from_array(arr(6, 6, 3, 3), "else2.weight")),
         helper.make_node("Conv", ["e_mid", "else2.weight"], ["e_out"], name="else_conv2", strides=[2, 2],
                          auto_pad="SAME_UPPER")],
        "else", [], [output("e_out", 4)],
        [numpy_helper.from_array(arr(6, 6, 5, 5), "else.weight")])
    nodes = [
        helper.make_node("Conv", ["x", "stem.weight"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    inits = [numpy_helper.from_array(arr(6, 3, 3, 3), "stem.weight"),
             numpy_helper.from_array(arr(6, 6, 3, 3), "then.weight"),
             numpy_helper.from_array(arr(6), "then.bias")]
    graph = helper.make_graph(
        nodes, "if_model",
        [helper.make_tensor_value_info("x", F32, [2, 3, 10, 10]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [output("y", 4)], inits)
    return make_model(graph)


def loop_model(seed: int = 0, trips: int = 3) -> onnx.ModelProto:
    """A Loop that applies ``body_conv`` (3×3, pads 1, weight and bias main-graph initializers) ``trips``
    times to the loop-carried ``state``, starting from ``x`` [1, 4, 6, 6]."""
    rng = _rng(seed)
    body = helper.make_graph(
        [helper.make_node("Conv", ["state_in", "body.weight", "body.bias"], ["state_conv"], name="body_conv",
                          pads=[1, 1, 1, 1]),
         helper.make_node("Tanh", ["state_conv"], ["state_out"], name="body_tanh"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", F32, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", F32, [1, 4, 6, 6])])
    inits = [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "keep_going"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "body.weight"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "body.bias")]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], name="loop", body=body)],
        "loop_model", [helper.make_tensor_value_info("x", F32, [1, 4, 6, 6])],
        [output("y", 4)], inits)
    return make_model(graph)


# --------------------------------------------------------------------------------------------------------------
# The torch zoo, exported


@functools.cache
def zoo_onnx(name: str, opset: int = OPSET, dynamic: bool = True) -> bytes:
    """The serialised ONNX export of a zoo model (``build(name)``), cached per (name, opset, dynamic)."""
    model, example = build(name)
    return export_onnx(model, example, opset=opset, dynamic=dynamic)


def zoo_input(name: str) -> np.ndarray:
    """The example input ``build(name)`` returns, as numpy."""
    return build(name)[1].numpy()


@functools.cache
def branchy_onnx() -> bytes:
    """The scripted ``BranchyNet`` exported to ONNX: its two branch convs sit in the If's subgraphs."""
    model, example = build("branchy")
    return export_onnx(torch.jit.script(model), example)


# --------------------------------------------------------------------------------------------------------------
# Files and archives


def save_external(proto: onnx.ModelProto, folder: Path, name: str = "model.onnx",
                  location: str = "weights.bin") -> Path:
    """Save ``proto`` into ``folder`` with every tensor in one external file ``location``; returns the .onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # save_as_external_data edits its argument
    path = folder / name
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def make_zip(path: Path, files: Iterable[tuple[str, bytes]] = (), symlinks: Iterable[tuple[str, str]] = (),
             fifos: Iterable[str] = ()) -> Path:
    """A zip with the given members (names written as given, unchecked), symlink entries (name → target) and
    entries whose Unix mode says "named pipe"."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files:
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
        for name in fifos:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFIFO | 0o644) << 16
            zf.writestr(info, b"")
    return path


def zip_folder(folder: Path, path: Path) -> Path:
    """Zip every file under ``folder`` (names relative to it)."""
    return make_zip(path, [(p.relative_to(folder).as_posix(), p.read_bytes())
                           for p in sorted(folder.rglob("*")) if p.is_file()])


def with_external_location(proto: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """A copy whose first initializer claims to live in the external file ``location``."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=location)
    return proto
