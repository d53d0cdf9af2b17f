"""``/`` and ``/web/…``: the web page (``service/web``), a form over the public API. Not part of the API's schema."""

from __future__ import annotations

import base64
import hashlib
import html
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

# The report's own script, to allow it by hash (converter's private module: this page and the report ship together).
from converter import REPORT_SCRIPT
from converter.formats import formats

__all__ = ["WEB_DIR", "router"]

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

# The page shows the report in a sandboxed iframe (srcdoc), which inherits this policy: the report's one inline
# script (sorting its table) is allowed by its hash, and nothing else inline runs.
_REPORT_HASH = base64.b64encode(hashlib.sha256(REPORT_SCRIPT.encode()).digest()).decode()
CSP = ("default-src 'self'; "
       f"script-src 'self' 'sha256-{_REPORT_HASH}'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "frame-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _page() -> str:
    """``index.html`` with its file hint listing the registered formats (``converter.formats``: each one's
    title), so that a format added to the registry shows up here without editing the page."""
    hint = "; ".join(html.escape(f"{info.title}") for info in formats())
    return (WEB_DIR / "index.html").read_text(encoding="utf-8").replace("{{formats}}", hint)


_PAGE = _page()


@router.get("/")
async def index() -> HTMLResponse:
    """The web page."""
    return HTMLResponse(_PAGE, headers=_HEADERS)


@router.get("/web/app.js")
async def script() -> FileResponse:
    """The page's script."""
    return FileResponse(WEB_DIR / "app.js", media_type="text/javascript; charset=utf-8", headers=_HEADERS)


@router.get("/web/app.css")
async def style() -> FileResponse:
    """The page's style sheet."""
    return FileResponse(WEB_DIR / "app.css", media_type="text/css; charset=utf-8", headers=_HEADERS)
