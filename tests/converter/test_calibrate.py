"""Calibration through each format's runtime: the taps (weights swapped, conv inputs captured, the geometry
read right), and the layer-by-layer calibration improving on the data-free factors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from converter.algebra._decompose import decompose
from converter.algebra._refit import patches
from converter.data import load_samples
from converter.formats import detect_format
from converter.recovery._calibrate import calibrate, evaluate, overrides
from tests.utils.models import build, export_onnx, export_pt2, export_torchscript

FORMATS = ["onnx", "torchscript", "pt2"]


def _save(model, example, fmt, path):
    if fmt == "onnx":
        export_onnx(model, example, path, dynamic="batch")
    elif fmt == "pt2":
        export_pt2(model, example, path)
    else:
        export_torchscript(model, example, path, mode="trace")
    return path


def _tap(path, tmp_path, shape):
    adapter = detect_format(path)
    work = tmp_path / "work"
    (work / "tap").mkdir(parents=True, exist_ok=True)
    model = adapter.load(path, work)
    layers = adapter.find_convs(model, {adapter.input_specs(model)[0].name: (1, *shape[1:])})
    return adapter, model, layers, adapter.tap(model, layers, work)


GEOMETRIES = [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 8)),
    (nn.Conv2d(4, 6, 3, dilation=2, padding=(2, 1), groups=2), (2, 4, 9, 9)),
    (nn.Conv2d(4, 6, (3, 5), padding="same"), (2, 4, 7, 9)),
    (nn.Conv1d(2, 4, 5, stride=2, padding=3), (2, 2, 21)),
    (nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1), (2, 2, 4, 6, 6)),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("conv", "shape"), GEOMETRIES, ids=["strided", "dilated-grouped", "same", "1d", "3d"])
def test_tap_reads_the_conv_geometry(tmp_path, fmt, conv, shape):
    torch.manual_seed(0)
    conv = conv.eval()
    x = torch.randn(*shape)
    path = _save(conv, x, fmt, tmp_path / {"onnx": "m.onnx", "pt2": "m.pt2"}.get(fmt, "m.pt"))
    _, _, layers, tap = _tap(path, tmp_path, shape)
    (layer,) = layers
    point = tap.points[layer.name]
    outs, got = tap({tap_input(path): x.numpy()}, {}, [layer.name])
    np.testing.assert_allclose(got[layer.name], x.numpy())
    p = patches(got[layer.name], layer.kernel, point.geometry)  # [B·P, M, k]
    w = layer.weight.reshape(layer.groups, -1, layer.weight.shape[1] * int(np.prod(layer.kernel)))
    c = layer.weight.shape[1]
    y = np.concatenate([p[:, g * c:(g + 1) * c].reshape(p.shape[0], -1) @ w[g].T for g in range(layer.groups)], 1)
    y += point.bias
    ref = outs[0]
    ref = np.moveaxis(ref, 1, -1).reshape(-1, ref.shape[1])
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def tap_input(path):
    return detect_format(path).input_specs(detect_format(path).load(path, path.parent))[0].name


@pytest.mark.parametrize("fmt", FORMATS)
def test_tap_overrides_and_leaves_the_model_alone(tmp_path, fmt):
    model, x = build("vgg")
    path = _save(model, x, fmt, tmp_path / {"onnx": "m.onnx", "pt2": "m.pt2"}.get(fmt, "m.pt"))
    adapter, loaded, layers, tap = _tap(path, tmp_path, tuple(x.shape))
    name = adapter.input_specs(loaded)[0].name
    run, _ = adapter.runner(path, tmp_path, None)
    ref = run({name: x.numpy()})[0]
    outs, got = tap({name: x.numpy()}, {}, [layer.name for layer in layers])
    np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-4)
    assert [got[layer.name].shape[1] for layer in layers] == [layer.in_channels for layer in layers]
    # full-rank factors multiplied back are the same function; zeroed weights are not
    full = {layer.name: (decompose(layer.weight, layer.groups, "dw-pw", 99), None) for layer in layers}
    np.testing.assert_allclose(tap({name: x.numpy()}, overrides(tap, full), [])[0][0], ref, rtol=1e-3, atol=1e-3)
    zero = {layers[1].name: (np.zeros_like(layers[1].weight), np.zeros(layers[1].out_channels, np.float32))}
    assert not np.allclose(tap({name: x.numpy()}, zero, [])[0][0], ref, atol=1e-3)
    # the loaded model still saves to the original function
    saved = adapter.save(loaded, tmp_path / f"again{adapter.suffix}")
    again, _ = adapter.runner(saved, tmp_path, None)
    np.testing.assert_allclose(again({name: x.numpy()})[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tap_without_outputs_captures_the_same_inputs(tmp_path, fmt):
    """``outputs=False`` (what calibration asks for: the runtime may stop at the captured input) changes
    nothing in what is captured, with and without overrides."""
    model, x = build("vgg")
    path = _save(model, x, fmt, tmp_path / {"onnx": "m.onnx", "pt2": "m.pt2"}.get(fmt, "m.pt"))
    adapter, loaded, layers, tap = _tap(path, tmp_path, tuple(x.shape))
    name = adapter.input_specs(loaded)[0].name
    low = {layers[0].name: (decompose(layers[0].weight, layers[0].groups, "dw-pw", 1), None)}
    for weights in ({}, overrides(tap, low)):
        for layer in layers:
            _, want = tap({name: x.numpy()}, weights, [layer.name])
            outs, got = tap({name: x.numpy()}, weights, [layer.name], outputs=False)
            np.testing.assert_array_equal(got[layer.name], want[layer.name])
            if fmt != "torchscript":  # the scripted graph runs whole and returns its outputs anyway
                assert outs == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_calibration_beats_data_free_on_held_out_samples(tmp_path, fmt):
    model, x = build("vgg")
    path = _save(model, x, fmt, tmp_path / {"onnx": "m.onnx", "pt2": "m.pt2"}.get(fmt, "m.pt"))
    adapter, loaded, layers, tap = _tap(path, tmp_path, tuple(x.shape))
    name = adapter.input_specs(loaded)[0].name
    rng = np.random.default_rng(0)
    # inputs with structure (smooth images), so that calibration has something to learn from
    base = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    images = np.repeat(np.repeat(base, 4, axis=2), 4, axis=3)
    np.savez(tmp_path / "d.npz", **{name: images})
    from converter.formats._base import InputSpec

    samples = load_samples(tmp_path / "d.npz", [InputSpec(name, None, np.dtype(np.float32))])
    cal, held = samples.split(0.25, seed=0)
    items = [(layer, decompose(layer.weight, layer.groups, "dw-pw", 1)) for layer in layers]
    result = calibrate(tap, items, cal, batch_size=8)
    assert set(result.layers) == {layer.name for layer in layers} and not result.skipped
    for outcome in result.layers.values():
        assert outcome.calibrated <= outcome.data_free
    free = overrides(tap, {layer.name: (d, None) for layer, d in items})
    scorer = evaluate(tap, {"data_free": free, "calibrated": overrides(tap, result.factors)}, held,
                      batch_size=5, num_classes=None)
    assert scorer.samples == held.count == 12
    assert scorer.metric == "top1_agreement"
    assert scorer.values("calibrated")["rel_l2"] < 0.95 * scorer.values("data_free")["rel_l2"]
    assert scorer.values("original") == {"top1": None, "top5": None, "top1_agreement": 1.0, "rel_l2": 0.0}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("order", ["dw-pw", "pw-dw"])
def test_written_model_is_the_tapped_function(tmp_path, fmt, order):
    """What the tap measures (factors multiplied back, replacement biases) is what the adapter writes."""
    from converter.algebra._decompose import lower
    from converter.formats._base import Rewrite

    model, x = build("vgg")
    path = _save(model, x, fmt, tmp_path / {"onnx": "m.onnx", "pt2": "m.pt2"}.get(fmt, "m.pt"))
    adapter, loaded, layers, tap = _tap(path, tmp_path, tuple(x.shape))
    name = adapter.input_specs(loaded)[0].name
    rng = np.random.default_rng(0)
    factors = {layer.name: (decompose(layer.weight, layer.groups, order, 2),
                            rng.standard_normal(layer.out_channels).astype(np.float32)) for layer in layers}
    expected = tap({name: x.numpy()}, overrides(tap, factors), [])[0][0]
    rewrites = [Rewrite(layer, lower(factors[layer.name][0], "split"), factors[layer.name][1]) for layer in layers]
    saved = adapter.save(adapter.apply(loaded, rewrites), tmp_path / f"slim{adapter.suffix}")
    run, _ = adapter.runner(saved, tmp_path, None)
    np.testing.assert_allclose(run({name: x.numpy()})[0], expected, rtol=1e-3, atol=1e-3)
