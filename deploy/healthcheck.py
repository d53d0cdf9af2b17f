#!/usr/bin/env python3
"""Container health check of a sepconv process: ``sepconv-healthcheck [api|worker]``; exit 0 healthy, 1 not.

* ``api``: ``GET /healthz`` of the ``sepconv serve`` in this container (``127.0.0.1:$SEPCONV_PORT``), which
  answers whether it listens on loopback (no API keys) or on every address.
* ``worker``: a Celery ``ping`` through the broker (``SEPCONV_BROKER_URL``) that only the ``sepconv worker`` of
  this container answers (workers are named ``sepconv@<hostname>-<pid namespace>-<pid>``: containers that share
  the host's name, under host networking, still differ in their PID namespace).
  A worker that lost its broker, or is stuck in its main loop, does not answer.
* no argument: ``worker`` if a ``sepconv worker`` process runs in this container, else ``api`` (the image's
  ``HEALTHCHECK`` serves both commands).

It reads only ``SEPCONV_PORT`` and ``SEPCONV_BROKER_URL``, and imports Celery only for a worker. It is copied
into the image as ``/usr/local/bin/sepconv-healthcheck``; it is not part of the Python package.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from pathlib import Path


def check_api(timeout: float = 4.0) -> bool:
    """Whether ``/healthz`` answers 200."""
    url = f"http://127.0.0.1:{os.environ.get('SEPCONV_PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def check_worker(timeout: float = 4.0) -> bool:
    """Whether a Celery worker of this host answers a ping."""
    from celery import Celery

    broker = os.environ.get("SEPCONV_BROKER_URL")
    if not broker:
        return False
    app = Celery("sepconv-healthcheck", broker=broker)
    app.conf.broker_connection_timeout = timeout
    app.conf.broker_connection_retry_on_startup = False
    try:
        inspect = app.control.inspect(timeout=timeout, pattern=f"{_node_prefix()}-*", matcher="glob")
        return bool(inspect.ping())
    except Exception:
        return False
    finally:
        app.close()


def _node_prefix() -> str:
    """``sepconv@<host>-<pid namespace>``: what the Celery names of this container's workers start with (as
    ``service.jobs.celery_app.node_name`` makes them; this script does not import the service)."""
    return f"sepconv@{socket.gethostname()}-{os.stat('/proc/self/ns/pid').st_ino}"


def _runs_worker() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and any(a.endswith((b"sepconv", b"service.cli")) for a in argv):
            return True
    return False


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else ("worker" if _runs_worker() else "api")
    if role not in ("api", "worker"):
        print(f"usage: {Path(argv[0]).name} [api|worker]", file=sys.stderr)
        return 2
    healthy = check_api() if role == "api" else check_worker()
    if not healthy:
        print(f"sepconv {role}: unhealthy", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
