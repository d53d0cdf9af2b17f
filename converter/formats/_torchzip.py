"""The zip container torch writes (``PyTorchStreamWriter``: ``torch.jit.save``, ``torch.export.save``,
``torch.save``), shared by the TorchScript and ``.pt2`` formats: recognising it from a file's first bytes.

Standard library only: the registry's sniffs and the upload pre-filter use it without importing torch.
"""

from __future__ import annotations

from ._archive import ZIP_MAGIC

__all__ = ["first_member", "looks_like_torch_archive"]

# The second path component of the entries torch's writer puts first (``<root>/data/0``, ``<root>/data.pkl``,
# ``<root>/code/…``, ``<root>/models/model.json`` …).
_TORCH_ARCHIVE_ENTRIES = frozenset({"data", "data.pkl", "code", "constants.pkl", "version", ".data", "byteorder",
                                    "models", "archive_format", "extra", "serialized_exported_program.json"})


def first_member(head: bytes) -> tuple[str, ...] | None:
    """The path components of a zip's first member, read from its local file header in ``head``, or None when
    ``head`` does not start with a whole local file header."""
    if len(head) < 30 or not head.startswith(ZIP_MAGIC[0]):
        return None
    name_len = int.from_bytes(head[26:28], "little")
    if len(head) < 30 + name_len:
        return None
    return tuple(p for p in head[30:30 + name_len].decode("utf-8", "replace").split("/") if p)


def looks_like_torch_archive(head: bytes) -> bool:
    """Whether a zip's first member is laid out like torch's writer lays it out (``<root>/<known entry>``).
    A pre-filter only: the adapters' ``detect`` decides."""
    parts = first_member(head)
    return parts is not None and len(parts) >= 2 and parts[1] in _TORCH_ARCHIVE_ENTRIES
