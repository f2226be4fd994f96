"""The environment interface the trainer and the evaluation talk to; ``RouteEnv`` and ``QueryEnv`` implement it.

    env_cls = env_class_for(cfg)                # rl.env -> RouteEnv / QueryEnv: the one place the name is read
    env = env_cls.from_config(cfg, tokenizer, cloud)  # the training environment (rl/trainer.py: make_env)
    groups = env.rollout(generator, problems, group_size, temperature, top_p, max_new_tokens)  # -> list[Group]
    env.reward(groups, cfg.reward, gamma)       # fills each Group.rewards (r̃ = r − γ·cost, docs/method.md §3)
    used = env.usage_of(groups)                 # what the dual holds to the budget: offload rate / calls per rollout
    used = env.greedy_usage(generator, probe)   # the same usage of the greedy policy (rl.usage_signal=greedy)
    metrics = env.metrics(groups)               # the per-step training metrics (metrics.jsonl)
    rollout = env.judge(problem, sample)        # one greedy response graded (what the evaluation passes use)

That is all an environment is: a prompt, a rollout, a reward, a usage and metrics.  Evaluating a policy (the held-out
rows, eval.py's suites, the baselines) is the evaluation package's work (evaluation/), one layer above.

``rl.env=lsrp`` (envs/lsrp/) is a different pipeline, not an ``Environment``; ``env_class_for`` gives any name other
than ``query`` (lsrp too) the route environment, as the trainer and eval.py always did.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from envs.query import QueryEnv
from envs.route import RouteEnv

ENVIRONMENTS = {env.name: env for env in (RouteEnv, QueryEnv)}  # rl.env -> its class


def env_class_for(cfg) -> type[RouteEnv] | type[QueryEnv]:
    """The environment class ``cfg.rl.env`` names: route (answer or escalate) or query (ask mid-reasoning); route for
    any other name (lsrp).  The trainer (``rl/trainer.py: make_env``) and eval.py both pick the mode here."""
    return ENVIRONMENTS.get(cfg.rl.env, RouteEnv)


@runtime_checkable
class Environment(Protocol):
    name: str  # rl.env: "route" or "query"
    usage: str  # the constrained quantity as the training log names it: "offload" or "calls"
    usage_metric: str  # its metrics.jsonl key: "offload_rate_global" or "calls_per_rollout_global"
    template: str
    tokenizer: object
    cloud: object

    @classmethod
    def from_config(cls, cfg, tokenizer, cloud) -> Environment: ...

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

    def greedy_usage(self, generator, problems, max_new_tokens: int = 64) -> float: ...

    def metrics(self, groups) -> dict: ...

    def budget_text(self, budget: float) -> str: ...

    def judge(self, problem, sample): ...
