"""The bad-input corpus over HTTP: every kind of bad upload, option, form field or header gets a typed, one-line
error with its own code and a 4xx status when it is known at upload — never ``internal``, never a temp path.

Kinds that are only known once the conversion runs (a NaN input, a hostile graph) are in the corpus of the
conversion process (``tests/service/test_bad_inputs_jobs.py``) and the converter's (``tests/converter/``).
"""

from __future__ import annotations

import pytest

from tests.service.helpers import FAST, KEY_ALICE, auth, upload

pytestmark = pytest.mark.asyncio


def _assert_error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    message = error["message"]
    assert message and "\n" not in message and "/tmp" not in message and "sepconv-job-" not in message
    return message


# (id, form fields beyond FAST, expected code, text the message must contain)
OPTIONS = [
    ("trust_model_refused", {"trust_model": "true"}, "invalid_options", "trust_model"),
]


@pytest.mark.parametrize(("fields", "code", "text"), [o[1:] for o in OPTIONS], ids=[o[0] for o in OPTIONS])
async def test_bad_options(api, model_files, fields, code, text):
    r = await api.post("/convert", headers=auth(KEY_ALICE), data={**FAST, **fields},
                       files=upload(model_files["torchscript"], name="vgg.pt"))
    assert text in _assert_error(r, 400, code)


async def test_torchscript_refused_at_upload_where_the_kernel_cannot_confine(api, model_files, monkeypatch):
    from service.jobs import service as jobs_service

    monkeypatch.setattr(jobs_service, "_kernel_confines", lambda: False)
    r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST,
                       files=upload(model_files["torchscript"], name="vgg.pt"))
    assert "SEPCONV_ALLOW_UNCONFINED_CODE" in _assert_error(r, 415, "unsupported_model")
    r = await api.post("/convert", headers=auth(KEY_ALICE), data=FAST, files=upload(model_files["onnx"]))
    assert r.status_code == 202, r.text
