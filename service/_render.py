"""Human-readable rendering of a conversion report for the terminal (rich). Used by ``sepconv convert`` and
``sepconv submit``; it formats, it does not compute anything the report does not hold."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from converter import Report, elide

__all__ = ["render_report"]


def _num(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _ratio(a: int | None, b: int | None) -> str:
    if not a or b is None:
        return ""
    return f"({b / a:.1%})"


def render_report(report: Report, console: Console, *, title: str = "", max_layers: int = 40) -> None:
    """Print the per-layer table, why layers were skipped, the totals, fidelity, latency and warnings.

    The table fits the console's width: each layer stays on one line, a long name elided in its middle (the
    JSON report keeps the full names).
    """
    columns = (("layer", "left"), ("kernel", "left"), ("in→out", "right"), ("status", "left"),
               ("order·rank", "left"), ("energy", "right"), ("params", "right"))
    rows = []
    for layer in report.layers[:max_layers]:
        conv = layer.status == "converted"
        rows.append((
            layer.name,
            "×".join(map(str, layer.kernel)),
            f"{layer.in_channels}→{layer.out_channels}" + (f" g{layer.groups}" if layer.groups > 1 else ""),
            "converted" if conv else "skipped",
            f"{layer.order}·{layer.rank}" if conv else "",
            f"{layer.energy:.1%}" if conv and layer.energy is not None else "",
            f"{_num(layer.params_before)}→{_num(layer.params_after)}" if conv else _num(layer.params_before),
        ))
    # Every column but the name keeps its natural width; the name gets what is left (one space between columns).
    others = sum(max([len(head), *(len(r[i]) for r in rows)]) for i, (head, _) in enumerate(columns) if i)
    name_width = max(12, console.width - others - (len(columns) - 1))
    table = Table(title=title or None, header_style="bold", box=None, pad_edge=False, collapse_padding=True)
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=True, overflow="ellipsis")
    for name, *cells in rows:
        status = "[green]converted[/]" if cells[2] == "converted" else "[dim]skipped[/]"
        table.add_row(escape(elide(name, name_width)), *cells[:2], status, *cells[3:])
    layers = report.layers
    console.print(table)
    if len(layers) > max_layers:
        console.print(f"[dim]… {len(layers) - max_layers} more layers in the JSON report[/]")
    skipped: dict[str, list[str]] = {}
    for layer in layers:
        if layer.status != "converted":
            skipped.setdefault(layer.reason, []).append(layer.name)
    for reason, names in skipped.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        console.print(f"[dim]skipped {len(names)}: {reason} ({shown})[/]")
    p, m, f = report.params, report.macs, report.file_bytes
    n_conv = len(report.converted_layers)
    console.print(f"[bold]{n_conv}[/] of {len(layers)} convolutions converted · policy {_policy(report.policy)}")
    console.print(f"params  {_num(p.original)} → {_num(p.converted)} {_ratio(p.original, p.converted)}")
    console.print(f"MACs    {_num(m.original)} → {_num(m.converted)} {_ratio(m.original, m.converted)} per sample")
    console.print(f"file    {_bytes(f.original)} → {_bytes(f.converted)}")
    if report.fidelity is not None:
        fd = report.fidelity
        top1 = f", top-1 agreement {fd.top1_agreement:.1%}" if fd.top1_agreement is not None else ""
        console.print(f"outputs rel. L2 error {fd.rel_l2:.3g}, cosine {fd.cosine:.4f}{top1} "
                      f"({fd.samples} {fd.inputs.replace('_', '-')} sample(s))")
    if report.latency is not None:
        lt = report.latency
        console.print(f"latency {lt.original_ms:.3f} ms → {lt.converted_ms:.3f} ms ([bold]{lt.speedup:.2f}×[/]) "
                      f"p50 on {lt.backend}, {lt.threads} thread(s), batch {lt.batch}")
    acc = getattr(report, "accuracy", None)
    if acc is not None:
        fmt = (lambda v: "—" if v is None else f"{v:.4g}") if acc.metric == "rel_l2" else \
            (lambda v: "—" if v is None else f"{v:.1%}")
        stages = " → ".join(f"{name} {fmt(getattr(acc, name))}" for name in
                            ("original", "data_free", "calibrated", "finetuned") if getattr(acc, name) is not None)
        console.print(f"accuracy ({acc.metric}, {acc.samples} held-out samples) {stages}; kept [bold]{acc.kept}[/]")
    search = getattr(report, "search", None)
    if search is not None:
        how = "the default with --data" if search.default else "asked"
        console.print(f"search (max_accuracy_drop {search.max_drop:g} on {search.metric}, {how}): "
                      f"{len(search.plans)} plan(s) measured in {search.spent_s:.0f} s; {search.reason}")
        chosen = next((p for p in search.plans if p.chosen), None)
        if chosen is not None:
            console.print(f"  reproduce with: {' '.join(chosen.options)}")
    ft = getattr(report, "finetune", None)
    if ft is not None:
        fmt = "{:.4g}" if ft.metric == "rel_l2" else "{:.1%}"
        console.print(f"fine-tune held-out {ft.metric} {fmt.format(ft.before)} → [bold]{fmt.format(ft.after)}[/] "
                      f"in {ft.epochs} epoch(s), {ft.seconds:.0f} s on {ft.device} (stopped: {ft.stopped}"
                      f"{', resumed' if ft.resumed else ''})")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")


def _policy(policy: dict) -> str:
    kind, value = policy.get("kind"), policy.get("value")
    text = f"{kind}={value}"
    if "achieved" in policy:
        text += f" (achieved {policy['achieved']:.3f})"
    return text + f", order {policy.get('order')}, lowering {policy.get('lowering')}"
