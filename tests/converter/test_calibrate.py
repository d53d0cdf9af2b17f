"""Calibration through each format's runtime: the taps (weights swapped, conv inputs captured, the geometry
read right), and the layer-by-layer calibration improving on the data-free factors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from converter._calibrate import calibrate, evaluate, overrides
from converter._data import load_samples
from converter._decompose import decompose
from converter._refit import patches
from converter.formats import detect_format
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
    from converter._decompose import lower
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


def test_chunks_respect_the_budgets_and_the_cap():
    from converter._calibrate import chunks

    stats, acts = [100, 200, 50, 400, 10], [10, 10, 10, 10, 10]
    assert chunks(stats, acts, stats_budget=1, activation_budget=10**9, max_layers=9) == [[0], [1], [2], [3], [4]]
    assert chunks(stats, acts, stats_budget=10**9, activation_budget=10**9, max_layers=9) == [[0, 1, 2, 3, 4]]
    assert chunks(stats, acts, stats_budget=10**9, activation_budget=10**9, max_layers=2) == [[0, 1], [2, 3], [4]]
    # 100+200+50 fits in 350, +400 does not; 400 alone exceeds it (calibrated alone), +10 does not fit
    assert chunks(stats, acts, stats_budget=350, activation_budget=10**9, max_layers=9) == [[0, 1, 2], [3], [4]]
    assert chunks(stats, acts, stats_budget=10**9, activation_budget=25, max_layers=9) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="max_layers"):
        chunks(stats, acts, stats_budget=1, activation_budget=1, max_layers=0)


def test_stats_bytes_is_what_layer_stats_allocates():
    from converter._refit import Geometry, LayerStats, stats_bytes

    w = np.ones((6, 2, 3, 3), np.float32)
    st = LayerStats(w, None, 2, Geometry((1, 1), (1, 1), ((1, 1), (1, 1))))
    held = sum(a.nbytes for a in (st.G, st.X, st.S_co, st.weight, st.bias))
    assert stats_bytes(w.shape, 2) == held


class _Counting:
    def __init__(self, tap):
        self.tap, self.calls, self.want = tap, 0, []
        self.points, self.skipped = tap.points, tap.skipped

    def __call__(self, inputs, weights, want):
        self.calls += 1
        self.want.append(list(want))
        return self.tap(inputs, weights, want)


def _old_calibrate(tap, items, samples, batch_size):
    """Layer-by-layer calibration as it was before chunks (the reference for chunks of one layer)."""
    from converter._refit import LayerStats, calibrate_layer

    done, out = {}, {}
    for i, (layer, dec) in enumerate(items):
        point = tap.points[layer.name]
        stats = LayerStats(layer.weight, point.bias, layer.groups, point.geometry, seed=i)
        for batch, _ in samples.batches(batch_size):
            _, orig = tap(batch, {}, [layer.name])
            conv = tap(batch, done, [layer.name])[1] if done else orig
            stats.update(conv[layer.name], orig[layer.name])
        chosen = calibrate_layer(stats, dec, 1e-3)
        out[layer.name] = (chosen.decomposition, chosen.bias)
        done.update(overrides(tap, {layer.name: out[layer.name]}))
    return out


def _onnx_setup(tmp_path, rank=1):
    from converter.formats._base import InputSpec

    model, x = build("vgg")
    path = _save(model, x, "onnx", tmp_path / "m.onnx")
    adapter, loaded, layers, tap = _tap(path, tmp_path, tuple(x.shape))
    name = adapter.input_specs(loaded)[0].name
    rng = np.random.default_rng(0)
    base = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", **{name: np.repeat(np.repeat(base, 4, axis=2), 4, axis=3)})
    samples = load_samples(tmp_path / "d.npz", [InputSpec(name, None, np.dtype(np.float32))])
    cal, held = samples.split(0.25, seed=0)
    items = [(layer, decompose(layer.weight, layer.groups, "dw-pw", rank)) for layer in layers]
    return tap, items, cal, held


def test_chunks_of_one_layer_are_the_sequential_calibration(tmp_path):
    tap, items, cal, _ = _onnx_setup(tmp_path)
    assert len(items) >= 3
    counting = _Counting(tap)
    # a budget too small for any two layers' statistics forces chunks of one layer, whatever the cap
    result = calibrate(counting, items, cal, batch_size=8, max_chunk=99, stats_budget=1)
    batches = -(-cal.count // 8)
    assert counting.calls == 1 + batches * (2 * len(items) - 1)  # the size probe, then two passes per layer
    old = _old_calibrate(tap, items, cal, 8)
    assert set(result.factors) == set(old)
    for name, (dec, bias) in result.factors.items():
        np.testing.assert_array_equal(dec.first, old[name][0].first)
        np.testing.assert_array_equal(dec.second, old[name][0].second)
        np.testing.assert_array_equal(bias, old[name][1])


def test_a_large_chunk_takes_fewer_passes_and_beats_data_free(tmp_path):
    tap, items, cal, held = _onnx_setup(tmp_path)
    counting = _Counting(tap)
    fractions = []
    result = calibrate(counting, items, cal, batch_size=8, max_chunk=99, progress=fractions.append)
    batches = -(-cal.count // 8)
    names = [layer.name for layer, _ in items]
    # the size probe; all but the last layer in one chunk (one pass: its inputs are the original's); the last
    # layer alone (two passes)
    assert counting.calls == 1 + batches + 2 * batches
    assert counting.want[1:] == [names[:-1]] * batches + [names[-1:]] * (2 * batches)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert set(result.layers) == set(names) and not result.skipped
    for outcome in result.layers.values():
        assert outcome.calibrated <= outcome.data_free
    # chunks of two: the first chunk one pass per batch, each later one two
    counting.calls = 0
    calibrate(counting, items, cal, batch_size=8, max_chunk=2)
    assert counting.calls == 1 + batches * (1 + 2 * (-(-(len(items) - 1) // 2) - 1) + 2)
    free = overrides(tap, {layer.name: (d, None) for layer, d in items})
    scorer = evaluate(tap, {"data_free": free, "calibrated": overrides(tap, result.factors)}, held,
                      batch_size=6, num_classes=None)
    assert scorer.values("calibrated")["rel_l2"] <= scorer.values("data_free")["rel_l2"]


def test_activation_budget_splits_chunks(tmp_path):
    tap, items, cal, _ = _onnx_setup(tmp_path)
    counting = _Counting(tap)
    calibrate(counting, items, cal, batch_size=8, max_chunk=99, activation_budget=1)
    assert all(len(w) == 1 for w in counting.want[1:])  # each layer's inputs alone exceed 1 byte: chunks of one
