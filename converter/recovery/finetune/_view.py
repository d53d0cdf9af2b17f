"""The trainable view of a converted model file, from its format (``formats.Trainable``), and the content
digests of the original's conv weights that tell the view which weights are new factors (``formats.digest``).

It holds no format code: each format builds its own view (``formats/_<format>/_trainable.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..._errors import UnsupportedModelError
from ...algebra import to_transposed
from ...formats import Trainable, TrainableView, adapter_for, digest

__all__ = ["TrainableView", "digest", "original_digests", "trainable_view"]


def original_digests(fmt: str, path: Path, workdir: Path) -> set[str]:
    """Digests of every constant conv weight of the original model file (a transposed conv's in the layout its
    file stores, ``[in, out/g, *k]``, too: ``ConvLayer.weight`` is regrouped)."""
    adapter = adapter_for(fmt)
    model = adapter.load(Path(path), Path(workdir))
    out = set()
    for layer in adapter.find_convs(model, {}):
        if layer.weight is not None:
            out.add(digest(layer.weight))
            if layer.transposed:
                out.add(digest(to_transposed(layer.weight, layer.groups)))
    return out


def trainable_view(fmt: str, path: Path, workdir: Path, original: Iterable[str], device: str = "cpu") -> TrainableView:
    """The trainable view of a converted model file of format ``fmt``.

    Raises:
        UnsupportedModelError: the format has no trainable view, or the model holds something the view cannot
            run (the message names the node and op).
    """
    adapter = adapter_for(fmt)
    if not isinstance(adapter, Trainable):
        raise UnsupportedModelError(f"fine-tuning does not support the {fmt} format; use recover=calibrate")
    view: TrainableView = adapter.trainable_view(Path(path), Path(workdir), set(original), device)
    return view
