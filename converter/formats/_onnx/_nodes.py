"""Small helpers on onnx-ir nodes shared by the ONNX adapter's modules: the ONNX domain, attributes with
defaults, and the dims type of the shape tables."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

__all__ = ["CONV_OPS", "MAC_OPS", "ONNX_DOMAINS", "QUANTIZED_CONV_OPS", "Dims", "auto_pad", "int_attr", "ints",
           "is_onnx_op"]

ONNX_DOMAINS = frozenset({"", "ai.onnx"})
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
#: Integer convolutions of quantized graphs, and the index of their weight input (``_quant`` reads and rewrites
#: them, keeping the model quantized).
QUANTIZED_CONV_OPS = {"ConvInteger": 1, "QLinearConv": 3}
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

#: A value's dims: ints, None where unknown.
Dims = tuple[int | None, ...]


def is_onnx_op(node: ir.Node, ops: frozenset[str]) -> bool:
    return node.op_type in ops and node.domain in ONNX_DOMAINS


def ints(node: ir.Node, name: str, default: Sequence[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if isinstance(attr, ir.Attr) and not attr.is_ref() else list(default)


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if isinstance(attr, ir.Attr) and not attr.is_ref() else default


def auto_pad(node: ir.Node) -> str:
    attr = node.attributes.get("auto_pad")
    return attr.as_string() if isinstance(attr, ir.Attr) and not attr.is_ref() else "NOTSET"
