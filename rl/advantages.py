"""Advantage estimators for the ablation (docs/method.md §4): GAPG against GRPO and Dr.GRPO in the same trainer.

    accelerate launch train.py --config configs/cpu_default.yaml rl.advantage=grpo

Every estimator enters one loss, with the same rollouts, filtering, dual and update (rl/trainer.py):

    L = −1/P Σ_x Σ_i c_i · log π_θ(y_i | x) / n_i

with log π_θ(y | x) the sum over the device tokens, P the prompts in the update, and

    gapg     c_i = (r̃_i − mean r̃) / (G − 1)                n_i = 1        (paper; rl/gapg.py)
    grpo     c_i = (r̃_i − mean r̃) / ((std r̃ + ε) · G)      n_i = |y_i|    (the original GRPO loss, TRL's
             loss_type="grpo": the group's sample std, ε = 1e-4, each response's token mean, the mean over the
             G responses; TRL 1.16 defaults to loss_type="dapo", a token mean over the whole batch)
    dr_grpo  c_i = (r̃_i − mean r̃) / G                      n_i = L        (Dr.GRPO: no std, a constant
             normaliser L = rl.max_new_tokens instead of each response's length)

GRPO's std normalisation makes a group of near-equal rewards (one cloud call among G local failures) weigh as
much as a decisive one, which is how it drifts to escalating everything (the paper: 100% cloud within ~8
iterations); GAPG and Dr.GRPO differ only in a constant scale (Adam removes most of it).
"""

from __future__ import annotations

from typing import Literal

import torch

from rl.gapg import group_advantages

Estimator = Literal["gapg", "grpo", "dr_grpo"]
ESTIMATORS = ("gapg", "grpo", "dr_grpo")
GRPO_EPS = 1e-4  # TRL's epsilon in (r - mean) / (std + eps)


def advantage_coefficients(rewards: torch.Tensor, estimator: Estimator) -> torch.Tensor:
    """(P, G) rewards -> (P, G) coefficients c_i of the module docstring (0 where a reward equals its group mean)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"advantage estimator {estimator!r}: use one of {', '.join(ESTIMATORS)}")
    gapg = group_advantages(rewards)  # (r − mean) / (G − 1), exactly 0 at the mean
    if estimator == "gapg":
        return gapg
    G = rewards.shape[1]
    centred = gapg * (G - 1)
    if estimator == "dr_grpo":
        return centred / G
    std = rewards.std(dim=1, keepdim=True)  # unbiased, as torch.std and TRL
    return centred / (std + GRPO_EPS) / G


def length_normalisers(estimator: Estimator, device_tokens: list[int], max_new_tokens: int) -> torch.Tensor:
    """n_i of the module docstring for each sequence: 1 (gapg), its device-token count (grpo), L (dr_grpo)."""
    if estimator == "gapg":
        return torch.ones(len(device_tokens))
    if estimator == "grpo":
        return torch.tensor([max(n, 1) for n in device_tokens], dtype=torch.float32)
    return torch.full((len(device_tokens),), float(max_new_tokens))
