"""Value objects that configure a client: ``Timeout`` (like ``httpx.Timeout``) and ``Retries``.

Immutable and free of I/O; the clients turn them into httpx settings and sleep durations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Retries", "Timeout"]

_UNSET: Any = object()


@dataclass(frozen=True, init=False)
class Timeout:
    """Timeouts of one HTTP request, in seconds (``None``: no limit), as in httpx.

    ``Timeout(10)`` sets all four; keywords override one: ``Timeout(10, connect=2)``. With no argument the
    defaults are ``connect=5, read=60, write=60, pool=10``.

    Attributes:
        connect: To establish a connection.
        read: Between two chunks of the answer. Long-polls (``GET /jobs/{id}?wait=``) get the time they ask the
            server to wait added to this, so a long wait is never cut short by the read timeout.
        write: Between two chunks of the upload.
        pool: To get a connection from the pool.
    """

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None

    def __init__(self, timeout: float | None = _UNSET, *, connect: float | None = _UNSET,
                 read: float | None = _UNSET, write: float | None = _UNSET, pool: float | None = _UNSET) -> None:
        defaults: dict[str, float | None] = {"connect": 5.0, "read": 60.0, "write": 60.0, "pool": 10.0}
        if timeout is not _UNSET:
            defaults = dict.fromkeys(defaults, timeout)
        given = {"connect": connect, "read": read, "write": write, "pool": pool}
        for name, value in given.items():
            value = defaults[name] if value is _UNSET else value
            if value is not None and not value > 0:
                raise ValueError(f"timeout {name} must be positive or None, not {value!r}")
            object.__setattr__(self, name, None if value is None else float(value))

    @classmethod
    def coerce(cls, value: Timeout | float | None) -> Timeout:
        """A ``Timeout`` from a ``Timeout``, a number of seconds (all four) or ``None`` (no limits)."""
        return value if isinstance(value, Timeout) else cls(value)

    def to_httpx(self, *, extra_read: float = 0.0) -> httpx.Timeout:
        """The equivalent ``httpx.Timeout``, with ``extra_read`` seconds added to the read timeout."""
        read = None if self.read is None else self.read + extra_read
        return httpx.Timeout(connect=self.connect, read=read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class Retries:
    """When and how long to wait before sending a request again.

    The delay before retry ``n`` (0-based) is ``min(max_backoff, backoff * 2**n)`` with "equal jitter" (a
    uniformly random value between half of it and all of it), so clients that failed together do not come
    back together. A ``Retry-After`` answer is honoured: the delay is at least what the server asked for; if
    it asked for more than ``max_retry_after`` seconds the error is raised at once instead (with its
    ``retry_after``), rather than blocking the caller for that long.

    Attributes:
        total: Retries after the first attempt (0 disables retrying).
        backoff: Base delay in seconds.
        max_backoff: Cap on the computed delay.
        max_retry_after: The longest ``Retry-After`` the client will sleep through.
        jitter: Randomise the delay as described (turn off for reproducible timing).
    """

    total: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.total < 0 or self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("retry settings must not be negative")

    @classmethod
    def coerce(cls, value: Retries | int | None) -> Retries:
        """A ``Retries`` from a ``Retries``, a number of retries, or ``None`` (no retries)."""
        if isinstance(value, Retries):
            return value
        return cls(total=0 if value is None else int(value))

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to sleep before retry ``attempt`` (0-based), or ``None`` when no retry should be made."""
        if attempt >= self.total:
            return None
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        ceiling = min(self.max_backoff, self.backoff * 2**attempt)
        if self.jitter:
            ceiling = ceiling / 2 + random.random() * ceiling / 2
        return max(ceiling, retry_after or 0.0)
