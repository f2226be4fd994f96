"""What a rollout is, in both environments: the shared types and the steps that route and query mode share.

    groups = [Group(problem, [Rollout(sample, escalated, answer, correct) ...]) ...]   # env.rollout's result
    ask_cloud_for_escalations(cloud, [g for g in groups if any(r.escalated for r in g.rollouts)])
    route_metrics(groups)            # the per-step training metrics of metrics.jsonl
    calls_per_rollout(groups)        # the usage the dual variable holds to the budget

``Rollout`` is one device response and what came of it (escalated? correct? the cloud's verdict); ``QueryRollout``
adds the ``<query>`` calls of the query mode (envs/query.py).  ``Group`` holds the G rollouts of one problem, their
rewards, and the cloud's cached verdict on the problem.  The escalation step, asking the cloud once per problem and
grading its answer, is ``ask_cloud_for_escalations``: the route and query environments both call it.

Cloud failures.  When the cloud cannot answer (``CloudError``: retries exhausted on 429/5xx/timeouts, a 400 for one
request), the answers that did arrive are used (they are cached as they come), and each problem still without one
gets ``Group.cloud_error``.  Its escalated responses are marked ``cloud_failed``: they stay escalations (never graded
as device answers), their reward is unknown, and the group is left out of the update (``Group.trainable``;
``route_metrics`` counts them in ``cloud_errors``).  The step goes on.  A ``CloudConfigError`` (401/403/404: the
key, the URL or the model is wrong, so every request would fail) is raised.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from core.problem import Problem
from policies.cloud import CloudConfigError, CloudError
from policies.generation import Sample
from rewards.grading import grade_response

log = logging.getLogger(__name__)


def check_prompt_tokens(problem: Problem, n_tokens: int, limit: int) -> None:
    """Refuse a prompt longer than rl.max_prompt_tokens (0 = no limit) with the fix in the message."""
    if limit and n_tokens > limit:
        raise ValueError(
            f"Problem {problem.uid} has a {n_tokens}-token prompt, over rl.max_prompt_tokens="
            f"{limit}. Raise rl.max_prompt_tokens or drop long problems from the data."
        )


@dataclass
class Rollout:
    """One response of the device and what came of it."""

    sample: Sample
    escalated: bool
    local_answer: str | None
    local_correct: bool  # answered locally (no escalation) and correct
    device_correct: bool = False  # the device's own answer (text before a final escalation) is correct
    cloud_correct: bool = False  # meaningful only when escalated
    cloud_failed: bool = False  # it needed the cloud (escalation, query) and the cloud failed: its reward is unknown
    cloud_tokens: int = 0  # prompt + completion tokens the cloud reported for every call it made

    @property
    def calls(self) -> int:
        """Cloud calls this response made (route: the escalation, if any)."""
        return int(self.escalated)

    @property
    def unaided(self) -> bool:
        """Answered by the device alone, with no cloud help (route: did not escalate)."""
        return not self.escalated

    @property
    def unaided_correct(self) -> bool:
        """Correct without any cloud help (adaptive filtering's D1 test)."""
        return self.local_correct and self.unaided


@dataclass
class Group:
    """G responses to one problem, plus the cloud's (cached) verdict on it when it was asked."""

    problem: Problem
    rollouts: list[Rollout]
    cloud_text: str | None = None
    cloud_correct: bool | None = None  # None: the cloud was not asked for this problem
    rewards: list[float] = field(default_factory=list)
    cloud_error: str | None = None  # the cloud failed for this problem (the CloudError's message)

    @property
    def any_local_correct(self) -> bool:
        return any(r.local_correct and not r.escalated for r in self.rollouts)

    @property
    def trainable(self) -> bool:
        """False when a rollout needed the cloud and it failed: that reward is unknown, so the update skips the
        group."""
        return not any(r.cloud_failed for r in self.rollouts)


def cloud_replies_or_none(cloud, problems: list[Problem], what: str = "problems", config_errors_raise: bool = True):
    """``(cloud.answer_many(problems), None)``, or after a ``CloudError``
    ``(replies with None where none arrived, message)``.

    Answers received before the failure are committed to the cache as they arrive; ``cloud.lookup`` reads them back
    without calling the backend again.  ``config_errors_raise=False`` (serving) treats a ``CloudConfigError`` as any
    other failure: the service goes on with the device's answers."""
    try:
        return cloud.answer_many(problems), None
    except CloudError as e:
        if config_errors_raise and isinstance(e, CloudConfigError):
            raise  # a wrong key, URL or model fails every request: stop and say what to fix
        got = cloud.lookup(problems) if hasattr(cloud, "lookup") else [None] * len(problems)
        log.warning(
            "cloud failed for %d of %d %s; in training their rollouts are left out of the update and counted in "
            "cloud_errors. Cause: %s",
            sum(r is None for r in got),
            len(problems),
            what,
            e,
        )
        return got, str(e)


def route_metrics(groups: list[Group]) -> dict:
    """The per-step training metrics every environment logs: reward, offload, accuracies, cloud failures, stray tags."""
    rolls = [r for g in groups for r in g.rollouts]
    local = [r for r in rolls if not r.escalated]
    per_level = defaultdict(list)
    for g in groups:
        per_level[g.problem.level] += [r.escalated for r in g.rollouts]
    # a group whose cloud call failed has no known reward: it is left out of the reward (and of the update)
    scored = [x for g in groups if g.trainable for x in g.rewards]
    answered = [r for r in rolls if r.escalated and not r.cloud_failed]
    return {
        "reward": sum(scored) / len(scored) if scored else float("nan"),
        "offload_rate": sum(r.escalated for r in rolls) / max(len(rolls), 1),
        "device_acc": sum(r.local_correct for r in local) / max(len(local), 1),
        "cloud_acc": sum(r.cloud_correct for r in answered) / max(len(answered), 1),
        "truncated": sum(r.sample.truncated for r in rolls) / max(len(rolls), 1),
        "offload_by_level": {str(k): sum(v) / len(v) for k, v in sorted(per_level.items())},
        # the cloud failed (CloudError) for this many problems; their rollouts that needed it were not trained on
        "cloud_errors": sum(g.cloud_error is not None for g in groups),
        "cloud_failed_rollouts": sum(r.cloud_failed for r in rolls),
        # an <unknown>/</unknown> tag that is not a final escalation (unbalanced, or text after it):
        # graded as the device's answer
        "stray_tags": sum(
            ("<unknown>" in r.sample.text or "</unknown>" in r.sample.text) and not r.escalated
            for r in rolls
            if not getattr(r, "wanted_escalation", False)
        )
        / max(len(rolls), 1),
    }


def calls_per_rollout(groups: list[Group]) -> float:
    """Cloud calls per rollout over all groups: the quantity the dual variable holds to the budget."""
    return sum(r.calls for g in groups for r in g.rollouts) / max(sum(len(g.rollouts) for g in groups), 1)


@dataclass
class QueryRollout(Rollout):
    """One multi-turn rollout: ``escalated``/``cloud_correct`` as in route, plus its queries."""

    queries: list[str] = field(default_factory=list)  # the questions the cloud answered, in order
    refused: int = 0  # queries past the call limit (answered "call limit reached"; not calls)
    wanted_escalation: bool = False  # ended with <unknown>; ``escalated`` is False when the call limit refused it

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def calls(self) -> int:
        """Cloud calls: answered queries + the escalation."""
        return len(self.queries) + int(self.escalated)

    @property
    def unaided(self) -> bool:
        """Answered by the device alone: no answered ``<query>`` and no escalation."""
        return not self.queries and not self.escalated

    @property
    def unaided_correct(self) -> bool:
        return self.local_correct and self.unaided

    @property
    def correct(self) -> bool:
        """The final answer is right: the cloud's when it escalated, the device's (helped or not) otherwise."""
        return self.cloud_correct if self.escalated else self.local_correct


def ask_cloud_for_escalations(cloud, groups: list[Group]) -> None:
    """The escalation step of both environments: the cloud answers each group's whole problem once (cached), its
    answer is graded into ``Group.cloud_text``/``cloud_correct``, and every escalated rollout of the group takes that
    verdict and the call's tokens.  A problem the cloud failed on gets ``Group.cloud_error`` and its escalated
    rollouts ``cloud_failed`` (their reward is unknown)."""
    if not groups:
        return
    replies, error = cloud_replies_or_none(cloud, [g.problem for g in groups])
    for g, rep in zip(groups, replies):
        if rep is None:  # the cloud failed for this problem: escalations stay escalations, with no verdict
            g.cloud_error = error
            for r in g.rollouts:
                r.cloud_failed = r.cloud_failed or r.escalated
            continue
        g.cloud_text = rep.text
        g.cloud_correct = grade_response(g.problem, rep.text)[1]
        for r in g.rollouts:
            if r.escalated:
                r.cloud_correct = g.cloud_correct
                r.cloud_tokens += rep.prompt_tokens + rep.completion_tokens
