"""``grade_response``: a response graded with its problem's own checker (Countdown's equation checker, else the
math grader)."""

from __future__ import annotations

from core.problem import Problem
from rewards import countdown as countdown_grader
from rewards.math_grader import grade as math_grade


def grade_response(problem: Problem, text: str) -> tuple[str | None, bool]:
    """(extracted answer, correct?) with the problem's own checker."""
    if "numbers" in problem.meta:
        return countdown_grader.grade(problem.meta["numbers"], problem.meta["target"], text)
    return math_grade(problem.answer, text)
