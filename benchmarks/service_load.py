"""The service's figures, measured on a real ``sepconv serve`` on loopback (embedded executor, SQLite and file
storage in a temporary folder):

  (a) ``GET /jobs/{id}`` against ``GET /healthz`` under ``wrk`` (a real HTTP load tool: 50 keep-alive connections,
      ``--duration`` seconds each), side by side in one run — idle, then while the server's two worker processes each
      convert a ResNet-50-sized model (25.6 M parameters, 224×224, verification on) — plus one connection alone:
      requests/s and p50/p99   (targets: jobs ≥ 60 % of healthz's requests/s; jobs p99 < 100 ms idle, < 250 ms
      with two conversions running);
  (b) growth of the API process's RSS (sampled every 20 ms) while a 1 GiB upload streams in, against its RSS
      just before                                                                          (target: < 100 MB).

The figures are printed, not asserted: this is a measurement, not a test. The machines this runs on are shared and
noisy, so both endpoints are measured alternately in the same run, on the same server. ``wrk`` runs on the same
machine and competes for its CPUs. The upload of (b) goes to a second server with no worker processes: a real ONNX
model's first bytes, which pass the upload's format sniffing, then padding; the job it creates would fail, and is
never run. Everything is bounded (durations, time limits) and removed at the end: processes, temporary folder.

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``; macOS: ``brew install wrk``).

Usage: python benchmarks/service_load.py [--duration 10] [--connections 50] [--upload-mib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
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


def wrk(url: str, path: str, connections: int, duration: float) -> dict[str, float]:
    """One ``wrk`` run: requests/s and latency percentiles (ms) of ``GET path``; non-2xx answers counted."""
    threads = max(1, min(2, connections))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
                          "-H", f"Authorization: Bearer {KEY}", url + path],
                         capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        figures[f"p{pct}"] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    figures["non2xx"] = float(bad.group(1)) if bad else 0.0
    return figures


def side_by_side(url: str, job_id: str, connections: int, duration: float) -> dict[str, dict[str, float]]:
    """healthz, jobs, healthz, jobs (half the duration each), so that a change in the machine's load hits both."""
    runs: dict[str, list[dict[str, float]]] = {"healthz": [], "jobs": []}
    for _ in range(2):
        runs["healthz"].append(wrk(url, "/healthz", connections, duration / 2))
        runs["jobs"].append(wrk(url, f"/jobs/{job_id}", connections, duration / 2))
    return {name: {"rps": statistics.fmean(r["rps"] for r in rs), "p50": max(r["p50"] for r in rs),
                   "p99": max(r["p99"] for r in rs), "non2xx": sum(r["non2xx"] for r in rs)}
            for name, rs in runs.items()}


def _line(label: str, figures: dict[str, dict[str, float]]) -> str:
    h, j = figures["healthz"], figures["jobs"]
    return (f"    {label:<26} healthz {h['rps']:7.0f} req/s (p50 {h['p50']:6.1f}, p99 {h['p99']:6.1f} ms)   "
            f"jobs {j['rps']:7.0f} req/s (p50 {j['p50']:6.1f}, p99 {j['p99']:6.1f} ms)   "
            f"jobs/healthz {j['rps'] / h['rps']:.0%}{'   NON-2xx!' if h['non2xx'] or j['non2xx'] else ''}")


def load_under_conversions(folder: Path, tiny: Path, big: Path, connections: int, duration: float) -> None:
    server = Server(folder / "a", workers=2)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            probe = submit(client, tiny, rank="2", latency_runs="1")
            wait_until(client, probe, {"succeeded", "failed"}, timeout=120)
            single = side_by_side(server.url, probe, 1, duration)
            idle = side_by_side(server.url, probe, connections, duration)

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
            loaded = side_by_side(server.url, probe, connections, duration)
            jobs = [client.get(f"/jobs/{j}").json() for j in busy]
            still = all(j["status"] == "running" for j in jobs)
            for j in busy:  # bounded: the conversions are not needed past the measurement
                client.delete(f"/jobs/{j}")
    finally:
        server.stop()
    print(f"(a) wrk, {duration:g} s per line (healthz and jobs alternated, two halves each), same server")
    print(_line("1 connection, idle:", single))
    print(_line(f"{connections} connections, idle:", idle))
    print(_line(f"{connections} conn., 2 conversions:", loaded))
    print(f"    the two conversions (ResNet-50, 224×224, verification on) were "
          f"{'still both running at the end' if still else 'NOT both running at the end'}")
    print(f"    targets: jobs/healthz >= 60 % (idle {idle['jobs']['rps'] / idle['healthz']['rps']:.0%}, loaded "
          f"{loaded['jobs']['rps'] / loaded['healthz']['rps']:.0%}); jobs p99 < 100 ms idle "
          f"({idle['jobs']['p99']:.1f}), < 250 ms loaded ({loaded['jobs']['p99']:.1f})")


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
    ap.add_argument("--duration", type=float, default=10, help="seconds of wrk per line of (a), per endpoint")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections of (a)")
    ap.add_argument("--upload-mib", type=int, default=1024, help="size of the upload of (b)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk: apt-get install wrk (Debian/Ubuntu) or brew install wrk (macOS)")
    print(f"sepconv serve on loopback: embedded executor, SQLite + file storage in a temporary folder; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="sepconv-bench-") as tmp:
        folder = Path(tmp)
        tiny, big = build_models(folder)
        print(f"models: tiny CNN ({tiny.stat().st_size / 2**10:.0f} KiB), ResNet-50-sized "
              f"({big.stat().st_size / 2**20:.0f} MiB)")
        load_under_conversions(folder, tiny, big, args.connections, args.duration)
        upload_memory(folder, tiny, args.upload_mib * 2**20)


if __name__ == "__main__":
    main()
