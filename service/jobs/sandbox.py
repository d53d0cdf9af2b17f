"""The conversion process: ``python -m service.jobs.sandbox SPEC_JSON FD``, started by the job runner for one job.

It runs ``converter.convert`` on files in its private temporary folder (its working directory) and reports back
as JSON lines on the pipe ``FD``; it never touches the database, the storage or the broker, and its environment
holds none of their addresses or credentials (the runner starts it with a clean one).

Before it reads the model it confines itself — so the limits hold for everything the untrusted model makes torch
or onnxruntime do:

* ``RLIMIT_AS`` (address space) = ``SEPCONV_JOB_MEMORY_MB``; an allocation past it fails (``MemoryError``, a
  failed ``mmap``) and is reported as ``out_of_memory``;
* ``RLIMIT_FSIZE`` bounds any one file it writes, ``RLIMIT_CORE`` = 0, ``RLIMIT_NOFILE`` a few hundred;
* ``PR_SET_NO_NEW_PRIVS`` (no set-uid escalation), ``PR_SET_PDEATHSIG`` = SIGKILL (it dies with its worker);
* when the kernel allows unprivileged user namespaces, a new user + network namespace: no network at all;
* Landlock: only its job folder (read-write) and what Python needs (read-only) can be opened; a seccomp filter:
  no socket of any family (``service.jobs.confine``). Where the kernel has no Landlock, models that carry code
  (``FormatInfo.carries_code``) are refused unless ``SEPCONV_ALLOW_UNCONFINED_CODE`` is set.

Nothing it starts outlives it. Where the kernel allows, the unshare above also makes a new PID namespace, and the
conversion runs in a forked child that is process 1 of it; this process only waits for that child and exits as
it did. When either ends — the conversion finishes, the runner kills this process (the child's parent-death
signal follows) — the kernel kills every process of the namespace, whatever they did with sessions and
groups. Without a PID namespace this process is a child subreaper instead: orphans of the conversion stay its
descendants, it kills them when the conversion ends, and the runner kills the whole tree it sees.

The runner puts it in its own session and process group, enforces the wall-clock limit by killing that group
(and every descendant), and kills it on cancellation. Events on the pipe (one JSON object per line)::

    {"event": "sandbox", "network": "isolated" | "shared", "landlock": 7, "seccomp": true, "pid_namespace": true}
    {"event": "format", "format": "onnx"}
    {"event": "progress", "stage": "plan", "progress": 0.4, "detail": null}
    {"event": "done", "format": "onnx", "output": "out/model.onnx", "report": "report.json"}
    {"event": "error", "code": "unsupported_model", "message": "…"}

What this does *not* give: the allowed read-only paths stay readable, and the kernel itself is the boundary (a
kernel bug is out of reach); see the README's isolation section for what each deployment gets.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .confine import Confinement, confine

# Nothing heavy is imported at module level: until ``_confine`` has set the parent-death signal, a worker that dies
# leaves this process running, so it must get there fast.

__all__ = ["EXIT_ERROR", "EXIT_OOM", "is_memory_error", "main"]

#: Exit statuses besides 0: a reported error, and a reported out-of-memory.
EXIT_ERROR = 3
EXIT_OOM = 4

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000

_MEMORY_MARKERS = ("cannot allocate memory", "can't allocate memory", "failed to allocate memory", "bad_alloc",
                   "failed to map segment", "out of memory", "memoryerror", "memory allocation failed")


class _Channel:
    def __init__(self, fd: int) -> None:
        self._f = os.fdopen(fd, "w", buffering=1)

    def emit(self, **event: Any) -> None:
        try:
            self._f.write(json.dumps(event) + "\n")
            self._f.flush()
        except (OSError, ValueError):  # the runner is gone; it will not read this anyway
            pass


def is_memory_error(e: BaseException | None) -> bool:
    """Whether an exception (or one in its chain) is a failed allocation, whatever library raised it."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, MemoryError):
            return True
        text = f"{type(e).__name__}: {e}".lower()
        if any(m in text for m in _MEMORY_MARKERS):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _confine(parent: int, memory_mb: int, max_file_bytes: int, read_only: list[str] | None = None,
             read_write: list[str] | None = None) -> tuple[str, Confinement, bool]:
    libc = ctypes.CDLL(None, use_errno=True)
    pid_namespace = libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID) == 0
    network = "isolated" if pid_namespace or libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0 else "shared"
    if not pid_namespace:
        pid_namespace = libc.unshare(_CLONE_NEWPID) == 0  # root without user namespaces
    # After unshare: a change of credentials would clear the parent-death signal.
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before the line above took effect: do not run orphaned
        os._exit(1)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        os._exit(1)  # Landlock and seccomp need it; never run a model without
    os.umask(0o077)
    # The runner starts us in the job folder; the CLI's and library's run (service.jobs.local) also names the
    # user's files (read-only) and checkpoint folder (read-write).
    confinement = confine(Path.cwd(), read_only or (), read_write or ())
    if confinement.seccomp:
        network = "isolated"  # no socket can be made at all
    _limit(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    _limit(resource.RLIMIT_FSIZE, max_file_bytes)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NOFILE, 512)
    return network, confinement, pid_namespace


def _fork_contained(pid_namespace: bool, channel_fd: int) -> bool:
    """Fork the process that runs the conversion; in this (the waiting) process, wait for it and exit as it did.
    Returns (in the child) whether it is process 1 of a new PID namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not pid_namespace:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        ready, _, _ = select.select([alive_r], [], [], 0)
        if ready:  # end of file: the waiting process died before the line above took effect
            os._exit(1)
        return pid_namespace
    os.close(alive_r)
    os.close(channel_fd)  # the runner sees the end of the events when the conversion (and all it started) ends
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 1 << 8
            break
    if not pid_namespace:  # reap what the conversion left behind (orphans were reparented to us)
        _kill_descendants()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _kill_descendants() -> None:
    for _ in range(10):
        children = _children(os.getpid())
        if not children:
            return
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _limit(which: int, value: int) -> None:
    # Soft and hard alike, so the limit cannot be raised again; never above a hard limit already in force.
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _test_hook(name: str, channel: _Channel) -> None:
    # Tests only (SEPCONV_TEST_HOOK): behave like a model that never finishes, eats memory, leaves a process
    # behind in a session of its own, or floods the runner with events, so the real limit code above and in
    # the runner is exercised.
    if name == "escape":
        import subprocess

        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "sepconv-test-escapee"],
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True)
        return
    if name == "flood":
        message = "x" * 200_000
        for _ in range(3000):
            channel.emit(event="error", code="conversion_failed", message=message)
        return
    if name == "sleep":
        while True:
            time.sleep(3600)
    if name == "allocate":
        hog = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))


def _convert(spec: dict[str, Any], channel: _Channel, confinement: Confinement) -> None:
    import converter
    from converter.formats import detect_format, format_info

    model = Path(spec["model"])
    adapter = detect_format(model)
    channel.emit(event="format", format=adapter.name)
    # Formats whose files carry code (TorchScript, torch.export programs) are refused where the kernel cannot
    # confine the conversion, unless the operator accepts them.
    if format_info(adapter.name).carries_code and not confinement.files_confined and not spec.get("allow_unconfined"):
        raise converter.UnsupportedModelError(
            f"{adapter.name} models carry code, and this worker's kernel offers no Landlock confinement; the "
            "operator can accept them anyway with SEPCONV_ALLOW_UNCONFINED_CODE=1")
    # Never trusted here, whatever the stored options say: the graph check always runs in the service. The
    # ``unchecked`` test hook skips it so that the tests can show the confinement alone stopping a model.
    trust = spec.get("test_hook") == "unchecked"
    config = converter.ConversionConfig.model_validate({**spec["options"], "trust_model": trust})
    out_dir = Path(spec["output_dir"])
    out_dir.mkdir(exist_ok=True)
    result = converter.convert(
        model, out_dir / f"model{adapter.suffix}", config=config, inputs=spec.get("inputs"),
        data=spec.get("data"), eval=spec.get("eval"), checkpoint_dir=spec.get("checkpoint_dir"), sandbox=False,
        progress=lambda stage, fraction, detail: channel.emit(event="progress", stage=stage, progress=fraction,
                                                              detail=detail))
    Path(spec["report"]).write_text(result.report.model_dump_json())
    channel.emit(event="done", format=result.format, output=str(result.output_path), report=spec["report"])


def main(argv: list[str]) -> int:
    """Run one conversion as described by the spec file ``argv[1]``, reporting on fd ``argv[2]``."""
    spec = json.loads(Path(argv[1]).read_text())
    channel = _Channel(int(argv[2]))
    network, confinement, pid_namespace = _confine(int(spec["parent_pid"]), int(spec["memory_mb"]),
                                                   int(spec["max_file_bytes"]), spec.get("read_only"),
                                                   spec.get("read_write"))
    pid_namespace = _fork_contained(pid_namespace, int(argv[2]))
    channel.emit(event="sandbox", network=network, landlock=confinement.landlock_abi, seccomp=confinement.seccomp,
                 pid_namespace=pid_namespace)
    try:
        if spec.get("test_hook") in ("sleep", "allocate", "escape", "flood"):
            _test_hook(spec["test_hook"], channel)
        _convert(spec, channel, confinement)
        return 0
    except BaseException as e:
        if is_memory_error(e):
            channel.emit(event="error", code="out_of_memory", message=f"{type(e).__name__}: {e}"[:500])
            return EXIT_OOM
        from converter import SepconvError

        if isinstance(e, SepconvError):
            channel.emit(event="error", code=e.code, message=str(e))
            return EXIT_ERROR
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        channel.emit(event="error", code="conversion_failed",
                     message=f"the converter failed unexpectedly: {type(e).__name__}: {e}"[:500])
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv))
