"""Proving the strings of a ``.pt2`` program that torch would evaluate harmless, with a grammar of our own.

``torch.export.load`` hands two kinds of string from ``models/<name>.json`` to Python's evaluator:

* every symbolic size (``expr_str``) goes to ``sympy.sympify``, which ``eval``\\s it with sympy's names in scope
  (so ``__import__('os').system(...)`` runs);
* every ``guards_code`` entry is pasted into a function's source and ``exec``\\ed when
  ``ExportedProgram.module()`` builds the module (so a line break starts a statement of the attacker's).

Neither is refused outright, because torch writes both for real programs with dynamic dims
(``Mul(Integer(2), Symbol('s0', positive=True, integer=True))``; ``L['x'].size()[3] == L['x'].size()[2]`` when
two dims share a ``Dim``). Instead each string must parse, with the small recursive-descent grammar below, as
plain arithmetic and comparison over the declared symbols (the program's ``range_constraints``) or over input
sizes, and integers:

    expr    := cmp (('and' | 'or') cmp)*            (guards only)
    cmp     := ['not'] arith (CMPOP arith)*
    arith   := term (('+' | '-') term)*
    term    := unary (('*' | '/' | '//' | '%') unary)*
    unary   := '-' unary | power
    power   := atom ['**' INT]                       (a small literal exponent: no 10**10**10)
    atom    := INT | FLOAT | SYMBOL | '(' expr ')' | FUNC '(' args ')' | SIZE
    SIZE    := "L['" NAME "']" ("[" INT "]" | "['" NAME "']")* "." ("size()" "[" INT "]" | "stride()" "[" INT "]"
               | "storage_offset()" | "numel()")      (guards only)
    args    := (expr | STRING | NAME '=' ('True' | 'False')) (',' ...)*   (STRING only as Symbol's name)

``FUNC`` is one of sympy's and torch's arithmetic constructors (``Add``, ``Mul``, ``Pow``, ``Integer``,
``Symbol``, ``FloorDiv``, ``Mod``, ``Max``, ``Eq``, …); nothing else is callable, there is no attribute access,
subscript, string (outside ``Symbol('s0')`` and ``L['x']``), lambda or line break, so what is evaluated can only
build a number or an expression. Nesting, exponents and length are bounded so that evaluating it stays cheap.
Nothing here evaluates anything: the strings are only parsed.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from ..._errors import UnsupportedModelError

__all__ = ["check_guard", "check_sym_expr"]

MAX_EXPR_CHARS = 4096
_MAX_DEPTH = 64
_MAX_EXPONENT = 64  # the product of nested exponents, so that no expression grows a huge integer
_MAX_INT = 2**63

# sympy's ``srepr`` spellings and torch's own sympy functions (torch.utils._sympy.functions).
_FUNCS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "FloorDiv", "CleanDiv", "CeilToInt",
    "FloorToInt", "TruncToInt", "PythonMod", "ModularIndexing", "Where", "Max", "Min", "Abs", "IntTrueDiv",
    "FloatTrueDiv", "ToFloat", "TruncToFloat", "RoundToInt", "RoundDecimal", "Identity", "OpaqueUnaryFn_sqrt",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "And", "Or", "Not", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "max", "min",
    "abs"})
_CONSTANTS = frozenset({"true", "false", "True", "False", "oo", "int_oo", "zoo", "nan", "inf"})
_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+)
  | (?P<float>\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)
  | (?P<int>\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<str>'[A-Za-z_][A-Za-z0-9_]*')
  | (?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>(),=.\[\]])
""", re.VERBOSE)
_CMP = frozenset({"==", "!=", "<", "<=", ">", ">="})
_SIZE_METHODS = {"size": True, "stride": True, "storage_offset": False, "numel": False}


class _Refused(Exception):
    pass


class _Parser:
    """One string's tokens and the position in them; each ``_rule`` returns the product of exponents below it."""

    def __init__(self, text: str, symbols: Collection[str], *, guard: bool) -> None:
        if len(text) > MAX_EXPR_CHARS:
            raise _Refused(f"longer than {MAX_EXPR_CHARS} characters")
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise _Refused(f"unexpected character {text[pos]!r} at {pos}")
            pos = m.end()
            if m.lastgroup != "ws":
                self.tokens.append((m.lastgroup or "", m.group()))
        self.pos = 0
        self.depth = 0
        self.symbols = symbols
        self.guard = guard

    # -- tokens -----------------------------------------------------------------------------------------------

    def peek(self, offset: int = 0) -> tuple[str, str]:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self, *values: str, kind: str | None = None) -> str:
        k, v = self.peek()
        if (kind is not None and k != kind) or (values and v not in values):
            raise _Refused(f"unexpected {v or 'end'!r}")
        self.pos += 1
        return v

    def at(self, value: str) -> bool:
        return (self.peek()[1] == value and self.peek()[0] == "op") or (
            self.peek()[0] == "name" and self.peek()[1] == value)

    # -- rules ------------------------------------------------------------------------------------------------

    def parse(self) -> None:
        weight = self.expr()
        if self.peek()[0] != "end":
            raise _Refused(f"unexpected {self.peek()[1]!r}")
        if weight > _MAX_EXPONENT:
            raise _Refused("exponents too large")

    def expr(self) -> int:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Refused("nested too deeply")
        weight = self.cmp()
        while self.guard and self.peek() in (("name", "and"), ("name", "or")):
            self.pos += 1
            weight = max(weight, self.cmp())
        self.depth -= 1
        return weight

    def cmp(self) -> int:
        if self.guard and self.peek() == ("name", "not"):
            self.pos += 1
        weight = self.arith()
        while self.peek()[0] == "op" and self.peek()[1] in _CMP:
            self.pos += 1
            weight = max(weight, self.arith())
        return weight

    def arith(self) -> int:
        weight = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            self.pos += 1
            weight = max(weight, self.term())
        return weight

    def term(self) -> int:
        weight = self.unary()
        while self.peek()[0] == "op" and self.peek()[1] in ("*", "/", "//", "%"):
            self.pos += 1
            weight = max(weight, self.unary())
        return weight

    def unary(self) -> int:
        if self.peek() == ("op", "-"):
            self.pos += 1
            return self.unary()
        weight = self.atom()
        if self.peek() == ("op", "**"):
            self.pos += 1
            weight *= self.exponent()
        return weight

    def small_int(self) -> int:
        value = int(self.take(kind="int"))
        if value > _MAX_EXPONENT:
            raise _Refused(f"exponent {value} too large")
        return value

    def atom(self) -> int:
        kind, value = self.peek()
        if kind == "int":
            self.pos += 1
            if int(value) >= _MAX_INT:
                raise _Refused(f"integer {value[:20]} too large")
            return 1
        if kind == "float":
            self.pos += 1
            return 1
        if value == "(" and kind == "op":
            self.pos += 1
            weight = self.expr()
            self.take(")")
            return weight
        if kind != "name":
            raise _Refused(f"unexpected {value or 'end'!r}")
        if value == "L" and self.guard:
            self.size_term()
            return 1
        self.pos += 1
        if self.peek() == ("op", "("):
            return self.call(value)
        if value in _CONSTANTS or value in self.symbols:
            return 1
        raise _Refused(f"{value!r} is neither a declared symbol nor a number")

    def call(self, func: str) -> int:
        if func not in _FUNCS:
            raise _Refused(f"{func!r} is not an arithmetic function")
        self.take("(")
        if func == "Pow":
            # Pow(base, k): the exponent must be a small literal, as with ``**``.
            weight = self.expr()
            self.take(",")
            weight *= self.exponent()
            self.take(")")
            return weight
        weights: list[int] = []
        first = True
        while not self.at(")"):
            if not first:
                self.take(",")
                if self.at(")"):
                    break
            kind, value = self.peek()
            if kind == "str":
                if func != "Symbol" or not first or value[1:-1] not in self.symbols:
                    raise _Refused(f"string {value} is not a declared symbol's name")
                self.pos += 1
            elif kind == "name" and self.peek(1) == ("op", "="):
                self.pos += 2
                self.take("True", "False")
            else:
                weights.append(self.expr())
            first = False
        self.take(")")
        return max(weights, default=1)

    def exponent(self) -> int:
        """``k``, ``-k``, ``Integer(k)``, ``Integer(-k)`` or ``Rational(a, b)`` with small literals."""
        wrapped = self.peek()[1] if self.peek()[1] in ("Integer", "Rational") else None
        if wrapped:
            self.pos += 1
            self.take("(")
        if self.peek() == ("op", "-"):
            self.pos += 1
        value = self.small_int()
        if wrapped == "Rational":
            self.take(",")
            self.small_int()
        if wrapped:
            self.take(")")
        return max(1, value)

    def size_term(self) -> None:
        self.take("L")
        self.take("[")
        self.take(kind="str")
        self.take("]")
        while self.peek() == ("op", "["):
            self.pos += 1
            if self.peek()[0] == "str":
                self.pos += 1
            else:
                self.take(kind="int")
            self.take("]")
        self.take(".")
        method = self.take(kind="name")
        if method not in _SIZE_METHODS:
            raise _Refused(f"method {method!r} is not a size")
        self.take("(")
        self.take(")")
        if _SIZE_METHODS[method]:
            self.take("[")
            self.take(kind="int")
            self.take("]")


def check_sym_expr(text: object, symbols: Collection[str], where: str) -> None:
    """Refuse a symbolic expression (``expr_str``) that is not plain arithmetic over ``symbols`` and numbers.

    Raises:
        UnsupportedModelError: one line naming ``where`` and why.
    """
    _check(text, symbols, where, guard=False)


def check_guard(text: object, where: str) -> None:
    """Refuse a guard (a ``guards_code`` entry) that is not a comparison of input sizes and numbers.

    Raises:
        UnsupportedModelError: one line naming ``where`` and why.
    """
    _check(text, (), where, guard=True)


def _check(text: object, symbols: Collection[str], where: str, *, guard: bool) -> None:
    what = "guard" if guard else "symbolic expression"
    if not isinstance(text, str):
        raise UnsupportedModelError(f"unsafe .pt2 program: {where} has a {what} that is not a string")
    try:
        _Parser(text, symbols, guard=guard).parse()
    except _Refused as e:
        shown = text[:60] + ("…" if len(text) > 60 else "")
        raise UnsupportedModelError(
            f"unsafe .pt2 program: {where} has a {what} that is not plain arithmetic ({e}): {shown!r}; loading "
            "would evaluate it as Python") from None
