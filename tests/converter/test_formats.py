"""The format registry, the shared archive checks, the naming convention and the atomic-write helper.

The adapters themselves are tested in ``test_<format>_adapter.py``; here: what every format shares, and that the
registry keeps the heavy parts (torch above all) out of an ONNX conversion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from converter._errors import UnsupportedModelError
from converter._files import atomic_path, atomic_write
from converter.formats import (
    FormatAdapter,
    UniqueNames,
    _archive,
    adapter_for,
    describe_unknown,
    detect_format,
    expected_formats,
    format_info,
    format_names,
    formats,
    node_name,
    sniff_formats,
)
from tests.utils import onnx_models as om

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_format_is_complete() -> None:
    assert format_names()[:2] == ("onnx", "torchscript")
    for info in formats():
        adapter = adapter_for(info.name)
        assert isinstance(adapter, FormatAdapter)
        assert adapter.name == info.name and adapter.suffix == info.suffixes[0]
        assert info.title in expected_formats()
    with pytest.raises(UnsupportedModelError, match="unknown model format 'tflite'"):
        format_info("tflite")


def test_schemas_take_the_format_list_from_the_registry() -> None:
    from converter import Report
    from service.schemas import JobPublic

    assert Report.model_json_schema()["properties"]["format"]["enum"] == list(format_names())
    prop = JobPublic.model_json_schema()["properties"]["format"]
    assert next(v for v in prop["anyOf"] if v.get("enum"))["enum"] == list(format_names())


def test_onnx_conversion_never_imports_torch(tmp_path: Path) -> None:
    """A fresh interpreter converts and verifies an ONNX model; torch must stay out of ``sys.modules``."""
    src = tmp_path / "vgg.onnx"
    src.write_bytes(om.zoo_onnx("vgg"))
    code = (
        "import json, sys, converter\n"
        f"r = converter.convert({str(src)!r}, {str(tmp_path / 'out.onnx')!r}, rank=2, input_shape=['x=2x3x32x32'])\n"
        "print(json.dumps({'format': r.report.format, 'converted': len(r.report.converted_layers),\n"
        "                  'verified': r.report.fidelity is not None,\n"
        "                  'heavy': [m for m in ('torch', 'torchvision') if m in sys.modules]}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"format": "onnx", "converted": result["converted"], "verified": True, "heavy": []}
    assert result["converted"] > 0


def test_importing_the_registry_is_light() -> None:
    code = ("import sys, converter.formats as f\n"
            "f.sniff_formats(b'PK\\x03\\x04'); f.expected_formats()\n"
            "print([m for m in ('numpy', 'onnx', 'onnx_ir', 'torch') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_files_get_one_line_that_names_what_is_read(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x13\x37" * 500)
    assert sniff_formats(junk.read_bytes()) == []
    with pytest.raises(UnsupportedModelError) as e:
        detect_format(junk)
    assert str(e.value) == f"not a model sepconv reads: expected {expected_formats()}"
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert describe_unknown(broken, broken.read_bytes()).endswith("a damaged or truncated zip archive")
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"\x80\x02" + b"\0" * 64)
    assert "a Python pickle" in describe_unknown(pickle, pickle.read_bytes())
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="empty"):
        detect_format(empty)


def test_unique_names_and_node_names() -> None:
    names = UniqueNames(taken={"conv_2"})
    assert [names("conv"), names("conv"), names("conv"), names("fc", avoid={"fc"})] == ["conv", "conv_3", "conv_4",
                                                                                       "fc_2"]
    assert node_name("features.0", "dw") == "features.0/dw"


@pytest.mark.parametrize(("member", "message"), [
    ("../evil.bin", "points outside the archive"),
    ("/abs.bin", "absolute path"),
    ("C:\\x.bin", "absolute path"),
])
def test_archive_checks_refuse_path_tricks(tmp_path: Path, member: str, message: str) -> None:
    path = om.make_zip(tmp_path / "a.zip", [("ok.bin", b"1"), (member, b"x")])
    with pytest.raises(UnsupportedModelError, match=message):
        _archive.check_archive(path)
    with pytest.raises(UnsupportedModelError, match=message):
        _archive.unpack(path, tmp_path / "work", prefix="t-")
    assert not (tmp_path / "evil.bin").exists()


def test_archive_byte_cap_is_enforced_while_unpacking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("big.bin", b"\0" * 5000)
    assert [m.path for m in _archive.check_archive(path)] == ["big.bin"]
    monkeypatch.setattr(_archive, "MAX_UNPACKED_BYTES", 4000)
    with pytest.raises(UnsupportedModelError, match="more than 4000 bytes"):
        _archive.check_archive(path)
    # A refusing check stops before anything is written.
    def refuse(members: object) -> None:
        raise UnsupportedModelError("no")

    monkeypatch.undo()
    with pytest.raises(UnsupportedModelError, match="no"):
        _archive.unpack(path, tmp_path / "work", prefix="t-", check=refuse)
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))


def test_resolve_inside(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"1")
    assert _archive.resolve_inside(tmp_path, "w.bin", "w", zipped=True) == tmp_path / "w.bin"
    for location, message in [("../w.bin", "outside"), ("/etc/passwd", "outside"), ("nope.bin", "not in the zip")]:
        with pytest.raises(UnsupportedModelError, match=message):
            _archive.resolve_inside(tmp_path, location, "w", zipped=True)
    (tmp_path / "link.bin").symlink_to(tmp_path / "w.bin")
    with pytest.raises(UnsupportedModelError, match="symbolic link"):
        _archive.resolve_inside(tmp_path, "link.bin", "w", zipped=False)


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    with atomic_write(dest, fsync=True) as f:
        f.write(b"new")
    assert dest.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_write(dest) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    with pytest.raises(OSError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError("boom")
    assert dest.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
