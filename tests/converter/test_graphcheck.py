"""The op allowlist of untrusted graphs (converter/formats/_graphcheck.py): hostile TorchScript models are refused
before anything of them runs, naming the op and where it is; ordinary CNNs pass; ``trust_model`` bypasses the check."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import converter
from converter import UnsupportedModelError
from converter.formats._graphcheck import ALLOWED_OPS, check_fx_graph, check_torchscript, is_allowed, trusting
from tests.utils import models as zoo
from tests.utils.hostile_models import save_hostile


def _roundtrip(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    buf.seek(0)
    return torch.jit.load(buf)


@pytest.mark.parametrize("name", [*zoo.ZOO, "branchy"])
@pytest.mark.parametrize("mode", ["script", "trace"])
def test_zoo_models_pass(name: str, mode: str) -> None:
    model, x = zoo.build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.script(model) if mode == "script" else torch.jit.trace(model, x)
    check_torchscript(_roundtrip(module))


@pytest.mark.parametrize("layer", [nn.Hardswish(), nn.GELU(), nn.Upsample(scale_factor=2, mode="bilinear"),
                                   nn.GroupNorm(2, 8), nn.LayerNorm([8]), nn.PixelShuffle(2), nn.Mish(),
                                   nn.AdaptiveAvgPool2d(1), nn.ConvTranspose2d(8, 8, 2), nn.ReflectionPad2d(1),
                                   nn.MultiheadAttention(8, 2), nn.Dropout2d(), nn.PReLU()],
                         ids=lambda m: type(m).__name__)
def test_common_layers_pass(layer: nn.Module) -> None:
    check_torchscript(_roundtrip(torch.jit.script(layer)))


@pytest.mark.parametrize(("kind", "where"), [
    ("file_writer", "method forward of the top-level module"),
    ("fifo_reader", "method forward of the top-level module"),
    ("calls_function", "a function called by method forward"),
    ("hidden_method", "method side of the top-level module"),
])
def test_hostile_ops_refused_before_running(tmp_path: Path, kind: str, where: str) -> None:
    target = tmp_path / "outside" / "victim"
    target.parent.mkdir()
    if kind == "fifo_reader":
        os.mkfifo(target)
    path = save_hostile(kind, target, tmp_path / "m.pt")
    with pytest.raises(UnsupportedModelError) as info:
        converter.convert(path, tmp_path / "out.pt", input_shape={"x": (1, 3, 8, 8)})
    message = str(info.value)
    assert "aten::from_file" in message and where in message and "trust_model" in message
    assert "\n" not in message and ".py line" in message
    assert not (tmp_path / "out.pt").exists()
    if kind != "fifo_reader":
        assert not target.exists()


def test_setstate_refused_before_load(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    path = save_hostile("setstate", target, tmp_path / "m.pt")
    with pytest.raises(UnsupportedModelError, match="__setstate__"):
        converter.convert(path, tmp_path / "out.pt", input_shape={"x": (1, 3, 8, 8)})
    assert not target.exists()


def test_trust_model_bypasses_the_check(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    path = save_hostile("file_writer", target, tmp_path / "m.pt")
    result = converter.convert(path, tmp_path / "out.pt", input_shape={"x": (1, 3, 8, 8)}, trust_model=True,
                               latency_runs=1)
    assert result.report.format == "torchscript"
    assert target.read_bytes() == b"A" * 16  # the library ran what the user vouched for


def test_custom_namespace_op_refused() -> None:
    lib = torch.library.Library("sepconv_hostile", "DEF")  # kept alive for the test
    lib.define("touch(Tensor x) -> Tensor")
    lib.impl("touch", lambda x: x, "CompositeExplicitAutograd")

    class Custom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.sepconv_hostile.touch(x)

    with pytest.raises(UnsupportedModelError, match="sepconv_hostile::touch"):
        check_torchscript(_roundtrip(torch.jit.script(Custom())))
    with trusting(True):
        check_torchscript(_roundtrip(torch.jit.script(Custom())))


def test_allowlist_rules() -> None:
    assert is_allowed("aten::relu_") and is_allowed("aten::conv2d") and is_allowed("prim::If")
    assert not is_allowed("aten::from_file") and not is_allowed("aten::save") and not is_allowed("aten::set_")
    assert not is_allowed("prim::PythonOp") and not is_allowed("prim::fork") and not is_allowed("quantized::conv2d")
    assert not any(op.split("::")[0] not in ("aten", "prim") for op in ALLOWED_OPS)


def test_fx_graph_check() -> None:
    model, x = zoo.build("resnet")
    program = torch.export.export(model, (x,))
    check_fx_graph(program.graph_module)

    graph = torch.fx.Graph()
    inp = graph.placeholder("x")
    touched = graph.call_function(torch.ops.aten.from_file.default, ("/tmp/victim",),
                                  {"shared": True, "size": 16, "dtype": torch.uint8})
    graph.output(graph.call_function(torch.ops.aten.add.Tensor, (inp, touched)))
    gm = torch.fx.GraphModule(nn.Module(), graph)
    with pytest.raises(UnsupportedModelError, match=r"\.pt2 op aten::from_file .*node from_file"):
        check_fx_graph(gm)

    graph = torch.fx.Graph()
    inp = graph.placeholder("x")
    graph.output(graph.call_function(os.system, ("true",)))
    with pytest.raises(UnsupportedModelError, match=r"(posix|os)::system"):
        check_fx_graph(torch.fx.GraphModule(nn.Module(), graph))



class _Strided(nn.Module):
    def __init__(self, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        super().__init__()
        self.size, self.stride = size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_strided(x, self.size, self.stride) * 2


def test_strided_views_need_a_proof() -> None:
    """``as_strided``/``_reshape_alias`` pass in a .pt2 graph only where the recorded input bounds the view."""
    x = torch.randn(4, 4)
    check_fx_graph(torch.export.export(_Strided((2, 8), (8, 1)), (x,)).graph_module)  # in bounds
    program = torch.export.export(_Strided((1000,), (1000,)), (x,))  # tracing does not object
    with pytest.raises(UnsupportedModelError, match="takes raw strides and reaches"):
        check_fx_graph(program.graph_module)
    assert not is_allowed("aten::_reshape_alias") and not is_allowed("aten::as_strided")
