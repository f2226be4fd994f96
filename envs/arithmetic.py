"""Arithmetic ladder: seeded problems from one-digit sums to multi-digit products.

A 135M model answers ``7 + 5`` but not ``37 * 46``: the ladder gives the device a
real boundary of competence (docs/method.md §9).  Levels are ordered by the *measured*
greedy accuracy of SmolLM2-135M-Instruct, not by the naive order; see
``DEFAULT_LEVELS`` and docs/results_cpu.md (the accuracy per level, measured).
"""

from __future__ import annotations

import random
import re

from core.problem import Problem

# (digits of a, op, digits of b), easiest first by SmolLM2-135M greedy accuracy on
# "What is a ? b?" (docs/method.md §9: 1x1 9/16, 1+1 8/16, 2+2 4/16, 2+1 3/16, 2x1 2/16, 2x2 1/16),
# then 3-digit levels the device essentially never gets right.
DEFAULT_LEVELS = ["1x1", "1+1", "2+2", "2+1", "2x1", "2x2", "3x2"]

_LEVEL_RE = re.compile(r"^(\d)([+x])(\d)$")


def parse_level(spec: str) -> tuple[int, str, int]:
    m = _LEVEL_RE.match(spec.strip())
    if not m:
        raise ValueError(f"Arithmetic level '{spec}' is not of the form '<digits><+|x><digits>', e.g. '2x1'.")
    return int(m.group(1)), m.group(2), int(m.group(3))


def _operand(rng: random.Random, digits: int) -> int:
    lo = 10 ** (digits - 1) if digits > 1 else 1
    return rng.randint(lo, 10**digits - 1)


def make_problems(n: int, seed: int, levels: list[str] | None = None, split: str = "train") -> list[Problem]:
    """``n`` problems spread evenly over the levels; train and test draw from disjoint seeds."""
    levels = list(levels or []) or DEFAULT_LEVELS
    specs = [parse_level(s) for s in levels]
    rng = random.Random(f"arith-{split}-{seed}")
    problems = []
    for i in range(n):
        level = i % len(specs)
        da, op, db = specs[level]
        a, b = _operand(rng, da), _operand(rng, db)
        value = a + b if op == "+" else a * b
        sym = "+" if op == "+" else "*"
        problems.append(
            Problem(
                uid=f"arith-{split}-{seed}-{i}",
                question=f"What is {a} {sym} {b}?",
                answer=str(value),
                level=level + 1,
                meta={"a": a, "b": b, "op": op},
            )
        )
    rng.shuffle(problems)
    return problems


def worked_response(a: int, op: str, b: int, value: int | str) -> str:
    """The device's answer format for a ladder problem, as in the prompt's worked examples:
    ``37 * 46 = 1702. \\boxed{1702}``."""
    sym = "+" if op == "+" else "*"
    return f"{a} {sym} {b} = {value}. \\boxed{{{value}}}"


def similar_problems(meta: dict, k: int, seed: str) -> list[dict]:
    """``k`` new problems of the same level as a ladder problem (same digit counts and operation), seeded.

    Each is ``{"question", "a", "b", "op", "value"}``; the simulated cloud's offline augmentation
    (policies/cloud/simulated.py) writes them as Input/Response pairs.  These are generated, not written by an LLM."""
    a0, b0, op = int(meta["a"]), int(meta["b"]), meta["op"]
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        a, b = _operand(rng, len(str(a0))), _operand(rng, len(str(b0)))
        sym = "+" if op == "+" else "*"
        out.append(
            {"question": f"What is {a} {sym} {b}?", "a": a, "b": b, "op": op, "value": a + b if op == "+" else a * b}
        )
    return out
