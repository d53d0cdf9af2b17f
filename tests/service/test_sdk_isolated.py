"""The SDK installs with httpx and pydantic alone: no torch, onnx, numpy, fastapi, sqlalchemy, celery.

The test builds a clean virtual environment (``python -m venv``, without the system's site-packages), puts into
it only the distributions that httpx and pydantic require (their installed files, linked from this environment,
because nothing may be downloaded) plus this repository's ``converter`` and ``service`` packages, and imports
``service.sdk`` there in an isolated interpreter (``-I``: no ``PYTHONPATH``, no current folder on the path).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnx", "onnxruntime", "onnx_ir", "numpy", "fastapi", "starlette", "sqlalchemy", "celery",
         "redis", "boto3", "pydantic_settings", "multipart", "click", "rich")

CHECK = """
import importlib.util, json, sys
import httpx
import service.sdk as sdk
from service.sdk import Client, InvalidOptions

def handler(request):
    return httpx.Response(200, json={"id": "j", "status": "succeeded", "stage": "done", "progress": 1.0})

with Client("http://sdk.test", transport=httpx.MockTransport(handler)) as client:
    job = client.get_job("j")
    try:
        client.convert(sys.executable, rnak=2)
        refused = ""
    except InvalidOptions as e:
        refused = str(e)
heavy = %r
print(json.dumps({
    "prefix": sys.prefix, "sdk": sdk.__file__, "job": job.status, "refused": refused,
    "loaded": [m for m in heavy if m in sys.modules],
    "findable": [m for m in heavy if importlib.util.find_spec(m) is not None],
}))
"""


def _requirement_closure(roots: tuple[str, ...]) -> list[md.Distribution]:
    """The installed distributions ``roots`` need (no extras), ``roots`` included."""
    requirements = pytest.importorskip("packaging.requirements")
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        dist = md.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = requirements.Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _top_level_paths(dist: md.Distribution) -> set[Path]:
    """The installed top-level packages/modules and the .dist-info folder of ``dist``."""
    out = set()
    for file in dist.files or []:
        if file.parts[0] in ("..", "__pycache__") or file.parts[0].endswith(".pth"):
            continue
        top = Path(dist.locate_file(file.parts[0]))
        if top.exists():
            out.add(top)
    return out


def test_sdk_imports_with_only_httpx_and_pydantic(tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    assert site.is_relative_to(venv) and site != Path(sysconfig.get_paths()["purelib"])

    dists = _requirement_closure(("httpx", "pydantic"))
    names = {d.metadata["Name"].lower().replace("_", "-") for d in dists}
    assert {"httpx", "pydantic", "pydantic-core"} <= names
    assert not names & {"torch", "onnx", "numpy", "fastapi", "click", "rich"}
    for dist in dists:
        for path in _top_level_paths(dist):
            (site / path.name).symlink_to(path)
    for package in ("converter", "service"):  # this repository, without its dependencies
        (site / package).symlink_to(REPO / package)

    result = subprocess.run([str(python), "-I", "-c", CHECK % (HEAVY,)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert Path(seen["prefix"]) == venv
    assert Path(seen["sdk"]).resolve() == REPO / "service" / "sdk" / "__init__.py"
    assert seen["job"] == "succeeded"
    assert "rnak: unknown option" in seen["refused"]  # ConversionConfig validates in the bare environment too
    assert seen["loaded"] == []
    assert seen["findable"] == []  # not merely unimported: not installed at all
