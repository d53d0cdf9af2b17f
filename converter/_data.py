"""The user's samples: a ``.npz`` of model inputs (optionally with labels) or a folder of images, validated up
front and read batch by batch.

``load_samples`` checks everything it can before any long work starts (every problem is one
``InvalidOptionsError`` line naming it): arrays that do not fit the model's inputs (count, dims, dtype), labels
that are not integer class indices or are out of range, NaN or infinite values, an empty or oversized file or
member, pickled (object) arrays, archive members with path tricks, unreadable images.

Memory stays bounded by one batch: a stored ``.npz`` member is memory-mapped where it lies in the archive, a
compressed one is inflated once into a private temporary file and mapped from there, and images are decoded per
batch. Only the labels (one integer per sample) are held in memory.

Layout of a ``.npz``: an ``inputs`` array (the model's first input), or arrays named like the model's inputs;
optionally ``labels`` (integer class indices, one per sample). A 0-d array (a sample rate, say) is a constant
given unchanged with every batch; every other array has one row per sample.

Layout of an image folder: ``root/<class name>/<image>.png|jpg|jpeg``; the labels are the class folders'
indices in sorted order. The preprocessing is explicit (``ImageSpec``): resize to ``size``, scale to
``value_range``, normalise per channel by ``mean`` and ``std``, lay out as ``NCHW`` or ``NHWC``. Images are read
with Pillow: the imaging library the Python ecosystem maintains (torchvision uses it), with wheels for every
platform, safe defaults against decompression bombs, and no native dependency to install.

It knows nothing of formats, runtimes or what the samples are used for.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._errors import InvalidOptionsError, one_line
from .formats._base import InputSpec

__all__ = ["MAX_DATA_BYTES", "MAX_IMAGES", "ImageSpec", "Samples", "image_spec_from", "load_samples"]

#: Largest uncompressed size of a data file's arrays (sum over members), in bytes.
MAX_DATA_BYTES = 8 << 30
#: Most members a ``.npz`` may have.
MAX_MEMBERS = 64
#: Most images an image folder may hold, and the largest image file, in bytes.
MAX_IMAGES = 1_000_000
MAX_IMAGE_FILE_BYTES = 64 << 20
#: Pillow refuses images with more pixels than this (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHUNK_ROWS_BYTES = 16 << 20  # rows read at a time when scanning a member for NaN/inf


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes a model input.

    Attributes:
        size: ``(height, width)`` every image is resized to (bilinear).
        mean, std: per-channel normalisation after scaling, ``(x - mean) / std``; one value applies to every
            channel.
        layout: ``NCHW`` or ``NHWC``.
        value_range: pixel values after scaling, before normalisation: ``0-1`` (x/255), ``0-255``, or ``-1-1``.
        channels: 1 (grayscale) or 3 (RGB); None takes it from the model's input shape, else from mean/std.
    """

    size: tuple[int, int]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    value_range: Literal["0-1", "0-255", "-1-1"] = "0-1"
    channels: int | None = None

    def __post_init__(self) -> None:
        if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
            raise InvalidOptionsError(f"image size must be HEIGHTxWIDTH with positive sides, got {self.size}")
        if any(s == 0 or not math.isfinite(s) for s in self.std) or not all(math.isfinite(m) for m in self.mean):
            raise InvalidOptionsError("image mean and std must be finite, and std non-zero")
        if self.layout not in ("NCHW", "NHWC"):
            raise InvalidOptionsError(f"image layout must be NCHW or NHWC, got {self.layout!r}")
        if self.value_range not in ("0-1", "0-255", "-1-1"):
            raise InvalidOptionsError(f"image value range must be 0-1, 0-255 or -1-1, got {self.value_range!r}")
        if self.channels not in (None, 1, 3):
            raise InvalidOptionsError(f"image channels must be 1 or 3, got {self.channels}")


def image_spec_from(config: Any) -> ImageSpec | None:
    """The ``ImageSpec`` a ``ConversionConfig``'s ``image_*`` fields describe, or None without ``image_size``."""
    if config.image_size is None:
        return None
    sides = [int(p) for p in re.split(r"\s*[x×,]\s*", config.image_size.strip())]
    return ImageSpec(
        size=(sides[0], sides[-1]),
        mean=tuple(config.image_mean) or (0.0,),
        std=tuple(config.image_std) or (1.0,),
        layout=config.image_layout,
        value_range=config.image_range,
        channels=config.image_channels,
    )


class _Source:
    """Rows of named arrays, by index; subclasses read them."""

    count: int
    names: list[str]
    labels: np.ndarray | None
    class_names: list[str] | None = None

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


@dataclass
class Samples:
    """A view of the user's samples (all of them, or a split): counts and batches.

    Attributes:
        names: the model inputs the samples feed, in the model's order.
        count: samples in this view.
        has_labels: whether class labels came with the samples.
        num_classes: classes the labels index (the model's, when it was given to ``load_samples``; else the
            largest label + 1), or None without labels.
        class_names: class folder names of an image folder, index = label; else None.
        description: where the samples came from, for the report (``data.npz``, ``images/ (3 classes)``).
    """

    _source: _Source = field(repr=False)
    _rows: np.ndarray = field(repr=False)
    num_classes: int | None = None
    description: str = ""
    _batch_limit: int | None = field(default=None, repr=False)

    @property
    def names(self) -> list[str]:
        return list(self._source.names)

    @property
    def count(self) -> int:
        return int(self._rows.shape[0])

    @property
    def has_labels(self) -> bool:
        return self._source.labels is not None

    @property
    def class_names(self) -> list[str] | None:
        return self._source.class_names

    @property
    def labels(self) -> np.ndarray | None:
        """This view's labels (int64, one per sample), or None."""
        return None if self._source.labels is None else self._source.labels[self._rows]

    def batches(
        self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield ``(inputs, labels)`` batches of at most ``batch_size`` samples (capped at the model's fixed
        batch dim, if it has one), in order. ``indices`` picks samples of this view (positions ``0..count-1``);
        by default all of them. ``labels`` is None without labels. Only one batch is decoded at a time.

        Raises:
            InvalidOptionsError: an image cannot be decoded (the message names the file).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self._batch_limit is not None:
            batch_size = min(batch_size, self._batch_limit)
        pos = np.arange(self.count) if indices is None else np.asarray(indices, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.count):
            raise IndexError(f"sample index out of range for {self.count} samples")
        rows = self._rows[pos]
        for start in range(0, rows.shape[0], batch_size):
            chunk = rows[start:start + batch_size]
            labels = None if self._source.labels is None else self._source.labels[chunk]
            yield self._source.read(chunk), labels

    def subset(self, indices: Sequence[int] | np.ndarray) -> Samples:
        """The view of these samples (positions in this view)."""
        pos = np.asarray(indices, dtype=np.int64)
        return Samples(self._source, self._rows[pos], self.num_classes, self.description, self._batch_limit)

    def split(self, holdout_share: float, seed: int) -> tuple[Samples, Samples]:
        """``(kept, held_out)``: a seeded random ``holdout_share`` of the samples held out (at least one of each
        when there are two or more samples), both in their original order.

        Raises:
            InvalidOptionsError: the share is not in (0, 1), or there are fewer than two samples.
        """
        if not 0.0 < holdout_share < 1.0:
            raise InvalidOptionsError(f"the held-out share must be between 0 and 1, got {holdout_share}")
        if self.count < 2:
            raise InvalidOptionsError(f"{self.count} sample(s) cannot be split into calibration and held-out "
                                      "samples; give more, or an --eval file")
        n_out = min(max(1, round(self.count * holdout_share)), self.count - 1)
        perm = np.random.default_rng(seed).permutation(self.count)
        held = np.sort(perm[:n_out])
        kept = np.sort(perm[n_out:])
        return self.subset(kept), self.subset(held)

    def head(self, n: int) -> Samples:
        """The first ``n`` samples of this view (all of them if fewer)."""
        return self.subset(np.arange(min(n, self.count)))


# --- .npz ------------------------------------------------------------------------------------------------------


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
                members[name] = _map_member(path, zf, info, tmpdir, f"{what}: array {name!r}")
    except zipfile.BadZipFile as e:
        raise InvalidOptionsError(f"{what} is a damaged .npz archive: {one_line(e)}") from None
    return members


def _map_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, tmpdir: Path, what: str) -> _Member:
    with zf.open(info) as stream:
        shape, fortran, dtype, header = _npy_header(stream, what)
        if dtype.hasobject:
            raise InvalidOptionsError(f"{what} holds Python objects (pickled); only numeric arrays are read")
        if dtype.kind not in "biuf":
            raise InvalidOptionsError(f"{what} has dtype {dtype}; only numeric arrays are read")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
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


def _fits(spec: InputSpec, arr_shape: tuple[int, ...], per_sample: bool, what: str) -> None:
    if spec.shape is None:
        return
    if len(arr_shape) != len(spec.shape):
        kind = "" if per_sample else " (a 0-d constant)"
        raise InvalidOptionsError(f"{what}{kind} has {len(arr_shape)} dims {arr_shape}, the model's input "
                                  f"{spec.name!r} has {len(spec.shape)} {tuple(spec.shape)}")
    for i, (have, want) in enumerate(zip(arr_shape, spec.shape, strict=True)):
        if i == 0 and per_sample:
            continue  # the batch dim: checked against the batch size instead
        if isinstance(want, int) and want > 0 and have != want:
            raise InvalidOptionsError(f"{what} has shape {arr_shape}, but the model's input {spec.name!r} fixes "
                                      f"dim {i} to {want} (expects {tuple(spec.shape)})")


def _dtype_fits(spec: InputSpec, dtype: np.dtype, what: str) -> np.dtype:
    want = np.dtype(spec.dtype) if spec.dtype != np.dtype(object) else dtype
    if not np.can_cast(dtype, want, casting="same_kind"):
        raise InvalidOptionsError(f"{what} has dtype {dtype}, which does not convert to the model input "
                                  f"{spec.name!r}'s {want}")
    return want


def _check_finite(arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind != "f":
        return
    if arr.ndim == 0:
        if not np.isfinite(arr):
            raise InvalidOptionsError(f"{what} is NaN or infinite")
        return
    row_bytes = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_ROWS_BYTES // row_bytes)
    for start in range(0, arr.shape[0], step):
        block = np.asarray(arr[start:start + step])
        if not np.isfinite(block).all():
            bad = start + int(np.argwhere(~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1))[0, 0])
            raise InvalidOptionsError(f"{what} holds NaN or infinite values (first in sample {bad})")


def _labels(arr: np.ndarray, count: int, num_classes: int | None, what: str) -> tuple[np.ndarray, int]:
    if arr.dtype.kind not in "iu":
        raise InvalidOptionsError(f"{what}: labels must be integer class indices, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != count:
        raise InvalidOptionsError(f"{what}: labels must be one class index per sample ({count},), got shape "
                                  f"{arr.shape}")
    labels = np.asarray(arr).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InvalidOptionsError(f"{what}: labels must be class indices >= 0, found {labels.min()}")
    top = int(labels.max()) if labels.size else -1
    if num_classes is not None and top >= num_classes:
        raise InvalidOptionsError(f"{what}: label {top} is out of range for a model with {num_classes} classes")
    return labels, num_classes if num_classes is not None else top + 1


def _batch_limit(specs: Sequence[InputSpec], names: Sequence[str], per_sample: set[str]) -> int | None:
    fixed = [s.shape[0] for s in specs if s.name in names and s.name in per_sample and s.shape
             and isinstance(s.shape[0], int) and s.shape[0] > 0]
    return min(fixed) if fixed else None


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


# --- image folders ---------------------------------------------------------------------------------------------


class _ImageSource(_Source):
    def __init__(self, files: list[Path], labels: np.ndarray, classes: list[str], name: str, spec: ImageSpec,
                 channels: int, dtype: np.dtype) -> None:
        self.files, self.labels, self.class_names = files, labels, classes
        self.names, self.spec, self.channels, self.dtype = [name], spec, channels, dtype
        self.count = len(files)
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        self.mean = np.broadcast_to(mean, (channels,)) if mean.size in (1, channels) else None
        self.std = np.broadcast_to(std, (channels,)) if std.size in (1, channels) else None

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        h, w = self.spec.size
        batch = np.empty((len(indices), h, w, self.channels), dtype=np.float32)
        for i, idx in enumerate(indices):
            batch[i] = self._decode(self.files[int(idx)])
        lo, hi = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0), "-1-1": (-1.0, 1.0)}[self.spec.value_range]
        batch = batch * ((hi - lo) / 255.0) + lo
        batch = (batch - self.mean) / self.std
        if self.spec.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return {self.names[0]: np.ascontiguousarray(batch, dtype=self.dtype)}

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image

        h, w = self.spec.size
        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.float32)
        except Exception as e:  # Pillow raises many types for a bad file
            raise InvalidOptionsError(f"image {path.parent.name}/{path.name} could not be decoded: "
                                      f"{one_line(e)}") from None
        return arr.reshape(h, w, self.channels)


def _image_channels(spec: InputSpec, image: ImageSpec, what: str) -> int:
    if spec.shape is not None and len(spec.shape) != 4:
        raise InvalidOptionsError(f"{what}: images need a 4-D model input, but {spec.name!r} has "
                                  f"{len(spec.shape)} dims {tuple(spec.shape)}")
    declared = None
    if spec.shape is not None:
        d = spec.shape[1] if image.layout == "NCHW" else spec.shape[3]
        declared = d if isinstance(d, int) and d > 0 else None
        if declared is not None and declared not in (1, 3):
            raise InvalidOptionsError(f"{what}: the model input {spec.name!r} takes {declared} channels in "
                                      f"{image.layout} layout; images give 1 or 3 (check --image-layout)")
        hw = spec.shape[2:4] if image.layout == "NCHW" else spec.shape[1:3]
        for got, want in zip(image.size, hw, strict=True):
            if isinstance(want, int) and want > 0 and got != want:
                raise InvalidOptionsError(f"{what}: image size {image.size[0]}x{image.size[1]} does not fit the "
                                          f"model input {spec.name!r} {tuple(spec.shape)} ({image.layout})")
    if image.channels is not None:
        if declared is not None and declared != image.channels:
            raise InvalidOptionsError(f"{what}: {image.channels} image channel(s) asked, the model input takes "
                                      f"{declared}")
        channels = image.channels
    elif declared is not None:
        channels = declared
    elif max(len(image.mean), len(image.std)) == 3:
        channels = 3
    else:
        raise InvalidOptionsError(f"{what}: the model does not say how many channels {spec.name!r} takes; "
                                  "give --image-channels 1 or 3")
    for label, values in (("mean", image.mean), ("std", image.std)):
        if len(values) not in (1, channels):
            raise InvalidOptionsError(f"{what}: image {label} has {len(values)} values for {channels} channel(s)")
    return channels


def _load_images(root: Path, specs: Sequence[InputSpec], image: ImageSpec | None, num_classes: int | None,
                 what: str) -> Samples:
    from PIL import Image

    if image is None:
        raise InvalidOptionsError(f"{what} is an image folder: give its preprocessing (--image-size, and "
                                  "--image-mean/--image-std/--image-layout/--image-range as the model expects)")
    if len(specs) != 1:
        raise InvalidOptionsError(f"{what}: an image folder feeds a model with one input, this one has "
                                  f"{len(specs)} ({', '.join(s.name for s in specs)}); use a .npz")
    spec = specs[0]
    if not np.issubdtype(spec.dtype, np.floating) and spec.dtype != np.dtype(object):
        raise InvalidOptionsError(f"{what}: images become float arrays, but the model input {spec.name!r} takes "
                                  f"{spec.dtype}")
    channels = _image_channels(spec, image, what)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                     and not p.name.startswith("."))
    if not classes:
        raise InvalidOptionsError(f"{what} has no class folders; expected {root.name}/<class>/<image>.png")
    if num_classes is not None and len(classes) > num_classes:
        raise InvalidOptionsError(f"{what} has {len(classes)} class folders, the model {num_classes} classes")
    files: list[Path] = []
    labels: list[int] = []
    resolved_root = root.resolve()
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    for index, cls in enumerate(classes):
        entries = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in entries:
            if p.is_symlink() or not p.resolve().is_relative_to(resolved_root) or not p.is_file():
                raise InvalidOptionsError(f"{what}: {cls}/{p.name} is a link or not a plain file; refused")
            if p.stat().st_size > MAX_IMAGE_FILE_BYTES:
                raise InvalidOptionsError(f"{what}: {cls}/{p.name} is larger than {MAX_IMAGE_FILE_BYTES >> 20} MiB")
            files.append(p)
            labels.append(index)
            if len(files) > MAX_IMAGES:
                raise InvalidOptionsError(f"{what} holds more than {MAX_IMAGES} images")
    if not files:
        raise InvalidOptionsError(f"{what} holds no .png or .jpg images in its class folders")
    for p in files:
        try:
            with Image.open(p) as im:
                if im.format not in ("PNG", "JPEG"):
                    raise ValueError(f"a {im.format} image")
                im.verify()
        except Exception as e:
            raise InvalidOptionsError(f"{what}: {p.parent.name}/{p.name} is not a readable PNG or JPEG image: "
                                      f"{one_line(e)}") from None
    dtype = np.dtype(spec.dtype) if spec.dtype != np.dtype(object) else np.dtype(np.float32)
    source = _ImageSource(files, np.asarray(labels, dtype=np.int64), classes, spec.name, image, channels, dtype)
    limit = _batch_limit(specs, [spec.name], {spec.name})
    return Samples(source, np.arange(len(files)), num_classes or len(classes),
                   f"{root.name}/ ({len(classes)} classes)", limit)


# --- entry point -----------------------------------------------------------------------------------------------


def load_samples(
    path: str | Path,
    specs: Sequence[InputSpec],
    *,
    image_spec: ImageSpec | None = None,
    num_classes: int | None = None,
    what: str = "data",
) -> Samples:
    """Open and validate the user's samples for a model with these inputs.

    Args:
        path: a ``.npz`` file, or an image folder (``root/<class>/<image>.png|jpg``).
        specs: the model's inputs (the adapter's ``input_specs``).
        image_spec: how images become inputs; required for an image folder.
        num_classes: the model's class count, when known, to check labels against.
        what: how messages name this file (``data``, ``eval``).

    Returns:
        The samples, of which nothing beyond the labels is loaded yet.

    Raises:
        InvalidOptionsError: one line naming the first problem found.
    """
    path = Path(path)
    if path.is_dir():
        return _load_images(path, specs, image_spec, num_classes, f"{what} folder {path.name}")
    if not path.exists():
        raise InvalidOptionsError(f"{what} file not found: {path}")
    tmpdir = Path(tempfile.mkdtemp(prefix="sepconv-data-"))
    try:
        samples = _load_npz(path, specs, num_classes, f"{what} file {path.name}", tmpdir)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    # Inflated members live as long as the samples that map them.
    weakref.finalize(samples._source, shutil.rmtree, tmpdir, True)
    return samples
