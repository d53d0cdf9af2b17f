"""The red-team corpus (issue 18): every hostile input as a case — how to build it, which layer stops it, and the
typed error code it must end in. ``tests/converter/test_redteam.py`` runs it through the CLI,
``tests/service/test_redteam.py`` through HTTP and the job runner.

Each builder takes the *canary* (a path outside every job folder that the file tries to create or read) and a
folder to write into, and returns the model and, for the sample-file cases, the ``--inputs`` file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.utils import hostile_files as hf
from tests.utils.hostile_models import save_hostile


@dataclass(frozen=True)
class Case:
    build: Callable[[Path, Path], tuple[Path, Path | None]]
    code: str  # the error code the conversion must end in
    layer: str  # what stops it: "static" (the checks before loading), "cap" (a size limit)
    runs_code: bool = False  # whether, unchecked and unconfined, it runs the attacker's code (the canary)


def _model(builder: Callable[[Path, Path], Path], suffix: str) -> Callable[[Path, Path], tuple[Path, None]]:
    def build(canary: Path, folder: Path) -> tuple[Path, None]:
        return builder(canary, folder / f"model{suffix}"), None
    return build


def _hostile(kind: str) -> Callable[[Path, Path], tuple[Path, None]]:
    def build(canary: Path, folder: Path) -> tuple[Path, None]:
        return save_hostile(kind, canary, folder / "model.pt"), None
    return build


def _inputs(builder: Callable[[Path], Path]) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(canary: Path, folder: Path) -> tuple[Path, Path]:
        return hf.save_torchscript(folder / "model.pt"), builder(folder / "inputs.npz")
    return build


CORPUS: dict[str, Case] = {
    # TorchScript: code the graph check must find, however it is hidden
    "ts: from_file in forward": Case(_hostile("file_writer"), "unsupported_model", "static", True),
    "ts: from_file in a called function": Case(_hostile("calls_function"), "unsupported_model", "static"),
    "ts: from_file in an exported method": Case(_hostile("hidden_method"), "unsupported_model", "static"),
    "ts: __setstate__": Case(_hostile("setstate"), "unsupported_model", "static"),
    "ts: __setstate__ after a line continuation": Case(_model(hf.ts_setstate_continuation, ".pt"),
                                                       "unsupported_model", "static", True),
    "ts: __setstate__ in CODE/": Case(_model(hf.ts_setstate_upper_dir, ".pt"), "unsupported_model", "static", True),
    "ts: __setstate__ in a .PY file": Case(_model(hf.ts_setstate_upper_suffix, ".pt"), "unsupported_model",
                                           "static", True),
    "ts: from_file behind an interface": Case(_model(hf.ts_interface_method, ".pt"), "unsupported_model", "static",
                                              True),
    "ts: _reshape_alias out of bounds": Case(_model(hf.ts_reshape_alias, ".pt"), "unsupported_model", "static"),
    # .pt2: strings torch evaluates, pickles it loads, strides it trusts
    "pt2: Python in guards_code": Case(_model(hf.pt2_guards_code, ".pt2"), "unsupported_model", "static", True),
    "pt2: Python in expr_str": Case(_model(hf.pt2_expr_str, ".pt2"), "unsupported_model", "static", True),
    "pt2: legacy pickled weights": Case(_model(hf.pt2_legacy_weights, ".pt2"), "unsupported_model", "static", True),
    "pt2: tree spec importing a module": Case(_model(hf.pt2_enum_treespec, ".pt2"), "unsupported_model", "static"),
    "pt2: as_strided out of bounds": Case(_model(hf.pt2_as_strided, ".pt2"), "unsupported_model", "static"),
    # caps
    "ts: member declaring 4 GiB": Case(_model(hf.ts_zip_bomb, ".pt"), "unsupported_model", "cap"),
    "pt2: member declaring 4 GiB": Case(_model(hf.pt2_zip_bomb, ".pt2"), "unsupported_model", "cap"),
    "npz: header declaring 2^40 rows": Case(_inputs(hf.npz_rows_2e40), "invalid_options", "cap"),
    "npz: member declaring 4 GiB": Case(_inputs(hf.npz_bomb), "invalid_options", "cap"),
    "onnx: initializer declaring 2^40 elements": Case(_model(hf.onnx_huge_initializer, ".onnx"),
                                                      "unsupported_model", "cap"),
    "onnx: sparse initializer outside the folder": Case(_model(hf.onnx_sparse_external, ".onnx"),
                                                        "unsupported_model", "static"),
    "onnx: external data outside the folder": Case(_model(hf.onnx_external_outside, ".onnx"), "unsupported_model",
                                                   "static"),
}
