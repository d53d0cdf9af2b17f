"""The converter's layout holds: folders point one way and are entered through their ``__init__``, nothing
outside ``formats/`` names a format, and the service uses only public names (README, "Design")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import converter
import converter.formats

ROOT = Path(converter.__file__).resolve().parents[1]
PKG = ROOT / "converter"

#: The contract (the top-level modules) first, then each folder above the ones it may import.
LAYERS = ["", "algebra", "formats", "data", "latency", "planning", "evaluation", "recovery", "report", "pipeline"]
#: Entry points besides the folders themselves: a sub-folder that is its own concern (torch for training).
ENTRIES = {"recovery.finetune"}
#: The one arrow that points up, on purpose: the report's schema lists the registered formats (the registry is
#: dependency-free; ``formats/__init__`` imports nothing heavy).
UPWARD_OK = {("_report", "formats")}
#: The library imports nothing of the service, with one exception: ``convert`` runs a code-carrying model in the
#: service's confined child process (``service.jobs.local``), imported only for such a model. Moving the
#: confinement itself into the library would remove it (named as follow-up work in the README).
SERVICE_OK = {("pipeline._convert", "service.jobs.local")}
#: At most this many modules at the top, ``__init__`` included (the torch-free contract).
MAX_TOP_MODULES = 8


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module relative to ``converter`` or None, names) for every import of a converter
    module, at any depth (function-level imports included)."""
    mod = _module(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    if mod == "":
        package = []
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "converter" or node.module.startswith("converter.")):
                target = node.module[len("converter."):] if node.module != "converter" else ""
            else:
                continue
            names = [a.name for a in node.names]
            # ``from . import _svg``: the names are modules
            subs = [n for n in names if (PKG / Path(*filter(None, target.split(".")), n)).with_suffix(".py").exists()
                    or (PKG / Path(*filter(None, target.split(".")), n) / "__init__.py").exists()]
            if subs:
                for n in subs:
                    out.append((node.lineno, ".".join(filter(None, [target, n])), []))
            else:
                out.append((node.lineno, target, names))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("converter."):
                    out.append((node.lineno, a.name[len("converter."):], []))
    return out


def _folder(mod: str) -> str:
    for entry in ENTRIES:
        if mod == entry or mod.startswith(entry + "."):
            return entry
    top = mod.split(".")[0]
    return top if top in LAYERS else ""


def _rank(folder: str) -> int:
    return LAYERS.index(folder.split(".")[0])


def _edges() -> list[tuple[str, int, str, str, list[str]]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        src = _module(path)
        for line, target, names in _imports(path):
            out.append((src, line, target, _folder(target), names))
    return out


def test_the_top_level_is_the_contract_and_every_folder_is_a_layer() -> None:
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    folders = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert folders == sorted(LAYERS[1:])


def test_folders_point_one_way() -> None:
    """A module imports its own folder, the contract, or a folder below its own: never one above (no cycles
    between folders follows)."""
    upward = []
    for src, line, target, folder, _ in _edges():
        if src == "":  # the public face re-exports from every layer
            continue
        mine = _folder(src)
        if folder == mine or folder.split(".")[0] == mine.split(".")[0]:
            continue
        if _rank(folder) >= _rank(mine) and (src, folder) not in UPWARD_OK:
            upward.append(f"converter/{src.replace('.', '/')}:{line} imports {target or 'converter'}")
    assert upward == []


def test_folders_are_entered_through_their_init() -> None:
    """From outside a folder, only its ``__init__`` is imported (or a top-level contract module)."""
    reaching_in = []
    for src, line, target, folder, _ in _edges():
        if src == "" or not folder:
            continue
        mine = _folder(src)
        if mine == folder or (folder not in ENTRIES and mine.split(".")[0] == folder):
            continue
        if target != folder:
            reaching_in.append(f"converter/{src.replace('.', '/')}:{line} imports {target}")
    assert reaching_in == []


def test_the_library_does_not_import_the_service() -> None:
    found = set()
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("service"):
                found.add((_module(path), node.module))
            elif isinstance(node, ast.Import):
                found |= {(_module(path), a.name) for a in node.names if a.name.startswith("service")}
    assert found <= SERVICE_OK


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            docs.add(id(body[0].value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def test_nothing_outside_formats_names_a_format() -> None:
    """Adding a format is one package under ``formats/`` and one registry line: no code outside it compares
    with a format's name or suffix, or imports a format's library."""
    names = set(converter.formats.format_names())
    suffixes = {s.lstrip(".") for n in names for s in converter.formats.format_info(n).suffixes}
    libraries = {"onnx", "onnx_ir"}
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "formats":
            continue
        tree = ast.parse(path.read_text())
        for node in _code_strings(tree):
            words = set(re.findall(r"[a-z0-9_]+", node.value.lower()))
            dotted = set(re.findall(r"\.([a-z0-9]+)\b", node.value.lower()))
            if words & names or dotted & suffixes:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            else:
                continue
            found += [f"{rel}:{node.lineno} imports {m}" for m in mods if m.split(".")[0] in libraries]
    assert found == []


def test_the_format_name_check_can_fail(tmp_path: Path) -> None:
    tree = ast.parse('"""Docstrings may say ONNX."""\nif fmt == "onnx":\n    pass\n')
    assert [n.value for n in _code_strings(tree)] == ["onnx"]


SERVICE = ROOT / "service"


@pytest.mark.parametrize("path", sorted(SERVICE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_service_imports_only_public_names(path: Path) -> None:
    public = {"converter": set(converter.__all__), "converter.formats": set(converter.formats.__all__)}
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("converter"):
            allowed = public.get(node.module or "")
            if allowed is None:
                bad.append(f"line {node.lineno}: from {node.module}")
            else:
                bad += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names if a.name not in allowed]
        elif isinstance(node, ast.Import):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("converter.") and a.name != "converter.formats"]
    assert bad == []
