"""Task loading: train/test problems and the prompt template for each task name (the grader: rewards/grading.py).

train, test = load_problems(cfg.task)
pred, ok = grade_response(problem, response_text)
"""

from __future__ import annotations

import logging
import os
import re

from core.problem import Problem
from envs import arithmetic, countdown
from envs.suites import load_file, read_jsonl_rows, rows_to_problems
from rewards.grading import grade_response  # noqa: F401  (envs.tasks.grade_response: a task's grader)

log = logging.getLogger(__name__)


def read_math_jsonl(path: str, limit: int = 0, name: str = "") -> list[Problem]:
    """A MATH-style JSONL file: question = problem/question, gold = answer field or last \\boxed{} of solution.

    Kept for existing callers; ``envs.suites.load_file`` does the work (uid = "<name or file name>:<row id>")."""
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
    """task=file: ``spec`` is a path (JSONL, CSV, Parquet; as given, else inside task.data_dir), read by
    ``envs.suites.load_file`` (eval.py's ``--data`` reader), or a hub dataset id (its ``split``); fields by
    task.question_field / task.answer_field.  Every failure is one ``ValueError``/``FileNotFoundError`` line that
    names the config key, the file and the fix."""
    key = "train_file" if split == "train" else "test_file"
    path = spec if os.path.exists(spec) else os.path.join(cfg.data_dir, spec)
    if os.path.exists(path):
        try:
            return load_file(
                path, cfg.question_field, cfg.answer_field, os.path.splitext(os.path.basename(spec))[0], limit
            )
        except ValueError as e:  # the reader's hint names eval.py's flags; train.py's are config keys
            raise ValueError(
                f"task.{key}: "
                + str(e)
                .replace("Pass --question-field NAME", "Set task.question_field=NAME")
                .replace("Pass --answer-field NAME", "Set task.answer_field=NAME")
            ) from None
    if not (spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not os.path.splitext(spec)[1]):
        raise FileNotFoundError(f"task.{key}={spec!r}: no such file (looked in . and in {cfg.data_dir}).")
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()
    try:
        ds = load_dataset(spec, split=split)
    except Exception as e:  # the hub unreachable, or a dataset without that split
        raise FileNotFoundError(
            f"task.{key}={spec!r}: no such file (looked in . and in {cfg.data_dir}), and the hub dataset {spec!r} "
            f"could not be loaded ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})."
        ) from None
    try:
        return rows_to_problems(
            ((i + 1, dict(r)) for i, r in enumerate(ds)),
            spec,
            f"{spec}:{split}",
            cfg.question_field,
            cfg.answer_field,
            limit=limit,
        )
    except ValueError as e:
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


_SHORT_GOLD = re.compile(r"-?\d[\d.,/]{0,11}")  # a number or a fraction of at most 12 characters


def short_answers(problems: list[Problem]) -> bool:
    """True when every gold is a short number and the typical question is short (at most 120 characters): problems
    answered in one line, as the arithmetic ladder is.  GSM8K-like word problems (short golds, long questions) are
    not: they need their steps."""
    if not problems:
        return False
    questions = sorted(len(p.question) for p in problems)
    return all(_SHORT_GOLD.fullmatch(p.answer) for p in problems) and questions[len(questions) // 2] <= 120


def choose_template(problems: list[Problem]) -> str:
    """``task.template=auto`` for your own problems: the arithmetic template (one line ending in \\boxed{}, with worked
    examples) when ``short_answers``, else the step-by-step MATH template."""
    return "arithmetic" if short_answers(problems) else "math"


STEP_BY_STEP_TOKENS = 256  # fewer response tokens than this cut the MATH template's step-by-step solutions short


def template_token_warning(template: str, max_new_tokens: int, keys: str) -> str | None:
    """A one-line warning when the template and the token cap disagree (a step-by-step template under a cap that cuts
    its solutions short), saying the fix; None when they agree.  ``keys`` names the settings holding the cap."""
    if template == "math" and max_new_tokens < STEP_BY_STEP_TOKENS:
        return (
            f"the math template asks for a step-by-step solution, but {keys} = {max_new_tokens} tokens cut it short: "
            f"raise {keys} to {2 * STEP_BY_STEP_TOKENS} or more, or set task.template=arithmetic for one-line answers"
        )
    return None


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
        if not getattr(cfg, "_checked", False):  # said once per config, however often the problems are loaded
            warn_on_shared_questions(train, test)
        if cfg.template == "auto":  # the template follows the answers' length; resolved here, once
            cfg.template = choose_template(train)
            if not getattr(cfg, "_checked", False):
                log.info(
                    "task.template=auto: the %s template (%s); set task.template to choose",
                    cfg.template,
                    "the golds are short numbers: one line ending in \\boxed{}"
                    if cfg.template == "arithmetic"
                    else "step-by-step solutions",
                )
        cfg._checked = True
        return train, test
    raise ValueError(f"task.name={cfg.name!r}: use arithmetic, countdown, math or file")


def template_for(cfg) -> str:
    """The task's prompt template (envs/prompts.py).  ``auto``: the task's own; for ``task.name=file`` it is chosen by
    ``load_problems`` from the answers (``choose_template``), the MATH template until then."""
    if cfg.template == "auto":
        return "math" if cfg.name == "file" else cfg.name
    return cfg.template
