"""The one small interface every model format implements, the format-neutral records it produces, and the
registry that picks an adapter from a file's content (never its name).

Adding a format (``.pt2`` from ``torch.export``, say) means adding one module that defines a ``FormatAdapter``
and registers it; the pipeline, planner, verifier and report do not change.

Nothing here imports torch or onnx.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .._decompose import Lowered
from .._errors import UnsupportedModelError

__all__ = [
    "ConvLayer",
    "FormatAdapter",
    "InputSpec",
    "ModelStats",
    "Rewrite",
    "Runner",
    "adapter_for",
    "detect_format",
    "modelproto_fields",
    "register",
    "registered_formats",
    "sniff_model",
]


@dataclass
class ConvLayer:
    """A convolution found in a model, described without reference to its format.

    Attributes:
        name: a stable, readable layer name (ONNX node name, or TorchScript module path such as ``features.0``).
        op: the operator as the format spells it (``Conv``, ``aten::conv2d``, ``aten::_convolution``…).
        kernel: spatial kernel shape.
        in_channels, out_channels, groups: as in the conv.
        weight: the constant weight ``[out, in/groups, *kernel]`` as float32 (ConvTranspose weights regrouped to
            this layout), or None when it is not a constant.
        transposed: a transposed convolution (not converted yet).
        note: why ``weight`` is None, or anything else the planner must know (becomes the skip reason).
        in_spatial, out_spatial: spatial sizes of the conv's input and output for the verification shapes
            (batch excluded), or None when they could not be inferred; MACs need them.
        handle: the adapter's own reference to the node; opaque to everything else.
    """

    name: str
    op: str
    kernel: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    weight: np.ndarray | None
    transposed: bool = False
    note: str | None = None
    in_spatial: tuple[int, ...] | None = None
    out_spatial: tuple[int, ...] | None = None
    handle: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Rewrite:
    """Replace ``layer`` by the convs of ``lowered`` (names ``<layer.name>/<step.name>``)."""

    layer: ConvLayer
    lowered: Lowered


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, dims (int, or a str/None for a symbolic or unknown dim), numpy dtype."""

    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: np.dtype


@dataclass(frozen=True)
class ModelStats:
    """Whole-model counts, measured on the model itself.

    ``params``: elements of all floating-point constant tensors (weights, biases, BN statistics…).
    ``macs``: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (and their aten equivalents) for the
    given input shapes, which the pipeline gives with batch 1 (so MACs are per sample), or None where a shape
    could not be inferred. ONNX counts from inferred shapes (both branches of an If, one Loop iteration);
    TorchScript counts what one run executes.
    """

    params: int
    macs: int | None


#: Runs a model on named inputs and returns its outputs in order.
Runner = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]


@runtime_checkable
class FormatAdapter(Protocol):
    """Everything the pipeline needs from a format. Implementations live in ``formats/_<name>.py``.

    ``load`` returns an adapter-specific model object that the other methods take; ``apply`` edits it (in place
    or not) and returns the edited model. Errors are raised as ``SepconvError`` subclasses naming the step.
    """

    #: The format's name in reports and the API: ``onnx`` or ``torchscript``.
    name: ClassVar[str]
    #: File suffix for outputs of this format when the input was a single file (``.onnx``, ``.pt``).
    suffix: ClassVar[str]

    def detect(self, path: Path) -> bool:
        """Full check of a file's content: is it a model of this format? Never raises for foreign content."""
        ...

    def load(self, path: Path, workdir: Path) -> Any:
        """Load a model; ``workdir`` is a private scratch folder (archives are unpacked there)."""
        ...

    def input_specs(self, model: Any) -> list[InputSpec]:
        """The model's inputs."""
        ...

    def find_convs(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
        """Every convolution of the model, subgraphs included, in graph order, with spatial sizes inferred for
        the given concrete input shapes where possible."""
        ...

    def apply(self, model: Any, rewrites: Sequence[Rewrite]) -> Any:
        """Replace the listed layers; returns the edited model."""
        ...

    def save(self, model: Any, dest: Path) -> Path:
        """Write the model to ``dest`` (a file path; the adapter may change the suffix, e.g. ``.zip`` for ONNX
        with external data) and return the path written. Writes to a temporary name and renames, so a failed
        save never leaves a partial file at ``dest``."""
        ...

    def stats(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> ModelStats:
        """Parameter and MAC counts of the model, measured on it."""
        ...

    def runner(self, path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
        """Load a saved model file for inference in this process; returns the runner and a backend label
        (``onnxruntime-cpu``, ``torch-cpu``…)."""
        ...


_REGISTRY: dict[str, FormatAdapter] = {}


def register(adapter: FormatAdapter) -> FormatAdapter:
    """Add an adapter to the registry (keyed by its ``name``) and return it."""
    _REGISTRY[adapter.name] = adapter
    return adapter


def registered_formats() -> list[str]:
    """Names of the registered formats."""
    _load_builtin()
    return list(_REGISTRY)


def adapter_for(name: str) -> FormatAdapter:
    """The adapter registered under ``name``."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedModelError(f"unknown model format {name!r}") from None


def detect_format(path: Path) -> FormatAdapter:
    """The adapter whose ``detect`` accepts the file's content.

    Raises:
        UnsupportedModelError: the file is empty or no adapter reads it; the message says what it looks like.
    """
    _load_builtin()
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UnsupportedModelError(f"cannot read model file {path}: {e.strerror}") from None
    if size == 0:
        raise UnsupportedModelError("the model file is empty")
    for adapter in _REGISTRY.values():
        if adapter.detect(path):
            return adapter
    raise UnsupportedModelError(_describe_unknown(path))


def _describe_unknown(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "not a model sepconv reads: a damaged or truncated zip archive"
        if any(n.endswith("data.pkl") for n in names) and not any("/code/" in n for n in names):
            return ("not a model sepconv reads: a torch.save checkpoint (weights, no code); export the model with "
                    "torch.jit.script/torch.jit.trace or torch.onnx.export")
        return ("not a model sepconv reads: a zip archive that is neither TorchScript (torch.jit.save) "
                "nor an ONNX model with its external data files")
    if head[:1] == b"\x80":
        return ("not a model sepconv reads: a Python pickle (an old torch.save checkpoint?); export the model with "
                "torch.jit.script/torch.jit.trace or torch.onnx.export")
    return "not a model sepconv reads: expected an ONNX file, an ONNX .zip with external data, or TorchScript"


# ModelProto's field numbers and the wire type each must have (0 varint, 2 length-delimited).
_MODELPROTO_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


def _varint(buf: bytes, i: int) -> tuple[int, int] | None:
    value = shift = 0
    while i < len(buf) and shift < 64:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    return None


def sniff_model(head: bytes) -> str | None:
    """Cheap, dependency-free look at a file's first bytes (a few KiB): ``"onnx"`` if they parse as the start of
    an ONNX ModelProto, ``"zip"`` for a zip archive (TorchScript, or ONNX with external data: the worker tells
    them apart), or None for anything else. It reads no more than it is given and never raises.

    It is a pre-filter for uploads (answer 415 at once); ``detect_format`` is the full check.
    """
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    i, fields = 0, 0
    while i < len(head) and fields < 4:
        tag = _varint(head, i)
        if tag is None:
            break  # the head ends inside a tag: judge on what was read
        key, i = tag
        number, wire = key >> 3, key & 7
        if _MODELPROTO_FIELDS.get(number) != wire:
            return None
        length = _varint(head, i)
        if length is None:
            break
        value, i = length
        if wire == 2:
            i += value
        fields += 1
        if number == 7:  # the graph: a model has been recognised
            return "onnx"
    return "onnx" if fields >= 2 or (fields == 1 and i >= len(head)) else None


def modelproto_fields(path: Path) -> set[int] | None:
    """The field numbers of a file's top-level ModelProto fields, or None if the file is not one whole
    ModelProto at the top level (an unknown field or wire type, or a field running past the end: truncated).

    Only the top level is walked: length-delimited fields (the graph, with its weights) are skipped by seeking,
    so this costs a few reads however large the model. Nested corruption is left to the parser.
    """
    import mmap

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                seen: set[int] = set()
                i = 0
                while i < size:
                    tag = _varint(buf[i:i + 10], 0)
                    if tag is None:
                        return None
                    key, used = tag
                    i += used
                    number, wire = key >> 3, key & 7
                    if _MODELPROTO_FIELDS.get(number) != wire:
                        return None
                    value = _varint(buf[i:i + 10], 0)
                    if value is None:
                        return None
                    length, used = value
                    i += used
                    if wire == 2:
                        i += length
                    seen.add(number)
                return seen if i == size else None
    except (OSError, ValueError):
        return None


_BUILTIN_LOADED = False


def _load_builtin() -> None:
    """Import the built-in adapters (they register themselves); lazily, so importing the package stays cheap."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    from . import _onnx, _torchscript  # noqa: F401
