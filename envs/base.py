"""The environment interface the trainer and the evaluation talk to; ``RouteEnv`` and ``QueryEnv`` implement it.

    groups = env.rollout(generator, problems, group_size, temperature, top_p, max_new_tokens)  # -> list[Group]
    env.reward(groups, cfg.reward, gamma)       # fills each Group.rewards (r̃ = r − γ·cost, SPEC §3)
    used = env.usage_of(groups)                 # what the dual holds to the budget: offload rate / calls per rollout
    metrics = env.metrics(groups)               # the per-step training metrics (metrics.jsonl)
    rows, records = env.evaluate(generator, problems, budget, batch_size, max_new_tokens, seed)  # held-out rows

``rl.env=lsrp`` (envs/lsrp/) is a different pipeline, not an ``Environment``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Environment(Protocol):
    name: str  # rl.env: "route" or "query"
    usage: str  # the constrained quantity as the training log names it: "offload" or "calls"
    usage_metric: str  # its metrics.jsonl key: "offload_rate_global" or "calls_per_rollout_global"
    template: str
    tokenizer: object
    cloud: object

    def prompt(self, problem) -> str: ...

    def rollout(
        self,
        generator,
        problems,
        group_size: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
    ) -> list: ...

    def reward(self, groups, reward_cfg, gamma: float) -> None: ...

    def usage_of(self, groups) -> float: ...

    def metrics(self, groups) -> dict: ...

    def budget_text(self, budget: float) -> str: ...

    def evaluate(
        self,
        generator,
        problems,
        budget: float,
        batch_size: int = 32,
        max_new_tokens: int = 64,
        seed: int = 0,
        progress=True,
    ) -> tuple[list[dict], list[dict]]: ...
