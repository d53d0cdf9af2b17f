"""``one_line``: how lower-level exceptions are quoted in sepconv's one-line messages."""

from __future__ import annotations

from converter._errors import one_line


def test_first_line_drops_backtraces_and_whole_joins_lines():
    e = RuntimeError("\n  shape mismatch:   [1, 3]\nException raised from conv at conv.cpp:42\nframe #0 ...")
    assert one_line(e) == "shape mismatch: [1, 3]"
    assert one_line(e, whole=True) == "shape mismatch: [1, 3] Exception raised from conv at conv.cpp:42 frame #0 ..."


def test_cut_to_the_limit_and_never_empty():
    assert one_line(ValueError("x" * 500), 10) == "x" * 9 + "…"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(OSError("\n\n")) == "OSError"
