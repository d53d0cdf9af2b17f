"""The trainable view of an ONNX model: a small ONNX→torch interpreter and the write-back of trained tensors.

``OnnxModule`` walks the main graph in topological order and runs each node with the torch function of its op
(``_torch_ops``). Weights — initializers and Constant-node tensors in the weight and bias slots of Conv, Gemm,
MatMul and the normalisations — are ``nn.Parameter``s; every other constant is a buffer. The graph itself is
never changed: ``write`` puts the trained values into the same initializers and Constant nodes of the user's
model (same names, dtype, opset, dynamic dims, everything else untouched) and saves it with the ONNX adapter.

Not supported (a one-line error naming the node): control flow and other subgraph ops, non-default domains,
model-local functions, and ops missing from ``_torch_ops``. Calibration does not need this view.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._errors import UnsupportedModelError
from .._registry import adapter_for
from .._trainable import TrainableView, digest
from ._torch_ops import OPS, UnsupportedNode

__all__ = ["OnnxModule", "onnx_view"]

# Input slots holding learnable weights, per op: what "train everything" trains.
_PARAM_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2), "PRelu": (1,),
}
_ONNX_DOMAINS = ("", "ai.onnx")


def _ir_model(model: Any) -> Any:
    return getattr(model, "model", model)


def _constant_tensor(node: Any) -> np.ndarray:
    for name, a in node.attributes.items():
        value = a.value
        if name in ("value", "sparse_value"):
            return value.numpy().copy()
        if name in ("value_float", "value_int"):
            return np.array(value, dtype=np.float32 if name == "value_float" else np.int64)
        if name in ("value_floats", "value_ints"):
            return np.array(list(value), dtype=np.float32 if name == "value_floats" else np.int64)
    raise UnsupportedNode("Constant without a tensor value")


def _sorted_nodes(graph: Any) -> list[Any]:
    """Nodes in an order where every input is produced before use (the stored order may not be)."""
    ready = {v.name for v in graph.inputs} | set(graph.initializers)
    pending = list(graph)
    order: list[Any] = []
    while pending:
        rest = [n for n in pending if not all(v is None or not v.name or v.name in ready for v in n.inputs)]
        done = [n for n in pending if n not in rest]
        if not done:
            n = rest[0]
            raise UnsupportedModelError(f"fine-tuning cannot order the ONNX graph: node {n.name!r} ({n.op_type}) "
                                        "reads a value nothing produces")
        for n in done:
            order.append(n)
            ready.update(v.name for v in n.outputs if v.name)
        pending = rest
    return order


class OnnxModule(nn.Module):
    """An ONNX main graph as a torch module: ``forward(*inputs)`` (in the graph's input order) returns the list
    of the graph's outputs.

    Args:
        model: an ``onnx_ir.Model``.
        device: where the constants live.

    Raises:
        UnsupportedModelError: a node this interpreter cannot run; the message names the node and its op.
    """

    def __init__(self, model: Any, device: str = "cpu") -> None:
        super().__init__()
        graph = model.graph
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        if model.functions:
            raise UnsupportedModelError("fine-tuning cannot run models with model-local functions")
        self.input_names = [v.name for v in graph.inputs if v.name not in graph.initializers]
        self.output_names = [v.name for v in graph.outputs]
        self.nodes: list[Any] = []
        self.slots: dict[str, str] = {}  # value name -> parameter/buffer key
        self.dtypes: dict[str, np.dtype] = {}
        self.weights = nn.ParameterDict()
        learnable: set[str] = set()
        constants: dict[str, np.ndarray] = {
            name: v.const_value.numpy().copy() for name, v in graph.initializers.items() if v.const_value is not None}
        for node in _sorted_nodes(graph):
            what = f"node {node.name!r} (op {node.op_type})"
            if node.domain not in _ONNX_DOMAINS:
                raise UnsupportedModelError(f"fine-tuning cannot run {what} of domain {node.domain!r}; "
                                            "use recover=calibrate")
            if any(True for _ in node.attributes.values() if _.type.name in ("GRAPH", "GRAPHS")):
                raise UnsupportedModelError(f"fine-tuning cannot run {what}: it holds a subgraph; "
                                            "use recover=calibrate")
            if node.op_type == "Constant":
                try:
                    constants[node.outputs[0].name] = _constant_tensor(node)
                except UnsupportedNode as e:
                    raise UnsupportedModelError(f"fine-tuning cannot run {what}: {e}") from None
                continue
            if node.op_type not in OPS:
                raise UnsupportedModelError(f"fine-tuning cannot run {what}: the op is not supported by the "
                                            "trainable view; use recover=calibrate")
            for i in _PARAM_SLOTS.get(node.op_type, ()):
                v = node.inputs[i] if i < len(node.inputs) else None
                if v is not None and v.name in constants and np.issubdtype(constants[v.name].dtype, np.floating):
                    learnable.add(v.name)
            self.nodes.append(node)
        for i, (name, array) in enumerate(constants.items()):
            key = f"t{i}"
            self.slots[name] = key
            self.dtypes[name] = array.dtype
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            if name in learnable:
                self.weights[key] = nn.Parameter(tensor.float().to(device), requires_grad=False)
            else:
                self.register_buffer(key, tensor.to(device), persistent=False)

    def tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding the constant ``name``."""
        key = self.slots[name]
        return self.weights[key] if key in self.weights else getattr(self, key)

    def learnable(self) -> dict[str, nn.Parameter]:
        """Value name -> parameter, for every weight the model can train."""
        return {name: self.weights[key] for name, key in self.slots.items() if key in self.weights}

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the graph on tensors given in ``input_names`` order."""
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs, strict=True))
        for node in self.nodes:
            args = [None if v is None or not v.name else
                    (env[v.name] if v.name in env else self.tensor(v.name)) for v in node.inputs]
            try:
                outs = OPS[node.op_type](node, args, self.opset)
            except UnsupportedNode as e:
                raise UnsupportedModelError(f"fine-tuning cannot run node {node.name!r} (op {node.op_type}): "
                                            f"{e}") from None
            for value, out in zip(node.outputs, outs, strict=False):
                if value is not None and value.name:
                    env[value.name] = out
        return [env[n] if n in env else self.tensor(n) for n in self.output_names]


def _conv_weight_name(node: Any, index: int) -> str | None:
    """The constant behind a conv input, through Identity nodes (the adapter resolves weights the same way)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    for _ in range(64):
        if value is None:
            return None
        producer = value.producer()
        if producer is None or producer.op_type != "Identity":
            return value.name
        value = producer.inputs[0]
    return None


def onnx_view(path: Path, workdir: Path, original: Iterable[str], device: str = "cpu") -> TrainableView:
    """The trainable view of a converted ONNX model file.

    Args:
        path: the converted model (``.onnx`` or ``.zip`` with external data).
        workdir: scratch folder (archives are unpacked there).
        original: digests (``digest``) of the original model's conv weights; a conv whose weight is not among
            them is a new factor, and its weight and bias train first.
        device: ``cpu`` or ``cuda``.
    """
    adapter = adapter_for("onnx")
    loaded = adapter.load(Path(path), Path(workdir))
    model = _ir_model(loaded)
    module = OnnxModule(model, device)
    learnable = module.learnable()
    known = set(original)
    factors: list[str] = []
    for node in module.nodes:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = _conv_weight_name(node, 1)
        if w in learnable and digest(learnable[w].detach().cpu().numpy()) not in known:
            factors += [n for n in (w, _conv_weight_name(node, 2)) if n in learnable and n not in factors]
    graph = model.graph

    def write(dest: Path, names: Iterable[str]) -> Path:
        import onnx_ir as ir

        constant_nodes = {n.outputs[0].name: n for n in graph if n.op_type == "Constant"}
        for name in names:
            array = learnable[name].detach().cpu().numpy().astype(module.dtypes[name], copy=False)
            if name in graph.initializers:
                graph.initializers[name].const_value = ir.Tensor(np.ascontiguousarray(array), name=name)
            else:
                node = constant_nodes[name]
                for attr_name in list(node.attributes):
                    del node.attributes[attr_name]
                node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(np.ascontiguousarray(array), name=name))
        return adapter.save(loaded, Path(dest))

    return TrainableView("onnx", module, module.input_names, learnable, factors, write)
