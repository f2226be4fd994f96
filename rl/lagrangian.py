"""Lagrange multiplier γ for the cloud-usage constraint (SPEC §3).

Constraint E[1{cloud}] ≤ ρ E[1{local}], i.e. offload share ≤ ρ/(1+ρ) = budget.
The paper keeps γ fixed; dual ascent is the natural Lagrangian extension:

    γ ← max(0, γ + η · (offload_rate − ρ/(1+ρ)))

Query mode (rl.env=query): the constraint is on calls, E[calls per problem] ≤ budget, and the
same update runs on the mean calls per rollout (answered queries + escalations) in place of
the offload rate: γ ← max(0, γ + η · (calls_per_rollout − budget)).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DualVariable:
    gamma: float = 0.0
    lr: float = 0.0  # η; 0 keeps γ fixed (the paper's setting)
    budget: float = 0.3  # ρ/(1+ρ): the allowed cloud share

    def update(self, offload_rate: float) -> float:
        self.gamma = max(0.0, self.gamma + self.lr * (offload_rate - self.budget))
        return self.gamma
