"""Lay out a folder of wheels as a PEP 503 simple index that pip reads through a ``file://`` URL.

    python3 simple_index.py FILES SIMPLE     # then pip install --index-url file://SIMPLE torch==…

pip looks a project up at ``<index>/<normalized name>/`` and, for a ``file:`` folder, reads its ``index.html``;
the wheels are linked there by relative path (``../../files/…``), so the two folders must stay side by side.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path


def normalize(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def main(files: Path, simple: Path) -> None:
    projects: dict[str, list[Path]] = {}
    for wheel in sorted(files.glob("*.whl")):
        projects.setdefault(normalize(wheel.name.split("-", 1)[0]), []).append(wheel)
    for project, wheels in projects.items():
        folder = simple / project
        folder.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="{html.escape(str(Path("../..") / files.name / w.name))}">{html.escape(w.name)}</a>\n'
                        for w in wheels)
        (folder / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    index = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{index}</body></html>\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
