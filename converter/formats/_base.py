"""The one small interface every model format implements (``FormatAdapter``), the format-neutral records it
produces, the light descriptor each format registers (``FormatInfo``), and the naming convention every adapter
follows for layers and the nodes it adds.

Adding a format (``.pt2`` from ``torch.export``, say) means adding one package under ``formats/`` whose
``__init__`` defines a ``FormatInfo`` and whose adapter module implements ``FormatAdapter``, plus one line in
``_registry``; the pipeline, planner, verifier, report and service do not change.

Nothing here imports torch, onnx or numpy at run time, and nothing here knows any particular format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from ..algebra import Lowered

__all__ = [
    "Contextual",
    "ConvLayer",
    "FormatAdapter",
    "FormatInfo",
    "InputSpec",
    "LayerContext",
    "ModelStats",
    "Rewrite",
    "Runner",
    "Tappable",
    "Timeable",
    "Timed",
    "Trainable",
    "UniqueNames",
    "node_name",
]


@dataclass(frozen=True)
class FormatInfo:
    """What the registry knows about a format before its adapter is imported: cheap to build, no dependencies.

    Attributes:
        name: the format's name in reports, job records and the API (``onnx``).
        title: how a user would call the files, for help and error texts (``ONNX (.onnx, or a .zip …)``).
        suffixes: usual file suffixes, first the one outputs get (the content decides the format, not these).
        sniff: ``sniff(head)``: could a file starting with these bytes (a few KiB) be of this format? Must not
            raise and must import nothing heavy; the upload endpoint answers 415 when no format says yes.
        adapter: ``"module:Class"`` of the ``FormatAdapter``, imported on first use.
        diagnose: optional ``diagnose(path, head)`` for files no format reads: a specific reason (``a
            torch.save checkpoint…``) when the file is a near miss of this format, else None. Never raises.
        carries_code: files of this format hold code that loading or running executes (TorchScript, ``.pt2``):
            the service converts them only inside its confinement.
        precheck: optional ``"module:function"``, ``function(path)``: the format's static checks of an untrusted
            file, which read it and run nothing of it (archive members, code files, JSON); raises
            ``UnsupportedModelError``. Light to import (no torch).
    """

    name: str
    title: str
    suffixes: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    adapter: str
    diagnose: Callable[[Path, bytes], str | None] | None = None
    carries_code: bool = False
    precheck: str = ""


def node_name(layer: str, step: str) -> str:
    """The name of a node an adapter adds when it rewrites ``layer``: ``<layer>/<step>`` (``conv1/dw``,
    ``conv1/pw_0``, ``conv1/concat``). Formats whose names cannot hold ``/`` or ``.`` map it the same way each
    time (TorchScript and FX replace them by ``_``)."""
    return f"{layer}/{step}"


class UniqueNames:
    """Makes names unique the one way every adapter does: the first use of a name keeps it, later ones get
    ``_2``, ``_3``… (skipping any already taken).

    Args:
        taken: names already in use that must not be handed out (they are not reserved for anyone).
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    def __call__(self, base: str, avoid: Container[str] = ()) -> str:
        """``base``, or the first of ``base_2``, ``base_3``… neither handed out yet nor in ``avoid``."""
        name, k = base, 2
        while name in self.taken or name in avoid:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


@dataclass
class ConvLayer:
    """A convolution found in a model, described without reference to its format.

    Attributes:
        name: a stable, readable layer name, unique in the model (the ONNX node name, or the module path such
            as ``features.0`` for TorchScript and ``.pt2``; repeats made unique by ``UniqueNames``).
        op: the operator as the format spells it (``Conv``, ``aten::conv2d``, ``aten.convolution.default``…).
        kernel: spatial kernel shape.
        in_channels, out_channels, groups: as in the conv.
        weight: the constant weight ``[out, in/groups, *kernel]`` as float32 (ConvTranspose weights regrouped to
            this layout), or None when it is not a constant.
        transposed: a transposed convolution (not converted yet).
        note: why ``weight`` is None, or anything else the planner must know (becomes the skip reason).
        in_spatial, out_spatial: spatial sizes of the conv's input and output for the verification shapes
            (batch excluded), or None when they could not be inferred; MACs need them.
        handle: the adapter's own reference to the node; opaque to everything else.
        quantized: for a quantized conv whose ``weight`` is its dequantized integer weight, the quantization
            style the rewrite keeps (ONNX: ``QDQ``, ``QLinearConv``, ``ConvInteger``); None for a float conv.
    """

    name: str
    op: str
    kernel: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    weight: np.ndarray | None
    transposed: bool = False
    note: str | None = None
    in_spatial: tuple[int, ...] | None = None
    out_spatial: tuple[int, ...] | None = None
    handle: Any = field(default=None, repr=False, compare=False)
    quantized: str | None = None

    @property
    def taps(self) -> int:
        """Kernel taps ``k``: the product of the kernel's dims (1 for an unknown kernel)."""
        return int(math.prod(self.kernel)) if self.kernel else 1


@dataclass(frozen=True)
class Rewrite:
    """Replace ``layer`` by the convs of ``lowered`` (new nodes named ``node_name(layer.name, step.name)``).

    ``bias``, when given (``[out_channels]``, e.g. refitted by calibration), replaces the layer's own bias (or
    adds one where it had none) on the step that carries the bias; None keeps the original. ``ranges``, for a
    quantized layer, give the observed ``(min, max)`` of the new intermediate tensors (by step name, ``join`` for
    a concat or sum; ``algebra.intermediate_values``): their quantization parameters; None: the data-free
    estimate (``algebra.intermediate_intervals``)."""

    layer: ConvLayer
    lowered: Lowered
    bias: np.ndarray | None = field(default=None, compare=False)
    ranges: Mapping[str, tuple[float, float]] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LayerContext:
    """A layer with its real neighbours, cut out of a model as a small model of the same format, for timing the
    layer's candidates where it runs. Adapters that can cut one out implement the optional
    ``context(model, layer, input_shapes) -> LayerContext | str`` (a str says why not); the others' layers are
    timed in a generic micro-model.

    Attributes:
        key: a stable hash of the cut's structure (ops, attributes, shapes, which inputs are constants, the
            layer's place), without weight values or names: identical blocks share it, and their timings.
        layer: the layer's name in the cut (``find_convs`` of the loaded cut finds it by this name).
        inputs: the cut's run-time inputs: name → (concrete shape, numpy dtype).
        ops: the cut's operators in graph order (for reports and tests).
        write: ``write(folder)`` writes the cut as a model file into ``folder`` and returns its path.
    """

    key: str
    layer: str
    inputs: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    ops: tuple[str, ...]
    write: Callable[[Path], Path] = field(repr=False, compare=False)


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, dims (int, or a str/None for a symbolic or unknown dim), numpy dtype.

    ``scalar``: a non-tensor argument (TorchScript ``forward(x, sr: int)``): shape ``()``, passed to the model
    as a Python number; it has no meaningful random value, so the user gives it (a 0-d array in the ``.npz``).
    """

    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: np.dtype
    scalar: bool = False


@dataclass(frozen=True)
class ModelStats:
    """Whole-model counts, measured on the model itself.

    ``params``: elements of all floating-point constant tensors (weights, biases, BN statistics…).
    ``macs``: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (and their aten equivalents) for the
    given input shapes, which the pipeline gives with batch 1 (so MACs are per sample), or None where a shape
    could not be inferred. ONNX counts from inferred shapes (both branches of an If, one Loop iteration);
    TorchScript and ``.pt2`` count what one run executes.
    """

    params: int
    macs: int | None


#: Runs a model on named inputs and returns its outputs in order.
Runner = Callable[[Mapping[str, "np.ndarray"]], Sequence["np.ndarray"]]


@runtime_checkable
class FormatAdapter(Protocol):
    """Everything the pipeline needs from a format. Implementations live in ``formats/_<name>/``, named by
    their ``FormatInfo.adapter``.

    ``load`` returns an adapter-specific model object that the other methods take; ``apply`` edits it (in place
    or not) and returns the edited model. Errors are raised as ``SepconvError`` subclasses naming the step.
    """

    #: The format's name: the ``FormatInfo.name`` it is registered under.
    name: ClassVar[str]
    #: File suffix ``save`` is given for a rewritten model (``.onnx``, ``.pt``, ``.pt2``).
    suffix: ClassVar[str]

    def output_suffix(self, src: Path) -> str:
        """The suffix an unchanged copy of the input ``src`` gets (``.zip`` for an ONNX archive with external
        data, else ``suffix``). Never raises for a file ``detect`` accepted."""
        ...

    def detect(self, path: Path) -> bool:
        """Full check of a file's content: is it a model of this format? Never raises for foreign content."""
        ...

    def load(self, path: Path, workdir: Path) -> Any:
        """Load a model; ``workdir`` is a private scratch folder (archives are unpacked there)."""
        ...

    def input_specs(self, model: Any) -> list[InputSpec]:
        """The model's inputs."""
        ...

    def find_convs(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
        """Every convolution of the model, subgraphs included, in graph order, with spatial sizes inferred for
        the given concrete input shapes where possible."""
        ...

    def apply(self, model: Any, rewrites: Sequence[Rewrite]) -> Any:
        """Replace the listed layers; returns the edited model."""
        ...

    def save(self, model: Any, dest: Path) -> Path:
        """Write the model to ``dest`` (a file path; the adapter may change the suffix, e.g. ``.zip`` for ONNX
        with external data) and return the path written. Writes to a temporary name and renames, so a failed
        save never leaves a partial file at ``dest``."""
        ...

    def stats(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> ModelStats:
        """Parameter and MAC counts of the model, measured on it."""
        ...

    def runner(self, path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
        """Load a saved model file for inference in this process; returns the runner and a backend label
        (``onnxruntime-cpu``, ``torch-cpu``…)."""
        ...




#: One synchronised inference of a loaded model (``Timeable.timed_runner``).
Timed = Callable[[], object]


# Optional capabilities. An adapter has one when it implements its methods; the stages that need one ask with
# ``isinstance(adapter, Tappable)`` (and say in the report what was not done when it lacks one).


@runtime_checkable
class Tappable(Protocol):
    """Calibration's hook: a ``formats._taps.Tap`` of the (not yet rewritten) model for these layers, which
    runs the original graph with chosen layers' weights overridden and captures their inputs."""

    def tap(self, model: Any, layers: Sequence[ConvLayer], workdir: Path, threads: int | None = None) -> Any: ...


@runtime_checkable
class Contextual(Protocol):
    """Cuts a layer out of a model with its real neighbours (``LayerContext``) for timing its candidates where
    it runs; a str says why not (then the generic micro-model is used)."""

    def context(self, model: Any, layer: ConvLayer,
                input_shapes: Mapping[str, tuple[int, ...]]) -> LayerContext | str: ...


@runtime_checkable
class Timeable(Protocol):
    """Candidates can be timed on the format's runtime: the runtime's identity (for the timing cache), the
    generic micro-model (``formats._micro``) written in the format, and a synchronised timed call."""

    def runtime(self) -> tuple[str, str, str]:
        """``(runtime, version, executor)``, e.g. ``("torch", "2.13.0", "export")``."""
        ...

    def micro_model(self, shape: Any, batch: int, folder: Path, seed: int = 0) -> Path:
        """Write the micro-model of ``shape`` (a ``formats._micro.LayerShape``) into ``folder``."""
        ...

    def timed_runner(self, path: Path, workdir: Path, threads: int, device: str,
                     inputs: Mapping[str, np.ndarray]) -> Timed:
        """One synchronised inference of the saved file on ``inputs`` (already on the device)."""
        ...


@runtime_checkable
class Trainable(Protocol):
    """Fine-tuning's hook: a trainable view (``formats._trainable.TrainableView``) of a converted model file,
    whose factors are the conv weights not among ``original`` (content digests)."""

    def trainable_view(self, path: Path, workdir: Path, original: set[str], device: str = "cpu") -> Any: ...
