"""Writing files atomically: write to a temporary name next to the destination, then rename it over it.

A reader (or a crash) therefore sees either no file / the old file, or the complete new one, never a partial
write. The temporary file is in the destination's folder so the final ``os.replace`` is a rename on one file
system. Standard library only: the torch-free SDK uses it too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write"]


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """A temporary path next to ``dest`` for a writer that wants a path (``torch.save``, ``zipfile``…).

    When the block ends without an error the temporary file replaces ``dest``; on any error it is removed and
    ``dest`` is left as it was. The block must create the file.
    """
    dest = Path(dest)
    # Hidden, and ending in dest's suffix (torch.export.save warns about any other).
    tmp = dest.with_name(f".{dest.stem}.{uuid.uuid4().hex[:12]}.tmp{dest.suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(dest: str | Path, *, fsync: bool = False) -> Iterator[IO[bytes]]:
    """An open binary file that replaces ``dest`` when the block ends without an error (see ``atomic_path``).

    The file gets the permissions a newly created file gets (the umask's). With ``fsync`` its content is
    flushed to disk before the rename (for downloads a user keeps; not needed for scratch files).
    """
    with atomic_path(dest) as tmp:
        with open(tmp, "xb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
