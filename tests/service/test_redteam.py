"""The red-team corpus (tests/utils/redteam.py) through the CLI and through HTTP and the job runner: every
hostile file is refused with a typed one-line error, no canary file appears, and no process outlives its job.
Then the cases that run code when nothing checks them go through the service with the graph check skipped
(the ``unchecked`` test hook): the confinement alone must keep every canary from appearing.

The CLI runs TorchScript/.pt2 models the default way (the ``confined`` marker): in the confined child process.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from service._cli_common import EXIT_USER
from service.cli import cli
from service.jobs.confine import landlock_abi
from service.jobs.runner import JobRunner
from tests.service.helpers import FAST, KEY_ALICE, auth, serve_app
from tests.utils.redteam import CORPUS

needs_landlock = pytest.mark.skipif(landlock_abi() == 0, reason="this kernel offers no Landlock")


def _leftovers() -> list[str]:
    """Processes of a conversion still alive: sandboxes under this test process, or anything the tests' hooks
    mark."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "service.jobs.sandbox" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.cmdline()}")
        except psutil.Error:
            pass
    return out


def _no_leftovers() -> None:
    deadline = time.monotonic() + 5
    while _leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(), _leftovers()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path | None]]:
    """Every case built once for the module, all aimed at one canary: (canary, model, inputs)."""
    root = tmp_path_factory.mktemp("redteam")
    canary = root / "canary"
    built = {}
    for i, (name, case) in enumerate(CORPUS.items()):
        folder = root / f"case{i}"
        folder.mkdir()
        model, inputs = case.build(canary, folder)
        built[name] = (canary, model, inputs)
    return built


def _setup(corpus: dict, name: str) -> tuple[Path, Path, Path | None]:
    canary, model, inputs = corpus[name]
    canary.unlink(missing_ok=True)  # a failed case before this one must not fail this one too
    return canary, model, inputs


def test_corpus_size():
    assert len(CORPUS) >= 20


@pytest.mark.confined
@needs_landlock
@pytest.mark.parametrize("name", list(CORPUS))
def test_cli_refuses(corpus, tmp_path: Path, name: str) -> None:
    canary, model, inputs = _setup(corpus, name)
    args = ["convert", str(model), "-o", str(tmp_path / "out" / f"m{model.suffix}"), "--rank", "2",
            "--latency-runs", "1", "--input-shape", "x=1x3x32x32"]
    if inputs is not None:
        args += ["--inputs", str(inputs)]
    res = CliRunner().invoke(cli, args)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == EXIT_USER, res.output  # a SepconvError, not an internal error
    assert len(lines) == 1 and lines[0].startswith("sepconv: error: "), res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert not canary.exists(), f"{name}: the canary appeared"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    _no_leftovers()


async def _http_case(settings, corpus: dict, name: str) -> tuple[dict, Path]:
    canary, model, inputs = _setup(corpus, name)
    async with serve_app(settings, start_executor=False) as client:
        files = {"model": (model.name, model.read_bytes(), "application/octet-stream")}
        if inputs is not None:
            files["inputs"] = ("inputs.npz", inputs.read_bytes(), "application/octet-stream")
        r = await client.post("/convert", headers=auth(KEY_ALICE), data=FAST, files=files)
        if r.status_code >= 400:  # refused at upload: a typed error in the API's one shape
            assert 400 <= r.status_code < 500 and set(r.json()) == {"error"}, r.text
            return {"status": "refused", "error": r.json()["error"]}, canary
        job_id = r.json()["id"]
        await asyncio.to_thread(JobRunner(settings, "w").run_next)
        r = await client.get(f"/jobs/{job_id}", headers=auth(KEY_ALICE))
        return r.json(), canary


@pytest.mark.asyncio
@needs_landlock
@pytest.mark.parametrize("name", list(CORPUS))
async def test_http_refuses(make_settings, corpus, name: str) -> None:
    job, canary = await _http_case(make_settings(api_keys=[KEY_ALICE]), corpus, name)
    if job["status"] == "refused":
        error = job["error"]
    else:
        assert job["status"] == "failed", job
        error = job["error"]
    assert error["code"] == CORPUS[name].code, job
    message = error["message"]
    # (a message may quote the hostile string itself, paths included; never one of our job folders)
    assert message and "\n" not in message and "sepconv-job-" not in message, message
    assert not canary.exists(), f"{name}: the canary appeared"
    _no_leftovers()


_RUNS_CODE = [n for n, c in CORPUS.items() if c.runs_code]


@pytest.mark.asyncio
@needs_landlock
@pytest.mark.parametrize("name", _RUNS_CODE)
async def test_confinement_alone_keeps_the_canary(make_settings, corpus, name: str) -> None:
    """With the graph check skipped, what the static checks refuse runs — inside the sandbox, where it cannot
    write outside its job folder."""
    job, canary = await _http_case(make_settings(api_keys=[KEY_ALICE], test_hook="unchecked"), corpus, name)
    assert job["status"] in ("failed", "succeeded", "refused"), job
    if job["status"] != "succeeded":
        error = job["error"]
        assert error["code"] and "\n" not in error["message"], job
    assert not canary.exists(), f"{name}: the canary appeared although the conversion was confined"
    _no_leftovers()
