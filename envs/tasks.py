"""Task loading: train/test problems, the prompt template and the grader for each task name.

    train, test = load_problems(cfg.task)
    pred, ok = grade_response(problem, response_text)
"""

from __future__ import annotations

import json
import os

from envs import arithmetic, countdown
from envs.problem import Problem
from rewards import countdown as countdown_grader
from rewards.math_grader import grade as math_grade
from rewards.math_grader import last_boxed


def read_math_jsonl(path: str, limit: int = 0, name: str = "") -> list[Problem]:
    """A MATH-style JSONL file: question = problem/question, gold = answer field or last \\boxed{} of solution."""
    problems = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1} is not valid JSON ({e}); fix or remove that line.") from None
            question = row.get("problem") or row.get("question")
            answer = row.get("answer")
            if answer is None and row.get("solution"):
                answer = last_boxed(row["solution"])
            if not question or answer is None:
                raise ValueError(f"{path}:{i + 1} has no problem/question or no answer/solution with \\boxed{{}}.")
            level = row.get("level", 0)
            if isinstance(level, str):
                level = int(level.split()[-1]) if level.split()[-1].isdigit() else 0
            uid = str(row.get("unique_id") or row.get("id") or row.get("idx") or i)
            problems.append(Problem(uid=f"{name or os.path.basename(path)}:{uid}", question=question, answer=str(answer), level=level))
            if limit and len(problems) >= limit:
                break
    return problems


def _load_math(cfg, filename: str, split: str, limit: int) -> list[Problem]:
    path = os.path.join(cfg.data_dir, filename)
    if os.path.exists(path):
        return read_math_jsonl(path, limit, name=os.path.splitext(filename)[0])
    try:
        from datasets import load_dataset

        ds = load_dataset(cfg.hub_id, split=split)
    except Exception as e:
        raise FileNotFoundError(
            f"task.data_dir/{filename} = '{path}' does not exist and the hub dataset '{cfg.hub_id}' could not be "
            f"loaded ({type(e).__name__}). Point task.data_dir at the folder with the JSONL suites "
            "(e.g. task.data_dir=../shared/data) or make the hub reachable."
        ) from None
    problems = []
    for i, row in enumerate(ds):
        answer = row.get("answer") or last_boxed(row.get("solution", ""))
        problems.append(Problem(uid=f"{cfg.hub_id}:{split}:{i}", question=row["problem"], answer=str(answer)))
        if limit and len(problems) >= limit:
            break
    return problems


def load_problems(cfg) -> tuple[list[Problem], list[Problem]]:
    if cfg.name == "arithmetic":
        return (
            arithmetic.make_problems(cfg.num_train, cfg.seed, cfg.levels, "train"),
            arithmetic.make_problems(cfg.num_test, cfg.seed, cfg.levels, "test"),
        )
    if cfg.name == "countdown":
        return countdown.make_problems(cfg.num_train, cfg.seed, "train"), countdown.make_problems(cfg.num_test, cfg.seed, "test")
    if cfg.name == "math":
        return _load_math(cfg, cfg.train_file, "train", cfg.num_train), _load_math(cfg, cfg.test_file, "test", cfg.num_test)
    raise ValueError(f"task.name={cfg.name!r}: use arithmetic, countdown or math")


def template_for(cfg) -> str:
    return cfg.name if cfg.template == "auto" else cfg.template


def grade_response(problem: Problem, text: str) -> tuple[str | None, bool]:
    """(extracted answer, correct?) with the problem's own checker."""
    if "numbers" in problem.meta:
        return countdown_grader.grade(problem.meta["numbers"], problem.meta["target"], text)
    return math_grade(problem.answer, text)
