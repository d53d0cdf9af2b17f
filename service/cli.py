"""The ``sepconv`` command line: thin over the ``converter`` library (and, for the service commands, the SDK).

Conversion flags are generated from ``ConversionConfig``'s fields (``target_params`` → ``--target-params``), so
the CLI, the HTTP API and the SDK always take the same options under the same names. Errors print one line
and exit non-zero; no traceback reaches a user (set ``SEPCONV_DEBUG=1`` to see one).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import click

from converter import ConversionConfig
from converter.formats import expected_formats

from ._cli_common import EXIT_USER, collect_config, config_options, fail, handle_errors
from ._submit import submit

__all__ = ["cli", "main"]

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="sepconv", prog_name="sepconv")
def cli() -> None:
    """sepconv: turn standard CNNs into depthwise-separable ones, with an honest report."""


@cli.command(help=f"Convert MODEL ({expected_formats()}) and report on the result.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the converted model (same format as the input).")
@config_options
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A .npz of verification inputs: an 'inputs' array, or arrays named like the model's inputs.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Samples of the model's real inputs (.npz with 'inputs' or arrays named like the inputs, "
                   "optional 'labels'; or an image folder class/*.png with --image-size): calibration recovers "
                   "accuracy on them, and the report measures it on a held-out share.")
@click.option("--eval", "eval_", type=click.Path(exists=True, path_type=Path), default=None,
              help="Held-out samples for the accuracy report (same layout as --data).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the fine-tune's checkpoint here: run the same command again and an interrupted "
                   "fine-tune resumes.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON report to this file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as one self-contained HTML page (charts, sortable layer table).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary.")
@handle_errors
def convert(model: Path, output: Path, inputs: Path | None, data: Path | None, eval_: Path | None,
            checkpoint_dir: Path | None, report_path: Path | None, html_path: Path | None, as_json: bool,
            **kwargs: Any) -> None:
    """Convert MODEL and report on the result (the help text, set above, names the registered formats)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    import converter  # heavy imports only when a conversion runs

    from ._render import render_report

    options = collect_config(kwargs)
    config = ConversionConfig.from_options(**options)
    if not model.exists():
        raise converter.InvalidOptionsError(f"model file not found: {model}")
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description:<9}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), console=err, transient=True,
                  disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("load", total=1.0, detail="")

        def progress(stage: str, frac: float, detail: dict[str, Any] | None) -> None:
            # While fine-tuning: epoch, training loss and the held-out metric beside the bar.
            bar.update(task, completed=frac, description=stage, detail=_detail_text(detail))

        result = converter.convert(model, output, config=config, inputs=inputs, data=data, eval=eval_,
                                   checkpoint_dir=checkpoint_dir, progress=progress)
    report, saved = result.report, result.output_path
    if saved is None:  # convert writes the model wherever ``output`` is given
        raise converter.ConversionError("internal error: the converted model was not written")
    text = report.model_dump_json(indent=2)
    written = [str(saved)]
    if report_path is not None:
        _write(report_path, text + "\n")
        written.append(str(report_path))
    if html_path is not None:
        _write(html_path, converter.render_html(report, title=model.name))
        written.append(str(html_path))
    if as_json:
        click.echo(text)
        return
    out = Console()
    render_report(report, out, title=f"{model.name} → {saved.name} ({report.format})")
    out.print("wrote " + ", ".join(written), highlight=False)


def _detail_text(detail: dict[str, Any] | None) -> str:
    """``epoch 3  loss 0.412  top1 0.964`` from a stage's progress detail (None values left out)."""
    if not detail:
        return ""
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in detail.items()
                     if v is not None)


def _write(path: Path, text: str) -> None:
    """Write a report file; a file-system failure is the user's one-line error, not a traceback."""
    from converter import SepconvError

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise SepconvError(f"could not write {path}: {e.strerror or e}") from e


@cli.command()
@click.argument("report_json", metavar="REPORT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML page [default: REPORT with the suffix .html].")
@click.option("--title", default=None, help="The page's title [default: the report's file name].")
@handle_errors
def report(report_json: Path, output: Path | None, title: str | None) -> None:
    """Render a saved JSON report (from --report, GET /jobs/{id}/report or the SDK) as one HTML page."""
    import json

    from converter import InvalidOptionsError, render_html

    try:
        data = json.loads(report_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InvalidOptionsError(f"{report_json} is not a JSON file: {e}") from None
    if not isinstance(data, dict):
        raise InvalidOptionsError(f"{report_json} is not a sepconv report (a JSON object)")
    try:
        page = render_html(data, title=title or report_json.stem)
    except InvalidOptionsError as e:
        raise InvalidOptionsError(f"{report_json}: {e}") from None
    output = output or report_json.with_suffix(".html")
    _write(output, page)
    click.echo(f"wrote {output}")


def _service_settings(**overrides: Any) -> Any:
    """Validated service settings, or a one-line error and exit 2."""
    import logging

    from .core.config import SettingsError, load_settings

    try:
        settings = load_settings(**overrides)
    except SettingsError as e:
        fail(str(e), EXIT_USER)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if settings.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    return settings


@cli.command()
@click.option("--host", default=None, help="Address to listen on [env SEPCONV_HOST; default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on [env SEPCONV_PORT; default 8000].")
@click.option("--workers", type=click.IntRange(0, 256), default=None,
              help="Embedded worker processes that run the conversions [env SEPCONV_WORKERS; default 1]; "
                   "ignored with the Celery executor.")
@handle_errors
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API (and, with the embedded executor, its worker processes). Migrates the database first."""
    import uvicorn

    from .core.db import migrate
    from .main import create_app

    settings = _service_settings(host=host, port=port, workers=workers)
    migrate(settings.database_url)  # before anything listens; the app's start logs the settings' warnings
    app = create_app(settings, migrate_on_start=False)
    # Everything built so far (modules, the app, its schemas) lives as long as the server: out of the collector's
    # sight, a full collection under load takes ~0 ms instead of 100+ ms that stall every request (measured:
    # GET /jobs/{id} p99 at 50 connections 384 → 64 ms, benchmarks/service_load.py).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, lifespan="on",
                timeout_graceful_shutdown=20)


@cli.command()
@click.option("--queues", default=None,
              help="Comma-separated Celery queues to consume [default: SEPCONV_CELERY_QUEUE].")
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Conversions run at once by this worker (each in its own sandboxed process).")
@handle_errors
def worker(queues: str | None, concurrency: int) -> None:
    """Run a Celery worker for the Celery executor (SEPCONV_BROKER_URL). Migrates the database first."""
    from .core.db import migrate
    from .core.storage import open_storage
    from .jobs.celery_app import celery_app, configure, node_name
    from .jobs.runner import protect_worker_process, warn_if_unconfined, worker_name

    settings = _service_settings()
    if not settings.broker_url:
        fail("sepconv worker needs SEPCONV_BROKER_URL (a redis:// URL)", EXIT_USER)
    settings.log_warnings()
    warn_if_unconfined(settings, worker_name("celery"))
    migrate(settings.database_url)
    open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url).ensure()
    protect_worker_process()
    configure(celery_app, settings)
    celery_app.worker_main(["worker", "--queues", queues or settings.celery_queue, "--concurrency",
                            str(concurrency), "--loglevel", settings.log_level.upper(), "--without-gossip",
                            "--without-mingle", "--hostname", node_name()])


@cli.command()
@handle_errors
def migrate() -> None:
    """Create or upgrade the job database (SEPCONV_DATABASE_URL) to the current schema."""
    from .core.db import migrate as run_migrations

    settings = _service_settings()
    revision = run_migrations(settings.database_url)
    click.echo(f"database at revision {revision}")


cli.add_command(submit)


def main() -> None:
    """Entry point of the ``sepconv`` console script."""
    cli(prog_name="sepconv")


if __name__ == "__main__":  # python -m service.cli
    main()
