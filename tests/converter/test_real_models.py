"""Real third-party models that packages ship pass the checks and load (the corpus beside the hostile files of
``tests/utils/hostile_files.py``): a check that refuses real models is a bug too.

silero-vad ships its voice-activity model as TorchScript (``silero_vad.jit``: classes created in its methods,
``with torch.no_grad()`` blocks, an ``sr: int`` argument, 1-D convs, an LSTM) and as several ONNX exports
(If-branches per sample rate, opset 15 and 18, half precision, a sequence variant).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from converter.formats import adapter_for, detect_format, precheck

silero = pytest.importorskip("silero_vad", reason="silero-vad (a dev dependency) is not installed")
DATA = Path(str(importlib.resources.files("silero_vad") / "data"))
CORPUS = sorted(p for p in DATA.iterdir() if p.suffix in (".jit", ".onnx"))


def test_the_corpus_is_there() -> None:
    assert any(p.suffix == ".jit" for p in CORPUS) and sum(p.suffix == ".onnx" for p in CORPUS) >= 3


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_real_model_passes_the_checks_and_loads(path: Path, tmp_path: Path) -> None:
    name = precheck(path)  # the static checks the CLI and the service make before any loader runs
    adapter = detect_format(path)
    assert adapter.name == name
    model = adapter.load(path, tmp_path)  # the graph check, for TorchScript, runs here
    layers = adapter.find_convs(model, {})
    assert len(layers) >= 6
    assert all(layer.kernel for layer in layers)


def test_silero_jit_keeps_its_scalar_argument(tmp_path: Path) -> None:
    ts = adapter_for("torchscript")
    model = ts.load(DATA / "silero_vad.jit", tmp_path)
    specs = {s.name: s for s in ts.input_specs(model)}
    assert set(specs) == {"x", "sr"} and specs["sr"].scalar
