"""Pieces shared by the ``sepconv`` commands: conversion flags generated from ``ConversionConfig``, and the
error handling that turns any failure into one line and an exit code (no traceback for users)."""

from __future__ import annotations

import functools
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import click

from converter import REPEATABLE_FIELDS, ConversionConfig, SepconvError

__all__ = ["EXIT_INTERNAL", "EXIT_USER", "collect_config", "config_options", "fail", "handle_errors"]

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
    if name in REPEATABLE_FIELDS:
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


def handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SepconvError as e:
            fail(str(e), EXIT_USER)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except click.exceptions.ClickException:
            raise
        except Exception as e:  # last resort: a bug of ours; say so without a traceback
            if os.environ.get("SEPCONV_DEBUG"):
                raise
            fail(f"internal error: {type(e).__name__}: {e} (set SEPCONV_DEBUG=1 for a traceback)", EXIT_INTERNAL)

    return wrapper


def fail(message: str, code: int) -> None:
    click.echo(f"sepconv: error: {message}", err=True)
    sys.exit(code)
