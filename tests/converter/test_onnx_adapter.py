"""The ONNX adapter: reading files and archives safely, finding convs, the rewrite pass, counting, saving and
running.

Every rewrite test checks a match (the listed convs are replaced by nodes named ``<layer>/<step>``), a
non-match (the others are untouched), ``onnx.checker.check_model(full_check=True)`` and numerical
equivalence in onnxruntime: at full rank the relative L2 error of every output is at most ``EXACT`` (float32
round-off of an SVD computed in float64).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from converter._errors import ConversionError, InvalidOptionsError, UnsupportedModelError
from converter.algebra._decompose import decompose, lower
from converter.formats import ConvLayer, FormatAdapter, Rewrite, sniff_formats
from converter.formats._onnx import (
    DecomposeConvsPass,
    OnnxAdapter,
    OnnxModel,
    RemoveUnusedInitializersPass,
    _io,
    _shapes,
    decompose_convs,
)
from converter.planning._plan import macs_of
from tests.utils import onnx_models as om
from tests.utils.models import build, export_torchscript

EXACT = 1e-5
FULL = 10**6
A = OnnxAdapter()


def _proto(model: OnnxModel) -> onnx.ModelProto:
    return ir.serde.serialize_model(model.model)


def _eligible(layer: ConvLayer) -> bool:
    return (layer.weight is not None and not layer.transposed and math.prod(layer.kernel) > 1
            and layer.groups != layer.in_channels)


def _rewrites(layers: list[ConvLayer], order: str = "dw-pw", lowering: str = "split", rank: int = FULL,
              skip: tuple[str, ...] = ()) -> list[Rewrite]:
    return [Rewrite(la, lower(decompose(la.weight, la.groups, order, rank), lowering))
            for la in layers if _eligible(la) and la.name not in skip]


def _node_names(proto: onnx.ModelProto) -> set[str]:
    names = set()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            names.add(n.name)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(proto.graph)
    return names


def _check_rewritten(proto: onnx.ModelProto, rewritten: list[Rewrite], kept: list[str]) -> None:
    """Match: every rewritten layer is gone and its steps are there. Non-match: the kept layers are there."""
    onnx.checker.check_model(proto, full_check=True)
    names = _node_names(proto)
    for rw in rewritten:
        assert rw.layer.name not in names
        for step in rw.lowered.steps:
            assert f"{rw.layer.name}/{step.name}" in names
    for name in kept:
        assert name in names


# --------------------------------------------------------------------------------------------------------------
# 1. The exactness grid

KERNELS = {"1x3": (1, 3), "3x1": (3, 1), "3x3": (3, 3), "5x5": (5, 5), "7x7": (7, 7), "k3": (3,), "k5": (5,),
           "3x3x3": (3, 3, 3)}
SPATIAL = {1: (17,), 2: (15, 16), 3: (7, 8, 9)}


@pytest.mark.parametrize("lowering", ["split", "fused"])
@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_full_rank_is_exact_over_the_grid(kernel: str, order: str, lowering: str) -> None:
    """60 convs per kernel (stride 1/2 × dilation 1/2 × explicit/SAME_UPPER/VALID × groups 1/2/4 × bias, less
    SAME_UPPER with dilation, which onnxruntime refuses), batch 2, in one graph; all but ``conv0`` are
    rewritten at full rank."""
    k = KERNELS[kernel]
    specs = om.grid_specs(k)
    proto = om.conv_grid_model(specs, spatial=SPATIAL[len(k)], seed=len(k))
    x = np.random.default_rng(1).standard_normal((2, 8, *SPATIAL[len(k)])).astype(np.float32)
    before = om.ort_run(proto, {"x": x})

    model = OnnxModel.from_proto(proto)
    layers = A.find_convs(model, {})
    assert [la.name for la in layers] == [f"conv{i}" for i in range(len(specs))]
    for la, spec, y in zip(layers, specs, before, strict=True):
        assert (la.kernel, la.groups, la.in_channels, la.out_channels) == (k, spec.groups, 8, 8)
        assert la.out_spatial == y.shape[2:], spec.label
    rewrites = _rewrites(layers, order, lowering, skip=("conv0",))
    assert len(rewrites) == len(specs) - 1
    A.apply(model, rewrites)
    out = _proto(model)
    _check_rewritten(out, rewrites, kept=["conv0"])
    after = om.ort_run(out, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])  # conv0 untouched
    for spec, y0, y1 in zip(specs, before, after, strict=True):
        assert y1.shape == y0.shape, spec.label
        assert om.rel_l2(y1, y0) <= EXACT, spec.label


@pytest.mark.parametrize("kernel", ["1x3", "7x7", "k5", "3x3x3"])
def test_spatial_sizes_from_attributes_match_onnxruntime(kernel: str) -> None:
    """When shape inference cannot size a conv's output (its weight comes from an op it does not know), the
    sizes computed from the conv's attributes agree with what onnxruntime produces."""
    k = KERNELS[kernel]
    specs = om.grid_specs(k)
    proto = om.conv_grid_model(specs, spatial=SPATIAL[len(k)])
    x = np.zeros((2, 8, *SPATIAL[len(k)]), np.float32)
    shapes = [y.shape[2:] for y in om.ort_run(proto, {"x": x})]
    makers = [helper.make_node("MakeWeight", [], [n.input[1]], domain="test.custom") for n in proto.graph.node]
    convs = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(makers + convs)  # w<i> is now the output of an op nobody knows
    proto.opset_import.append(helper.make_opsetid("test.custom", 1))
    del proto.graph.initializer[:]
    layers = A.find_convs(OnnxModel.from_proto(proto), {})
    assert all(la.weight is None and la.out_channels == 0 for la in layers)  # nothing known but the input
    assert [la.out_spatial for la in layers] == shapes


def test_fp16_weights_keep_their_dtype() -> None:
    specs = [om.ConvSpec((3, 3), padding="explicit"), om.ConvSpec((3, 3), stride=2, groups=2, bias=False)]
    proto = om.conv_grid_model(specs, spatial=(9, 9), dtype=TensorProto.FLOAT16)
    x = np.random.default_rng(0).standard_normal((2, 8, 9, 9)).astype(np.float16)
    model = OnnxModel.from_proto(proto)
    layers = A.find_convs(model, {})
    assert all(la.weight.dtype == np.float32 for la in layers)
    rewrites = _rewrites(layers)
    A.apply(model, rewrites)
    out = _proto(model)
    _check_rewritten(out, rewrites, kept=[])
    new = [t for t in out.graph.initializer if "/" in t.name]
    assert new and all(t.data_type == TensorProto.FLOAT16 for t in new)
    for y0, y1 in zip(om.ort_run(proto, {"x": x}), om.ort_run(out, {"x": x}), strict=True):
        assert om.rel_l2(y1, y0) <= 5e-3  # fp16 round-off of the factors and of the intermediate tensor


def test_ir_version_3_keeps_initializers_listed_as_inputs() -> None:
    """Before IR 4 every initializer must also be a graph input: new weights are listed, old ones unlisted."""
    specs = [om.ConvSpec((3, 3)), om.ConvSpec((1, 3), groups=2, bias=False)]
    proto = om.conv_grid_model(specs, spatial=(6, 6))
    proto.ir_version = 3
    proto.opset_import[0].version = 8
    proto.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)
    model = OnnxModel.from_proto(proto)
    assert [s.name for s in A.input_specs(model)] == ["x"]
    rewrites = _rewrites(A.find_convs(model, {}), skip=("conv0",))
    A.apply(model, rewrites)
    out = _proto(model)
    assert out.ir_version == 3
    _check_rewritten(out, rewrites, kept=["conv0"])
    assert {i.name for i in out.graph.input} == {"x"} | {t.name for t in out.graph.initializer}
    assert "w1" not in {i.name for i in out.graph.input}
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)
    for y0, y1 in zip(om.ort_run(proto, {"x": x}), om.ort_run(out, {"x": x}), strict=True):
        assert om.rel_l2(y1, y0) <= EXACT


# --------------------------------------------------------------------------------------------------------------
# 2. Where weights come from


@pytest.mark.parametrize("kind", ["initializer", "constant", "identity"])
def test_constant_weights_are_found_and_rewritten(kind: str) -> None:
    proto = om.weight_source_model(kind)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    model = OnnxModel.from_proto(proto)
    conv, head = A.find_convs(model, {})
    w = numpy_helper.to_array(next(t for t in _all_constant_tensors(proto) if t.name == "conv.weight"))
    np.testing.assert_array_equal(conv.weight, w)
    assert conv.note is None and (conv.in_spatial, conv.out_spatial) == ((8, 8), (8, 8))
    assert head.kernel == (1, 1) and not _eligible(head)
    before = A.stats(model, {})
    assert before.params == 6 * 4 * 9 + 6 + 3 * 6  # conv weight and bias, head weight, wherever they live
    rewrites = _rewrites([conv, head], "pw-dw", "split")
    A.apply(model, rewrites)
    added = sum(st.weight.size for st in rewrites[0].lowered.steps)
    assert A.stats(model, {}).params == before.params - conv.weight.size + added
    out = _proto(model)
    _check_rewritten(out, rewrites, kept=["head", "relu"])
    # the old weight, its Constant/Identity nodes and initializer are gone; the bias is kept
    assert not {"w_const", "id1", "id2"} & _node_names(out)
    assert "conv.weight" not in {t.name for t in out.graph.initializer}
    assert ("b_const" in _node_names(out)) == (kind == "constant")
    assert om.rel_l2(om.ort_run(out, {"x": x})[0], om.ort_run(proto, {"x": x})[0]) <= EXACT


def _all_constant_tensors(proto: onnx.ModelProto) -> list[TensorProto]:
    out = list(proto.graph.initializer)
    out += [a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return out


@pytest.mark.parametrize(("kind", "note"), [
    ("graph_input", "weight is a graph input (overridable), not a constant"),
    ("computed", "weight is computed at run time (by Mul node 'scale_w'), not a constant"),
])
def test_weights_that_are_not_constants_are_skipped_with_a_note(kind: str, note: str) -> None:
    model = OnnxModel.from_proto(om.weight_source_model(kind))
    conv, _ = A.find_convs(model, {})
    assert conv.weight is None and conv.note == note
    # the channels and kernel still come from the weight's declared/inferred shape
    assert (conv.kernel, conv.in_channels, conv.out_channels, conv.out_spatial) == ((3, 3), 4, 6, (8, 8))
    before = om.ort_run(om.weight_source_model(kind), {"x": np.ones((2, 4, 8, 8), np.float32)})
    assert not DecomposeConvsPass([])(model.model).modified
    forced = Rewrite(conv, lower(decompose(np.ones((6, 4, 3, 3), np.float32), 1, "dw-pw", 1)))
    with pytest.raises(ConversionError, match=f"layer 'conv': cannot be rewritten: {note[:20]}"):
        A.apply(model, [forced])
    after = om.ort_run(_proto(model), {"x": np.ones((2, 4, 8, 8), np.float32)})
    np.testing.assert_array_equal(after[0], before[0])


def test_input_specs_leave_out_initializers_that_are_inputs() -> None:
    specs = A.input_specs(OnnxModel.from_proto(om.weight_source_model("graph_input")))
    assert [(s.name, s.shape, s.dtype) for s in specs] == [("x", (2, 4, 8, 8), np.dtype(np.float32))]


# --------------------------------------------------------------------------------------------------------------
# 3. Subgraphs


def test_convs_in_if_branches_are_found_converted_and_exact() -> None:
    proto = om.if_model()
    model = OnnxModel.from_proto(proto)
    layers = A.find_convs(model, {})
    found = {la.name: (la.kernel, la.out_spatial) for la in layers}
    assert found == {"stem": ((3, 3), (10, 10)), "then_conv": ((3, 3), (10, 10)),
                     "else_conv": ((5, 5), (10, 10)), "else_conv2": ((3, 3), (5, 5))}
    assert all(la.weight is not None for la in layers)
    # MACs count every node once, both branches included
    assert A.stats(model, {}).macs == 2 * 100 * 6 * (3 * 9 + 6 * 9 + 6 * 25) + 2 * 25 * 6 * 6 * 9
    rewrites = _rewrites(layers, "dw-pw", "split", skip=("stem",))
    A.apply(model, rewrites)
    out = _proto(model)
    _check_rewritten(out, rewrites, kept=["stem", "branch"])
    # new weights live next to their conv (the else-branch), the old subgraph weights are gone
    else_graph = next(a.g for a in out.graph.node[-1].attribute if a.name == "else_branch")
    else_inits = {t.name for t in else_graph.initializer}
    assert "else.weight" not in else_inits and "else_conv/pw.weight" in else_inits
    assert "else2_const" not in _node_names(out)
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        assert om.rel_l2(om.ort_run(out, feeds)[0], om.ort_run(proto, feeds)[0]) <= EXACT


def test_conv_in_a_loop_body_is_found_converted_and_exact() -> None:
    proto = om.loop_model()
    model = OnnxModel.from_proto(proto)
    (layer,) = A.find_convs(model, {})
    assert (layer.name, layer.kernel, layer.in_channels, layer.out_channels) == ("body_conv", (3, 3), 4, 4)
    assert layer.out_spatial == (6, 6)  # the body's input declares its shape
    rewrites = _rewrites([layer], "pw-dw", "fused")
    A.apply(model, rewrites)
    out = _proto(model)
    _check_rewritten(out, rewrites, kept=["loop", "body_tanh"])
    assert "body.weight" not in {t.name for t in out.graph.initializer}
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    assert om.rel_l2(om.ort_run(out, {"x": x})[0], om.ort_run(proto, {"x": x})[0]) <= EXACT


def test_scripted_torch_branches_become_if_subgraphs_that_convert() -> None:
    proto = onnx.load_from_string(om.branchy_onnx())
    model = OnnxModel.from_proto(proto)
    layers = A.find_convs(model, {"x": (2, 3, 16, 16)})
    assert len(layers) == 3 and {la.kernel for la in layers} == {(3, 3), (5, 5)}
    assert all(la.out_spatial == (16, 16) for la in layers)
    rewrites = _rewrites(layers)
    A.apply(model, rewrites)
    out = _proto(model)
    _check_rewritten(out, rewrites, kept=[])
    x = build("branchy")[1].numpy()
    assert om.rel_l2(om.ort_run(out, {"x": x})[0], om.ort_run(proto, {"x": x})[0]) <= EXACT


# --------------------------------------------------------------------------------------------------------------
# 4. Opsets and symbolic dims


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
def test_torch_exports_at_each_opset_convert_exactly(opset: int, tmp_path: Path) -> None:
    data = om.zoo_onnx("resnet", opset)
    src = tmp_path / "resnet.onnx"
    src.write_bytes(data)
    model = A.load(src, tmp_path / "work")
    (spec,) = A.input_specs(model)
    assert spec.shape == ("batch", 3, "d2", "d3")
    assert all(la.out_spatial is None for la in A.find_convs(model, {}))  # symbolic: unknown
    layers = A.find_convs(model, {"x": (2, 3, 32, 32)})
    assert layers[0].out_spatial == (16, 16)
    rewrites = _rewrites(layers, "pw-dw", "split")
    assert len(rewrites) == 7  # the two 1×1 shortcut convs are not eligible
    A.apply(model, rewrites)
    dest = A.save(model, tmp_path / "out.onnx")
    assert dest == tmp_path / "out.onnx"
    out = onnx.load(dest)
    original = onnx.load_from_string(data)
    assert out.ir_version == original.ir_version
    assert [(o.domain, o.version) for o in out.opset_import] == [(o.domain, o.version) for o in original.opset_import]
    _check_rewritten(out, rewrites, kept=["/layer2/down/down.0/Conv"])
    x = np.random.default_rng(0).standard_normal((3, 3, 40, 36)).astype(np.float32)  # other shapes than given
    run, label = A.runner(dest, tmp_path / "work", threads=1)
    assert label == "onnxruntime-cpu"
    assert om.rel_l2(run({"x": x})[0], om.ort_run(data, {"x": x})[0]) <= EXACT


# --------------------------------------------------------------------------------------------------------------
# 5. External data and archives


def _external_zip(tmp_path: Path, name: str = "upload.bin") -> Path:
    folder = tmp_path / "src"
    om.save_external(onnx.load_from_string(om.zoo_onnx("vgg")), folder / "vgg", location="weights.bin")
    assert (folder / "vgg" / "weights.bin").stat().st_size > 100_000
    return om.zip_folder(folder, tmp_path / name)


def test_zip_with_external_data_loads_converts_and_saves_as_zip(tmp_path: Path) -> None:
    upload = _external_zip(tmp_path)  # named .bin: detection goes by content
    assert A.detect(upload)
    model = A.load(upload, tmp_path / "work")
    assert model.external_data
    layers = A.find_convs(model, {"x": (2, 3, 32, 32)})
    torch_model = build("vgg")[0]
    np.testing.assert_array_equal(layers[0].weight, torch_model.features[0].weight.detach().numpy())
    rewrites = _rewrites(layers, "dw-pw", "fused")
    A.apply(model, rewrites)
    (tmp_path / "out").mkdir()
    dest = A.save(model, tmp_path / "out" / "model.onnx")
    assert dest == tmp_path / "out" / "model.zip"
    assert sorted(os.listdir(tmp_path / "out")) == ["model.zip"]  # no temporary files left
    with zipfile.ZipFile(dest) as zf:
        assert sorted(zf.namelist()) == ["model.onnx", "model.onnx.data"]
        zf.extractall(tmp_path / "check")
    onnx.checker.check_model(str(tmp_path / "check" / "model.onnx"), full_check=True)
    saved = onnx.load(tmp_path / "check" / "model.onnx", load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in saved.graph.initializer)
    _check_rewritten(onnx.load(tmp_path / "check" / "model.onnx"), rewrites, kept=[])

    again = A.load(dest, tmp_path / "work2")
    assert again.external_data and len(A.find_convs(again, {})) == len(layers) * 2
    x = om.zoo_input("vgg")
    run_new, _ = A.runner(dest, tmp_path / "work3", threads=1)
    run_old, _ = A.runner(upload, tmp_path / "work3", threads=None)
    assert om.rel_l2(run_new({"x": x})[0], run_old({"x": x})[0]) <= EXACT


def _vgg_files() -> list[tuple[str, bytes]]:
    return [("model.onnx", om.zoo_onnx("vgg"))]


@pytest.mark.parametrize(("files", "symlinks", "message"), [
    ([("../evil.onnx", b"\x08\x08")], [], "points outside the archive"),
    ([("model.onnx", b"\x08\x08"), ("sub/../../evil.bin", b"x")], [], "points outside the archive"),
    ([("/abs/model.onnx", b"\x08\x08")], [], "absolute path"),
    ([("C:\\model.onnx", b"\x08\x08")], [], "absolute path"),
    (_vgg_files(), [("weights.bin", "/etc/passwd")], "symbolic link"),
    (_vgg_files(), [], "regular"),  # plus a named-pipe entry
    ([*_vgg_files(), ("b.onnx", om.zoo_onnx("vgg"))], [], "more than one .onnx"),
    ([("weights.bin", b"x")], [], "contains no .onnx"),
    ([*_vgg_files(), ("dup.bin", b"1"), ("DUP.bin", b"2")], [], "two members named"),
])
def test_unsafe_or_wrong_archives_are_refused(tmp_path: Path, files, symlinks, message: str) -> None:
    upload = om.make_zip(tmp_path / "upload.zip", files, symlinks, fifos=["pipe"] if message == "regular" else [])
    work = tmp_path / "work"
    with pytest.raises(UnsupportedModelError, match=message):
        A.load(upload, work)
    assert not (tmp_path / "evil.onnx").exists() and not (tmp_path / "evil.bin").exists()
    with pytest.raises(UnsupportedModelError, match=message):
        A.runner(upload, work, threads=1)


def test_torchscript_archives_are_not_detected(tmp_path: Path) -> None:
    model, example = build("vgg")
    path = export_torchscript(model, example, tmp_path / "vgg.pt")
    assert "onnx" in sniff_formats(path.read_bytes()[:4096])  # a cheap pre-filter may say yes
    assert not A.detect(path)


@pytest.mark.parametrize(("limit", "value"), [("MAX_UNPACKED_BYTES", 100_000), ("MAX_ZIP_MEMBERS", 1)])
def test_archive_size_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, value: int) -> None:
    upload = _external_zip(tmp_path, "upload.zip")  # 2 members, > 100 kB
    monkeypatch.setattr(f"converter.formats._archive.{limit}", value)
    with pytest.raises(UnsupportedModelError, match="more than"):
        A.load(upload, tmp_path / "work")


@pytest.mark.parametrize(("location", "message"), [
    ("../x.bin", "outside the model's folder"),
    ("/etc/passwd", "outside the model's folder"),
    ("sub/../../x.bin", "outside the model's folder"),
    ("missing.bin", "not in the zip archive"),
    ("short.bin", "beyond the end of the file"),
])
def test_external_data_must_stay_in_the_archive(tmp_path: Path, location: str, message: str) -> None:
    proto = om.with_external_location(onnx.load_from_string(om.zoo_onnx("vgg")), location)
    (tmp_path / "x.bin").write_bytes(b"\0" * 10_000)
    upload = om.make_zip(tmp_path / "upload.zip", [("model.onnx", proto.SerializeToString()), ("short.bin", b"12")])
    with pytest.raises(UnsupportedModelError, match=message) as e:
        A.load(upload, tmp_path / "work")
    assert location in str(e.value) and "features.0.weight" in str(e.value)


def test_bare_onnx_with_missing_external_data_asks_for_a_zip(tmp_path: Path) -> None:
    onnx_path = om.save_external(onnx.load_from_string(om.zoo_onnx("vgg")), tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    assert A.detect(onnx_path)
    with pytest.raises(UnsupportedModelError, match=r"upload the \.onnx and its data files together as one \.zip"):
        A.load(onnx_path, tmp_path / "work")


def test_bare_onnx_with_its_data_beside_it_loads_and_saves_as_zip(tmp_path: Path) -> None:
    onnx_path = om.save_external(onnx.load_from_string(om.zoo_onnx("vgg")), tmp_path / "m")
    model = A.load(onnx_path, tmp_path / "work")
    assert model.external_data
    assert A.save(model, tmp_path / "out.onnx") == tmp_path / "out.zip"


def test_models_too_big_for_one_protobuf_are_saved_as_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vgg.onnx"
    path.write_bytes(om.zoo_onnx("vgg"))
    model = A.load(path, tmp_path / "work")
    assert not model.external_data
    assert A.save(model, tmp_path / "small.onnx") == tmp_path / "small.onnx"
    monkeypatch.setattr(_io, "SINGLE_FILE_LIMIT", 100_000)  # vgg holds ~150 kB of weights
    dest = A.save(model, tmp_path / "big.onnx")
    assert dest == tmp_path / "big.zip"
    run, _ = A.runner(dest, tmp_path / "work", threads=1)
    x = om.zoo_input("vgg")
    np.testing.assert_array_equal(run({"x": x})[0], om.ort_run(om.zoo_onnx("vgg"), {"x": x})[0])


def test_external_data_through_a_symlink_is_refused(tmp_path: Path) -> None:
    onnx_path = om.save_external(onnx.load_from_string(om.zoo_onnx("vgg")), tmp_path / "m")
    real = tmp_path / "elsewhere.bin"
    (tmp_path / "m" / "weights.bin").rename(real)
    (tmp_path / "m" / "weights.bin").symlink_to(real)
    with pytest.raises(UnsupportedModelError, match="symbolic link"):
        A.load(onnx_path, tmp_path / "work")


# --------------------------------------------------------------------------------------------------------------
# 6. Bad input


def _bad_files() -> dict[str, bytes]:
    data = om.zoo_onnx("vgg")
    no_opset = onnx.load_from_string(data)
    no_opset.ClearField("opset_import")  # = a file cut right after its graph
    return {
        "empty": b"",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "random_with_onnx_tag": b"\x08\x07" + np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated": data[: len(data) // 2],
        "cut_after_graph": no_opset.SerializeToString(),
        "text": b"hello, this is not a model\n",
        "pickle": b"\x80\x04\x95" + b"\0" * 64,
    }


@pytest.mark.parametrize("kind", list(_bad_files()))
def test_bad_files_are_not_detected_and_refused_with_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_bad_files()[kind])
    assert not A.detect(path)
    with pytest.raises(UnsupportedModelError) as e:
        A.load(path, tmp_path / "work")
    message = str(e.value)
    assert "\n" not in message and len(message) < 200
    assert "DecodeError" not in message and "protobuf" not in message.lower()
    with pytest.raises(UnsupportedModelError):
        A.runner(path, tmp_path / "work", threads=1)


def test_sniff_is_a_cheap_prefilter() -> None:
    assert sniff_formats(om.zoo_onnx("vgg")[:4096]) == ["onnx"]
    assert sniff_formats(om.make_model(helper.make_graph([], "g", [], [])).SerializeToString()[:64]) == ["onnx"]
    for opset in (11, 21):  # every exporter path, cut at the first few bytes
        assert sniff_formats(om.zoo_onnx("resnet", opset=opset)[:16]) == ["onnx"]
    assert "onnx" in sniff_formats(b"PK\x03\x04" + b"\0" * 60)  # a zip: any zip-based format may match
    assert sniff_formats(b"") == []
    assert sniff_formats(b"\x80\x04\x95") == []
    assert sniff_formats(b"hello") == []
    assert sniff_formats(b"\x13\x37" * 500) == []
    assert not A.detect(Path("/nonexistent/model.onnx"))


def test_the_adapter_implements_the_protocol() -> None:
    assert isinstance(A, FormatAdapter)
    assert (A.name, A.suffix) == ("onnx", ".onnx")


# --------------------------------------------------------------------------------------------------------------
# 7. find_convs and stats on the zoo, against torch


def _torch_convs(name: str) -> list[dict]:
    """Every conv of a zoo model in execution order, with its input/output shapes and BN folding."""
    model, example = build(name)
    convs, bns = [], {}
    hooks = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d):
            def hook(m, inp, out, mod_name=mod_name):
                convs.append({"name": mod_name, "module": m, "in": tuple(inp[0].shape), "out": tuple(out.shape),
                              "output": out})
            hooks.append(mod.register_forward_hook(hook))
        elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            hooks.append(mod.register_forward_hook(lambda m, inp, out: bns.__setitem__(id(inp[0]), m)))
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    for c in convs:
        c["bn"] = bns.get(id(c.pop("output")))
    return convs


def _scope(model: nn.Module, path: str) -> str:
    """The exporter's scope name of a module: its path relative to the nearest non-Sequential ancestor."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if not isinstance(model.get_submodule(".".join(parts[:i])), nn.Sequential):
            return ".".join(parts[i:])
    return path


@pytest.mark.parametrize("name", ["vgg", "resnet", "mobilenet", "unet", "audio", "video"])
def test_find_convs_matches_torch(name: str) -> None:
    data = om.zoo_onnx(name)
    shape = om.zoo_input(name).shape
    layers = A.find_convs(OnnxModel.from_proto(onnx.load_from_string(data)), {"x": shape})
    expected = _torch_convs(name)
    torch_model = build(name)[0]
    assert len(layers) == len(expected)
    for la, t in zip(layers, expected, strict=True):
        m = t["module"]
        assert la.name.endswith(f"/{_scope(torch_model, t['name'])}/{la.op}")
        assert la.op == ("ConvTranspose" if m.transposed else "Conv") and la.transposed == m.transposed
        assert (la.kernel, la.groups) == (tuple(m.kernel_size), m.groups)
        assert (la.in_channels, la.out_channels) == (m.in_channels, m.out_channels)
        assert (la.in_spatial, la.out_spatial) == (t["in"][2:], t["out"][2:])
        w = m.weight.detach().numpy()
        if m.transposed:  # [in, out/g, k] regrouped to [out, in/g, k]
            w = np.swapaxes(w, 0, 1)
        if t["bn"] is not None:
            bn = t["bn"]
            scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
            w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        np.testing.assert_allclose(la.weight, w, rtol=1e-5, atol=1e-6)
    assert len({la.name for la in layers}) == len(layers)


@pytest.mark.parametrize("name", ["vgg", "resnet", "mobilenet", "unet", "audio", "video"])
def test_params_equal_torch_after_bn_folding(name: str) -> None:
    proto = onnx.load_from_string(om.zoo_onnx(name))
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # all folded into convs
    model = build(name)[0]
    expected = sum(p.numel() for p in model.parameters())
    for c in _torch_convs(name):
        if c["bn"] is not None:  # gamma, beta, mean, var -> the conv's bias
            bn = c["bn"]
            expected -= 2 * bn.num_features  # gamma and beta were parameters; the statistics were buffers
            expected += 0 if c["module"].bias is not None else bn.num_features
    stats = A.stats(OnnxModel.from_proto(proto), {"x": om.zoo_input(name).shape})
    assert stats.params == expected
    assert stats.macs is not None and stats.macs > 0


def test_vgg_macs_by_hand() -> None:
    model = OnnxModel.from_proto(onnx.load_from_string(om.zoo_onnx("vgg")))
    b = 2
    convs = [b * 16 * 32 * 32 * 3 * 9, b * 16 * 32 * 32 * 16 * 9, b * 32 * 16 * 16 * 16 * 9,
             b * 32 * 16 * 16 * 32 * 9]
    linear = b * 10 * 2048
    assert A.stats(model, {"x": (b, 3, 32, 32)}).macs == sum(convs) + linear
    assert A.stats(model, {"x": (1, 3, 32, 32)}).macs == (sum(convs) + linear) // b
    assert A.stats(model, {}).macs is None  # symbolic dims and no shapes given
    layers = A.find_convs(model, {"x": (1, 3, 32, 32)})
    assert [macs_of(la, None, None) for la in layers] == [c // b for c in convs]


def test_input_shapes_are_checked() -> None:
    model = OnnxModel.from_proto(onnx.load_from_string(om.zoo_onnx("vgg")))
    with pytest.raises(InvalidOptionsError, match="not an input"):
        A.find_convs(model, {"image": (1, 3, 32, 32)})
    with pytest.raises(InvalidOptionsError, match="4 dimensions"):
        A.find_convs(model, {"x": (3, 32, 32)})
    with pytest.raises(InvalidOptionsError, match="4 dimensions"):
        A.stats(model, {"x": (1, 3, 32, 32, 1)})


def test_given_shapes_override_fixed_dims() -> None:
    """A model exported with a fixed batch of 2 can still be sized per sample (as the pipeline does)."""
    model, example = build("vgg")
    fixed = OnnxModel.from_proto(onnx.load_from_string(om.export_onnx(model, example, dynamic=False)))
    assert A.input_specs(fixed)[0].shape == (2, 3, 32, 32)
    dynamic = OnnxModel.from_proto(onnx.load_from_string(om.zoo_onnx("vgg")))
    assert A.stats(fixed, {}).macs == A.stats(dynamic, {"x": (2, 3, 32, 32)}).macs
    layers = A.find_convs(fixed, {"x": (1, 3, 32, 32)})
    assert [la.out_spatial for la in layers] == [(32, 32), (32, 32), (16, 16), (16, 16)]
    # the exporter baked the batch of 2 into the Flatten/Reshape before the classifier, so only the convs halve
    conv_macs = sum(macs_of(la, None, None) for la in layers)
    assert A.stats(fixed, {"x": (1, 3, 32, 32)}).macs == conv_macs + 2 * 10 * 2048


def test_unnamed_and_duplicate_convs_get_unique_names() -> None:
    specs = [om.ConvSpec((3, 3))] * 4
    reference = om.conv_grid_model(specs, spatial=(6, 6))
    proto = onnx.ModelProto.FromString(reference.SerializeToString())
    proto.graph.node[0].name = "c"
    proto.graph.node[1].name = "c"  # onnxruntime refuses the model until one of them is renamed
    proto.graph.node[2].name = ""
    proto.graph.node[3].name = "Conv_2"  # the name the unnamed one would get
    model = OnnxModel.from_proto(proto)
    layers = A.find_convs(model, {})
    assert [la.name for la in layers] == ["c", "c_2", "Conv_2_2", "Conv_2"]
    rewrites = _rewrites(layers, skip=("Conv_2",))
    A.apply(model, rewrites)
    out = _proto(model)
    _check_rewritten(out, rewrites, kept=["Conv_2"])
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)
    for y0, y1 in zip(om.ort_run(reference, {"x": x}), om.ort_run(out, {"x": x}), strict=True):
        assert om.rel_l2(y1, y0) <= EXACT


def test_grouped_conv_transpose_weight_is_given_in_conv_layout() -> None:
    w = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)  # in 4, out 3·2, groups 2
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", group=2, strides=[2, 2])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [om.output("y", 4)], [numpy_helper.from_array(w, "w")])
    (layer,) = A.find_convs(OnnxModel.from_proto(om.make_model(graph)), {})
    assert (layer.transposed, layer.in_channels, layer.out_channels, layer.groups) == (True, 4, 6, 2)
    assert layer.out_spatial == (10, 10) and layer.weight.shape == (6, 2, 2, 2)
    # output channel g·3 + j, input channel g·2 + i  <->  W[g·2 + i, j]
    for g, i, j in np.ndindex(2, 2, 3):
        np.testing.assert_array_equal(layer.weight[g * 3 + j, i], w[g * 2 + i, j])
    # converted as a ConvTranspose (its spatial step) and a Conv (tests/converter/test_transposed.py: exactness)
    out = _proto(A.apply(OnnxModel.from_proto(om.make_model(graph)),
                         [Rewrite(layer, lower(decompose(layer.weight, 2, "dw-pw", 1)))]))
    assert [n.op_type for n in out.graph.node] == ["ConvTranspose", "Conv"]


# --------------------------------------------------------------------------------------------------------------
# 8. A real model at low rank, the passes' "modified" flag, failures


@pytest.mark.parametrize(("name", "order"), [("resnet", "dw-pw"), ("mobilenet", "pw-dw"), ("audio", "dw-pw")])
def test_low_rank_on_a_zoo_model(name: str, order: str) -> None:
    data = om.zoo_onnx(name)
    x = om.zoo_input(name)
    shapes = {"x": x.shape}
    model = OnnxModel.from_proto(onnx.load_from_string(data))
    before = A.stats(model, shapes)
    layers = A.find_convs(model, shapes)
    rewrites = _rewrites(layers, order, "split", rank=2)
    result = decompose_convs(model.model, rewrites)
    assert result.modified
    out = _proto(model)
    kept = [la.name for la in layers if not _eligible(la)]
    _check_rewritten(out, rewrites, kept=kept)
    assert [o.name for o in out.graph.output] == ["y"]
    y0, y1 = om.ort_run(data, {"x": x})[0], om.ort_run(out, {"x": x})[0]
    assert y1.shape == y0.shape and np.isfinite(y1).all()
    assert 0 < om.rel_l2(y1, y0) < 2  # an approximation, not the original, but in range
    # the counts move by exactly what was removed and added
    after = A.stats(model, shapes)
    removed = sum(rw.layer.weight.size for rw in rewrites)
    added = sum(s.weight.size for rw in rewrites for s in rw.lowered.steps)
    assert after.params == before.params - removed + added
    batch = x.shape[0]
    delta = sum(macs_of(rw.layer, order, 2) - macs_of(rw.layer, None, None) for rw in rewrites)
    assert after.macs == before.macs + batch * delta


def test_passes_report_modified_only_when_they_change_the_model() -> None:
    model = OnnxModel.from_proto(onnx.load_from_string(om.zoo_onnx("resnet")))
    before = _proto(model).SerializeToString()
    assert not DecomposeConvsPass([])(model.model).modified
    assert not decompose_convs(model.model, []).modified
    A.apply(model, [])
    assert not RemoveUnusedInitializersPass()(model.model).modified
    assert _proto(model).SerializeToString() == before


def test_bad_rewrites_fail_before_touching_the_model() -> None:
    model = OnnxModel.from_proto(onnx.load_from_string(om.zoo_onnx("resnet")))
    before = _proto(model).SerializeToString()
    layers = A.find_convs(model, {})
    good = _rewrites(layers)
    wrong = Rewrite(layers[1], good[-1].lowered)  # another layer's factors
    with pytest.raises(ConversionError, match=r"layer '/layer1/conv1/Conv'"):
        A.apply(model, [good[0], wrong])
    gone = Rewrite(ConvLayer("nope", "Conv", (3, 3), 1, 1, 1, None), good[0].lowered)
    with pytest.raises(ConversionError, match="no such convolution"):
        A.apply(model, [gone])
    with pytest.raises(ConversionError, match="listed twice"):
        A.apply(model, [good[0], good[0]])
    assert _proto(model).SerializeToString() == before


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = OnnxModel.from_proto(onnx.load_from_string(om.zoo_onnx("vgg")))
    dest = tmp_path / "out.onnx"
    assert A.save(model, dest) == dest
    original = dest.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    # Fail half-way: the header bytes are already written when the first tensor's data is asked for.
    monkeypatch.setattr(ir.Tensor, "tobytes", boom)
    with pytest.raises(ConversionError, match="saving the model failed: disk full"):
        A.save(model, dest)
    monkeypatch.undo()
    assert dest.read_bytes() == original  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]
    with pytest.raises(ConversionError, match="saving the model failed"):
        A.save(model, tmp_path / "missing" / "out.onnx")


def test_runner_options(tmp_path: Path) -> None:
    path = tmp_path / "vgg.onnx"
    path.write_bytes(om.zoo_onnx("vgg"))
    with pytest.raises(InvalidOptionsError, match="device"):
        A.runner(path, tmp_path, threads=1, device="tpu")
    run, label = A.runner(path, tmp_path, threads=2)
    assert label == "onnxruntime-cpu"
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # asked for, not there: refused, as timing is
        with pytest.raises(InvalidOptionsError, match="no CUDA provider"):
            A.runner(path, tmp_path, threads=1, device="cuda")
    (y,) = run({"x": om.zoo_input("vgg")})
    assert y.shape == (2, 10)


@pytest.mark.parametrize(("name", "lowering"), [("resnet", "split"), ("mobilenet", "fused"), ("audio", "split")])
def test_shapes_after_a_rewrite_are_extended_not_reinferred(name: str, lowering: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """stats() after apply() derives the new nodes' shapes from the cached table; the MACs equal a full
    inference on the rewritten model."""
    x = om.zoo_input(name)
    shapes = {"x": x.shape}
    model = OnnxModel.from_proto(onnx.load_from_string(om.zoo_onnx(name)))
    layers = A.find_convs(model, shapes)
    A.apply(model, _rewrites(layers, "dw-pw", lowering, rank=2))
    calls = []
    real = _shapes.shape_table
    monkeypatch.setattr(_shapes, "shape_table", lambda *a: calls.append(1) or real(*a))
    extended = A.stats(model, shapes)
    assert calls == []  # no second inference
    fresh = A.stats(OnnxModel(model.model), shapes)  # a wrapper without the cache: full inference
    assert calls == [1]
    assert extended == fresh and extended.macs is not None
