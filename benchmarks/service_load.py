"""The service's two figures, measured on a real ``sepconv serve`` on loopback (embedded executor, SQLite and file
storage in a temporary folder):

  (a) latency of ``GET /jobs/{id}`` from one client polling (a request every 25 ms on one keep-alive connection,
      after a warm-up): p50/p95/p99 with no conversion running, then the same while the server's two worker processes
      each convert a ResNet-50-sized model (25.6 M parameters, 224×224, verification on)   (target: p99 < 50 ms);
  (b) growth of the API process's RSS (sampled every 20 ms) while a 1 GiB upload streams in, against its RSS
      just before                                                                          (target: < 100 MB).

The figures are printed, not asserted: this is a measurement, not a test. Both sides of (a) run in one run, one
after the other, on the same server and job, because these machines are noisy. The upload of (b) goes to a
second server with no worker processes (the upload is all it measures): a real ONNX model's first bytes, which
pass the upload's format sniffing, then padding; the job it creates would fail, and is never run. Everything is
bounded (request counts, time limits) and removed at the end: processes, temporary folder.

Usage: python benchmarks/service_load.py [--requests 300] [--interval-ms 25] [--upload-mib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root: the upload helpers are shared with the tests

from tests.service.helpers import sampled_rss, streamed_model_upload  # noqa: E402

KEY = "benchmark-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Server:
    """``sepconv serve`` on a free loopback port, in its own process group."""

    def __init__(self, folder: Path, workers: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEPCONV_")}
        env.update(SEPCONV_DATA_DIR=str(folder / "data"), SEPCONV_API_KEYS=KEY, SEPCONV_WORKERS=str(workers),
                   SEPCONV_LOG_LEVEL="warning", SEPCONV_POLL_INTERVAL_S="0.5")
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"sepconv serve exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("sepconv serve did not start within 90 s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(40)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


def build_models(folder: Path) -> tuple[Path, Path]:
    """A tiny CNN and a ResNet-50-sized one (random weights), as ONNX."""
    import torch
    import torch.nn as nn

    sys.path.insert(0, str(HERE))
    from _models import ResNet50

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    paths = []
    for name, model, size in (("tiny", tiny, 32), ("resnet50", ResNet50().eval(), 224)):
        path = folder / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, size, size),), path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
        paths.append(path)
    return paths[0], paths[1]


def submit(client: httpx.Client, path: Path, **options: str) -> str:
    with path.open("rb") as f:
        r = client.post("/convert", data=options, files={"model": (path.name, f, "application/octet-stream")})
    r.raise_for_status()
    return r.json()["id"]


def wait_until(client: httpx.Client, job_id: str, statuses: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not reach {sorted(statuses)} within {timeout:.0f} s: {job}")
        time.sleep(0.1)


def latencies(client: httpx.Client, job_id: str, n: int, interval: float,
              between: Callable[[], None] = lambda: None) -> list[float]:
    """Milliseconds of ``n`` ``GET /jobs/{id}``, one every ``interval`` seconds like a polling client (after 20
    uncounted); ``between`` is called every 25 requests, outside the timing."""
    out: list[float] = []
    next_at = time.perf_counter()
    for i in range(n + 20):
        next_at += interval
        t0 = time.perf_counter()
        r = client.get(f"/jobs/{job_id}")
        dt = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        if i >= 20:
            out.append(dt)
            if (i - 20) % 25 == 24:
                between()
        time.sleep(max(0.0, next_at - time.perf_counter()))
    return out


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {q[49]:6.1f} ms   p95 {q[94]:6.1f} ms   p99 {q[98]:6.1f} ms   max {max(ms):6.1f} ms   (n={len(ms)})"


def latency_under_load(folder: Path, tiny: Path, big: Path, n: int, interval: float) -> None:
    server = Server(folder / "a", workers=2)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            probe = submit(client, tiny, rank="2", latency_runs="1")
            wait_until(client, probe, {"succeeded", "failed"}, timeout=120)
            idle = latencies(client, probe, n, interval)

            # Two conversions, one per worker process; measured once both are past loading the model.
            options = {"rank": "8", "latency_runs": "30", "verify": "true"}
            busy = [submit(client, big, **options) for _ in range(2)]
            deadline = time.monotonic() + 180
            while True:
                jobs = [client.get(f"/jobs/{j}").json() for j in busy]
                if all(j["status"] == "running" and j["stage"] not in ("queued", "load") for j in jobs):
                    break
                if any(j["status"] in ("succeeded", "failed") for j in jobs) or time.monotonic() > deadline:
                    raise SystemExit(f"the two conversions were not running together: {jobs}")
                time.sleep(0.1)
            stages: list[str] = []
            both_running = [True]

            def look() -> None:  # not timed: which stages the conversions are in
                jobs = [client.get(f"/jobs/{j}").json() for j in busy]
                both_running[0] &= all(j["status"] == "running" for j in jobs)
                stages.append("+".join(j["stage"] for j in jobs))

            look()
            t0 = time.monotonic()
            loaded = latencies(client, probe, n, interval, look)
            elapsed = time.monotonic() - t0
            for j in busy:  # bounded: the conversions are not needed past the measurement
                client.delete(f"/jobs/{j}")
    finally:
        server.stop()
    seen = list(dict.fromkeys(stages))
    print(f"(a) GET /jobs/{{id}} latency, one client polling every {interval * 1000:.0f} ms, {n} requests per side")
    print(f"    no conversion running:    {summary(idle)}")
    print(f"    two conversions running:  {summary(loaded)}")
    print(f"    over {elapsed:.1f} s the two conversions (ResNet-50, 224×224, verification on) went through stages "
          f"{' → '.join(seen)}; {'both running throughout' if both_running[0] else 'NOT both running throughout'}")
    print(f"    p99 loaded / idle = {_p99(loaded) / _p99(idle):.2f}   (target: p99 < 50 ms while loaded)")


def _p99(ms: list[float]) -> float:
    return statistics.quantiles(ms, n=100, method="inclusive")[98]


def upload_memory(folder: Path, head_of: Path, size: int) -> None:
    server = Server(folder / "b", workers=0)
    try:
        # a real ONNX model's first bytes, so that the upload passes the sniffing, then padding
        headers, body = streamed_model_upload(head_of.read_bytes()[:4096], size)
        time.sleep(1.0)  # let the freshly started server settle
        t0 = time.perf_counter()
        with sampled_rss(server.proc.pid, interval=0.02) as samples:
            r = httpx.post(f"{server.url}/convert", content=body, timeout=600, headers={**AUTH, **headers})
        seconds = time.perf_counter() - t0
        stored = sum(p.stat().st_size for p in (folder / "b" / "data" / "files").rglob("input"))
    finally:
        server.stop()
    baseline, peak = samples[0], max(samples)
    print(f"(b) API RSS during a {size / 2**20:.0f} MiB upload (API only, no worker processes)")
    print(f"    answer {r.status_code}, {stored / 2**20:.0f} MiB stored, {size / 2**20 / seconds:.0f} MiB/s, "
          f"{len(samples)} RSS samples")
    print(f"    RSS before {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB: "
          f"growth {(peak - baseline) / 2**20:.1f} MiB   (target < 100 MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="GET /jobs/{id} requests per side of (a)")
    ap.add_argument("--interval-ms", type=float, default=25, help="time between two requests of (a)")
    ap.add_argument("--upload-mib", type=int, default=1024, help="size of the upload of (b)")
    args = ap.parse_args()
    print(f"sepconv serve on loopback: embedded executor, SQLite + file storage in a temporary folder; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="sepconv-bench-") as tmp:
        folder = Path(tmp)
        tiny, big = build_models(folder)
        print(f"models: tiny CNN ({tiny.stat().st_size / 2**10:.0f} KiB), ResNet-50-sized "
              f"({big.stat().st_size / 2**20:.0f} MiB)")
        latency_under_load(folder, tiny, big, args.requests, args.interval_ms / 1000)
        upload_memory(folder, tiny, args.upload_mib * 2**20)


if __name__ == "__main__":
    main()
