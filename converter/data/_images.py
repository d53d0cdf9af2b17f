"""Reading an image folder (``root/<class name>/<image>.png|jpg|jpeg``) of samples: files checked up front
(plain files inside the root, size, PNG/JPEG headers), decoded with Pillow and preprocessed per batch as the
``ImageSpec`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._errors import InvalidOptionsError, one_line
from ..formats import InputSpec
from ._checks import _batch_limit
from ._samples import ImageSpec, Samples, _Source

#: Most images an image folder may hold, and the largest image file, in bytes.
MAX_IMAGES = 1_000_000
MAX_IMAGE_FILE_BYTES = 64 << 20
#: Pillow refuses images with more pixels than this (decompression bombs).
MAX_IMAGE_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class _ImageSource(_Source):
    def __init__(self, files: list[Path], labels: np.ndarray, classes: list[str], name: str, spec: ImageSpec,
                 channels: int, dtype: np.dtype) -> None:
        self.files, self.labels, self.class_names = files, labels, classes
        self.names, self.spec, self.channels, self.dtype = [name], spec, channels, dtype
        self.count = len(files)
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        # their sizes (1 or ``channels``) were checked against the model input already
        self.mean = np.broadcast_to(mean, (channels,))
        self.std = np.broadcast_to(std, (channels,))

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
            with Image.open(path) as f:
                im = f.convert("L" if self.channels == 1 else "RGB")
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
