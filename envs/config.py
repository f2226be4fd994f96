"""The ``task`` config section: which problems, in which prompt template (envs/tasks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import Section, option


@dataclass
class TaskConfig(Section):
    section = "task"

    name: Literal["arithmetic", "countdown", "math"] = option(
        "arithmetic", "Task: arithmetic (CPU ladder), countdown, or math."
    )
    template: Literal["auto", "math", "countdown", "arithmetic"] = option(
        "auto", "Prompt template: auto (the task's own), math (SPEC §2 MATH), countdown, arithmetic."
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
    train_file: str = option("math_train.jsonl", "MATH training file inside data_dir (task=math).")
    test_file: str = option("math500.jsonl", "MATH held-out file inside data_dir (task=math).")
    hub_id: str = option(
        "DigitalLearningGmbH/MATH-lighteval", "Dataset hub id used when the local file is missing (task=math)."
    )
    max_solve_steps: int = option(6, "The 'if you cannot solve it after N steps' limit in the MATH template.")
