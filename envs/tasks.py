"""Task loading: train/test problems and the prompt template for each task name (the grader: rewards/grading.py).

train, test = load_problems(cfg.task)
pred, ok = grade_response(problem, response_text)
"""

from __future__ import annotations

import logging
import os

from core.problem import Problem
from envs import arithmetic, countdown
from envs.suites import read_jsonl_rows, rows_to_problems
from rewards.grading import grade_response  # noqa: F401  (envs.tasks.grade_response: a task's grader)

log = logging.getLogger(__name__)
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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


def _load_file(cfg, spec: str, split: str, limit: int) -> list[Problem]:
    """task=file: ``spec`` is a path (JSONL, CSV, Parquet; as given, else inside task.data_dir) or a hub dataset
    id (its ``split``), read with ``datasets``; fields by task.question_field / task.answer_field."""
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()  # a "Generating train split" bar per file is noise here
    key = "train_file" if split == "train" else "test_file"
    path = spec if os.path.exists(spec) else os.path.join(cfg.data_dir, spec)
    try:
        if os.path.exists(path):
            fmt = FORMATS.get(os.path.splitext(path)[1].lower())
            if fmt is None:
                raise ValueError(
                    f"task.{key}={spec!r}: unknown file type; use .jsonl, .json, .csv or .parquet "
                    f"(or a hub dataset id)."
                )
            ds, source = load_dataset(fmt, data_files=path, split="train"), path
        elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            ds, source = load_dataset(spec, split=split), f"{spec}:{split}"
        else:
            raise FileNotFoundError(f"task.{key}={spec!r}: no such file (looked in . and in {cfg.data_dir}).")
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # the hub unreachable, or a dataset without that split
        raise FileNotFoundError(
            f"task.{key}={spec!r} is not a local file, and the hub dataset could not be loaded "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]}). Pass a JSONL, CSV or Parquet file."
        ) from None
    name = os.path.splitext(os.path.basename(spec))[0] if os.path.exists(path) else spec
    try:
        return rows_to_problems(
            ((i + 1, dict(r)) for i, r in enumerate(ds)),
            name,
            source,
            cfg.question_field,
            cfg.answer_field,
            limit=limit,
        )
    except ValueError as e:  # the loader's hint names eval.py's flags; train.py's are config keys
        raise ValueError(
            str(e)
            .replace("Pass --question-field NAME", "Set task.question_field=NAME")
            .replace("Pass --answer-field NAME", "Set task.answer_field=NAME")
        ) from None


def warn_on_shared_questions(train: list[Problem], test: list[Problem]) -> int:
    """Log a warning when held-out questions also appear in the training problems; returns how many do."""
    seen = {" ".join(p.question.split()).lower() for p in train}
    shared = sum(" ".join(p.question.split()).lower() in seen for p in test)
    if shared:
        log.warning(
            "%d of the %d held-out questions also appear in the training problems: the evaluation is not held out. "
            "Remove them from task.test_file (or task.train_file).",
            shared,
            len(test),
        )
    return shared


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
    if cfg.name == "file":
        train = _load_file(cfg, cfg.train_file, "train", cfg.num_train)
        test = _load_file(cfg, cfg.test_file, "test", cfg.num_test)
        warn_on_shared_questions(train, test)
        return train, test
    raise ValueError(f"task.name={cfg.name!r}: use arithmetic, countdown, math or file")


def template_for(cfg) -> str:
    if cfg.template == "auto":
        return "math" if cfg.name == "file" else cfg.name
    return cfg.template
