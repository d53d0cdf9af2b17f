"""Local file helpers of the SDK: an upload reader that reports progress, and an atomic download target.

Both clients share these; they touch only the local disk, never the network.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["ProgressReader", "atomic_write"]


class ProgressReader:
    """A binary file wrapper that calls ``callback(sent, total)`` as httpx reads the upload from it.

    httpx streams a multipart file part by calling ``read(64 KiB)`` until it is exhausted, and sizes it with
    ``fileno()``/``seek()``/``tell()``, so the model is never held in memory; a resend after a retry starts
    with ``seek(0)``, which also resets the count.
    """

    def __init__(self, file: IO[bytes], callback: Callable[[int, int], object]) -> None:
        self._file = file
        self._callback = callback
        self._total = os.fstat(file.fileno()).st_size
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if chunk:
            self._sent += len(chunk)
            self._callback(self._sent, self._total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        if whence == os.SEEK_SET:
            self._sent = position
        return position

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    @property
    def name(self) -> str:
        return str(getattr(self._file, "name", "upload"))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(target: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``target``; on success it replaces ``target``, on any error it is removed.

    So ``target`` is either absent (or as it was) or complete: never a partial download. It gets the
    permissions a newly created file gets (the umask's), not ``mkstemp``'s private 0600.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
