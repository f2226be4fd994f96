"""The unit every task yields: one problem with its gold answer and a difficulty level."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    uid: str  # stable id: keys the cloud cache and the simulated cloud's draw
    question: str  # the task text shown to both models (without the template)
    answer: str  # gold answer (a number, LaTeX, or for countdown the target)
    level: int = 0  # difficulty level (1 = easiest); 0 when unknown
    meta: dict = field(default_factory=dict, hash=False, compare=False)
