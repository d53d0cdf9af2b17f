"""The exceptions the converter raises, and nothing else.

Every error a user can meet derives from one base, so callers (the CLI, the service, the SDK's server side)
catch one type and print its message; lower-level errors (protobuf, torch, onnxruntime, numpy) are wrapped with
``raise … from e`` and a message naming the layer or step that failed::

    SepconvError
    ├── InvalidOptionsError     unknown, out-of-range or contradictory options; bad --input-shape or inputs
    ├── UnsupportedModelError   no registered format, empty, truncated, corrupt, unsafe archive
    ├── ConversionError         a layer could not be rewritten, or the result could not be saved
    └── VerificationError       the original or converted model would not run on the verification inputs

Besides the types it holds two helpers: ``one_line`` turns a lower-level exception into the short text those
messages quote, and ``map_errors`` is the one place a boundary maps lower-level exceptions to a ``SepconvError``
(in the style of httpx's ``map_exceptions``). It imports nothing beyond the standard library: the torch-free
parts (config, report, SDK) use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "ConversionError",
    "InvalidOptionsError",
    "SepconvError",
    "UnsupportedModelError",
    "VerificationError",
    "map_errors",
    "one_line",
]


class SepconvError(Exception):
    """Base of every error sepconv raises on purpose. Its message is one line a user can act on."""

    #: A short, stable machine-readable code; the service puts it in its error body.
    code: str = "sepconv_error"


class InvalidOptionsError(SepconvError, ValueError):
    """The options are unknown, out of range or contradict each other (or the model they are used with)."""

    code = "invalid_options"


class UnsupportedModelError(SepconvError):
    """The input is not a model sepconv reads: no registered format reads it, or it is empty, truncated, corrupt
    or unsafe."""

    code = "unsupported_model"


class ConversionError(SepconvError):
    """Rewriting a layer, or saving the rewritten model, failed; the message names the layer or step."""

    code = "conversion_failed"


class VerificationError(SepconvError):
    """The original or the converted model did not run on the verification inputs."""

    code = "verification_failed"


def one_line(e: BaseException, limit: int = 300, *, whole: bool = False) -> str:
    """A lower-level exception's message as one short line, to quote in a ``SepconvError``.

    By default its first non-empty line: torch and onnxruntime put backtraces and source locations after it.
    With ``whole``, every line joined (onnx's and protobuf's messages spread their meaning over several).
    Whitespace is collapsed and the text cut to ``limit`` characters (ending in "…").
    """
    text = str(e).strip()
    if not whole:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        # TorchScript's interpreter puts a fixed header first, its TorchScript and Python tracebacks next, and the
        # error itself ("RuntimeError: …") last.
        text = lines[-1] if lines and lines[0].startswith("The following operation failed") else \
            next(iter(lines), "")
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def map_errors(what: str, to: type[Exception], *, keep: tuple[type[BaseException], ...] = (SepconvError,),
               limit: int = 300, type_name: bool = True, whole: bool = False) -> Iterator[None]:
    """Turn any exception raised in the block into ``to`` with the message ``"<what>: <Type>: <one line of the
    original>"`` (without the type when ``type_name`` is False), chained with ``from``.

    ``to`` itself and the types in ``keep`` (by default every ``SepconvError``: it already speaks to the user)
    pass through unchanged, and so do ``KeyboardInterrupt`` and ``SystemExit``. The service uses it at its own
    boundaries too (storage, the broker, the upload parser) with its own error types."""
    try:
        yield
    except (to, *keep):
        raise
    except Exception as e:
        detail = one_line(e, limit, whole=whole)
        raise to(f"{what}: {type(e).__name__}: {detail}" if type_name else f"{what}: {detail}") from e
