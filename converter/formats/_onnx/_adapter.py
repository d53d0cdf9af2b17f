"""The ONNX format adapter: read an ``.onnx`` file (or a ``.zip`` of one ``.onnx`` and its external data), find
its convolutions, replace them by depthwise-separable convs as onnx-ir passes, and write the result back.

In memory a model is an ``onnx_ir.Model`` wrapped in ``OnnxModel``, which remembers whether it came with
external data (then ``save`` writes a ``.zip`` again) and owns the model's ``ShapeCache``. The parts live in
their own modules (see the package docstring); this one ties them together behind ``FormatAdapter``.

This adapter deliberately does not decide which layers to convert or at which rank (``_plan``) and does not
compute factors (``_decompose``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_ir as ir

from ..._errors import ConversionError, UnsupportedModelError, one_line
from .._archive import ZIP_MAGIC, is_zip
from .._base import ConvLayer, InputSpec, LayerContext, ModelStats, Rewrite, Runner
from .._micro import LayerShape
from . import _io, _shapes, _wire
from ._context import layer_context
from ._convs import describe, named_convs
from ._functions import InlineConvFunctionsPass
from ._passes import decompose_convs
from ._runner import make_runner
from ._stats import count_macs, count_params

__all__ = ["OnnxAdapter", "OnnxModel"]


@dataclass
class OnnxModel:
    """An ONNX model held as an onnx-ir ``Model``, and how it was stored.

    Attributes:
        model: the in-memory model; ``apply`` edits it in place.
        base_dir: the folder external data is read from (None for a model built in memory).
        external_data: the model came with external data files, so ``save`` writes a ``.zip`` again.
        shapes: shape tables of this model (``find_convs`` and ``stats`` share them).
    """

    model: ir.Model
    base_dir: Path | None = None
    external_data: bool = False
    shapes: _shapes.ShapeCache = field(default_factory=_shapes.ShapeCache, repr=False, compare=False)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto) -> OnnxModel:
        """Wrap a ``ModelProto`` that has no external data (for models built in memory)."""
        model = _io.deserialize(proto)
        _io.materialize(model)
        InlineConvFunctionsPass()(model)
        return cls(model)


def _unwrap(model: Any) -> ir.Model:
    if isinstance(model, OnnxModel):
        return model.model
    if isinstance(model, ir.Model):
        return model
    raise TypeError(f"expected an OnnxModel, got {type(model).__name__}")


def _table(model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> _shapes.Table:
    if isinstance(model, OnnxModel):
        return model.shapes.table(model.model, input_shapes)
    return _shapes.shape_table(_unwrap(model), input_shapes)


class OnnxAdapter:
    """``FormatAdapter`` for ONNX: files are ``.onnx`` protobufs or ``.zip`` archives of one ``.onnx`` and
    its external data. Models are ``OnnxModel``s (onnx-ir)."""

    name: ClassVar[str] = "onnx"
    suffix: ClassVar[str] = ".onnx"

    def output_suffix(self, src: Path) -> str:
        """``.zip`` for an archive (one ``.onnx`` with its external data), else ``.onnx``."""
        try:
            return ".zip" if is_zip(src) else self.suffix
        except UnsupportedModelError:
            return self.suffix

    def detect(self, path: Path) -> bool:
        """Whether the file is an ONNX model: a zip with exactly one ``.onnx`` member that starts like a
        ModelProto, or a file whose top level is a whole ModelProto with a graph and an opset import (walked
        field by field without parsing the graph: ``load`` parses it once). Never raises."""
        try:
            path = Path(path)
            with open(path, "rb") as f:
                head = f.read(4096)
            if head[:4] in ZIP_MAGIC:
                return _io.zip_looks_like_onnx(path)
            if not _wire.sniff(head):
                return False
            fields = _wire.modelproto_fields(path)
            return fields is not None and {_wire.MODEL_GRAPH, _wire.MODEL_OPSET_IMPORT} <= fields
        except Exception:
            return False

    def load(self, path: Path, workdir: Path) -> OnnxModel:
        """Load an ``.onnx`` file, or a ``.zip`` of one ``.onnx`` and its external data (unpacked into a new
        folder under ``workdir``). External data is memory-mapped from there, so ``workdir`` must outlive the
        model (until it is saved).

        Raises:
            UnsupportedModelError: the file is empty, corrupt, truncated or not ONNX, the archive is unsafe,
                external data is missing or points outside the model's folder, or model-local functions that
                hold convs cannot be inlined (``_functions``).
        """
        onnx_path, model, external = _io.open_model(Path(path), Path(workdir))
        _io.materialize(model)
        InlineConvFunctionsPass()(model)  # convs inside model-local functions become ordinary convs
        return OnnxModel(model, base_dir=onnx_path.parent, external_data=external)

    def input_specs(self, model: Any) -> list[InputSpec]:
        """The graph inputs that are not initializers: dims are ints, symbolic names (str) or None."""
        specs = []
        for value in _unwrap(model).graph.inputs:
            if value.is_initializer():
                continue
            shape = None
            if value.shape is not None:
                shape = tuple(d if isinstance(d, int) else d.value for d in value.shape.dims)
            try:
                dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)
            except Exception:  # a type numpy has no dtype for (strings, sequences)
                dtype = np.dtype(object)
            specs.append(InputSpec(name=value.name or "", shape=shape, dtype=dtype))
        return specs

    def find_convs(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
        """Every Conv and ConvTranspose of the main graph and its subgraphs, in graph order.

        ``input_shapes`` maps input names to full shapes (batch included), which override the declared dims,
        fixed ones too; inputs not listed keep their declared dims. Spatial sizes come from ONNX shape
        inference, or from the conv's attributes when only its input size is known; they are None where
        neither works (often inside Loop bodies).

        Raises:
            InvalidOptionsError: a shape is given for an unknown input or has the wrong number of dims.
        """
        m = _unwrap(model)
        table = _table(model, input_shapes)
        layers = []
        for name, node in named_convs(m):
            try:
                layers.append(describe(m, name, node, table))
            except Exception as e:  # a malformed conv (weight shape that contradicts its groups…)
                raise UnsupportedModelError(f"layer {name!r} could not be read: {one_line(e, whole=True)}") from e
        return layers

    def context(self, model: Any, layer: ConvLayer,
                input_shapes: Mapping[str, tuple[int, ...]]) -> LayerContext | str:
        """``layer`` (found by ``find_convs`` in ``model``) with its real neighbours as a small ONNX model, at
        the given input shapes (batch included), for timing its candidates; or why it cannot be cut out, when
        the generic micro-model is used instead (see ``_context``; a quantized conv is cut with its
        quantization, ``_qcontext``)."""
        node = layer.handle
        if not isinstance(node, ir.Node) or node.graph is None:
            return f"layer {layer.name!r}: no node of this model"
        try:
            table = _table(model, input_shapes)
        except Exception as e:  # shapes that do not fit this model: no context, not a failed conversion
            return f"layer {layer.name!r}: shapes not inferred ({one_line(e, 160)})"
        if layer.quantized:
            from ._qcontext import quant_context
            from ._quant import read

            quant = read(node)
            if quant is None or isinstance(quant, str):
                return f"layer {layer.name!r}: {quant or 'not a quantized conv'}"
            return quant_context(_unwrap(model), layer.name, quant, table)
        return layer_context(_unwrap(model), layer.name, node, table)

    def apply(self, model: Any, rewrites: Sequence[Rewrite]) -> Any:
        """Replace the listed layers in place (``decompose_convs``) and return the model."""
        decompose_convs(_unwrap(model), rewrites)
        return model

    def save(self, model: Any, dest: Path) -> Path:
        """Write a single ``.onnx`` at ``dest``; or, for a model that came with external data or holds more
        than ``_io.SINGLE_FILE_LIMIT`` bytes of tensors, a ``.zip`` of ``model.onnx`` and ``model.onnx.data``
        at ``dest`` with the suffix ``.zip``. Returns the path written.

        Raises:
            ConversionError: the model could not be serialised or written.
        """
        dest = Path(dest)
        m = _unwrap(model)
        try:
            external = getattr(model, "external_data", False) or _io.has_external(m)
            if external or _io.tensor_bytes(m) > _io.SINGLE_FILE_LIMIT:
                return _io.save_zip(m, dest.with_suffix(".zip"))
            return _io.save_single(m, dest)
        except Exception as e:
            raise ConversionError(f"saving the model failed: {one_line(e, whole=True)}") from e

    def stats(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> ModelStats:
        """Parameters and MACs of the model.

        ``params`` counts the elements of every floating-point initializer and Constant-node tensor, in all
        graphs. ``macs`` sums Conv (``N·C/g·k`` per output position), ConvTranspose, Gemm and MatMul for the
        given input shapes *including their batch size*, every node once (both branches of an If, one
        iteration of a Loop body); it is None if any such node's shapes cannot be inferred.
        """
        m = _unwrap(model)
        return ModelStats(params=count_params(m), macs=count_macs(m, _table(model, input_shapes)))

    def tap(self, model: Any, layers: Sequence[ConvLayer], workdir: Path, threads: int | None = None) -> Any:
        """A ``formats._taps.Tap`` of the (not yet rewritten) model for these layers: calibration's hook."""
        from ._tap import build_tap

        return build_tap(self, model, layers, workdir, threads)

    def runner(self, path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
        """An onnxruntime session on the saved file (see ``_runner.make_runner``)."""
        return make_runner(path, workdir, threads, device)

    # Trainable: fine-tuning's view of a converted file.
    def trainable_view(self, path: Path, workdir: Path, original: set[str], device: str = "cpu") -> Any:
        """A ``formats._trainable.TrainableView`` of the converted file at ``path`` (``_trainable.onnx_view``)."""
        from ._trainable import onnx_view

        return onnx_view(path, workdir, original, device)

    # Timeable: candidates are timed on onnxruntime.
    def runtime(self) -> tuple[str, str, str]:
        """``("onnxruntime", version, "")``; the version from the installed metadata where it is there, since
        importing onnxruntime costs more than a cached plan (it is imported when something is timed)."""
        try:
            version = importlib.metadata.version("onnxruntime")
        except importlib.metadata.PackageNotFoundError:  # another build (onnxruntime-gpu…): ask the module
            import onnxruntime as ort

            version = ort.__version__
        return "onnxruntime", version, ""

    def micro_model(self, shape: LayerShape, batch: int, folder: Path, seed: int = 0) -> Path:
        """The generic micro-model of ``shape`` as ``folder/micro.onnx``."""
        from ._micro import write_micro

        folder.mkdir(parents=True, exist_ok=True)
        return write_micro(shape, batch, folder / "micro.onnx", seed)

    def timed_runner(self, path: Path, workdir: Path, threads: int, device: str,
                     inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """One synchronised inference of the saved file (``_runner.timed_runner``)."""
        from ._runner import timed_runner

        return timed_runner(path, workdir, threads, device, inputs)
