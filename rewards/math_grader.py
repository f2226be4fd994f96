"""Math answer extraction and grading (SPEC §7).

    extract_answer("... so \\boxed{\\frac{1}{2}}")   -> "\\frac{1}{2}"
    is_correct("\\frac12", "0.5")                     -> True

Extraction: the last ``\\boxed{}`` (balanced braces), then "the answer is ...",
then the last number.  Comparison: ``math_verify.verify(gold, pred)`` with the gold
first (it is not symmetric), then a numeric-tolerance fallback.  math-verify's
timeouts use ``signal.alarm``, which only works in the main thread: outside it
they are switched off (``timeout=None``) so grading never crashes a worker thread.
"""

from __future__ import annotations

import re
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.$|$|\n)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}``, with nested braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced: no answer


def extract_answer(text: str) -> str | None:
    """SPEC §7 order: last \\boxed{}, then 'the answer is', then the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = _ANSWER_IS.findall(text)
    if m:
        return m[-1].strip().rstrip(".")
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None


def _timeout() -> int | None:
    return 5 if threading.current_thread() is threading.main_thread() else None


def _as_float(s: str) -> float | None:
    s = s.strip().strip("$").replace(",", "").replace("\\!", "").replace("\\%", "").rstrip("%")
    s = re.sub(r"^\\?text\{(.*)\}$", r"\1", s)
    m = re.fullmatch(r"(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(\d+)\}?", s)
    if m:
        return (-1 if m.group(1) else 1) * float(m.group(2)) / float(m.group(3))
    try:
        return float(s)
    except ValueError:
        return None


def _parse(s: str):
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    # math-verify finds answers inside $...$ or \boxed{}; wrap a bare answer so it is found.
    candidates = [s] if ("$" in s or "\\boxed" in s) else [f"${s}$", s]
    for c in candidates:
        parsed = parse(c, extraction_config=configs, parsing_timeout=_timeout())
        if parsed:
            return parsed
    return []


def is_correct(gold: str, pred: str | None, rel_tol: float = 1e-6) -> bool:
    """True when ``pred`` (an extracted answer) equals ``gold``; gold goes first to math-verify."""
    if pred is None or not str(pred).strip():
        return False
    gold, pred = str(gold).strip(), str(pred).strip()
    if gold == pred:
        return True
    g, p = _parse(gold), _parse(pred)
    if g and p:
        try:
            if verify(g, p, timeout_seconds=_timeout()):
                return True
        except Exception:  # a sympy failure is a wrong answer, never a crash
            pass
    gf, pf = _as_float(gold), _as_float(pred)
    if gf is not None and pf is not None:
        return abs(gf - pf) <= rel_tol * max(1.0, abs(gf))
    return False


def grade(gold: str, response: str) -> tuple[str | None, bool]:
    """(extracted answer, correct?) for a full model response."""
    pred = extract_answer(response)
    return pred, is_correct(gold, pred)
