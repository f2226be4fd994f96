"""Math evaluation suites: load any of the shipped JSONL files (or any JSONL, CSV or Parquet file) as Problems.

    problems = load_suite("math500")                              # ../shared/data/math500.jsonl, else the hub
    problems = load_file("my.csv", question_field="q", answer_field="final.value")   # JSONL, JSON, CSV, Parquet

One reader, ``read_rows``, serves every file a user names: training (``task.name=file``, envs/tasks.py) and
eval.py's ``--data``/``--router-data``/``--show-gold`` alike.  A file that cannot be used is one ``ValueError`` that
names the file (and the line, for a broken JSONL line) and the fix.

Gold answers are normalised the way the public harnesses (Qwen2.5-Math evaluation,
lighteval, math-verify) read them:
- an ``answer`` field when the row has one (MATH-500, AMC23, AGIEval cloze);
- else the last ``\\boxed{}`` of the solution (MATH / MATH-lighteval, MinervaMath);
- numbers become strings, integral floats lose their ``.0`` (AMC23's ``27.0`` -> ``27``);
- an answer that itself holds ``\\boxed{}`` is reduced to its last ``\\boxed{}`` content;
- a worked solution ending in GSM8K's ``#### 72`` is reduced to what follows the last ``####``;
- a list of answers (OlympiadBench's ``final_answer``) is joined with ", "; ``$...$`` delimiters are dropped;
- a number written with thousands separators loses them (``1,234`` -> ``1234``);
- an integer written with leading zeros loses them (AIME's ``025`` -> ``25``).
``python eval.py --data my.jsonl --show-gold 5`` prints the golds as parsed, without running a model.
AGIEval questions carry an optional ``passage``, put before the question as the AGIEval
harness does. Every Problem gets ``uid = "<suite>:<row id or line index>"``, unique within a file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

from core.problem import Problem
from rewards.math_grader import last_boxed

# name -> (file inside data_dir, hub dataset id used when the file is missing, hub split)
SUITES: dict[str, tuple[str, str | None, str]] = {
    "math500": ("math500.jsonl", "HuggingFaceH4/MATH-500", "test"),
    "amc23": ("amc23.jsonl", "math-ai/amc23", "test"),
    "minerva": ("minerva_math.jsonl", "math-ai/minervamath", "test"),
    "math": ("math_test.jsonl", "DigitalLearningGmbH/MATH-lighteval", "test"),
    "agieval": ("agieval_math.jsonl", "hails/agieval-math", "test"),
    "math_train": ("math_train.jsonl", "DigitalLearningGmbH/MATH-lighteval", "train"),
}

QUESTION_FIELDS = ("problem", "question", "prompt", "input", "query")
ANSWER_FIELDS = ("answer", "gold", "target", "final_answer", "expected_answer")
SOLUTION_FIELDS = ("solution", "other.solution", "gold_solution", "reasoning")
ID_FIELDS = ("unique_id", "id", "idx", "uid", "problem_id")
PASSAGE_FIELDS = ("passage",)
SUBJECT_FIELDS = ("type", "subject", "other.type", "category")
LEVEL_FIELDS = ("level", "other.level", "difficulty")

_INTEGRAL_FLOAT = re.compile(r"(-?\d+)\.0*")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_LEADING_ZEROS = re.compile(r"(-?)0+(\d+)")

# The two MATH train rows whose solution ends in an empty \boxed{} (the source lost "(A) 0"): row id -> the
# answer the solution's text proves. number_theory/7115: every number between n!+1 and n!+n is composite, so
# there are 0 primes; number_theory/7117: P+n is never prime, so N = 0. Both are choice (A) 0.
GOLD_FIXES: dict[str, str] = {"number_theory/7115": "0", "number_theory/7117": "0"}


def get_field(row: dict, path: str):
    """``row["a"]["b"]`` for ``path="a.b"``; a key that itself holds a dot wins. None when absent."""
    if path in row:
        return row[path]
    cur = row
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def _first(row: dict, fields: Iterable[str]):
    for f in fields:
        v = get_field(row, f)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return v
    return None


def normalize_gold(value) -> str | None:
    """A gold answer as a string: numbers printed plainly (27.0 -> "27"), lists joined,
    an answer that holds ``\\boxed{}`` reduced to its last ``\\boxed{}`` content."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):  # NaN/Infinity in a JSON row: no usable gold
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, (list, tuple)):
        parts = [normalize_gold(v) for v in value]
        parts = [p for p in parts if p]
        return ", ".join(parts) if parts else None
    s = str(value).strip()
    if "####" in s:  # GSM8K: a worked solution, then "#### 72"
        s = s.rsplit("####", 1)[1].strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = last_boxed(s) or ""
    if re.search(r"(?<!\\)\$", s):  # "a+$ $b" (MinervaMath row 72): drop stray math delimiters
        s = re.sub(r"\s*(?<!\\)\$\s*", " ", s).strip()
        s = re.sub(r"\s{2,}", " ", s)
    if _THOUSANDS.fullmatch(s):  # "1,234" -> "1234" (a list of numbers is "1, 2": a space after each comma)
        s = s.replace(",", "")
    m = _INTEGRAL_FLOAT.fullmatch(s)
    if m:  # "27.0" -> "27", as the Qwen2.5-Math harness strips it
        s = m.group(1)
    m = _LEADING_ZEROS.fullmatch(s)
    if m:  # AIME writes its answers 000-999 with leading zeros: "025" -> "25", the number a model writes
        s = m.group(1) + m.group(2)
    return s or None


def parse_level(value) -> int:
    """MATH "Level 3" -> 3, 3 -> 3, "3" -> 3; "Level ?", None or anything else -> 0."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else 0
    m = re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", str(value), re.IGNORECASE)
    return int(m.group(1)) if m else 0


def _agieval_query(text: str) -> str:
    """hails/agieval-math ships ``query = "Q: <passage><question> A: The answer is"``: keep the question."""
    m = re.fullmatch(r"\s*Q:\s*(.*?)\s*A:\s*(?:The answer is)?[\s:]*", text, re.DOTALL | re.IGNORECASE)
    return m.group(1) if m else text


def rows_to_problems(
    rows: Iterable[tuple[int, dict]],
    name: str,
    source: str,
    question_field: str | None = None,
    answer_field: str | None = None,
    solution_field: str | None = None,
    limit: int = 0,
) -> list[Problem]:
    """``rows`` = (line number, row) pairs. Shared by the JSONL reader and the hub fallback."""
    q_fields = (question_field,) if question_field else QUESTION_FIELDS
    s_fields = (solution_field,) if solution_field else SOLUTION_FIELDS
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        if not isinstance(row, dict):
            raise ValueError(
                f"{where} is a JSON {type(row).__name__}, not an object; each line must be one row object."
            )
        question = _first(row, q_fields)
        if question is None:
            raise ValueError(
                f"{where} has no question: looked for the field(s) {', '.join(q_fields)} (dotted paths reach nested "
                f"fields); the row has {sorted(row)}. Pass --question-field NAME."
            )
        question = str(question).strip()
        if (
            not question_field
            and "query" in row
            and get_field(row, "question") is None
            and get_field(row, "problem") is None
        ):
            question = _agieval_query(question)
        passage = _first(row, PASSAGE_FIELDS)
        if passage is not None and str(passage).strip():
            question = f"{str(passage).strip()}\n\n{question}"  # AGIEval: passage, then the question

        solution = _first(row, s_fields)
        solution = str(solution) if solution is not None else None
        if answer_field:
            answer = normalize_gold(get_field(row, answer_field))
            looked = answer_field
        else:
            answer = normalize_gold(_first(row, ANSWER_FIELDS))
            if answer is None and solution is not None:
                answer = normalize_gold(last_boxed(solution))
                rid = _first(row, ID_FIELDS)
                if answer is None and str(rid) in GOLD_FIXES and "\\boxed{}" in solution:
                    answer = GOLD_FIXES[str(rid)]
            looked = f"{', '.join(ANSWER_FIELDS)}, or a \\boxed{{}} in {', '.join(s_fields)}"
        if answer is None:
            raise ValueError(
                f"{where} has no gold answer: looked for {looked}; the row has {sorted(row)}. "
                "Pass --answer-field NAME (a number, a LaTeX answer, or a solution whose last \\boxed{} holds it)."
            )

        rid = _first(row, ID_FIELDS)
        key = str(rid) if rid is not None else str(lineno - 1)
        if key in seen:  # a repeated id: keep uids unique and stable with the line number
            key = f"{key}@{lineno}"
        seen.add(key)

        meta = {"suite": name}
        subject = _first(row, SUBJECT_FIELDS)
        if subject is not None:
            meta["subject"] = str(subject)
        if solution is not None:
            meta["gold_solution"] = solution
        problems.append(
            Problem(
                uid=f"{name}:{key}",
                question=question,
                answer=answer,
                level=parse_level(_first(row, LEVEL_FIELDS)),
                meta=meta,
            )
        )
        if limit and len(problems) >= limit:
            break
    return problems


def read_jsonl_rows(path: str):
    """(1-based line number, row) of each non-blank line of a JSONL file; a broken line is a ``ValueError`` naming
    the file and the line."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{i} is not valid JSON ({e.msg} at column {e.colno}); fix or remove that line."
                ) from None
            yield i, row


EMPTY = "{path} holds no rows: write one problem per line (JSONL), or a header and one row per problem (CSV)."
FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _read_table(path: str, fmt: str) -> list[tuple[int, dict]]:
    """A CSV or Parquet file through ``datasets`` (the types pandas/Arrow infer), as (row number, row) pairs: a CSV
    row's number is its line in the file (the header is line 1), a Parquet row's its 1-based index."""
    import datasets
    from datasets.utils import logging as datasets_logging

    datasets.disable_progress_bars()  # a "Generating train split" bar per file is noise here
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # it logs the error it then raises: we say it once
    try:
        table = datasets.load_dataset(fmt, data_files=os.path.abspath(path), split="train")
    except Exception as e:  # an empty CSV, a file that is not Parquet, a ragged row
        cause = getattr(e, "__cause__", None) or e  # datasets wraps the reader's error in DatasetGenerationError
        if "No columns to parse" in str(cause) or "corresponds to no data" in str(cause):  # empty, or a header only
            raise ValueError(EMPTY.format(path=path)) from None
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path} could not be read as {fmt.upper()} ({type(cause).__name__}: {first}); check the file, or "
            "convert it to JSONL (one JSON object per line)."
        ) from None
    finally:
        datasets_logging.set_verbosity(verbosity)
    start = 2 if fmt == "csv" else 1
    return [(start + i, dict(row)) for i, row in enumerate(table)]


def read_rows(path: str):
    """(row number, row) of a JSONL, JSON, CSV or Parquet file, by its extension.

    JSONL is read line by line here (a broken line is named by its 1-based number, and a field may hold a number in
    one row and a string in the next); a ``.json`` file holding one JSON array is read whole; CSV and Parquet go
    through ``datasets``.  Any other extension is a ``ValueError``."""
    fmt = FILE_TYPES.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unknown file type {os.path.splitext(path)[1] or '(no extension)'!r}; use .jsonl, .json, .csv "
            "or .parquet."
        )
    if fmt != "json":
        return _read_table(path, fmt)
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):  # a .json file holding one array of rows
        try:
            rows = json.load(open(path, encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
        return list(enumerate(rows, start=1))
    return read_jsonl_rows(path)


def load_file(
    path: str,
    question_field: str | None = None,
    answer_field: str | None = None,
    name: str | None = None,
    limit: int = 0,
    solution_field: str | None = None,
) -> list[Problem]:
    """Any JSONL, JSON, CSV or Parquet file of math problems (``read_rows``). Fields are found automatically when
    not given: question = problem/question/prompt/input/query; gold = answer/gold/target/final_answer, else the last
    \\boxed{} of solution/other.solution. Dotted paths ("other.solution") reach nested fields.
    uid = "<name>:<row id or 0-based row index>", name defaulting to the file's base name."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r}: no such file.")
    name = name or os.path.splitext(os.path.basename(path))[0]
    problems = rows_to_problems(read_rows(path), name, path, question_field, answer_field, solution_field, limit)
    if not problems:
        raise ValueError(EMPTY.format(path=path))
    return problems


load_jsonl = load_file  # the name it had when it read JSONL only


def load_suite(name: str, data_dir: str = "../shared/data", limit: int = 0) -> list[Problem]:
    """A named suite: ``data_dir/<file>`` when it exists, else the dataset hub."""
    if name not in SUITES:
        raise ValueError(
            f"unknown suite {name!r}: use one of {', '.join(SUITES)}, or evaluate any JSONL, CSV or Parquet file with "
            "--data path.jsonl [--question-field F --answer-field F]."
        )
    filename, hub_id, split = SUITES[name]
    path = os.path.join(data_dir, filename)
    if os.path.exists(path):
        return load_file(path, name=name, limit=limit)
    try:
        if hub_id is None:
            raise RuntimeError("no hub copy known")
        from datasets import load_dataset

        ds = load_dataset(hub_id, split=split)
        return rows_to_problems(((i + 1, dict(r)) for i, r in enumerate(ds)), name, f"{hub_id}[{split}]", limit=limit)
    except Exception as e:
        raise FileNotFoundError(
            f"suite {name!r}: {path!r} does not exist and the hub dataset {hub_id!r} (split {split!r}) could not be "
            f"loaded ({type(e).__name__}: {str(e)[:200]}). Point --data-dir / task.data_dir at the folder holding "
            f"{filename} (e.g. ../shared/data), or make the dataset hub reachable."
        ) from None
