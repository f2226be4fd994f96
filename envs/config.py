"""The ``task`` config section: which problems, in which prompt template (envs/tasks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import Section, option


@dataclass
class TaskConfig(Section):
    section = "task"

    name: Literal["arithmetic", "countdown", "math", "file"] = option(
        "arithmetic",
        "Task: arithmetic (CPU ladder), countdown, math, or file (your own problems: task.train_file and "
        "task.test_file are JSONL, CSV or Parquet files, or a hub dataset id when online; fields by "
        "task.question_field / task.answer_field, found automatically when empty; the template follows the "
        "answers: see task.template).",
    )
    template: Literal["auto", "math", "countdown", "arithmetic"] = option(
        "auto",
        "Prompt template: auto (the task's own; for task=file the one-line arithmetic template when every gold is a "
        "short number and the questions are short, else math), math (docs/method.md §2 MATH: step by step, wants "
        "256+ response tokens), countdown, arithmetic (one line ending in \\boxed{}).",
    )
    seed: int = option(0, "Seed for generated tasks (arithmetic, countdown) and for shuffling.")
    num_train: int = option(2000, "Training problems (generated tasks: how many to make; files: cap, 0 = all).")
    num_test: int = option(120, "Held-out problems for evaluation (0 = all the file has).")
    levels: list = option(
        [],
        "Arithmetic ladder levels, easiest first, each 'a<op>b' with a/b the digit counts and op + or x "
        "(e.g. '1x1', '2+2'). Empty = the default ladder calibrated on SmolLM2 (envs/arithmetic.py).",
    )
    data_dir: str = option("../shared/data", "Folder with offline JSONL copies of the math suites.")
    train_file: str = option(
        "math_train.jsonl",
        "Training problems: task=math, a file inside data_dir; task=file, a path (JSONL, CSV, Parquet), else a "
        "file inside data_dir, else a hub dataset id (its train split).",
    )
    test_file: str = option(
        "math500.jsonl", "Held-out problems, as task.train_file (task=file: a hub id's test split)."
    )
    question_field: str | None = option(
        None, "task=file: the field holding the question (dotted paths reach nested fields); empty = automatic."
    )
    answer_field: str | None = option(
        None,
        "task=file: the field holding the gold answer (a number, a LaTeX answer, a solution ending in a \\boxed{} "
        "or GSM8K's '#### N'); empty = automatic.",
    )
    hub_id: str = option(
        "DigitalLearningGmbH/MATH-lighteval", "Dataset hub id used when the local file is missing (task=math)."
    )
    max_solve_steps: int = option(6, "The 'if you cannot solve it after N steps' limit in the MATH template.")
    escalation: bool = option(
        True,
        "Offer escalation in the prompt (the <unknown> tag: the routing policy). false: the task-tuning prompt "
        "(envs/prompts.py: SOLVE_*): the system prompt says only how to answer and every worked example is solved; "
        "the reward is then accuracy (alpha_local when correct), a stray <unknown> tag is a wrong answer and no "
        "cloud is called. Trains the 'task tuning' device of the TT baselines at equal compute (eval.py "
        "--base-model <run>/final); route mode only (rl.env=route).",
    )
