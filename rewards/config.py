"""The ``reward`` config section: the collaboration reward's α_a, α_c and who pays γ (rewards/collaboration.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import ConfigError, Section, option


@dataclass
class RewardConfig(Section):
    section = "reward"

    alpha_local: float = option(1.0, "α_a: reward for a correct local answer (docs/method.md §3).")
    alpha_cloud: float = option(
        0.25, "α_c: reward when it escalates and the cloud is correct. Must be < alpha_local (docs/method.md §3)."
    )
    charge: Literal["all_escalations", "correct_escalations"] = option(
        "all_escalations",
        "Who pays the Lagrangian γ: all_escalations (every cloud call, paper eq. 18) or "
        "correct_escalations (only calls whose cloud answer is correct, paper eq. 11).",
    )

    def check(self) -> None:
        self.require_finite("alpha_local", "alpha_cloud")
        if not self.alpha_cloud < self.alpha_local:
            raise ConfigError(
                f"reward.alpha_cloud={self.alpha_cloud} must be < reward.alpha_local={self.alpha_local}: "
                "with α_c >= α_a the policy collapses to always escalating (docs/method.md §3). Paper values: 0.2-0.6."
            )
