"""Task loading: train/test problems and the prompt template for each task name (the grader: rewards/grading.py).

train, test = load_problems(cfg.task)
pred, ok = grade_response(problem, response_text)
"""

from __future__ import annotations

import os

from core.problem import Problem
from envs import arithmetic, countdown
from envs.suites import read_jsonl_rows, rows_to_problems
from rewards.grading import grade_response  # noqa: F401  (envs.tasks.grade_response: a task's grader)


def read_math_jsonl(path: str, limit: int = 0, name: str = "") -> list[Problem]:
    """A MATH-style JSONL file: question = problem/question, gold = answer field or last \\boxed{} of solution.

    Kept for existing callers; ``envs.suites.load_jsonl`` does the work (uid = "<name or file name>:<row id>")."""
    return rows_to_problems(read_jsonl_rows(path), name or os.path.basename(path), path, limit=limit)


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
    return rows_to_problems(
        ((i + 1, dict(r)) for i, r in enumerate(ds)), f"{cfg.hub_id}:{split}", cfg.hub_id, limit=limit
    )


def load_problems(cfg) -> tuple[list[Problem], list[Problem]]:
    if cfg.name == "arithmetic":
        return (
            arithmetic.make_problems(cfg.num_train, cfg.seed, cfg.levels, "train"),
            arithmetic.make_problems(cfg.num_test, cfg.seed, cfg.levels, "test"),
        )
    if cfg.name == "countdown":
        return countdown.make_problems(cfg.num_train, cfg.seed, "train"), countdown.make_problems(
            cfg.num_test, cfg.seed, "test"
        )
    if cfg.name == "math":
        return _load_math(cfg, cfg.train_file, "train", cfg.num_train), _load_math(
            cfg, cfg.test_file, "test", cfg.num_test
        )
    raise ValueError(f"task.name={cfg.name!r}: use arithmetic, countdown or math")


def template_for(cfg) -> str:
    return cfg.name if cfg.template == "auto" else cfg.template
