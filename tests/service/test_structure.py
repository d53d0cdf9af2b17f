"""Structure of the service package: no import cycles between its modules, one place for lease-derived
intervals, one set of repeatable options."""

from __future__ import annotations

import ast
from pathlib import Path

import service
from converter._config import REPEATABLE_FIELDS
from service.core.config import Settings

ROOT = Path(service.__file__).parent


def _imports(path: Path) -> set[str]:
    """Modules of ``service`` a module imports at its top level (imports inside functions are deferred)."""
    package = ".".join(("service", *path.relative_to(ROOT).with_suffix("").parts[:-1]))
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.startswith("service"):
                out.update({base, *(f"{base}.{a.name}" for a in node.names)})
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("service"))
    return out


def test_no_import_cycles_at_module_level():
    modules = {".".join(("service", *p.relative_to(ROOT).with_suffix("").parts)): p for p in ROOT.rglob("*.py")
               if "migrations" not in p.parts}
    graph = {name: {m for m in _imports(p) if m in modules and m != name} for name, p in modules.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [name for name in graph if name in reach(name) and not name.endswith("__init__")]
    assert cycles == []
    assert "service.jobs.executor" not in reach("service.jobs.celery_app")


def test_lease_intervals():
    s = Settings(job_lease_s=60)
    assert (s.heartbeat_interval_s, s.reap_interval_s, s.upkeep_interval_s) == (10.0, 30.0, 2.0)
    s = Settings(job_lease_s=1)
    assert (s.heartbeat_interval_s, s.reap_interval_s, s.upkeep_interval_s) == (0.5, 1.0, 0.5)
    assert s.heartbeat_interval_s < s.job_lease_s


def test_repeatable_options_are_repeated_everywhere():
    from click.testing import CliRunner

    from service.cli import cli
    from service.jobs.service import options_from_form

    opts = options_from_form({name: ["a=1"] for name in REPEATABLE_FIELDS})
    assert all(opts[name] == ["a=1"] for name in REPEATABLE_FIELDS)
    text = CliRunner().invoke(cli, ["convert", "--help"]).output
    assert "--device [cpu|cuda|auto]" in text
