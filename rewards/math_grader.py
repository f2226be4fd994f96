"""Math answer extraction and grading (docs/method.md §7).

    extract_answer("... so \\boxed{\\frac{1}{2}}")   -> "\\frac{1}{2}"
    is_correct("\\frac12", "0.5")                     -> True

Extraction: the last ``\\boxed{}`` / ``\\fbox{}`` (balanced braces; ``\\boxed 5`` too),
then "the answer is ...", then the last number.  Comparison, first hit wins:
1. the strings are equal;
2. ``math_verify.verify(parse(gold), parse(pred))``, gold first (it is not symmetric);
   a bare answer is wrapped in ``$...$`` so math-verify's LaTeX extractor finds it;
3. the same on lightly normalised strings (``\\dfrac``, ``\\left(``, ``^\\circ``, ``\\%``,
   ``\\$``, units in ``\\text{}``, ``x=`` prefixes, "1,000", ``4.5e33``, a trailing period),
   which math-verify misses on its own;
4. text answers (``\\text{Monday}``, ``(B)``) compare as case-insensitive words;
5. a numeric fallback: both sides evaluate to numbers within a relative 1e-4
   (integers must match exactly).
math-verify's timeouts use ``signal.alarm``, which only works in the main thread: outside
it they are switched off (``timeout=None``) so grading never crashes a worker thread.
"""

from __future__ import annotations

import math
import re
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.$|$|\n)", re.IGNORECASE)
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces balanced), or of
    ``\\boxed 5`` (up to the next space or ``$``). None when there is none or its braces never close."""
    if not text:
        return None
    starts = [m.end() for m in _BOX_CMD.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":  # "\boxed 5" / "\boxed5$": a single token
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0).rstrip(".,;") if m else None
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
    """docs/method.md §7 order: last \\boxed{}, then 'the answer is', then the last number."""
    if not text:
        return None
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


# ---- light normalisation for what math-verify misses --------------------------------------------

_UNIT_WORDS = (
    r"(?:units?|degrees?|cm|m|km|mm|inches|inch|in|feet|foot|ft|yards?|miles?|meters?|centimeters?|"
    r"seconds?|minutes?|hours?|days?|weeks?|years?|dollars?|cents?|points?|square|sq|cubic|mph|"
    r"pounds?|ounces?|grams?|kg|g|liters?|ml|people|students|ways|sides|edges|ergs?|s|K|J|eV|nm|"
    r"percent)"
)


def _strip_text_wrapper(s: str) -> str:
    m = re.fullmatch(r"\\(?:text|textbf|mathrm|mbox|textnormal)\{(.*)\}", s)
    return m.group(1).strip() if m and "{" not in m.group(1) else s


def normalize(s: str) -> str:
    """Light, meaning-preserving clean-up of a final answer (MATH/Qwen2.5-Math style)."""
    s = str(s).strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()  # $...$ around the whole answer
    s = re.sub(r"\\\[|\\\]|\\\(|\\\)", "", s) if s.startswith(("\\[", "\\(")) else s
    s = _UNESCAPED_DOLLAR.sub(" ", s)  # "a+$ $b": an answer broken across math spans
    s = s.replace("\n", " ").rstrip(".").strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\left\s*|\\right\s*", "", s)
    s = re.sub(r"\\(?:displaystyle|mathbf|boldsymbol)\s*", "", s)
    s = s.replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"(\d)\\[,;: ](?=\d{3})", r"\1", s)  # 1\,000 -> 1000
    s = re.sub(r"\\[,;:]|\\ |~", " ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°", "", s)  # 30^\circ -> 30
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
    s = re.sub(r"\\text\{\s*\}", "", s)
    # units after a number: 5\text{ cm}^2, 12 \mbox{ inches}, 3 meters
    s = re.sub(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{\s*" + _UNIT_WORDS + r"[\s\w.]*\}(?:\^\{?\d\}?)?", "", s)
    s = re.sub(r"(?<=\d)\s+" + _UNIT_WORDS + r"(?:\^\{?\d\}?)?$", "", s)
    s = _strip_text_wrapper(s.strip())
    if s.count("=") == 1 and re.match(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*=", s):  # x = 3 -> 3
        s = s.split("=", 1)[1]
    s = s.strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # 1,000 -> 1000
        s = s.replace(",", "")
    s = re.sub(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])", r"\1\\times 10^{\2}", s)  # 4.5e33
    m = re.fullmatch(r"\(?\s*([A-Ea-e])\s*\)?", s)  # (B) -> B
    if m:
        s = m.group(1)
    s = re.sub(r"^0+(?=\d)", "", s)
    s = re.sub(r"(\d+)\.0+$", r"\1", s)  # 27.0 -> 27
    return s.strip().rstrip(".").strip()


def _words(s: str) -> str | None:
    """A text answer as lower-case words ("\\text{Monday}" -> "monday"); None for anything mathematical."""
    t = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s).strip().strip("()").strip()
    return t.lower() if re.fullmatch(r"[A-Za-z]{2,}(?:[ '\-][A-Za-z]+)*", t) else None


# ---- comparison ---------------------------------------------------------------------------------

_CONFIGS = [LatexExtractionConfig(), ExprExtractionConfig()]


def _parse(s: str):
    # math-verify finds answers inside $...$ or \boxed{}; wrap a bare answer so it is found.
    candidates = [s] if (_UNESCAPED_DOLLAR.search(s) or "\\boxed" in s) else [f"${s}$", s]
    for c in candidates:
        try:
            parsed = parse(c, extraction_config=_CONFIGS, parsing_timeout=_timeout())
        except Exception:  # a parser failure or timeout is "no parse", never a crash
            parsed = []
        if parsed:
            return parsed
    return []


def _verify(g, p) -> bool:
    if not (g and p):
        return False
    try:
        return bool(verify(g, p, timeout_seconds=_timeout()))
    except Exception:  # a sympy failure is a wrong answer, never a crash
        return False


_FLOAT = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _as_number(s: str, parsed) -> tuple[float, bool] | None:
    """(value, is an integer literal) when ``s`` is a plain number or evaluates to one."""
    t = s.replace(",", "").replace(" ", "")
    if _FLOAT.fullmatch(t):
        return float(t), re.fullmatch(r"-?\d+", t) is not None
    m = re.fullmatch(r"(-?)\\frac\{?(-?\d+)\}?\{?(\d+)\}?", t)
    if m and float(m.group(3)) != 0:
        return (-1 if m.group(1) else 1) * float(m.group(2)) / float(m.group(3)), False
    for v in parsed[:1]:
        try:
            if getattr(v, "is_number", False) and not getattr(v, "free_symbols", True):
                f = complex(v.evalf())
                if abs(f.imag) < 1e-12:
                    return f.real, bool(getattr(v, "is_Integer", False))
        except Exception:
            return None
    return None


def is_correct(gold: str, pred: str | None, rel_tol: float = 1e-4, *, string_match: bool = True) -> bool:
    """True when ``pred`` (an extracted answer) equals ``gold``; gold goes first to math-verify.
    ``string_match=False`` skips the equal-strings shortcuts (used to test the math comparison itself)."""
    if pred is None or not str(pred).strip():
        return False
    gold, pred = str(gold).strip(), str(pred).strip()
    if string_match and gold == pred:
        return True
    ng, np_ = normalize(gold), normalize(pred)
    if not np_:
        return False
    if string_match and ng.replace(" ", "") == np_.replace(" ", ""):
        return True
    wg, wp = _words(ng), _words(np_)
    if wg is not None or wp is not None:  # a text answer: words must match, math-verify would multiply letters
        if wg is not None and wp is not None:
            return wg == wp
    g, p = _parse(gold), _parse(pred)
    if _verify(g, p):
        return True
    if (ng, np_) != (gold, pred):
        g2, p2 = _parse(ng) or g, _parse(np_) or p
        if _verify(g2, p2):
            return True
    else:
        g2, p2 = g, p
    a, b = _as_number(ng, g2), _as_number(np_, p2)
    if a is not None and b is not None:
        (gv, g_int), (pv, p_int) = a, b
        if not (math.isfinite(gv) and math.isfinite(pv)):
            return False
        if g_int and p_int:  # integers: exact, never "close enough"
            return gv == pv
        return math.isclose(gv, pv, rel_tol=rel_tol, abs_tol=1e-9)
    return False


def grade(gold: str, response: str) -> tuple[str | None, bool]:
    """(extracted answer, correct?) for a full model response."""
    pred = extract_answer(response)
    return pred, is_correct(gold, pred)
