"""The registry of model formats: the one list every other list of formats derives from (report and API schemas,
the job runner, upload validation, CLI help, error texts).

A format is registered by its light ``FormatInfo`` (name, title, suffixes, a dependency-free sniff of the first
bytes, the adapter to import); the adapter module, which may import onnx or torch, is imported only when a
file's first bytes pass that format's sniff or its adapter is asked for by name. So detecting and converting
an ONNX model never imports torch.

The built-in formats are the lines at the end of this module; a plug-in calls ``register`` with its own
``FormatInfo``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .._errors import UnsupportedModelError
from . import _onnx, _pt2, _torchscript
from ._archive import ZIP_MAGIC, member_names
from ._base import FormatAdapter, FormatInfo

__all__ = [
    "HEAD_BYTES",
    "adapter_for",
    "describe_unknown",
    "detect_format",
    "expected_formats",
    "format_info",
    "format_names",
    "formats",
    "precheck",
    "register",
    "sniff_formats",
]

#: How many leading bytes ``sniff_formats`` needs to judge a file.
HEAD_BYTES = 4096

_FORMATS: dict[str, FormatInfo] = {}
_ADAPTERS: dict[str, FormatAdapter] = {}


def register(info: FormatInfo) -> FormatInfo:
    """Add a format (replacing one of the same name) and return it."""
    _FORMATS[info.name] = info
    _ADAPTERS.pop(info.name, None)
    return info


def formats() -> list[FormatInfo]:
    """The registered formats, in the order detection tries them."""
    return list(_FORMATS.values())


def format_names() -> tuple[str, ...]:
    """The registered formats' names (``onnx``, ``torchscript``, ``pt2``)."""
    return tuple(_FORMATS)


def format_info(name: str) -> FormatInfo:
    """The descriptor registered under ``name``.

    Raises:
        UnsupportedModelError: no format has that name.
    """
    try:
        return _FORMATS[name]
    except KeyError:
        raise UnsupportedModelError(f"unknown model format {name!r} (known: {', '.join(_FORMATS)})") from None


def adapter_for(name: str) -> FormatAdapter:
    """The adapter of the format ``name``, its module imported on first use.

    Raises:
        UnsupportedModelError: no format has that name, or its adapter needs a package that is not installed.
    """
    adapter = _ADAPTERS.get(name)
    if adapter is None:
        info = format_info(name)
        module, _, attr = info.adapter.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise UnsupportedModelError(f"reading {info.title} needs the Python package {e.name!r}, which is not "
                                        "installed") from e
        adapter = _ADAPTERS[name] = cls()
    return adapter


def sniff_formats(head: bytes) -> list[str]:
    """Names of the formats a file starting with ``head`` (its first ``HEAD_BYTES``) could be; empty when none.

    Cheap, dependency-free and never raises: the upload endpoint's pre-filter. ``detect_format`` is the full
    check (several zip-based formats may sniff the same first bytes).
    """
    out = []
    for info in _FORMATS.values():
        try:
            if info.sniff(head):
                out.append(info.name)
        except Exception:  # a plug-in's sniff that raises just does not recognise the file
            continue
    return out


def detect_format(path: Path) -> FormatAdapter:
    """The adapter whose ``detect`` accepts the file's content, trying only the formats whose sniff accepts its
    first bytes (so only their adapter modules are imported).

    Raises:
        UnsupportedModelError: the file is unreadable, empty, or no adapter reads it; the message says what it
            looks like.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as e:
        raise UnsupportedModelError(f"cannot read model file {path}: {e.strerror}") from None
    if not head:
        raise UnsupportedModelError("the model file is empty")
    for name in sniff_formats(head):
        adapter = adapter_for(name)
        if adapter.detect(path):
            return adapter
    raise UnsupportedModelError(describe_unknown(path, head))


def expected_formats() -> str:
    """The registered formats' titles as one phrase (``ONNX …, TorchScript … or …``), for help and errors."""
    titles = [info.title for info in _FORMATS.values()]
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " or " + titles[-1]


def describe_unknown(path: Path | None, head: bytes) -> str:
    """The one-line reason a file is not a model sepconv reads: a format's diagnosis of a near miss if one has
    it (only when the whole file is at hand), else what the file looks like and what was expected."""
    if path is not None:
        for info in _FORMATS.values():
            try:
                reason = info.diagnose(path, head) if info.diagnose is not None else None
            except Exception:  # a diagnosis is a courtesy: never let it hide the real answer
                reason = None
            if reason:
                return f"not a model sepconv reads: {reason}"
        if head[:4] in ZIP_MAGIC and member_names(path) is None:
            return "not a model sepconv reads: a damaged or truncated zip archive"
    return f"not a model sepconv reads: expected {expected_formats()}"


# The built-in formats, in the order detection tries them (ONNX first: its zips are checked without torch).
register(_onnx.FORMAT)
register(_torchscript.FORMAT)
register(_pt2.FORMAT)


def precheck(path: Path) -> str:
    """Detect ``path``'s format and run its static checks (``FormatInfo.precheck``: they read the file and run
    nothing of it); returns the format's name.

    Raises:
        UnsupportedModelError: no format reads the file, or its checks refuse it (one line naming why).
    """
    info = format_info(detect_format(path).name)
    if info.precheck:
        module, _, attr = info.precheck.partition(":")
        getattr(importlib.import_module(module), attr)(Path(path))
    return info.name
