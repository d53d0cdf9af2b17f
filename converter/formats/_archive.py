"""Safety checks for model archives (zip files) and for files a model refers to, shared by every format.

Uploads are untrusted, so an archive is read only after its directory has been checked: no absolute paths or
``..`` in member names, no symlinks or special files, no encrypted or duplicate members, at most
``MAX_ZIP_MEMBERS`` members and ``unpack_limit`` bytes unpacked (zip bombs; the byte count is enforced again
while unpacking, since a zip's declared sizes can lie). Unpacking writes only into a new folder under the
given work folder. ``resolve_inside`` applies the same rules to a path a model names (ONNX external data).

Every refusal is an ``UnsupportedModelError`` with a one-line reason. This module knows nothing about any
model format: which members make a model is the adapters' business.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import UnsupportedModelError, one_line

__all__ = [
    "MAX_UNPACKED_BYTES",
    "MAX_UNPACK_RATIO",
    "MAX_ZIP_MEMBERS",
    "MIN_UNPACK_CAP",
    "ZIP_MAGIC",
    "Member",
    "check_archive",
    "is_zip",
    "member_names",
    "resolve_inside",
    "unpack",
    "unpack_limit",
]

#: Refuse archives that would unpack to more than this many bytes (zip bombs), whatever their size…
MAX_UNPACKED_BYTES = 16 * 2**30
#: … and to more than this many times their own size, or ``MIN_UNPACK_CAP``, whichever is larger
#: (``unpack_limit``). The service bounds every file its conversion process writes the same way.
MAX_UNPACK_RATIO = 8
MIN_UNPACK_CAP = 2**30
#: Refuse archives with more members than this.
MAX_ZIP_MEMBERS = 10_000
#: The first bytes of a zip file (a local file header, or the end record of an empty archive).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, NotImplementedError, RuntimeError, EOFError, ValueError)


@dataclass(frozen=True)
class Member:
    """A regular file in an archive: its zip entry and its path components (safe to join under a folder)."""

    info: zipfile.ZipInfo
    parts: tuple[str, ...]

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def is_zip(path: Path) -> bool:
    """Whether the file starts like a zip archive.

    Raises:
        UnsupportedModelError: the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read(4) in ZIP_MAGIC
    except OSError as e:
        raise UnsupportedModelError(f"cannot read the model file {Path(path).name}: {e.strerror}") from e


def _parts(name: str) -> tuple[str, ...]:
    """The path components of an archive member or a referenced file, refusing absolute paths and ``..``."""
    norm = name.replace("\\", "/")
    if "\x00" in name or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsupportedModelError(f"unsafe zip archive: member {name!r} has an absolute path")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsupportedModelError(f"unsafe zip archive: member {name!r} points outside the archive (..)")
    if not parts:
        raise UnsupportedModelError(f"unsafe zip archive: member {name!r} has no name")
    return parts


def unpack_limit(archive_bytes: int) -> int:
    """The most bytes an archive of ``archive_bytes`` may unpack to: ``MAX_UNPACK_RATIO`` times its size, at least
    ``MIN_UNPACK_CAP``, at most ``MAX_UNPACKED_BYTES`` (the same in the CLI, the library and the service)."""
    return min(MAX_UNPACKED_BYTES, max(MIN_UNPACK_CAP, MAX_UNPACK_RATIO * int(archive_bytes)))


def _too_big(limit: int) -> UnsupportedModelError:
    return UnsupportedModelError(f"zip archive unpacks to more than {limit} bytes ({MAX_UNPACK_RATIO}× its size, at "
                                 f"least {MIN_UNPACK_CAP}); refusing it")


def _safe_members(zf: zipfile.ZipFile, limit: int) -> list[Member]:
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise UnsupportedModelError(f"zip archive has {len(infos)} members, more than {MAX_ZIP_MEMBERS}")
    members: list[Member] = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        parts = _parts(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise UnsupportedModelError(f"unsafe zip archive: member {info.filename!r} is a symbolic link")
        if info.is_dir() or parts[0] == "__MACOSX":
            continue
        if kind not in (0, stat.S_IFREG):
            raise UnsupportedModelError(f"unsafe zip archive: member {info.filename!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise UnsupportedModelError(f"zip member {info.filename!r} is encrypted")
        key = "/".join(parts).lower()
        if key in seen:
            raise UnsupportedModelError(f"zip archive has two members named {info.filename!r}")
        seen.add(key)
        total += info.file_size
        if total > limit:
            raise _too_big(limit)
        members.append(Member(info, parts))
    return members


def check_archive(path: Path) -> list[Member]:
    """The archive's files (directories and macOS ``__MACOSX`` forks left out), after the safety checks; the
    archive is not unpacked.

    Raises:
        UnsupportedModelError: the archive is unreadable, damaged or unsafe.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return _safe_members(zf, unpack_limit(os.path.getsize(path)))
    except UnsupportedModelError:
        raise
    except _ERRORS as e:
        raise UnsupportedModelError(f"the zip archive could not be read: {one_line(e, whole=True)}") from e


def member_names(path: Path) -> list[tuple[str, ...]] | None:
    """The path components of every file in the archive, unchecked (for detection, which only looks), or
    None when the file is not a readable zip. Never raises."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except Exception:  # whatever it is, it is not an archive we can read
        return None
    out = []
    for info in infos:
        parts = tuple(p for p in info.filename.replace("\\", "/").split("/") if p)
        if parts and not info.is_dir() and parts[0] != "__MACOSX":
            out.append(parts)
    return out


def unpack(path: Path, workdir: Path, *, prefix: str,
           check: Callable[[Sequence[Member]], None] | None = None) -> tuple[Path, list[Member]]:
    """Unpack an archive into a new folder under ``workdir``; returns the folder and the files written.

    ``check`` sees the (safe) members before anything is written and may refuse the archive by raising.

    Raises:
        UnsupportedModelError: the archive is damaged, unsafe, unpacks to too many bytes, or ``check`` refused it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    try:
        limit = unpack_limit(os.path.getsize(path))
        with zipfile.ZipFile(path) as zf:
            members = _safe_members(zf, limit)
            if check is not None:
                check(members)
            written = 0
            for m in members:
                target = folder.joinpath(*m.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m.info) as src, open(target, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > limit:
                            raise _too_big(limit)
                        dst.write(chunk)
    except UnsupportedModelError:
        raise
    except _ERRORS as e:
        raise UnsupportedModelError(f"the zip archive could not be unpacked: {one_line(e, whole=True)}") from e
    return folder, members


def resolve_inside(base_dir: Path, location: str, where: str, *, zipped: bool, model: str = "model") -> Path:
    """The regular file ``location`` (a relative path a model names) inside ``base_dir``.

    ``where`` starts every message (``initializer 'w' stores its data in 'w.bin'``); ``zipped`` says whether the
    folder came from an archive (the message for a missing file differs); ``model`` names the file that refers to
    ``location`` in messages (``.onnx``).

    Raises:
        UnsupportedModelError: the location is absolute, has ``..``, is or passes through a symlink, resolves
            outside ``base_dir``, or is not a regular file there.
    """
    norm = location.replace("\\", "/")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if not parts or "\x00" in location or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
        raise UnsupportedModelError(f"{where}, outside the model's folder: it must be a relative path next to the "
                                    f"{model}")
    current = base_dir
    for p in parts:
        current = current / p
        if current.is_symlink():
            raise UnsupportedModelError(f"{where}, which is a symbolic link; refusing to follow it")
    if not current.is_file():
        if zipped:
            raise UnsupportedModelError(f"{where}, which is not in the zip archive")
        raise UnsupportedModelError(f"{where}, which was not supplied: upload the {model} and its data files "
                                    "together as one .zip")
    base_real = os.path.realpath(base_dir)
    real = os.path.realpath(current)
    if os.path.commonpath([real, base_real]) != base_real:
        raise UnsupportedModelError(f"{where}, which resolves outside the model's folder")
    return current
