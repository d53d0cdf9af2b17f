"""``Pt2Adapter``: the ``FormatAdapter`` for ``.pt2`` files (``torch.export.save``); see the package docstring."""

from __future__ import annotations

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
from .._archive import member_names
from .._base import ConvLayer, InputSpec, ModelStats, Rewrite, Runner
from .._graphcheck import check_fx_graph
from .._micro import LayerShape
from . import is_pt2_layout
from ._archive import check_pt2_archive
from ._graph import Pt2Model, find_layers, input_specs, macs, params
from ._rewrite import rewrite_program

__all__ = ["Pt2Adapter", "Pt2Model"]


def _load(path: Path) -> Any:
    """``torch.export.load`` after the archive checks, then the graph check, as one-line errors."""
    check_pt2_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as e:  # torch raises RuntimeError, KeyError, JSON and zip errors alike
        raise UnsupportedModelError(f".pt2 file could not be loaded: {one_line(e, 200)}") from e
    check_fx_graph(program.graph_module)  # the operator allowlist (formats/_graphcheck.py), before anything runs
    return program


def _flatten(value: Any) -> list[torch.Tensor]:
    leaves = torch.utils._pytree.tree_leaves(value)
    if not all(isinstance(t, torch.Tensor) for t in leaves):
        raise VerificationError("the .pt2 program returned values that are not tensors")
    return leaves


class Pt2Adapter:
    """``FormatAdapter`` for ``torch.export`` programs saved with ``torch.export.save``."""

    name: ClassVar[str] = "pt2"
    suffix: ClassVar[str] = ".pt2"

    def output_suffix(self, src: Path) -> str:
        """Always ``.pt2``."""
        return self.suffix

    def detect(self, path: Path) -> bool:
        """A zip with the ``torch.export.save`` layout (``<root>/archive_format`` saying ``pt2`` and
        ``<root>/models/*.json``). Reads the zip directory and one tiny member; never raises."""
        try:
            names = member_names(path)
            return names is not None and is_pt2_layout(path, names)
        except Exception:
            return False

    def load(self, path: Path, workdir: Path) -> Pt2Model:
        """Check the archive (``_archive.check_pt2_archive``), ``torch.export.load`` it, check its graph.

        Raises:
            UnsupportedModelError: truncated, damaged, unsafe or not an exported program, or its graph holds an
                op outside the allowlist.
        """
        return Pt2Model(_load(Path(path)))

    def input_specs(self, model: Pt2Model) -> list[InputSpec]:
        """The program's tensor user inputs with their declared shapes (symbolic dims as names)."""
        return input_specs(model.program)

    def find_convs(self, model: Pt2Model, input_shapes: Mapping[str, tuple[int, ...]]) -> list[ConvLayer]:
        """Every conv node of the graph in graph order; spatial sizes from a fake-tensor run at the given shapes.

        Raises:
            InvalidOptionsError: a shape names an unknown input, or the program does not run at those shapes.
        """
        return find_layers(model, input_shapes)

    def apply(self, model: Pt2Model, rewrites: Sequence[Rewrite]) -> Pt2Model:
        """Replace the listed convs (``_rewrite.rewrite_program``); every rewrite is checked before any edit.

        Raises:
            ConversionError: a layer is not a convertible conv of this program or could not be rewritten.
        """
        if rewrites:
            model.program = rewrite_program(model.program, rewrites)
            model._shapes.clear()
        return model

    def save(self, model: Pt2Model, dest: Path) -> Path:
        """``torch.export.save`` to a temporary file next to ``dest``, renamed to ``dest``.

        Raises:
            ConversionError: the program could not be serialised or written.
        """
        dest = Path(dest)
        with map_errors(f"could not save the .pt2 program to {dest.name}", ConversionError, limit=200,
                        type_name=False), atomic_path(dest) as tmp:
            torch.export.save(model.program, str(tmp))
        return dest

    def stats(self, model: Pt2Model, input_shapes: Mapping[str, tuple[int, ...]]) -> ModelStats:
        """Floating-point elements of the state dict and constants; MACs of convs and matrix products at the
        given shapes, per sample (None without shapes)."""
        return ModelStats(params=params(model.program), macs=macs(model, input_shapes))

    def tap(self, model: Pt2Model, layers: Sequence[ConvLayer], workdir: Path, threads: int | None = None) -> Any:
        """A ``formats._taps.Tap`` of the (not yet rewritten) program for these layers: calibration's hook."""
        from ._tap import build_tap

        return build_tap(self, model, layers, workdir, threads)

    def runner(self, path: Path, workdir: Path, threads: int | None, device: str = "cpu") -> tuple[Runner, str]:
        """``torch.export.load(path).module()`` on ``device`` under ``torch.inference_mode``; inputs go in the
        program's user-input order, outputs are flattened.

        Raises:
            InvalidOptionsError: ``device`` is neither ``cpu`` nor ``cuda``.
            UnsupportedModelError: the file does not load.
        """
        if device not in ("cpu", "cuda"):
            raise InvalidOptionsError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if threads:
            torch.set_num_threads(threads)
        program = _load(Path(path))
        names = [s.name for s in input_specs(program)]
        module = program.module().to(device)

        def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            missing = [n for n in names if n not in inputs]
            if missing:
                raise InvalidOptionsError(f"missing model inputs: {', '.join(missing)}")
            tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(device) for n in names]
            try:
                with torch.inference_mode():
                    out = module(*tensors)
            except Exception as e:
                raise VerificationError(f"the .pt2 program did not run: {one_line(e, 200)}") from e
            return [t.detach().cpu().numpy() for t in _flatten(out)]

        return run, f"torch-{torch.device(device).type}"

    # Trainable: fine-tuning's view of a converted file.
    def trainable_view(self, path: Path, workdir: Path, original: set[str], device: str = "cpu") -> Any:
        """A ``formats._trainable.TrainableView`` of the converted file at ``path`` (``_trainable.pt2_view``)."""
        from ._trainable import pt2_view

        return pt2_view(path, workdir, original, device)

    # Timeable: candidates are timed on torch (the exported program's module; its own cache key).
    def runtime(self) -> tuple[str, str, str]:
        """``("torch", version, "export")``: same runtime as TorchScript, another executor."""
        return "torch", torch.__version__, "export"

    def micro_model(self, shape: LayerShape, batch: int, folder: Path, seed: int = 0) -> Path:
        """The generic micro-model of ``shape``, exported, as ``folder/micro.pt2``."""
        from .._torch import write_pt2_micro

        folder.mkdir(parents=True, exist_ok=True)
        return write_pt2_micro(shape, batch, folder / "micro.pt2", seed)

    def timed_runner(self, path: Path, workdir: Path, threads: int, device: str,
                     inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """One synchronised inference of the saved program's module, inputs in the given order."""
        from .._torch import timed_call

        return timed_call(_load(Path(path)).module(), list(inputs), threads, device, inputs)
