"""Building and showing the report: ``_summary`` assembles the ``Report`` (its schema is ``converter._report``,
part of the torch-free contract the SDK shares) from what the stages left; ``_html`` renders it as one
self-contained HTML page with the charts of ``_svg``.

It reads results; it runs, measures and decides nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._html import REPORT_SCRIPT, render_html
from ._svg import elide

if TYPE_CHECKING:
    from ._summary import build_report

__all__ = ["REPORT_SCRIPT", "build_report", "elide", "render_html"]


def __getattr__(name: str) -> Any:
    # build_report needs the planner's types (numpy); rendering a stored report must not.
    if name == "build_report":
        from ._summary import build_report

        return build_report
    raise AttributeError(f"module 'converter.report' has no attribute {name!r}")
