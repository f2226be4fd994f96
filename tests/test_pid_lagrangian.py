"""The PID Lagrangian for γ (rl/pid_lagrangian.py) and the one factory that builds γ's controller (rl/lagrangian.py).

OMP_NUM_THREADS=1 python -m pytest -q tests/test_pid_lagrangian.py
"""

import ast
import json
import random
from types import SimpleNamespace

import pytest

from rl.checkpoint import load_trainer_state, save_checkpoint
from rl.lagrangian import DualVariable, gamma_controller
from rl.pid_lagrangian import PIDLagrangian
from settings import ConfigError, load_config

TINY = "configs/tiny_test.yaml"


def test_pid_update_matches_the_equations_by_hand():
    """Four steps of (1)-(6) with every term on: K_P 0.5, K_I 0.2, K_D 1, α 0.5, d 1, b 0.3, γ_0 = I_0 = 0.1."""
    pid = PIDLagrangian(kp=0.5, ki=0.2, kd=1.0, budget=0.3, gamma=0.1, ema=0.5)
    # u=0.5: e 0.2, I 0.1+0.04, ē 0.2 (first), ū 0.5 (first), Δ 0 (no earlier ū): γ = 0.1 + 0.14
    assert pid.update(0.5) == pytest.approx(0.24)
    # u=0.7: e 0.4, I 0.22, ē 0.3, ū 0.6, Δ 0.6−0.5: γ = 0.15 + 0.22 + 0.1
    assert pid.update(0.7) == pytest.approx(0.47)
    # u=0.1: e −0.2, I 0.18, ē 0.05, ū 0.35, Δ max(0, 0.35−0.6) = 0: γ = 0.025 + 0.18
    assert pid.update(0.1) == pytest.approx(0.205)
    # u=0.0: e −0.3, I 0.12, ē −0.125, ū 0.175, Δ 0: γ = −0.0625 + 0.12
    assert pid.update(0.0) == pytest.approx(0.0575)
    assert pid.integral == pytest.approx(0.12) and pid.gamma == pytest.approx(0.0575)


def test_pid_derivative_looks_d_delay_steps_back():
    pid = PIDLagrangian(kd=1.0, d_delay=2)
    got = [pid.update(u) for u in (0.3, 0.4, 0.5, 0.45, 0.2)]
    # steps 1-2: no ū two steps back; then 0.5−0.3, 0.45−0.4, max(0, 0.2−0.5)
    assert got == pytest.approx([0.0, 0.0, 0.2, 0.05, 0.0])


def test_pid_integral_never_stores_a_negative_credit():
    """Twenty steps at 0 usage against a 30% budget: the integral stays at 0 (not −1.2), so the first step over the
    budget raises γ at once."""
    pid = PIDLagrangian(kp=0.5, ki=0.2, budget=0.3)
    assert all(pid.update(0.0) == 0.0 for _ in range(20))
    assert pid.integral == 0.0
    assert pid.update(0.5) == pytest.approx(0.5 * 0.2 + 0.2 * 0.2)  # K_P e + I, I = 0 + K_I e


def test_pid_integral_stops_at_gamma_max_and_gamma_comes_down_at_once():
    """Ten steps at 90% usage: the integral stops at γ_max = 0.4 (not 1.2), so one step under the budget brings γ
    under the bound; an integral that kept climbing would hold γ at the bound."""
    pid = PIDLagrangian(kp=0.5, ki=0.2, budget=0.3, cap=0.4)
    assert [round(pid.update(0.9), 6) for _ in range(10)] == [0.4] * 10
    assert pid.integral == pytest.approx(0.4)
    assert pid.update(0.2) == pytest.approx(-0.05 + 0.38)  # e −0.1: K_P e + (0.4 − 0.02)


def test_a_negative_gamma_min_makes_the_budget_a_target_for_both_controllers():
    """rl.gamma_min = −0.4: under the budget γ goes below 0 (a bonus per cloud call) down to the floor, and the
    integral stops there too, so one step over the budget brings γ back up at once."""
    pid = PIDLagrangian(kp=0.5, ki=0.2, budget=0.3, floor=-0.4)
    # u=0.1: e −0.2, I −0.04, γ = −0.1 − 0.04; u=0.0: e −0.3, I −0.1, γ = −0.15 − 0.1
    assert [pid.update(0.1), pid.update(0.0)] == pytest.approx([-0.14, -0.25])
    assert [round(pid.update(0.0), 6) for _ in range(10)][-1] == -0.4 and pid.integral == pytest.approx(-0.4)
    assert pid.update(0.4) == pytest.approx(0.05 - 0.38)  # e +0.1: K_P e + (−0.4 + 0.02)
    dual = DualVariable(gamma=0.0, lr=0.5, budget=0.3, floor=-0.4)
    assert [dual.update(0.1), dual.update(0.0), dual.update(0.0)] == pytest.approx([-0.1, -0.25, -0.4])
    assert dual.update(0.5) == pytest.approx(-0.3)
    cfg = load_config(TINY, ["rl.gamma_controller=pid", "rl.gamma_min=-0.4"])
    assert gamma_controller(cfg.rl).floor == -0.4
    assert gamma_controller(load_config(TINY, ["rl.gamma_min=-0.4"]).rl).floor == -0.4
    assert PIDLagrangian(kp=0.5, budget=0.3).update(0.0) == 0.0  # the default floor keeps γ >= 0


def test_pid_with_only_the_integral_is_dual_ascent():
    rng = random.Random(0)
    usage = [rng.random() for _ in range(50)]
    for cap in (0.0, 0.3):
        pid, dual = PIDLagrangian(ki=0.5, budget=0.3, gamma=0.1, cap=cap), DualVariable(0.1, 0.5, 0.3, cap)
        assert [pid.update(u) for u in usage] == pytest.approx([dual.update(u) for u in usage])


@pytest.mark.parametrize(
    "make", [lambda: PIDLagrangian(0.5, 0.2, 1.0, 0.3, 0.1, 0.6, 0.5, 2), lambda: DualVariable(0.1, 0.5, 0.3)]
)
def test_state_dict_round_trip_resumes_exactly(make):
    rng = random.Random(1)
    usage = [rng.random() for _ in range(12)]
    run = make()
    for u in usage[:6]:
        run.update(u)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(run.state_dict())))  # through JSON, as the checkpoint stores it
    assert [resumed.update(u) for u in usage[6:]] == [run.update(u) for u in usage[6:]]


def test_pid_state_matters_and_a_gamma_only_state_starts_the_integral_there():
    """A checkpoint from before the controller was saved has only γ: the PID starts its integral at that γ, as a new
    run starts it at rl.gamma, and a step on the budget keeps γ there.  A full state is not the same as γ alone."""
    old = PIDLagrangian(kp=0.5, ki=0.2, budget=0.3)
    old.load_state_dict({"gamma": 0.25})
    assert old.integral == 0.25 and old.update(0.3) == pytest.approx(0.25)
    run = PIDLagrangian(kp=0.5, ki=0.2, kd=1.0, budget=0.3, ema=0.5)
    for u in (0.8, 0.6, 0.7):
        run.update(u)
    gamma_only = PIDLagrangian(kp=0.5, ki=0.2, kd=1.0, budget=0.3, ema=0.5)
    gamma_only.load_state_dict({"gamma": run.gamma})
    assert gamma_only.update(0.5) != pytest.approx(run.update(0.5))
    dual = DualVariable(0.0, 0.5, 0.3)
    dual.load_state_dict(run.state_dict())  # switching controllers on resume carries γ over
    assert dual.gamma == run.gamma


def test_checkpoint_saves_the_controller_and_old_checkpoints_still_load(tmp_path):
    cfg = SimpleNamespace(train=SimpleNamespace(output_dir=str(tmp_path), keep_checkpoints=2))
    accelerator = SimpleNamespace(save_state=lambda path: None, is_main_process=True, wait_for_everyone=lambda: None)
    pid = PIDLagrangian(kp=0.5, ki=0.2, kd=1.0, budget=0.3, ema=0.5)
    for u in (0.8, 0.6, 0.7):
        pid.update(u)
    ckpt = tmp_path / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    save_checkpoint(accelerator, cfg, 3, pid)
    resumed = PIDLagrangian(kp=0.5, ki=0.2, kd=1.0, budget=0.3, ema=0.5)
    assert load_trainer_state(str(ckpt), resumed) == 3
    assert resumed.update(0.4) == pytest.approx(pid.update(0.4))
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 7, "gamma": 0.25}))  # written before this change
    dual = DualVariable(0.0, 0.5, 0.3)
    assert load_trainer_state(str(ckpt), dual) == 7 and dual.gamma == 0.25


def test_resuming_under_another_controller_warns_with_the_key_to_set(tmp_path, caplog):
    """A dual-ascent checkpoint (or one from before the PID existed) resumed by a PID run: γ goes on, with a warning
    that names rl.gamma_controller=dual; the same controller resumes silently."""
    ckpt = tmp_path / "step-3"
    ckpt.mkdir()
    state = {"step": 3, "gamma": 0.2, "gamma_controller": {"controller": "dual", "gamma": 0.2}}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with caplog.at_level("WARNING", logger="train"):
        assert load_trainer_state(str(ckpt), PIDLagrangian(kp=0.5, ki=0.2)) == 3
    assert "rl.gamma_controller=dual" in caplog.text and "0.200" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="train"):
        load_trainer_state(str(ckpt), DualVariable(0.0, 0.5, 0.3))
    assert caplog.text == ""


def test_the_config_names_the_controller_and_the_pid_on_the_probe_is_the_default():
    """The library default is the PID on the greedy probe (rl.usage_signal=auto resolves to greedy);
    rl.gamma_controller=dual alone restores dual ascent on the sampled usage; the tiny test config pins dual."""
    default = load_config(None, []).rl
    assert (default.gamma_controller, default.usage_signal, default.greedy_usage) == ("pid", "auto", True)
    assert isinstance(gamma_controller(default), PIDLagrangian)
    old = load_config(None, ["rl.gamma_controller=dual"]).rl
    assert (old.gamma_controller, old.greedy_usage) == ("dual", False)
    assert load_config(None, ["rl.gamma_controller=dual", "rl.usage_signal=greedy"]).rl.greedy_usage
    assert not load_config(None, ["rl.usage_signal=sampled"]).rl.greedy_usage
    dual = gamma_controller(load_config(TINY, ["rl.gamma_lr=0.5", "rl.gamma_max=0.4"]).rl)
    assert isinstance(dual, DualVariable) and (dual.lr, dual.cap) == (0.5, 0.4)
    pid = gamma_controller(
        load_config(
            TINY,
            ["rl.gamma_controller=pid", "rl.pid_kp=0.3", "rl.pid_ki=0.1", "rl.pid_kd=2", "rl.pid_ema=0.5"]
            + ["rl.pid_d_delay=3", "rl.gamma=0.05", "rl.gamma_max=0.4", "rl.budget=0.2"],
        ).rl
    )
    assert isinstance(pid, PIDLagrangian)
    assert (pid.kp, pid.ki, pid.kd, pid.ema, pid.d_delay) == (0.3, 0.1, 2.0, 0.5, 3)
    assert (pid.gamma, pid.integral, pid.cap, pid.budget) == (0.05, 0.05, 0.4, 0.2)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["rl.gamma_controller=pi"], "rl.gamma_controller"),
        (["rl.pid_kp=-0.1"], "rl.pid_kp=-0.1 must be >= 0"),
        (["rl.pid_kd=-1"], "rl.pid_kd=-1.0 must be >= 0"),
        (["rl.pid_ki=nan"], "rl.pid_ki=nan must be a finite number"),
        (["rl.pid_ema=1"], r"rl.pid_ema=1.0 must lie in \[0, 1\)"),
        (["rl.pid_ema=-0.1"], "rl.pid_ema"),
        (["rl.pid_d_delay=0"], "rl.pid_d_delay=0 must be >= 1"),
        (["rl.gamma_min=0.1"], "rl.gamma_min=0.1 must be <= 0"),
        (["rl.gamma=-0.1"], "rl.gamma=-0.1 is below rl.gamma_min=0.0"),
        (["rl.gamma_controller=pid", "rl.pid_kp=0", "rl.pid_ki=0", "rl.pid_kd=0"], "rl.gamma_controller=dual"),
    ],
)
def test_bad_pid_settings_are_named_with_the_fix(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(TINY, overrides)


def simulate(controller, lag: float, steps: int = 60, usage: float = 0.6) -> list[float]:
    """A plant for γ: the policy's usage moves a share ``lag`` of the way toward target(γ) = clip(0.6 − 1.5 γ, 0, 1)
    each step (usage 0.3 at γ = 0.2), and the controller sets γ from each step's usage.  Returns u_0 ... u_steps."""
    trace = [usage]
    for _ in range(steps):
        gamma = controller.update(usage)
        usage += lag * (min(1.0, max(0.0, 0.6 - 1.5 * gamma)) - usage)
        trace.append(usage)
    return trace


@pytest.mark.parametrize("lag", [0.5, 0.25])
def test_pid_settles_on_the_budget_where_dual_ascent_overshoots(lag):
    """From 60% usage against a 30% budget, γ starting at 0.  Dual ascent at the default step (η = 0.5) keeps
    raising γ while the usage lags behind it, takes the usage more than 3 points under the budget (to 24% with
    lag 0.5, to 19% with lag 0.25), and swings back over it.  The PID (K_P 0.5, K_I 0.2, the config's defaults)
    comes down to the budget without passing under the ±3-point band, is in it by step 15 and stays there."""
    budget, band = 0.3, 0.03
    dual = simulate(DualVariable(0.0, 0.5, budget), lag)
    pid = simulate(PIDLagrangian(kp=0.5, ki=0.2, budget=budget), lag)
    low = min(range(len(dual)), key=dual.__getitem__)
    assert dual[low] < budget - band  # overshoot under the budget (the windup)
    assert max(dual[low:]) > budget  # and back over it (an oscillation)
    assert min(pid) >= budget - band
    assert all(abs(u - budget) <= band for u in pid[15:])
    assert abs(pid[-1] - budget) < 1e-3


def test_the_trainer_and_dpo_build_the_controller_through_the_one_factory():
    """rl/trainer.py, rl/dpo.py and the training-step benchmark name no controller class: each calls
    gamma_controller(cfg.rl) once, the factory of rl/lagrangian.py."""
    import rl.dpo
    import rl.lagrangian
    import rl.trainer

    assert rl.trainer.gamma_controller is rl.lagrangian.gamma_controller is rl.dpo.gamma_controller
    for path in ("rl/trainer.py", "rl/dpo.py", "benchmarks/bench_train_step.py"):
        tree = ast.parse(open(path).read())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not names & {"DualVariable", "PIDLagrangian"}, path
        calls = [
            n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "gamma_controller"
        ]
        assert [ast.unparse(c) for c in calls] == ["gamma_controller(cfg.rl)"], path
