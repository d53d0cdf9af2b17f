"""Small charts as inline SVG strings, for the HTML report (``_html.py``).

Why hand-written SVG rather than a plotting library: the report must be one self-contained file that opens with
no network, prints, and reads on a phone. SVG text stays text (selectable, sharp when printed, scaled by the
``viewBox``), a chart costs a few kilobytes, no JavaScript is needed to draw it, and the charts the report needs
(bars per layer, dots on a 0–1 scale, two histograms, a stacked bar, a scatter) are a few dozen lines each. matplotlib
would add a large dependency to the library (and to the torch-free SDK's users who render reports) for the
same pictures; a JS chart library would have to be inlined (tens of kilobytes) and would not print as reliably.

Every function takes plain numbers and labels and returns markup; every label is escaped here. Nothing in this
module knows what a report is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ["CONVERTED", "ORIGINAL", "Point", "dots", "elide", "hbars", "histogram", "lines", "ranges", "scatter",
           "stacked", "vbars"]

#: Colours of the two models in every chart: grey and blue differ in lightness as well as hue, so they stay
#: apart with the common colour-vision deficiencies and in greyscale print.
ORIGINAL = "#9aa5b1"
CONVERTED = "#1f6feb"

_W = 480  # viewBox width; the SVG scales to its container (about 0.75 on a phone, so text stays legible)
_LABEL_W = 150
_FONT = 13
Series = tuple[str, str]  # (name, colour)


def elide(text: str, width: int) -> str:
    """``text`` shortened to ``width`` characters by cutting its middle (``/features/…/Conv``)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = (width - 1) // 2  # the tail gets the extra character: layer names differ most at their ends
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def _nice_step(span: float, ticks: int = 5) -> float:
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo: float, hi: float, ticks: int = 5) -> list[float]:
    step = _nice_step(hi - lo, ticks)
    start = math.floor(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            out.append(round(v, 12))
        v += step
    return out


def _svg(height: float, body: list[str], label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {_W} {height:.0f}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg" font-size="{_FONT}" font-family="system-ui, sans-serif">'
            f"<title>{escape(label)}</title>{''.join(body)}</svg>")


def _legend(series: Sequence[Series], y: float, x: float = _LABEL_W) -> tuple[str, float]:
    """The legend from ``(x, y)``, wrapped onto more lines when it would leave the chart; and the height it
    added below the first line."""
    parts = []
    x0, y0 = x, y
    for name, colour in series:
        width = 30 + 7.5 * len(name)
        if x > x0 and x + width > _W:
            x, y = x0, y + 18
        parts.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{x + 17:.1f}" y="{y:.1f}">{escape(name)}</text>')
        x += width
    return "".join(parts), y - y0


def _axis(x0: float, x1: float, lo: float, hi: float, y_top: float, y_bot: float, fmt: Callable[[float], str]
          ) -> tuple[list[str], Callable[[float], float]]:
    """Vertical grid lines with tick labels under the plot, and the value → x mapping."""
    span = hi - lo if hi > lo else 1.0

    def sx(v: float) -> float:
        return x0 + (v - lo) / span * (x1 - x0)

    out = []
    for t in _ticks(lo, hi):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_top:.1f}" y2="{y_bot:.1f}" stroke="#d0d7de" '
                   f'stroke-width="0.8"/><text x="{x:.1f}" y="{y_bot + 15:.1f}" text-anchor="middle" '
                   f'fill="#57606a">{escape(fmt(t))}</text>')
    return out, sx


def hbars(rows: Sequence[tuple[str, Sequence[float | None]]], series: Sequence[Series], *,
          fmt: Callable[[float], str], label: str) -> str:
    """Horizontal grouped bars, one group per row (layer), one bar per series, linear scale from 0.

    A ``None`` value draws nothing (unknown), which differs from a zero-length bar.
    """
    per = len(series)
    bar_h, gap = 9.0, 7.0
    row_h = per * bar_h + gap
    legend, extra = _legend(series, 14)
    top = 26.0 + extra
    height = top + len(rows) * row_h + 26
    hi = max((v for _, vals in rows for v in vals if v is not None), default=0.0) or 1.0
    grid, sx = _axis(_LABEL_W, _W - 60, 0.0, hi, top - 4, top + len(rows) * row_h, fmt)
    body = [legend, *grid]
    for i, (name, vals) in enumerate(rows):
        y = top + i * row_h
        body.append(f'<text x="{_LABEL_W - 6}" y="{y + per * bar_h / 2 + 4:.1f}" text-anchor="end">'
                    f"<title>{escape(name)}</title>{escape(elide(name, 20))}</text>")
        for j, (v, (sname, colour)) in enumerate(zip(vals, series, strict=True)):
            if v is None:
                continue
            w = max(sx(v) - _LABEL_W, 0.0)
            yb = y + j * bar_h
            body.append(f'<rect x="{_LABEL_W}" y="{yb:.1f}" width="{w:.1f}" height="{bar_h - 1:.1f}" '
                        f'fill="{colour}"><title>{escape(name)} · {escape(sname)}: {escape(fmt(v))}</title></rect>')
        last = next((v for v in reversed(vals) if v is not None), None)
        if last is not None:
            body.append(f'<text x="{sx(max(v for v in vals if v is not None)) + 4:.1f}" '
                        f'y="{y + per * bar_h / 2 + 4:.1f}" font-size="11" fill="#57606a">{escape(fmt(last))}</text>')
    return _svg(height, body, label)


def dots(rows: Sequence[tuple[str, Sequence[float | None]]], series: Sequence[Series], *, lo: float = 0.0,
         hi: float | None = None, fmt: Callable[[float], str], label: str) -> str:
    """One line per row (layer) with a dot per series on a shared linear scale (``hi`` defaults to the data)."""
    legend, extra = _legend(series, 14)
    row_h, top = 17.0, 26.0 + extra
    height = top + len(rows) * row_h + 26
    vals_all = [v for _, vals in rows for v in vals if v is not None]
    top_v = hi if hi is not None else (max(vals_all, default=1.0) or 1.0)
    grid, sx = _axis(_LABEL_W, _W - 20, lo, top_v, top - 4, top + len(rows) * row_h, fmt)
    body = [legend, *grid]
    for i, (name, vals) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        body.append(f'<text x="{_LABEL_W - 6}" y="{y + 4:.1f}" text-anchor="end"><title>{escape(name)}</title>'
                    f"{escape(elide(name, 20))}</text>"
                    f'<line x1="{_LABEL_W}" x2="{_W - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        for v, (sname, colour) in zip(vals, series, strict=True):
            if v is None:
                continue
            x = sx(min(max(v, lo), top_v))
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{colour}">'
                        f"<title>{escape(name)} · {escape(sname)}: {escape(fmt(v))}</title></circle>")
    return _svg(height, body, label)


def vbars(bars: Sequence[tuple[str, float, str]], *, lo: float = 0.0, hi: float | None = None,
          fmt: Callable[[float], str], label: str) -> str:
    """Vertical bars with their values on top: ``(category, value, colour)``."""
    height, top, bottom, left = 240.0, 20.0, 40.0, 64.0
    top_v = hi if hi is not None else (max((v for _, v, _ in bars), default=1.0) or 1.0)
    span = top_v - lo or 1.0

    def sy(v: float) -> float:
        return height - bottom - (v - lo) / span * (height - bottom - top)

    body = []
    for t in _ticks(lo, top_v, 4):
        y = sy(t)
        body.append(f'<line x1="{left}" x2="{_W - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d7de" '
                    f'stroke-width="0.8"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                    f'fill="#57606a">{escape(fmt(t))}</text>')
    slot = (_W - 10 - left) / max(len(bars), 1)
    for i, (name, v, colour) in enumerate(bars):
        x = left + i * slot + slot * 0.2
        y = sy(max(v, lo))
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.6:.1f}" height="{sy(lo) - y:.1f}" '
                    f'fill="{colour}"><title>{escape(name)}: {escape(fmt(v))}</title></rect>'
                    f'<text x="{x + slot * 0.3:.1f}" y="{y - 5:.1f}" text-anchor="middle" font-weight="600">'
                    f"{escape(fmt(v))}</text>"
                    f'<text x="{x + slot * 0.3:.1f}" y="{height - bottom + 18:.1f}" text-anchor="middle">'
                    f"{escape(name)}</text>")
    return _svg(height, body, label)


def histogram(series: Sequence[tuple[str, str, Sequence[float]]], *, fmt: Callable[[float], str],
              label: str, bins: int = 30) -> str:
    """Overlaid histograms of samples (one per series, translucent), each with its median marked."""
    allv = [v for _, _, vals in series for v in vals]
    lo, hi = min(allv), max(allv)
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.01
    width = (hi - lo) / bins
    counts = []
    for _, _, vals in series:
        c = [0] * bins
        for v in vals:
            c[min(int((v - lo) / width), bins - 1)] += 1
        counts.append(c)
    cmax = max(max(c) for c in counts) or 1
    legend, extra = _legend([(n, c) for n, c, _ in series], 14, 20.0)
    height, top, bottom, left = 230.0 + extra, 28.0 + extra, 40.0, 20.0
    grid, sx = _axis(left, _W - 20, lo, hi, top, height - bottom, fmt)
    body = [legend, *grid]
    for (name, colour, vals), c in zip(series, counts, strict=True):
        for b, n in enumerate(c):
            if not n:
                continue
            h = n / cmax * (height - bottom - top)
            x = sx(lo + b * width)
            body.append(f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{max(sx(lo + width) - sx(lo), 1):.1f}"'
                        f' height="{h:.1f}" fill="{colour}" fill-opacity="0.55"><title>{escape(name)}: {n} run(s) '
                        f"{escape(fmt(lo + b * width))}–{escape(fmt(lo + (b + 1) * width))}</title></rect>")
        med = sorted(vals)[len(vals) // 2]
        body.append(f'<line x1="{sx(med):.1f}" x2="{sx(med):.1f}" y1="{top:.1f}" y2="{height - bottom:.1f}" '
                    f'stroke="{colour}" stroke-width="2" stroke-dasharray="4 3"><title>{escape(name)} median '
                    f"{escape(fmt(med))}</title></line>")
    return _svg(height, body, label)


def ranges(series: Sequence[tuple[str, str, Sequence[tuple[str, float]]]], *, fmt: Callable[[float], str],
           label: str) -> str:
    """One line per series from its smallest to its largest named point (p50, p90, p99…), each point marked."""
    row_h, top = 44.0, 20.0
    height = top + len(series) * row_h + 26
    allv = [v for _, _, pts in series for _, v in pts]
    lo, hi = 0.0, max(allv, default=1.0) * 1.05 or 1.0
    grid, sx = _axis(_LABEL_W, _W - 30, lo, hi, top - 4, top + len(series) * row_h, fmt)
    body = list(grid)
    for i, (name, colour, pts) in enumerate(series):
        y = top + i * row_h + row_h / 2
        body.append(f'<text x="{_LABEL_W - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(name)}</text>')
        if not pts:
            continue
        xs = [sx(v) for _, v in pts]
        body.append(f'<line x1="{min(xs):.1f}" x2="{max(xs):.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
                    f'stroke-width="3"/>')
        last_label = {0: -1e9, 1: -1e9}  # x of the last label above (0) and below (1) the line
        for k, ((pname, v), x) in enumerate(zip(pts, xs, strict=True)):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"><title>{escape(name)} '
                        f"{escape(pname)}: {escape(fmt(v))}</title></circle>")
            side = k % 2  # alternate above/below; a label too close to the last on its side is left to the tooltip
            if x - last_label[side] >= 24:
                last_label[side] = x
                ty = y - 9 if side == 0 else y + 17
                body.append(f'<text x="{x:.1f}" y="{ty:.1f}" text-anchor="middle" font-size="11">'
                            f"{escape(pname)}</text>")
    return _svg(height, body, label)


_STACK_COLOURS = ("#1f6feb", "#f0883e", "#2da44e", "#a371f7", "#d4a72c", "#cf222e", "#57606a", "#0e8a16")


def stacked(segments: Sequence[tuple[str, float]], *, fmt: Callable[[float], str], label: str) -> str:
    """One horizontal bar split into named segments (stage timings), with a legend under it."""
    total = sum(v for _, v in segments) or 1.0
    x, bar_y, bar_h = 10.0, 10.0, 26.0
    body = []
    legend_y = bar_y + bar_h + 22
    lx = 10.0
    for i, (name, v) in enumerate(segments):
        colour = _STACK_COLOURS[i % len(_STACK_COLOURS)]
        w = v / total * (_W - 20)
        body.append(f'<rect x="{x:.1f}" y="{bar_y}" width="{w:.1f}" height="{bar_h}" fill="{colour}">'
                    f"<title>{escape(name)}: {escape(fmt(v))}</title></rect>")
        x += w
        text = f"{name} {fmt(v)}"
        if lx + 20 + 7 * len(text) > _W:
            lx, legend_y = 10.0, legend_y + 20
        body.append(f'<rect x="{lx:.1f}" y="{legend_y - 10:.1f}" width="12" height="12" fill="{colour}"/>'
                    f'<text x="{lx + 16:.1f}" y="{legend_y:.1f}">{escape(text)}</text>')
        lx += 30 + 7 * len(text)
    return _svg(legend_y + 10, body, label)


def lines(points: Sequence[tuple[float, float]], *, colour: str, fmt: Callable[[float], str], label: str,
          x_label: str = "") -> str:
    """One series as a line with its points marked (e.g. a metric per epoch), y scaled to the data."""
    height, top, bottom, left = 170.0, 14.0, 38.0, 64.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = min(ys), max(ys)
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo - (abs(y_lo) or 1.0) * 0.05, y_hi + (abs(y_hi) or 1.0) * 0.05
    grid, sx = _axis(left, _W - 20, x_lo, x_hi, top, height - bottom, lambda v: f"{v:g}")

    def sy(v: float) -> float:
        return height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - bottom - top)

    body = list(grid)
    for t in _ticks(y_lo, y_hi, 3):
        body.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" fill="#57606a">'
                    f"{escape(fmt(t))}</text>")
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    body.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for x, y in points:
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"><title>{escape(x_label)} '
                    f"{x:g}: {escape(fmt(y))}</title></circle>")
    if x_label:
        body.append(f'<text x="{(left + _W - 20) / 2:.1f}" y="{height - 4:.1f}" text-anchor="middle" '
                    f'fill="#57606a">{escape(x_label)}</text>')
    return _svg(height, body, label)


#: A point of ``scatter``: x, y, its x interval (or None), colour, and the text shown on hover.
Point = tuple[float, float, tuple[float, float] | None, str, str]


def scatter(points: Sequence[Point], series: Sequence[Series], *, x_fmt: Callable[[float], str],
            y_fmt: Callable[[float], str], label: str, x_label: str = "", y_label: str = "",
            y_line: tuple[float, str] | None = None) -> str:
    """Points on linear axes scaled to the data (each with an optional horizontal interval, e.g. a speed-up's),
    a legend of ``series`` and an optional horizontal reference line ``(y, text)`` (e.g. a bound)."""
    legend, extra = _legend(series, 14, 64.0)
    height, top, bottom, left = 230.0 + extra, 30.0 + extra, 42.0, 64.0
    xs = [v for x, _, iv, _, _ in points for v in ((x, *iv) if iv else (x,))]
    ys = [p[1] for p in points] + ([y_line[0]] if y_line else [])
    x_lo, x_hi = min(xs, default=0.0), max(xs, default=1.0)
    pad = (x_hi - x_lo) * 0.05 or 0.1
    x_lo, x_hi = x_lo - pad, x_hi + pad
    y_lo, y_hi = min(ys, default=0.0), max(ys, default=1.0)
    pad = (y_hi - y_lo) * 0.08 or (abs(y_hi) or 1.0) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad
    grid, sx = _axis(left, _W - 20, x_lo, x_hi, top, height - bottom, x_fmt)

    def sy(v: float) -> float:
        return height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - bottom - top)

    body = [legend, *grid]
    for t in _ticks(y_lo, y_hi, 4):
        body.append(f'<line x1="{left}" x2="{_W - 20}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eaeef2" '
                    f'stroke-width="0.8"/><text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" '
                    f'fill="#57606a">{escape(y_fmt(t))}</text>')
    if y_line is not None:
        y = sy(y_line[0])
        body.append(f'<line x1="{left}" x2="{_W - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#cf222e" '
                    f'stroke-dasharray="4 3" stroke-width="1.2"/><text x="{_W - 22}" y="{y - 4:.1f}" '
                    f'text-anchor="end" fill="#cf222e">{escape(y_line[1])}</text>')
    for x, y, iv, colour, text in points:
        if iv is not None:
            body.append(f'<line x1="{sx(iv[0]):.1f}" x2="{sx(iv[1]):.1f}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
                        f'stroke="{colour}" stroke-width="1.5" opacity="0.6"/>')
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{colour}" stroke="#fff" '
                    f'stroke-width="1"><title>{escape(text)}</title></circle>')
    if x_label:
        body.append(f'<text x="{(left + _W - 20) / 2:.1f}" y="{height - 4:.1f}" text-anchor="middle" '
                    f'fill="#57606a">{escape(x_label)}</text>')
    if y_label:
        body.append(f'<text x="12" y="{(top + height - bottom) / 2:.1f}" text-anchor="middle" fill="#57606a" '
                    f'transform="rotate(-90 12 {(top + height - bottom) / 2:.1f})">{escape(y_label)}</text>')
    return _svg(height, body, label)
