"""API keys → owners.

A job belongs to the key that created it, stored as the key's SHA-256 hex digest (never the key). With no key
configured the API is open and every request is the single ``anonymous`` owner; the server then binds to
loopback only (``Settings`` sees to that). This module does not know about HTTP; ``service.api.deps`` reads
the ``Authorization`` header and calls ``KeyRing.owner_of``.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["ANONYMOUS", "KeyRing", "digest"]

#: The owner of every job when no API key is configured.
ANONYMOUS = "anonymous"


def digest(key: str) -> str:
    """The owner id of an API key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, held only as digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = tuple(sorted({digest(k) for k in keys}))

    @property
    def open(self) -> bool:
        """No key configured: every request is the anonymous owner."""
        return not self._digests

    def owner_of(self, key: str | None) -> str | None:
        """The owner id for a presented key, ``ANONYMOUS`` when the API is open, or None when the key is missing
        or unknown."""
        if self.open:
            return ANONYMOUS
        if not key:
            return None
        d = digest(key)
        # Compare against every digest so the time taken does not depend on which (if any) matched.
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(known, d)
        return d if found else None
