"""Adaptive prompt filtering (paper Algorithm 1, SPEC §5).

    picked, stats = select_prompts(groups, batch_prompts=8, rho=3/7, d1_rule="any_correct")

* D1: prompts the device can already solve: at least one local response correct
  (``any_correct``) or, by the paper's other wording, both right and wrong local
  responses (``mixed``).
* D2: prompts no local response solves but the cloud does; at most ρ·|D1| of them.
  Query mode (envs/query.py): "local" means without any cloud call, so D1 = some rollout
  solved it with no ``<query>`` and no escalation; D2 = none did, but some rollout solved it
  with help (``group.cloud_correct`` is set that way by the query environment).
* The update batch mixes D1 : D2 as 1/(1+ρ) : ρ/(1+ρ).  Prompts that teach nothing
  -- zero reward variance (e.g. all correct), or unsolved by device and cloud --
  are dropped, and so are prompts whose reward is unknown because the cloud failed
  for one of their rollouts (``group.trainable`` is False; envs/route.py).
"""

from __future__ import annotations

import math
from statistics import pvariance


def classify(group, d1_rule: str = "any_correct") -> str:
    """'d1', 'd2' or 'drop' for one group (rewards must already be set)."""
    if not group.trainable:
        return "drop"  # a rollout needed the cloud and it failed: its reward is unknown
    if len(group.rewards) and pvariance(group.rewards) == 0.0:
        return "drop"  # zero variance: every coefficient (r̃ − mean) is 0
    n_ok = sum(r.unaided_correct for r in group.rollouts)
    if d1_rule == "any_correct" and n_ok >= 1:
        return "d1"
    if d1_rule == "mixed" and n_ok >= 1 and n_ok < len(group.rollouts):
        return "d1"
    if n_ok == 0 and group.cloud_correct:
        return "d2"
    return "drop"


def select_prompts(groups, batch_prompts: int, rho: float, d1_rule: str = "any_correct"):
    """Indices of the groups to train on, and counts for logging."""
    kinds = [classify(g, d1_rule) for g in groups]
    d1 = [i for i, k in enumerate(kinds) if k == "d1"]
    d2 = [i for i, k in enumerate(kinds) if k == "d2"]
    n1 = min(len(d1), math.ceil(batch_prompts / (1.0 + rho) - 1e-9))
    n2 = min(len(d2), math.floor(rho * n1 + 1e-9), batch_prompts - n1)
    picked = d1[:n1] + d2[:n2]
    stats = {"d1_available": len(d1), "d2_available": len(d2), "d1": n1, "d2": n2, "dropped": len(groups) - len(d1) - len(d2)}
    return picked, stats
