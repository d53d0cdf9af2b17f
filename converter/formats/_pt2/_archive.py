r"""What a ``.pt2`` archive may hold before ``torch.export.load`` reads it.

``torch.export.load`` trusts its file: it unpickles (``torch.load(weights_only=False)``) weights and constants
the archive's configs mark ``use_pickle``, ``pickle.loads`` opaque constants, loads TorchBind objects, retries
the sample inputs with ``weights_only=False`` when the safe unpickler refuses them, and can load AOTInductor
shared libraries. Uploads are untrusted, so before it runs, this module checks (besides the shared archive
safety of ``formats._archive``: no path tricks, no symlinks, size caps) that:

* every member is one of the entries ``torch.export.save`` writes for a plain program (models' JSON, raw
  weights and tensor constants with their JSON configs, sample inputs, version markers, ``extra/`` files):
  nothing compiled (``data/aotinductor/``), no legacy pickled weights or constants (``data/weights/<m>.pt``,
  ``data/constants/<m>.pt``, which torch unpickles without restriction);
* every string of the models' JSON that torch evaluates as Python is plain arithmetic (``_symexpr``): each
  symbolic size (``expr_str``, handed to ``sympy.sympify``) over the declared symbols, each ``guards_code`` entry
  (``exec``\ed by ``ExportedProgram.module()``) over input sizes; and no tree spec names a Python module to import
  (an enum or a ``defaultdict`` factory, which torch's pytree loader imports by name);
* no weight or constant is stored pickled, and no constant is a custom or opaque object;
* the sample inputs load with ``torch.load(weights_only=True)``, so torch never falls back to full unpickling.

Member names are compared case-insensitively, as torch's archive reader (miniz) looks them up.
What remains trusted is torch's JSON graph deserializer (it resolves operator names to registered ops; the
graph's ops are checked against the allowlist right after loading) and its ``weights_only`` unpickler.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

from ..._errors import UnsupportedModelError, one_line
from .._archive import check_archive
from .._graphcheck import is_trusted
from . import pt2_root
from ._symexpr import check_guard, check_sym_expr

__all__ = ["check_pt2_archive"]

_ALLOWED = re.compile(
    r"(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json|data/weights/[^/]+|data/constants/[^/]+|data/sample_inputs/[^/]+\.pt|extra/[^/]+)"
)
_CONFIG = re.compile(r"data/(weights|constants)/[^/]+_(weights|constants)_config\.json")
_MODEL = re.compile(r"models/[^/]+\.json")
_MAX_CONFIG_BYTES = 64 * 2**20
_MAX_MODEL_JSON_BYTES = 512 * 2**20


def _refuse(reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"unsafe or unsupported .pt2 archive: {reason}")


def check_pt2_archive(path: Path) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` would read with full unpickling or native code.

    Raises:
        UnsupportedModelError: the archive is damaged or unsafe, is not a ``torch.export.save`` program, or
            holds pickled, compiled or custom-object entries; one line saying which.
    """
    members = check_archive(path)
    root = pt2_root([m.parts for m in members])
    if root is None:
        raise UnsupportedModelError("the zip archive is not a torch.export program (no archive_format and "
                                    "models/*.json); save it with torch.export.save")
    try:
        with zipfile.ZipFile(path) as zf:
            for m in members:
                # torch's reader finds ``data/weights/model.pt`` under any case; so does this check
                inner = "/".join(m.parts[1:]).lower()
                if m.parts[0].lower() != root.lower() or not _ALLOWED.fullmatch(inner):
                    raise _refuse(f"member {m.path!r} is not part of a plain torch.export program")
                if inner.startswith(("data/constants/", "data/weights/")) and inner.endswith(".pt"):
                    raise _refuse(f"member {m.path!r} holds pickled (legacy) weights or constants, which torch "
                                  "would unpickle without restriction")
                if _CONFIG.fullmatch(inner):
                    _check_config(zf, m.info, m.path)
                if _MODEL.fullmatch(inner) and not is_trusted():
                    _check_model_json(zf, m.info, m.path)
            for m in members:
                if m.parts[1:3] == ("data", "sample_inputs"):
                    _check_sample_inputs(zf.read(m.info), m.path)
    except UnsupportedModelError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise UnsupportedModelError(f"the .pt2 archive could not be read: {one_line(e, 200)}") from e


def _check_config(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    if info.file_size > _MAX_CONFIG_BYTES:
        raise _refuse(f"{name} is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(zf.read(info)).get("config", {})
        entries = list(config.items())
    except (ValueError, AttributeError) as e:
        raise _refuse(f"{name} is not a readable payload config") from e
    for fqn, meta in entries:
        if not isinstance(meta, dict):
            raise _refuse(f"{name}: entry {fqn!r} is not a payload description")
        if meta.get("use_pickle"):
            raise _refuse(f"{fqn!r} is stored pickled ({name}); re-save the program with plain tensors")
        path_name = str(meta.get("path_name", ""))
        if "constants" in name and not path_name.startswith("tensor_"):
            raise _refuse(f"constant {fqn!r} is a custom or opaque object ({path_name!r}), not a tensor")


def _check_model_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    """The strings of a serialized program that torch evaluates or imports by: see the module docstring."""
    if info.file_size > _MAX_MODEL_JSON_BYTES:
        raise _refuse(f"{name} is larger than {_MAX_MODEL_JSON_BYTES} bytes")
    try:
        program = json.loads(zf.read(info))
    except (ValueError, RecursionError) as e:
        raise _refuse(f"{name} is not readable JSON") from e
    if not isinstance(program, dict):
        raise _refuse(f"{name} is not a serialized program")
    ranges = program.get("range_constraints") or {}
    symbols = frozenset(k for k in ranges if isinstance(k, str)) if isinstance(ranges, dict) else frozenset()
    _walk_json(program, symbols, name, 0)


def _walk_json(value: object, symbols: frozenset[str], name: str, depth: int) -> None:
    if depth > 200:
        raise _refuse(f"{name} is nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "expr_str":
                check_sym_expr(item, symbols, name)
            elif key == "guards_code":
                for guard in item if isinstance(item, list) else [item]:
                    check_guard(guard, name)
            elif key in ("__enum__", "default_factory_module", "default_factory_name"):
                raise _refuse(f"{name} names a Python object to import ({key}); torch would import it")
            elif isinstance(item, str) and item[:1] in ("[", "{"):
                _walk_embedded(item, symbols, name, depth)
            else:
                _walk_json(item, symbols, name, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk_json(item, symbols, name, depth + 1)
    elif isinstance(value, str) and value[:1] in ("[", "{"):
        _walk_embedded(value, symbols, name, depth)


def _walk_embedded(text: str, symbols: frozenset[str], name: str, depth: int) -> None:
    # Tree specs (``in_spec``/``out_spec``) are JSON inside a JSON string; torch's loader imports what they name.
    try:
        inner = json.loads(text)
    except (ValueError, RecursionError):
        return  # a plain string that only looks like JSON: torch does not parse it either
    _walk_json(inner, symbols, name, depth + 1)


def _check_sample_inputs(data: bytes, name: str) -> None:
    import torch

    if not data:
        return
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # the safe unpickler refused something: torch would retry with full unpickling
        raise _refuse(f"{name} does not load with torch.load(weights_only=True): {one_line(e, 120)}") from e
