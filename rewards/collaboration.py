"""The collaboration reward and its Lagrangian form (docs/method.md §3); ``query_reward`` for the query mode.

    r  = α_a  if the device answered locally and is correct
         α_c  if it escalated and the cloud's answer is correct
         0    otherwise
    r̃ = r − γ · 1{charged}

``charge="all_escalations"`` charges every cloud call (the paper's eq. 18);
``charge="correct_escalations"`` charges only calls whose cloud answer is correct
(eq. 11, where a failed call already earns nothing).  α_c < α_a is essential:
α_c = α_a collapses the policy to always escalating.
"""

from __future__ import annotations


def collaboration_reward(
    escalated: bool,
    local_correct: bool,
    cloud_correct: bool,
    alpha_local: float = 1.0,
    alpha_cloud: float = 0.25,
    gamma: float = 0.0,
    charge: str = "all_escalations",
) -> float:
    if not escalated:
        return alpha_local if local_correct else 0.0
    reward = alpha_cloud if cloud_correct else 0.0
    if charge == "all_escalations" or (charge == "correct_escalations" and cloud_correct):
        reward -= gamma
    elif charge not in ("all_escalations", "correct_escalations"):
        raise ValueError(f"reward.charge={charge!r}: use all_escalations or correct_escalations")
    return reward


def query_reward(
    correct: bool,
    escalated: bool,
    cloud_correct: bool,
    calls: int,
    cloud_tokens: int = 0,
    alpha_local: float = 1.0,
    alpha_cloud: float = 0.25,
    gamma: float = 0.0,
    gamma_tokens: float = 0.0,
    charge: str = "all_escalations",
) -> float:
    """The query mode's reward (docs/method.md §1, §3): the same r, and a cost per call (and per cloud token).

        r  = α_a  if the device's final answer is correct (with or without <response> help)
             α_c  if it escalated with <unknown> and the cloud's answer is correct
             0    otherwise
        r̃ = r − γ · calls − γ_tok · cloud_tokens

    ``calls`` = answered ``<query>``s + the escalation; ``cloud_tokens`` = the prompt + completion
    tokens the cloud reported for them.  ``charge="all_escalations"`` charges every call (eq. 18);
    ``charge="correct_escalations"`` charges only rollouts that earned r > 0 (eq. 11's reading: a
    failed attempt already earns nothing).
    """
    if charge not in ("all_escalations", "correct_escalations"):
        raise ValueError(f"reward.charge={charge!r}: use all_escalations or correct_escalations")
    reward = collaboration_reward(escalated, correct, cloud_correct, alpha_local, alpha_cloud)  # r, no charge yet
    if charge == "all_escalations" or reward > 0:
        reward -= gamma * calls + gamma_tokens * cloud_tokens
    return reward
