"""The answer format of a device response: the ``<unknown> ... </unknown>`` escalation at its end, and format
compliance."""

from __future__ import annotations

import re

from rewards.math_grader import last_boxed

# The final ``<unknown> ... </unknown>`` at the end of a response: its body holds no ``<unknown>``, so a tag
# earlier in the text (and the answer after it) stays in the device's own text.
_ESCALATION_AT_END = re.compile(r"<unknown>((?:(?!<unknown>).)*?)</unknown>\s*$", re.DOTALL)


def is_escalation(text: str) -> bool:
    """True iff the response ENDS with ``<unknown> ... </unknown>`` (a tag earlier in the text does not count)."""
    return _ESCALATION_AT_END.search(text) is not None


def split_escalation(text: str) -> tuple[bool, str]:
    """(ends with an escalation?, the device's own text: everything before the final ``<unknown>`` tag) -- the
    text that gets graded, so a ``\\boxed{}`` after an earlier tag is kept."""
    m = _ESCALATION_AT_END.search(text)
    return (True, text[: m.start()]) if m else (False, text)


def format_ok(text: str, template: str, escalation: bool = True) -> bool:
    """Does a response follow the template's answer format?  Either an escalation (it ends with
    ``<unknown> ... </unknown>`` and holds no other tag) or an answer (no ``<unknown>``/``</unknown>``
    anywhere, and a final answer in the template's form: ``\\boxed{...}`` with closed braces, or
    ``<answer> ... </answer>`` for countdown).  Eval reports the share as ``format_rate``.  ``escalation=False``
    (the task-tuning prompt, which offers none): only an answer is."""
    n_open, n_close = text.count("<unknown>"), text.count("</unknown>")
    if is_escalation(text) and escalation:
        return n_open == 1 and n_close == 1
    if n_open or n_close:
        return False
    if template == "countdown":
        return re.search(r"<answer>.*?</answer>", text, re.DOTALL) is not None
    return last_boxed(text) is not None
