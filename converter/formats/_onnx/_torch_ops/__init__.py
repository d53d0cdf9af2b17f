"""ONNX operators as torch functions: the op set CNNs use, for the trainable view of an ONNX model.

Each entry of ``OPS`` takes ``(node, inputs, opset)`` — the ``onnx_ir`` node, its input tensors (``None`` for an
omitted optional input) and the model's default-domain opset — and returns the node's output tensors. Semantics
follow the ONNX operator specification at that opset (attributes that later opsets moved into inputs are read
from either place). Everything is plain differentiable torch, so gradients reach any tensor fed in.

Deliberately not here: control flow (If, Loop, Scan), sequences, random ops, quantized ops and anything else a
CNN's forward pass rarely holds; the interpreter names such a node in a one-line error instead of guessing.

The parts: ``_common`` (the registry, attributes, padding), then one module per op group: ``_elementwise``,
``_conv`` (convolution, matrix products, normalisation, pooling), ``_shapes``, ``_reduce``.
"""

from __future__ import annotations

from ._common import OPS, OpFn, UnsupportedNode, attr

# Each op module registers its ops into OPS on import; this order keeps OPS in the order the ops were written.
# isort: off
from . import _elementwise  # noqa: F401
from . import _conv  # noqa: F401
from . import _shapes  # noqa: F401
from . import _reduce  # noqa: F401
# isort: on

__all__ = ["OPS", "OpFn", "UnsupportedNode", "attr"]

