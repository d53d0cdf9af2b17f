"""Transposed convolutions in every format: the layouts and the regular-conv view (algebra), exactness at full
rank of both orders in 1-D, 2-D and 3-D with stride, padding, output padding, dilation and groups (ONNX on
onnxruntime, TorchScript through ``torch.jit.load``, ``.pt2`` through ``torch.export.load``), the taps,
calibration beating the data-free factors, the micro-models, and the report's ``op``.

Tolerances: full-rank factors reproduce the original to float32 round-off; outputs are compared by relative L2
error ``≤ 1e-5`` (``EXACT``), the same bound the other adapters' exactness tests use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import converter
from converter.algebra import decompose, from_transposed, lower, regular_view, to_transposed
from converter.algebra._refit import patches
from converter.formats import Rewrite, detect_format
from converter.formats._micro import LayerShape
from converter.recovery._calibrate import calibrate
from tests.utils.models import export_onnx, export_pt2, export_torchscript
from tests.utils.onnx_models import rel_l2

EXACT = 1e-5
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}

# (dims, in, out, kernel, stride, padding, output_padding, dilation, groups, input spatial)
CASES = [
    (1, 4, 6, 5, 2, 1, 1, 1, 1, (11,)),
    (2, 4, 6, 3, 2, 1, 1, 1, 2, (5, 6)),
    (2, 6, 4, (3, 2), (1, 2), (1, 0), (0, 1), (2, 1), 2, (6, 5)),
    (2, 3, 5, 4, 2, 1, 0, 1, 1, (4, 4)),
    (3, 4, 4, 3, (1, 2, 2), 1, (0, 1, 1), 1, 1, (3, 4, 4)),
]
IDS = ["1d", "2d-grouped", "2d-dilated", "2d-unet", "3d"]


class Up(nn.Module):
    """One transposed conv between two regular ones (a decoder step)."""

    def __init__(self, dims: int, cin: int, cout: int, k, s, p, op, d, g) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        convt = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        self.pre = conv(cin, cin, 1)
        self.up = convt(cin, cout, k, stride=s, padding=p, output_padding=op, dilation=d, groups=g)
        self.post = conv(cout, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(torch.relu(self.up(torch.relu(self.pre(x)))))


def _model(case, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    dims, cin, cout, k, s, p, op, d, g, spatial = case
    torch.manual_seed(seed)
    return Up(dims, cin, cout, k, s, p, op, d, g).eval(), torch.randn(2, cin, *spatial)


def _save(model: nn.Module, x: torch.Tensor, fmt: str, path: Path, mode: str = "trace") -> Path:
    if fmt == "onnx":
        export_onnx(model, x, path, dynamic="batch")
    elif fmt == "pt2":
        export_pt2(model, x, path)
    else:
        export_torchscript(model, x, path, mode=mode)
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    """The saved model in its own runtime, loaded from the file."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()(torch.from_numpy(x)).numpy()
        return torch.jit.load(str(path))(torch.from_numpy(x)).numpy()


# --- algebra ----------------------------------------------------------------------------------------------------


def test_layouts_round_trip_and_match_grouping() -> None:
    w = np.random.default_rng(0).standard_normal((6, 2, 3, 3)).astype(np.float32)  # in 6, out 2·3, groups 3
    regular = from_transposed(w, 3)
    assert regular.shape == (6, 2, 3, 3)
    for g, i, j in np.ndindex(3, 2, 2):  # output g·2 + j, input g·2 + i  <->  W_t[g·2 + i, j]
        np.testing.assert_array_equal(regular[g * 2 + j, i], w[g * 2 + i, j])
    np.testing.assert_array_equal(to_transposed(regular, 3), w)
    with pytest.raises(ValueError, match="groups"):
        to_transposed(regular, 4)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_regular_view_is_the_transposed_conv(case) -> None:
    """A regular conv (regular-layout weight) of ``regular_view(x)`` gives the transposed conv's outputs, in
    reversed position order."""
    dims, cin, cout, g = case[0], case[1], case[2], case[8]
    model, x = _model(case)
    up = model.up
    pads = [(v, v) for v in up.padding]
    view, geo = regular_view(x.numpy(), up.kernel_size, up.stride, up.dilation, pads, up.output_padding)
    weight = from_transposed(up.weight.detach().numpy(), g)
    cols = patches(view, tuple(up.kernel_size), geo)  # [B·P, M, k]
    c = cin // g
    w = weight.reshape(g, cout // g, c * math.prod(up.kernel_size))
    y = np.concatenate([cols[:, gi * c:(gi + 1) * c].reshape(cols.shape[0], -1) @ w[gi].T for gi in range(g)], 1)
    with torch.no_grad():
        ref = F.conv_transpose1d if dims == 1 else F.conv_transpose2d if dims == 2 else F.conv_transpose3d
        expected = ref(x, up.weight, None, up.stride, up.padding, up.output_padding, g, up.dilation).numpy()
    out = expected.shape[2:]
    got = y.reshape(x.shape[0], *out, cout)
    got = np.flip(got, axis=tuple(range(1, 1 + dims)))  # the view reverses the positions
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), expected, rtol=1e-4, atol=1e-4)


# --- exactness at full rank, every format ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(("order", "lowering"), [("dw-pw", "split"), ("pw-dw", "split"), ("dw-pw", "fused"),
                                                 ("pw-dw", "fused")])
def test_full_rank_is_exact(tmp_path: Path, fmt: str, case, order: str, lowering: str) -> None:
    model, x = _model(case)
    src = _save(model, x, fmt, tmp_path / f"m{SUFFIX[fmt]}")
    adapter = detect_format(src)
    loaded = adapter.load(src, tmp_path)
    layers = adapter.find_convs(loaded, {adapter.input_specs(loaded)[0].name: tuple(x.shape)})
    (up,) = [la for la in layers if la.transposed]
    assert (up.in_channels, up.out_channels, up.groups) == (case[1], case[2], case[8])
    np.testing.assert_array_equal(up.weight, from_transposed(model.up.weight.detach().numpy(), case[8]))
    rw = Rewrite(up, lower(decompose(up.weight, up.groups, order, 99), lowering))
    dest = adapter.save(adapter.apply(loaded, [rw]), tmp_path / f"slim{SUFFIX[fmt]}")
    if fmt == "onnx":
        import onnx

        proto = onnx.load(str(dest))
        onnx.checker.check_model(proto, full_check=True)
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("ConvTranspose") == sum(s.spatial for s in rw.lowered.steps)
    ref = model(x).detach().numpy()
    assert rel_l2(_run(dest, x.numpy()), ref) <= EXACT
    # every spatial step is a transposed conv of one channel per group (depthwise or one output per group)
    again = [la for la in adapter.find_convs(adapter.load(dest, tmp_path / "again"), {}) if la.transposed]
    assert again and all(la.groups in (la.in_channels, la.out_channels) for la in again)


def test_scripted_generic_convolution_with_transposed_flag(tmp_path: Path) -> None:
    """``aten::_convolution``/``aten::convolution`` with ``transposed=True`` (what some tracers record)."""

    class Generic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.bias = nn.Parameter(torch.randn(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.convolution(x, self.weight, self.bias, [2, 2], [1, 1], [1, 1], True, [1, 1], 2)

    torch.manual_seed(0)
    model, x = Generic().eval(), torch.randn(2, 4, 5, 5)
    for fmt in ("torchscript", "pt2"):
        src = _save(model, x, fmt, tmp_path / f"g{SUFFIX[fmt]}", mode="script")
        adapter = detect_format(src)
        loaded = adapter.load(src, tmp_path)
        (layer,) = adapter.find_convs(loaded, {adapter.input_specs(loaded)[0].name: tuple(x.shape)})
        assert layer.transposed and (layer.in_channels, layer.out_channels, layer.groups) == (4, 6, 2)
        assert layer.out_spatial == (10, 10)
        rw = Rewrite(layer, lower(decompose(layer.weight, 2, "pw-dw", 99), "split"))
        dest = adapter.save(adapter.apply(loaded, [rw]), tmp_path / f"g-slim{SUFFIX[fmt]}")
        assert rel_l2(_run(dest, x.numpy()), model(x).detach().numpy()) <= EXACT


# --- the pipeline: report, MACs, low rank, calibration ----------------------------------------------------------


class UNetT(nn.Module):
    """A small UNet whose decoder upsamples with transposed convs (8 channels at 16×16)."""

    def __init__(self, w: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1)
        self.dec = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        return self.dec(torch.cat([torch.relu(self.up(self.enc2(e1))), e1], 1))


def _images(n: int, seed: int = 0) -> np.ndarray:
    from sklearn.datasets import load_digits

    digits = load_digits().images[:n].astype(np.float32) / 16.0
    return np.kron(digits, np.ones((2, 2), np.float32))[:, None]  # [n, 1, 16, 16]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_convert_reports_and_converts_transposed_layers(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    model, x = UNetT().eval(), torch.from_numpy(_images(2))
    src = _save(model, x, fmt, tmp_path / f"u{SUFFIX[fmt]}")
    result = converter.convert(src, tmp_path / f"slim{SUFFIX[fmt]}", rank=99, force=True,
                               input_shape={"x": (1, 1, 16, 16)}, measure=False)
    report = result.report
    (up,) = [la for la in report.layers if "up" in la.name]
    assert up.status == "converted", up.reason
    assert "ConvTranspose" in up.op or "conv_transpose" in up.op
    assert report.fidelity is not None and report.fidelity.rel_l2 <= EXACT
    assert up.macs_before == 16 * 8 * 9 * 8 * 8  # each of the 8×8 input positions feeds N/g·k = 8·9 outputs per channel


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_calibration_lowers_a_transposed_layers_error(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    model = UNetT().eval()
    images = _images(64)
    src = _save(model, torch.from_numpy(images[:2]), fmt, tmp_path / f"u{SUFFIX[fmt]}")
    adapter = detect_format(src)
    (tmp_path / "w" / "tap").mkdir(parents=True)
    loaded = adapter.load(src, tmp_path / "w")
    name = adapter.input_specs(loaded)[0].name
    layers = adapter.find_convs(loaded, {name: (1, 1, 16, 16)})
    (up,) = [la for la in layers if la.transposed]
    tap = adapter.tap(loaded, [up], tmp_path / "w" / "tap")
    assert up.name in tap.points, tap.skipped
    # the tap still runs the original function, and overriding with the layer's own weight changes nothing
    run, _ = adapter.runner(src, tmp_path, None)
    ref = run({name: images[:4]})[0]
    outs, got = tap({name: images[:4]}, {up.name: (up.weight, tap.points[up.name].bias)}, [up.name])
    np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-4)
    # the captured view, convolved as a regular conv, is the layer's output
    assert got[up.name].shape[2:] == (18, 18)  # 8·2 − 1 upsampled, padded by 2 − 1 + 1 before and 2 − 1 after
    np.savez(tmp_path / "d.npz", **{name: images})
    from converter.data import load_samples

    samples = load_samples(tmp_path / "d.npz", adapter.input_specs(loaded))
    dec = decompose(up.weight, up.groups, "dw-pw", 1)
    result = calibrate(tap, [(up, dec)], samples, batch_size=16)
    outcome = result.layers[up.name]
    assert outcome.calibrated < 0.9 * outcome.data_free, outcome


def test_calibrated_convert_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNetT().eval()
    images = _images(96)
    src = _save(model, torch.from_numpy(images[:2]), "onnx", tmp_path / "u.onnx")
    np.savez(tmp_path / "d.npz", x=images)
    result = converter.convert(src, tmp_path / "slim.onnx", rank=1, data=tmp_path / "d.npz", measure=False,
                               input_shape={"x": (1, 1, 16, 16)})
    (up,) = [la for la in result.report.layers if la.op == "ConvTranspose"]
    assert up.status == "converted" and up.calibration is not None, up
    assert up.output_error.calibrated < 0.9 * up.output_error.data_free
    accuracy = json.loads(result.report.model_dump_json())["accuracy"]
    assert accuracy["rel_l2"]["calibrated"] < accuracy["rel_l2"]["data_free"]


# --- timing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_micro_model_times_a_transposed_layer(tmp_path: Path, fmt: str) -> None:
    from converter.formats import adapter_for

    shape = LayerShape((3, 3), 8, 4, 1, (6, 7), (12, 14), transposed=True)
    assert shape.key(1).endswith("/t")
    adapter = adapter_for(fmt)
    path = adapter.micro_model(shape, 1, tmp_path)
    loaded = adapter.load(path, tmp_path)
    layers = adapter.find_convs(loaded, {adapter.input_specs(loaded)[0].name: (1, 8, 6, 7)})
    (layer,) = [la for la in layers if la.transposed]
    assert (layer.in_spatial, layer.out_spatial) == ((6, 7), (12, 14))
    rw = Rewrite(layer, lower(decompose(layer.weight, 1, "dw-pw", 2), "split"))
    dest = adapter.save(adapter.apply(loaded, [rw]), tmp_path / f"cand{SUFFIX[fmt]}")
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 7)).astype(np.float32)
    assert _run(dest, x).shape == (1, 4, 12, 14)


# --- fine-tuning ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_finetune_trains_a_transposed_layers_factors(tmp_path: Path, fmt: str) -> None:
    from converter.recovery.finetune import trainable_view
    from converter.recovery.finetune._view import original_digests

    torch.manual_seed(0)
    model = UNetT().eval()
    images = _images(48)
    src = _save(model, torch.from_numpy(images[:2]), fmt, tmp_path / f"u{SUFFIX[fmt]}")
    np.savez(tmp_path / "d.npz", x=images)
    dest = tmp_path / f"slim{SUFFIX[fmt]}"
    result = converter.convert(src, dest, rank=1, recover="finetune", data=tmp_path / "d.npz", epochs=1,
                               batch_size=12, input_shape={"x": (1, 1, 16, 16)}, measure=False, latency_runs=1)
    report = result.report
    assert report.finetune is not None and report.fidelity is not None
    (up,) = [la for la in report.layers if "transpose" in la.op.lower()]
    assert up.status == "converted"
    # the view trains the transposed layer's new weights, not the original's
    view = trainable_view(fmt, result.output_path, tmp_path / "view", original_digests(fmt, src, tmp_path / "orig"))
    shapes = {tuple(view.params[n].shape) for n in view.factors}
    assert (16, 1, 3, 3) in shapes  # the depthwise transposed conv: [in 16, out/g 1, 3, 3]


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=["1d", "2d-dilated", "3d"])
def test_scripted_conv_transpose_full_rank_is_exact(tmp_path: Path, case) -> None:
    """``torch.jit.script`` records ``aten::conv_transpose{1,2,3}d`` (tracing records ``aten::_convolution``)."""
    model, x = _model(case)
    src = _save(model, x, "torchscript", tmp_path / "m.pt", mode="script")
    adapter = detect_format(src)
    loaded = adapter.load(src, tmp_path)
    (up,) = [la for la in adapter.find_convs(loaded, {"x": tuple(x.shape)}) if la.transposed]
    assert up.op == f"aten::conv_transpose{case[0]}d"
    rewrite = Rewrite(up, lower(decompose(up.weight, up.groups, "pw-dw", 99), "split"))
    dest = adapter.save(adapter.apply(loaded, [rewrite]), tmp_path / "slim.pt")
    assert rel_l2(_run(dest, x.numpy()), model(x).detach().numpy()) <= EXACT
