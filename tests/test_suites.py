"""Suite loaders (envs/suites.py) on the shipped files and on hand-made JSONL, and gold-solution grading."""

import json
import os

import pytest

from envs import suites
from envs.suites import SUITES, load_jsonl, load_suite, normalize_gold
from envs.tasks import read_math_jsonl
from rewards.math_grader import grade, is_correct

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
needs_data = pytest.mark.skipif(
    not os.path.exists(os.path.join(DATA, "math500.jsonl")), reason="shared data not beside the checkout"
)

ROWS = {"math_train": 7500, "math": 5000, "math500": 500, "amc23": 40, "minerva": 272, "agieval": 1000}


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@needs_data
@pytest.mark.parametrize("name", list(ROWS))
def test_shipped_suite_loads(name):
    probs = load_suite(name, DATA)
    assert len(probs) == ROWS[name]
    assert len({p.uid for p in probs}) == len(probs)
    assert all(p.uid.startswith(f"{name}:") for p in probs)
    assert all(p.question.strip() and p.answer.strip() for p in probs)
    assert all(p.meta["suite"] == name for p in probs)
    assert all("$" not in p.answer.replace("\\$", "") for p in probs)  # no stray math delimiters in a gold
    if name in ("math_train", "math", "math500", "agieval"):
        assert {p.level for p in probs} <= {0, 1, 2, 3, 4, 5} and sum(p.level == 0 for p in probs) <= 2
        assert all(p.meta.get("subject") for p in probs)
    assert load_suite(name, DATA, limit=3) == probs[:3]


@needs_data
def test_shipped_suites_normalise_like_the_harnesses():
    amc = load_suite("amc23", DATA)
    assert [p.answer for p in amc[:4]] == ["27", "36", "45", "3159"] and amc[0].uid == "amc23:0"  # 27.0 -> 27
    m500 = load_suite("math500", DATA, limit=1)[0]
    assert m500.uid == "math500:test/precalculus/807.json" and m500.level == 2 and m500.meta["subject"] == "Precalculus"
    assert m500.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"  # the answer field, as shipped
    mth = load_suite("math", DATA, limit=1)[0]
    assert (mth.uid, mth.answer, mth.level, mth.meta["subject"]) == (
        "math:algebra/1",
        "2",
        3,
        "Algebra",
    )  # last \boxed{}
    mnv = load_suite("minerva", DATA)
    assert (mnv[0].uid, mnv[0].answer, mnv[1].answer) == ("minerva:0", "1.6", "4.5e33")
    assert mnv[72].answer == "x_{0} \\cos (\\omega t)+ \\dot{x}_{0} \\sin (\\omega t) / \\omega"  # "$ $" dropped
    agi = load_suite("agieval", DATA, limit=2)
    assert (agi[0].uid, agi[0].answer, agi[0].level) == ("agieval:0", "(3,4]", 5)  # cloze answer, other.level
    assert agi[0].question.startswith("Let $\\lambda$ be a constant")  # passage is null: the question alone
    train = {p.uid: p for p in load_suite("math_train", DATA)}
    assert train["math_train:number_theory/7115"].answer == "0"  # its solution ends in an empty \boxed{}


@needs_data
def test_math500_gold_solutions_grade_100_percent():
    probs = load_suite("math500", DATA, limit=100)
    for p in probs:
        pred, ok = grade(p.answer, p.meta["gold_solution"])
        assert ok, (p.uid, p.answer, pred)
        assert is_correct(p.answer, pred, string_match=False), (p.uid, p.answer, pred)  # math-verify proves it too


def test_load_jsonl_autodetects_and_normalises(tmp_path):
    path = _write(
        tmp_path / "mine.jsonl",
        [
            {"problem": "1+1?", "solution": "It is \\boxed{2}.", "level": "Level 3", "type": "Algebra", "id": "a"},
            {"question": "2+2?", "answer": 4.0, "id": 0},
            "",
            {"prompt": "half?", "other": {"solution": "so $\\boxed{\\frac{1}{2}}$"}, "idx": 7},
            {"input": "q4", "final_answer": "The total is \\boxed{12}", "level": 2},
            {"question": "q5", "answer": [3, 4.5]},
            {"question": "Is it?", "passage": "A passage.", "answer": "\\text{yes}", "id": "a"},
        ],
    )
    probs = load_jsonl(path)
    assert [(p.uid, p.question, p.answer, p.level) for p in probs] == [
        ("mine:a", "1+1?", "2", 3),
        ("mine:0", "2+2?", "4", 0),
        ("mine:7", "half?", "\\frac{1}{2}", 0),
        ("mine:4", "q4", "12", 2),
        ("mine:5", "q5", "3, 4.5", 0),
        ("mine:a@7", "A passage.\n\nIs it?", "\\text{yes}", 0),  # a repeated id stays unique, with its line
    ]
    assert probs[0].meta == {"suite": "mine", "subject": "Algebra", "gold_solution": "It is \\boxed{2}."}
    assert load_jsonl(path, name="x", limit=2)[1].uid == "x:0"


def test_load_jsonl_explicit_and_dotted_fields(tmp_path):
    path = _write(
        tmp_path / "s.jsonl",
        [
            {"q": {"text": "What is 6*7?"}, "sol": "Multiply: \\boxed{42}", "meta": {"final": 42}},
        ],
    )
    by_solution = load_jsonl(path, question_field="q.text", answer_field="sol")
    assert (by_solution[0].question, by_solution[0].answer) == ("What is 6*7?", "42")
    assert load_jsonl(path, question_field="q.text", answer_field="meta.final")[0].answer == "42"
    assert load_jsonl(path, question_field="q.text", solution_field="sol")[0].answer == "42"


def test_load_jsonl_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nosuch.jsonl"):
        load_jsonl(str(tmp_path / "nosuch.jsonl"))
    bad = _write(tmp_path / "bad.jsonl", [{"question": "ok", "answer": 1}, "{not json"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 is not valid JSON"):
        load_jsonl(bad)
    noq = _write(tmp_path / "noq.jsonl", [{"text": "hi", "answer": 1}])
    with pytest.raises(ValueError, match=r"noq\.jsonl:1 has no question.*problem, question.*--question-field"):
        load_jsonl(noq)
    noa = _write(tmp_path / "noa.jsonl", [{"question": "hi", "solution": "no box here"}])
    with pytest.raises(ValueError, match=r"noa\.jsonl:1 has no gold answer.*answer, gold.*--answer-field"):
        load_jsonl(noa)
    with pytest.raises(ValueError, match=r"--answer-field"):
        load_jsonl(noa, answer_field="nosuch")
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="no rows"):
        load_jsonl(empty)


def test_load_suite_unknown_name_and_hub_fallback(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"math500.*agieval.*--data"):
        load_suite("gsm8k", str(tmp_path))
    import sys
    import types

    datasets = types.ModuleType("datasets")  # a stand-in: the real import is slow and the hub is unreachable

    def unreachable(*a, **k):
        raise ConnectionError("no hub")

    monkeypatch.setitem(sys.modules, "datasets", datasets)
    monkeypatch.setattr(datasets, "load_dataset", unreachable, raising=False)
    with pytest.raises(FileNotFoundError, match=r"math500\.jsonl.*HuggingFaceH4/MATH-500.*data-dir"):
        load_suite("math500", str(tmp_path))

    def hub(hub_id, split):  # hails/agieval-math ships "Q: ... A:" queries
        assert (hub_id, split) == (SUITES["agieval"][1], SUITES["agieval"][2])
        return [{"query": "Q: What is $1+1$? A: The answer is", "answer": "2"}]

    monkeypatch.setattr(datasets, "load_dataset", hub)
    (p,) = load_suite("agieval", str(tmp_path))
    assert (p.uid, p.question, p.answer) == ("agieval:0", "What is $1+1$?", "2")


def test_normalize_gold():
    assert normalize_gold(27.0) == "27" and normalize_gold(-1.0) == "-1" and normalize_gold(2.5) == "2.5"
    assert normalize_gold("27.0") == "27" and normalize_gold(" 3 ") == "3" and normalize_gold(7) == "7"
    assert normalize_gold("so \\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert normalize_gold("") is None and normalize_gold(None) is None and normalize_gold("\\boxed{}") is None
    assert suites.parse_level("Level 4") == 4 and suites.parse_level("Level ?") == 0 and suites.parse_level(3) == 3


def test_read_math_jsonl_keeps_its_behaviour(tmp_path):
    path = _write(
        tmp_path / "s.jsonl",
        [{"problem": "1+1?", "solution": "\\boxed{2}", "id": "a"}, {"question": "2+2?", "answer": 4}],
    )
    probs = read_math_jsonl(path)
    assert [(p.uid, p.answer) for p in probs] == [("s.jsonl:a", "2"), ("s.jsonl:1", "4")]
    assert read_math_jsonl(path, limit=1, name="math_train")[0].uid == "math_train:a"


@pytest.mark.parametrize(
    "raw,gold",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72", "72"),  # GSM8K
        ("#### 1,234", "1234"),
        ("1,234,567", "1234567"),
        ("1, 2", "1, 2"),  # a list of numbers keeps its commas
        (["\\frac{1}{2}", "3"], "\\frac{1}{2}, 3"),  # OlympiadBench's final_answer list
        ("$x^2$", "x^2"),
        ("so \\boxed{1,000}", "1000"),
        (36.0, "36"),
    ],
)
def test_common_gold_formats_parse(raw, gold):
    assert normalize_gold(raw) == gold


def test_show_gold_prints_parsed_golds_without_a_model(tmp_path, capsys):
    import eval as evalmod

    data = tmp_path / "gsm8k_mini.jsonl"
    rows = [
        {"question": "Natalia sold 48 clips in April and half as many in May. How many?", "answer": "48/2=24\n#### 72"},
        {"question": "What is 1000 + 234?", "answer": "#### 1,234"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert evalmod.main(["--data", str(data), "--show-gold", "5", "--model", str(tmp_path / "no-model-needed")]) == 0
    out = capsys.readouterr().out
    assert "gsm8k_mini: 2 problems" in out and "gold: 72" in out and "gold: 1234" in out
    assert "####" not in out
    # the parsed gold is what grading and the simulated cloud use
    from policies.cloud import SimulatedCloud

    problems = load_jsonl(str(data))
    assert [p.answer for p in problems] == ["72", "1234"]
    assert "\\boxed{72}" in SimulatedCloud(accuracy=1.0).answer_many(problems[:1])[0].text
