"""Where timings are measured (runtime, version, CPU features or GPU) and a persistent cache of them.

A candidate's latency depends on the runtime and its version, the processor (CPU instruction set, or GPU
name), the thread count, the batch, the layer's shapes and (ONNX) the structure of its real neighbours, not on
weights: the cache is keyed by exactly those, so a second conversion of a similar model (same layer shapes and
blocks) on the same machine times nothing again.

The cache is one JSON file per backend key in the cache directory: ``SEPCONV_CACHE_DIR`` if set, else
``$XDG_CACHE_HOME/sepconv`` or ``~/.cache/sepconv``. It is best effort: a directory that cannot be written (a
sandboxed worker, a read-only home) only means that nothing is cached; it never fails a conversion.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._files import atomic_write
from ..formats import FormatAdapter, Timeable, adapter_for

__all__ = ["Backend", "TimingCache", "backend_for", "cache_dir", "cpu_features"]

#: Bump when what a cached number means changes (micro-model context, harness). 2: ONNX layers are timed with
#: their real neighbours, keyed by the context's structure as well as the layer's shape.
_CACHE_FORMAT = 2


def cache_dir() -> Path:
    """The timing cache's folder (see the module docstring). The one place that reads its environment."""
    explicit = os.environ.get("SEPCONV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no home directory (a sandboxed worker with a bare environment)
            base = tempfile.gettempdir()
    return Path(base).expanduser() / "sepconv"


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The x86 vector extensions that decide onnxruntime's and oneDNN's kernels (``avx2``, ``avx512f``…), or
    the machine name elsewhere."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile")
    found = tuple(f for f in wanted if f in flags)
    return found or (platform.machine() or "unknown",)


def block_size(features: tuple[str, ...]) -> int:
    """Channel block of onnxruntime's NCHWc kernels (and oneDNN's blocked layouts): 16 with AVX-512, 8 with
    AVX2, 4 otherwise."""
    if "avx512f" in features:
        return 16
    if "avx2" in features:
        return 8
    return 4


@dataclass(frozen=True)
class Backend:
    """Where timings are measured.

    Attributes:
        runtime: ``onnxruntime`` or ``torch``.
        version: the runtime's version.
        device: ``cpu`` or ``cuda``.
        processor: CPU features (``avx,avx2,fma``) or the GPU's name.
        threads: intra-op threads.
        block: the channel block that aligned channel counts are rounded to (1 on GPUs: no rounding).
        executor: how the runtime runs the model where one runtime has several (``export``: a ``.pt2``
            program's module, not TorchScript's graph executor); part of the cache key, not of the label.
    """

    runtime: str
    version: str
    device: str
    processor: str
    threads: int
    block: int
    executor: str = ""

    @property
    def key(self) -> str:
        run = f"{self.runtime}-{self.executor}" if self.executor else self.runtime
        return f"{run}-{self.version}-{self.device}-{self.processor}-t{self.threads}"

    @property
    def label(self) -> str:
        return f"{self.runtime}-{self.device}"


def backend_for(adapter: FormatAdapter | str, device: str, threads: int) -> Backend:
    """The backend a model of this format runs on here: the runtime the format names
    (``formats.Timeable.runtime``: ONNX on onnxruntime, TorchScript and ``.pt2`` on torch) on this device."""
    if isinstance(adapter, str):
        adapter = adapter_for(adapter)
    runtime, version, executor = (adapter.runtime() if isinstance(adapter, Timeable)
                                  else (adapter.name, "", ""))
    if device == "cuda":
        import torch

        processor = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"
        return Backend(runtime, version, device, processor, threads, 1, executor)
    feats = cpu_features()
    return Backend(runtime, version, device, ",".join(feats), threads, block_size(feats), executor)


class TimingCache:
    """Median latencies (ms) of candidates on one backend, persisted as JSON.

    Keys are strings built by the caller from everything else that matters (shapes, batch, candidate). Reads
    and writes never raise: a damaged file is ignored, a failed write is dropped.
    """

    def __init__(self, backend: Backend, folder: Path | None = None, *, enabled: bool = True) -> None:
        self.backend = backend
        self.enabled = enabled
        digest = hashlib.sha256(f"{_CACHE_FORMAT}|{backend.key}".encode()).hexdigest()[:16]
        self.path = (folder if folder is not None else cache_dir()) / f"latency-{digest}.json"
        self._data: dict[str, float] = {}
        self._dirty = False
        self.hits = 0
        if enabled:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                if raw.get("backend") == backend.key and isinstance(raw.get("ms"), dict):
                    self._data = {str(k): float(v) for k, v in raw["ms"].items()}
            except (OSError, ValueError, TypeError, AttributeError):
                self._data = {}

    def get(self, key: str) -> float | None:
        value = self._data.get(key) if self.enabled else None
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, ms: float) -> None:
        if self.enabled:
            self._data[key] = float(ms)
            self._dirty = True

    def __len__(self) -> int:
        return len(self._data)

    def save(self) -> bool:
        """Write the cache atomically (merged with what another process wrote meanwhile); True if written."""
        if not (self.enabled and self._dirty):
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                other = json.loads(self.path.read_text(encoding="utf-8")).get("ms", {})
            except (OSError, ValueError, AttributeError):
                other = {}
            merged = {**(other if isinstance(other, dict) else {}), **self._data}
            with atomic_write(self.path) as f:
                f.write(json.dumps({"backend": self.backend.key, "format": _CACHE_FORMAT, "ms": merged}).encode())
        except OSError:
            return False
        self._dirty = False
        return True
