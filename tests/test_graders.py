import threading

import pytest

from envs import arithmetic, countdown
from rewards import countdown as cd
from rewards.math_grader import extract_answer, grade, is_correct, last_boxed, normalize


def test_extraction_order():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("so the answer is 42.") == "42"
    assert extract_answer("3 + 4 = 7") == "7"
    assert extract_answer("nothing here") is None
    assert last_boxed("\\boxed{unbalanced") is None


def test_extraction_forms():
    assert last_boxed("$\\boxed{\\frac{\\sqrt{3}}{2}}$ and more") == "\\frac{\\sqrt{3}}{2}"  # nested braces
    assert last_boxed("\\fbox{7}") == "7" and last_boxed("\\boxed{1}, finally \\fbox{2}") == "2"
    assert last_boxed("so $\\boxed 5$.") == "5" and last_boxed("is \\boxed 12.") == "12"
    assert last_boxed("\\boxed {3}") == "3" and last_boxed("\\boxedfoo{3}") is None
    assert extract_answer("\\boxed{1} ... The answer is 2.") == "1"  # \boxed{} beats "the answer is"
    assert extract_answer("The answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert extract_answer("the answer is 3.5.") == "3.5"
    assert extract_answer("We get 1,000 apples, then 12,345") == "12345"
    assert extract_answer("the sets 1,2,3 are") == "3"  # not "123"
    assert extract_answer("ratio 3/4") == "3/4"
    assert grade("\\frac{1}{2}", "Hence $x = \\boxed{\\dfrac{1}{2}}$.") == ("\\dfrac{1}{2}", True)
    assert grade("5", "") == (None, False)


def test_normalize():
    assert normalize("\\left( 3, 4 \\right)") == "( 3, 4 )"
    assert normalize("30^\\circ") == "30" and normalize("30^{\\circ}") == "30"
    assert normalize("50\\%") == "50" and normalize("\\$1,000") == "1000" and normalize("1\\,000") == "1000"
    assert normalize("x = 3") == "3" and normalize("\\text{(B)}") == "B" and normalize("12 \\text{ cm}^2") == "12"
    assert normalize("4.5e33") == "4.5\\times 10^{33}" and normalize("27.0") == "27" and normalize("5.") == "5"


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
        ("5", "  ", False),
        # fractions, decimals, \dfrac
        ("1/2", "0.5", True),
        ("\\dfrac{1}{2}", "\\frac12", True),
        ("\\tfrac{3}{8}", "0.375", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        # \left( \right), tuples, intervals (openness matters), sets
        ("\\left( 3, 4 \\right)", "(3,4)", True),
        ("[2,5)", "[2, 5)", True),
        ("\\left[ \\frac{3}{2}, 2 \\right)", "[1.5, 2)", True),
        ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)", True),
        ("\\{1,2\\}", "\\{2,1\\}", True),
        ("1, 2", "2, 1", True),  # MATH lists of solutions are unordered
        # degrees, percentages, money, units, thousands, x= prefixes
        ("30^\\circ", "30", True),
        ("30", "30^{\\circ}", True),
        ("50\\%", "50", True),
        ("50", "50\\%", True),
        ("\\$5", "5", True),
        ("\\$1.50", "1.5", True),
        ("12\\text{ cm}^2", "12", True),
        ("5", "5 \\text{ inches}", True),
        ("1,000", "1000", True),
        ("1000", "1,000", True),
        ("1\\,000", "1000", True),
        ("x=3", "3", True),
        ("3", "x = 3", True),
        ("y = 2x+3", "2x+3", True),
        # scientific notation (MinervaMath golds), numeric tolerance (relative 1e-4)
        ("4.5e33", "4.5 \\times 10^{33}", True),
        ("7.2e-5", "7.2 \\times 10^{-5}", True),
        ("1.6", "1.60", True),
        ("3.14159", "3.14160", True),
        ("\\pi", "3.14159", True),
        # text answers
        ("\\text{(B)}", "B", True),
        ("B", "\\text{(B)}", True),
        ("(C)", "\\textbf{(C)}", True),
        ("Monday", "\\text{Monday}", True),
        ("\\text{Monday}", "monday", True),
        ("\\text{A, C}", "A,C", True),
        # must NOT match
        ("1/2", "2", False),
        ("\\frac{1}{2}", "-\\frac{1}{2}", False),
        ("(3,4)", "[3,4]", False),
        ("(3,4]", "(3,4)", False),
        ("(1,2)", "(2,1)", False),  # an ordered pair
        ("\\{1,2\\}", "\\{1,3\\}", False),
        ("10", "100", False),
        ("10000", "10001", False),  # integers match exactly, never "within 1e-4"
        ("4.5e33", "4.6e33", False),
        ("\\sqrt{2}", "1.41", False),
        ("\\infty", "-\\infty", False),
        ("B", "C", False),
        ("\\text{(B)}", "C", False),
        ("Monday", "Tuesday", False),
        ("ABC", "ACB", False),  # words compare as words, not as products of symbols
        ("\\text{even}", "\\text{odd}", False),
        ("3", "x=4", False),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", False),
    ],
)
def test_math_verify_equivalences(gold, pred, ok):
    assert is_correct(gold, pred) is ok


def test_equivalences_hold_without_the_string_shortcut():
    for gold, pred in [
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("\\left( 3, 4 \\right)", "\\left( 3, 4 \\right)"),
        ("\\text{Monday}", "Monday"),
    ]:
        assert is_correct(gold, pred, string_match=False)


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
