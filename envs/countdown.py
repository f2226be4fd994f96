"""Countdown: reach a target with four numbers, each used once (docs/method.md §2), generated from a seed.

Every generated instance is solvable by construction: the target is the value of
a random expression over the numbers.
"""

from __future__ import annotations

import random

from core.problem import Problem


def _random_expression(rng: random.Random, nums: list[int]) -> tuple[str, float]:
    items = [(str(n), float(n)) for n in nums]
    rng.shuffle(items)
    while len(items) > 1:
        (ea, va), (eb, vb) = items.pop(), items.pop()
        ops = ["+", "-", "*"] + (["/"] if vb != 0 and va % vb == 0 else [])
        op = rng.choice(ops)
        value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else 0.0}[op]
        items.append((f"({ea} {op} {eb})", value))
        rng.shuffle(items)
    return items[0]


def _instance(rng: random.Random) -> tuple[list[int], int, str]:
    """(four numbers, target, a solution): draws until the expression's value is a whole number in 1..999."""
    while True:
        nums = [rng.randint(1, 99) for _ in range(4)]
        expr, value = _random_expression(rng, nums)
        if value == int(value) and 1 <= value <= 999:
            return nums, int(value), expr


def make_problems(n: int, seed: int, split: str = "train") -> list[Problem]:
    rng = random.Random(f"countdown-{split}-{seed}")
    problems = []
    while len(problems) < n:
        nums, target, expr = _instance(rng)
        i = len(problems)
        problems.append(
            Problem(
                uid=f"countdown-{split}-{seed}-{i}",
                question=question(nums, target),
                answer=str(target),
                level=0,
                meta={"numbers": nums, "target": target, "solution": expr},
            )
        )
    return problems


def worked_response(numbers: list[int], target: int, solution: str) -> str:
    """The device's answer format for a Countdown problem: reasoning in <think>, the equation in <answer>."""
    return (
        f"<think> {solution} = {target} uses {', '.join(map(str, numbers))} once each. </think>\n"
        f"<answer> {solution} </answer>"
    )


def similar_problems(k: int, seed: str) -> list[dict]:
    """``k`` new solvable Countdown instances (four numbers, a target, a solution), seeded; the simulated cloud's
    offline augmentation (policies/cloud/simulated.py) writes them as Input/Response pairs.  Generated, not written
    by an LLM."""
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        nums, target, expr = _instance(rng)
        out.append({"question": question(nums, target), "numbers": nums, "target": target, "solution": expr})
    return out


def question(numbers: list[int], target: int) -> str:
    return (
        f"Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once."
    )
