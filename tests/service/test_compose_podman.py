"""docker-compose.yml run for real: the image built from the Dockerfile and the whole stack under podman.

``make compose-test`` runs this module (marker ``container``, left out of the default ``make test``). It
installs podman, runc and debootstrap from Debian's packages and builds the stand-in images
(``deploy/podman/setup.sh``; skipped, saying why, where that cannot be done), then, with ``podman-compose``
reading the compose file unchanged plus an override file written here:

* builds the project's image from the Dockerfile (cached build timed too), brings the stack up with two
  workers and the ``gpu`` profile's worker, and waits for every container's health check;
* converts an ONNX and a TorchScript model with calibration data, and fine-tunes one (routed to the ``gpu``
  queue's worker), through the SDK; checks the reports and runs the downloaded models;
* kills the worker container running a job (the job finishes on the other worker), restarts the API container
  (jobs and files are still there), and tears everything down, leaving no container or volume behind;
* prints the image's size and what it is made of, and how long each step took.

Why the override exists (these machines, not the compose file): no registry of container images is reachable,
so ``postgres``, ``redis`` and ``minio`` become local stand-ins (Debian's PostgreSQL 15 and Redis 7.0, moto's S3
server) and the Dockerfile's base and CPU torch come from local sources (build arguments); containers may only
use the host's network, so every service gets ``network_mode: host`` and its own loopback port — not the
defaults, since this machine's own PostgreSQL (5432) and Redis (6379) listen there already — and the compose
network's names (``postgres``, ``redis``, ``minio``) become ``127.0.0.1:<port>``; the ``gpu`` profile's worker
runs on the CPU (no device reservation). A user with a registry and a container network needs none of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.sdk import Client
from tests.service.helpers import FIGURES, KEY_ALICE, free_port
from tests.utils.models import build, export_onnx

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "deploy" / "podman" / "setup.sh"
#: What a user's .env gives compose (deploy/.env.example).
DOTENV = {"SEPCONV_API_KEYS": KEY_ALICE, "POSTGRES_PASSWORD": "composetest0pw", "MINIO_ROOT_USER": "testing",
          "MINIO_ROOT_PASSWORD": "testing-secret"}
#: Small conversions: planned on counts (no candidate timing), one verification run.
OPTIONS: dict[str, Any] = {"rank": 2, "latency_runs": 1, "measure": False, "input_shape": {"x": (1, 3, 32, 32)}}
#: A conversion that stays in its verification stage for tens of seconds (timed runs of the small ResNet, which
#: pools globally, at 224×224): the job a worker is killed under.
LONG: dict[str, Any] = {"rank": 2, "measure": False, "latency_runs": 800, "input_shape": {"x": (1, 3, 224, 224)}}
HEALTHY_TIMEOUT_S = 600


@dataclass
class Stack:
    """One compose project of this test: how to call podman-compose on it, its ports, and the step times."""

    project: str
    compose: list[str]
    env: dict[str, str]
    api_port: int
    #: The sepconv image, tagged for this project alone (SEPCONV_IMAGE in .env): a run beside it on the same
    #: machine cannot retag it under it. Its layers stay as the next build's cache; the tag is removed at the end.
    image: str
    times: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def run(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """``podman-compose <global options> ARGS``; fails the test with its output if it fails."""
        return _run([*self.compose, *args], self.env, timeout)

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["podman", *args], self.env, timeout, check=check)

    def logs(self, name: str) -> str:
        r = self.podman("logs", name)
        return r.stdout + r.stderr

    def containers(self, service: str | None = None, running: bool = True) -> list[str]:
        """Names of this project's containers (of one service), sorted."""
        filters = ["--filter", f"label=io.podman.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=io.podman.compose.service={service}"]
        out = self.podman("ps", *([] if running else ["-a"]), *filters, "--format", "{{.Names}}").stdout
        return sorted(out.split())

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.times[name] = time.monotonic() - start


def _run(cmd: list[str], env: dict[str, str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    """This machine made ready by deploy/podman/setup.sh: the environment podman and podman-compose then need."""
    if not sys.platform.startswith("linux"):
        pytest.skip("podman containers need Linux")
    if shutil.which("podman-compose") is None and not _has_module("podman_compose"):
        pytest.skip("podman-compose is not installed (make install-dev installs it)")
    try:
        r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        pytest.skip("no bash to run deploy/podman/setup.sh")
    if r.returncode == 3:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, f"deploy/podman/setup.sh failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    env = dict(os.environ)
    for line in Path(r.stdout.strip().splitlines()[-1]).read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    return env


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def write_override(path: Path, env: dict[str, str], ports: dict[str, int]) -> None:
    """The override file: stand-in images, host networking on loopback ports, local build sources (see the
    module docstring)."""
    standin, tag = env["SEPCONV_PODMAN_STANDIN"], env["SEPCONV_PODMAN_TAG"]
    db = f"postgresql://sepconv:{DOTENV['POSTGRES_PASSWORD']}@127.0.0.1:{ports['postgres']}/sepconv"
    sepconv = f"""
    network_mode: host
    build:
      args:
        PYTHON_IMAGE: {env["SEPCONV_PODMAN_BASE"]}
        TORCH_INDEX_URL: file:///wheels/simple
    environment:
      SEPCONV_DATABASE_URL: {db}
      SEPCONV_BROKER_URL: redis://127.0.0.1:{ports["redis"]}/0
      SEPCONV_S3_ENDPOINT_URL: http://127.0.0.1:{ports["s3"]}
      SEPCONV_PORT: "{ports["api"]}"
      # A lost worker's job is taken over after this lease (default 60 s), to keep the test short.
      SEPCONV_JOB_LEASE_S: "15"
"""
    path.write_text(f"""# Written by test_compose_podman.py: what these machines need besides docker-compose.yml.
services:
  api:{sepconv}
    command: [serve, --host, 127.0.0.1]
  worker:{sepconv}
  worker-gpu:{sepconv}
    deploy: !reset {{}}
  postgres:
    image: {standin}/postgres:{tag}
    network_mode: host
    command: [postgres, -c, listen_addresses=127.0.0.1]
    environment:
      PGPORT: "{ports["postgres"]}"
  redis:
    image: {standin}/redis:{tag}
    network_mode: host
    command: [redis-server, --appendonly, "yes", --bind, 127.0.0.1, --port, "{ports["redis"]}"]
    healthcheck:
      test: !override [CMD, redis-cli, -p, "{ports["redis"]}", ping]
  minio:
    image: {standin}/s3:{tag}
    network_mode: host
    command: [-H, 127.0.0.1, -p, "{ports["s3"]}"]
    healthcheck:
      test: !override [CMD, python, -c, "import urllib.request as u; u.urlopen('http://127.0.0.1:{ports["s3"]}/')"]
""")


@pytest.fixture(scope="module")
def stack(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A compose project of its own (name, ports), torn down afterwards whatever happened."""
    folder = tmp_path_factory.mktemp("compose")
    project = f"sepconv-test-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("api", "postgres", "redis", "s3")}
    # Two workers from .env (SEPCONV_WORKERS), not `up --scale`: podman-compose's `down` then knows the second.
    image = f"localhost/sepconv:{project}"
    dotenv = {**DOTENV, "SEPCONV_WORKERS": "2", "SEPCONV_IMAGE": image}
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    write_override(folder / "override.yml", podman_env, ports)
    compose = [sys.executable, "-m", "podman_compose", "--project-name", project, "--env-file", str(folder / ".env"),
               "-f", str(ROOT / "docker-compose.yml"), "-f", str(folder / "override.yml"), "--profile", "gpu",
               # The image format that keeps the Dockerfile's HEALTHCHECK (podman's default, OCI, drops it).
               "--podman-build-args",
               f"--format=docker --network=host --volume={podman_env['SEPCONV_PODMAN_WHEELS']}:/wheels:ro"]
    env = {k: v for k, v in podman_env.items() if not k.startswith(("SEPCONV_", "AWS_"))}
    env.update({k: v for k, v in podman_env.items() if k.startswith("SEPCONV_PODMAN_")})
    s = Stack(project, compose, env, ports["api"], image)
    try:
        yield s
    finally:
        # Whatever the test left (it ends with `down -v` itself): containers with their anonymous volumes, the
        # pod podman-compose made, the project's named volumes.
        with contextlib.suppress(Exception):
            _run([*compose, "down", "-v", "-t", "5"], env, 300, check=False)
        for name in s.containers(running=False):
            _run(["podman", "rm", "-f", "-v", "--depend", name], env, 120, check=False)
        _run(["podman", "pod", "rm", "-f", "--ignore", f"pod_{project}"], env, 120, check=False)
        for volume in s.podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split():
            if volume.startswith(f"{project}_"):
                _run(["podman", "volume", "rm", "-f", volume], env, 120, check=False)
        _run(["podman", "rmi", image], env, 120, check=False)
        _report(s, request.config)


def _report(s: Stack, config: pytest.Config) -> None:
    """The figures, for the end of the run whether the test passed or not (conftest's terminal summary)."""
    lines = [f"docker-compose.yml under podman ({s.project}):"]
    lines += [f"  {name:<45} {seconds:7.1f} s" for name, seconds in s.times.items()] + [f"  {n}" for n in s.notes]
    config.stash.setdefault(FIGURES, []).extend(lines)


def _health(s: Stack, name: str) -> bool:
    """Run the container's health check now, as the engine would (podman runs them from systemd timers, and
    there is no systemd here)."""
    return s.podman("healthcheck", "run", name, check=False).returncode == 0


def wait_healthy(s: Stack, expect: dict[str, int], timeout: float = HEALTHY_TIMEOUT_S) -> None:
    """Until ``expect[service]`` containers of each service run and pass their health check."""
    deadline = time.monotonic() + timeout
    healthy: set[str] = set()
    while True:
        running = {svc: s.containers(svc) for svc in expect}
        healthy = {name for names in running.values() for name in names if name in healthy or _health(s, name)}
        if all(len([c for c in running[svc] if c in healthy]) == count for svc, count in expect.items()):
            return
        if time.monotonic() > deadline:
            logs = {name: s.logs(name)[-3000:] for name in s.containers(running=False)}
            pytest.fail(f"not healthy after {timeout} s: running {running}, healthy {sorted(healthy)}\n"
                        + "\n".join(f"--- {n}\n{t}" for n, t in logs.items()))
        time.sleep(2)


def running_job_container(s: Stack, names: list[str]) -> str | None:
    """The worker container whose job folder (``/tmp/sepconv-job-*``) exists, if any."""
    for name in names:
        r = s.podman("exec", name, "sh", "-c", "ls -d /tmp/sepconv-job-* 2>/dev/null", check=False)
        if r.stdout.strip():
            return name
    return None


def check_model(fmt: str, path: Path, shape: tuple[int, ...] = (1, 3, 32, 32)) -> None:
    """The downloaded model runs in its own runtime and gives finite logits."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).standard_normal(shape, np.float32)
    if fmt == "onnx":
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    else:
        y = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
    assert y.shape == (shape[0], 10) and np.isfinite(y).all()


def test_compose_stack_under_podman(stack: Stack, model_files: dict[str, Path], tmp_path: Path):
    s = stack
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(1)
    np.savez(data, inputs=rng.standard_normal((48, 3, 32, 32), np.float32), labels=rng.integers(0, 10, 48))
    out = tmp_path / "out"
    out.mkdir()
    resnet = tmp_path / "resnet.onnx"
    export_onnx(*build("resnet"), resnet)

    # -- the image -----------------------------------------------------------------------------------------------
    # `build api` builds the image that api, worker and worker-gpu share, once: `up --build` would build it once
    # per service, in parallel (podman-compose, like docker compose, builds every service that has `build:`).
    cold = os.environ.get("SEPCONV_COMPOSE_COLD") == "1"
    with s.step("build, cold (--no-cache)" if cold else "build, with this machine's layer cache"):
        s.run("build", *(["--no-cache"] if cold else []), "api")
    with s.step("build again, all layers cached"):
        s.run("build", "api")
    # The Dockerfile's HEALTHCHECK is kept (a single `docker run` of the image reports its health).
    assert "sepconv-healthcheck" in s.podman("image", "inspect", s.image, "--format", "{{json .HealthCheck}}").stdout
    size = int(s.podman("image", "inspect", s.image, "--format", "{{.Size}}").stdout)
    s.notes.append(f"image: {size / 1e6:.0f} MB")
    du = s.podman("run", "--rm", "--user", "0", "--entrypoint", "sh", s.image, "-c",
                  "du -sm /opt/venv/lib/python3*/site-packages/* | sort -rn | head -n 8; "
                  "du -sm /opt/venv /opt/sepconv /usr /var").stdout
    site = "/opt/venv/lib/python3.11/site-packages/"
    s.notes.append("largest parts (MB): " + "; ".join(" ".join(line.split()[::-1]).replace(site, "")
                                                      for line in du.splitlines()))

    # -- up: API, two workers, the gpu profile's worker, PostgreSQL, Redis, S3 -----------------------------------
    expect = {"api": 1, "worker": 2, "worker-gpu": 1, "postgres": 1, "redis": 1, "minio": 1}
    start = time.monotonic()
    with s.step("up -d (two workers)"):
        s.run("up", "-d")
    wait_healthy(s, expect)
    s.times["up to every container healthy"] = time.monotonic() - start
    workers = s.containers("worker")
    assert len(workers) == 2, workers
    ready = httpx.get(f"{s.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "queue": True, "storage": True}
    assert httpx.get(f"{s.url}/jobs", timeout=10).status_code == 401  # keys are required

    with Client(s.url, api_key=KEY_ALICE, timeout=60) as client:
        # -- conversions with calibration data, and a fine-tune (routed to the gpu profile's worker) -------------
        with s.step("convert ONNX + TorchScript (calibrated)"):
            jobs = {fmt: client.convert(model_files[fmt], data=data, wait=False, **OPTIONS)
                    for fmt in ("onnx", "torchscript")}
            jobs = {fmt: job.wait(timeout=600) for fmt, job in jobs.items()}
        for fmt, job in jobs.items():
            assert job.status == "succeeded" and job.format == fmt and job.attempts == 1, job
            report = job.report
            assert report.format == fmt and report.policy["converted_layers"] > 0
            assert report.params.converted < report.params.original
            assert report.fidelity is not None and math.isfinite(report.fidelity.rel_l2)
            assert report.accuracy is not None, "calibration data gives an accuracy report"
            path = job.download(out / f"{fmt}-{job.filename}")
            check_model(fmt, path)
        with s.step("fine-tune (gpu queue, on the CPU)"):
            tuned = client.convert(model_files["onnx"], data=data, recover="finetune", epochs=2, wait=600,
                                   **OPTIONS)
        assert tuned.status == "succeeded" and tuned.report.finetune is not None, tuned
        assert tuned.report.finetune.epochs >= 1
        check_model("onnx", tuned.download(out / "tuned.onnx"))
        # Routing: the fine-tune ran on the gpu queue's worker, the calibrated conversions on the others.
        logs = {name: s.logs(name) for name in [*workers, *s.containers("worker-gpu")]}

        def ran_on(job_id: str) -> list[str]:
            return [name for name, text in logs.items() if f"job {job_id}: done" in text]

        assert ran_on(tuned.id) == s.containers("worker-gpu")
        for job in jobs.values():
            assert len(ran_on(job.id)) == 1 and ran_on(job.id)[0] in workers

        # -- a worker lost in the middle of a job --------------------------------------------------------------
        with s.step("worker killed mid-job, job done elsewhere"):
            long = client.convert(resnet, wait=False, **LONG)
            deadline = time.monotonic() + 300
            victim = None
            while victim is None:
                assert time.monotonic() < deadline, f"the long job never ran: {long.refresh()}"
                long = long.refresh()
                assert long.status in ("queued", "running"), long
                victim = running_job_container(s, workers) if long.status == "running" else None
                time.sleep(0.5)
            survivor = next(w for w in workers if w != victim)
            s.podman("kill", victim)
            s.podman("stop", "-t", "0", victim)  # lost for good: no restart under it (restart: unless-stopped)
            long = long.wait(timeout=900)
        assert long.status == "succeeded" and long.attempts == 2, long
        assert s.containers("worker") == [survivor]
        check_model("onnx", long.download(out / "long.onnx"), (1, 3, 224, 224))
        s.podman("start", victim)
        wait_healthy(s, {"worker": 2})

        # -- the API restarted: jobs and files are still there -------------------------------------------------
        before = {job.id: (out / f"{fmt}-{job.filename}").read_bytes() for fmt, job in jobs.items()}
        with s.step("API restarted, healthy again"):
            s.podman("restart", s.containers("api")[0], timeout=120)
            wait_healthy(s, {"api": 1})
        listed = {job.id for job in client.list_jobs(limit=100).data}
        assert set(before) | {tuned.id, long.id} <= listed
        for job_id, content in before.items():
            assert client.get_job(job_id).status == "succeeded"
            assert client.download_model(job_id, out / f"again-{job_id}").read_bytes() == content
            assert client.get_report(job_id).params.converted > 0

    # -- down: nothing left ------------------------------------------------------------------------------------------
    # Every volume the project's containers use: the named ones (postgres-data, …) and any anonymous one.
    mounts = s.podman("inspect", "--format", "{{range .Mounts}}{{.Name}} {{end}}", *s.containers(running=False))
    used = set(mounts.stdout.split())
    assert {f"{s.project}_{v}" for v in ("postgres-data", "redis-data", "minio-data")} <= used
    with s.step("down -v"):
        s.run("down", "-v", "-t", "30")
    assert s.containers(running=False) == []
    left = set(s.podman("volume", "ls", "--format", "{{.Name}}").stdout.split())
    assert not used & left and not [v for v in left if v.startswith(f"{s.project}_")], used & left
