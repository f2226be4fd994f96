"""Adaptive prompt filtering (paper Algorithm 1, docs/method.md §5).

    picked, stats = select_prompts(groups, batch_prompts=8, rho=3/7, d1_rule="any_correct")

* D1: prompts the device can already solve: at least one local response correct
  (``any_correct``) or, by the paper's other wording, at least one local answer right
  and at least one local answer wrong (``mixed``; an escalation is not a local answer).
* D2: prompts no local response solves but the cloud does; about ρ·|D1| of them.
  Query mode (envs/query.py): "local" means without any cloud call, so D1 = some rollout
  solved it with no ``<query>`` and no escalation; D2 = none did, but some rollout solved it
  with help (``group.cloud_correct`` is set that way by the query environment).
* The update batch mixes D1 : D2 as 1/(1+ρ) : ρ/(1+ρ), as closely as integers allow:
  the D2 count is the one whose share n2/(n1+n2) is nearest ρ/(1+ρ) (ties: the larger
  batch), with n1 = min(|D1|, B − n2).  D1 is the anchor: no batch is D2 alone.
  ``rounding="expected"`` (``rl.d2_rounding``) rounds the D2 count at random instead, so that
  its *mean* over steps is the real-valued x = ρ·|D1| (x = B·ρ/(1+ρ) when that overfills B):
  n2 = ⌊x⌋ + 1{u < x − ⌊x⌋}, u ~ U[0, 1).  With few D1 prompts and a small budget the nearest
  share is always n2 = 0 (|D1| = 2 at ρ = 1/9: one D2 prompt would be a 33% share), so
  escalation is never trained; the expected rounding trains one D2 prompt 22% of such steps.
  ρ = ∞ (a query-mode budget of a call per problem or more) takes every D2 prompt.
  Prompts that teach nothing
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
    n_wrong = sum(r.unaided and not r.unaided_correct for r in group.rollouts)  # local answers that are wrong
    if d1_rule == "any_correct" and n_ok >= 1:
        return "d1"
    if d1_rule == "mixed" and n_ok >= 1 and n_wrong >= 1:
        return "d1"
    if n_ok == 0 and group.cloud_correct:
        return "d2"
    return "drop"


def batch_mix(n_d1: int, n_d2: int, batch_prompts: int, rho: float) -> tuple[int, int]:
    """(n1, n2): how many D1 and D2 prompts to train on, the D2 share as near ρ/(1+ρ) as integers allow.

    Every n2 in 0..min(|D2|, B) is tried with n1 = min(|D1|, B − n2); the nearest share wins, ties going to the
    larger batch, then to fewer D2 prompts.  B = 6 at ρ = 3/7 gives 4 : 2 (33% against 30%), B = 8 gives 6 : 2."""
    share = 1.0 if math.isinf(rho) else rho / (1.0 + rho)
    best, best_key = (0, 0), None  # no D1 prompt: no batch
    for n2 in range(0, min(n_d2, batch_prompts) + 1):
        n1 = min(n_d1, batch_prompts - n2)
        if n1 == 0:  # no batch of D2 prompts alone: they teach escalation only next to what the device can do
            continue
        key = (round(abs(n2 / (n1 + n2) - share), 12), -(n1 + n2), n2)
        if best_key is None or key < best_key:
            best, best_key = (n1, n2), key
    return best


def expected_mix(n_d1: int, n_d2: int, batch_prompts: int, rho: float, u: float) -> tuple[int, int]:
    """(n1, n2) with the D2 count rounded at random (``u`` uniform in [0, 1)) so that its mean is
    x = ρ·min(|D1|, B), or B·ρ/(1+ρ) when D1 and ρ·D1 would overfill the batch; n1 = min(|D1|, B − n2)."""
    n1_max = min(n_d1, batch_prompts)
    if n1_max == 0 or math.isinf(rho):
        return batch_mix(n_d1, n_d2, batch_prompts, rho)  # no anchor, or every D2 prompt (ρ = ∞)
    x = rho * n1_max if n1_max * (1.0 + rho) <= batch_prompts else batch_prompts * rho / (1.0 + rho)
    n2 = min(math.floor(x) + (u < x - math.floor(x)), n_d2, batch_prompts - 1)
    return min(n_d1, batch_prompts - n2), n2


def select_prompts(
    groups, batch_prompts: int, rho: float, d1_rule: str = "any_correct", rounding: str = "nearest", u: float = 0.0
):
    """Indices of the groups to train on, and counts for logging.  ``rounding``: ``nearest`` (``batch_mix``) or
    ``expected`` (``expected_mix`` with the uniform draw ``u``)."""
    kinds = [classify(g, d1_rule) for g in groups]
    d1 = [i for i, k in enumerate(kinds) if k == "d1"]
    d2 = [i for i, k in enumerate(kinds) if k == "d2"]
    if rounding == "expected":
        n1, n2 = expected_mix(len(d1), len(d2), batch_prompts, rho, u)
    else:
        n1, n2 = batch_mix(len(d1), len(d2), batch_prompts, rho)
    picked = d1[:n1] + d2[:n2]
    stats = {
        "d1_available": len(d1),
        "d2_available": len(d2),
        "d1": n1,
        "d2": n2,
        "dropped": len(groups) - len(d1) - len(d2),
    }
    return picked, stats
