"""ONNX layers timed with their real neighbours: the cut-out context (``formats._onnx._context``), its
structural cache key, and ``CandidateTimer`` using it, with the generic micro-model as the fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from converter.algebra._decompose import decompose, lower, max_rank
from converter.formats import ConvLayer, Rewrite, adapter_for
from converter.formats._micro import LayerShape
from converter.formats._onnx import OnnxModel
from converter.latency._cache import TimingCache, backend_for
from converter.latency._candidates import ORIGINAL, Candidate, CandidateTimer
from tests.utils.models import export_onnx
from tests.utils.onnx_models import if_model, ort_run, rel_l2

ONNX = adapter_for("onnx")
SHAPES = {"x": (1, 3, 16, 16)}


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + x)


class _Net(nn.Module):
    """A stem conv and two identical residual blocks; ``silu`` puts a SiLU after the stem instead of a ReLU."""

    def __init__(self, c: int = 16, silu: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.act = nn.SiLU() if silu else nn.ReLU()
        self.blocks = nn.Sequential(_Residual(c), _Residual(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act(self.stem(x)))


def _load(tmp_path: Path, *, silu: bool = False, dynamic: bool | str = False, seed: int = 0) -> OnnxModel:
    torch.manual_seed(seed)
    path = tmp_path / f"net-{seed}-{silu}-{dynamic}.onnx"
    export_onnx(_Net(silu=silu).eval(), torch.randn(*SHAPES["x"]), path, dynamic=dynamic)
    return ONNX.load(path, tmp_path)


def _layers(model: OnnxModel, shapes: dict = SHAPES) -> dict[str, ConvLayer]:
    return {lay.name: lay for lay in ONNX.find_convs(model, shapes)}


def _by_suffix(layers: dict[str, ConvLayer], suffix: str) -> ConvLayer:
    (layer,) = [lay for name, lay in layers.items() if name.endswith(suffix)]
    return layer


def _feeds(ctx: object, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(d).astype(t) for k, (d, t) in ctx.inputs.items()}  # type: ignore[attr-defined]


def test_a_residual_conv_is_cut_out_with_its_add_and_activation(tmp_path: Path) -> None:
    model = _load(tmp_path)
    layer = _by_suffix(_layers(model), "blocks.0/conv2/Conv")
    ctx = ONNX.context(model, layer, SHAPES)
    assert not isinstance(ctx, str), ctx
    # the real neighbours: the ReLU feeding it, the residual Add and the ReLU after it; the block's input and
    # conv1's output come through 1×1 depthwise stand-ins (the runtime's blocked layout), not the real convs
    assert ctx.ops.count("Add") == 1 and ctx.ops.count("Relu") == 2 and ctx.ops.count("Conv") == 3
    assert sorted(d for d, _ in ctx.inputs.values()) == [(1, 16, 16, 16), (1, 16, 16, 16)]
    path = ctx.write(tmp_path / "ctx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    standins = [n for n in proto.graph.node if n.op_type == "Conv" and n.name != layer.name]
    assert all(dict((a.name, a.i) for a in n.attribute)["group"] == 16 for n in standins)
    (out,) = ort_run(proto, _feeds(ctx))
    assert out.shape == (1, 16, 16, 16) and (out >= 0).all()  # the block's final ReLU is in the cut


def test_the_stem_reads_the_raw_model_input_and_a_silu_comes_whole(tmp_path: Path) -> None:
    model = _load(tmp_path, silu=True)
    layers = _layers(model)
    stem = ONNX.context(model, _by_suffix(layers, "stem/Conv"), SHAPES)
    assert not isinstance(stem, str)
    assert stem.inputs["x"] == ((1, 3, 16, 16), np.dtype(np.float32))
    proto = onnx.load(str(stem.write(tmp_path / "stem")))
    (reader,) = [n for n in proto.graph.node if "x" in n.input]
    assert reader.name == stem.layer  # no stand-in before the stem: it reads the model's NCHW input as it is
    # its SiLU whole, and two hops on the block's residual Add (the next convs are not taken)
    assert [n.op_type for n in proto.graph.node if n.name != stem.layer and "standin" not in n.name] == [
        "Sigmoid", "Mul", "Add"]
    after = ONNX.context(model, _by_suffix(layers, "blocks.0/conv1/Conv"), SHAPES)
    assert not isinstance(after, str)
    assert after.ops[:3] == ("Conv", "Sigmoid", "Mul")  # the stem's stand-in, then the SiLU feeding the layer


def test_the_layer_is_found_by_name_in_its_cut_and_its_rewrite_runs(tmp_path: Path) -> None:
    model = _load(tmp_path)
    layer = _by_suffix(_layers(model), "blocks.1/conv1/Conv")
    ctx = ONNX.context(model, layer, SHAPES)
    assert not isinstance(ctx, str)
    src = ctx.write(tmp_path / "src")
    feeds = _feeds(ctx)
    cut = ONNX.load(src, tmp_path / "cut")
    found = {lay.name: lay for lay in ONNX.find_convs(cut, {k: x.shape for k, x in feeds.items()})}[ctx.layer]
    assert ctx.layer == layer.name
    np.testing.assert_array_equal(found.weight, layer.weight)  # the real weights
    assert (found.in_spatial, found.out_spatial) == (layer.in_spatial, layer.out_spatial)
    rank = max_rank(found.weight.shape, 1, "dw-pw")  # exact: the rewrite must reproduce the cut's outputs
    dec = decompose(found.weight, 1, "dw-pw", rank)
    out = ONNX.save(ONNX.apply(cut, [Rewrite(found, lower(dec, "summed"))]), tmp_path / "rewritten.onnx")
    expected = ort_run(onnx.load(str(src)), feeds)
    actual = ort_run(onnx.load(str(out)), feeds)
    assert len(actual) == len(expected) >= 1
    for a, e in zip(actual, expected, strict=True):
        assert rel_l2(a, e) < 1e-4


def test_the_key_is_the_structure_not_the_weights_or_names(tmp_path: Path) -> None:
    a, b = _load(tmp_path, seed=0), _load(tmp_path, seed=1)  # other weights
    la, lb = _layers(a), _layers(b)
    key = {name: ONNX.context(a, lay, SHAPES).key for name, lay in la.items()}  # type: ignore[union-attr]
    assert key[_by_suffix(la, "blocks.0/conv2/Conv").name] == key[_by_suffix(la, "blocks.1/conv2/Conv").name]
    assert key[_by_suffix(la, "blocks.0/conv1/Conv").name] != key[_by_suffix(la, "blocks.0/conv2/Conv").name]
    assert key[_by_suffix(la, "stem/Conv").name] != key[_by_suffix(la, "blocks.0/conv1/Conv").name]
    other = {name: ONNX.context(b, lay, SHAPES).key for name, lay in lb.items()}  # type: ignore[union-attr]
    assert other == key
    bigger = {"x": (1, 3, 32, 32)}
    assert ONNX.context(a, _layers(a, bigger)[_by_suffix(la, "stem/Conv").name], bigger).key != key[  # type: ignore[union-attr]
        _by_suffix(la, "stem/Conv").name]


def test_symbolic_dims_and_subgraphs_have_no_context(tmp_path: Path) -> None:
    model = _load(tmp_path, dynamic=True)
    layer = _by_suffix(_layers(model, {}), "blocks.0/conv2/Conv")
    why = ONNX.context(model, layer, {})
    assert isinstance(why, str) and "unknown or symbolic" in why
    branchy = OnnxModel.from_proto(if_model())
    then_conv = {lay.name: lay for lay in ONNX.find_convs(branchy, {"x": (2, 3, 10, 10)})}["then_conv"]
    why = ONNX.context(branchy, then_conv, {"x": (2, 3, 10, 10)})
    assert isinstance(why, str) and "subgraph" in why


CANDS = [Candidate("dw-pw", 2, "split"), Candidate("dw-pw", 2, "summed"), Candidate("pw-dw", 1, "split")]


def test_candidates_are_timed_in_context_and_identical_blocks_share_the_cache(tmp_path: Path) -> None:
    model = _load(tmp_path)
    layers = _layers(model)
    backend = backend_for("onnx", "cpu", 1)
    cache = TimingCache(backend, tmp_path / "cache")
    timer = CandidateTimer(ONNX, backend, 1, cache, max_runs=5, model=model, input_shapes=SHAPES)
    first, second = (_by_suffix(layers, f"blocks.{i}/conv2/Conv") for i in (0, 1))
    t1 = timer.time_layer(LayerShape.of(first), CANDS, layer=first)  # type: ignore[arg-type]
    assert not t1.cached and set(t1.ms) == {ORIGINAL, *CANDS} and all(ms > 0 for ms in t1.ms.values())
    assert timer.in_context == [first.name] and not timer.fallbacks
    assert len(cache) == len(CANDS) + 1 and all("|ctx" in k for k in cache._data)
    t2 = timer.time_layer(LayerShape.of(second), CANDS, layer=second)  # type: ignore[arg-type]
    assert t2.cached and t2.ms == t1.ms and len(cache) == len(CANDS) + 1  # one entry for both blocks
    # without the layer (or for TorchScript and .pt2) the generic micro-model is timed, under its own key
    t3 = timer.time_layer(LayerShape.of(first), CANDS)  # type: ignore[arg-type]
    assert not t3.cached and len(cache) == 2 * (len(CANDS) + 1)
    assert sum("|ctx" not in k for k in cache._data) == len(CANDS) + 1


def test_a_conv_in_a_subgraph_is_timed_in_the_micro_model(tmp_path: Path) -> None:
    branchy = OnnxModel.from_proto(if_model())
    shapes = {"x": (2, 3, 10, 10)}
    then_conv = {lay.name: lay for lay in ONNX.find_convs(branchy, shapes)}["then_conv"]
    backend = backend_for("onnx", "cpu", 1)
    timer = CandidateTimer(ONNX, backend, 2, TimingCache(backend, tmp_path), max_runs=5, model=branchy,
                           input_shapes=shapes)
    shape = LayerShape((3, 3), 6, 6, 1, (10, 10), (10, 10))
    lt = timer.time_layer(shape, [Candidate("dw-pw", 1, "split")], layer=then_conv)
    assert set(lt.ms) == {ORIGINAL, Candidate("dw-pw", 1, "split")}
    assert not timer.in_context and "subgraph" in timer.fallbacks["then_conv"]
    assert all("|ctx" not in k for k in timer.cache._data)


@pytest.mark.parametrize("silu", [False, True])
def test_a_conversion_times_its_onnx_layers_in_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       silu: bool) -> None:
    import converter

    monkeypatch.setenv("SEPCONV_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    src = tmp_path / "net.onnx"
    export_onnx(_Net(silu=silu).eval(), torch.randn(*SHAPES["x"]), src, dynamic="batch")
    r = converter.convert(src, tmp_path / "out.onnx", rank=2, input_shape=["x=1x3x16x16"], threads=1,
                          latency_runs=5, latency_budget_s=5).report
    m = r.policy["latency"]
    assert m["measured"] and m["layers_timed"] + m["layers_cached"] == 5
    assert m["layers_in_real_context"] == 5
    assert m["layers_cached"] >= 1  # the second block's conv2 (and conv1) reuse the first's timings
