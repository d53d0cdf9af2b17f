"""The bad-input corpus over HTTP: every kind of bad upload, option, form field, header, query or path gets a
typed, one-line error in the API's one shape, with its own code and a 4xx status — never ``internal``, never a
temporary path — and a client that hangs up mid-upload is logged at info, not as an error.

Kinds that are only known once the conversion runs (NaN inputs, hostile graphs, archives) are in the library's
corpus (``tests/converter/test_bad_inputs.py``), which the conversion process shares.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.service.helpers import FAST, KEY_ALICE, KEY_BOB, auth, serve_app, submit, upload

pytestmark = pytest.mark.asyncio

Call = Callable[[httpx.AsyncClient, dict[str, Any]], Awaitable[httpx.Response]]
A = auth(KEY_ALICE)


def _post(*, data: dict[str, Any] | None = None, files: Any = None, headers: dict[str, str] | None = None,
          params: dict[str, Any] | None = None, model: str = "onnx") -> Call:
    """POST /convert with the given form (FAST options and the vgg model unless given)."""
    async def call(client: httpx.AsyncClient, models: dict[str, Any]) -> httpx.Response:
        body = files if files is not None else upload(models[model], name=models[model].name)
        return await client.post("/convert", data=FAST if data is None else data, files=body,
                                 headers=A if headers is None else headers, params=params)
    return call


def _raw(content: bytes, content_type: str, headers: dict[str, str] | None = None) -> Call:
    async def call(client: httpx.AsyncClient, models: dict[str, Any]) -> httpx.Response:
        return await client.post("/convert", content=content, headers={**A, "content-type": content_type,
                                                                       **(headers or {})})
    return call


def _get(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Call:
    async def call(client: httpx.AsyncClient, models: dict[str, Any]) -> httpx.Response:
        job = await submit(client, models["onnx"], key=KEY_ALICE)
        return await client.request(method, path.format(job=job["id"]), headers=A if headers is None else headers)
    return call


def _form(**fields: Any) -> dict[str, Any]:
    return {**FAST, **fields}


def _multipart(*parts: bytes, boundary: bytes = b"b") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"


_MODEL_HEAD = b'Content-Disposition: form-data; name="model"; filename="m.onnx"\r\n\r\n'

# id: (request, status, code)
CORPUS: dict[str, tuple[Call, int, str]] = {
    # the body
    "json body": (_raw(b'{"model": "x"}', "application/json"), 400, "invalid_options"),
    "multipart without boundary": (_raw(b"--b\r\n", "multipart/form-data"), 400, "invalid_options"),
    "malformed multipart": (_raw(b"--b\r\nno headers here", "multipart/form-data; boundary=b"), 400,
                            "invalid_options"),
    "part without a name": (_raw(_multipart(b"Content-Disposition: form-data\r\n\r\nx"),
                                 "multipart/form-data; boundary=b"), 400, "invalid_options"),
    "non-utf-8 field": (_raw(_multipart(b'Content-Disposition: form-data; name="rank"\r\n\r\n\xff\xfe'),
                             "multipart/form-data; boundary=b"), 400, "invalid_options"),
    "no model part": (_post(files={"inputs": ("i.npz", b"PK\x03\x04", "application/octet-stream")}), 400,
                      "invalid_options"),
    "model as a text field": (_raw(_multipart(b'Content-Disposition: form-data; name="model"\r\n\r\nx'),
                                   "multipart/form-data; boundary=b"), 400, "invalid_options"),
    "two model parts": (_raw(_multipart(_MODEL_HEAD + b"\x08\x07", _MODEL_HEAD + b"\x08\x07"),
                             "multipart/form-data; boundary=b"), 400, "invalid_options"),
    "unexpected file part": (_post(files={"weights": ("w.bin", b"x")}), 400, "invalid_options"),
    "too many file parts": (_raw(_multipart(*[b'Content-Disposition: form-data; name="f%d"; filename="f"\r\n\r\nx'
                                              % i for i in range(12)]), "multipart/form-data; boundary=b"),
                            400, "invalid_options"),
    "field longer than 64 KiB": (_post(data=_form(exclude="x" * 70_000)), 400, "invalid_options"),
    "too many fields": (_raw(_multipart(*[b'Content-Disposition: form-data; name="exclude"\r\n\r\nx'] * 1001),
                             "multipart/form-data; boundary=b"), 400, "invalid_options"),
    # the model and inputs files
    "empty model": (_post(files=upload(data=b"")), 415, "unsupported_model"),
    "text as a model": (_post(files=upload(data=b"hello " * 1000, name="m.txt")), 415, "unsupported_model"),
    "random bytes as a model": (_post(files=upload(data=bytes(range(256)) * 40)), 415, "unsupported_model"),
    "inputs not a .npz": (_post(files={"model": ("m.onnx", b"\x08\x07:\x00"), "inputs": ("i.npz", b"nope")}),
                          400, "invalid_options"),
    "two inputs parts": (_raw(_multipart(
        b'Content-Disposition: form-data; name="inputs"; filename="i.npz"\r\n\r\nPK\x03\x04',
        b'Content-Disposition: form-data; name="inputs"; filename="i.npz"\r\n\r\nPK\x03\x04'),
        "multipart/form-data; boundary=b"), 400, "invalid_options"),
    "declared body over the limit": (_raw(b"", "multipart/form-data; boundary=b",
                                          {"content-length": str(10**13)}), 413, "too_large"),
    # options
    "unknown option": (_post(data=_form(rnak="2")), 400, "invalid_options"),
    "option given twice": (_post(data={**FAST, "order": ["dw-pw", "pw-dw"]}), 400, "invalid_options"),
    "rank not a number": (_post(data=_form(rank="two")), 400, "invalid_options"),
    "rank 0": (_post(data=_form(rank="0")), 400, "invalid_options"),
    "energy NaN": (_post(data={**{k: v for k, v in FAST.items() if k != "rank"}, "energy": "nan"}), 400,
                   "invalid_options"),
    "two rank policies": (_post(data=_form(energy="0.5")), 400, "invalid_options"),
    "bad order": (_post(data=_form(order="sideways")), 400, "invalid_options"),
    "malformed input_shape": (_post(data=_form(input_shape="x=1by3")), 400, "invalid_options"),
    "malformed layer_rank": (_post(data=_form(layer_rank="conv1")), 400, "invalid_options"),
    "trust_model refused": (_post(data=_form(trust_model="true")), 400, "invalid_options"),
    "wait negative": (_post(params={"wait": -1}), 400, "invalid_options"),
    "wait not a number": (_post(params={"wait": "soon"}), 400, "invalid_options"),
    # headers
    "no Authorization": (_post(headers={}), 401, "unauthorized"),
    "Basic scheme": (_post(headers={"Authorization": f"Basic {KEY_ALICE}"}), 401, "unauthorized"),
    "unknown key": (_post(headers=auth("not-a-configured-key-at-all")), 401, "unauthorized"),
    "empty bearer": (_post(headers={"Authorization": "Bearer "}), 401, "unauthorized"),
    # queries and paths
    "unknown job": (_get("/jobs/0123456789abcdef"), 404, "not_found"),
    "another key's job": (_get("/jobs/{job}", headers=auth(KEY_BOB)), 404, "not_found"),
    "model of a queued job": (_get("/jobs/{job}/model"), 409, "not_ready"),
    "report of a queued job": (_get("/jobs/{job}/report"), 409, "not_ready"),
    "delete an unknown job": (_get("/jobs/0123456789abcdef", method="DELETE"), 404, "not_found"),
    "list limit 0": (_get("/jobs?limit=0"), 400, "invalid_options"),
    "list offset negative": (_get("/jobs?offset=-1"), 400, "invalid_options"),
    "job wait too long": (_get("/jobs/{job}?wait=100000"), 400, "invalid_options"),
    "unknown route": (_get("/nowhere"), 404, "not_found"),
    "wrong method": (_get("/jobs/{job}", method="PUT"), 405, "method_not_allowed"),
}


@pytest.mark.parametrize("name", list(CORPUS))
async def test_bad_request_gets_a_typed_one_line_error(api, model_files, name, caplog):
    call, status, code = CORPUS[name]
    with caplog.at_level(logging.INFO):
        r = await call(api, model_files)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message and "\n" not in message and "/tmp" not in message and "sepconv-job-" not in message, message
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text


async def test_corpus_covers_forty_kinds():
    assert len(CORPUS) >= 40


async def test_torchscript_refused_at_upload_where_the_kernel_cannot_confine(api, model_files, monkeypatch):
    from service.jobs import service as jobs_service

    monkeypatch.setattr(jobs_service, "_kernel_confines", lambda: False)
    r = await api.post("/convert", headers=A, data=FAST, files=upload(model_files["torchscript"], name="vgg.pt"))
    assert r.status_code == 415 and "SEPCONV_ALLOW_UNCONFINED_CODE" in r.json()["error"]["message"], r.text
    r = await api.post("/convert", headers=A, data=FAST, files=upload(model_files["onnx"]))
    assert r.status_code == 202, r.text


async def test_client_hanging_up_mid_upload_is_logged_at_info(make_settings, model_files, caplog):
    head = model_files["onnx"].read_bytes()[:8192]
    body = (b"--b\r\n" + _MODEL_HEAD + head)
    messages = [{"type": "http.request", "body": body[:5000], "more_body": True},
                {"type": "http.request", "body": body[5000:], "more_body": True},
                {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    settings = make_settings(api_keys=[KEY_ALICE])
    async with serve_app(settings, start_executor=False) as client:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/convert", "raw_path": b"/convert", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5000), "server": ("test", 80),
                 "headers": [(b"authorization", f"Bearer {KEY_ALICE}".encode()),
                             (b"content-type", b"multipart/form-data; boundary=b")]}
        with caplog.at_level(logging.INFO):
            await client.app(scope, receive, send)
        files = list((settings.data_dir / "files").rglob("*"))
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text
    assert "client went away during POST /convert" in caplog.text
    assert not [f for f in files if f.is_file()]  # the partial upload was removed
