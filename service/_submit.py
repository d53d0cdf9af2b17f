"""``sepconv submit``: convert a model on a sepconv server instead of locally. Thin over the SDK.

It uploads the model (with a progress bar), follows the job's progress, downloads the converted model and prints
the same summary table as ``sepconv convert``. The conversion flags are the ones ``sepconv convert`` has, made
from ``ConversionConfig``, and are validated before anything is uploaded. Errors print one line
(``sepconv: error: …``) and exit non-zero, as for every ``sepconv`` command.

This module only defines the command; ``service.cli`` registers it in the ``sepconv`` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from converter import SepconvError

from ._cli_common import collect_config, config_options, handle_errors
from .sdk import Client, InvalidOptions, Job

__all__ = ["submit"]


@click.command("submit")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--server", required=True, metavar="URL",
              help="The sepconv server, e.g. http://localhost:8000.")
@click.option("--api-key", envvar="SEPCONV_API_KEY", default=None, show_envvar=True,
              help="API key of the server (sent as a Bearer token).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the converted model: a file, or a folder to get the server's name "
                   "<stem>-sepconv<suffix> (default: the current folder).")
@config_options
@click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .npz of verification inputs: an 'inputs' array, or arrays named like the model's inputs.")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .npz of the model's real inputs (optional 'labels'): calibration recovers accuracy on "
                   "them, and the report measures it on a held-out share.")
@click.option("--eval", "eval_", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A .npz of held-out samples for the accuracy report (same layout as --data).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON report to this file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also download the report as one self-contained HTML page to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop waiting after this many seconds (the job keeps running on the server).")
@click.pass_context
@handle_errors
def submit(ctx: click.Context, model: Path, server: str, api_key: str | None, output: Path | None,
           inputs: Path | None, data: Path | None, eval_: Path | None, report_path: Path | None,
           html_path: Path | None, as_json: bool, timeout: float | None, **kwargs: Any) -> None:
    """Convert MODEL on a sepconv server (ONNX, ONNX .zip with external data, or TorchScript) and report."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ._render import render_report

    options = collect_config(kwargs)
    for what, path in (("model", model), ("inputs", inputs), ("data", data), ("eval", eval_)):
        if path is not None and not path.is_file():
            raise InvalidOptions(f"{what} file not found: {path}")
    output = output if output is not None else Path.cwd()
    if not output.is_dir() and not output.parent.is_dir():
        raise InvalidOptions(f"output folder does not exist: {output.parent}")
    # Whoever embeds the command may route it through their own httpx transport (the tests do).
    transport = ctx.obj.get("transport") if isinstance(ctx.obj, dict) else None

    err = Console(stderr=True)
    job_id = None
    try:
        with Client(server, api_key=api_key, transport=transport) as client, \
                Progress(TextColumn("{task.description:<8}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                         TimeElapsedColumn(), console=err, transient=True,
                         disable=as_json or not err.is_terminal) as bar:
            size = max(model.stat().st_size, 1)
            upload = bar.add_task("upload", total=size, detail="")
            tracking: list[Any] = []

            def on_upload(sent: int, total: int) -> None:
                bar.update(upload, completed=sent, total=max(total, 1),
                           detail=f"{sent / 1e6:.1f}/{total / 1e6:.1f} MB")

            def on_job(job: Job) -> None:
                nonlocal job_id
                if job_id is None:
                    job_id = job.id
                    bar.update(upload, completed=size, visible=False)
                    tracking.append(bar.add_task(job.stage, total=1.0, detail=""))
                    err.print(f"sepconv: job {job.id} {job.status} on {client.base_url}", highlight=False)
                bar.update(tracking[0], completed=job.progress, description=job.stage,
                           detail=f"{job.progress:>4.0%} {job.status}")

            job = client.convert(model, inputs=inputs, data=data, eval=eval_, wait=True if timeout is None else timeout,
                                 progress=on_job, upload_progress=on_upload, **options)
            report = job.report
            written = job.download(output)
            if html_path is not None:
                job.download_report_html(html_path)
    except KeyboardInterrupt:
        if job_id is not None:
            err.print(f"sepconv: job {job_id} keeps running on the server", highlight=False)
        raise
    except OSError as e:  # writing the model or reading the upload: the user's file system, not a bug
        raise SepconvError(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from e

    text = report.model_dump_json(indent=2)
    if report_path is not None:
        try:
            report_path.write_text(text + "\n")
        except OSError as e:
            raise SepconvError(f"could not write the report: {e.strerror or e}: {report_path}") from e
    if as_json:
        click.echo(text)
        return
    out = Console()
    render_report(report, out, title=f"{model.name} → {written.name} ({report.format})")
    extra = [str(p) for p in (report_path, html_path) if p is not None]
    out.print(f"wrote {written}" + (f" and {', '.join(extra)}" if extra else ""), highlight=False)
