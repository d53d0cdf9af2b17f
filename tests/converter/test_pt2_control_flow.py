"""Convs inside ``.pt2`` control flow (``torch.cond`` branches, ``map`` bodies): found, reported with their shape
and skipped with the reason; the convs outside are converted as usual and the result stays exact at full rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import converter
from tests.utils.onnx_models import rel_l2


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.b(t), (x,))
        return self.c(torch.relu(y))


def test_convs_in_cond_branches_are_found_and_skipped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = Branchy().eval(), torch.randn(2, 3, 8, 8)
    src = tmp_path / "cond.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(src))
    # torch.cond is outside the graph check's allowlist: the user trusts this model
    result = converter.convert(src, tmp_path / "slim.pt2", rank=99, force=True, trust_model=True, measure=False,
                               input_shape={"x": (2, 3, 8, 8)})
    layers = {la.name: la for la in result.report.layers}
    assert set(layers) == {"a", "b", "c"}
    assert layers["c"].status == "converted"
    for name in ("a", "b"):
        la = layers[name]
        assert la.status == "skipped" and "torch.cond branch" in la.reason and "not converted" in la.reason
        assert (la.in_channels, la.out_channels, la.kernel) == (3, 8, [3, 3])
    out = torch.export.load(str(result.output_path)).module()
    for sample in (x, -x.abs()):  # both branches
        assert rel_l2(out(sample).detach().numpy(), model(sample).detach().numpy()) <= 1e-5
    assert np.isfinite(result.report.fidelity.rel_l2)


def test_convs_in_map_bodies_are_found_and_skipped(tmp_path: Path) -> None:
    from torch._higher_order_ops.map import map as torch_map

    from converter.formats import detect_format, trusting

    class Mapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, xs: torch.Tensor) -> torch.Tensor:
            return torch_map(lambda t: self.a(t), xs)

    src = tmp_path / "map.pt2"
    torch.export.save(torch.export.export(Mapped().eval(), (torch.randn(2, 1, 3, 8, 8),)), str(src))
    adapter = detect_format(src)
    with trusting(True):
        model = adapter.load(src, tmp_path)
    (layer,) = adapter.find_convs(model, {})
    assert layer.name == "a" and layer.weight is None and "torch.map body" in layer.note
    assert (layer.in_channels, layer.out_channels, layer.kernel) == (3, 4, (3, 3))
