"""Exact Countdown checker: the ``<answer>`` equation uses each given number exactly once and hits the target."""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ALLOWED = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.USub,
    ast.UAdd,
)


def extract_equation(text: str) -> str | None:
    found = _ANSWER.findall(text)
    if not found:
        return None
    eq = found[-1].strip()
    return eq.split("=")[0].strip() if "=" in eq else eq


def _evaluate(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        v = _evaluate(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if b == 0:
            raise ZeroDivisionError
        return a / b
    raise ValueError("not an arithmetic expression")


def check(equation: str | None, numbers: list[int], target: int) -> bool:
    """True iff ``equation`` uses exactly ``numbers`` (each once) and equals ``target`` exactly."""
    if not equation:
        return False
    try:
        tree = ast.parse(equation.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        return False
    if not all(isinstance(n, _ALLOWED) for n in ast.walk(tree)):
        return False
    used = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    if Counter(used) != Counter(numbers):
        return False
    try:
        return _evaluate(tree) == target
    except (ZeroDivisionError, ValueError):
        return False


def grade(numbers: list[int], target: int, response: str) -> tuple[str | None, bool]:
    eq = extract_equation(response)
    return eq, check(eq, numbers, target)
