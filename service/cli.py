"""The ``sepconv`` command line: thin over the ``converter`` library (and, for the service commands, the SDK).

Conversion flags are generated from ``ConversionConfig``'s fields (``target_params`` → ``--target-params``), so
the CLI, the HTTP API and the SDK always take the same options under the same names. Errors print one line
and exit non-zero; no traceback reaches a user (set ``SEPCONV_DEBUG=1`` to see one).
"""

from __future__ import annotations

import functools
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from converter import ConversionConfig, SepconvError

__all__ = ["config_options", "main"]

#: Exit codes: 0 success, 1 internal error, 2 bad usage/input (click uses 2 for usage errors too).
EXIT_INTERNAL = 1
EXIT_USER = 2


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The core type of a field annotation (``Annotated``/``Optional`` stripped) and whether it was Optional."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            annotation = args[0]
        else:
            return annotation, optional


def _click_option(name: str, field: Any) -> Callable[[Callable], Callable]:
    flag = "--" + name.replace("_", "-")
    core, _ = _unwrap(field.annotation)
    origin = typing.get_origin(core)
    help_text = field.description or ""
    if core is bool:
        return click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
    if origin is typing.Literal:
        return click.option(flag, name, type=click.Choice([str(a) for a in typing.get_args(core)]), default=None,
                            help=help_text)
    if origin in (list, dict) or core in (list, dict):
        return click.option(flag, name, multiple=True, default=None, help=help_text)
    kind = {int: click.INT, float: click.FLOAT, str: click.STRING}.get(core, click.STRING)
    return click.option(flag, name, type=kind, default=None, help=help_text)


def config_options(fn: Callable) -> Callable:
    """Add one click option per ``ConversionConfig`` field to a command; the command receives them as keyword
    arguments, of which only those the user gave should be passed on (``collect_config``)."""
    for name, field in reversed(list(ConversionConfig.model_fields.items())):
        fn = _click_option(name, field)(fn)
    return fn


def collect_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the config options out of a command's kwargs, keeping only those given on the command line."""
    out = {}
    for name in ConversionConfig.model_fields:
        value = kwargs.pop(name, None)
        if value is None or value == ():
            continue
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SepconvError as e:
            _fail(str(e), EXIT_USER)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except click.exceptions.ClickException:
            raise
        except Exception as e:  # last resort: a bug of ours; say so without a traceback
            if os.environ.get("SEPCONV_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (set SEPCONV_DEBUG=1 for a traceback)", EXIT_INTERNAL)

    return wrapper


def _fail(message: str, code: int) -> None:
    click.echo(f"sepconv: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="sepconv", prog_name="sepconv")
def cli() -> None:
    """sepconv: turn standard CNNs into depthwise-separable ones, with an honest report."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the converted model (same format as the input).")
@config_options
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A .npz of verification inputs: an 'inputs' array, or arrays named like the model's inputs.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON report to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the verification runs.")
@_handle_errors
def convert(model: Path, output: Path, inputs: Path | None, report_path: Path | None, as_json: bool, device: str,
            **kwargs: Any) -> None:
    """Convert MODEL (ONNX, ONNX .zip with external data, or TorchScript) and report on the result."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    import converter  # heavy imports only when a conversion runs

    from ._render import render_report

    options = collect_config(kwargs)
    config = ConversionConfig.from_options(**options)
    if not model.exists():
        raise converter.InvalidOptionsError(f"model file not found: {model}")
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description:<8}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("load", total=1.0)
        result = converter.convert(model, output, config=config, inputs=inputs, device=device,
                                   progress=lambda stage, frac: bar.update(task, completed=frac, description=stage))
    report = result.report
    text = report.model_dump_json(indent=2)
    if report_path is not None:
        report_path.write_text(text + "\n")
    if as_json:
        click.echo(text)
        return
    out = Console()
    render_report(report, out, title=f"{model.name} → {result.output_path.name} ({report.format})")
    out.print(f"wrote {result.output_path}" + (f" and {report_path}" if report_path else ""))


def main() -> None:
    """Entry point of the ``sepconv`` console script."""
    cli(prog_name="sepconv")


if __name__ == "__main__":  # python -m service.cli
    main()
