import threading

import pytest

from envs import arithmetic, countdown
from rewards import countdown as cd
from rewards.math_grader import extract_answer, is_correct, last_boxed


def test_extraction_order():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("so the answer is 42.") == "42"
    assert extract_answer("3 + 4 = 7") == "7"
    assert extract_answer("nothing here") is None
    assert last_boxed("\\boxed{unbalanced") is None


@pytest.mark.parametrize(
    "gold,pred,ok",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{3}{4}", "\\frac34", True),
        ("12", "12.0", True),
        ("1,000", "1000", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", True),
        ("7", "8", False),
        ("x^2+1", "1+x^2", True),
        ("5", None, False),
    ],
)
def test_math_verify_equivalences(gold, pred, ok):
    assert is_correct(gold, pred) is ok


def test_grading_works_outside_the_main_thread():
    result = {}

    def work():
        result["ok"] = is_correct("\\frac{1}{2}", "0.5")

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert result["ok"] is True


def test_countdown_checker_exact():
    assert cd.check("(74 + 78) - (36 + 7)", [74, 78, 36, 7], 109)
    assert not cd.check("(74 + 78) - (36 + 7)", [74, 78, 36, 7], 33)
    assert not cd.check("74 + 78", [74, 78, 36, 7], 152)  # must use every number
    assert not cd.check("74 + 74 - 36 - 7", [74, 78, 36, 7], 105)  # 74 twice
    assert not cd.check("__import__('os')", [1], 1)
    assert cd.grade([1, 2, 3, 4], 10, "<think>x</think><answer> 1 + 2 + 3 + 4 </answer>") == ("1 + 2 + 3 + 4", True)


def test_generated_tasks_are_seeded_and_correct():
    a = arithmetic.make_problems(70, seed=3)
    assert a == arithmetic.make_problems(70, seed=3)
    assert {p.level for p in a} == set(range(1, len(arithmetic.DEFAULT_LEVELS) + 1))
    for p in a:
        x, y = p.meta["a"], p.meta["b"]
        assert int(p.answer) == (x + y if p.meta["op"] == "+" else x * y)
    test_uids = {p.uid for p in arithmetic.make_problems(70, seed=3, split="test")}
    assert not test_uids & {p.uid for p in a}
    c = countdown.make_problems(20, seed=1)
    for p in c:
        assert cd.check(p.meta["solution"].replace("(", "( ").replace(")", " )"), p.meta["numbers"], p.meta["target"])
    with pytest.raises(ValueError, match="2x1"):
        arithmetic.parse_level("two by one")
