"""ONNX's protobuf wire format at the top level of a ModelProto, without the ``onnx`` package.

Reading: ``sniff`` says whether a file's first bytes start like a ModelProto (the registry's cheap pre-filter,
used by upload validation), ``modelproto_fields`` walks a whole file's top-level fields by seeking (detection).
Writing: ``len_field`` is the key and length prefix the streaming writer (``_io``) puts before each field.

Standard library only, so detecting an ONNX file imports neither onnx nor torch.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

__all__ = ["GRAPH_INITIALIZER", "MODEL_GRAPH", "MODEL_OPSET_IMPORT", "TENSOR_RAW_DATA", "len_field",
           "modelproto_fields", "sniff"]

# Field numbers in onnx.proto: ModelProto.graph and .opset_import, GraphProto.initializer, TensorProto.raw_data.
MODEL_GRAPH, MODEL_OPSET_IMPORT, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 8, 5, 9

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


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes (a few KiB) parse as the start of an ONNX ModelProto. Reads no more than it
    is given and never raises; ``OnnxAdapter.detect`` is the full check."""
    i, fields = 0, 0
    while i < len(head) and fields < 4:
        tag = _varint(head, i)
        if tag is None:
            break  # the head ends inside a tag: judge on what was read
        key, i = tag
        number, wire = key >> 3, key & 7
        if _MODELPROTO_FIELDS.get(number) != wire:
            return False
        length = _varint(head, i)
        if length is None:
            break
        value, i = length
        if wire == 2:
            i += value
        fields += 1
        if number == MODEL_GRAPH:  # the graph: a model has been recognised
            return True
    return fields >= 2 or (fields == 1 and i >= len(head))


def modelproto_fields(path: Path) -> set[int] | None:
    """The field numbers of a file's top-level ModelProto fields, or None if the file is not one whole
    ModelProto at the top level (an unknown field or wire type, or a field running past the end: truncated).

    Only the top level is walked: length-delimited fields (the graph, with its weights) are skipped by seeking,
    so this costs a few reads however large the model. Nested corruption is left to the parser.
    """
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


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def len_field(number: int, length: int) -> bytes:
    """Key and length prefix of a length-delimited protobuf field."""
    return _encode_varint(number << 3 | 2) + _encode_varint(length)
