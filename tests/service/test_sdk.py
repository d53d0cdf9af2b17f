"""The SDK against ``httpx.MockTransport``: the I/O-free base (URLs, payloads, parsing, error mapping), retries,
long-polling, progress callbacks, downloads, and the parity of ``Client`` and ``AsyncClient``.

``FakeServer`` plays the HTTP contract (docs/http-api.md) in memory so that these tests need no app; the same
flows run against the real app in ``test_sdk_integration.py``. No test sleeps: the clients' sleep and clock
are replaced by recorders.
"""

from __future__ import annotations

import email.parser
import email.utils
import inspect
import os
import stat
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import converter
import service.sdk as sdk
from service.sdk import (
    APIError,
    AsyncClient,
    AsyncJob,
    BadRequest,
    Client,
    InvalidOptions,
    Job,
    JobCancelled,
    JobFailed,
    NotFound,
    NotReady,
    Retries,
    SepconvClientError,
    ServerError,
    ServiceUnavailable,
    Timeout,
    TooLarge,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedModel,
    WaitTimeout,
)
from service.sdk._base import encode_options

BASE = "http://sepconv.test"
STAGES = ("load", "plan", "rewrite", "save", "verify")

REPORT = {
    "sepconv_version": "0.1.0", "format": "onnx",
    "params": {"original": 1000, "converted": 400}, "macs": {"original": 9000, "converted": 4000},
    "file_bytes": {"original": 4200, "converted": 2000},
    "policy": {"kind": "rank", "value": 2, "order": "auto", "lowering": "split"},
    "layers": [{"name": "conv1", "op": "Conv", "kernel": [3, 3], "in_channels": 8, "out_channels": 8,
                "groups": 1, "status": "converted", "reason": "", "order": "dw-pw", "rank": 2, "energy": 0.9,
                "rel_weight_error": 0.1, "params_before": 576, "params_after": 160}],
    "timings": {"load_s": 0.1, "convert_s": 0.2, "save_s": 0.1},
}


# -- a fake server ------------------------------------------------------------------------------------------------


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "detail": None}},
                          headers=headers)


def parse_multipart(request: httpx.Request) -> list[tuple[str, str | None, bytes]]:
    """(field name, filename, content) of each part of a multipart request, in order."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    msg = email.parser.BytesParser().parsebytes(head + request.content)
    return [(p.get_param("name", header="content-disposition"), p.get_filename(), p.get_payload(decode=True))
            for p in msg.get_payload()]


class BrokenStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends some bytes, then the connection drops."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"partial model bytes"
        raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self):
        yield b"partial model bytes"
        raise httpx.ReadError("connection reset by peer")


class FakeServer:
    """The HTTP contract in memory. A job advances one stage per ``GET /jobs/{id}``; ``fail_next`` queues an
    answer (or a function making one), or a transport exception, for the next matching request(s)."""

    def __init__(self, final: str = "succeeded", stages: tuple[str, ...] = STAGES) -> None:
        self.final = final
        self.stages = stages
        self.jobs: dict[str, dict] = {}
        self.requests: list[httpx.Request] = []
        self.uploads: list[list[tuple[str, str | None, bytes]]] = []
        self.faults: list[tuple[str, str, Any]] = []
        self.model = b"converted model " * 5000

    def fail_next(self, method: str, path: str, action: Any, times: int = 1) -> None:
        self.faults.extend([(method, path, action)] * times)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path == path)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for i, (method, path, action) in enumerate(self.faults):
            if method == request.method and path == request.url.path:
                del self.faults[i]
                if isinstance(action, Exception):
                    raise action
                return action() if callable(action) else action
        return self._route(request)

    def _job_public(self, job: dict) -> dict:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _route(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts == ["convert"]:
            upload = parse_multipart(request)
            self.uploads.append(upload)
            options: dict[str, Any] = {}
            for name, filename, content in upload:
                if filename is None:
                    options.setdefault(name, []).append(content.decode())
            model_name = next(f for n, f, _ in upload if n == "model")
            job_id = f"job{len(self.jobs) + 1}"
            now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC).isoformat()
            self.jobs[job_id] = {
                "id": job_id, "status": "queued", "stage": "queued", "progress": 0.0, "filename": model_name,
                "format": None, "options": options, "created_at": now, "started_at": None, "finished_at": None,
                "attempts": 0, "error": None, "_step": 0,
                "links": {"self": f"/jobs/{job_id}", "model": f"/jobs/{job_id}/model",
                          "report": f"/jobs/{job_id}/report"},
            }
            return httpx.Response(202, json=self._job_public(self.jobs[job_id]))
        if request.method == "GET" and parts == ["jobs"]:
            data = [self._job_public(j) for j in reversed(self.jobs.values())]
            offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
            return httpx.Response(200, json={"data": data[offset:offset + limit], "count": len(data)})
        if len(parts) < 2 or parts[0] != "jobs" or parts[1] not in self.jobs:
            return error_response(404, "not_found", "no such job")
        job = self.jobs[parts[1]]
        if request.method == "DELETE" and len(parts) == 2:
            del self.jobs[parts[1]]
            return httpx.Response(204)
        if request.method == "GET" and len(parts) == 2:
            self._advance(job)
            return httpx.Response(200, json=self._job_public(job))
        if job["status"] != "succeeded":
            return error_response(409, "not_ready", f"the job is {job['status']}")
        if parts[2:] == ["report"]:
            return httpx.Response(200, json=REPORT)
        if parts[2:] == ["model"]:
            return httpx.Response(200, content=self.model, headers={
                "content-type": "application/octet-stream",
                "content-disposition": 'attachment; filename="tiny-sepconv.onnx"'})
        return error_response(404, "not_found", "no such route")

    def _advance(self, job: dict) -> None:
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        step = job["_step"] = job["_step"] + 1
        if step <= len(self.stages):
            job.update(status="running", stage=self.stages[step - 1], progress=round(step / (len(self.stages) + 1), 3),
                       attempts=1)
            return
        job.update(status=self.final, stage="done", progress=1.0)
        if self.final == "failed":
            job["error"] = {"code": "conversion_failed", "message": "layer conv1: rank 9 exceeds 8"}


class FakeClock:
    """A monotonic clock that only the recorded sleeps advance."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def make_client(server: FakeServer, clock: FakeClock | None = None, **kwargs: Any) -> Client:
    kwargs.setdefault("retries", Retries(total=3, backoff=0.1, jitter=False))
    client = Client(BASE, transport=httpx.MockTransport(server), **kwargs)
    clock = clock or FakeClock()
    client._sleep, client._clock = clock.sleep, clock
    return client


def make_async_client(server: FakeServer, clock: FakeClock | None = None, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("retries", Retries(total=3, backoff=0.1, jitter=False))
    client = AsyncClient(BASE, transport=httpx.MockTransport(server), **kwargs)
    clock = clock or FakeClock()
    client._sleep, client._clock = clock.asleep, clock
    return client


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(os.urandom(300_000))  # several 64 KiB chunks
    return path


# -- public surface -----------------------------------------------------------------------------------------------

EXPECTED = {
    "APIError", "AsyncClient", "AsyncJob", "BadRequest", "Client", "InvalidOptions", "Job", "JobCancelled",
    "JobFailed", "JobFailure", "JobList", "JobStatus", "NotFound", "NotReady", "Retries", "SepconvClientError",
    "ServerError", "ServiceUnavailable", "Timeout", "TooLarge", "TransportError", "Unauthorized",
    "UnexpectedResponse", "UnsupportedModel", "WaitTimeout",
}


def test_public_names_are_pinned():
    assert set(sdk.__all__) == EXPECTED
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


def test_error_hierarchy():
    errors = [getattr(sdk, n) for n in sdk.__all__ if isinstance(getattr(sdk, n), type)
              and issubclass(getattr(sdk, n), Exception)]
    assert len(errors) == 16
    for err in errors:
        assert issubclass(err, SepconvClientError)
        assert issubclass(err, converter.SepconvError)  # the CLI catches one type for every sepconv error
    for err in (BadRequest, Unauthorized, NotFound, NotReady, TooLarge, UnsupportedModel, ServiceUnavailable,
                ServerError):
        assert issubclass(err, APIError)
    assert issubclass(BadRequest, InvalidOptions)
    assert issubclass(InvalidOptions, converter.InvalidOptionsError) and issubclass(InvalidOptions, ValueError)
    assert issubclass(WaitTimeout, TimeoutError)
    assert not issubclass(TransportError, httpx.HTTPError)


def _public_methods(cls: type) -> dict[str, Any]:
    return {n: m for n, m in inspect.getmembers(cls) if not n.startswith("_") and n not in ("model_fields",
            "model_computed_fields", "model_config") and not n.startswith("model_")}


@pytest.mark.parametrize(("sync", "async_"), [(Client, AsyncClient), (Job, AsyncJob)])
def test_sync_and_async_have_the_same_methods(sync: type, async_: type):
    sync_members, async_members = _public_methods(sync), _public_methods(async_)
    assert sync_members.keys() == async_members.keys()
    for name, member in sync_members.items():
        other = async_members[name]
        if isinstance(member, property) or not callable(member):
            assert isinstance(other, property) == isinstance(member, property), name
            continue
        a, b = inspect.signature(member), inspect.signature(other)
        assert [(p.name, p.kind, p.default) for p in a.parameters.values()] == \
               [(p.name, p.kind, p.default) for p in b.parameters.values()], name
    # Everything that talks to the server is a coroutine function on the async side.
    for name in ("convert", "get_job", "wait_job", "list_jobs", "get_report", "download_model", "delete_job",
                 "close"):
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
        assert not inspect.iscoroutinefunction(getattr(Client, name)), name
    for name in ("refresh", "wait", "download", "cancel"):
        assert inspect.iscoroutinefunction(getattr(AsyncJob, name)), name


# -- value objects ------------------------------------------------------------------------------------------------


def test_timeout_like_httpx():
    assert Timeout() == Timeout(connect=5, read=60, write=60, pool=10)
    t = Timeout(10, connect=2)
    assert (t.connect, t.read, t.write, t.pool) == (2, 10, 10, 10)
    assert Timeout(None).read is None
    assert Timeout.coerce(3).pool == 3 and Timeout.coerce(t) is t
    assert t.to_httpx(extra_read=30).as_dict() == {"connect": 2, "read": 40, "write": 10, "pool": 10}
    with pytest.raises(ValueError, match="read"):
        Timeout(read=-1)
    with pytest.raises(AttributeError):
        t.read = 1  # type: ignore[misc]


def test_retries_backoff_with_jitter_and_retry_after():
    r = Retries(total=4, backoff=1.0, max_backoff=3.0, jitter=False)
    assert [r.delay(n) for n in range(5)] == [1.0, 2.0, 3.0, 3.0, None]
    assert r.delay(0, retry_after=2.5) == 2.5  # at least what the server asked for
    assert Retries(max_retry_after=10).delay(0, retry_after=11) is None  # too long: give up, let the caller decide
    jittered = Retries(total=10, backoff=1.0, max_backoff=100.0)
    for n in range(5):
        for _ in range(20):
            assert 2**n / 2 <= jittered.delay(n) <= 2**n
    assert Retries.coerce(None).delay(0) is None
    assert Retries.coerce(2).total == 2


# -- the I/O-free base ----------------------------------------------------------------------------------------------


def test_urls_keep_a_path_prefix_and_quote_job_ids():
    client = Client("http://host:8080/sepconv", api_key="k" * 20)
    request = client._build_request(client._get_job_call("a/b c"), ExitStack())
    assert str(request.url) == "http://host:8080/sepconv/jobs/a%2Fb%20c"
    assert request.headers["authorization"] == "Bearer " + "k" * 20
    assert request.headers["user-agent"].startswith("sepconv-sdk/")
    assert "authorization" not in Client(BASE)._build_request(client._list_jobs_call(0, 20), ExitStack()).headers
    assert client.base_url == "http://host:8080/sepconv/"
    assert Client("http://host").base_url == "http://host/"
    assert repr(client) == "Client('http://host:8080/sepconv/')"
    request = client._build_request(client._list_jobs_call(40, 20), ExitStack())
    assert str(request.url) == "http://host:8080/sepconv/jobs?offset=40&limit=20"
    for call in (client._report_call("j"), client._model_call("j"), client._delete_call("j")):
        assert client._build_request(call, ExitStack()).url.path.startswith("/sepconv/jobs/j")
    with pytest.raises(SepconvClientError, match="job id"):
        client._get_job_call("")


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host/", "http://", "not a url"])
def test_a_bad_server_url_is_refused(url: str):
    with pytest.raises(SepconvClientError, match="invalid server URL"):
        Client(url)


def test_long_poll_asks_the_server_to_wait_and_extends_the_read_timeout():
    client = Client(BASE, timeout=Timeout(read=10))
    request = client._build_request(client._get_job_call("j", wait=30), ExitStack())
    assert request.url.params["wait"] == "30"
    assert request.extensions["timeout"]["read"] == 40
    assert client._poll_wait(None, watching=False) == 30
    assert client._poll_wait(None, watching=True) == 1
    assert client._poll_wait(2.5, watching=False) == 2.5
    assert client._poll_wait(-1, watching=False) == 0


def test_options_are_encoded_as_the_contract_says():
    fields = encode_options({
        "rank": 2, "exclude": ["head*", "stem.0"], "input_shape": {"x": (1, 3, 8, 8)}, "layer_rank": ["b.*=4"],
        "verify": False, "force": True, "order": "dw-pw", "energy": None, "latency_runs": 5,
    })
    assert fields == {"rank": "2", "exclude": ["head*", "stem.0"], "input_shape": ["x=1x3x8x8"],
                      "layer_rank": ["b.*=4"], "verify": "false", "force": "true", "order": "dw-pw",
                      "latency_runs": "5"}
    assert encode_options({"input_shape": "x=1x3x224x224", "target_params": 0.3}) == {
        "input_shape": ["x=1x3x224x224"], "target_params": "0.3"}
    assert encode_options({}) == {}
    assert encode_options({"max_accuracy_drop": 0.01, "search_budget_s": 60}) == {
        "max_accuracy_drop": "0.01", "search_budget_s": "60.0"}


@pytest.mark.parametrize(("options", "match"), [
    ({"rnak": 2}, "rnak: unknown option"),
    ({"rank": 0}, "rank"),
    ({"rank": 2, "energy": 0.9}, "choose one rank policy"),
    ({"rank": 2, "max_accuracy_drop": 0.01}, "choose one rank policy"),
    ({"max_accuracy_drop": 2}, "max_accuracy_drop"),
    ({"input_shape": ["x=1xAx3"]}, "input shape"),
])
def test_invalid_options_fail_before_anything_is_sent(model_file: Path, options: dict, match: str):
    server = FakeServer()
    with make_client(server) as client, pytest.raises(InvalidOptions, match=match):
        client.convert(model_file, **options)
    assert server.requests == []


def test_a_missing_file_fails_before_anything_is_sent(tmp_path: Path, model_file: Path):
    server = FakeServer()
    with make_client(server) as client:
        with pytest.raises(InvalidOptions, match="model file not found"):
            client.convert(tmp_path / "nope.onnx")
        with pytest.raises(InvalidOptions, match="inputs file not found"):
            client.convert(model_file, inputs=tmp_path / "nope.npz")
    assert server.requests == []


@pytest.mark.parametrize(("status", "code", "cls"), [
    (400, "invalid_options", BadRequest), (401, "unauthorized", Unauthorized), (404, "not_found", NotFound),
    (409, "not_ready", NotReady), (413, "too_large", TooLarge), (415, "unsupported_model", UnsupportedModel),
    (503, "queue_full", ServiceUnavailable), (500, "internal", ServerError), (418, "teapot", APIError),
])
def test_error_bodies_map_to_typed_errors(status: int, code: str, cls: type[APIError]):
    request = httpx.Request("GET", f"{BASE}/jobs/x")
    response = httpx.Response(status, json={"error": {"code": code, "message": "do this", "detail": {"a": 1}}},
                              headers={"retry-after": "7"}, request=request)
    err = Client._api_error(response)
    assert type(err) is cls
    assert (err.status, err.code, err.message, err.detail, err.retry_after) == (status, code, "do this", {"a": 1}, 7)
    assert str(err) == f"do this (HTTP {status}, {code})"


def test_an_error_page_that_is_not_the_contract_still_says_what_happened():
    request = httpx.Request("POST", f"{BASE}/convert")
    response = httpx.Response(502, text="<html><body>\n<h1>Bad Gateway</h1></body></html>", request=request)
    err = Client._api_error(response)
    assert type(err) is ServerError and err.code == "http_502"
    assert "POST /convert: HTTP 502 Bad Gateway" in err.message and "\n" not in str(err)


def test_retry_after_may_be_an_http_date():
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    response = httpx.Response(503, headers={"retry-after": when}, request=httpx.Request("GET", BASE))
    assert 25 <= Client._api_error(response).retry_after <= 30


def test_an_answer_off_contract_is_an_sdk_error():
    server = FakeServer()
    server.fail_next("GET", "/jobs/x", httpx.Response(200, json={"id": "x", "status": "exploded"}))
    server.fail_next("GET", "/jobs/x", httpx.Response(200, text="not json"))
    with make_client(server) as client:
        with pytest.raises(UnexpectedResponse, match=r"not a valid Job.*status"):
            client.get_job("x")
        with pytest.raises(UnexpectedResponse, match="not a valid Job"):
            client.get_job("x")


def test_jobs_ignore_unknown_keys_from_a_newer_server():
    job = Job.model_validate({"id": "j", "status": "running", "stage": "distill", "shiny": True})
    assert job.stage == "distill" and not job.done
    with pytest.raises(SepconvClientError, match="not bound"):
        job.refresh()


# -- uploads --------------------------------------------------------------------------------------------------------


def test_convert_streams_a_multipart_upload(model_file: Path, tmp_path: Path):
    inputs = tmp_path / "inputs.npz"
    inputs.write_bytes(b"PK fake npz")
    server = FakeServer()
    reads: list[tuple[int, int]] = []
    with make_client(server) as client:
        job = client.convert(model_file, inputs=inputs, wait=False, upload_progress=lambda s, t: reads.append((s, t)),
                             rank=2, exclude=["a", "b"], input_shape={"x": (1, 3, 8, 8)}, verify=False)
    assert isinstance(job, Job) and job.status == "queued" and job.filename == "tiny.onnx"
    (request,) = server.requests
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(request.headers["content-length"]) > 300_000  # sized from the file, not from a buffer
    upload = server.uploads[0]
    fields = [(n, c.decode()) for n, f, c in upload if f is None]
    assert fields == [("rank", "2"), ("exclude", "a"), ("exclude", "b"), ("input_shape", "x=1x3x8x8"),
                      ("verify", "false")]
    files = {n: (f, c) for n, f, c in upload if f is not None}
    assert files["model"] == ("tiny.onnx", model_file.read_bytes())
    assert files["inputs"] == ("inputs.npz", b"PK fake npz")
    # httpx read the file in 64 KiB chunks as it sent them: the progress callback saw each one.
    assert len(reads) == 5 and reads[-1] == (300_000, 300_000)
    assert all(b - a <= 64 * 1024 for (a, _), (b, _) in zip([(0, 0), *reads], reads, strict=False))
    assert job.options == {"rank": ["2"], "exclude": ["a", "b"], "input_shape": ["x=1x3x8x8"], "verify": ["false"]}


# -- retries --------------------------------------------------------------------------------------------------------


def test_503_with_retry_after_is_retried_after_that_long(model_file: Path):
    server = FakeServer()
    busy = error_response(503, "queue_full", "too many queued jobs", {"Retry-After": "2"})
    server.fail_next("POST", "/convert", busy, times=2)
    clock = FakeClock()
    with make_client(server, clock) as client:
        job = client.convert(model_file, wait=False, rank=2)
    assert job.status == "queued"
    assert clock.sleeps == [2.0, 2.0]
    # The server refused before doing anything, so the upload was resent in full, the file reopened each time.
    assert server.count("POST", "/convert") == 3
    assert [c for n, _, c in server.uploads[0] if n == "model"] == [model_file.read_bytes()]


def test_429_backs_off_exponentially_then_gives_up():
    server = FakeServer()
    server.fail_next("GET", "/jobs", httpx.Response(429, text="slow down"), times=4)
    clock = FakeClock()
    with make_client(server, clock) as client, pytest.raises(APIError) as info:
        client.list_jobs()
    assert info.value.status == 429 and info.value.code == "http_429"
    assert clock.sleeps == [0.1, 0.2, 0.4]
    assert server.count("GET", "/jobs") == 4


def test_a_retry_after_longer_than_allowed_is_raised_at_once():
    server = FakeServer()
    server.fail_next("GET", "/jobs", error_response(503, "queue_full", "full", {"Retry-After": "3600"}))
    clock = FakeClock()
    with make_client(server, clock) as client, pytest.raises(ServiceUnavailable) as info:
        client.list_jobs()
    assert info.value.retry_after == 3600 and clock.sleeps == []


@pytest.mark.parametrize("exc", [
    httpx.ReadError("connection reset"), httpx.RemoteProtocolError("Server disconnected without sending a response"),
    httpx.ReadTimeout("timed out"), httpx.ConnectError("connection refused"),
])
def test_a_dropped_get_is_retried(model_file: Path, exc: Exception):
    server = FakeServer()
    clock = FakeClock()
    with make_client(server, clock) as client:
        job = client.convert(model_file, wait=False)
        server.fail_next("GET", f"/jobs/{job.id}", exc)
        assert client.get_job(job.id).status == "running"
    assert server.count("GET", f"/jobs/{job.id}") == 2 and clock.sleeps == [0.1]


@pytest.mark.parametrize("exc", [httpx.ReadError("connection reset"), httpx.ReadTimeout("timed out"),
                                 httpx.RemoteProtocolError("Server disconnected"), httpx.WriteError("broken pipe")])
def test_a_post_that_may_have_reached_the_server_is_not_resent(model_file: Path, exc: Exception):
    server = FakeServer()
    server.fail_next("POST", "/convert", exc)
    clock = FakeClock()
    with make_client(server, clock) as client, pytest.raises(TransportError) as info:
        client.convert(model_file, wait=False)
    assert server.count("POST", "/convert") == 1 and clock.sleeps == []
    assert isinstance(info.value.__cause__, httpx.HTTPError)  # kept for debugging, never raised itself
    assert "POST /convert" in str(info.value)


@pytest.mark.parametrize("exc", [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("timed out"),
                                 httpx.PoolTimeout("no free connection")])
def test_a_post_that_never_left_is_resent(model_file: Path, exc: Exception):
    server = FakeServer()
    server.fail_next("POST", "/convert", exc)
    with make_client(server) as client:
        assert client.convert(model_file, wait=False).status == "queued"
    assert server.count("POST", "/convert") == 2


def test_a_502_is_retried_for_a_get_but_not_for_a_post(model_file: Path):
    server = FakeServer()
    server.fail_next("GET", "/jobs", httpx.Response(502, text="bad gateway"))
    server.fail_next("POST", "/convert", httpx.Response(502, text="bad gateway"))
    with make_client(server) as client:
        assert client.list_jobs().count == 0
        with pytest.raises(ServerError, match="502"):
            client.convert(model_file, wait=False)
    assert server.count("GET", "/jobs") == 2 and server.count("POST", "/convert") == 1


def test_connection_failures_end_in_a_transport_error_not_an_httpx_one():
    server = FakeServer()
    server.fail_next("GET", "/jobs/j", httpx.ConnectError("[Errno 111] Connection refused"), times=4)
    clock = FakeClock()
    with make_client(server, clock) as client, pytest.raises(TransportError, match="could not connect") as info:
        client.get_job("j")
    assert not isinstance(info.value, httpx.HTTPError)
    assert clock.sleeps == [0.1, 0.2, 0.4]


def test_no_retries_when_disabled():
    server = FakeServer()
    server.fail_next("GET", "/jobs/j", httpx.ReadError("reset"))
    with make_client(server, retries=None) as client, pytest.raises(TransportError, match="dropped"):
        client.get_job("j")
    assert server.count("GET", "/jobs/j") == 1


def test_a_retried_delete_that_finds_the_job_gone_succeeded(model_file: Path):
    server = FakeServer()
    with make_client(server) as client:
        job = client.convert(model_file, wait=False)
        # The first DELETE reaches the server, which deletes the job, but the answer is lost.
        server.fail_next("DELETE", f"/jobs/{job.id}", httpx.ReadError("reset"))
        server.jobs.pop(job.id)
        job.cancel()
        assert server.count("DELETE", f"/jobs/{job.id}") == 2
        with pytest.raises(NotFound):  # without an ambiguous first attempt, 404 is an error
            client.delete_job(job.id)


# -- waiting and progress -------------------------------------------------------------------------------------------


def test_convert_waits_and_reports_each_change(model_file: Path):
    server = FakeServer()
    seen: list[tuple[str, str, float]] = []
    with make_client(server) as client:
        job = client.convert(model_file, rank=2, progress=lambda j: seen.append((j.status, j.stage, j.progress)))
        assert job.succeeded and job.done and job.stage == "done"
    assert [s[1] for s in seen] == ["queued", *STAGES, "done"]
    assert seen[-1] == ("succeeded", "done", 1.0)
    polls = [r for r in server.requests if r.method == "GET"]
    assert {r.url.params["wait"] for r in polls} == {"1"}  # a watcher gets short polls


def test_progress_is_only_called_on_a_change(model_file: Path):
    server = FakeServer()
    seen: list[str] = []
    with make_client(server) as client:
        job = client.convert(model_file, wait=False)
        stuck = {**server._job_public(server.jobs[job.id]), "status": "running", "stage": "load",
                 "progress": 0.167, "attempts": 1}  # what the server's own first step will say
        server.fail_next("GET", f"/jobs/{job.id}", httpx.Response(200, json=stuck), times=3)
        job.wait(progress=lambda j: seen.append(j.stage))
    assert seen == ["load", "plan", "rewrite", "save", "verify", "done"]


def test_without_a_watcher_polls_are_long(model_file: Path):
    server = FakeServer()
    with make_client(server) as client:
        client.convert(model_file)
    assert {r.url.params["wait"] for r in server.requests if r.method == "GET"} == {"30"}


def test_polls_are_spaced_when_the_server_answers_at_once(model_file: Path):
    server = FakeServer()
    clock = FakeClock()
    with make_client(server, clock) as client:
        client.convert(model_file)
    assert clock.sleeps == [0.5] * len(STAGES)


def test_a_failed_job_raises_with_the_servers_error(model_file: Path):
    server = FakeServer(final="failed")
    with make_client(server) as client:
        job = client.convert(model_file, wait=False)
        with pytest.raises(JobFailed) as info:
            job.wait()
    err = info.value
    assert (err.code, err.message) == ("conversion_failed", "layer conv1: rank 9 exceeds 8")
    assert str(err) == f"job {job.id} failed: layer conv1: rank 9 exceeds 8 (conversion_failed)"
    assert job.status == "failed" and err.job.status == "failed"  # the job object was updated too


def test_a_cancelled_job_raises(model_file: Path):
    server = FakeServer(final="cancelled", stages=())
    with make_client(server) as client, pytest.raises(JobCancelled, match="was cancelled"):
        client.convert(model_file)


def test_waiting_has_a_deadline(model_file: Path):
    server = FakeServer(stages=("load",) * 100)
    clock = FakeClock()
    with make_client(server, clock) as client:
        job = client.convert(model_file, wait=False)
        with pytest.raises(WaitTimeout, match=r"did not finish within 2 s \(still running, stage load") as info:
            job.wait(timeout=2)
    assert info.value.job.status == "running" and job.status == "running"
    assert clock.now - 1000.0 == pytest.approx(2.0)
    waits = [float(r.url.params["wait"]) for r in server.requests if r.method == "GET"]
    assert waits == [2.0, 1.5, 1.0, 0.5]  # never asks the server to wait past the deadline


def test_convert_with_a_number_waits_that_long(model_file: Path):
    server = FakeServer(stages=("load",) * 100)
    with make_client(server) as client, pytest.raises(WaitTimeout):
        client.convert(model_file, wait=1.0)
    with make_client(server) as client, pytest.raises(SepconvClientError, match="wait is"):
        client.convert(model_file, wait=-1)


def test_refresh_get_and_list(model_file: Path):
    server = FakeServer()
    with make_client(server) as client:
        first = client.convert(model_file, wait=False)
        second = client.convert(model_file, wait=False)
        assert first.refresh() is first and first.stage == "load"
        assert client.get_job(second.id).stage == "load"
        page = client.list_jobs(offset=0, limit=1)
        assert page.count == 2 and [j.id for j in page.data] == [second.id]
        assert page.data[0].refresh().stage == "plan"  # listed jobs are bound too
        with pytest.raises(NotFound, match="no such job"):
            client.get_job("nope")


# -- report and download --------------------------------------------------------------------------------------------


def test_report_is_typed_fetched_once_and_cached(model_file: Path):
    server = FakeServer()
    with make_client(server) as client:
        job = client.convert(model_file)
        report = job.report
        assert isinstance(report, converter.Report)
        assert report.layers[0].rank == 2 and job.report is report
    assert server.count("GET", f"/jobs/{job.id}/report") == 1


def test_report_of_an_unfinished_job_is_not_ready(model_file: Path):
    server = FakeServer()
    with make_client(server) as client:
        job = client.convert(model_file, wait=False)
        with pytest.raises(NotReady, match="the job is queued"):
            job.report  # noqa: B018


def test_download_into_a_folder_uses_the_servers_name(model_file: Path, tmp_path: Path):
    server = FakeServer()
    out = tmp_path / "out"
    out.mkdir()
    with make_client(server) as client:
        job = client.convert(model_file)
        path = job.download(out)
        assert path == out / "tiny-sepconv.onnx" and path.read_bytes() == server.model
        assert client.download_model(job.id, out / "x.onnx").read_bytes() == server.model
    assert sorted(p.name for p in out.iterdir()) == ["tiny-sepconv.onnx", "x.onnx"]


def test_a_server_chosen_name_cannot_leave_the_folder(tmp_path: Path):
    server = FakeServer()
    server.fail_next("GET", "/jobs/j/model", httpx.Response(
        200, content=b"x", headers={"content-disposition": 'attachment; filename="../../etc/evil"'}))
    with make_client(server) as client:
        assert client.download_model("j", tmp_path) == tmp_path / "evil"


def test_a_failed_download_leaves_no_partial_file(model_file: Path, tmp_path: Path):
    server = FakeServer()
    target = tmp_path / "slim.onnx"
    target.write_bytes(b"previous version")
    with make_client(server) as client:
        job = client.convert(model_file)
        server.fail_next("GET", f"/jobs/{job.id}/model", lambda: httpx.Response(200, stream=BrokenStream()), times=4)
        with pytest.raises(TransportError, match="connection dropped"):
            job.download(target)
    assert server.count("GET", f"/jobs/{job.id}/model") == 4  # a GET: restarted from scratch each time
    assert target.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim.onnx", "tiny.onnx"]


def test_a_dropped_download_is_restarted(model_file: Path, tmp_path: Path):
    server = FakeServer()
    with make_client(server) as client:
        job = client.convert(model_file)
        server.fail_next("GET", f"/jobs/{job.id}/model", httpx.Response(200, stream=BrokenStream()))
        path = job.download(tmp_path / "slim.onnx")
    assert path.read_bytes() == server.model


def test_downloading_an_unfinished_job_writes_nothing(model_file: Path, tmp_path: Path):
    server = FakeServer()
    with make_client(server) as client:
        job = client.convert(model_file, wait=False)
        with pytest.raises(NotReady):
            job.download(tmp_path / "slim.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


# -- the async client -----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_client_does_the_same(model_file: Path, tmp_path: Path):
    server = FakeServer()
    seen: list[str] = []

    async def progress(job: AsyncJob) -> None:
        seen.append(job.stage)

    async with make_async_client(server) as client:
        job = await client.convert(model_file, rank=2, exclude="head*", progress=progress)
        assert isinstance(job, AsyncJob) and job.succeeded
        report = await job.report
        assert isinstance(report, converter.Report) and await job.report is report
        path = await job.download(tmp_path)
        assert path.name == "tiny-sepconv.onnx" and path.read_bytes() == server.model
        page = await client.list_jobs()
        assert page.count == 1 and isinstance(page.data[0], AsyncJob)
        assert (await page.data[0].refresh()).status == "succeeded"
        await job.cancel()
        with pytest.raises(NotFound):
            await client.get_job(job.id)
    assert seen == ["queued", *STAGES, "done"]
    assert [(n, c) for n, f, c in server.uploads[0] if f is None] == [("rank", b"2"), ("exclude", b"head*")]
    assert server.count("GET", f"/jobs/{job.id}/report") == 1


@pytest.mark.asyncio
async def test_async_client_retries_and_maps_errors(model_file: Path, tmp_path: Path):
    server = FakeServer(final="failed")
    server.fail_next("POST", "/convert", error_response(503, "queue_full", "full", {"Retry-After": "1"}))
    server.fail_next("GET", "/jobs/job1", httpx.RemoteProtocolError("Server disconnected"))
    clock = FakeClock()
    async with make_async_client(server, clock) as client:
        with pytest.raises(InvalidOptions, match="unknown option"):
            await client.convert(model_file, rnak=2)
        with pytest.raises(JobFailed, match="rank 9 exceeds 8"):
            await client.convert(model_file)
        server.fail_next("POST", "/convert", httpx.ReadError("reset"))
        with pytest.raises(TransportError):
            await client.convert(model_file)
        with pytest.raises(NotReady):
            await client.download_model("job1", tmp_path / "x.onnx")
    assert clock.sleeps[:2] == [1.0, 0.1]
    assert server.count("POST", "/convert") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


@pytest.mark.asyncio
async def test_async_download_is_atomic(model_file: Path, tmp_path: Path):
    server = FakeServer()
    async with make_async_client(server, retries=0) as client:
        job = await client.convert(model_file)
        server.fail_next("GET", f"/jobs/{job.id}/model", httpx.Response(200, stream=BrokenStream()))
        with pytest.raises(TransportError):
            await job.download(tmp_path / "slim.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


@pytest.mark.asyncio
async def test_async_wait_deadline(model_file: Path):
    server = FakeServer(stages=("load",) * 100)
    clock = FakeClock()
    async with make_async_client(server, clock) as client:
        with pytest.raises(WaitTimeout):
            await client.convert(model_file, wait=1.5)
    assert clock.now - 1000.0 == pytest.approx(1.5)


def test_the_real_clock_and_sleep_are_the_defaults():
    client = Client(BASE)
    assert client._sleep is time.sleep and client._clock is time.monotonic


def test_downloads_get_ordinary_file_permissions(model_file: Path, tmp_path: Path):
    """The atomic temp file is private (0600); the downloaded model gets what the umask gives a new file."""
    server = FakeServer()
    old = os.umask(0o022)
    try:
        with make_client(server) as client:
            path = client.convert(model_file).download(tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
