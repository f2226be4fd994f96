"""The ``route`` collaboration environment (docs/method.md §1): answer locally, or end with ``<unknown>`` to escalate.

    env = RouteEnv(template="arithmetic", tokenizer=tok, cloud=cloud)
    groups = env.rollout(generator, problems, group_size=8, temperature=1.0, max_new_tokens=64)

For each problem the device policy writes G responses ``y^θ``.  A response whose
*end* is ``<unknown> ... </unknown>`` is collaborative: the cloud's answer ``y^c``
(asked once per problem, cached) is appended and graded; otherwise the device's
own answer is graded.  Only the ``y^θ`` tokens are kept for training
(``loss_mask``); cloud tokens never enter the policy's loss.

``escalation=False`` (``task.escalation=false``) is the task-tuning environment: the prompt offers no escalation
(envs/prompts.py ``SOLVE_*``), a response that still ends with the tag is a wrong answer (not escalated, device
answer wrong, so its reward is 0 and no cloud is called), and the reward is accuracy, α_a·1{correct}.

The types (``Rollout``, ``Group``), the escalation step and what happens when the cloud fails are shared with the
query mode: envs/rollout.py.  The evaluation of a route policy is the evaluation package's (evaluation/protocol.py).
"""

from __future__ import annotations

from core.problem import Problem
from envs.format import split_escalation
from envs.prompts import messages
from envs.rollout import (
    Group,
    Rollout,
    ask_cloud_for_escalations,
    calls_per_rollout,
    check_prompt_tokens,
    route_metrics,
)
from envs.tasks import template_for
from policies.generation import Sample, chat_prompt
from rewards.collaboration import collaboration_reward
from rewards.grading import grade_response


class RouteEnv:
    """Answer or escalate once (envs/base.py: ``Environment``); the budget caps the offload rate."""

    name = "route"
    usage = "offload"  # the constrained quantity, as the training log names it
    usage_metric = "offload_rate_global"

    def __init__(
        self,
        template: str,
        tokenizer,
        cloud,
        max_solve_steps: int = 6,
        few_shot: bool = True,
        system_prompt: str | None = None,
        max_prompt_tokens: int = 0,
        escalation: bool = True,
    ):
        self.template, self.tokenizer, self.cloud = template, tokenizer, cloud
        self.max_solve_steps, self.few_shot, self.system_prompt = max_solve_steps, few_shot, system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.escalation = escalation  # False: the task-tuning prompt; a tag is then a wrong answer

    @classmethod
    def from_config(cls, cfg, tokenizer, cloud) -> RouteEnv:
        """The training environment of ``cfg`` (rl/trainer.py: ``make_env``)."""
        return cls(
            template_for(cfg.task),
            tokenizer,
            cloud,
            cfg.task.max_solve_steps,
            max_prompt_tokens=cfg.rl.max_prompt_tokens,
            escalation=cfg.task.escalation,
        )

    def prompt(self, problem: Problem) -> str:
        msgs = messages(
            self.template,
            problem.question,
            self.max_solve_steps,
            self.few_shot,
            self.system_prompt,
            escalation=self.escalation,
        )
        return chat_prompt(self.tokenizer, msgs)

    def judge(self, problem: Problem, sample: Sample) -> Rollout:
        escalated, text = split_escalation(sample.text)
        answer, correct = grade_response(problem, text)
        if not self.escalation and escalated:  # no escalation offered: the tag is a wrong answer, not a cloud call
            return Rollout(sample, False, answer, False, device_correct=False)
        return Rollout(sample, escalated, answer, correct and not escalated, device_correct=correct)

    def rollout(
        self,
        generator,
        problems: list[Problem],
        group_size: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        ask_cloud_when_unsolved: bool = True,
    ) -> list[Group]:
        """Sample G responses per problem, grade them, and ask the cloud where it matters.

        The cloud is asked (once, cached) for a problem when some response escalated, and
        -- for the D2 rule of adaptive filtering -- when no local response is correct.  Without escalation
        (``escalation=False``) it is never asked: no response escalates, and an unsolved group's rewards are all 0.
        """
        samples = generator.generate(
            [self.prompt(p) for p in problems],
            n=group_size,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
        )
        for p, group in zip(problems, samples):
            check_prompt_tokens(p, len(group[0].prompt_ids), self.max_prompt_tokens)
        groups = [Group(p, [self.judge(p, s) for s in group]) for p, group in zip(problems, samples)]
        need = [
            g
            for g in groups
            if self.escalation
            and (any(r.escalated for r in g.rollouts) or (ask_cloud_when_unsolved and not g.any_local_correct))
        ]
        ask_cloud_for_escalations(self.cloud, need)
        return groups

    def reward(self, groups: list[Group], reward_cfg, gamma: float) -> None:
        """r̃ = r − γ·1{escalated} (rewards/collaboration.py, docs/method.md §3), into each ``Group.rewards``."""
        rc = reward_cfg
        for g in groups:
            g.rewards = [
                collaboration_reward(
                    r.escalated, r.local_correct, r.cloud_correct, rc.alpha_local, rc.alpha_cloud, gamma, rc.charge
                )
                for r in g.rollouts
            ]

    def usage_of(self, groups: list[Group]) -> float:
        """Escalations per rollout (the offload rate over all processes' groups): the dual constrains it."""
        return calls_per_rollout(groups)

    def greedy_usage(self, generator, problems: list[Problem], max_new_tokens: int = 64) -> float:
        """The share of ``problems`` the greedy policy escalates: its decisions alone, no cloud call (the usage the
        γ controller follows with rl.usage_signal=greedy)."""
        out = generator.generate(
            [self.prompt(p) for p in problems], n=1, temperature=0.0, max_new_tokens=max_new_tokens
        )
        return sum(split_escalation(g[0].text)[0] for g in out) / max(len(problems), 1)

    def metrics(self, groups: list[Group]) -> dict:
        return route_metrics(groups)

    def budget_text(self, budget: float) -> str:
        return f"{budget:.0%}"
