"""What fine-tuning needs from a format: a *trainable view* of a converted model file (``Trainable``).

A view is a torch module that computes the model's outputs from its inputs with the model's weights as
``nn.Parameter``s, the names of the new factors among them (the weights of the convs the conversion created),
and ``write``, which puts trained values back into the user's model — the same graph, names and everything
not trained left as it was — and saves it in its own format. Each format builds its own
(``_<format>/_trainable.py``); the training loop (``recovery.finetune``) knows none of them.

Which convs are new is found by content, not by name: a conv weight of the converted model whose bytes are not
those of any conv weight of the original (``digest``) is a factor. So a finished job's files are enough (no
layer list has to be kept), and naming conventions of new nodes can change freely.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

__all__ = ["TrainableView", "digest"]


@dataclass
class TrainableView:
    """A converted model, trainable.

    Attributes:
        format: the format's registry name.
        module: ``module(*inputs)`` (tensors in ``input_names`` order) returns the model's outputs as a list.
        input_names: the model's tensor inputs, in call order.
        params: every learnable weight, by the name the format gives it (initializer or constant name).
        factors: names (keys of ``params``) of the new factors: the weights and biases of the new convs.
        write: ``write(dest, names)`` writes the model with the current values of ``params[names]`` to ``dest``
            (the adapter may change the suffix) and returns the path written.
    """

    format: str
    module: nn.Module
    input_names: list[str]
    params: dict[str, nn.Parameter]
    factors: list[str]
    write: Callable[[Path, Iterable[str]], Path]


def digest(array: np.ndarray) -> str:
    """A content digest of a weight (as float32, so a half-precision model matches its converted copy)."""
    a = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    return hashlib.blake2b(repr(a.shape).encode() + a.tobytes(), digest_size=16).hexdigest()

