"""PID Lagrangian: γ set by a PID controller on the cloud usage (``rl.gamma_controller=pid``).

    accelerate launch train.py --config configs/cpu_default.yaml rl.gamma_controller=pid rl.pid_kp=0.5 rl.pid_ki=0.2

Stooke, Achiam & Abbeel, *Responsive Safety in Reinforcement Learning by PID Lagrangian Methods* (ICML 2020),
Algorithm 2.  Plain dual ascent (rl/lagrangian.py) is its integral term alone: γ integrates the error, so it keeps
rising while the policy lags behind it (windup) and then overshoots below the budget, and it swings around the
budget before it settles.  A proportional term answers the error at once and lets the integral gain be smaller; a
derivative term raises γ while the usage is rising, before it crosses the budget.  At step k, with u_k the measured
usage (offload rate in route mode, calls per rollout in query mode), b = rl.budget, γ_max = rl.gamma_max
(∞ when 0) and γ_min = rl.gamma_min (0 by default: the budget is a ceiling; negative: a target, under which γ pays
a bonus per cloud call; rl/lagrangian.py):

    (1) e_k = u_k − b                                                    the error
    (2) I_k = min(γ_max, max(γ_min, I_{k−1} + K_I · e_k)), I_0 = rl.gamma   the integral, anti-windup at both ends
    (3) ē_k = α ē_{k−1} + (1 − α) e_k,                   ē_1 = e_1        the smoothed error (α = rl.pid_ema)
    (4) ū_k = α ū_{k−1} + (1 − α) u_k,                   ū_1 = u_1        the smoothed usage
    (5) Δ_k = max(0, ū_k − ū_{k−d}),   d = rl.pid_d_delay;  Δ_k = 0 before ū_{k−d} exists
                                                                          the rise of the usage
    (6) γ_k = min(γ_max, max(γ_min, K_P · ē_k + I_k + K_D · Δ_k))

(2) keeps the integral in units of γ (K_I times the paper's I, the same for a fixed K_I), so it starts at rl.gamma
(no jump at step 1) and with K_P = K_D = 0, K_I = η it is exactly the dual step γ ← min(γ_max, max(γ_min, γ + η e)).
The integral never goes below γ_min (0 by default: the paper's anti-windup, a long phase under the budget stores no
credit) and never above γ_max (a bound on γ that the integral could pass would store windup it has to unwind
first).  The derivative counts only rises of the usage, as in the paper: a falling usage does not lower γ faster
than (1) and (2) do.

Taken from OmniSafe's ``omnisafe/common/pid_lagrange.py`` (``PIDLagrangian.pid_update``): the integral kept in γ
units and started at the initial multiplier; EMAs on the proportional error and on the usage the derivative
differences (one weight α here for both, OmniSafe's ``pid_delta_p_ema_alpha``/``pid_delta_d_ema_alpha``); the
derivative against the smoothed usage ``pid_d_delay`` steps back.  Differences: the EMAs start at the first
measurement rather than at 0, and the derivative is 0 until ``pid_d_delay`` earlier values exist (OmniSafe compares
the first step with 0, a kick of +u_1 on step 1); the integral is bounded by γ_max too, not only γ.  OmniSafe's
``sum_norm``/``diff_norm`` (dividing the objective by 1 + λ, or clipping λ to [0, 1] and mixing (1 − λ)·r − λ·c)
are not taken: here γ is a cost in the units of the reward (r̃ = r − γ per cloud call, docs/method.md §3), and
rl.gamma_max = α_c is the natural bound on it.

``update`` returns γ_k, which the next step's rewards charge; ``state_dict``/``load_state_dict`` carry the integral,
the EMAs and the derivative's history through a checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def clamp_gamma(x: float, floor: float, cap: float) -> float:
    """γ kept in [γ_min, γ_max] (γ_max = 0: no upper bound): the bound of (2) and (6), and of the dual step."""
    x = max(floor, x)
    return min(cap, x) if cap else x


@dataclass
class PIDLagrangian:
    kp: float = 0.0  # K_P: proportional gain
    ki: float = 0.0  # K_I: integral gain (per step, in γ per unit of error)
    kd: float = 0.0  # K_D: derivative gain
    budget: float = 0.3  # b: the allowed usage
    gamma: float = 0.0  # γ_0 = I_0 (rl.gamma); afterwards the last output γ_k
    cap: float = 0.0  # γ_max; 0 = no upper bound
    ema: float = 0.0  # α: weight of the past in the EMAs (3), (4); 0 = no smoothing
    d_delay: int = 1  # d: the derivative's look-back in steps
    floor: float = 0.0  # γ_min: 0 = the budget is a ceiling; < 0 = a target
    integral: float = field(init=False)  # I_k
    error_ema: float | None = field(default=None, init=False)  # ē_k (None before the first update)
    usage_ema: float | None = field(default=None, init=False)  # ū_k
    usage_history: deque = field(init=False)  # ū_{k−d} ... ū_{k−1}

    def __post_init__(self):
        self.integral = self.gamma
        self.usage_history = deque(maxlen=self.d_delay)

    @classmethod
    def from_config(cls, rl) -> PIDLagrangian:
        """The PID controller of an ``rl`` config section (rl.pid_kp, pid_ki, pid_kd, budget, gamma, gamma_max,
        pid_ema, pid_d_delay, gamma_min)."""
        return cls(
            rl.pid_kp, rl.pid_ki, rl.pid_kd, rl.budget, rl.gamma, rl.gamma_max, rl.pid_ema, rl.pid_d_delay, rl.gamma_min
        )

    def bounded(self, x: float) -> float:
        return clamp_gamma(x, self.floor, self.cap)

    def update(self, usage: float) -> float:
        error = usage - self.budget  # (1)
        self.integral = self.bounded(self.integral + self.ki * error)  # (2)
        a = self.ema
        self.error_ema = error if self.error_ema is None else a * self.error_ema + (1 - a) * error  # (3)
        self.usage_ema = usage if self.usage_ema is None else a * self.usage_ema + (1 - a) * usage  # (4)
        rise = max(0.0, self.usage_ema - self.usage_history[0]) if len(self.usage_history) == self.d_delay else 0.0
        self.usage_history.append(self.usage_ema)  # (5): the oldest entry is ū_{k−d} at the next update
        self.gamma = self.bounded(self.kp * self.error_ema + self.integral + self.kd * rise)  # (6)
        return self.gamma

    def state_dict(self) -> dict:
        return {
            "controller": "pid",
            "gamma": self.gamma,
            "integral": self.integral,
            "error_ema": self.error_ema,
            "usage_ema": self.usage_ema,
            "usage_history": list(self.usage_history),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``.  A state without the PID's fields (a dual-ascent checkpoint, or one written before
        the controller was selectable: ``{"gamma": γ}``) starts the integral at its γ, as a fresh run starts it at
        rl.gamma."""
        self.gamma = float(state["gamma"])
        own = state.get("controller") == "pid"
        self.integral = float(state["integral"]) if own else self.gamma
        self.error_ema = state["error_ema"] if own else None
        self.usage_ema = state["usage_ema"] if own else None
        self.usage_history = deque(state["usage_history"] if own else [], maxlen=self.d_delay)
