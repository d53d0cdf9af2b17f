"""The generic micro-model (``formats._micro``) written as an ONNX file, for timing candidates on onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._micro import INPUT, LAYER, LayerShape, geometry, micro_weights, transposed_geometry

__all__ = ["write_micro"]


def write_micro(shape: LayerShape, batch: int, dest: Path, seed: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = micro_weights(shape, seed)
    spatial = list(zip(shape.in_spatial, shape.out_spatial, shape.kernel, strict=True))
    if shape.transposed:
        geo = [transposed_geometry(i, o, k) for i, o, k in spatial]
        extra: dict[str, Any] = {"output_padding": [g[3] for g in geo]}
    else:
        geo = [(*geometry(i, o, k), 0) for i, o, k in spatial]
        extra = {}
    pads = [g[1] for g in geo] + [g[2] for g in geo]
    nodes = [
        helper.make_node("Conv", [INPUT, "pre_w", "pre_b"], ["a"], name="pre"),
        helper.make_node("Relu", ["a"], ["b"], name="pre_relu"),
        helper.make_node("ConvTranspose" if shape.transposed else "Conv", ["b", "layer_w", "layer_b"], ["c"],
                         name=LAYER, kernel_shape=list(shape.kernel), strides=[g[0] for g in geo], pads=pads,
                         group=shape.groups, **extra),
        helper.make_node("Relu", ["c"], ["d"], name="post_relu"),
        helper.make_node("Conv", ["d", "post_w", "post_b"], ["y"], name="post"),
    ]
    graph = helper.make_graph(
        nodes, "micro",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, shape.in_channels, *shape.in_spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(dest))
    return dest
