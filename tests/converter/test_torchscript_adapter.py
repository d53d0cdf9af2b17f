"""The TorchScript adapter against real ``torch.jit.script``/``torch.jit.trace`` files.

Every rewrite test checks a match (the rewritten conv), a non-match (a conv left alone keeps its weight) and
numerical equivalence: the converted file, loaded with plain ``torch.jit.load``, against the original file,
loaded the same way, within ``TOL`` relative L2 at full rank (the decomposition is then exact to round-off).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from converter._errors import ConversionError, InvalidOptionsError, UnsupportedModelError
from converter.algebra._decompose import decompose, lower
from converter.formats import ConvLayer, FormatAdapter, Rewrite, adapter_for, detect_format, sniff_formats
from converter.formats._torchscript import TorchScriptAdapter, TorchScriptModel
from tests.utils.models import ZOO, build, export_torchscript
from tests.utils.ts_models import (
    CONV_GRID,
    ConvCase,
    DynamicWeight,
    LoopNet,
    SharedConv,
    TiedConvs,
    TwoInOut,
    branchy_both_ways,
    rel_l2,
    single_conv,
    takes_branch_a,
)

#: Relative L2 between original and converted outputs at full rank (float32 round-off is ~1e-7).
TOL = 1e-5
FULL = 10**6
COMBOS = list(itertools.product(("dw-pw", "pw-dw"), ("split", "fused")))

ts = TorchScriptAdapter()


def _export(model: nn.Module, x: torch.Tensor, path: Path, mode: str = "script") -> Path:
    return export_torchscript(model, x, path, mode=mode)


def _plain(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path), map_location="cpu").eval()


def _rewrite(layer: ConvLayer, order: str = "dw-pw", lowering: str = "split", rank: int = FULL) -> Rewrite:
    assert layer.weight is not None
    return Rewrite(layer, lower(decompose(layer.weight, layer.groups, order, rank), lowering))


def _eligible(layer: ConvLayer) -> bool:
    return not layer.transposed and layer.weight is not None and int(np.prod(layer.kernel)) > 1


def _by_name(layers: list[ConvLayer]) -> dict[str, ConvLayer]:
    return {layer.name: layer for layer in layers}


# --- the interface, detection, loading ------------------------------------------------------------------------


def test_registered_and_implements_the_interface() -> None:
    assert isinstance(ts, FormatAdapter)
    assert isinstance(adapter_for("torchscript"), TorchScriptAdapter)
    assert (ts.name, ts.suffix) == ("torchscript", ".pt")


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_detect_format_picks_torchscript(tmp_path: Path, mode: str) -> None:
    model, x = build("vgg")
    assert detect_format(_export(model, x, tmp_path / "m.pt", mode)).name == "torchscript"


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_detect_and_sniff_accept_torchscript(tmp_path: Path, mode: str) -> None:
    model, x = build("vgg")
    path = _export(model, x, tmp_path / "model.bin", mode)  # the content decides, not the suffix
    assert "torchscript" in sniff_formats(path.read_bytes()[:4096])
    assert ts.detect(path)


def _bad_file(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        model, x = build("vgg")
        data = _export(model, x, tmp_path / "whole.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "state_dict":
        torch.save(build("vgg")[0].state_dict(), path)
    elif kind == "pickled_module":
        torch.save(nn.Conv2d(1, 1, 1), path)
    elif kind == "corrupt_code":
        # The torch.jit.save layout, but the serialised code is garbage.
        model, x = build("vgg")
        src = _export(model, x, tmp_path / "whole.pt")
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if "/code/" in info.filename and info.filename.endswith(".py"):
                    data = b"def forward(self, x:\n    return ((("
                zout.writestr(info, data)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "state_dict", "pickled_module"])
def test_detect_rejects_what_is_not_torchscript(tmp_path: Path, kind: str) -> None:
    path = _bad_file(kind, tmp_path)
    assert not ts.detect(path)
    with pytest.raises(UnsupportedModelError) as info:
        ts.load(path, tmp_path)
    message = str(info.value)
    assert message.startswith("TorchScript file could not be loaded: ")
    assert "\n" not in message and len(message) < 300


def test_detect_never_raises_on_a_missing_file(tmp_path: Path) -> None:
    assert not ts.detect(tmp_path / "nope.pt")
    assert not sniff_formats(b"")


def test_load_rejects_corrupt_code_with_a_readable_message(tmp_path: Path) -> None:
    path = _bad_file("corrupt_code", tmp_path)
    assert ts.detect(path)  # the layout is right; only loading finds the problem
    with pytest.raises(UnsupportedModelError, match=r"^TorchScript file could not be loaded: \S") as info:
        ts.load(path, tmp_path)
    assert "\n" not in str(info.value)


def test_input_specs_follow_the_forward_signature(tmp_path: Path) -> None:
    model = TwoInOut().eval()
    path = tmp_path / "two.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    specs = ts.input_specs(ts.load(path, tmp_path))
    assert [(s.name, s.shape, s.dtype) for s in specs] == [
        ("image", None, np.dtype(np.float32)), ("signal", None, np.dtype(np.float32))]


def test_input_specs_use_shapes_and_dtypes_the_graph_records(tmp_path: Path) -> None:
    model, x = build("vgg")
    m = ts.load(_export(model, x, tmp_path / "vgg.pt", "trace"), tmp_path)
    # Files written by torch.jit.save record none here; set one to exercise the case where the graph does.
    value = list(m.module.graph.inputs())[1]
    value.setType(torch._C.TensorType.create_from_tensor(torch.zeros(1, 3, 32, 32, dtype=torch.float64)))
    (spec,) = ts.input_specs(m)
    assert (spec.name, spec.shape, spec.dtype) == ("x", (1, 3, 32, 32), np.dtype(np.float64))


# --- exactness of single convs ----------------------------------------------------------------------------------

CASES = CONV_GRID


@pytest.mark.parametrize("mode", ["script", "trace"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_single_conv_full_rank_is_exact(tmp_path: Path, case: ConvCase, mode: str) -> None:
    model, x = single_conv(case)
    src = _export(model, x, tmp_path / "orig.pt", mode)
    ref = _plain(src)(x)
    shapes = {"x": tuple(x.shape)}
    m = ts.load(src, tmp_path)
    layers = ts.find_convs(m, shapes)
    assert [layer.name for layer in layers] == ["conv", "head"]
    conv, head = layers

    # The match: everything the planner reads about the conv.
    r = case.rank
    if mode == "script":
        assert conv.op == f"aten::conv{r}d"
    else:
        assert conv.op == ("aten::_convolution_mode" if isinstance(case.padding, str) else "aten::_convolution")
    assert (conv.kernel, conv.groups, conv.in_channels, conv.out_channels, conv.transposed) == (
        case.kernel, case.groups, case.cin, case.cout, False)
    np.testing.assert_array_equal(conv.weight, model.conv.weight.detach().numpy())
    assert conv.in_spatial == case.spatial
    assert conv.out_spatial == tuple(model.conv(x).shape[2:])
    assert head.kernel == (1,) * r and head.out_spatial == conv.out_spatial

    for order, lowering in COMBOS:
        rw = _rewrite(conv, order, lowering)
        new = ts.apply(ts.load(src, tmp_path), [rw])  # apply edits in place: a fresh model per combination
        out = ts.save(new, tmp_path / f"{order}-{lowering}.pt")
        got = _plain(out)(x)
        assert got.shape == ref.shape
        assert rel_l2(got, ref) <= TOL, (order, lowering)
        after = ts.find_convs(new, shapes)
        # The conv became the lowered convs; the head (the non-match) is untouched.
        assert len(after) == len(rw.lowered.steps) + 1
        assert after[-1].name == "head"
        np.testing.assert_array_equal(after[-1].weight, head.weight)
        assert all(layer.op == f"aten::conv{r}d" for layer in after[:-1])


# --- the zoo --------------------------------------------------------------------------------------------------


def _eager_convs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple, tuple]]:
    """(name, module, input spatial, output spatial) of every conv module, in call order."""
    calls: list[tuple[str, nn.Module, tuple, tuple]] = []
    hooks = [
        mod.register_forward_hook(
            lambda mod, args, out, name=name: calls.append((name, mod, tuple(args[0].shape[2:]), tuple(out.shape[2:]))))
        for name, mod in model.named_modules()
        if isinstance(mod, nn.modules.conv._ConvNd)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


EXPECTED_NAMES = {
    "vgg": ["features.0", "features.2", "features.5", "features.7"],
    "resnet": ["stem.0", "layer1.conv1", "layer1.conv2", "layer2.down.0", "layer2.conv1", "layer2.conv2",
               "layer3.down.0", "layer3.conv1", "layer3.conv2"],
    "mobilenet": ["stem.0", "dw1.0", "pw1.0", "grouped.0", "conv5.0"],
    "unet": ["enc1.0", "enc2.1.0", "up", "dec.0", "out"],
    "audio": ["net.0", "net.3", "net.6", "net.8"],
    "video": ["net.0", "net.2"],
}


@pytest.mark.parametrize("mode", ["script", "trace"])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo(tmp_path: Path, name: str, mode: str) -> None:
    model, x = build(name)
    src = _export(model, x, tmp_path / "orig.pt", mode)
    ref = _plain(src)(x)
    shapes = {"x": tuple(x.shape)}
    m = ts.load(src, tmp_path)
    layers = ts.find_convs(m, shapes)

    eager = _eager_convs(model, x)
    assert [layer.name for layer in layers] == [n for n, *_ in eager] == EXPECTED_NAMES[name]
    for layer, (_, mod, in_sp, out_sp) in zip(layers, eager, strict=True):
        transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
        assert layer.transposed == transposed, layer.name
        assert (layer.kernel, layer.groups) == (tuple(mod.kernel_size), mod.groups), layer.name
        assert (layer.in_channels, layer.out_channels) == (mod.in_channels, mod.out_channels), layer.name
        assert (layer.in_spatial, layer.out_spatial) == (in_sp, out_sp), layer.name
        assert layer.weight is not None and layer.weight.dtype == np.float32
    if name == "unet":
        assert _by_name(layers)["up"].transposed
    if name in ("resnet", "mobilenet", "unet"):
        assert any(layer.kernel == (1, 1) for layer in layers)  # 1×1 convs are found (and left alone below)

    eligible = [layer for layer in layers if _eligible(layer)]
    kept = [layer for layer in layers if not _eligible(layer)]
    assert eligible
    rewrites = [_rewrite(layer, *COMBOS[i % len(COMBOS)]) for i, layer in enumerate(eligible)]
    new = ts.apply(m, rewrites)
    out = ts.save(new, tmp_path / "full.pt")
    assert rel_l2(_plain(out)(x), ref) <= TOL

    after = _by_name(ts.find_convs(new, shapes))
    for layer in kept:  # the non-matches: same node, same weight
        assert after[layer.name].op == layer.op
        np.testing.assert_array_equal(after[layer.name].weight, layer.weight)
    assert len(after) == len(kept) + sum(len(rw.lowered.steps) for rw in rewrites)

    low = ts.apply(ts.load(src, tmp_path), [_rewrite(layer, "dw-pw", "split", rank=1) for layer in eligible])
    got = _plain(ts.save(low, tmp_path / "low.pt"))(x)
    assert got.shape == ref.shape and bool(torch.isfinite(got).all())
    assert rel_l2(got, ref) > 1e-3  # rank 1 really changed the model


# --- control flow, shared and dynamic convs ---------------------------------------------------------------------


def test_branchy_convs_inside_if_are_found_and_rewritten(tmp_path: Path) -> None:
    model, xa, xb = branchy_both_ways()
    assert takes_branch_a(model, xa) and not takes_branch_a(model, xb)
    src = _export(model, xa, tmp_path / "branchy.pt", "script")
    orig = _plain(src)
    m = ts.load(src, tmp_path)
    assert all(layer.in_spatial is None for layer in ts.find_convs(m, {}))

    layers = _by_name(ts.find_convs(m, {"x": tuple(xb.shape)}))
    assert list(layers) == ["stem", "a", "b"]
    assert (layers["a"].kernel, layers["b"].kernel) == ((3, 3), (5, 5))
    # The probe runs on zeros, which take branch b: a's sizes are unknown, not guessed.
    assert layers["b"].in_spatial == layers["b"].out_spatial == (16, 16)
    assert layers["a"].in_spatial is None and layers["a"].out_spatial is None

    new = ts.apply(m, [_rewrite(layers["a"], "dw-pw", "split"), _rewrite(layers["b"], "pw-dw", "split")])
    if_node = next(n for n in new.module.graph.nodes() if n.kind() == "prim::If")
    convs_per_block = [sum(n.kind() == "aten::conv2d" for n in block.nodes()) for block in if_node.blocks()]
    assert all(c > 1 for c in convs_per_block)  # each branch rewritten in its own block
    out = _plain(ts.save(new, tmp_path / "out.pt"))
    for x in (xa, xb):
        assert rel_l2(out(x), orig(x)) <= TOL
    after = _by_name(ts.find_convs(new, {}))
    np.testing.assert_array_equal(after["stem"].weight, layers["stem"].weight)  # the non-match


def test_conv_in_a_loop(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = LoopNet().eval(), torch.randn(2, 4, 16, 16)
    src = _export(model, x, tmp_path / "loop.pt", "script")
    m = ts.load(src, tmp_path)
    assert any(n.kind() == "prim::Loop" for n in m.module.graph.nodes())
    shapes = {"x": (2, 4, 16, 16)}
    (layer,) = ts.find_convs(m, shapes)
    assert layer.name == "conv" and layer.out_spatial == (16, 16)
    # Two iterations of a 4->4 3×3 conv on 16×16, per sample.
    assert ts.stats(m, shapes).macs == 2 * 4 * 4 * 9 * 16 * 16
    new = ts.apply(m, [_rewrite(layer, "pw-dw", "fused")])
    assert rel_l2(_plain(ts.save(new, tmp_path / "out.pt"))(x), _plain(src)(x)) <= TOL


def test_shared_conv_gets_unique_names_and_rewrites_one_call(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = SharedConv().eval(), torch.randn(2, 4, 12, 12)
    src = _export(model, x, tmp_path / "shared.pt", "script")
    m = ts.load(src, tmp_path)
    first, second = ts.find_convs(m, {"x": tuple(x.shape)})
    assert (first.name, second.name) == ("conv", "conv_2")
    # One weight, used twice, counted once.
    assert ts.stats(m, {}).params == sum(p.numel() for p in model.parameters())
    new = ts.apply(m, [_rewrite(second, "dw-pw", "fused")])
    after = ts.find_convs(new, {})
    assert after[0].name == "conv"
    np.testing.assert_array_equal(after[0].weight, first.weight)  # the first call is left alone
    assert len(after) == 3
    assert rel_l2(_plain(ts.save(new, tmp_path / "out.pt"))(x), _plain(src)(x)) <= TOL


def test_weight_that_is_not_a_constant_is_reported_not_rewritten(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DynamicWeight().eval()
    x, w = torch.randn(2, 3, 8, 8), torch.randn(5, 6, 3, 3)
    path = tmp_path / "dyn.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    m = ts.load(path, tmp_path)
    assert [s.name for s in ts.input_specs(m)] == ["x", "w"]
    regular, dynamic = ts.find_convs(m, {"x": tuple(x.shape), "w": tuple(w.shape)})
    assert regular.weight is not None and regular.note is None
    assert dynamic.weight is None and "not a constant" in (dynamic.note or "")
    assert (dynamic.kernel, dynamic.in_channels, dynamic.out_channels) == ((3, 3), 6, 5)
    assert dynamic.out_spatial == (8, 8)
    with pytest.raises(ConversionError, match="not a constant"):
        ts.apply(m, [Rewrite(dynamic, _rewrite(regular).lowered)])
    new = ts.apply(m, [_rewrite(regular, "pw-dw", "split")])
    run, _ = ts.runner(ts.save(new, tmp_path / "out.pt"), tmp_path, None)
    (got,) = run({"x": x.numpy(), "w": w.numpy()})
    assert rel_l2(got, model(x, w).detach()) <= TOL


# --- apply's contract -------------------------------------------------------------------------------------------


def test_apply_edits_in_place_only_after_checking_every_rewrite(tmp_path: Path) -> None:
    model, x = build("vgg")
    src = _export(model, x, tmp_path / "vgg.pt")
    m = ts.load(src, tmp_path)
    shapes = {"x": tuple(x.shape)}
    layers = ts.find_convs(m, shapes)
    before = ts.stats(m, shapes)
    # A list whose second rewrite does not fit: refused before the first one is applied.
    misfit = Rewrite(layers[1], lower(decompose(np.ones((16, 3, 3, 3), np.float32), 1, "dw-pw", 1), "fused"))
    with pytest.raises(ConversionError, match=r"^layer features\.2: "):
        ts.apply(m, [_rewrite(layers[0]), misfit])
    assert [layer.name for layer in ts.find_convs(m, shapes)] == [layer.name for layer in layers]
    assert ts.stats(m, shapes) == before
    # A good list edits this model (no second copy of the weights) and returns it.
    first = ts.apply(m, [_rewrite(layers[0])])
    assert first is m and len(ts.find_convs(m, shapes)) > len(layers)
    # A second apply on the rewritten model, with its own handles.
    again = _by_name(ts.find_convs(first, shapes))
    second = ts.apply(first, [_rewrite(again["features.7"], "pw-dw", "fused")])
    assert isinstance(second, TorchScriptModel)
    assert rel_l2(_plain(ts.save(second, tmp_path / "two.pt"))(x), _plain(src)(x)) <= TOL


def test_apply_refuses_foreign_and_misfitting_layers(tmp_path: Path) -> None:
    vgg, xv = build("vgg")
    unet, xu = build("unet")
    mv = ts.load(_export(vgg, xv, tmp_path / "vgg.pt"), tmp_path)
    mu = ts.load(_export(unet, xu, tmp_path / "unet.pt"), tmp_path)
    vgg_layers = ts.find_convs(mv, {})
    unet_layers = _by_name(ts.find_convs(mu, {}))
    with pytest.raises(ConversionError, match=r"^layer features\.0: "):
        ts.apply(mu, [_rewrite(vgg_layers[0])])
    with pytest.raises(ConversionError, match="listed twice"):
        ts.apply(mv, [_rewrite(vgg_layers[0]), _rewrite(vgg_layers[0])])
    up = unet_layers["up"]
    fake = Rewrite(up, _rewrite(unet_layers["enc1.0"]).lowered)
    with pytest.raises(ConversionError, match=r"^layer up: .*does not fit"):
        ts.apply(mu, [fake])


def test_apply_names_the_layer_when_the_rewrite_does_not_fit(tmp_path: Path) -> None:
    model, x = build("vgg")
    m = ts.load(_export(model, x, tmp_path / "vgg.pt"), tmp_path)
    layers = ts.find_convs(m, {})
    # Factors of a 3-input-channel conv cannot replace features.2 (16 inputs), nor 1-D factors a 2-D conv.
    channels = Rewrite(layers[1], lower(decompose(np.ones((16, 3, 3, 3), np.float32), 1, "dw-pw", 1), "fused"))
    kernel = Rewrite(layers[1], lower(decompose(np.ones((16, 16, 3), np.float32), 1, "dw-pw", 1), "fused"))
    with pytest.raises(ConversionError, match=r"^layer features\.2: .*takes 3 channels in 3 groups, but gets 16"):
        ts.apply(m, [channels])
    with pytest.raises(ConversionError, match=r"^layer features\.2: .*1-D kernel"):
        ts.apply(m, [kernel])


# --- saving and reloading ---------------------------------------------------------------------------------------


def test_saved_model_loads_in_a_fresh_process(tmp_path: Path) -> None:
    model, x = build("resnet")
    src = _export(model, x, tmp_path / "resnet.pt", "trace")
    m = ts.load(src, tmp_path)
    layers = [layer for layer in ts.find_convs(m, {}) if _eligible(layer)]
    out = ts.save(ts.apply(m, [_rewrite(layer, *COMBOS[i % 4]) for i, layer in enumerate(layers)]),
                  tmp_path / "converted.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import sys, numpy as np, torch\n"
        "m = torch.jit.load(sys.argv[1])\n"
        "np.save(sys.argv[3], m(torch.from_numpy(np.load(sys.argv[2]))).detach().numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, timeout=120, capture_output=True)
    assert rel_l2(np.load(tmp_path / "y.npy"), _plain(src)(x).detach()) <= TOL


def test_save_is_atomic(tmp_path: Path) -> None:
    model, x = build("video")
    m = ts.load(_export(model, x, tmp_path / "v.pt"), tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = ts.save(m, out_dir / "model.pt")
    assert dest == out_dir / "model.pt" and [p.name for p in out_dir.iterdir()] == ["model.pt"]
    with pytest.raises(ConversionError, match="could not save"):
        ts.save(m, tmp_path / "missing" / "model.pt")
    assert not (tmp_path / "missing").exists()


def test_runner_flattens_outputs_and_checks_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoInOut().eval()
    path = tmp_path / "two.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    image, signal = torch.randn(2, 3, 6, 6), torch.randn(2, 2, 9)
    run, label = ts.runner(path, tmp_path, threads=1)
    assert label == "torch-cpu"
    outs = run({"signal": signal.numpy(), "image": image.numpy()})
    y, (z, s) = model(image, signal)
    assert [o.shape for o in outs] == [tuple(y.shape), tuple(z.shape), tuple(s.shape)]
    for got, want in zip(outs, (y, z, s), strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(InvalidOptionsError, match="signal"):
        run({"image": image.numpy()})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runner_on_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # TF32 convolutions would round to ~1e-3; the comparison is about the rewrite, not the arithmetic.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, x = build("resnet")
    src = _export(model, x, tmp_path / "resnet.pt")
    m = ts.load(src, tmp_path)
    layers = [layer for layer in ts.find_convs(m, {}) if _eligible(layer)]
    out = ts.save(ts.apply(m, [_rewrite(layer) for layer in layers]), tmp_path / "converted.pt")
    run, label = ts.runner(out, tmp_path, None, device="cuda")
    assert label == "torch-cuda"
    (got,) = run({"x": x.numpy()})
    assert rel_l2(got, _plain(src)(x)) <= TOL


def test_runner_rejects_a_file_that_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError):
        ts.runner(_bad_file("random", tmp_path), tmp_path, None)


def test_wrong_input_shape_is_an_options_error(tmp_path: Path) -> None:
    model, x = build("vgg")
    m = ts.load(_export(model, x, tmp_path / "vgg.pt"), tmp_path)
    with pytest.raises(InvalidOptionsError, match=r"x=\[1, 3, 20, 20\]"):
        ts.find_convs(m, {"x": (1, 3, 20, 20)})  # the linear head needs 32×32


# --- stats ------------------------------------------------------------------------------------------------------


def _params_after_bn_folding(model: nn.Module) -> int:
    """Parameters of the eager model once each BatchNorm is folded into the conv before it: the BN's γ and β
    go away, and a conv without bias gains one (out channels)."""
    total = sum(p.numel() for p in model.parameters())
    last_conv: nn.Module | None = None
    for mod in model.modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            last_conv = mod
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            assert last_conv is not None and last_conv.out_channels == mod.num_features
            total -= 2 * mod.num_features
            if last_conv.bias is None:
                total += mod.num_features
    return total


@pytest.mark.parametrize("name", list(ZOO))
def test_params_of_the_frozen_model_are_the_bn_folded_eager_params(tmp_path: Path, name: str) -> None:
    model, x = build(name)
    m = ts.load(_export(model, x, tmp_path / "m.pt"), tmp_path)
    assert ts.stats(m, {}).params == _params_after_bn_folding(model)


def test_vgg_macs_by_hand(tmp_path: Path) -> None:
    model, x = build("vgg")  # width 16, input [2, 3, 32, 32]
    m = ts.load(_export(model, x, tmp_path / "vgg.pt", "trace"), tmp_path)
    per_sample = (
        16 * 3 * 9 * 32 * 32      # features.0
        + 16 * 16 * 9 * 32 * 32   # features.2
        + 32 * 16 * 9 * 16 * 16   # features.5 (after pooling)
        + 32 * 32 * 9 * 16 * 16   # features.7
        + 2048 * 10               # classifier
    )
    assert per_sample == 6_361_088
    assert ts.stats(m, {"x": (2, 3, 32, 32)}).macs == per_sample
    assert ts.stats(m, {"x": (1, 3, 32, 32)}).macs == per_sample
    assert ts.stats(m, {}).macs is None


def test_unet_macs_by_hand_with_a_transposed_conv(tmp_path: Path) -> None:
    model, x = build("unet")  # width 8, input [2, 3, 32, 32]
    m = ts.load(_export(model, x, tmp_path / "unet.pt"), tmp_path)
    per_sample = (
        8 * 3 * 9 * 32 * 32       # enc1.0
        + 16 * 8 * 9 * 16 * 16    # enc2.1.0 (after pooling)
        + 16 * 8 * 4 * 16 * 16    # up: each of the 16×16 input pixels of 16 channels meets 8·2·2 weights
        + 8 * 16 * 9 * 32 * 32    # dec.0 on the concatenation
        + 3 * 8 * 32 * 32         # out (1×1)
    )
    assert ts.stats(m, {"x": tuple(x.shape)}).macs == per_sample


def test_tied_weights_are_counted_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedConvs().eval()
    m = ts.load(_export(model, torch.randn(1, 4, 8, 8), tmp_path / "tied.pt"), tmp_path)
    assert ts.stats(m, {}).params == sum(p.numel() for p in model.parameters()) == 2 * 4 + 4 * 4 * 9


def test_branch_not_taken_counts_no_macs(tmp_path: Path) -> None:
    model, _, xb = branchy_both_ways()
    m = ts.load(_export(model, xb, tmp_path / "b.pt"), tmp_path)
    # Zeros take branch b: the stem (3->8, 3×3) and b (8->8, 5×5) on 16×16; a is not run.
    assert ts.stats(m, {"x": (1, 3, 16, 16)}).macs == 8 * 3 * 9 * 256 + 8 * 8 * 25 * 256


def _step_costs(layer: ConvLayer, rw: Rewrite) -> tuple[int, int]:
    """Weight elements and per-sample MACs of the convs that replace ``layer``: a spatial step produces the
    layer's output size, a 1×1 step keeps the size of its input."""
    assert layer.in_spatial is not None and layer.out_spatial is not None
    params = macs = 0
    for branch in rw.lowered.branches:
        size = layer.in_spatial
        for step in branch:
            size = layer.out_spatial if step.spatial else size
            params += step.weight.size
            macs += step.weight.size * int(np.prod(size))
    if rw.lowered.tail is not None:
        params += rw.lowered.tail.weight.size
        macs += rw.lowered.tail.weight.size * int(np.prod(layer.out_spatial))
    return params, macs


@pytest.mark.parametrize("name", ["vgg", "resnet", "audio"])
def test_converted_totals_are_original_minus_removed_plus_added(tmp_path: Path, name: str) -> None:
    model, x = build(name)
    m = ts.load(_export(model, x, tmp_path / "m.pt", "script"), tmp_path)
    shapes = {"x": tuple(x.shape)}
    layers = [layer for layer in ts.find_convs(m, shapes) if _eligible(layer)]
    rewrites = [_rewrite(layer, *COMBOS[i % 4], rank=2) for i, layer in enumerate(layers)]
    before = ts.stats(m, shapes)
    after = ts.stats(ts.apply(m, rewrites), shapes)
    removed_p = sum(layer.weight.size for layer in layers)
    removed_m = sum(layer.weight.size * int(np.prod(layer.out_spatial)) for layer in layers)
    added = [_step_costs(layer, rw) for layer, rw in zip(layers, rewrites, strict=True)]
    assert after.params == before.params - removed_p + sum(p for p, _ in added)
    assert after.macs == before.macs - removed_m + sum(mc for _, mc in added)
