"""What the simulated cloud knows about the tasks, injected into it from here (policies/cloud/ knows no task).

    cloud = task_cloud(cfg.cloud, cache_path)          # make_cloud(..., simulator=TaskSimulator())
    SimulatedCloud(accuracy=0.6, seed=7, simulator=TaskSimulator())

``TaskSimulator`` gives ``SimulatedCloud`` the two task-specific behaviours it has no language model for:

* ``reply``: Countdown's reply is an equation in ``<answer> </answer>`` (the gold solution when the seeded draw says
  the cloud solves the problem, else the numbers summed); every other task gets the cloud's generic ``\\boxed{}``
  answer (``None`` here);
* ``augment``: task-tuning augmentation (envs/augment.py) draws k new problems of the source's kind from the task
  generator (the arithmetic ladder, Countdown) and writes them as Input/Response pairs, each answer right as often as
  the cloud's accuracy says; other tasks get nothing.

The replies, their token counts and every cache key are exactly those of the simulated cloud before the two were
separated: the draws use the same seeds, and a simulator is not part of the cache identity.
"""

from __future__ import annotations

from core.problem import Problem
from envs import arithmetic, countdown
from policies.cloud import CachedCloud, make_cloud


class TaskSimulator:
    """The task layer's side of ``SimulatedCloud`` (its ``simulator``); ``cloud`` is that SimulatedCloud."""

    def reply(self, cloud, p: Problem) -> str | None:
        if "numbers" in p.meta:  # countdown: the cloud writes an equation
            eq = p.meta["solution"] if cloud.solves(p) else " + ".join(map(str, p.meta["numbers"]))
            return f"<think> Let me search for a combination. </think>\n<answer> {eq} </answer>"
        return None

    def augment(self, cloud, p: Problem) -> str:
        """k generated problems of the source's kind as Input/Response pairs.  Each answer is right iff the seeded
        draw for that new problem says so (accuracy per the source's level)."""
        src, k = p.meta.get("source_meta", {}), int(p.meta.get("k", 1))
        pairs = []
        if "op" in src:  # the arithmetic ladder
            for j, s in enumerate(arithmetic.similar_problems(src, k, f"{cloud.seed}:{p.uid}:similar")):
                new = Problem(uid=f"{p.uid}:{j}", question=s["question"], answer=str(s["value"]), level=p.level)
                value = new.answer if cloud.solves(new) else cloud.wrong_answer(new.uid, new.answer)
                pairs.append((s["question"], arithmetic.worked_response(s["a"], s["op"], s["b"], value)))
        elif "numbers" in src:  # Countdown
            for j, s in enumerate(countdown.similar_problems(k, f"{cloud.seed}:{p.uid}:similar")):
                new = Problem(uid=f"{p.uid}:{j}", question=s["question"], answer=str(s["target"]), level=p.level)
                eq = s["solution"] if cloud.solves(new) else " + ".join(map(str, s["numbers"]))
                pairs.append((s["question"], countdown.worked_response(s["numbers"], s["target"], eq)))
        return "\n\n".join(f"Input: {q}\nResponse: {r}" for q, r in pairs)


TASK_SIMULATOR = TaskSimulator()


def task_cloud(cfg, cache_path: str | None) -> CachedCloud:
    """``make_cloud`` for the tasks of this package: the simulated backend gets ``TASK_SIMULATOR``."""
    return make_cloud(cfg, cache_path, simulator=TASK_SIMULATOR)
