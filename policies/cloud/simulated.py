"""The simulated cloud (``cloud.backend=simulated``): seeded, no language model, no network.

    SimulatedCloud(accuracy=0.95, accuracy_per_level={5: 0.6}, seed=1234).answer_many(problems)

Accuracy is configurable overall and per difficulty level.  Whether it solves a problem is a fixed draw from
(seed, problem uid), so repeated and resumed runs see the same cloud.  A correct answer is the gold in
``\\boxed{}``; a wrong one is a plausible wrong number.  A ``<query>`` (query mode) gets its arithmetic evaluated
(``policies/calculator.py``), always correctly.  It knows no task: the task layer injects a ``simulator``
(envs/simulation.py: ``TaskSimulator``, via ``make_cloud(..., simulator=)``) that writes the replies that depend
on one (Countdown's equation-style reply, augmentation's Input/Response pairs, right as often as the accuracy
says); without one augmentation gets nothing.  The simulator is not part of the cache key.
"""

from __future__ import annotations

import hashlib
import random

from core.problem import Problem
from policies.calculator import answer_query
from policies.cloud.protocol import CloudReply
from policies.cloud.requests import cloud_messages, is_augment, is_query, request_key

SIMULATED_QUERY_FAILURE = "I can only evaluate arithmetic expressions."


class SimulatedCloud:
    """A seeded stand-in for a cloud LLM (see the module doc).  It knows no task: ``simulator`` (the task layer's,
    envs/simulation.py) writes the replies that depend on one (Countdown's equation, augmentation pairs); without
    it every problem gets the generic ``\\boxed{}`` answer and an augmentation request gets no pairs."""

    name = "simulated"

    def __init__(
        self, accuracy: float = 0.95, accuracy_per_level: dict | None = None, seed: int = 1234, simulator=None
    ):
        self.accuracy = accuracy
        self.accuracy_per_level = {int(k): float(v) for k, v in (accuracy_per_level or {}).items()}
        self.seed = seed
        self.simulator = simulator  # not part of the cache identity: it writes what the seeded draws decide

    def cache_key(self, problem: Problem) -> str:
        # The simulated answer is a function of the problem's uid and gold answer, so both are part
        # of its identity (a real model's answer depends on the messages alone).
        identity = {
            "name": "simulated",
            "seed": self.seed,
            "accuracy": self.accuracy,
            "accuracy_per_level": {str(k): v for k, v in sorted(self.accuracy_per_level.items())},
            "problem": {"uid": problem.uid, "answer": problem.answer},
        }
        return request_key(identity, cloud_messages(problem), {})

    def solves(self, problem: Problem) -> bool:
        acc = self.accuracy_per_level.get(problem.level, self.accuracy)
        h = hashlib.sha256(f"{self.seed}:{problem.uid}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < acc

    def wrong_answer(self, uid: str, answer: str) -> str:
        """A plausible wrong number for a problem the draw says it gets wrong."""
        rng = random.Random(f"{self.seed}:{uid}:wrong")
        try:
            return str(int(float(answer)) + rng.choice([-10, -2, -1, 1, 2, 10]))
        except ValueError:
            return "\\text{no answer}"

    def augment(self, p: Problem) -> str:
        """Offline augmentation: the simulator's Input/Response pairs for the source problem (none without one)."""
        return self.simulator.augment(self, p) if self.simulator is not None else ""

    def reply_text(self, p: Problem) -> str:
        """The answer to a task problem: the simulator's task-specific reply, else the gold (or a wrong number)
        in \\boxed{}."""
        text = self.simulator.reply(self, p) if self.simulator is not None else None
        if text is None:
            ans = p.answer if self.solves(p) else self.wrong_answer(p.uid, p.answer)
            text = f"Working it out carefully, the answer is \\boxed{{{ans}}}."
        return text

    def answer_many(self, problems: list[Problem], on_reply=None) -> list[CloudReply]:
        """The whole batch at once (``on_reply`` is left uncalled: see protocol.py)."""
        replies = []
        for p in problems:
            if is_augment(p):
                text = self.augment(p)
            elif is_query(p):  # a <query> mid-reasoning: evaluate its arithmetic, honestly
                text = answer_query(p.question) or SIMULATED_QUERY_FAILURE
            else:
                text = self.reply_text(p)
            prompt_words = sum(len(m["content"].split()) for m in cloud_messages(p))
            replies.append(CloudReply(text=text, prompt_tokens=prompt_words, completion_tokens=len(text.split())))
        return replies
