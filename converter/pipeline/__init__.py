"""Running a conversion end to end: ``_convert`` holds ``convert``, the ``Conversion`` record the stages share
and the table of steps; ``_measure`` the stages that time candidates (measure), keep the converted model never
slower (guard) and verify the saved files (verify).

It orchestrates: every computation it runs lives in the folders below it.
"""

from __future__ import annotations

from ._convert import ConversionResult, convert

__all__ = ["ConversionResult", "convert"]
