"""Recovery through the library: ``convert(data=, eval=)`` calibrates on every format, reports accuracy with
stable keys, never ships a calibrated model worse than the data-free one, and refuses bad data in one line."""

from __future__ import annotations

import numpy as np
import pytest

import converter
from converter import InvalidOptionsError
from converter.formats import detect_format
from tests.utils.models import build, export_onnx, export_pt2, export_torchscript

FORMATS = ["onnx", "torchscript", "pt2"]


def _model(tmp_path, fmt):
    model, x = build("vgg")
    if fmt == "onnx":
        path = tmp_path / "m.onnx"
        export_onnx(model, x, path, dynamic="batch")
    elif fmt == "pt2":
        path = export_pt2(model, x, tmp_path / "m.pt2")
    else:
        path = export_torchscript(model, x, tmp_path / "m.pt", mode="trace")
    return path


def _images(n, seed):
    # smooth images: structure that calibration can learn from
    base = np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)
    return np.repeat(np.repeat(base, 4, axis=2), 4, axis=3)


def _run(path, x):
    adapter = detect_format(path)
    run, _ = adapter.runner(path, path.parent, None)
    return run({adapter.input_specs(adapter.load(path, path.parent))[0].name: x})[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_calibration_through_convert(tmp_path, fmt):
    src = _model(tmp_path, fmt)
    np.savez(tmp_path / "data.npz", inputs=_images(40, 0))
    out = tmp_path / f"slim{src.suffix}"
    shape = {"input_shape": "x=1x3x32x32"} if fmt == "torchscript" else {}
    r = converter.convert(src, out, data=tmp_path / "data.npz", rank=1, verify=False, **shape).report
    a = r.accuracy
    assert a is not None and a.metric == "top1_agreement"
    assert a.samples == 8 and "held out" in a.held_out and a.calibration_samples == 32
    assert a.original == 1.0 and a.kept == "calibrated"
    assert a.rel_l2.calibrated < a.rel_l2.data_free and a.finetuned is None
    assert r.timings.calibrate_s is not None and r.timings.calibrate_s > 0
    converted = [layer for layer in r.layers if layer.status == "converted"]
    assert converted and all(layer.calibration in ("refit", "whitened", "alternating") for layer in converted)
    assert all(layer.output_error.calibrated < layer.output_error.data_free for layer in converted)
    # The written file is the calibrated model the report measured (same held-out split: seed 0).
    _, held = converter.data.load_samples(tmp_path / "data.npz", detect_format(src).input_specs(
        detect_format(src).load(src, tmp_path))).split(0.2, 0)
    (batch, _), = list(held.batches(64))
    x = next(iter(batch.values()))
    y0, y1 = _run(src, x), _run(out, x)
    assert np.linalg.norm(y1 - y0) / np.linalg.norm(y0) == pytest.approx(a.rel_l2.calibrated, rel=1e-3)


def test_labels_give_top1_and_top5(tmp_path):
    src = _model(tmp_path, "onnx")
    np.savez(tmp_path / "data.npz", inputs=_images(24, 0))
    np.savez(tmp_path / "eval.npz", inputs=_images(10, 1), labels=np.arange(10))
    a = converter.convert(src, tmp_path / "slim.onnx", data=tmp_path / "data.npz", eval=tmp_path / "eval.npz",
                          rank=2, verify=False).report.accuracy
    assert a.metric == "top1" and a.samples == 10 and a.held_out == "eval.npz: 10 samples"
    assert a.calibration_samples == 24
    assert a.top5 is not None and a.top5.original is not None and a.top1_agreement.original == 1.0
    assert set(a.model_dump()) >= {"metric", "samples", "original", "data_free", "calibrated", "finetuned"}


def test_never_worse_falls_back_to_data_free(tmp_path, monkeypatch):
    import converter.recovery._calibrate as calibrate

    monkeypatch.setattr(calibrate, "better", lambda *_: False)
    src = _model(tmp_path, "onnx")
    np.savez(tmp_path / "data.npz", inputs=_images(20, 0))
    r = converter.convert(src, tmp_path / "slim.onnx", data=tmp_path / "data.npz", rank=1, verify=False).report
    assert r.accuracy.kept == "data_free" and "data-free factors were kept" in r.accuracy.note
    assert any("data-free factors were kept" in w for w in r.warnings)
    # the same plan (with data, forms are chosen on the output error) with its data-free factors
    converter.convert(src, tmp_path / "free.onnx", data=tmp_path / "data.npz", rank=1, recover="none", verify=False)
    x = _images(3, 5)
    np.testing.assert_array_equal(_run(tmp_path / "slim.onnx", x), _run(tmp_path / "free.onnx", x))


def test_recover_none_and_eval_only_measure_without_calibrating(tmp_path):
    src = _model(tmp_path, "onnx")
    np.savez(tmp_path / "data.npz", inputs=_images(10, 0))
    for kwargs in ({"data": tmp_path / "data.npz", "recover": "none"}, {"eval": tmp_path / "data.npz"}):
        a = converter.convert(src, tmp_path / "slim.onnx", rank=1, verify=False, **kwargs).report.accuracy
        assert a.calibrated is None and a.kept == "data_free" and a.data_free is not None
    with pytest.raises(InvalidOptionsError, match="recover=calibrate needs samples"):
        converter.convert(src, tmp_path / "slim.onnx", rank=1, recover="calibrate")


@pytest.mark.parametrize(("arrays", "message"), [
    ({"inputs": np.zeros((4, 3, 16, 16), np.float32)}, "fixes dim 2 to 32"),
    ({"inputs": np.zeros((4, 3, 32, 32), np.float32), "labels": np.array([0, 1, 2, 12])}, "scores 10"),
])
def test_bad_data_is_one_line(tmp_path, arrays, message):
    src = _model(tmp_path, "onnx")
    np.savez(tmp_path / "data.npz", **arrays)
    with pytest.raises(InvalidOptionsError, match=message) as e:
        converter.convert(src, tmp_path / "slim.onnx", data=tmp_path / "data.npz", eval=tmp_path / "data.npz",
                          rank=1, verify=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "slim.onnx").exists()


def test_scalar_input_is_given_with_every_batch(tmp_path):
    """A non-tensor input (a TorchScript ``float`` argument) comes from a 0-d array of the data file."""
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor, gain: float) -> torch.Tensor:
            return self.b(torch.relu(self.a(x))) * gain

    torch.manual_seed(0)
    path = tmp_path / "scaled.pt"
    torch.jit.save(torch.jit.script(Scaled().eval()), str(path))
    np.savez(tmp_path / "data.npz", x=_images(20, 0)[:, :, :16, :16], gain=np.array(2.0))
    r = converter.convert(path, tmp_path / "slim.pt", data=tmp_path / "data.npz", rank=1, verify=False,
                          input_shape="x=1x3x16x16").report
    assert r.accuracy is not None and r.accuracy.metric == "top1_agreement" and r.accuracy.samples == 4
    assert r.accuracy.rel_l2.calibrated <= r.accuracy.rel_l2.data_free


def test_finetuned_model_is_scored_on_the_accuracy_metric(tmp_path):
    # Unlabelled training data (fine-tuning early-stops on agreement) and a labelled --eval (the accuracy
    # section's metric is top1): the written fine-tuned model is scored on top1 all the same, and is what `kept`
    # names.
    src = _model(tmp_path, "onnx")
    np.savez(tmp_path / "data.npz", inputs=_images(32, 0))
    labels = np.arange(12) % 10
    np.savez(tmp_path / "eval.npz", inputs=_images(12, 1), labels=labels)
    out = tmp_path / "slim.onnx"
    r = converter.convert(src, out, data=tmp_path / "data.npz", eval=tmp_path / "eval.npz", rank=1, verify=False,
                          recover="finetune", epochs=3, seed=0, measure=False).report
    a = r.accuracy
    assert a.metric == "top1" and r.finetune is not None and r.finetune.metric == "top1_agreement"
    assert a.kept == "finetuned" and a.finetuned is not None and a.top1_agreement.finetuned is not None
    x = _images(12, 1)
    top1 = float((_run(out, x).argmax(axis=1) == labels).mean())
    assert a.finetuned == pytest.approx(top1, abs=1e-6)
