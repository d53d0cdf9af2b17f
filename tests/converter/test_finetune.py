"""Fine-tuning: trainable views of ONNX and TorchScript, the distillation loop, write-back into the user's graph,
checkpoints and resume, interruption, and the errors a user meets. Tiny models, a few steps each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import converter
from converter import InvalidOptionsError, UnsupportedModelError
from converter.data import load_samples
from converter.formats import adapter_for
from converter.recovery.finetune import FinetuneOptions, _loop, finetune, trainable_view
from converter.recovery.finetune._view import original_digests
from tests.utils.finetune_models import TinyNet, tiny_files
from tests.utils.models import build, export_onnx
from tests.utils.onnx_models import make_model, output, rel_l2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny net as ONNX and TorchScript, converted at rank 1, and a .npz of 48 labelled samples. Planned on
    counts (``measure=False``): decomposed, the tiny net's layers may measure slower, and these tests need them
    converted."""
    d = tmp_path_factory.mktemp("finetune")
    files = tiny_files(d)
    files["onnx"].rename(d / "orig.onnx")
    files["torchscript"].rename(d / "orig.pt")
    converter.convert(d / "orig.onnx", d / "conv.onnx", rank=1, verify=False, measure=False)
    converter.convert(d / "orig.pt", d / "conv.pt", rank=1, verify=False, measure=False,
                      input_shape={"x": (2, 1, 8, 8)})
    return {"dir": d, "onnx": d / "orig.onnx", "torchscript": d / "orig.pt", "conv-onnx": d / "conv.onnx",
            "conv-torchscript": d / "conv.pt", "data": d / "data.npz"}


def _samples(tiny: dict[str, Path], fmt: str):
    adapter = adapter_for(fmt)
    model = adapter.load(tiny[f"conv-{fmt}"], tiny["dir"] / "load")
    specs = adapter.input_specs(model)
    samples = load_samples(tiny["data"], specs, num_classes=4)
    return samples.split(0.25, seed=0)


def _run(tiny: dict[str, Path], fmt: str, dest: Path, **kw):
    train, held = _samples(tiny, fmt)
    options = FinetuneOptions(**{"epochs": 3, "batch_size": 12, "lr": 5e-3, **kw.pop("options", {})})
    return finetune(tiny[f"conv-{fmt}"], tiny[fmt], dest, fmt=fmt, train=train, holdout=held, options=options,
                    workdir=dest.parent / f"work-{dest.stem}", **kw)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_onnx_finetune_writes_trained_factors_into_the_users_graph(tiny, tmp_path):
    result = _run(tiny, "onnx", tmp_path / "ft.onnx")
    assert result.path == tmp_path / "ft.onnx" and result.metric == "top1" and result.epochs >= 1
    before, after = onnx.load(tiny["conv-onnx"]), onnx.load(result.path)
    onnx.checker.check_model(after, full_check=True)
    # Same graph: nodes, names, opset, inputs (dynamic batch dim kept); only factor values differ.
    assert [(n.name, n.op_type, list(n.input)) for n in before.graph.node] == \
        [(n.name, n.op_type, list(n.input)) for n in after.graph.node]
    assert before.opset_import == after.opset_import and before.graph.input == after.graph.input
    old = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    assert old.keys() == new.keys()
    changed = {n for n in old if not np.array_equal(old[n], new[n])}
    original = {t.name for t in onnx.load(tiny["onnx"]).graph.initializer}
    assert changed and all(new[n].dtype == old[n].dtype for n in changed)
    assert "head.weight" not in changed and not (changed & (original - {n for n in original if "bias" in n}))
    # The written model runs in onnxruntime exactly as its trainable view computes it.
    x = np.load(tiny["data"])["inputs"][:6]
    view = trainable_view("onnx", result.path, tmp_path / "v", original_digests("onnx", tiny["onnx"], tmp_path / "o"))
    assert rel_l2(view.module(torch.from_numpy(x))[0].detach().numpy(), _ort(result.path, x)) < 1e-5
    assert rel_l2(_ort(result.path, x), _ort(tiny["conv-onnx"], x)) > 1e-4


def test_torchscript_finetune_loads_in_a_fresh_process(tiny, tmp_path):
    result = _run(tiny, "torchscript", tmp_path / "ft.pt", options={"scope": "all"})
    assert result.scope == "all" and result.history
    x = np.load(tiny["data"])["inputs"][:6]
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, torch; m = torch.jit.load(sys.argv[1]); "
            "np.save(sys.argv[3], m(torch.from_numpy(np.load(sys.argv[2]))).detach().numpy())")
    subprocess.run([sys.executable, "-c", code, str(result.path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, timeout=120)
    fresh = np.load(tmp_path / "y.npy")
    view = trainable_view("torchscript", result.path, tmp_path / "v",
                          original_digests("torchscript", tiny["torchscript"], tmp_path / "o"))
    assert rel_l2(view.module(torch.from_numpy(x))[0].detach().numpy(), fresh) < 1e-5
    untrained = torch.jit.load(str(tiny["conv-torchscript"]))(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(fresh, untrained) > 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_finetune_recovers_distillation_loss(tiny, tmp_path, fmt):
    result = _run(tiny, fmt, tmp_path / f"ft.{fmt}", options={"epochs": 4, "patience": 10})
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.after >= result.before  # never worse than the converted model on the held-out samples


def test_interrupted_finetune_resumes_to_the_same_weights(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(_loop, "CHECKPOINT_EVERY_S", 0.0)  # checkpoint at every batch
    straight = _run(tiny, "onnx", tmp_path / "straight.onnx", checkpoint_dir=tmp_path / "ck1")
    assert not straight.resumed

    calls = []

    def interrupt(fraction: float, detail: dict) -> None:
        calls.append(fraction)
        if len(calls) == 6:  # after the first batch of the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tiny, "onnx", tmp_path / "cut.onnx", checkpoint_dir=tmp_path / "ck2", progress=interrupt)
    assert (tmp_path / "ck2" / "finetune.ckpt").is_file() and not (tmp_path / "cut.onnx").exists()
    resumed = _run(tiny, "onnx", tmp_path / "cut.onnx", checkpoint_dir=tmp_path / "ck2")
    assert resumed.resumed and resumed.epochs == straight.epochs and resumed.history == straight.history
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(straight.path).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(resumed.path).graph.initializer}
    assert all(np.array_equal(a[n], b[n]) for n in a)


def test_checkpoint_of_other_options_is_not_reused(tiny, tmp_path):
    _run(tiny, "onnx", tmp_path / "a.onnx", checkpoint_dir=tmp_path / "ck", options={"epochs": 1})
    other = _run(tiny, "onnx", tmp_path / "b.onnx", checkpoint_dir=tmp_path / "ck", options={"epochs": 2})
    assert not other.resumed and other.epochs == 2


def test_time_budget_stops_training(tiny, tmp_path):
    result = _run(tiny, "onnx", tmp_path / "t.onnx", options={"minutes": 1e-6, "epochs": 50})
    assert result.stopped == "time" and result.epochs == 1


def test_unsupported_op_names_the_node(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("LRN", ["c"], ["y"], name="norm", size=3)],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])], [output("y", 4)],
        initializer=[w])
    (tmp_path / "lrn.onnx").write_bytes(make_model(graph).SerializeToString())
    converter.convert(tmp_path / "lrn.onnx", tmp_path / "slim.onnx", rank=1, verify=False)
    with pytest.raises(UnsupportedModelError, match=r"node 'norm' \(op LRN\)") as e:
        trainable_view("onnx", tmp_path / "slim.onnx", tmp_path / "v", set())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("op", "given"), [("Add", [1, None]), ("Reshape", [1, None]), ("Unsqueeze", [1]),
                                           ("Conv", [None, 1]), ("Relu", [])])
def test_op_without_a_required_input_is_unsupported(op, given):
    # A node that omits a required input (or an Unsqueeze without axes) is malformed: a typed error, which the
    # view turns into UnsupportedModelError naming the node, not an AttributeError on None.
    from types import SimpleNamespace

    from converter.formats._onnx._torch_ops import OPS, UnsupportedNode

    node = SimpleNamespace(op_type=op, name="n", attributes={}, outputs=[None])
    inputs = [None if g is None else torch.ones(1, 1, 3, 3) for g in given]
    with pytest.raises(UnsupportedNode, match=r"required input|without axes"):
        OPS[op](node, inputs, 17)


def test_nothing_converted_is_a_clear_error(tiny, tmp_path):
    train, held = _samples(tiny, "onnx")
    with pytest.raises(InvalidOptionsError, match="no converted layer"):
        finetune(tiny["onnx"], tiny["onnx"], tmp_path / "x.onnx", fmt="onnx", train=train, holdout=held,
                 options=FinetuneOptions(epochs=1), workdir=tmp_path / "w")


def test_cuda_without_a_gpu_is_refused():
    from converter._device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InvalidOptionsError, match="no CUDA GPU"):
        resolve_device("cuda", runtime="torch")


@pytest.mark.parametrize("name", ["vgg", "resnet", "mobilenet", "unet", "audio", "video"])
def test_onnx_view_matches_onnxruntime_on_the_zoo(tmp_path, name):
    model, x = build(name)
    export_onnx(model, x, tmp_path / "a.onnx", opset=11 if name == "unet" else 17)
    converter.convert(tmp_path / "a.onnx", tmp_path / "b.onnx", rank=1, verify=False)
    view = trainable_view("onnx", tmp_path / "b.onnx", tmp_path, original_digests("onnx", tmp_path / "a.onnx",
                                                                                  tmp_path))
    assert view.factors and set(view.factors) <= set(view.params)
    got = view.module(x)[0].detach().numpy()
    assert rel_l2(got, _ort(tmp_path / "b.onnx", x.numpy())) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_finetune_on_cuda(tiny, tmp_path, fmt):
    result = _run(tiny, fmt, tmp_path / f"gpu.{fmt}", options={"device": "cuda", "epochs": 2})
    assert result.device == "cuda" and result.path.is_file()


def test_pt2_view_trains_and_writes_into_the_exported_program(tmp_path):
    model, x = build("resnet")
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "a.pt2"))
    # Nothing is "original" here, so every conv weight counts as a factor.
    view = trainable_view("pt2", tmp_path / "a.pt2", tmp_path, set())
    assert view.input_names == ["x"] and view.factors
    for name in view.factors:
        view.params[name].requires_grad_(True)
    view.module(x)[0].square().mean().backward()
    with torch.no_grad():
        for name in view.factors:
            view.params[name].sub_(0.1 * view.params[name].grad)
        trained = view.module(x)[0]
    written = view.write(tmp_path / "b.pt2", view.factors)
    loaded = torch.export.load(str(written))
    assert rel_l2(loaded.module()(x).detach().numpy(), trained.numpy()) < 1e-6
    assert rel_l2(trained.numpy(), program.module()(x).detach().numpy()) > 1e-4
    assert str(loaded.graph) == str(torch.export.load(str(tmp_path / "a.pt2")).graph)
    assert loaded.module()(torch.randn(5, *x.shape[1:])).shape[0] == 5  # the dynamic batch dim is kept


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_convert_with_recover_finetune(tiny, tmp_path, fmt):
    events: list[tuple] = []
    result = converter.convert(tiny[fmt], tmp_path / f"out.{fmt}", rank=1, recover="finetune", data=tiny["data"],
                               epochs=2, batch_size=12, input_shape={"x": (2, 1, 8, 8)}, latency_runs=1,
                               measure=False,  # converted even where the tiny layers measure slower
                               progress=lambda stage, fraction, detail: events.append((stage, fraction, detail)))
    report = result.report
    assert report.finetune is not None and report.finetune.train_samples + report.finetune.holdout_samples == 48
    assert report.timings.finetune_s > 0 and report.fidelity is not None  # verified like any converted model
    assert any(stage == "finetune" and detail and "loss" in detail for stage, _, detail in events)
    fractions = [f for _, f, _ in events]
    assert fractions == sorted(fractions)


def test_convert_finetune_needs_data(tiny, tmp_path):
    with pytest.raises(InvalidOptionsError, match="needs samples"):
        converter.convert(tiny["onnx"], tmp_path / "o.onnx", rank=1, recover="finetune", verify=False)


def test_convert_pt2_with_recover_finetune_loads_in_a_fresh_process(tiny, tmp_path):
    x = torch.from_numpy(np.load(tiny["data"])["inputs"][:6])
    torch.manual_seed(0)  # the fixture's TinyNet, exported with torch.export
    program = torch.export.export(TinyNet().eval(), (x[:2],), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "tiny.pt2"))
    result = converter.convert(tmp_path / "tiny.pt2", tmp_path / "out.pt2", rank=1, recover="finetune",
                               data=tiny["data"], epochs=2, batch_size=12, measure=False, latency_runs=1)
    assert result.format == "pt2" and result.report.finetune is not None
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import sys, numpy as np, torch; m = torch.export.load(sys.argv[1]).module(); "
            "np.save(sys.argv[3], m(torch.from_numpy(np.load(sys.argv[2]))).detach().numpy())")
    subprocess.run([sys.executable, "-c", code, str(result.output_path), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, timeout=120)
    fresh = np.load(tmp_path / "y.npy")
    view = trainable_view("pt2", result.output_path, tmp_path / "v", set())
    assert rel_l2(view.module(x)[0].detach().numpy(), fresh) < 1e-6

