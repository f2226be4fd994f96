"""A safe arithmetic evaluator: the simulated cloud's answer to a ``<query>`` on the arithmetic ladder.

    answer_query("37*46")               -> "1702"
    answer_query("What is 37 x 46?")     -> "1702"
    answer_query("the capital of France") -> None

The expression is parsed with ``ast`` and only numbers, + - * / // % **, unary signs and
parentheses are evaluated (never ``eval``); huge powers and results are refused.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_ABS = 10**30  # larger intermediate values are refused (no 9**9**9)
MAX_EXPONENT = 64

# candidate expressions: runs of digits, operators, parentheses, dots and spaces that hold a digit
_CANDIDATE = re.compile(r"[\d.()+\-*/%\s]*\d[\d.()+\-*/%\s]*")


class _Refused(ValueError):
    pass


def _eval(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise _Refused("exponent must be an integer of at most 64")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise _Refused("division by zero")
        value = _BINOPS[type(node.op)](left, right)
        value = Fraction(value)
        if abs(value) > MAX_ABS:
            raise _Refused("result too large")
        return value
    raise _Refused(f"not arithmetic: {type(node).__name__}")


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; ``ValueError`` if it is not one (or is unsafe)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from e
    return _eval(tree)


def format_value(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def normalise(text: str) -> str:
    """Common spellings of the operators (×, ·, ÷, ^, '37 x 46') and thousands separators as Python syntax."""
    text = text.replace("×", "*").replace("·", "*").replace("÷", "/").replace("^", "**").replace("−", "-")
    text = re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", " * ", text)
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def answer_query(text: str) -> str | None:
    """The value of the arithmetic in ``text`` (the longest piece that parses), or None when there is none."""
    text = normalise(text)
    for cand in sorted((m.group().strip() for m in _CANDIDATE.finditer(text)), key=len, reverse=True):
        cand = cand.rstrip("=").strip()
        try:
            return format_value(evaluate(cand))
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
    return None
