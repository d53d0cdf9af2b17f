"""The conversion report as one self-contained HTML page: styles, the table-sorting script and the charts (inline
SVG, ``_svg.py``) are all inside the file, so it opens with no network, prints, and reads on a phone.

It renders what the report holds and nothing it does not: every section reads its keys defensively from the
report's JSON form, so a report from an older converter (no latency, no accuracy) renders its parts, and a newer
report's unknown keys are shown in a last "other" section rather than dropped. It computes nothing that the
report does not state, except ratios of numbers in it. Every string from the report (layer names, reasons,
warnings) is escaped: a model's layer names are user input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

from .._errors import InvalidOptionsError
from .._report import Report
from . import _svg
from ._html_assets import CSS, PAGE, REPORT_SCRIPT

__all__ = ["REPORT_SCRIPT", "render_html"]

_HANDLED = {"schema_version", "sepconv_version", "format", "params", "macs", "file_bytes", "policy", "fidelity",
            "latency", "layers", "timings", "warnings", "accuracy", "finetune", "search"}
_STAGES = ("load", "plan", "measure", "rewrite", "calibrate", "finetune", "save", "verify")
_ACCURACY_STAGES = (("original", "original"), ("data_free", "data-free"), ("calibrated", "calibrated"),
                    ("finetuned", "fine-tuned"))


def render_html(report: Report | Mapping[str, Any], *, title: str | None = None) -> str:
    """The report as a self-contained HTML document.

    Args:
        report: a ``Report``, or a report's JSON object (a dict): with a dict, keys this version does not know
            are rendered too.
        title: what the page is about, usually the model's file name.

    Raises:
        InvalidOptionsError: ``report`` is not a conversion report.
    """
    if isinstance(report, Report):
        data = report.model_dump(mode="json")
    else:
        try:
            Report.model_validate(report)
        except Exception as e:
            raise InvalidOptionsError(f"not a sepconv report: {_first_error(e)}") from None
        data = dict(report)
    # Per-layer values by stage ({"output_error": {"data_free": .., "calibrated": ..}}) become flat columns.
    data["layers"] = [_flat_layer(la) for la in data.get("layers") or [] if isinstance(la, Mapping)]
    title = title or "sepconv report"
    body = [_header(data, title), _warnings(data), _cards(data), _charts(data), _table(data), _details(data)]
    return PAGE.format(title=escape(f"{title} · sepconv report"), css=CSS, js=REPORT_SCRIPT,
                        body="\n".join(part for part in body if part))


def _first_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(map(str, first.get('loc', ()))) or 'report'}: {first.get('msg')}"
    return str(e).splitlines()[0]


# -- formatting ------------------------------------------------------------------------------------------------

def _num(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def _bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(v: float | None, digits: int = 1) -> str:
    return "?" if v is None else f"{v * 100:.{digits}f} %"


def _ms(v: float) -> str:
    return f"{v:.3g} ms"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


def _ratio(counts: Any) -> float | None:
    a, b = _get(counts, "original"), _get(counts, "converted")
    return b / a if _is_num(a) and _is_num(b) and a else None


# -- sections --------------------------------------------------------------------------------------------------

def _policy_text(policy: Any) -> str:
    if not isinstance(policy, Mapping):
        return ""
    text = f"{policy.get('kind')}={policy.get('value')}"
    if _is_num(policy.get("achieved")):
        text += f" (achieved {policy['achieved']:.3f})"
    return text + f", order {policy.get('order')}, lowering {policy.get('lowering')}"


def _ci_label(latency: Mapping[str, Any]) -> str:
    level = latency.get("confidence")
    return f"{level * 100:g} % CI" if _is_num(level) and 0 < level < 1 else "CI"


def _speedup_interval(latency: Mapping[str, Any]) -> tuple[float, float] | None:
    """The speed-up's confidence interval, under whichever of the usual spellings the report uses."""
    for key in ("speedup_ci", "speedup_ci95", "speedup_interval"):
        v = latency.get(key)
        if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(map(_is_num, v)):
            return float(v[0]), float(v[1])
        if isinstance(v, Mapping):
            lo = next((v[k] for k in ("low", "lo", "lower") if _is_num(v.get(k))), None)
            hi = next((v[k] for k in ("high", "hi", "upper") if _is_num(v.get(k))), None)
            if lo is not None and hi is not None:
                return float(lo), float(hi)
    for lo_key, hi_key in (("speedup_ci_low", "speedup_ci_high"), ("speedup_low", "speedup_high"),
                           ("speedup_lo", "speedup_hi")):
        if _is_num(latency.get(lo_key)) and _is_num(latency.get(hi_key)):
            return float(latency[lo_key]), float(latency[hi_key])
    return None


def _flat_layer(layer: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in layer.items():
        if isinstance(v, Mapping) and v and all(x is None or _is_num(x) for x in v.values()):
            out.update({f"{k}_{sk}": sv for sk, sv in v.items() if sv is not None})
        else:
            out[k] = v
    return out


def _accuracy_stages(accuracy: Any) -> list[tuple[str, float]]:
    if not isinstance(accuracy, Mapping):
        return []
    return [(label, float(accuracy[key])) for key, label in _ACCURACY_STAGES if _is_num(accuracy.get(key))]


def _lower_is_better(accuracy: Mapping[str, Any]) -> bool:
    return str(accuracy.get("metric", "")).endswith(("rel_l2", "error", "loss"))


def _fmt_metric(accuracy: Mapping[str, Any]) -> Callable[[float], str]:
    values = [v for _, v in _accuracy_stages(accuracy)]
    if values and all(0.0 <= v <= 1.0 for v in values) and not _lower_is_better(accuracy):
        return lambda v: _pct(v)
    return lambda v: f"{v:.4g}"


def _kept_stage(accuracy: Mapping[str, Any], stages: list[tuple[str, float]]) -> tuple[str, float]:
    """The stage whose model was written (``kept``), else the last one measured."""
    label = dict(_ACCURACY_STAGES).get(str(accuracy.get("kept")))
    return next(((n, v) for n, v in stages if n == label), stages[-1])


def _metric_name(accuracy: Mapping[str, Any]) -> str:
    name = str(accuracy.get("metric") or "accuracy")
    return name + (" (lower is better)" if _lower_is_better(accuracy) else "")


def _verdict(d: Mapping[str, Any]) -> str:
    layers = d.get("layers") or []
    n_conv = sum(1 for la in layers if _get(la, "status") == "converted")
    parts = [f"{n_conv} of {len(layers)} convolutions converted"]
    for key, name, fmt in (("params", "params", _num), ("macs", "MACs", _num), ("file_bytes", "size", _bytes)):
        counts = d.get(key)
        r = _ratio(counts)
        if r is not None:
            parts.append(f"{name} {fmt(counts['original'])} → {fmt(counts['converted'])} ({_pct(r)})")
    lat = d.get("latency")
    if isinstance(lat, Mapping) and _is_num(lat.get("speedup")):
        text = f"speed-up {lat['speedup']:.2f}×"
        ci = _speedup_interval(lat)
        if ci:
            text += f" ({_ci_label(lat)} {ci[0]:.2f}–{ci[1]:.2f}×)"
        parts.append(text)
    fid = d.get("fidelity")
    if isinstance(fid, Mapping) and _is_num(fid.get("rel_l2")):
        text = f"output error {fid['rel_l2']:.3g}"
        if _is_num(fid.get("top1_agreement")):
            text += f", top-1 agreement {_pct(fid['top1_agreement'])}"
        parts.append(text)
    acc = d.get("accuracy")
    stages = _accuracy_stages(acc)
    if stages:
        fmt = _fmt_metric(acc)
        kept = _kept_stage(acc, stages)
        parts.append(f"{acc.get('metric') or 'accuracy'} " + " → ".join(fmt(v) for _, v in (stages[0], kept))
                     + (f" ({kept[0]})" if len(stages) > 1 else ""))
    return " · ".join(parts)


def _header(d: Mapping[str, Any], title: str) -> str:
    meta = [f"format <b>{escape(str(d.get('format')))}</b>"]
    policy = _policy_text(d.get("policy"))
    if policy:
        meta.append(f"policy <b>{escape(policy)}</b>")
    meta.append(f"sepconv {escape(str(d.get('sepconv_version', '?')))}")
    cls = "verdict warn" if d.get("warnings") else "verdict"
    return (f"<header><h1>{escape(title)}</h1><p class=\"meta\">{' · '.join(meta)}</p>"
            f"<p class=\"{cls}\" id=\"verdict\">{escape(_verdict(d))}</p></header>")


def _warnings(d: Mapping[str, Any]) -> str:
    warnings = [w for w in d.get("warnings") or [] if w]
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(str(w))}</li>" for w in warnings)
    return (f'<section class="warnings" role="alert" id="warnings"><h2>⚠ {len(warnings)} warning'
            f"{'s' if len(warnings) > 1 else ''}</h2><ul>{items}</ul></section>")


def _card(name: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="k">{escape(name)}</div><div class="v">{escape(value)}</div>'
            f'<div class="s">{escape(sub)}</div></div>')


def _cards(d: Mapping[str, Any]) -> str:
    cards = []
    for key, name, fmt in (("params", "parameters", _num), ("macs", "MACs per sample", _num),
                           ("file_bytes", "file size", _bytes)):
        counts = d.get(key)
        if isinstance(counts, Mapping):
            r = _ratio(counts)
            cards.append(_card(name, fmt(counts.get("converted")),
                               f"from {fmt(counts.get('original'))}" + (f" · {_pct(r)}" if r is not None else "")))
    lat = d.get("latency")
    if isinstance(lat, Mapping) and _is_num(lat.get("speedup")):
        ci = _speedup_interval(lat)
        sub = f"p50 {_ms(lat['original_ms'])} → {_ms(lat['converted_ms'])}" if _is_num(
            lat.get("original_ms")) and _is_num(lat.get("converted_ms")) else ""
        if ci:
            sub = f"{_ci_label(lat)} {ci[0]:.2f}–{ci[1]:.2f}× · " + sub
        cards.append(_card("speed-up", f"{lat['speedup']:.2f}×", sub))
    fid = d.get("fidelity")
    if isinstance(fid, Mapping) and _is_num(fid.get("rel_l2")):
        sub = f"cosine {fid['cosine']:.4f}" if _is_num(fid.get("cosine")) else ""
        if _is_num(fid.get("top1_agreement")):
            sub += f" · top-1 {_pct(fid['top1_agreement'])}"
        cards.append(_card("output error (rel. L2)", f"{fid['rel_l2']:.3g}",
                           sub + f" · {fid.get('samples')} {str(fid.get('inputs')).replace('_', '-')} sample(s)"))
    acc = d.get("accuracy")
    stages = _accuracy_stages(acc)
    if stages:
        fmt = _fmt_metric(acc)
        kept = _kept_stage(acc, stages)
        cards.append(_card(_metric_name(acc), fmt(kept[1]),
                           f"{kept[0]} · original {fmt(stages[0][1])}" if len(stages) > 1 else kept[0]))
    return f'<section class="cards">{"".join(cards)}</section>' if cards else ""


def _figure(title: str, svg: str, note: str = "", fid: str = "") -> str:
    ident = f' id="{fid}"' if fid else ""
    return (f"<figure{ident}><figcaption>{escape(title)}</figcaption>{svg}"
            + (f'<p class="note">{escape(note)}</p>' if note else "") + "</figure>")


def _layer_rows(layers: Sequence[Mapping[str, Any]], keys: Sequence[str], scale: float = 1.0
                ) -> list[tuple[str, list[float | None]]]:
    rows = []
    for la in layers:
        vals = [float(la[k]) * scale if _is_num(la.get(k)) else None for k in keys]
        rows.append((str(la.get("name", "?")), vals))
    return rows


def _output_error_keys(layers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per-layer output-error keys present in the report (added by calibration/fine-tuning), in first-seen order."""
    keys: list[str] = []
    for la in layers:
        for k, v in la.items():
            if "output" in k and "error" in k and _is_num(v) and k not in keys:
                keys.append(k)
    return keys


def _charts(d: Mapping[str, Any]) -> str:
    layers = [la for la in d.get("layers") or [] if isinstance(la, Mapping)]
    both = [("original", _svg.ORIGINAL), ("converted", _svg.CONVERTED)]
    figs = []
    if layers:
        figs.append(_figure("Parameters per layer", _svg.hbars(
            _layer_rows(layers, ("params_before", "params_after")), both, fmt=_num,
            label="parameters per layer, before and after"), fid="plot-params"))
        if any(_is_num(la.get("macs_before")) for la in layers):
            figs.append(_figure("MACs per layer (per sample)", _svg.hbars(
                _layer_rows(layers, ("macs_before", "macs_after")), both, fmt=_num,
                label="MACs per layer, before and after"), fid="plot-macs"))
    converted = [la for la in layers if la.get("status") == "converted"]
    if converted:
        figs.append(_figure("Rank per converted layer", _svg.hbars(
            _layer_rows(converted, ("rank",)), [("rank", _svg.CONVERTED)], fmt=lambda v: f"{v:g}",
            label="rank per converted layer"), fid="plot-rank"))
        extra = _output_error_keys(converted)
        keys = ["energy", "rel_weight_error", *extra]
        palette = ["#2da44e", "#cf222e", "#f0883e", "#a371f7", "#1f6feb"]
        series = [(k.replace("_", " "), palette[i % len(palette)]) for i, k in enumerate(keys)]
        figs.append(_figure("Kept energy and errors per converted layer", _svg.dots(
            _layer_rows(converted, keys), series, lo=0.0,
            hi=max(1.0, *(v for _, vals in _layer_rows(converted, keys) for v in vals if v is not None)),
            fmt=lambda v: f"{v:.2g}",
            label="kept energy and weight error" + (" and output error" if extra else "") + " per layer"),
            "kept energy: share of the kernel's squared singular values kept; weight error: relative L2 of the "
            "kernel" + ("; output errors: relative L2 of the layer's output on real data" if extra else ""),
            fid="plot-energy"))
    lat = d.get("latency")
    if isinstance(lat, Mapping):
        fig = _latency_figure(lat)
        if fig:
            figs.append(fig)
    search = d.get("search")
    if isinstance(search, Mapping):
        fig = _search_figure(search)
        if fig:
            figs.append(fig)
    acc = d.get("accuracy")
    if _accuracy_stages(acc):
        figs.append(_accuracy_figure(acc))
    ft = d.get("finetune")
    if isinstance(ft, Mapping):
        fig = _finetune_figure(ft)
        if fig:
            figs.append(fig)
    timings = d.get("timings")
    if isinstance(timings, Mapping):
        segments = _timing_segments(timings)
        if segments:
            figs.append(_figure("Time per stage", _svg.stacked(segments, fmt=lambda v: f"{v:.2f} s",
                                                               label="wall-clock seconds per stage"),
                                fid="plot-timings"))
    return f'<section class="charts">{"".join(figs)}</section>' if figs else ""


#: Colours of the search chart's points: the original, the chosen plan, plans within the drop but not chosen, and
#: plans over it.
_SEARCH_SERIES = (("original", _svg.ORIGINAL), ("chosen", _svg.CONVERTED), ("within the drop", "#2da44e"),
                  ("rejected", "#cf222e"))


def _search_figure(search: Mapping[str, Any]) -> str:
    """The ``max_accuracy_drop`` search: each measured plan's metric against its speed-up (with the interval),
    the original at 1×, the bound as a line; and a table of the plans with the options that reproduce each."""
    plans = [p for p in search.get("plans") or [] if isinstance(p, Mapping) and _is_num(p.get("speedup"))
             and _is_num(p.get("metric"))]
    metric = str(search.get("metric") or "metric")
    lower = metric == "rel_l2"
    original = search.get("original")
    drop = search.get("max_drop")
    pct = not lower and all(0.0 <= float(p["metric"]) <= 1.0 for p in plans)

    def fmt(v: float) -> str:
        return f"{100 * v:.1f} %" if pct else f"{v:.3g}"

    colours = dict(_SEARCH_SERIES)
    points: list[_svg.Point] = []
    if _is_num(original):
        points.append((1.0, float(original), None, colours["original"], f"original: {metric} {fmt(float(original))}"))
    elif lower:
        points.append((1.0, 0.0, None, colours["original"], "original"))
    for p in plans:
        kind = "chosen" if p.get("chosen") else "within the drop" if p.get("meets") else "rejected"
        iv = (float(p["speedup_low"]), float(p["speedup_high"])) if _is_num(p.get("speedup_low")) and _is_num(
            p.get("speedup_high")) else None
        points.append((float(p["speedup"]), float(p["metric"]), iv, colours[kind],
                       f"plan {p.get('plan')} ({kind}{_uniform(p)}): {float(p['speedup']):.2f}×, {metric} "
                       f"{fmt(float(p['metric']))}; {p.get('why', '')}"))
    if len(points) < 2:
        return ""
    bound = None
    if _is_num(drop):
        if lower:
            bound = (float(drop), f"bound {fmt(float(drop))}")
        elif _is_num(original):
            bound = (float(original) - float(drop), f"original − {float(drop):g}")
    svg = _svg.scatter(points, _SEARCH_SERIES, x_fmt=lambda v: f"{v:.2g}×", y_fmt=fmt,
                       label=f"{metric} against measured speed-up of every plan the search measured",
                       x_label="speed-up over the original (measured, with its interval)",
                       y_label=metric + (" (lower is better)" if lower else ""), y_line=bound)
    rows = []
    for p in sorted(plans, key=lambda p: float(p["speedup"])):
        opts = " ".join(str(o) for o in p.get("options") or [])
        rows.append(
            f'<tr class="{"chosen" if p.get("chosen") else ""}"><td>{escape(str(p.get("plan")) + _uniform(p))}</td>'
            f'<td>{float(p["speedup"]):.2f}× ({_num(p.get("speedup_low"))}–{_num(p.get("speedup_high"))})</td>'
            f'<td>{escape(fmt(float(p["metric"])))}</td><td>{escape(_num(p.get("params")))}</td>'
            f'<td>{escape(_num(p.get("macs")))}</td><td>{escape(str(p.get("why", "")))}</td>'
            f'<td><code>{escape(opts)}</code></td></tr>')
    table = ('<div class="scroll"><table class="search-plans"><thead><tr><th>plan</th><th>speed-up</th>'
             f'<th>{escape(metric)}</th><th>params</th><th>MACs</th><th>verdict</th>'
             f'<th>reproduce with</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    note = (f"max_accuracy_drop {drop:g}{' (the default with --data)' if search.get('default') else ''}: "
            f"{search.get('reason', '')}") if _is_num(drop) else str(search.get("reason", ""))
    return (f'<figure id="plot-search"><figcaption>Speed-up and {escape(metric)} of the plans searched'
            f'</figcaption>{svg}<p class="note">{escape(note)}</p>{table}</figure>')


def _uniform(p: Mapping[str, Any]) -> str:
    return f", --rank {p['uniform_rank']}" if _is_num(p.get("uniform_rank")) else ""


def _accuracy_figure(acc: Mapping[str, Any]) -> str:
    """The metric after each recovery stage (the kept stage in blue), a table of the other measures by stage, and
    what the samples were."""
    stages = _accuracy_stages(acc)
    fmt = _fmt_metric(acc)
    kept = _kept_stage(acc, stages)[0]
    colours = [_svg.CONVERTED if n == kept else _svg.ORIGINAL for n, _ in stages]
    pct = all(0.0 <= v <= 1.0 for _, v in stages) and not _lower_is_better(acc)
    svg = _svg.vbars([(n, v, c) for (n, v), c in zip(stages, colours, strict=True)], lo=0.0,
                     hi=1.0 if pct else None, fmt=fmt, label="accuracy by recovery stage")
    others = [(k, v) for k, v in acc.items() if isinstance(v, Mapping) and any(_is_num(x) for x in v.values())]
    table = ""
    if others:
        keys = [k for k, _ in _ACCURACY_STAGES if any(_is_num(v.get(k)) for _, v in others)]
        head = "".join(f"<th>{escape(dict(_ACCURACY_STAGES)[k])}</th>" for k in keys)
        body = "".join(f"<tr><th scope=\"row\">{escape(name)}</th>"
                       + "".join(f"<td>{v[k]:.4g}</td>" if _is_num(v.get(k)) else "<td></td>" for k in keys)
                       + "</tr>" for name, v in others)
        table = (f'<div class="scroll"><table class="kv stages"><thead><tr><th></th>{head}</tr></thead>'
                 f"<tbody>{body}</tbody></table></div>")
    notes = [f"{acc['samples']} held-out sample(s)" if _is_num(acc.get("samples")) else "",
             str(acc.get("held_out") or ""), f"kept: {kept}" if len(stages) > 1 else "", str(acc.get("note") or "")]
    note = " · ".join(n for n in notes if n)
    return (f'<figure id="plot-accuracy"><figcaption>{escape(_metric_name(acc))} by recovery stage</figcaption>'
            f"{svg}{table}" + (f'<p class="note">{escape(note)}</p>' if note else "") + "</figure>")


def _finetune_figure(ft: Mapping[str, Any]) -> str:
    """Each measure of the fine-tune's history (training loss, held-out metric…) per epoch, and how it ended."""
    history = [h for h in ft.get("history") or [] if isinstance(h, Mapping)]
    x_key = "epoch" if any("epoch" in h for h in history) else None
    keys = [k for k in dict.fromkeys(k for h in history for k in h) if k != x_key]
    charts = []
    for i, key in enumerate(keys):
        points = [(float(h[x_key]) if x_key and _is_num(h.get(x_key)) else float(n + 1), float(h[key]))
                  for n, h in enumerate(history) if _is_num(h.get(key))]
        if len(points) >= 2:
            colour = (_svg.CONVERTED, "#f0883e", "#2da44e", "#a371f7")[i % 4]
            charts.append(f'<p class="note">{escape(key.replace("_", " "))}</p>' + _svg.lines(
                points, colour=colour, fmt=lambda v: f"{v:.3g}", label=f"{key} per epoch", x_label="epoch"))
    parts = [f"{ft['metric']} {ft['before']:.4g} → {ft['after']:.4g}" if _is_num(ft.get("before"))
             and _is_num(ft.get("after")) and ft.get("metric") else "",
             f"{ft['epochs']} epoch(s), stopped by {ft.get('stopped')}" if _is_num(ft.get("epochs")) else "",
             f"{ft['seconds']:.0f} s on {ft.get('device')}" if _is_num(ft.get("seconds")) else "",
             "resumed from a checkpoint" if ft.get("resumed") else ""]
    note = " · ".join(p for p in parts if p)
    if not charts and not note:
        return ""
    return (f'<figure id="plot-finetune"><figcaption>Fine-tuning</figcaption>{"".join(charts)}'
            + (f'<p class="note">{escape(note)}</p>' if note else "") + "</figure>")


def _latency_figure(lat: Mapping[str, Any]) -> str:
    """Both models' latency distributions when the report has the runs, else their percentiles."""
    setting = ", ".join(f"{k} {lat[k]}" for k in ("backend", "device", "threads", "batch", "runs")
                        if lat.get(k) is not None)
    samples = {}
    for model in ("original", "converted"):
        for key, v in lat.items():
            if (key.startswith(model) and isinstance(v, list) and len(v) > 1 and all(map(_is_num, v))
                    and model not in samples):
                samples[model] = [float(x) for x in v]
    colours = {"original": _svg.ORIGINAL, "converted": _svg.CONVERTED}
    if len(samples) == 2:
        svg = _svg.histogram([(m, colours[m], samples[m]) for m in ("original", "converted")], fmt=_ms,
                             label="latency distribution of both models")
        return _figure("Latency per run", svg, f"{setting}; dashed lines: medians", fid="plot-latency")
    series = []
    for model in ("original", "converted"):
        pts = [("p50", float(lat[f"{model}_ms"]))] if _is_num(lat.get(f"{model}_ms")) else []
        for p in ("p90", "p95", "p99"):
            v = lat.get(f"{model}_{p}_ms")
            if _is_num(v):
                pts.append((p, float(v)))
        series.append((model, colours[model], pts))
    if not any(pts for _, _, pts in series):
        return ""
    svg = _svg.ranges(series, fmt=_ms, label="latency percentiles of both models")
    return _figure("Latency percentiles", svg, setting, fid="plot-latency")


def _timing_segments(timings: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Disjoint parts of the run: the per-stage timings when the report has them, else the legacy steps."""
    staged = [(s, float(timings[f"{s}_s"])) for s in _STAGES if _is_num(timings.get(f"{s}_s"))]
    if len(staged) > 2 and any(s not in ("load", "save", "verify") for s, _ in staged):
        return staged
    legacy = [(s, float(timings[f"{s}_s"])) for s in ("load", "convert", "save", "verify")
              if _is_num(timings.get(f"{s}_s"))]
    return legacy


_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    # (key, header, numeric)
    ("name", "layer", False), ("op", "op", False), ("kernel", "kernel", False), ("in_channels", "in", True),
    ("out_channels", "out", True), ("groups", "groups", True), ("status", "status", False),
    ("reason", "reason", False), ("order", "order", False), ("rank", "rank", True), ("energy", "energy", True),
    ("rel_weight_error", "weight err.", True), ("params_before", "params before", True),
    ("params_after", "params after", True), ("macs_before", "MACs before", True), ("macs_after", "MACs after", True),
)


def _cell(key: str, v: Any) -> tuple[str, str]:
    """(display text, sort value) of one table cell."""
    if v is None:
        return "", ""
    if key == "kernel" and isinstance(v, list):
        return "×".join(map(str, v)), str(math.prod(v) if all(map(_is_num, v)) else 0)
    if key == "energy" and _is_num(v):
        return _pct(v), repr(v)
    if ("error" in key) and _is_num(v):
        return f"{v:.3g}", repr(v)
    if key.startswith(("params", "macs")) and _is_num(v):
        return _num(v), repr(v)
    return str(v), repr(v) if _is_num(v) else str(v)


def _table(d: Mapping[str, Any]) -> str:
    layers = [la for la in d.get("layers") or [] if isinstance(la, Mapping)]
    if not layers:
        return ""
    columns = list(_COLUMNS)
    for key in _output_error_keys(layers):
        columns.insert(len(columns) - 4, (key, key.replace("_", " "), True))
    # Keys this version does not know (a calibration method…) still get a column.
    known = {k for k, _, _ in columns}
    for la in layers:
        for k, v in la.items():
            if k not in known and v is not None and isinstance(v, str | int | float):
                known.add(k)
                numeric = all(_is_num(x.get(k)) or x.get(k) is None for x in layers)
                columns.append((k, k.replace("_", " "), numeric))
    head = "".join(f'<th data-type="{"num" if num else "text"}" class="{"num" if num else "text"} col-{escape(k)}" '
                   f'scope="col" tabindex="0">{escape(h)}</th>' for k, h, num in columns)
    rows = []
    for la in layers:
        cells = []
        for key, _, _ in columns:
            text, sort = _cell(key, la.get(key))
            cells.append(f'<td class="col-{escape(key)}" data-v="{escape(sort)}">{escape(text)}</td>')
        rows.append(f'<tr class="{escape(str(la.get("status", "")))}">{"".join(cells)}</tr>')
    return (f'<section id="layers"><h2>Layers</h2><p class="note">Click a column to sort. '
            f"Full layer names as in the JSON report.</p><div class=\"scroll\"><table id=\"layer-table\">"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>")


def _kv(mapping: Mapping[str, Any]) -> str:
    rows = []
    for k, v in mapping.items():
        if v is None:
            continue
        if isinstance(v, list) and len(v) > 8 and all(map(_is_num, v)):
            v = f"{len(v)} values, {min(v):.4g}–{max(v):.4g}"
        elif isinstance(v, Mapping | list):
            v = json.dumps(v, separators=(", ", ": "))
        rows.append(f"<tr><th scope=\"row\">{escape(str(k))}</th><td>{escape(str(v))}</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


def _details(d: Mapping[str, Any]) -> str:
    parts = []
    for key, name in (("policy", "Policy"), ("fidelity", "Output fidelity"), ("latency", "Latency"),
                      ("accuracy", "Accuracy"), ("finetune", "Fine-tuning"), ("timings", "Timings (s)")):
        if isinstance(d.get(key), Mapping):
            parts.append(f"<details open><summary>{name}</summary>{_kv(d[key])}</details>")
    if isinstance(d.get("search"), Mapping):  # its plans are the chart's table
        search = {k: v for k, v in d["search"].items() if k != "plans"}
        parts.append(f"<details open><summary>Search (max_accuracy_drop)</summary>{_kv(search)}</details>")
    other = {k: v for k, v in d.items() if k not in _HANDLED}
    if other:
        parts.append(f"<details open><summary>Other report keys</summary>{_kv(other)}</details>")
    return f'<section id="details"><h2>Details</h2>{"".join(parts)}</section>' if parts else ""
