"""Reading ONNX files and writing them back.

Reading: an ``.onnx`` is parsed from its bytes (the content decides, never the file name); a ``.zip`` is
unpacked by ``formats._archive`` (which refuses unsafe archives) and must hold exactly one ``.onnx``. Every
external-data reference must be a relative path to a regular file inside the model's own folder, long enough
for its tensor; so must the external data of sparse initializers (which onnxruntime reads, and ``onnx_ir``
does not see), read straight from the protobuf. A tensor whose declared shape does not fit the values it holds
(2^40 declared elements, 432 given) is refused by name. Everything that goes wrong is an
``UnsupportedModelError`` with a one-line message.

Writing: ``write_model`` streams one ``.onnx`` from the wire format without a second copy of the weights;
``save_zip`` writes ``model.onnx`` and ``model.onnx.data`` as one ``.zip``. Both go through
``converter._files.atomic_path``, so a failed save leaves nothing at the destination.
"""

from __future__ import annotations

import math
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from ..._errors import ConversionError, UnsupportedModelError, one_line
from ..._files import atomic_path
from .._archive import Member, is_zip, resolve_inside, unpack
from . import _wire
from ._nodes import ONNX_DOMAINS

__all__ = ["SINGLE_FILE_LIMIT", "all_tensors", "deserialize", "has_external", "materialize", "open_model",
           "save_single", "save_zip", "tensor_bytes", "zip_looks_like_onnx"]

#: Above this many bytes of tensor data a model cannot be one protobuf (2 GiB limit): ``save`` writes a .zip.
SINGLE_FILE_LIMIT = 1_800_000_000


# --- reading ---------------------------------------------------------------------------------------------------


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
    if not any(op.domain in ONNX_DOMAINS for op in proto.opset_import):
        raise UnsupportedModelError(f"{what} declares no ONNX opset (truncated file?)")
    return proto


def _read_proto(path: Path) -> onnx.ModelProto:
    # Read the bytes ourselves: onnx.load picks a parser from the file's extension, and we go by content.
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnsupportedModelError(f"cannot read the model file {path.name}: {e.strerror}") from e
    return _parse_proto(data, f"the model file {path.name}")


def materialize(model: ir.Model) -> None:
    """Give every in-file tensor its own numpy array, so that the parsed protobuf (which each protobuf-backed
    tensor keeps alive, whole) is freed and ``numpy()`` returns views instead of a fresh copy per call: one
    copy of the weights in memory instead of two or three. External (memory-mapped) tensors stay as they are."""

    def own(t: Any) -> Any:
        if isinstance(t, ir.TensorProtoTensor) and t.dtype != ir.DataType.STRING:
            try:
                values = t.numpy()
            except (ValueError, TypeError, MemoryError) as e:  # numpy's reshape: the values do not fit the shape
                raise UnsupportedModelError(f"tensor {t.name!r} declares shape {tuple(t.shape)}, which its values do "
                                            f"not fill ({one_line(e, 120)})") from e
            return ir.Tensor(values, dtype=t.dtype, name=t.name, doc_string=t.doc_string)
        return t

    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            value.const_value = own(value.const_value)
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR:
                    node.attributes[name] = ir.AttrTensor(name, own(attr.value), doc_string=attr.doc_string)


def deserialize(proto: onnx.ModelProto) -> ir.Model:
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as e:
        raise UnsupportedModelError(f"the ONNX model could not be read: {one_line(e, whole=True)}") from e


def _one_model(members: Sequence[Member]) -> None:
    models = [m for m in members if m.parts[-1].lower().endswith(".onnx")]
    if not models:
        raise UnsupportedModelError("the zip archive contains no .onnx model")
    if len(models) > 1:
        names = ", ".join(m.path for m in models[:5])
        raise UnsupportedModelError(
            f"the zip archive contains more than one .onnx model ({names}): put exactly one model and its "
            "external data files in it")


def _unpack_zip(path: Path, workdir: Path) -> Path:
    """Unpack a model archive into a new folder under ``workdir``; returns the path of its ``.onnx`` file."""
    folder, members = unpack(path, workdir, prefix="onnx-", check=_one_model)
    model = next(m for m in members if m.parts[-1].lower().endswith(".onnx"))
    return folder.joinpath(*model.parts)


def zip_looks_like_onnx(path: Path) -> bool:
    """One ``.onnx`` member that starts like a ModelProto. Member names are not judged here: ``load`` refuses
    unsafe ones with a reason."""
    with zipfile.ZipFile(path) as zf:
        models = []
        for info in zf.infolist():
            parts = [p for p in info.filename.replace("\\", "/").split("/") if p]
            if parts and not info.is_dir() and parts[0] != "__MACOSX" and parts[-1].lower().endswith(".onnx"):
                models.append(info)
        if len(models) != 1:
            return False
        if stat.S_ISLNK(models[0].external_attr >> 16):  # let load say why it is refused
            return True
        with zf.open(models[0]) as f:
            return _wire.sniff(f.read(4096))


def all_tensors(model: ir.Model) -> Iterator[tuple[str, ir.TensorProtocol]]:
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
        UnsupportedModelError: a location is unsafe or missing (``_archive.resolve_inside``), or too short for
            its tensor.
    """
    found = False
    for owner, t in all_tensors(model):
        if not isinstance(t, ir.ExternalTensor):
            continue
        found = True
        where = f"{owner} stores its data in {str(t.location)!r}"
        current = resolve_inside(base_dir, str(t.location), where, zipped=zipped, model=".onnx")
        size = current.stat().st_size
        offset = t.offset or 0
        need = _external_nbytes(t)
        if t.length is not None and t.length < need:
            raise UnsupportedModelError(f"{where} with length {t.length}, too short for the tensor ({need} bytes)")
        if offset < 0 or offset + need > size:
            raise UnsupportedModelError(f"{where} at offset {offset}, beyond the end of the file ({size} bytes)")
        t.base_dir = str(base_dir)
    return found


def has_external(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for _, t in all_tensors(model))


def tensor_bytes(model: ir.Model) -> int:
    return sum(t.nbytes for _, t in all_tensors(model))


def _graphs(proto: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """Every graph of the model: the main one, those in node attributes (any depth), those of functions."""
    pending = [proto.graph]
    nodes = [n for f in proto.functions for n in f.node]
    while pending or nodes:
        if pending:
            graph = pending.pop()
            yield graph
            nodes.extend(graph.node)
            continue
        node = nodes.pop()
        for attr in node.attribute:
            if attr.HasField("g"):
                pending.append(attr.g)
            pending.extend(attr.graphs)


def _check_sparse_external(proto: onnx.ModelProto, base_dir: Path, zipped: bool) -> bool:
    """The checks ``_check_external_data`` makes, for sparse initializers' values and indices stored outside the
    file (onnxruntime reads them; ``onnx_ir`` does not); returns whether there were any.

    Raises:
        UnsupportedModelError: a location is unsafe or missing, or too short for its tensor.
    """
    found = False
    for graph in _graphs(proto):
        for sparse in graph.sparse_initializer:
            for part, t in (("values", sparse.values), ("indices", sparse.indices)):
                if t.data_location != onnx.TensorProto.EXTERNAL:
                    continue
                found = True
                info = {e.key: e.value for e in t.external_data}
                location = info.get("location", "")
                where = f"sparse initializer {t.name or sparse.values.name!r} ({part}) stores its data in {location!r}"
                current = resolve_inside(base_dir, location, where, zipped=zipped, model=".onnx")
                try:
                    offset, length = int(info.get("offset", 0)), info.get("length")
                    width = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                except (ValueError, KeyError, TypeError) as e:
                    raise UnsupportedModelError(f"{where}, with an unreadable offset, length or type") from e
                need = math.prod(int(d) for d in t.dims) * width
                size = current.stat().st_size
                if length is not None and int(length) < need:
                    raise UnsupportedModelError(f"{where} with length {length}, too short for the tensor "
                                                f"({need} bytes)")
                if offset < 0 or offset + need > size:
                    raise UnsupportedModelError(f"{where} at offset {offset}, beyond the end of the file "
                                                f"({size} bytes)")
    return found


def open_model(path: Path, workdir: Path) -> tuple[Path, ir.Model, bool]:
    """The ``.onnx`` to read (a ``.zip`` is unpacked safely into ``workdir``), the model parsed from it, and
    whether it has external data, every reference of which (sparse initializers' too) has been checked to stay
    inside its folder."""
    zipped = is_zip(path)
    onnx_path = _unpack_zip(path, workdir) if zipped else path
    proto = _read_proto(onnx_path)
    sparse_external = _check_sparse_external(proto, onnx_path.parent, zipped)
    model = deserialize(proto)
    external = _check_external_data(model, onnx_path.parent, zipped)
    return onnx_path, model, external or sparse_external


# --- writing ---------------------------------------------------------------------------------------------------


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
            pieces.append((_wire.len_field(_wire.GRAPH_INITIALIZER, len(header)) + header, None, 0))
            continue
        tp = onnx.TensorProto(name=value.name, dims=list(tensor.shape.numpy()), data_type=int(tensor.dtype))
        if tensor.doc_string:
            tp.doc_string = tensor.doc_string
        header = tp.SerializeToString()
        raw = int(tensor.nbytes)
        raw_prefix = _wire.len_field(_wire.TENSOR_RAW_DATA, raw)
        body = len(header) + len(raw_prefix) + raw
        pieces.append((_wire.len_field(_wire.GRAPH_INITIALIZER, body) + header + raw_prefix, tensor, raw))
    graph_len = len(graph_head) + sum(len(h) + n for h, _, n in pieces)
    with open(dest, "wb") as f:
        f.write(model_head)
        f.write(_wire.len_field(_wire.MODEL_GRAPH, graph_len))
        f.write(graph_head)
        for header, tensor, raw in pieces:
            f.write(header)
            if tensor is not None:
                data = tensor.tobytes()
                if len(data) != raw:
                    raise ConversionError(f"tensor {tensor.name!r}: {len(data)} bytes, expected {raw}")
                f.write(data)


def save_single(model: ir.Model, dest: Path) -> Path:
    """One ``.onnx`` at ``dest``, written atomically."""
    with atomic_path(dest) as tmp:
        _write_model(model, tmp)
    return dest


def save_zip(model: ir.Model, dest: Path) -> Path:
    """``model.onnx`` and ``model.onnx.data`` (all initializers over 1 KiB) in one .zip at ``dest``."""
    staging = Path(tempfile.mkdtemp(prefix=".sepconv-save-", dir=dest.parent))
    try:
        onnx_path = staging / "model.onnx"
        ir.save(model, onnx_path, external_data="model.onnx.data", size_threshold_bytes=1024)
        with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            zf.write(onnx_path, "model.onnx", compress_type=zipfile.ZIP_DEFLATED)
            for p in sorted(staging.iterdir()):
                if p.name != "model.onnx":  # weights barely compress: store them
                    zf.write(p, p.name, compress_type=zipfile.ZIP_STORED)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
