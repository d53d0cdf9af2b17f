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

The parts: ``_samples`` (``Samples``, ``ImageSpec``), ``_npz`` and ``_images`` (the two readers), ``_checks``
(what both check against the model's inputs); this module holds the entry point.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

from .._errors import InvalidOptionsError
from ..formats import InputSpec
from ._images import IMAGE_SUFFIXES, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGES, _load_images
from ._npz import MAX_DATA_BYTES, MAX_MEMBERS, _load_npz, read_npz
from ._samples import ImageSpec, Samples, image_spec_from

__all__ = [
    "IMAGE_SUFFIXES", "MAX_DATA_BYTES", "MAX_IMAGES", "MAX_IMAGE_FILE_BYTES", "MAX_IMAGE_PIXELS", "MAX_MEMBERS",
    "ImageSpec", "Samples", "image_spec_from", "load_samples", "read_npz",
]


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
