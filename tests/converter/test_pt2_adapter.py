"""The ``.pt2`` adapter against real ``torch.export.save`` files.

Every rewrite test checks a match (the rewritten conv), a non-match (the ``head`` conv keeps its weight) and
numerical equivalence: the converted file and the original, each loaded with plain ``torch.export.load`` in a
*fresh* Python process (one per test, for all its files), agree within ``TOL`` relative L2 at full rank.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import converter
from converter._errors import ConversionError, UnsupportedModelError
from converter.algebra._decompose import decompose, lower
from converter.formats import ConvLayer, FormatAdapter, Rewrite, adapter_for, detect_format, sniff_formats
from converter.formats._pt2 import Pt2Adapter
from tests.utils.models import build, export_pt2, export_torchscript
from tests.utils.ts_models import CONV_GRID, ConvCase, single_conv

TOL = 1e-5
FULL = 10**6
COMBOS = list(itertools.product(("dw-pw", "pw-dw"), ("split", "fused")))
ROOT = Path(__file__).resolve().parents[2]

pt2 = Pt2Adapter()

# A fresh interpreter that never imports converter: it reads one JSON list of jobs per line on stdin and
# answers one JSON line per list, loading every file with plain torch.export.load.
_COMPARE = """
import json, sys
import numpy as np, torch
for line in sys.stdin:
    out = []
    for orig, conv, x, batch2 in json.loads(line):
        x = torch.from_numpy(np.load(x))
        a, b = torch.export.load(orig).module(), torch.export.load(conv).module()
        ya, yb = a(x), b(x)
        err = float(np.linalg.norm((yb - ya).detach().double()) / np.linalg.norm(ya.detach().double()))
        shapes = []
        if batch2:  # a declared dynamic batch still works on the converted program
            x2 = torch.cat([x, x[:1]])
            shapes = [list(b(x2).shape), list(a(x2).shape)]
        out.append({"err": err, "shape": [list(ya.shape), list(yb.shape)], "batch2": shapes})
    print(json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def fresh_process() -> Iterator[subprocess.Popen]:
    """One fresh Python process for this module's comparisons (starting torch once, not per test)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _COMPARE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def _fresh_compare(proc: subprocess.Popen, tmp_path: Path,
                   jobs: list[tuple[Path, Path, torch.Tensor, bool]]) -> list[dict]:
    """Load each (original, converted) pair with ``torch.export.load`` in the fresh process and compare."""
    spec = []
    for i, (orig, conv, x, batch2) in enumerate(jobs):
        xp = tmp_path / f"x{i}.npy"
        np.save(xp, x.numpy())
        spec.append([str(orig), str(conv), str(xp), batch2])
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, "the comparison process died"
    return json.loads(line)


def _rewrite(layer: ConvLayer, order: str = "dw-pw", lowering: str = "split", rank: int = FULL) -> Rewrite:
    assert layer.weight is not None
    return Rewrite(layer, lower(decompose(layer.weight, layer.groups, order, rank), lowering))


# --- the interface, detection, loading --------------------------------------------------------------------------


def test_registered_detected_from_content(tmp_path: Path) -> None:
    model, x = build("vgg")
    path = export_pt2(model, x, tmp_path / "model.bin")  # the content decides, not the suffix
    assert isinstance(pt2, FormatAdapter) and isinstance(adapter_for("pt2"), Pt2Adapter)
    assert "pt2" in sniff_formats(path.read_bytes()[:4096])
    assert detect_format(path).name == "pt2"
    ts = export_torchscript(model, x, tmp_path / "ts.pt")
    assert not pt2.detect(ts) and detect_format(ts).name == "torchscript"
    assert not adapter_for("torchscript").detect(path) and not adapter_for("onnx").detect(path)


@pytest.mark.parametrize("case", CONV_GRID, ids=str)
def test_single_conv_full_rank_is_exact(tmp_path: Path, case: ConvCase, fresh_process: subprocess.Popen) -> None:
    """Each grid case, exported as training IR (``aten.conv{1,2,3}d``) and lowered to core ATen
    (``aten.convolution``), rewritten in every order and lowering (two per form), compared in a fresh process."""
    model, x = single_conv(case)
    shapes = {"x": tuple(x.shape)}
    jobs = []
    for decomposed in (False, True):
        src = export_pt2(model, x, tmp_path / f"orig-{decomposed}.pt2", decompose=decomposed)
        m = pt2.load(src, tmp_path)
        layers = pt2.find_convs(m, shapes)
        assert [layer.name for layer in layers] == ["conv", "head"]
        conv, head = layers
        r = case.rank
        if decomposed:
            assert conv.op == "aten.convolution.default"
        else:
            assert conv.op == f"aten.conv{r}d." + ("padding" if isinstance(case.padding, str) else "default")
        assert (conv.kernel, conv.groups, conv.in_channels, conv.out_channels, conv.transposed) == (
            case.kernel, case.groups, case.cin, case.cout, False)
        np.testing.assert_array_equal(conv.weight, model.conv.weight.detach().numpy())
        assert conv.in_spatial == case.spatial
        assert conv.out_spatial == tuple(model.conv(x).shape[2:])
        for order, lowering in COMBOS[int(decomposed)::2]:
            rw = _rewrite(conv, order, lowering)
            new = pt2.apply(pt2.load(src, tmp_path), [rw])
            after = pt2.find_convs(new, shapes)
            assert len(after) == len(rw.lowered.steps) + 1
            assert after[-1].name == "head"  # the non-match is untouched
            np.testing.assert_array_equal(after[-1].weight, head.weight)
            out = pt2.save(new, tmp_path / f"{decomposed}-{order}-{lowering}.pt2")
            jobs.append((src, out, x, True))
    for job, result in zip(jobs, _fresh_compare(fresh_process, tmp_path, jobs), strict=True):
        assert result["shape"][0] == result["shape"][1]
        assert result["err"] <= TOL, job[1].name
        if job[3]:
            assert result["batch2"][0] == result["batch2"][1] and result["batch2"][0][0] == case.batch + 1


class _WeightSources(nn.Module):
    """Convs whose weights are a parameter, a buffer, a lifted tensor constant, and one computed at run time."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.param = nn.Conv2d(4, 8, 3, padding=1)
        self.register_buffer("buffered", torch.randn(8, 8, 3, 3, generator=g))
        self.constant = torch.randn(6, 8, 3, 3, generator=g)  # a plain attribute: export lifts it
        self.scale = nn.Parameter(torch.ones(6, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.param(x))
        y = torch.nn.functional.conv2d(y, self.buffered, padding=1)
        y = torch.nn.functional.conv2d(y, self.constant, stride=2)
        return torch.nn.functional.conv2d(y, self.constant[:, :6] * self.scale, padding=1)


def test_weights_from_parameters_buffers_and_lifted_constants(tmp_path: Path, fresh_process: subprocess.Popen) -> None:
    model, x = _WeightSources().eval(), torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(x)
    src = export_pt2(model, x, tmp_path / "w.pt2")
    m = pt2.load(src, tmp_path)
    layers = pt2.find_convs(m, {"x": (1, 4, 12, 12)})
    assert [la.note is None for la in layers] == [True, True, True, False]
    assert "computed at run time" in layers[3].note
    np.testing.assert_array_equal(layers[1].weight, model.buffered.numpy())
    np.testing.assert_array_equal(layers[2].weight, model.constant.numpy())
    with pytest.raises(ConversionError, match="computed at run time"):  # refused before any edit
        pt2.apply(m, [_rewrite(layers[0]), Rewrite(layers[3], _rewrite(layers[2]).lowered)])
    assert len(pt2.find_convs(m, {})) == 4
    before = pt2.stats(m, {"x": (1, 4, 12, 12)})
    new = pt2.apply(m, [_rewrite(la, "pw-dw", "fused") for la in layers[:3]])
    after = pt2.stats(new, {"x": (1, 4, 12, 12)})
    assert after.params > before.params  # full rank costs more, and the old weights are gone from the program
    out = pt2.save(new, tmp_path / "out.pt2")
    (result,) = _fresh_compare(fresh_process, tmp_path, [(src, out, x, True)])
    assert result["err"] <= TOL and result["batch2"][0][0] == 3


def test_stats_count_what_the_model_holds_and_runs(tmp_path: Path) -> None:
    model, x = build("resnet")
    src = export_pt2(model, x, tmp_path / "r.pt2")
    m = pt2.load(src, tmp_path)
    stats = pt2.stats(m, {"x": (1, *x.shape[1:])})
    assert stats.params == sum(t.numel() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    convs = [mod for mod in model.modules() if isinstance(mod, nn.Conv2d)]
    sizes = {}
    hooks = [c.register_forward_hook(lambda mod, i, o: sizes.__setitem__(mod, o.shape)) for c in convs]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    conv_macs = sum(sizes[c].numel() * c.weight[0].numel() for c in convs)
    linear_macs = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    assert stats.macs == conv_macs + linear_macs
    assert pt2.stats(m, {}).macs is None
    spec = pt2.input_specs(m)[0]
    assert spec.name == "x" and isinstance(spec.shape[0], str) and spec.shape[1:] == tuple(x.shape[1:])


def test_convert_end_to_end_keeps_dynamic_batch(tmp_path: Path) -> None:
    model, x = build("resnet")
    src = export_pt2(model, x, tmp_path / "r.pt2")
    # planned on counts: decomposed, this small net's layers may measure slower on torch
    result = converter.convert(src, tmp_path / "slim.pt2", rank=2, input_shape=["x=2x3x32x32"], measure=False)
    r = result.report
    assert r.format == "pt2" and r.converted_layers and r.fidelity is not None
    assert r.fidelity.rel_l2 < 1 and r.latency.backend == "torch-cpu"
    assert r.params.converted < r.params.original
    program = torch.export.load(str(result.output_path))
    assert program.range_constraints  # the declared batch dim is still symbolic
    assert program.module()(torch.randn(5, 3, 32, 32)).shape == (5, 10)


# --- bad files ------------------------------------------------------------------------------------------------


def _rezip(src: Path, dest: Path, change) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            name, data = change(info.filename, zin.read(info))
            if name is not None:
                zout.writestr(name, data)
    return dest


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sepconv-pt2-pwned",))


def _pickled_config(name: str, data: bytes) -> tuple[str, bytes]:
    if name.endswith("_weights_config.json"):
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return name, json.dumps(config).encode()
    return name, data


def _evil_inputs(name: str, data: bytes) -> tuple[str, bytes]:
    return (name, pickle.dumps(_Boom())) if "sample_inputs" in name else (name, data)


@pytest.mark.parametrize(("kind", "message"), [
    ("truncated", "not a model sepconv reads"),
    ("not_a_program", "not a model sepconv reads"),
    ("dotdot", "points outside the archive"),
    ("compiled", "not part of a plain torch.export program"),
    ("pickled_weight", "stored pickled"),
    ("evil_sample_inputs", "weights_only=True"),
])
def test_bad_pt2_files_get_one_line(tmp_path: Path, kind: str, message: str) -> None:
    model, x = build("vgg")
    good = export_pt2(model, x, tmp_path / "good.pt2")
    bad = tmp_path / "bad.pt2"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "not_a_program":
        _rezip(good, bad, lambda n, d: (None, d) if n.endswith("archive_format") else (n, d))
    elif kind == "dotdot":
        _rezip(good, bad, lambda n, d: (n, d) if not n.endswith("byteorder") else ("good/../../evil", d))
    elif kind == "compiled":
        _rezip(good, bad, lambda n, d: (n, d) if not n.endswith("byteorder") else (n.replace(
            "byteorder", "data/aotinductor/model/model.so"), d))
    elif kind == "pickled_weight":
        _rezip(good, bad, _pickled_config)
    else:
        _rezip(good, bad, _evil_inputs)
    with pytest.raises(UnsupportedModelError, match=message) as e:
        adapter = detect_format(bad)
        adapter.load(bad, tmp_path / "work")
    assert "\n" not in str(e.value) and len(str(e.value)) < 300
    assert not Path("/tmp/sepconv-pt2-pwned").exists()
    if kind in ("dotdot", "compiled", "pickled_weight", "evil_sample_inputs"):
        with pytest.raises(UnsupportedModelError, match=message):
            pt2.runner(bad, tmp_path / "work", threads=1)


def test_torch_save_checkpoint_is_not_a_program(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(build("vgg")[0].state_dict(), buf)
    path = tmp_path / "weights.pt2"
    path.write_bytes(buf.getvalue())
    assert not pt2.detect(path)
    with pytest.raises(UnsupportedModelError, match=r"torch\.save checkpoint"):
        detect_format(path)
