"""Fine-tune checkpoints: the whole training state in one file, written atomically, read back only when it
belongs to the same fine-tune (same models, samples and options: its *key*).

A checkpoint holds plain tensors and numbers only and is read with ``torch.load(weights_only=True)``, so a
checkpoint file cannot run code. A checkpoint that does not load, or has another key, is ignored (the
fine-tune starts over) rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..._files import atomic_path

__all__ = ["CHECKPOINT_NAME", "file_digest", "fingerprint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "finetune.ckpt"


def file_digest(path: Path) -> str:
    """A digest of a file's bytes (streamed)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A key for JSON-able parts (file digests, options, sample counts)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``folder/finetune.ckpt`` through a temporary file and a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / CHECKPOINT_NAME
    with atomic_path(dest) as tmp:
        torch.save(state, tmp)
    return dest


def load_checkpoint(folder: Path | None, key: str) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` if there is one for this ``key``, else None."""
    if folder is None or not (folder / CHECKPOINT_NAME).is_file():
        return None
    try:
        state = torch.load(folder / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start over rather than fail the job
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None
