"""The Docker deployment without Docker: docker-compose.yml's structure, and its ``api`` and ``worker`` services run
as local processes with the commands and the ``x-sepconv-env`` environment the compose file gives them.

Only the addresses are swapped: PostgreSQL for ``SEPCONV_TEST_DATABASE_URL`` (a fresh schema), Redis for
``SEPCONV_TEST_REDIS_URL`` (with a queue of the test's own), MinIO for moto's S3 server on loopback, and the API's
``--host 0.0.0.0`` for loopback on a free port. The values compose takes from ``.env`` (keys, passwords, the
bucket and queue names) are given here the way a user's ``.env`` would give them. Models are submitted through
the SDK, concurrently, to two workers, like ``docker compose up --scale worker=2``; the container's health checks
(``deploy/healthcheck.py``) are run against the same processes.

This does not build the image or start containers (no Docker engine on the test machines); the Dockerfile is
checked only for the pieces the compose file relies on.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import yaml

from service.core.config import Settings, load_settings
from service.core.db import get_engine
from service.jobs import crud
from service.jobs.celery_app import node_name
from service.sdk import Client
from tests.service.helpers import KEY_ALICE, free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"

#: What a user's .env gives compose (deploy/.env.example lists these variables).
DOTENV = {"SEPCONV_API_KEYS": KEY_ALICE, "POSTGRES_PASSWORD": "unused-here", "MINIO_ROOT_USER": "testing",
          "MINIO_ROOT_PASSWORD": "testing-secret"}
SEPCONV_SERVICES = ("api", "worker", "worker-gpu")
#: Conversion options that keep one job of the tiny test model to about a second (after the imports); planned on
#: counts, so that its layers convert even where they measure slower decomposed.
OPTIONS: dict[str, Any] = {"rank": 2, "latency_runs": 1, "measure": False, "input_shape": {"x": (1, 3, 32, 32)}}

_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\})")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?error}``,
    ``${X?error}`` and ``$$``.

    Raises:
        LookupError: a required variable is unset (or empty, for ``:?``); the message is compose's.
    """

    def substitute(m: re.Match[str]) -> str:
        escaped, name, op, arg = m.groups()
        if escaped:
            return "$"
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op in (":?", "?"):
            raise LookupError(arg or f"{name} is required")
        return arg if op in (":-", "-") else ""

    return _VARIABLE.sub(substitute, text)


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml with the variables of ``env`` substituted (YAML merge keys resolved)."""
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


# -- the file ----------------------------------------------------------------------------------------------------


def test_compose_file_structure():
    doc = load_compose(DOTENV)
    services = doc["services"]
    assert set(services) == {"api", "worker", "worker-gpu", "postgres", "redis", "minio"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert "container_name" not in service, name
        assert service.get("restart") == "unless-stopped", name
    for name in SEPCONV_SERVICES:
        assert services[name]["image"] == "sepconv:latest" and services[name]["build"] == ".", name
        deps = services[name]["depends_on"]
        assert {"postgres", "redis", "minio"} <= set(deps), name
        assert all(d["condition"] == "service_healthy" for d in deps.values()), name

    api, worker, gpu = services["api"], services["worker"], services["worker-gpu"]
    assert api["command"] == ["serve", "--host", "0.0.0.0"]
    assert api["ports"] == ["8000:8000"]
    assert api["healthcheck"]["test"] == ["CMD", "sepconv-healthcheck", "api"]
    # Scalable: nothing a second replica would clash on.
    assert worker["command"] == ["worker"] and "ports" not in worker
    assert worker["scale"] == 1 and load_compose({**DOTENV, "SEPCONV_WORKERS": "3"})["services"]["worker"]["scale"] == 3
    assert worker["healthcheck"]["test"] == ["CMD", "sepconv-healthcheck", "worker"]
    assert "api" in worker["depends_on"]  # the API migrates and creates the bucket before N workers start
    assert "profiles" not in worker and "profiles" not in api

    env = doc["x-sepconv-env"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["command"] == ["worker", "--queues", env["SEPCONV_CELERY_GPU_QUEUE"]]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]

    # One environment for all: the API adds only its keys, the workers get none.
    assert api["environment"] == {**env, "SEPCONV_API_KEYS": KEY_ALICE}
    assert worker["environment"] == env and gpu["environment"] == env
    assert env["SEPCONV_DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["SEPCONV_DATABASE_URL"]
    assert env["SEPCONV_BROKER_URL"] == "redis://redis:6379/0"
    assert env["SEPCONV_STORAGE_URL"].startswith("s3://") and env["SEPCONV_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]

    for name, volume in (("postgres", "postgres-data"), ("redis", "redis-data"), ("minio", "minio-data")):
        assert any(v.startswith(f"{volume}:") for v in services[name]["volumes"]), name
    assert set(doc["volumes"]) == {"postgres-data", "redis-data", "minio-data"}


def test_compose_requires_the_secrets():
    # API keys are required: the API listens on every address. Compose refuses to start without them.
    for missing in DOTENV:
        with pytest.raises(LookupError, match=missing):
            load_compose({k: v for k, v in DOTENV.items() if k != missing})


def test_compose_settings_are_valid_and_default(monkeypatch: pytest.MonkeyPatch):
    env = load_compose(DOTENV)["services"]["api"]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings(host="0.0.0.0")
    assert settings.executor == "celery" and settings.host == "0.0.0.0"  # keys given: not moved to loopback
    assert settings.warnings == []  # PostgreSQL and S3: nothing only works on one machine
    # The tunables compose passes through default to the service's own defaults.
    for name, value in env.items():
        field = name.removeprefix("SEPCONV_").lower()
        if name.startswith("SEPCONV_") and field in ("max_upload_bytes", "max_queued", "job_timeout_s",
                                                     "job_memory_mb", "log_level", "celery_queue",
                                                     "celery_gpu_queue"):
            assert str(Settings.model_fields[field].default) in (str(value), f"{value}.0"), name


def test_dockerfile_serves_what_compose_runs():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tini", "--", "sepconv"]' in text  # compose's commands are sepconv subcommands
    # The API's address on the command line, not in SEPCONV_HOST (which the workers would read too); no VOLUME
    # (an unused anonymous volume per compose container).
    assert 'CMD ["serve", "--host", "0.0.0.0"]' in text and not re.search(r"^\s*SEPCONV_HOST=", text, re.M)
    assert not re.search(r"^VOLUME", text, re.M)
    assert "deploy/healthcheck.py /usr/local/bin/sepconv-healthcheck" in text
    assert re.search(r"^HEALTHCHECK .*sepconv-healthcheck", text, re.M)
    assert re.search(r"^USER sepconv$", text, re.M) and "EXPOSE 8000" in text
    assert "--index-url \"${TORCH_INDEX_URL}\" \"torch==${TORCH_VERSION}\"" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "!deploy/healthcheck.py" in (ROOT / ".dockerignore").read_text()


def test_docker_compose_config_validates():
    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"],
                                                        capture_output=True).returncode != 0:
        pytest.skip("the `docker compose` plugin is not installed")
    env = {**os.environ, **DOTENV}
    r = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "--profile", "gpu", "config", "-q"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# -- the services, as local processes ------------------------------------------------------------------------------


class Process:
    """One compose service's command as a local process (``sepconv`` is ``python -m service.cli``), in its own
    process group, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", *command], env=env, cwd=ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}:\n{self.output()}"

    def children(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its group (a pool process, a job)
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


def local_env(compose_env: dict[str, Any], **overrides: str) -> dict[str, str]:
    """This machine's environment without sepconv or AWS settings, plus the compose environment and the
    overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEPCONV_", "AWS_"))}
    env.update({k: str(v) for k, v in compose_env.items()})
    env.update(overrides)
    return env


def loopback(command: list[str], port: int) -> list[str]:
    """A ``serve`` command with its ``--host`` swapped for loopback, on ``port``."""
    command = list(command)
    command[command.index("--host") + 1] = "127.0.0.1"
    return [*command, "--port", str(port)]


def healthcheck(role: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``deploy/healthcheck.py ROLE`` (the container's ``sepconv-healthcheck``), as the container runs it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEPCONV_")}
    return subprocess.run([sys.executable, str(HEALTHCHECK), role], env={**base, **env}, capture_output=True,
                          text=True, timeout=30)


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str, redis_url: str, moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """The compose services ``api`` and ``worker`` (scaled to 2) as local processes; everything they created is
    removed afterwards (processes, Redis keys, bucket; the PostgreSQL schema by ``pg_url``)."""
    import boto3
    import redis

    tag = uuid.uuid4().hex[:10]
    dotenv = {**DOTENV, "SEPCONV_CELERY_QUEUE": f"sepconv-compose-{tag}",
              "SEPCONV_CELERY_GPU_QUEUE": f"sepconv-compose-{tag}-gpu", "SEPCONV_S3_BUCKET": f"sepconv-compose-{tag}"}
    doc = load_compose(dotenv)
    services = doc["services"]
    addresses = {"SEPCONV_DATABASE_URL": pg_url, "SEPCONV_BROKER_URL": redis_url,
                 "SEPCONV_S3_ENDPOINT_URL": moto_endpoint, "SEPCONV_DATA_DIR": str(tmp_path / "data")}
    tmp = tmp_path / "tmp"  # the workers' job folders (the container's /tmp), checked empty at the end
    tmp.mkdir()
    r = redis.Redis.from_url(redis_url)
    keys_before = set(r.keys("*"))
    port = free_port()
    api = Process("api", loopback(services["api"]["command"], port),
                  local_env(services["api"]["environment"], **addresses), tmp_path)
    workers: list[Process] = []
    started = [api]
    try:
        _wait_healthy(api, f"http://127.0.0.1:{port}")
        # depends_on: the workers start once the API is healthy.
        for i in (1, 2):
            workers.append(Process(f"worker-{i}", services["worker"]["command"],
                                   local_env(services["worker"]["environment"], **addresses, TMPDIR=str(tmp)),
                                   tmp_path))
            started.append(workers[-1])
        _wait_for_pings(workers, redis_url)
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "api": api, "workers": workers, "tmp": tmp,
               "database_url": pg_url, "redis_url": redis_url}
    finally:
        for p in reversed(started):
            p.stop()
        # New keys of our queue, of Celery's control messages (pidbox) and kombu's bookkeeping of them; entries
        # of our queue and workers in kombu's sets that existed before.
        ours = [dotenv["SEPCONV_CELERY_QUEUE"].encode(), *(f"-{w.pid}.".encode() for w in workers)]
        for key in set(r.keys("*")) - keys_before:
            if key.startswith(b"_kombu.") or b"pidbox" in key or any(s in key for s in ours):
                r.delete(key)
        for key in r.keys("_kombu.binding.*"):
            for member in r.smembers(key):
                if any(s in member for s in ours):
                    r.srem(key, member)
        r.close()
        s3 = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        bucket = dotenv["SEPCONV_S3_BUCKET"]
        try:
            for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=bucket)
        except s3.exceptions.NoSuchBucket:
            pass


def _wait_healthy(api: Process, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        api.assert_alive()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the API did not become healthy:\n{api.output()}"
        time.sleep(0.2)


def _wait_for_pings(workers: list[Process], broker_url: str, timeout: float = 60) -> None:
    """Until every worker answers a Celery ping (its task consumer is then running)."""
    from celery import Celery

    names = [node_name(w.pid) for w in workers]
    app = Celery("sepconv-compose-test", broker=broker_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            for w in workers:
                w.assert_alive()
            replies = app.control.inspect(destination=names, timeout=1).ping() or {}
            if set(replies) == set(names):
                return
            assert time.monotonic() < deadline, "workers did not answer: " + "\n".join(w.output() for w in workers)
    finally:
        app.close()


def test_compose_services_convert_concurrently(deployment: dict[str, Any], model_files: dict[str, Path],
                                               tmp_path: Path):
    import onnxruntime as ort
    import torch

    url = deployment["url"]
    assert healthcheck("api", SEPCONV_PORT=str(deployment["port"])).returncode == 0
    assert healthcheck("api", SEPCONV_PORT=str(free_port())).returncode == 1
    assert healthcheck("worker", SEPCONV_BROKER_URL=deployment["redis_url"]).returncode == 0
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "checks": {"database": True, "queue": True, "storage": True}}
    assert httpx.get(f"{url}/jobs", timeout=10).status_code == 401  # keys are required

    formats = ["onnx", "torchscript", "onnx", "torchscript"]
    with Client(url, api_key=KEY_ALICE) as client, ThreadPoolExecutor(len(formats)) as pool:
        submitted = list(pool.map(lambda fmt: client.convert(model_files[fmt], wait=False, **OPTIONS), formats))
        jobs = list(pool.map(lambda job: job.wait(timeout=120), submitted))
        out = tmp_path / "out"
        out.mkdir()
        paths = [job.download(out / f"{i}-{job.filename}") for i, job in enumerate(jobs)]
        reports = [job.report for job in jobs]
    logs = "\n".join(p.output() for p in (deployment["api"], *deployment["workers"]))

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), np.float32)
    for fmt, job, path, report in zip(formats, jobs, paths, reports, strict=True):
        assert job.status == "succeeded" and job.format == fmt and job.attempts == 1, (job, logs)
        assert report.format == fmt and report.policy["converted_layers"] > 0
        assert report.params.converted < report.params.original
        assert report.fidelity is not None and math.isfinite(report.fidelity.rel_l2)
        assert report.latency is not None and report.latency.converted_ms > 0
        if fmt == "onnx":
            y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        else:
            y = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
        assert y.shape == (1, 10) and np.isfinite(y).all()

    # Both replicas took jobs: a job records the pool process of the worker that ran it.
    engine = get_engine(load_settings(database_url=deployment["database_url"],
                                      data_dir=tmp_path / "data").database_url)
    pools = {pid: w.name for w in deployment["workers"] for pid in w.children()}
    ran_on = [pools.get(int(crud.get_job(engine, job.id).worker_id.rsplit(":", 1)[1])) for job in jobs]
    assert set(ran_on) == {"worker-1", "worker-2"}, (ran_on, logs)

    for p in deployment["workers"]:
        p.stop()
    assert list(deployment["tmp"].iterdir()) == []  # every job folder was removed
