"""The ONNX format adapter: read an ``.onnx`` file (or a ``.zip`` of one ``.onnx`` and its external data), find
its convolutions, replace them by depthwise-separable convs as an onnx-ir pass, and write the result back.

In memory a model is an ``onnx_ir.Model`` wrapped in ``OnnxModel``, which remembers whether it came with
external data (then ``save`` writes a ``.zip`` again). The rewrite is a pipeline of passes::

    DecomposeConvsPass(rewrites)            each listed Conv -> the convs of its ``Lowered`` program
    RemoveUnusedNodesPass                   old weight Constant/Identity nodes, main-graph initializers
    RemoveUnusedInitializersPass            initializers of subgraphs (If/Loop/Scan bodies) too
    TopologicalSortPass

and the cleanup runs only when the first pass changed something, so "no rewrites" leaves the model untouched.

Untrusted input is the normal case (files come from an upload endpoint): archives are unpacked only into the
given work folder, with absolute paths, ``..``, symlinks, special files, duplicate names and oversized
contents refused, and every external-data reference must be a relative path to a regular file inside the
model's own folder. Everything that goes wrong with the input is an ``UnsupportedModelError`` with a one-line
message; a failed rewrite or save is a ``ConversionError`` naming the layer or step.

This module deliberately does not decide which layers to convert or at which rank (``_plan``), does not compute
factors (``_decompose``), does not rewrite ``ConvTranspose`` or convs inside model-local functions, and does
not change the model's IR version or opset imports (onnxruntime reads only the IR versions it knows).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import stat
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from .._decompose import ConvStep, Lowered
from .._errors import ConversionError, InvalidOptionsError, UnsupportedModelError, one_line
from ._base import ConvLayer, InputSpec, ModelStats, Rewrite, Runner, modelproto_fields, register, sniff_model

__all__ = [
    "DecomposeConvsPass",
    "OnnxAdapter",
    "OnnxModel",
    "RemoveUnusedInitializersPass",
    "decompose_convs",
]

#: Refuse archives that would unpack to more than this many bytes (zip bombs).
MAX_UNPACKED_BYTES = 16 * 2**30
#: Refuse archives with more members than this.
MAX_ZIP_MEMBERS = 10_000
#: Above this many bytes of tensor data a model cannot be one protobuf (2 GiB limit): ``save`` writes a .zip.
SINGLE_FILE_LIMIT = 1_800_000_000

_ONNX_DOMAINS = frozenset({"", "ai.onnx"})
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_SPATIAL_ATTRS = ("strides", "pads", "auto_pad", "dilations")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Float tensors larger than this are replaced by shape-only stubs before shape inference, which serialises
# the model (a protobuf is limited to 2 GiB, and copying weights is pointless for shapes).
_STUB_BYTES = 1024
_STUB_LOCATION = "__sepconv_shape_stub__"

_NOTE_OVERRIDABLE = "weight is a graph input (overridable), not a constant"

Dims = tuple[int | None, ...]


@dataclass
class OnnxModel:
    """An ONNX model held as an onnx-ir ``Model``, and how it was stored.

    Attributes:
        model: the in-memory model; ``apply`` edits it in place.
        base_dir: the folder external data is read from (None for a model built in memory).
        external_data: the model came with external data files, so ``save`` writes a ``.zip`` again.
    """

    model: ir.Model
    base_dir: Path | None = None
    external_data: bool = False
    # Shape inference by (edit count, input shapes): find_convs and stats ask for the same one.
    _shape_tables: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto) -> OnnxModel:
        """Wrap a ``ModelProto`` that has no external data (for models built in memory)."""
        model = _deserialize(proto)
        _materialize(model)
        return cls(model)


# --------------------------------------------------------------------------------------------------------------
# Reading files


def _looks_like_model_proto(head: bytes) -> bool:
    return sniff_model(head) == "onnx"


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in _ZIP_MAGIC


def _parse_proto(data: bytes, what: str) -> onnx.ModelProto:
    """Parse and sanity-check a serialised ModelProto; every failure is one readable line."""
    if not data:
        raise UnsupportedModelError(f"{what} is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:
        raise UnsupportedModelError(
            f"{what} is not a readable ONNX model: it could not be parsed (truncated or corrupt file?)") from e
    if not proto.HasField("graph"):
        raise UnsupportedModelError(f"{what} is not an ONNX model: it has no graph")
    if proto.ir_version < 1:
        raise UnsupportedModelError(f"{what} is not an ONNX model: it declares no IR version")
    if not any(op.domain in _ONNX_DOMAINS for op in proto.opset_import):
        raise UnsupportedModelError(f"{what} declares no ONNX opset (truncated file?)")
    return proto


def _read_proto(path: Path) -> onnx.ModelProto:
    # Read the bytes ourselves: onnx.load picks a parser from the file's extension, and we go by content.
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnsupportedModelError(f"cannot read the model file {path.name}: {e.strerror}") from e
    return _parse_proto(data, f"the model file {path.name}")


def _materialize(model: ir.Model) -> None:
    """Give every in-file tensor its own numpy array, so that the parsed protobuf (which each protobuf-backed
    tensor keeps alive, whole) is freed and ``numpy()`` returns views instead of a fresh copy per call: one
    copy of the weights in memory instead of two or three. External (memory-mapped) tensors stay as they are."""

    def own(t: Any) -> Any:
        if isinstance(t, ir.TensorProtoTensor) and t.dtype != ir.DataType.STRING:
            return ir.Tensor(t.numpy(), dtype=t.dtype, name=t.name, doc_string=t.doc_string)
        return t

    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            value.const_value = own(value.const_value)
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR:
                    node.attributes[name] = ir.AttrTensor(name, own(attr.value), doc_string=attr.doc_string)


def _deserialize(proto: onnx.ModelProto) -> ir.Model:
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as e:
        raise UnsupportedModelError(f"the ONNX model could not be read: {one_line(e, whole=True)}") from e


# --------------------------------------------------------------------------------------------------------------
# Archives


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive member, refusing absolute paths and ``..``."""
    norm = name.replace("\\", "/")
    if "\x00" in name or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsupportedModelError(f"unsafe zip archive: member {name!r} has an absolute path")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsupportedModelError(f"unsafe zip archive: member {name!r} points outside the archive (..)")
    if not parts:
        raise UnsupportedModelError(f"unsafe zip archive: member {name!r} has no name")
    return parts


def _is_torchscript_layout(names: Sequence[tuple[str, ...]]) -> bool:
    pickles = any(p[-1] == "data.pkl" for p in names)
    code = any("code" in p[:-1] for p in names)
    return pickles and code


def _safe_members(zf: zipfile.ZipFile) -> list[_Member]:
    """The archive's files (directories and macOS ``__MACOSX`` forks left out), after the safety checks."""
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise UnsupportedModelError(f"zip archive has {len(infos)} members, more than {MAX_ZIP_MEMBERS}")
    members: list[_Member] = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        parts = _member_parts(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise UnsupportedModelError(f"unsafe zip archive: member {info.filename!r} is a symbolic link")
        if info.is_dir() or parts[0] == "__MACOSX":
            continue
        if kind not in (0, stat.S_IFREG):
            raise UnsupportedModelError(f"unsafe zip archive: member {info.filename!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise UnsupportedModelError(f"zip member {info.filename!r} is encrypted")
        key = "/".join(parts).lower()
        if key in seen:
            raise UnsupportedModelError(f"zip archive has two members named {info.filename!r}")
        seen.add(key)
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise UnsupportedModelError(
                f"zip archive unpacks to more than {MAX_UNPACKED_BYTES} bytes; refusing it")
        members.append(_Member(info, parts))
    return members


def _model_member(members: Sequence[_Member]) -> _Member:
    if _is_torchscript_layout([m.parts for m in members]):
        raise UnsupportedModelError("the zip archive is a TorchScript model, not ONNX")
    models = [m for m in members if m.parts[-1].lower().endswith(".onnx")]
    if not models:
        raise UnsupportedModelError("the zip archive contains no .onnx model")
    if len(models) > 1:
        names = ", ".join("/".join(m.parts) for m in models[:5])
        raise UnsupportedModelError(
            f"the zip archive contains more than one .onnx model ({names}): put exactly one model and its "
            "external data files in it")
    return models[0]


def _unpack_zip(path: Path, workdir: Path) -> Path:
    """Unpack a model archive into a new folder under ``workdir``; returns the path of its ``.onnx`` file."""
    workdir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="onnx-", dir=workdir))
    try:
        with zipfile.ZipFile(path) as zf:
            members = _safe_members(zf)
            model = _model_member(members)
            written = 0
            for m in members:
                target = folder.joinpath(*m.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m.info) as src, open(target, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES:
                            raise UnsupportedModelError(
                                f"zip archive unpacks to more than {MAX_UNPACKED_BYTES} bytes; refusing it")
                        dst.write(chunk)
    except UnsupportedModelError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, NotImplementedError, RuntimeError, EOFError) as e:
        raise UnsupportedModelError(f"the zip archive could not be unpacked: {one_line(e, whole=True)}") from e
    return folder.joinpath(*model.parts)


def _zip_looks_like_onnx(path: Path) -> bool:
    """One ``.onnx`` member that starts like a ModelProto, and not a TorchScript layout. Member names are not
    judged here: ``load`` refuses unsafe ones with a reason."""
    with zipfile.ZipFile(path) as zf:
        files = []
        for info in zf.infolist():
            parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p)
            if parts and not info.is_dir() and parts[0] != "__MACOSX":
                files.append((info, parts))
        if _is_torchscript_layout([parts for _, parts in files]):
            return False
        models = [info for info, parts in files if parts[-1].lower().endswith(".onnx")]
        if len(models) != 1:
            return False
        if stat.S_ISLNK(models[0].external_attr >> 16):
            return True
        with zf.open(models[0]) as f:
            return _looks_like_model_proto(f.read(4096))


# --------------------------------------------------------------------------------------------------------------
# External data


def _all_tensors(model: ir.Model) -> Iterator[tuple[str, ir.TensorProtocol]]:
    """(owner, tensor) for every initializer and tensor attribute, in every graph and function."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield f"initializer {value.name!r}", value.const_value
    for graph_like in (model.graph, *model.functions.values()):
        for node in ir.traversal.RecursiveGraphIterator(graph_like):
            for attr in node.attributes.values():
                if not isinstance(attr, ir.Attr) or attr.is_ref():
                    continue
                owner = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
                if attr.type == ir.AttributeType.TENSOR:
                    yield owner, attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    for t in attr.value:
                        yield owner, t


def _external_nbytes(t: ir.ExternalTensor) -> int:
    return math.ceil(math.prod(t.shape.numpy()) * t.dtype.bitwidth / 8)


def _check_external_data(model: ir.Model, base_dir: Path, zipped: bool) -> bool:
    """Check every external-data reference and point it at ``base_dir``; returns whether there was any.

    Raises:
        UnsupportedModelError: a location is absolute, has ``..``, is or passes through a symlink, resolves
            outside ``base_dir``, is missing, or is too short for its tensor.
    """
    found = False
    base_real = os.path.realpath(base_dir)
    for owner, t in _all_tensors(model):
        if not isinstance(t, ir.ExternalTensor):
            continue
        found = True
        loc = str(t.location)
        where = f"{owner} stores its data in {loc!r}"
        norm = loc.replace("\\", "/")
        parts = [p for p in norm.split("/") if p not in ("", ".")]
        if not parts or "\x00" in loc or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
            raise UnsupportedModelError(
                f"{where}, outside the model's folder: external data must be a relative path next to the .onnx")
        current = base_dir
        for p in parts:
            current = current / p
            if current.is_symlink():
                raise UnsupportedModelError(f"{where}, which is a symbolic link; refusing to follow it")
        if not current.is_file():
            if zipped:
                raise UnsupportedModelError(f"{where}, which is not in the zip archive")
            raise UnsupportedModelError(
                f"{where}, which was not supplied: upload the .onnx and its data files together as one .zip")
        real = os.path.realpath(current)
        if os.path.commonpath([real, base_real]) != base_real:
            raise UnsupportedModelError(f"{where}, which resolves outside the model's folder")
        size = current.stat().st_size
        offset = t.offset or 0
        need = _external_nbytes(t)
        if t.length is not None and t.length < need:
            raise UnsupportedModelError(f"{where} with length {t.length}, too short for the tensor ({need} bytes)")
        if offset < 0 or offset + need > size:
            raise UnsupportedModelError(f"{where} at offset {offset}, beyond the end of the file ({size} bytes)")
        t.base_dir = str(base_dir)
    return found


def _has_external(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for _, t in _all_tensors(model))


def _tensor_bytes(model: ir.Model) -> int:
    return sum(t.nbytes for _, t in _all_tensors(model))


# --------------------------------------------------------------------------------------------------------------
# Shapes


def _dims_of(shape: ir.Shape | None) -> Dims | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in shape.dims)


def _check_input_shapes(model: ir.Model, input_shapes: Mapping[str, tuple[int, ...]]) -> None:
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    for name, dims in input_shapes.items():
        if name not in inputs:
            known = ", ".join(repr(n) for n in inputs) or "none"
            raise InvalidOptionsError(f"input shape given for {name!r}, which is not an input of the model "
                                      f"(inputs: {known})")
        declared = _dims_of(inputs[name].shape)
        if declared is None:
            continue
        # Fixed dims may be overridden on purpose (the pipeline counts MACs per sample, with batch 1).
        if len(declared) != len(dims):
            raise InvalidOptionsError(f"input {name!r} has {len(declared)} dimensions, but the shape given has "
                                      f"{len(dims)}: {tuple(dims)}")


def _stub(t: ir.TensorProtocol, name: str | None) -> ir.ExternalTensor:
    return ir.ExternalTensor(_STUB_LOCATION, 0, t.nbytes, t.dtype, shape=ir.Shape(t.shape.dims), name=name or "")


def _stub_large_tensors(model: ir.Model) -> None:
    """Replace big float tensors of a (cloned) model by shape-only references, so serialising it is cheap."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if t is not None and t.dtype.is_floating_point() and t.nbytes > _STUB_BYTES:
                value.const_value = _stub(t, value.name)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        attr = node.attributes.get("value")
        if node.op_type == "Constant" and isinstance(attr, ir.Attr) and attr.type == ir.AttributeType.TENSOR:
            t = attr.value
            if t.dtype.is_floating_point() and t.nbytes > _STUB_BYTES:
                node.attributes["value"] = ir.AttrTensor("value", _stub(t, t.name))


def _collect_shapes(graph: onnx.GraphProto, table: dict[str, Dims | None]) -> None:
    for init in graph.initializer:
        table[init.name] = tuple(int(d) for d in init.dims)
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            table.setdefault(vi.name, None)
            continue
        table[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_shapes(attr.g, table)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _collect_shapes(g, table)


def _shape_table(model: ir.Model, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Dims | None]:
    """Dims of every value (by name, all graphs) after ONNX shape inference with the given input shapes.

    Inference runs on a clone whose big weights are shape-only stubs; it is not strict, so an operator it does
    not know leaves the values downstream of it unknown instead of failing. If it fails outright, the shapes
    the model declares are used.
    """
    _check_input_shapes(model, input_shapes)
    try:
        clone = model.clone()
    except Exception:  # e.g. a graph that is not in topological order: use what the model declares
        return _declared_shapes(model)
    _stub_large_tensors(clone)
    for value in clone.graph.inputs:
        if value.name in input_shapes:
            value.shape = ir.Shape(list(input_shapes[value.name]))
    proto = ir.serde.serialize_model(clone)
    with contextlib.suppress(Exception):  # best effort: on failure the declared shapes are used
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    table: dict[str, Dims | None] = {}
    _collect_shapes(proto.graph, table)
    return table


def _declared_shapes(model: ir.Model) -> dict[str, Dims | None]:
    table: dict[str, Dims | None] = {}
    for graph in model.graphs():
        for value in (*graph.inputs, *graph.initializers.values()):
            table[value.name or ""] = _dims_of(value.shape)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            table[value.name or ""] = _dims_of(value.shape)
    return table


def _static(dims: Dims | None) -> tuple[int, ...] | None:
    if dims is None or any(d is None for d in dims):
        return None
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def _value_dims(value: ir.Value | None, table: Mapping[str, Dims | None]) -> tuple[int, ...] | None:
    if value is None:
        return None
    dims = _static(table.get(value.name or ""))
    if dims is None and value.const_value is not None:
        dims = tuple(value.const_value.shape.numpy())
    if dims is None:
        dims = _static(_dims_of(value.shape))
    return dims


def _spatial(dims: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return dims[2:] if dims is not None and len(dims) >= 3 else None


def _ints(node: ir.Node, name: str, default: Sequence[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if isinstance(attr, ir.Attr) and not attr.is_ref() else list(default)


def _int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if isinstance(attr, ir.Attr) and not attr.is_ref() else default


def _auto_pad(node: ir.Node) -> str:
    attr = node.attributes.get("auto_pad")
    return attr.as_string() if isinstance(attr, ir.Attr) and not attr.is_ref() else "NOTSET"


def _out_spatial(node: ir.Node, in_sp: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[int, ...] | None:
    """Output spatial size of a Conv/ConvTranspose from its attributes, or None if it is not positive."""
    d = len(kernel)
    if len(in_sp) != d:
        return None
    strides = _ints(node, "strides", [1] * d)
    dilations = _ints(node, "dilations", [1] * d)
    pads = _ints(node, "pads", [0] * (2 * d))
    auto_pad = _auto_pad(node)
    out = []
    for i in range(d):
        n, s, ek = in_sp[i], strides[i], (kernel[i] - 1) * dilations[i] + 1
        if node.op_type == "ConvTranspose":
            shape = _ints(node, "output_shape", [])
            if len(shape) >= d:
                out.append(shape[-d + i])
            elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out.append(n * s)
            else:
                pb, pe = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + d])
                out.append(s * (n - 1) + _ints(node, "output_padding", [0] * d)[i] + ek - pb - pe)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-n // s))
        elif auto_pad == "VALID":
            out.append((n - ek) // s + 1)
        else:
            out.append((n + pads[i] + pads[i + d] - ek) // s + 1)
    return tuple(out) if all(o > 0 for o in out) else None


# --------------------------------------------------------------------------------------------------------------
# Finding convs


def _is_onnx_op(node: ir.Node, ops: frozenset[str]) -> bool:
    return node.op_type in ops and node.domain in _ONNX_DOMAINS


def _named_convs(model: ir.Model) -> list[tuple[str, ir.Node]]:
    """Every Conv/ConvTranspose in graph order (subgraphs included) with a unique, readable name: the node's
    own name, ``<name>_1``… for a repeated one, ``<op>_<i>`` for an unnamed one."""
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    taken = {n.name for n in nodes if n.name}
    used: set[str] = set()
    out = []
    for i, node in enumerate(n for n in nodes if _is_onnx_op(n, _CONV_OPS)):
        base = node.name or f"{node.op_type}_{i}"
        name = base
        if name in used or (not node.name and name in taken):
            k = 1
            while f"{base}_{k}" in used or f"{base}_{k}" in taken:
                k += 1
            name = f"{base}_{k}"
        used.add(name)
        out.append((name, node))
    return out


def _constant_weight(model: ir.Model, value: ir.Value | None) -> tuple[ir.TensorProtocol | None, str | None]:
    """The constant tensor behind a conv's weight input (initializer, Constant node, through Identity), or
    None and the reason it is not a constant."""
    for _ in range(64):
        if value is None:
            return None, "the conv has no weight input"
        if value.is_graph_input() and not (value.is_initializer() and model.ir_version < 4):
            # before IR 4 every initializer had to be listed as an input; onnxruntime treats those as constants
            if value.is_initializer():
                return None, _NOTE_OVERRIDABLE
            if value.graph is model.graph:
                return None, "weight is a graph input fed at run time, not a constant"
            return None, "weight is an input of a subgraph (If/Loop/Scan body), computed at run time"
        if value.const_value is not None:
            return value.const_value, None
        producer = value.producer()
        if producer is None:
            return None, "weight has no producer and no value"
        if _is_onnx_op(producer, frozenset({"Identity"})):
            value = producer.inputs[0] if producer.inputs else None
            continue
        if _is_onnx_op(producer, frozenset({"Constant"})):
            try:
                tensor = ir.convenience.get_const_tensor(value)
            except ValueError:
                tensor = None
            if tensor is None:
                return None, f"weight is a Constant node ({producer.name!r}) whose value cannot be read"
            return tensor, None
        return None, f"weight is computed at run time (by {producer.op_type} node {producer.name!r}), not a constant"
    return None, "weight is behind a chain of more than 64 Identity nodes"


def _as_conv_layout(w: np.ndarray, groups: int, transposed: bool) -> np.ndarray:
    """A ConvTranspose weight ``[M, N/g, *k]`` regrouped as ``[N, M/g, *k]`` (the layout ConvLayer documents)."""
    if not transposed:
        return w
    m, ng = w.shape[:2]
    k = w.shape[2:]
    return w.reshape(groups, m // groups, ng, *k).swapaxes(1, 2).reshape(groups * ng, m // groups, *k)


def _describe(model: ir.Model, name: str, node: ir.Node, table: Mapping[str, Dims | None]) -> ConvLayer:
    transposed = node.op_type == "ConvTranspose"
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    groups = _int(node, "group", 1)
    tensor, note = _constant_weight(model, w)
    if tensor is not None and not tensor.dtype.is_floating_point():
        tensor, note = None, f"weight has dtype {tensor.dtype}, not a floating-point type"
    if tensor is not None and len(tensor.shape) < 3:
        tensor, note = None, f"weight constant has shape {tuple(tensor.shape.numpy())}, not [N, C, *kernel]"
    wdims = tuple(tensor.shape.numpy()) if tensor is not None else _value_dims(w, table)
    x_dims = _value_dims(x, table)
    y_dims = _value_dims(node.outputs[0], table)
    kernel = tuple(_ints(node, "kernel_shape", wdims[2:] if wdims is not None and len(wdims) >= 3 else []))
    if wdims is not None and len(wdims) >= 3:
        in_ch, out_ch = (wdims[0], wdims[1] * groups) if transposed else (wdims[1] * groups, wdims[0])
    else:
        in_ch = x_dims[1] if x_dims is not None and len(x_dims) > 1 else 0
        out_ch = y_dims[1] if y_dims is not None and len(y_dims) > 1 else 0
    weight = None
    if tensor is not None:
        weight = _as_conv_layout(np.asarray(tensor.numpy()).astype(np.float32), groups, transposed)
    in_sp, out_sp = _spatial(x_dims), _spatial(y_dims)
    if out_sp is None and in_sp is not None and kernel:
        out_sp = _out_spatial(node, in_sp, kernel)
    return ConvLayer(
        name=name, op=node.op_type, kernel=kernel, in_channels=int(in_ch), out_channels=int(out_ch),
        groups=groups, weight=weight, transposed=transposed, note=note, in_spatial=in_sp, out_spatial=out_sp,
        handle=node,
    )


# --------------------------------------------------------------------------------------------------------------
# Rewriting


def _check_lowered(model: ir.Model, name: str, node: ir.Node, lowered: Lowered) -> None:
    """Refuse a conv whose weight is not a constant, or a program whose shapes cannot replace it, naming the
    layer and step. Shapes are taken from the node itself, not from the ``ConvLayer`` record."""
    if node.op_type != "Conv":
        raise ConversionError(f"layer {name!r}: {node.op_type} cannot be rewritten (not supported yet)")
    tensor, note = _constant_weight(model, node.inputs[1] if len(node.inputs) > 1 else None)
    if tensor is None or len(tensor.shape) < 3:
        raise ConversionError(f"layer {name!r}: cannot be rewritten: {note or 'the weight is not [N, C, *kernel]'}")
    wdims = tuple(tensor.shape.numpy())
    groups = _int(node, "group", 1)
    kernel = tuple(_ints(node, "kernel_shape", wdims[2:]))
    in_channels, out_channels = wdims[1] * groups, wdims[0]
    try:
        lowered.check(in_channels, out_channels, kernel)
    except ValueError as e:
        raise ConversionError(f"layer {name!r}: {e}") from e


class _Names:
    """Unique value and node names across the model (all graphs)."""

    def __init__(self, model: ir.Model) -> None:
        self.values: set[str] = set()
        self.nodes: set[str] = set()
        for graph in model.graphs():
            self.values.update(v.name for v in graph.inputs if v.name)
            self.values.update(graph.initializers)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.name:
                self.nodes.add(node.name)
            self.values.update(v.name for v in node.outputs if v.name)

    @staticmethod
    def _fresh(base: str, taken: set[str]) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    def value(self, base: str) -> str:
        return self._fresh(base, self.values)

    def node(self, base: str) -> str:
        return self._fresh(base, self.nodes)


def _replace(model: ir.Model, name: str, node: ir.Node, lowered: Lowered, names: _Names) -> None:
    """Replace one Conv node by the convs of ``lowered``; the last new node produces the conv's output value
    (same name, type and shape), so consumers and graph outputs do not change."""
    graph = node.graph
    assert graph is not None
    x = node.inputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    tensor, _ = _constant_weight(model, node.inputs[1])
    assert tensor is not None  # checked by _check_lowered
    dtype = tensor.dtype
    kernel = list(_ints(node, "kernel_shape", tuple(tensor.shape.numpy())[2:]))
    spatial_attrs = [node.attributes[k] for k in _SPATIAL_ATTRS if k in node.attributes]
    legacy = model.ir_version < 4  # IR < 4: every initializer must be a main-graph input
    new_nodes: list[ir.Node] = []

    def add_weight(step: ConvStep) -> ir.Value:
        array = np.ascontiguousarray(step.weight.astype(dtype.numpy()))
        wname = names.value(f"{name}/{step.name}.weight")
        value = ir.Value(name=wname, shape=ir.Shape(array.shape), type=ir.TensorType(dtype),
                         const_value=ir.Tensor(array, dtype=dtype, name=wname))
        target = model.graph if legacy else graph
        target.register_initializer(value)
        if legacy:
            target.inputs.append(value)
        return value

    def conv(step: ConvStep, inp: ir.Value) -> ir.Value:
        inputs: list[ir.Value | None] = [inp, add_weight(step)]
        if step.bias and bias is not None:
            inputs.append(bias)
        attrs = [ir.AttrInt64("group", step.groups),
                 ir.AttrInt64s("kernel_shape", kernel if step.spatial else [1] * len(kernel))]
        if step.spatial:
            attrs += [ir.Attr(a.name, a.type, a.value) for a in spatial_attrs]
        out = ir.Value(name=names.value(f"{name}/{step.name}_output"))
        new_nodes.append(ir.Node("", "Conv", inputs, attrs, outputs=[out], name=names.node(f"{name}/{step.name}")))
        return out

    def join(kind: str, values: list[ir.Value]) -> ir.Value:
        op, attrs = ("Concat", [ir.AttrInt64("axis", 1)]) if kind == "concat" else ("Sum", [])
        out = ir.Value(name=names.value(f"{name}/{kind}_output"))
        new_nodes.append(ir.Node("", op, values, attrs, outputs=[out], name=names.node(f"{name}/{kind}")))
        return out

    final = lowered.fold(x, conv, join)
    old = node.outputs[0]
    ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [old], [final])


class DecomposeConvsPass(ir.passes.InPlacePass):
    """Replace listed Conv nodes by the depthwise-separable convs of their ``Lowered`` programs.

    Layers are found by name (the names ``find_convs`` gives), so the rewrites may come from another copy of
    the model. Every rewrite is checked before the graph is touched. New nodes are named
    ``<layer>/<step>`` (and ``<layer>/concat``, ``<layer>/sum``), new initializers ``<layer>/<step>.weight``,
    in the weight's original dtype and in the graph that holds the conv. Old weights are left for the cleanup
    passes. Reports ``modified`` only when it replaced something.
    """

    def __init__(self, rewrites: Sequence[Rewrite]) -> None:
        super().__init__()
        self.rewrites = tuple(rewrites)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not self.rewrites:
            return ir.passes.PassResult(model, modified=False)
        convs = dict(_named_convs(model))
        todo = []
        for rw in self.rewrites:
            name = rw.layer.name
            node = convs.pop(name, None)
            if node is None:
                raise ConversionError(f"layer {name!r}: no such convolution in the model (or listed twice)")
            _check_lowered(model, name, node, rw.lowered)
            todo.append((name, node, rw))
        names = _Names(model)
        for name, node, rw in todo:
            try:
                _replace(model, name, node, rw.lowered, names)
            except ConversionError:
                raise
            except Exception as e:
                raise ConversionError(f"layer {name!r}: rewriting the conv failed: {one_line(e, whole=True)}") from e
        model.meta[_EDITS] = model.meta.get(_EDITS, 0) + 1  # invalidates cached shape inference
        return ir.passes.PassResult(model, modified=True)


class RemoveUnusedInitializersPass(ir.passes.InPlacePass):
    """Remove initializers nothing reads, in subgraphs as well (``RemoveUnusedNodesPass`` only cleans the main
    graph's). Initializers that are graph inputs or outputs stay, except in IR < 4, where every initializer is
    listed as a main-graph input by rule rather than to make it overridable."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = 0
        legacy = model.ir_version < 4
        for graph in model.graphs():
            outputs = set(graph.outputs)
            for value in list(graph.initializers.values()):
                if value.uses() or value in outputs:
                    continue
                if value.is_graph_input():
                    if not (legacy and graph is model.graph):
                        continue
                    graph.inputs.remove(value)
                assert value.name is not None
                del graph.initializers[value.name]
                count += 1
        return ir.passes.PassResult(model, modified=bool(count))


def decompose_convs(model: ir.Model, rewrites: Sequence[Rewrite]) -> ir.passes.PassResult:
    """Run ``DecomposeConvsPass`` and, if it changed the model, the cleanup passes (dead nodes, unused
    initializers, topological order).

    Raises:
        ConversionError: a layer is missing, its decomposition does not fit, or the graph could not be edited.
    """
    result = DecomposeConvsPass(rewrites)(model)
    if not result.modified:
        return result
    cleanup = ir.passes.Sequential(RemoveUnusedNodesPass(), RemoveUnusedInitializersPass(), TopologicalSortPass())
    try:
        cleanup(model)
    except Exception as e:
        raise ConversionError(f"cleaning up the rewritten graph failed: {one_line(e, whole=True)}") from e
    return ir.passes.PassResult(model, modified=True)


# --------------------------------------------------------------------------------------------------------------
# Counting


def _count_params(model: ir.Model) -> int:
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if t is not None and t.dtype.is_floating_point():
                total += math.prod(t.shape.numpy())
    for graph_like in (model.graph, *model.functions.values()):
        for node in ir.traversal.RecursiveGraphIterator(graph_like):
            if not _is_onnx_op(node, frozenset({"Constant"})):
                continue
            for attr in node.attributes.values():
                if not isinstance(attr, ir.Attr) or attr.is_ref():
                    continue
                if attr.name == "value" and attr.type == ir.AttributeType.TENSOR:
                    if attr.value.dtype.is_floating_point():
                        total += math.prod(attr.value.shape.numpy())
                elif attr.name == "value_float":
                    total += 1
                elif attr.name == "value_floats":
                    total += len(attr.value)
    return total


def _node_macs(node: ir.Node, table: Mapping[str, Dims | None]) -> int | None:
    def dims(i: int) -> tuple[int, ...] | None:
        return _value_dims(node.inputs[i], table) if len(node.inputs) > i else None

    y = _value_dims(node.outputs[0], table)
    if node.op_type in ("Conv", "ConvTranspose"):
        w = dims(1)
        if w is None or len(w) < 3:
            return None
        # Conv: every output element takes C/g·k products. ConvTranspose: every input element feeds N/g·k.
        io = y if node.op_type == "Conv" else dims(0)
        return None if io is None else math.prod(io) * math.prod(w[1:])
    a = dims(0)
    if y is None or a is None or not a:
        return None
    # every output element is a dot product of length K: Gemm A is [M, K] or [K, M]; MatMul [..., M, K]
    k = a[0] if node.op_type == "Gemm" and _int(node, "transA", 0) else a[-1]
    return math.prod(y) * k


def _count_macs(model: ir.Model, table: Mapping[str, Dims | None]) -> int | None:
    total = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not _is_onnx_op(node, _MAC_OPS):
            continue
        macs = _node_macs(node, table)
        if macs is None:
            return None
        total += macs
    return total


# --------------------------------------------------------------------------------------------------------------
# Saving


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_len_field(number: int, length: int) -> bytes:
    """Key and length prefix of a length-delimited protobuf field."""
    return _pb_varint(number << 3 | 2) + _pb_varint(length)


# Field numbers in onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _MODEL_OPSET_IMPORT, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 8, 5, 9


def _write_model(model: ir.Model, dest: Path) -> None:
    """Write ``model`` as one ``.onnx`` file without holding a second copy of its weights in memory.

    ``serialize_model(...).SerializeToString()`` would build a full protobuf and then its bytes (two extra
    copies of every weight). Instead the model is serialised without its main graph's initializers, and the
    file is assembled from the wire format: protobuf accepts a message's fields in any order and a repeated
    field's elements anywhere, so ``ModelProto = head + graph(graph head + initializers…)`` where each
    initializer is a small ``TensorProto`` header followed by its ``raw_data``, written tensor by tensor.
    Tensors with string data (no raw form) are serialised the ordinary way.
    """
    graph = model.graph
    taken = list(graph.initializers.items())
    for name, _ in taken:
        graph.initializers.pop(name)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for _, value in taken:
            graph.register_initializer(value)
    graph_head = proto.graph.SerializeToString()
    proto.ClearField("graph")
    model_head = proto.SerializeToString()
    pieces: list[tuple[bytes, Any, int]] = []  # (header bytes, tensor or None, raw length)
    for _, value in taken:
        tensor = value.const_value
        if tensor.dtype == ir.DataType.STRING:
            header = ir.serde.serialize_tensor(tensor).SerializeToString()
            pieces.append((_pb_len_field(_GRAPH_INITIALIZER, len(header)) + header, None, 0))
            continue
        tp = onnx.TensorProto(name=value.name, dims=list(tensor.shape.numpy()), data_type=int(tensor.dtype))
        if tensor.doc_string:
            tp.doc_string = tensor.doc_string
        header = tp.SerializeToString()
        raw = int(tensor.nbytes)
        body = len(header) + len(_pb_len_field(_TENSOR_RAW_DATA, raw)) + raw
        pieces.append((_pb_len_field(_GRAPH_INITIALIZER, body) + header + _pb_len_field(_TENSOR_RAW_DATA, raw),
                       tensor, raw))
    graph_len = len(graph_head) + sum(len(h) + n for h, _, n in pieces)
    with open(dest, "wb") as f:
        f.write(model_head)
        f.write(_pb_len_field(_MODEL_GRAPH, graph_len))
        f.write(graph_head)
        for header, tensor, raw in pieces:
            f.write(header)
            if tensor is not None:
                data = tensor.tobytes()
                if len(data) != raw:
                    raise ConversionError(f"tensor {tensor.name!r}: {len(data)} bytes, expected {raw}")
                f.write(data)


def _save_single(model: ir.Model, dest: Path) -> Path:
    tmp = _tmp_name(dest)
    try:
        _write_model(model, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _save_zip(model: ir.Model, dest: Path) -> Path:
    """``model.onnx`` and ``model.onnx.data`` (all initializers over 1 KiB) in one .zip."""
    staging = Path(tempfile.mkdtemp(prefix=".sepconv-save-", dir=dest.parent))
    tmp = _tmp_name(dest)
    try:
        onnx_path = staging / "model.onnx"
        ir.save(model, onnx_path, external_data="model.onnx.data", size_threshold_bytes=1024)
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            zf.write(onnx_path, "model.onnx", compress_type=zipfile.ZIP_DEFLATED)
            for p in sorted(staging.iterdir()):
                if p.name != "model.onnx":  # weights barely compress: store them
                    zf.write(p, p.name, compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------------------------------
# The adapter


# Key in ``ir.Model.meta`` (in-memory only, never serialised) counting the graph edits of DecomposeConvsPass.
_EDITS = "sepconv.edits"


def _table(model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Dims | None]:
    """``_shape_table`` of the model, cached on an ``OnnxModel`` until ``DecomposeConvsPass`` edits it."""
    m = _unwrap(model)
    if not isinstance(model, OnnxModel):
        return _shape_table(m, input_shapes)
    edits = m.meta.get(_EDITS, 0)
    shapes_key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
    key = (edits, shapes_key)
    if key not in model._shape_tables:
        previous = model._shape_tables.get((edits - 1, shapes_key))
        extended = _extend_table(m, previous) if previous is not None else None
        model._shape_tables[key] = extended if extended is not None else _shape_table(m, input_shapes)
    return model._shape_tables[key]


def _extend_table(model: ir.Model, table: Mapping[str, Dims | None]) -> dict[str, Dims | None] | None:
    """The shape table after one ``DecomposeConvsPass``, from the table before it, without running shape
    inference again: the pass keeps every other value (the replaced conv's output too, by name) and adds only
    Conv, Concat and Sum nodes, whose output shapes follow from their inputs. None if any new shape cannot be
    derived (the caller then runs inference)."""
    out = dict(table)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        y = node.outputs[0] if node.outputs else None
        if y is None or _static(out.get(y.name or "")) is not None:
            continue
        if node.op_type == "Conv":
            x, w = _value_dims(node.inputs[0], out), _value_dims(node.inputs[1], out)
            sp = _out_spatial(node, x[2:], tuple(w[2:])) if x is not None and w is not None else None
            dims = (x[0], w[0], *sp) if sp is not None else None
        elif node.op_type == "Concat":
            parts = [_value_dims(v, out) for v in node.inputs]
            dims = None
            if parts and all(p is not None and len(p) >= 2 for p in parts) and _int(node, "axis", 0) == 1:
                dims = (parts[0][0], sum(p[1] for p in parts), *parts[0][2:])
        elif node.op_type == "Sum":
            dims = _value_dims(node.inputs[0], out)
        else:
            continue  # not a node this pass adds: its shape stays as inference left it
        if dims is None:
            return None
        out[y.name or ""] = dims
    return out


def _open(path: Path, workdir: Path) -> tuple[Path, ir.Model, bool]:
    """The ``.onnx`` to read (a ``.zip`` is unpacked safely into ``workdir``), the model parsed from it, and
    whether it has external data, every reference of which has been checked to stay inside its folder."""
    try:
        zipped = _is_zip(path)
    except OSError as e:
        raise UnsupportedModelError(f"cannot read the model file {path.name}: {e.strerror}") from e
    onnx_path = _unpack_zip(path, workdir) if zipped else path
    model = _deserialize(_read_proto(onnx_path))
    return onnx_path, model, _check_external_data(model, onnx_path.parent, zipped)


def _unwrap(model: Any) -> ir.Model:
    if isinstance(model, OnnxModel):
        return model.model
    if isinstance(model, ir.Model):
        return model
    raise TypeError(f"expected an OnnxModel, got {type(model).__name__}")


class OnnxAdapter:
    """``FormatAdapter`` for ONNX: files are ``.onnx`` protobufs or ``.zip`` archives of one ``.onnx`` and
    its external data. Models are ``OnnxModel``s (onnx-ir); see the module docstring for the rewrite."""

    name: ClassVar[str] = "onnx"
    suffix: ClassVar[str] = ".onnx"

    def detect(self, path: Path) -> bool:
        """Whether the file is an ONNX model: a zip with exactly one ``.onnx`` member that is not a
        TorchScript archive, or a file whose top level is a whole ModelProto with a graph and an opset import
        (walked field by field without parsing the graph: ``load`` parses it once). Never raises."""
        try:
            path = Path(path)
            with open(path, "rb") as f:
                head = f.read(4096)
            if head[:4] in _ZIP_MAGIC:
                return _zip_looks_like_onnx(path)
            if not _looks_like_model_proto(head):
                return False
            fields = modelproto_fields(path)
            return fields is not None and {_MODEL_GRAPH, _MODEL_OPSET_IMPORT} <= fields
        except Exception:
            return False

    def load(self, path: Path, workdir: Path) -> OnnxModel:
        """Load an ``.onnx`` file, or a ``.zip`` of one ``.onnx`` and its external data (unpacked into a new
        folder under ``workdir``). External data is memory-mapped from there, so ``workdir`` must outlive the
        model (until it is saved).

        Raises:
            UnsupportedModelError: the file is empty, corrupt, truncated or not ONNX, the archive is unsafe,
                or external data is missing or points outside the model's folder.
        """
        onnx_path, model, external = _open(Path(path), Path(workdir))
        _materialize(model)
        return OnnxModel(model, base_dir=onnx_path.parent, external_data=external)

    def input_specs(self, model: Any) -> list[InputSpec]:
        """The graph inputs that are not initializers: dims are ints, symbolic names (str) or None."""
        specs = []
        for value in _unwrap(model).graph.inputs:
            if value.is_initializer():
                continue
            shape = None
            if value.shape is not None:
                shape = tuple(d if isinstance(d, int) else d.value for d in value.shape.dims)
            try:
                dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)
            except Exception:  # a type numpy has no dtype for (strings, sequences)
                dtype = np.dtype(object)
            specs.append(InputSpec(name=value.name or "", shape=shape, dtype=dtype))
        return specs

    def find_convs(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
        """Every Conv and ConvTranspose of the main graph and its subgraphs, in graph order.

        ``input_shapes`` maps input names to full shapes (batch included), which override the declared dims,
        fixed ones too; inputs not listed keep their declared dims. Spatial sizes come from ONNX shape
        inference, or from the conv's attributes when only its input size is known; they are None where
        neither works (often inside Loop bodies).

        Raises:
            InvalidOptionsError: a shape is given for an unknown input or has the wrong number of dims.
        """
        m = _unwrap(model)
        table = _table(model, input_shapes)
        layers = []
        for name, node in _named_convs(m):
            try:
                layers.append(_describe(m, name, node, table))
            except Exception as e:  # a malformed conv (weight shape that contradicts its groups…)
                raise UnsupportedModelError(f"layer {name!r} could not be read: {one_line(e, whole=True)}") from e
        return layers

    def apply(self, model: Any, rewrites: Sequence[Rewrite]) -> Any:
        """Replace the listed layers in place (``decompose_convs``) and return the model."""
        decompose_convs(_unwrap(model), rewrites)
        return model

    def save(self, model: Any, dest: Path) -> Path:
        """Write a single ``.onnx`` at ``dest``; or, for a model that came with external data or holds more
        than ``SINGLE_FILE_LIMIT`` bytes of tensors, a ``.zip`` of ``model.onnx`` and ``model.onnx.data`` at
        ``dest`` with the suffix ``.zip``. Returns the path written.

        Raises:
            ConversionError: the model could not be serialised or written.
        """
        dest = Path(dest)
        m = _unwrap(model)
        try:
            external = getattr(model, "external_data", False) or _has_external(m)
            if external or _tensor_bytes(m) > SINGLE_FILE_LIMIT:
                return _save_zip(m, dest.with_suffix(".zip"))
            return _save_single(m, dest)
        except Exception as e:
            raise ConversionError(f"saving the model failed: {one_line(e, whole=True)}") from e

    def stats(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> ModelStats:
        """Parameters and MACs of the model.

        ``params`` counts the elements of every floating-point initializer and Constant-node tensor, in all
        graphs. ``macs`` sums Conv (``N·C/g·k`` per output position), ConvTranspose, Gemm and MatMul for the
        given input shapes *including their batch size*, every node once (both branches of an If, one
        iteration of a Loop body); it is None if any such node's shapes cannot be inferred.
        """
        m = _unwrap(model)
        return ModelStats(params=_count_params(m), macs=_count_macs(m, _table(model, input_shapes)))

    def runner(self, path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
        """An onnxruntime session on the saved file (a ``.zip`` is unpacked safely into ``workdir`` first).

        ``threads`` sets ``intra_op_num_threads`` (None: onnxruntime's default); ``inter_op_num_threads`` is 1.
        With ``device="cuda"`` the CUDA provider is tried first where this onnxruntime build has it; the label
        says which provider actually runs (``onnxruntime-cpu`` when CUDA is not available).

        Raises:
            InvalidOptionsError: ``device`` is neither ``cpu`` nor ``cuda``.
            UnsupportedModelError: the file is not a readable ONNX model or its archive is unsafe.
        """
        import onnxruntime as ort

        if device not in ("cpu", "cuda"):
            raise InvalidOptionsError(f"device must be 'cpu' or 'cuda', got {device!r}")
        onnx_path, _, external = _open(Path(path), Path(workdir))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        # Without external data the bytes are handed over, so onnxruntime never guesses a format from the name.
        source: str | bytes = str(onnx_path) if external else onnx_path.read_bytes()
        session = ort.InferenceSession(source, sess_options=opts, providers=providers)
        label = "onnxruntime-cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "onnxruntime-cpu"
        outputs = [o.name for o in session.get_outputs()]

        def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return session.run(outputs, dict(feeds))

        return run, label


register(OnnxAdapter())
