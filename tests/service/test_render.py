"""The terminal summary (``service/_render.py``) fits an 80-column terminal: one line per layer, long names elided
in their middle, the full names left to the JSON report."""

from __future__ import annotations

import io

from rich.console import Console

from converter import Counts, LayerReport, Report, Timings


def report(names: list[str]) -> Report:
    layers = [LayerReport(name=n, op="Conv", kernel=[3, 3], in_channels=64, out_channels=128, groups=1,
                          status="converted" if i % 2 == 0 else "skipped",
                          reason="energy 0.9" if i % 2 == 0 else "1×1 conv: already pointwise",
                          order="dw-pw" if i % 2 == 0 else None, rank=3 if i % 2 == 0 else None,
                          energy=0.91 if i % 2 == 0 else None, params_before=73_728,
                          params_after=20_000 if i % 2 == 0 else 73_728)
              for i, n in enumerate(names)]
    return Report(sepconv_version="0", format="onnx", params=Counts(original=10**6, converted=5 * 10**5),
                  macs=Counts(original=10**9, converted=4 * 10**8), file_bytes=Counts(original=4000, converted=2000),
                  policy={"kind": "energy", "value": 0.9, "order": "auto", "lowering": "split"}, layers=layers,
                  timings=Timings(load_s=0.1, convert_s=0.2, save_s=0.1))


def rendered(rep: Report, width: int) -> list[str]:
    from service._render import render_report

    buf = io.StringIO()
    render_report(rep, Console(file=buf, width=width, color_system=None), title="model.onnx → slim.onnx")
    return buf.getvalue().splitlines()


LONG = [f"/backbone/stage{i}/block.{i}/conv_bn_relu_with_a_long_name/features/features.{i}/Conv" for i in range(6)]


def test_long_names_are_elided_in_the_middle_and_each_layer_stays_on_one_line():
    lines = rendered(report(LONG), 80)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    table = [line for line in lines if "64→128" in line]
    assert len(table) == len(LONG)
    assert not any(line.startswith(("/", "Conv", "features")) for line in lines[:len(LONG) + 2]
                   if "64→128" not in line and "layer" not in line)  # no name continued on a second line
    for line, name in zip(table, LONG, strict=True):
        shown = line.split()[0]
        assert "…" in shown and shown.startswith("/backbone/") and name.endswith(shown.split("…")[1])
        assert "3×3" in line and "64→128" in line


def test_short_names_are_shown_whole():
    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    lines = rendered(report(names), 80)
    assert [line.split()[0] for line in lines if line.startswith(("conv", "layer1"))] == names


def test_a_wide_terminal_shows_more_of_each_name():
    narrow = [line.split()[0] for line in rendered(report(LONG), 80) if "64→128" in line]
    wide = [line.split()[0] for line in rendered(report(LONG), 160) if "64→128" in line]
    assert wide == LONG and all(len(n) < len(w) for n, w in zip(narrow, wide, strict=True))


def test_markup_in_names_is_printed_literally():
    lines = rendered(report(["[bold]evil[/bold]"]), 80)
    assert any(line.startswith("[bold]evil[/bold]") for line in lines)
