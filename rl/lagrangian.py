"""Lagrange multiplier γ for the cloud-usage constraint (docs/method.md §3).

Constraint E[1{cloud}] ≤ ρ E[1{local}], i.e. offload share ≤ ρ/(1+ρ) = budget.
The paper keeps γ fixed; dual ascent is the natural Lagrangian extension:

    γ ← max(0, γ + η · (offload_rate − ρ/(1+ρ)))

Query mode (rl.env=query): the constraint is on calls, E[calls per problem] ≤ budget, and the
same update runs on the mean calls per rollout (answered queries + escalations) in place of
the offload rate: γ ← max(0, γ + η · (calls_per_rollout − budget)).

An optional upper bound (``rl.gamma_max``, e.g. α_c) stops γ winding up while the policy lags behind it:
γ ← min(γ_max, max(0, γ + η · (usage − budget))).  At γ = α_c a correct cloud answer earns 0, no more than a
wrong local answer, so a larger γ buys nothing a budget needs (docs/budget_dynamics.md, section 4).

A negative lower bound ``rl.gamma_min`` (default 0) turns the budget from a ceiling into a target: under the budget
γ goes below 0, a bonus of |γ| per cloud call, so a policy whose own reward optimum escalates less than the budget is
pushed up to it: γ ← min(γ_max, max(γ_min, γ + η · (usage − budget))).

``rl.gamma_controller`` picks how γ moves: ``dual`` (this update; ``rl.gamma_lr=0`` is the paper's fixed γ) or
``pid`` (rl/pid_lagrangian.py: the PID Lagrangian of Stooke et al. 2020, with this update as its integral term).
``gamma_controller(cfg.rl)`` builds the one the config names; the trainer (rl/trainer.py) and routing DPO
(rl/dpo.py) both get theirs from it.  Both share the ``GammaController`` interface: ``gamma`` (the γ the next
rewards charge), ``update(usage) -> γ``, and ``state_dict``/``load_state_dict`` for checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rl.pid_lagrangian import PIDLagrangian, clamp_gamma


class GammaController(Protocol):
    """What the trainers use of γ's controller (DualVariable or PIDLagrangian)."""

    gamma: float

    def update(self, usage: float) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class DualVariable:
    gamma: float = 0.0
    lr: float = 0.0  # η; 0 keeps γ fixed (the paper's setting)
    budget: float = 0.3  # ρ/(1+ρ): the allowed cloud share
    cap: float = 0.0  # γ_max; 0 = no upper bound
    floor: float = 0.0  # γ_min: 0 = the budget is a ceiling; < 0 = a target

    @classmethod
    def from_config(cls, rl) -> DualVariable:
        """The dual variable of an ``rl`` config section (rl.gamma, rl.gamma_lr, rl.budget, rl.gamma_max,
        rl.gamma_min)."""
        return cls(rl.gamma, rl.gamma_lr, rl.budget, rl.gamma_max, rl.gamma_min)

    def update(self, offload_rate: float) -> float:
        self.gamma = clamp_gamma(self.gamma + self.lr * (offload_rate - self.budget), self.floor, self.cap)
        return self.gamma

    def state_dict(self) -> dict:
        return {"controller": "dual", "gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; any controller's state (a PID's too) carries its γ, and γ is all the dual keeps."""
        self.gamma = float(state["gamma"])


def gamma_controller(rl) -> GammaController:
    """The controller of γ that ``rl.gamma_controller`` names, built from the ``rl`` config section."""
    return PIDLagrangian.from_config(rl) if rl.gamma_controller == "pid" else DualVariable.from_config(rl)
