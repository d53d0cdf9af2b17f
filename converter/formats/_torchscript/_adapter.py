"""The TorchScript adapter: rewriting the frozen graph, counting, running, and ``TorchScriptAdapter`` itself
(see the package docstring for how)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..._errors import (
    ConversionError,
    InvalidOptionsError,
    UnsupportedModelError,
    VerificationError,
    map_errors,
    one_line,
)
from ..._files import atomic_path
from ...algebra import ConvStep, Lowered
from .._archive import member_names
from .._base import ConvLayer, InputSpec, ModelStats, Rewrite, Runner, UniqueNames, node_name
from .._graphcheck import load_torchscript
from .._micro import LayerShape
from . import is_torchscript_layout
from ._graph import (
    CONV_KINDS,
    IN,
    NOT_CONSTANT,
    OUT,
    WEIGHT,
    ConvRef,
    TorchScriptModel,
    const,
    conv_args,
    conv_nodes,
    layer_of,
    probed_nodes,
    run_probe,
    specs,
    walk,
)

__all__ = ["TorchScriptAdapter"]


# --- rewriting -------------------------------------------------------------------------------------------------


def _debug_name(text: str) -> str:
    """A value name the TorchScript printer keeps: ``node_name``'s ``features.0/dw_0`` becomes ``features_0_dw_0``
    (the printer would turn a ``.`` into ``_`` anyway)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_")
    return name if name and not name[0].isdigit() else f"l_{name}"


class _Emitter:
    """Inserts nodes, in order, in front of the conv they replace (so in its block)."""

    def __init__(self, graph: torch._C.Graph, before: torch._C.Node) -> None:
        self.graph = graph
        self.before = before

    def constant(self, value: Any, name: str | None = None) -> torch._C.Value:
        with self.graph.insert_point_guard(self.before):
            out = self.graph.insertConstant(value)
        if name:
            out.setDebugName(_debug_name(name))
        return out

    def node(self, kind: str, inputs: Sequence[torch._C.Value], ty: Any, name: str | None) -> torch._C.Value:
        new = self.graph.create(kind, list(inputs), 1)
        new.insertBefore(self.before)
        # The replaced conv's source range and module call stack: profiles and later find_convs keep its path.
        new.copyMetadata(self.before)
        out = new.output()
        out.setType(ty)
        if name:
            out.setDebugName(_debug_name(name))
        return out


def _replace(graph: torch._C.Graph, node: torch._C.Node, layer: ConvLayer, lowered: Lowered,
             new_bias: np.ndarray | None = None) -> None:
    """Replace one conv node by the convs of ``lowered`` (the node's weight is a constant, not transposed);
    ``new_bias`` replaces the conv's bias."""
    args = conv_args(node)
    weight = const(args.weight)
    rank = weight.dim() - 2
    lowered.check(weight.shape[1] * (args.groups or 1), weight.shape[0], tuple(weight.shape[2:]))
    emit = _Emitter(graph, node)
    tensor_t = torch._C.TensorType.get()
    none = emit.constant(None)
    pointwise = (emit.constant([1] * rank), emit.constant([0] * rank), emit.constant([1] * rank))
    kind = f"aten::conv{rank}d"
    if new_bias is not None:
        b = torch.from_numpy(np.array(new_bias, copy=True)).to(dtype=weight.dtype, device=weight.device)
        replacement = emit.constant(b, node_name(layer.name, "bias"))

    def conv(step: ConvStep, x: torch._C.Value) -> torch._C.Value:
        w = torch.from_numpy(np.array(step.weight, copy=True)).to(dtype=weight.dtype, device=weight.device)
        wv = emit.constant(w, node_name(layer.name, step.name) + ".weight")
        # Only the spatial conv takes the original stride/padding/dilation (a str padding picks the
        # ``.padding`` overload); 1×1 convs run with stride 1, no padding.
        stride, padding, dilation = (args.stride, args.padding, args.dilation) if step.spatial else pointwise
        bias = (replacement if new_bias is not None else args.bias) if step.bias else none
        return emit.node(kind, [x, wv, bias, stride, padding, dilation, emit.constant(int(step.groups))],
                         tensor_t, node_name(layer.name, step.name))

    def join(kind: str, outs: list[torch._C.Value]) -> torch._C.Value:
        if kind == "concat":
            parts = emit.node("prim::ListConstruct", outs, torch._C.ListType.ofTensors(), None)
            # The channel axis counted from the end, so that an unbatched input works too.
            axis = emit.constant(-(rank + 1))
            return emit.node("aten::cat", [parts, axis], tensor_t, node_name(layer.name, "concat"))
        y, one = outs[0], emit.constant(1)
        for other in outs[1:]:
            y = emit.node("aten::add", [y, other, one], tensor_t, node_name(layer.name, "sum"))
        return y

    y = lowered.fold(args.input, conv, join)
    y.setType(node.output().type())
    node.output().replaceAllUsesWith(y)
    node.destroy()


# --- counting --------------------------------------------------------------------------------------------------


def _params(module: torch.jit.ScriptModule) -> int:
    """Elements of the floating-point tensors the module holds, each storage counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = (t.data_ptr(), t.numel())
        if t.is_floating_point() and t.numel() and key not in seen:
            seen.add(key)
            total += t.numel()

    for node in walk(module.graph):
        if node.kind() == "prim::Constant" and isinstance(node.output().type(), torch._C.TensorType):
            value = node.output().toIValue()
            if isinstance(value, torch.Tensor):
                add(value)
    # Freezing usually folds everything, but attributes that ``forward`` mutates stay attributes.
    for t in (*module.parameters(), *module.buffers()):
        add(t)
    return total


def _prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _macs(model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    probe = run_probe(model, input_shapes) if input_shapes else None
    if probe is None:
        return None
    total = 0
    for index, node in enumerate(probed_nodes(model.module.graph)):
        rec = probe.sizes.get(index, {})
        for i, out in enumerate(rec.get(OUT, [])):
            if node.kind() in CONV_KINDS:
                # Each output element (input element, for a transposed conv) meets prod(weight[1:]) weights.
                drive = rec[IN][i] if conv_args(node).transposed else out
                total += _prod(drive) * _prod(rec[WEIGHT][i][1:])
            else:
                k_operand = rec[IN][i]
                total += _prod(out) * (k_operand[-1] if k_operand else 1)
    # Per sample, like the plan's per-layer counts: the inputs' common first dim is the batch.
    batches = {s[0] for s in input_shapes.values() if len(s) > 0}
    batch = batches.pop() if len(batches) == 1 else 1
    return round(total / batch) if batch > 0 else total


# --- running ---------------------------------------------------------------------------------------------------


def _not_tensors(value: Any) -> Exception:
    return VerificationError(f"the TorchScript model returned a {type(value).__name__}, not tensors")


def _flatten(value: Any, refuse: Callable[[Any], Exception] = _not_tensors) -> list[torch.Tensor]:
    """The tensors of a TorchScript result (nested lists, tuples and dicts) in order; ``refuse(v)`` is the error
    raised for anything else."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _flatten(v, refuse)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v, refuse)]
    raise refuse(value)


def _load(path: Path, device: str) -> torch.jit.ScriptModule:
    """``_graphcheck.load_torchscript`` (archive and graph checks around ``torch.jit.load``'s two steps), in
    eval mode; torch's errors as one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_torchscript(Path(path), device).eval()
    except UnsupportedModelError:
        raise
    except Exception as e:  # torch raises RuntimeError, ValueError, pickle and zip errors alike
        raise UnsupportedModelError(f"TorchScript file could not be loaded: {one_line(e, 200)}") from e


# --- the adapter -----------------------------------------------------------------------------------------------


class TorchScriptAdapter:
    """``FormatAdapter`` for TorchScript archives written by ``torch.jit.save`` (``torch.jit.script`` or
    ``torch.jit.trace`` output)."""

    name: ClassVar[str] = "torchscript"
    suffix: ClassVar[str] = ".pt"

    def output_suffix(self, src: Path) -> str:
        """Always ``.pt``."""
        return self.suffix

    def detect(self, path: Path) -> bool:
        """A zip with the ``torch.jit.save`` layout (``is_torchscript_layout``). Reads only the zip directory:
        never unpickles, never raises."""
        names = member_names(path)
        return names is not None and is_torchscript_layout(names)

    def load(self, path: Path, workdir: Path) -> TorchScriptModel:
        """Load on the CPU, check its graphs (``_graphcheck``: only tensor math ops, unless trusted), switch to eval
        mode and freeze.

        Raises:
            UnsupportedModelError: the file cannot be loaded or frozen (corrupt, truncated, not TorchScript), or
                its graph holds an op outside the allowlist.
        """
        loaded = _load(path, "cpu")  # checked before freezing: its constant propagation runs ops
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frozen = torch.jit.freeze(loaded)
        except Exception as e:
            raise UnsupportedModelError(f"TorchScript file could not be frozen: {one_line(e, 200)}") from e
        return TorchScriptModel(module=frozen)

    def input_specs(self, model: TorchScriptModel) -> list[InputSpec]:
        """The tensor arguments of ``forward`` after ``self``, with a shape only where the graph records one
        (TorchScript usually does not), float32 unless the graph says otherwise."""
        return specs(model.module)

    def find_convs(self, model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
        """Every conv node of the frozen graph, nested blocks included, in graph order; spatial sizes from a
        probe run on zeros when every input has a shape.

        Raises:
            InvalidOptionsError: the model does not run on inputs of the given shapes.
        """
        probe = run_probe(model, input_shapes) if input_shapes else None
        layers: list[ConvLayer] = []
        names = UniqueNames()
        for probe_index, node in enumerate(probed_nodes(model.module.graph)):
            if node.kind() in CONV_KINDS:
                recorded = probe.sizes.get(probe_index, {}) if probe is not None else {}
                layers.append(layer_of(node, len(layers), recorded, names))
        return layers

    def apply(self, model: TorchScriptModel, rewrites: Sequence[Rewrite]) -> TorchScriptModel:
        """Replace each rewritten conv by the convs of its lowered decomposition, editing the model in place
        (a copy would hold the weights twice). Every rewrite is checked before the first edit, so a list that
        does not fit the model leaves it untouched.

        Raises:
            ConversionError: a layer is not a convertible conv of this model, or could not be rewritten; the
                message names the layer.
        """
        graph = model.module.graph
        nodes = conv_nodes(graph)
        used: set[int] = set()
        targets = []
        for rw in rewrites:
            layer, ref = rw.layer, rw.layer.handle
            if not isinstance(ref, ConvRef) or not 0 <= ref.index < len(nodes) or ref.index in used:
                raise ConversionError(f"layer {layer.name}: not a conv of this TorchScript model (or listed twice)")
            node = nodes[ref.index]
            args = conv_args(node)
            weight = const(args.weight)
            if node.kind() != ref.kind:
                raise ConversionError(f"layer {layer.name}: the model does not match the layer list")
            if not isinstance(weight, torch.Tensor):
                raise ConversionError(f"layer {layer.name}: {NOT_CONSTANT}")
            if tuple(weight.shape) != ref.weight_shape:
                raise ConversionError(f"layer {layer.name}: the model does not match the layer list")
            if args.transposed is not False:
                raise ConversionError(f"layer {layer.name}: transposed convolutions cannot be rewritten")
            try:  # the same check _replace makes, before anything is edited
                rw.lowered.check(weight.shape[1] * (args.groups or 1), weight.shape[0], tuple(weight.shape[2:]))
            except ValueError as e:
                raise ConversionError(f"layer {layer.name}: could not rewrite the TorchScript graph: "
                                      f"{one_line(e, 200)}") from e
            if rw.bias is not None and tuple(np.shape(rw.bias)) != (weight.shape[0],):
                raise ConversionError(f"layer {layer.name}: the replacement bias has shape {np.shape(rw.bias)}")
            used.add(ref.index)
            targets.append((node, layer, rw.lowered, rw.bias))
        for node, layer, lowered, bias in targets:
            try:
                _replace(graph, node, layer, lowered, bias)
            except (RuntimeError, ValueError, TypeError) as e:
                raise ConversionError(f"layer {layer.name}: could not rewrite the TorchScript graph: "
                                      f"{one_line(e, 200)}") from e
        try:
            torch._C._jit_pass_dce(graph)
            graph.lint()
        except RuntimeError as e:
            raise ConversionError(f"the rewritten TorchScript graph is invalid: {one_line(e, 200)}") from e
        model._probes.clear()  # sizes recorded for the old graph
        return model

    def save(self, model: TorchScriptModel, dest: Path) -> Path:
        """``torch.jit.save`` to a temporary file next to ``dest``, then rename it to ``dest``.

        Raises:
            ConversionError: the module could not be serialised or written.
        """
        dest = Path(dest)
        # serialisation (RuntimeError) and file system (OSError) failures alike
        with map_errors(f"could not save the TorchScript model to {dest.name}", ConversionError, limit=200,
                        type_name=False), atomic_path(dest) as tmp:
            torch.jit.save(model.module, str(tmp))
        return dest

    def stats(self, model: TorchScriptModel, input_shapes: Mapping[str, tuple[int, ...]]) -> ModelStats:
        """Floating-point tensor elements held by the frozen module; MACs of its convs and matrix products
        measured at the given input shapes, per sample (divided by the inputs' common first dim, as the plan's
        per-layer MACs are batch 1), or None without shapes. Ops in a branch that zeros do not take count
        nothing.

        Raises:
            InvalidOptionsError: the model does not run on inputs of the given shapes.
        """
        return ModelStats(params=_params(model.module), macs=_macs(model, input_shapes))

    def tap(self, model: TorchScriptModel, layers: Sequence[ConvLayer], workdir: Path,
            threads: int | None = None) -> Any:
        """A ``formats._taps.Tap`` of the (not yet rewritten) model for these layers: calibration's hook."""
        from ._tap import build_tap

        return build_tap(self, model, layers, workdir, threads)

    def runner(self, path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
        """Load a saved module (checked, as ``load`` does) and run it under ``torch.inference_mode``; inputs
        go to ``forward`` in its argument order, tuple and list outputs are flattened.

        Raises:
            UnsupportedModelError: the file does not load.
        """
        module = _inference_module(path, threads, device)
        args = specs(module)

        def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            missing = [s.name for s in args if s.name not in inputs]
            if missing:
                raise InvalidOptionsError(f"missing model inputs: {', '.join(missing)}")
            # Tensors as tensors; a scalar argument (``sr: int``) as the Python number of its 0-d array.
            values = [np.asarray(inputs[s.name]).item() if s.scalar
                      else torch.from_numpy(np.ascontiguousarray(inputs[s.name])).to(device) for s in args]
            try:
                with torch.inference_mode():
                    out = module(*values)
            except RuntimeError as e:
                raise VerificationError(f"the TorchScript model did not run: {one_line(e, 200)}") from e
            return [t.detach().cpu().numpy() for t in _flatten(out)]

        return run, f"torch-{torch.device(device).type}"

    # Trainable: fine-tuning's view of a converted file.
    def trainable_view(self, path: Path, workdir: Path, original: set[str], device: str = "cpu") -> Any:
        """A ``formats._trainable.TrainableView`` of the converted file (``_trainable.torchscript_view``)."""
        from ._trainable import torchscript_view

        return torchscript_view(path, workdir, original, device)

    # Timeable: candidates are timed on torch (the JIT executor).
    def runtime(self) -> tuple[str, str, str]:
        """``("torch", version, "")``."""
        return "torch", torch.__version__, ""

    def micro_model(self, shape: LayerShape, batch: int, folder: Path, seed: int = 0) -> Path:
        """The generic micro-model of ``shape``, traced, as ``folder/micro.pt``."""
        from .._torch import write_torchscript_micro

        folder.mkdir(parents=True, exist_ok=True)
        return write_torchscript_micro(shape, batch, folder / "micro.pt", seed)

    def timed_runner(self, path: Path, workdir: Path, threads: int, device: str,
                     inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """One synchronised inference of the saved module (``torch.jit.load``, ``forward``'s argument order)."""
        from .._torch import timed_call

        module = _inference_module(path, threads, device)
        try:
            names = [a.name for a in module.forward.schema.arguments[1:]]
        except (AttributeError, RuntimeError):
            names = list(inputs)
        return timed_call(module, names, threads, device, inputs)


def _inference_module(path: Path, threads: int | None, device: str) -> torch.jit.ScriptModule:
    """The one way a saved module is loaded to run (the runner and the timed runner): checked as ``load`` is
    (``_load``), onto ``device``, in eval mode, with torch's intra-op threads set.

    Raises:
        InvalidOptionsError: ``device`` is not ``cpu`` or ``cuda``, or ``cuda`` where torch sees no CUDA device.
        UnsupportedModelError: the file does not load.
    """
    if device not in ("cpu", "cuda"):
        raise InvalidOptionsError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionsError("device 'cuda' was asked, but torch sees no CUDA device")
    if threads:
        torch.set_num_threads(threads)
    return _load(path, device)
