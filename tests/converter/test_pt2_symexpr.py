"""The grammar that proves a ``.pt2`` program's evaluated strings harmless (converter/formats/_pt2/_symexpr.py):
what torch writes for real dynamic-shape programs parses; Python does not, however it is dressed."""

from __future__ import annotations

import pytest

from converter import UnsupportedModelError
from converter.formats._pt2._symexpr import check_guard, check_sym_expr

SYMBOLS = {"s0", "s77", "u0"}


@pytest.mark.parametrize("text", [
    "Symbol('s0', positive=True, integer=True)",
    "Mul(Integer(2), Symbol('s0', positive=True, integer=True))",
    "Mul(Integer(3), Pow(Symbol('s0', positive=True, integer=True), Integer(2)))",
    "Add(Symbol('s77', integer=True), Integer(-1))",
    "FloorDiv(Symbol('s0', positive=True, integer=True), Integer(2))",
    "Eq(Mod(Symbol('s0', integer=True), Integer(2)), Integer(0))",
    "Max(Integer(1), Symbol('u0', integer=True))",
    "2*s0 + 1", "s0**2", "(s0 - 1)//2 + 1", "s0 >= 2", "Rational(1, 2)*s0", "true",
])
def test_real_expressions_pass(text: str) -> None:
    check_sym_expr(text, SYMBOLS, "models/model.json")


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/x')",
    "Symbol('s0').__class__",
    "exec('1')",
    "open('/etc/passwd')",
    "Symbol('__import__')",  # undeclared
    "s1",  # undeclared symbol
    "Pow(Integer(10), Integer(1000000000))",
    "Pow(Integer(10), Add(Integer(10), Integer(1)))",
    "10**10**10",
    "s0\nimport os",
    "lambda: 1",
    "[s0 for s0 in ()]",
    "Integer(" * 100 + "1" + ")" * 100,
    "Float('1e400000')",
    "s0; 1",
    "s0 if s0 else s0",
    "x" * 5000,
    "Symbol('s0', **{})",
])
def test_python_is_refused(text: str) -> None:
    with pytest.raises(UnsupportedModelError, match="not plain arithmetic"):
        check_sym_expr(text, SYMBOLS, "models/model.json")


@pytest.mark.parametrize("text", [
    "L['x'].size()[3] == L['x'].size()[2]",
    "2 <= L['x'].size()[0] and L['x'].size()[0] <= 64",
    "L['args'][0].size()[1] % 2 == 0",
    "not L['x'].stride()[0] == 1",
    "(L['x'].size()[2] - 1)//2 + 1 >= L['y']['k'].size()[0]",
])
def test_real_guards_pass(text: str) -> None:
    check_guard(text, "models/model.json")


@pytest.mark.parametrize("text", [
    "__import__('pathlib').Path('/tmp/x').touch() is None",
    "L['x'].size()[0] == 1\n  import os",
    "L['x'].__class__ is None",
    "L['x'].size()[0] == 1, 'x')\n  print(1",
    "L['x'].numpy() is None",
    "L[__import__('os').name].size()[0] == 1",
    'L["x"].size()[0] == 1',
])
def test_hostile_guards_are_refused(text: str) -> None:
    with pytest.raises(UnsupportedModelError, match="not plain arithmetic"):
        check_guard(text, "models/model.json")
