"""The web page's files are served at ``/`` and ``/web/…`` with a policy that lets the report's script run in the
page's frame and nothing else inline; the page is not part of the API's schema. (Its behaviour in a real browser:
``test_web_browser.py``.)"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from converter.report._html import REPORT_SCRIPT
from service.api.routes.web import WEB_DIR

pytestmark = pytest.mark.asyncio


async def test_page_and_assets_are_served(api):
    page = await api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/web/app.js"' in page.text and 'href="/web/app.css"' in page.text
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = await api.get(f"/web/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.content == (WEB_DIR / name).read_bytes()
    missing = await api.get("/web/index.html")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_policy_allows_the_reports_script_by_hash_only(api):
    csp = (await api.get("/")).headers["content-security-policy"]
    digest = base64.b64encode(hashlib.sha256(REPORT_SCRIPT.encode()).digest()).decode()
    script_src = re.search(r"script-src ([^;]+)", csp).group(1).split()
    assert script_src == ["'self'", f"'sha256-{digest}'"]
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp


async def test_page_is_not_in_the_api_schema(api):
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/web") for p in paths)


async def test_page_needs_no_key_but_the_api_does(api):
    assert (await api.get("/")).status_code == 200
    assert (await api.get("/jobs")).status_code == 401


async def test_page_offers_max_accuracy_drop_and_a_default_that_sends_no_rank_option(api):
    page = (await api.get("/")).text
    assert '<option value="max_accuracy_drop">' in page and '<option value="" selected>' in page
    script = (await api.get("/web/app.js")).text
    # "default" sends no rank option (the server's default decides), max_accuracy_drop gets a typical value
    assert 'max_accuracy_drop: "0.01"' in script and 'if (value && $("policy").value)' in script
