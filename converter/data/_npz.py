"""Reading a ``.npz`` of samples: every member checked (plain ``.npy`` names, numeric dtypes, sizes) and
memory-mapped where it lies in the archive, or inflated once into a private temporary file and mapped from there;
then matched to the model's inputs. The sizes the members' headers declare are checked against the file and
against the process's memory limit (``RLIMIT_AS``: the service's and the confined CLI's job memory) before
anything is read or allocated, so a header declaring 2^40 rows or a zip bomb is a one-line refusal.
``read_npz`` is the same reading for small files used whole (verification inputs).
"""

from __future__ import annotations

import os
import resource
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InvalidOptionsError, one_line
from ..formats import InputSpec
from ._checks import _batch_limit, _check_finite, _dtype_fits, _fits, _labels
from ._samples import Samples, _Source

#: Largest uncompressed size of a data file's arrays (sum over members), in bytes.
MAX_DATA_BYTES = 8 << 30
#: Most members a ``.npz`` may have.
MAX_MEMBERS = 64


def memory_limit() -> int:
    """The most bytes of arrays a data file may declare: ``MAX_DATA_BYTES``, or less where this process's address
    space is limited (``RLIMIT_AS``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return MAX_DATA_BYTES if soft == resource.RLIM_INFINITY else min(MAX_DATA_BYTES, int(soft))


def _too_big(what: str, declared: int, limit: int) -> InvalidOptionsError:
    return InvalidOptionsError(f"{what} declares {declared} bytes of arrays, more than the {limit} bytes this "
                               "conversion may hold (give fewer samples)")


@dataclass
class _Member:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    array: np.ndarray  # a memory map (or, for 0-d members, the value)


def _npy_header(stream: Any, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except Exception as e:
        raise InvalidOptionsError(f"{what} is not a readable .npy array: {one_line(e)}") from None
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype), stream.tell()


def _bad_member_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return (name.startswith(("/", "\\")) or ":" in name or len(parts) != 1 or ".." in parts
            or not name.endswith(".npy") or not name[:-4])


def _open_npz(path: Path, tmpdir: Path, what: str) -> dict[str, _Member]:
    """Every member of a ``.npz``, checked and mapped (never loaded whole)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InvalidOptionsError(f"{what}: cannot read {path}: {e.strerror}") from None
    if size == 0:
        raise InvalidOptionsError(f"{what} is empty")
    if not zipfile.is_zipfile(path):
        raise InvalidOptionsError(f"{what} is not a .npz archive (save it with numpy.savez)")
    members: dict[str, _Member] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not infos:
                raise InvalidOptionsError(f"{what} holds no arrays")
            if len(infos) > MAX_MEMBERS:
                raise InvalidOptionsError(f"{what} holds {len(infos)} members; at most {MAX_MEMBERS} are read")
            total = 0
            limit = memory_limit()
            for info in infos:
                if _bad_member_name(info.filename):
                    raise InvalidOptionsError(f"{what}: member {info.filename!r} is not a plain .npy name "
                                              "(paths and links are refused)")
                name = info.filename[:-4]
                if name in members:
                    raise InvalidOptionsError(f"{what}: array {name!r} appears twice")
                total += info.file_size
                if info.file_size > MAX_DATA_BYTES or total > MAX_DATA_BYTES:
                    raise InvalidOptionsError(f"{what}: arrays of more than {MAX_DATA_BYTES >> 30} GiB are not read "
                                              "(give fewer samples)")
                if total > limit:
                    raise _too_big(what, total, limit)
                members[name] = _map_member(path, zf, info, tmpdir, f"{what}: array {name!r}", limit)
    except zipfile.BadZipFile as e:
        raise InvalidOptionsError(f"{what} is a damaged .npz archive: {one_line(e)}") from None
    return members


def _map_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, tmpdir: Path, what: str,
                limit: int = MAX_DATA_BYTES) -> _Member:
    with zf.open(info) as stream:
        shape, fortran, dtype, header = _npy_header(stream, what)
        if dtype.hasobject:
            raise InvalidOptionsError(f"{what} holds Python objects (pickled); only numeric arrays are read")
        if dtype.kind not in "biuf":
            raise InvalidOptionsError(f"{what} has dtype {dtype}, not numeric; only numeric arrays are read")
        nbytes = _prod(shape) * dtype.itemsize  # Python ints: a declared 2^40 × 2^40 cannot overflow
        if nbytes > limit:
            raise _too_big(what, nbytes, limit)
        if header + nbytes != info.file_size:
            raise InvalidOptionsError(f"{what} is truncated or padded ({info.file_size - header} bytes of data "
                                      f"for shape {shape} {dtype})")
        order = "F" if fortran else "C"
        if not shape:
            return _Member(info.filename[:-4], shape, dtype, fortran,
                           np.frombuffer(stream.read(nbytes), dtype=dtype).reshape(()))
        if nbytes == 0:
            return _Member(info.filename[:-4], shape, dtype, fortran, np.zeros(shape, dtype))
        if info.compress_type == zipfile.ZIP_STORED:
            # The bytes lie as they are in the archive: map them there (the local header's own name and extra
            # field lengths give where the data starts).
            with open(path, "rb") as f:
                f.seek(info.header_offset + 26)
                n, m = np.frombuffer(f.read(4), dtype="<u2")
            offset = info.header_offset + 30 + int(n) + int(m) + header
            arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
        else:
            # Inflate once into a private file (bounded by the size check) and map it.
            fd, tmp = tempfile.mkstemp(dir=tmpdir, suffix=".raw")
            with os.fdopen(fd, "wb") as out:
                copied = _copy_bounded(stream, out, nbytes)
            if copied != nbytes:
                raise InvalidOptionsError(f"{what} is truncated ({copied} of {nbytes} bytes)")
            arr = np.memmap(tmp, dtype=dtype, mode="r", shape=shape, order=order)
    return _Member(info.filename[:-4], shape, dtype, fortran, arr)


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of a ``.npz``, checked as ``_open_npz`` checks it, read into memory (for small files used
    whole).

    Raises:
        InvalidOptionsError: the file is not a readable ``.npz``, or declares more than ``memory_limit()`` bytes.
    """
    with tempfile.TemporaryDirectory(prefix="sepconv-npz-") as tmp:
        members = _open_npz(Path(path), Path(tmp), what)
        return {name: np.array(m.array) for name, m in members.items()}


def _copy_bounded(src: Any, dst: Any, limit: int) -> int:
    copied = 0
    while True:
        buf = src.read(min(1 << 20, limit + 1 - copied))
        if not buf:
            return copied
        copied += len(buf)
        if copied > limit:
            return copied
        dst.write(buf)


class _NpzSource(_Source):
    def __init__(self, arrays: dict[str, np.ndarray], constants: dict[str, np.ndarray], labels: np.ndarray | None,
                 count: int, dtypes: Mapping[str, np.dtype], names: list[str]) -> None:
        self.arrays, self.constants, self.labels, self.count = arrays, constants, labels, count
        self.dtypes, self.names = dtypes, names

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name in self.names:
            if name in self.constants:
                out[name] = self.constants[name]
            else:
                out[name] = np.ascontiguousarray(self.arrays[name][indices], dtype=self.dtypes[name])
        return out


def _load_npz(path: Path, specs: Sequence[InputSpec], num_classes: int | None, what: str,
              tmpdir: Path) -> Samples:
    members = _open_npz(path, tmpdir, what)
    by_name = {s.name: s for s in specs}
    names = [s.name for s in specs]
    mapping: dict[str, str] = {}  # model input -> member
    for member in members:
        if member in by_name:
            mapping[member] = member
    if "inputs" in members and "inputs" not in by_name:
        free = [n for n in names if n not in mapping]
        if not free:
            raise InvalidOptionsError(f"{what}: 'inputs' is given, but every model input has its own array")
        mapping[free[0]] = "inputs"
    unknown = sorted(set(members) - set(mapping.values()) - {"labels"})
    if unknown:
        raise InvalidOptionsError(f"{what}: array(s) {', '.join(map(repr, unknown))} match no model input; "
                                  f"expected 'inputs', 'labels' or the input names {names}")
    missing = [n for n in names if n not in mapping]
    if not mapping:
        raise InvalidOptionsError(f"{what} has arrays {sorted(members)}; expected 'inputs' or the model's input "
                                  f"names {names}")
    if missing:
        raise InvalidOptionsError(f"{what} has no array for the model input(s) {', '.join(map(repr, missing))}")
    count = None
    arrays: dict[str, np.ndarray] = {}
    constants: dict[str, np.ndarray] = {}
    dtypes: dict[str, np.dtype] = {}
    for name in names:
        m = members[mapping[name]]
        label = f"{what}: array {mapping[name]!r}"
        spec = by_name[name]
        dtypes[name] = _dtype_fits(spec, m.dtype, label)
        constant = not m.shape or (spec.shape is not None and len(spec.shape) == 0)
        _fits(spec, m.shape, not constant, label)
        _check_finite(m.array, label)
        if constant:
            constants[name] = np.asarray(m.array).astype(dtypes[name])
            continue
        if count is None:
            count = m.shape[0]
        elif m.shape[0] != count:
            raise InvalidOptionsError(f"{label} has {m.shape[0]} samples, but {count} were given for another input")
        arrays[name] = m.array
    if count is None:
        raise InvalidOptionsError(f"{what} has only 0-d constants; at least one input needs one row per sample")
    if count == 0:
        raise InvalidOptionsError(f"{what} holds 0 samples")
    labels = n_classes = None
    if "labels" in members:
        labels, n_classes = _labels(members["labels"].array, count, num_classes, what)
    source = _NpzSource(arrays, constants, labels, count, dtypes, names)
    limit = _batch_limit(specs, names, set(arrays))
    return Samples(source, np.arange(count), n_classes, path.name, limit)
