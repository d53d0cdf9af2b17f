"""Local file helpers of the SDK: an upload reader that reports progress, and an atomic download target
(``atomic_write``, the converter's one write-temp-then-rename helper).

Both clients share these; they touch only the local disk, never the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

from converter import atomic_write

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
