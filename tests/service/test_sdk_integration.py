"""The SDK against the real app, in process through ``httpx.ASGITransport``: real uploads, real worker processes
and real conversions of the tiny test model, the contract's errors as the SDK's types.

``AsyncClient`` talks to the app through ``httpx.ASGITransport`` directly. ``Client`` is blocking, and
``ASGITransport`` is async-only, so ``SyncASGITransport`` runs it on an event loop in a portal thread (the same
loop that runs the app's lifespan).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from click.testing import CliRunner

import converter
from service._submit import submit
from service.core.config import Settings
from service.main import create_app
from service.sdk import (
    AsyncClient,
    AsyncJob,
    BadRequest,
    Client,
    InvalidOptions,
    JobFailed,
    NotFound,
    NotReady,
    Retries,
    ServiceUnavailable,
    TooLarge,
    Unauthorized,
    UnsupportedModel,
    WaitTimeout,
)
from tests.service.helpers import KEY_ALICE, KEY_BOB, truncated_onnx

BASE = "http://sepconv.test"
#: Keeps a real conversion of the tiny VGG to about a second (after the imports).
FAST: dict[str, Any] = {"rank": 2, "latency_runs": 1, "input_shape": {"x": (1, 3, 32, 32)}}


class SyncASGITransport(httpx.BaseTransport):
    """``httpx.ASGITransport`` for a blocking client: each request runs on the portal's event loop."""

    def __init__(self, app: Any, portal: BlockingPortal) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> tuple[int, httpx.Headers, bytes]:
            response = await self._inner.handle_async_request(request)
            body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            return response.status_code, response.headers, body

        status, headers, body = self._portal.call(send)
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))


@asynccontextmanager
async def async_sdk(settings: Settings, *, key: str | None = KEY_ALICE, start_executor: bool = True,
                    **client_kw: Any) -> AsyncIterator[Callable[..., AsyncClient]]:
    """The app with its lifespan running; yields a factory of ``AsyncClient``s for it (``key=`` another key)."""
    app = create_app(settings, start_executor=start_executor)
    clients: list[AsyncClient] = []

    def make(key: str | None = key, **kw: Any) -> AsyncClient:
        client = AsyncClient(BASE, api_key=key, transport=httpx.ASGITransport(app=app), **{**client_kw, **kw})
        clients.append(client)
        return client

    async with app.router.lifespan_context(app):
        try:
            yield make
        finally:
            for client in clients:
                await client.close()


@contextmanager
def sync_transport(settings: Settings, *, start_executor: bool = True) -> Iterator[SyncASGITransport]:
    """The app with its lifespan running in a portal thread, and a blocking transport to it."""
    app = create_app(settings, start_executor=start_executor)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        yield SyncASGITransport(app, portal)


@pytest.mark.asyncio
async def test_async_client_converts_downloads_and_reports(make_settings: Callable[..., Settings],
                                                            model_files: dict[str, Path], tmp_path: Path):
    stages: list[str] = []
    sent: list[int] = []

    async def progress(job: AsyncJob) -> None:
        stages.append(job.stage)

    async with async_sdk(make_settings(api_keys=[KEY_ALICE, KEY_BOB])) as sdk:
        client = sdk()
        job = await client.convert(model_files["onnx"], inputs=model_files["inputs"], progress=progress,
                                   upload_progress=lambda s, t: sent.append(s), exclude=["nothing*"], **FAST)
        assert job.succeeded and job.format == "onnx" and job.filename == "vgg.onnx"
        assert job.options["rank"] == 2 and job.options["exclude"] == ["nothing*"]

        report = await job.report
        assert isinstance(report, converter.Report) and report.format == "onnx"
        assert report.fidelity is not None and report.fidelity.inputs == "user"
        assert report.converted_layers and all(layer.rank == 2 for layer in report.converted_layers)

        out = tmp_path / "out"
        out.mkdir()
        path = await job.download(out)
        assert path == out / "vgg-sepconv.onnx"
        onnx.checker.check_model(onnx.load(str(path)))
        assert [p.name for p in out.iterdir()] == ["vgg-sepconv.onnx"]  # no temporary file left
        html = await job.download_report_html(tmp_path / "report.html")
        assert html == tmp_path / "report.html"
        text = html.read_text()
        assert "<title>vgg.onnx · sepconv report</title>" in text and 'id="plot-params"' in text

        page = await client.list_jobs()
        assert page.count == 1 and page.data[0].id == job.id
        with pytest.raises(NotFound):  # another key does not see it
            await sdk(KEY_BOB).get_job(job.id)

        # A file that looks like ONNX but does not parse is accepted, then the job fails with the reason.
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(truncated_onnx(model_files["onnx"]))
        with pytest.raises(JobFailed) as info:
            await client.convert(broken, **FAST)
        assert info.value.code == "unsupported_model" and info.value.job.status == "failed"

        await job.cancel()
        with pytest.raises(NotFound):
            await client.get_job(job.id)
    assert stages[0] == "queued" and stages[-1] == "done"
    assert sent[-1] == model_files["onnx"].stat().st_size


def test_blocking_client_converts_torchscript(make_settings: Callable[..., Settings],
                                              model_files: dict[str, Path], tmp_path: Path):
    seen: list[str] = []
    with sync_transport(make_settings(api_keys=[KEY_ALICE])) as transport, \
            Client(BASE, api_key=KEY_ALICE, transport=transport) as client:
        job = client.convert(model_files["torchscript"], progress=lambda j: seen.append(j.status), **FAST)
        assert job.succeeded and job.format == "torchscript"
        assert job.report.format == "torchscript" and job.report is job.report
        target = tmp_path / "slim.pt"
        assert job.download(target) == target and target.stat().st_size > 0
        page = client.download_report_html(job.id, tmp_path)
        assert page == tmp_path / f"{job.id}-report.html" and "<svg" in page.read_text()
        assert client.get_job(job.id).refresh().status == "succeeded"
        client.delete_job(job.id)
        assert client.list_jobs().count == 0
    assert seen[0] == "queued" and seen[-1] == "succeeded"


def test_blocking_client_converts_a_pt2_program(make_settings: Callable[..., Settings],
                                               model_files: dict[str, Path], tmp_path: Path):
    """A torch.export program through HTTP and the SDK: the job records the registry's name for it."""
    import torch

    with sync_transport(make_settings(api_keys=[KEY_ALICE])) as transport, \
            Client(BASE, api_key=KEY_ALICE, transport=transport) as client:
        job = client.convert(model_files["pt2"], **FAST)
        assert job.succeeded and job.format == "pt2" and job.report.format == "pt2"
        target = tmp_path / "slim.pt2"
        assert job.download(target) == target
        assert torch.export.load(str(target)).module()(torch.randn(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.asyncio
async def test_the_contracts_errors_are_the_sdks_types(make_settings: Callable[..., Settings],
                                                       model_files: dict[str, Path], tmp_path: Path):
    settings = make_settings(api_keys=[KEY_ALICE, KEY_BOB])
    async with async_sdk(settings, start_executor=False) as sdk:  # no workers: jobs stay queued
        alice = sdk()
        with pytest.raises(Unauthorized, match="unauthorized"):
            await sdk(None).list_jobs()
        with pytest.raises(Unauthorized):
            await sdk("not-a-key-0123456789").list_jobs()
        with pytest.raises(NotFound):
            await alice.get_job("no-such-job")
        with pytest.raises(BadRequest) as info:
            await alice.list_jobs(limit=1000)
        assert info.value.status == 400 and info.value.code == "invalid_options"
        assert isinstance(info.value, InvalidOptions)

        junk = tmp_path / "junk.onnx"
        junk.write_bytes(b"this is not a model at all")
        with pytest.raises(UnsupportedModel) as info:
            await alice.convert(junk)
        assert info.value.status == 415

        job = await alice.convert(model_files["onnx"], wait=False, **FAST)
        assert job.status == "queued"
        with pytest.raises(NotReady, match="queued"):
            await job.report
        with pytest.raises(NotReady):
            await job.download(tmp_path / "slim.onnx")
        assert not (tmp_path / "slim.onnx").exists()
        with pytest.raises(NotReady):
            await job.download_report_html(tmp_path / "report.html")
        assert not (tmp_path / "report.html").exists()
        with pytest.raises(WaitTimeout, match="still queued") as wait:
            await job.wait(timeout=0.3)
        assert wait.value.job.status == "queued"
        with pytest.raises(NotFound):
            await sdk(KEY_BOB).delete_job(job.id)
        await job.cancel()
        with pytest.raises(NotFound):
            await job.refresh()


@pytest.mark.asyncio
async def test_upload_limits(make_settings: Callable[..., Settings], model_files: dict[str, Path]):
    small = make_settings(max_upload_bytes=1000)
    async with async_sdk(small, start_executor=False) as sdk:
        with pytest.raises(TooLarge) as info:
            await sdk().convert(model_files["onnx"], **FAST)
        assert info.value.status == 413
    full = make_settings(max_queued=1)
    async with async_sdk(full, start_executor=False) as sdk:
        client = sdk(retries=Retries(total=1, max_retry_after=0))  # do not sleep through the Retry-After here
        await client.convert(model_files["onnx"], wait=False, **FAST)
        with pytest.raises(ServiceUnavailable) as info:
            await client.convert(model_files["onnx"], wait=False, **FAST)
        assert info.value.code == "queue_full" and info.value.retry_after is not None
        assert (await client.list_jobs()).count == 1  # the refused upload created no job


def test_submit_command_against_the_app(make_settings: Callable[..., Settings], model_files: dict[str, Path],
                                        tmp_path: Path):
    with sync_transport(make_settings(api_keys=[KEY_ALICE])) as transport:
        result = CliRunner(env={"SEPCONV_API_KEY": KEY_ALICE}).invoke(
            submit, [str(model_files["onnx"]), "--server", BASE, "-o", str(tmp_path), "--rank", "2",
                     "--latency-runs", "1", "--input-shape", "x=1x3x32x32", "--report", str(tmp_path / "r.json"),
                     "--html", str(tmp_path / "r.html")],
            obj={"transport": transport})
        assert result.exit_code == 0, result.output
        assert "convolutions converted" in result.stdout and "latency" in result.stdout
        assert (tmp_path / "vgg-sepconv.onnx").is_file()
        assert converter.Report.model_validate_json((tmp_path / "r.json").read_text()).format == "onnx"
        assert "<title>vgg.onnx · sepconv report</title>" in (tmp_path / "r.html").read_text()

        result = CliRunner().invoke(submit, [str(model_files["onnx"]), "--server", BASE],
                                    obj={"transport": transport})
        assert result.exit_code == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("sepconv: error: missing or unknown API key")
        assert line.endswith("(HTTP 401, unauthorized)")
