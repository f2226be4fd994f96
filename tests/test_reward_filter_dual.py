import pytest

from core.problem import Problem
from envs.format import is_escalation
from envs.rollout import Group, Rollout
from rewards.collaboration import collaboration_reward
from rl.filtering import classify, select_prompts
from rl.lagrangian import DualVariable, gamma_controller
from settings import rho


@pytest.mark.parametrize(
    "esc,local,cloud,charge,expected",
    [
        (False, True, False, "all_escalations", 1.0),
        (False, False, True, "all_escalations", 0.0),
        (True, False, True, "all_escalations", 0.25 - 0.1),
        (True, False, False, "all_escalations", -0.1),  # eq. 18: a failed call is charged too
        (True, False, True, "correct_escalations", 0.25 - 0.1),
        (True, False, False, "correct_escalations", 0.0),  # eq. 11: only successful calls pay γ
        (True, True, True, "all_escalations", 0.25 - 0.1),  # escalated: the local answer does not count
    ],
)
def test_collaboration_reward_variants(esc, local, cloud, charge, expected):
    assert collaboration_reward(esc, local, cloud, 1.0, 0.25, 0.1, charge) == pytest.approx(expected)


def test_unknown_tag_counts_only_at_the_end():
    assert is_escalation("Step 1: hmm.\n<unknown> I need external assistance </unknown>")
    assert is_escalation("<unknown>help</unknown>  \n")
    assert not is_escalation("<unknown> I need external assistance </unknown> Actually the answer is \\boxed{4}.")
    assert not is_escalation("I might write <unknown> but then \\boxed{3}")
    assert not is_escalation("</unknown>")


def _group(uid, local, escalate, cloud_correct, rewards):
    rolls = [
        Rollout(None, e, None, l and not e, device_correct=l, cloud_correct=e and bool(cloud_correct))
        for l, e in zip(local, escalate)
    ]
    return Group(Problem(uid, "q", "1"), rolls, cloud_correct=cloud_correct, rewards=rewards)


def _rewarded(uid, local, escalate, cloud_correct, gamma=0.0):
    rewards = [
        collaboration_reward(e, l and not e, e and bool(cloud_correct), 1.0, 0.25, gamma)
        for l, e in zip(local, escalate)
    ]
    return _group(uid, local, escalate, cloud_correct, rewards)


def test_classify_d1_d2_drop():
    F, T = False, True
    mixed = _rewarded("a", [T, F, F, F], [F, F, F, T], True)
    assert classify(mixed) == "d1"
    all_right = _rewarded("b", [T, T, T, T], [F, F, F, F], None)
    assert classify(all_right) == "drop"  # zero variance
    d2 = _rewarded("c", [F, F, F, F], [F, T, F, F], True)
    assert classify(d2) == "d2"
    hopeless = _rewarded("d", [F, F, F, F], [F, T, F, F], False, gamma=0.1)
    assert classify(hopeless) == "drop"  # neither device nor cloud solves it
    one_right_rest_escalate = _rewarded("e", [T, F, F, F], [F, T, T, T], True)
    assert classify(one_right_rest_escalate, "any_correct") == "d1"
    all_right_one_esc = _rewarded("f", [T, T, T, F], [F, F, F, T], True)
    assert classify(all_right_one_esc, "mixed") == "drop"  # no local answer is wrong: the escalation is not one


def test_select_prompts_mix_follows_rho():
    F, T = False, True
    d1 = [_rewarded(f"d1-{i}", [T, F, F, F], [F, F, F, F], None) for i in range(10)]
    d2 = [_rewarded(f"d2-{i}", [F, F, F, F], [T, F, F, F], True) for i in range(10)]
    junk = [_rewarded(f"x-{i}", [F, F, F, F], [F, F, F, F], False) for i in range(3)]
    groups = d1[:5] + d2[:5] + junk + d1[5:] + d2[5:]
    picked, stats = select_prompts(groups, batch_prompts=10, rho=rho(0.3))  # rho = 3/7
    # D1 share 1/(1+rho) = 0.7 -> 7 prompts, D2 <= rho*7 = 3
    assert stats["d1"] == 7 and stats["d2"] == 3 and stats["dropped"] == 3
    assert stats["d1_available"] == 10 and stats["d2_available"] == 10
    assert all(groups[i].problem.uid.startswith("d1") for i in picked[:7])
    assert all(groups[i].problem.uid.startswith("d2") for i in picked[7:])


def test_select_prompts_caps_d2_at_rho_times_d1():
    F, T = False, True
    groups = [_rewarded("d1", [T, F, F, F], [F, F, F, F], None)] + [
        _rewarded(f"d2-{i}", [F] * 4, [T, F, F, F], True) for i in range(8)
    ]
    picked, stats = select_prompts(groups, batch_prompts=8, rho=1.0)
    assert stats["d1"] == 1 and stats["d2"] == 1 and len(picked) == 2


def test_dual_ascent_moves_gamma_toward_budget():
    dual = DualVariable(gamma=0.1, lr=0.5, budget=0.3)
    assert dual.update(0.8) == pytest.approx(0.1 + 0.5 * 0.5)  # over budget: γ grows
    assert dual.update(0.1) == pytest.approx(0.35 - 0.5 * 0.2)  # under budget: γ shrinks
    assert dual.update(0.0) == 0.1 and dual.update(0.0) == 0.0  # never negative
    fixed = DualVariable(gamma=0.2, lr=0.0, budget=0.3)
    assert fixed.update(1.0) == 0.2


def test_gamma_max_stops_the_windup_and_gamma_comes_down_from_the_cap_at_once():
    """Seven steps at 60% offload against a 30% budget: unbounded, γ climbs to 1.05 (past α_c = 0.4, where escalating
    earns less than a wrong local answer) and needs 4 steps at 0% to fall back under α_c; capped at 0.4 it falls
    under at once."""
    free, capped = DualVariable(0.0, 0.5, 0.3), DualVariable(0.0, 0.5, 0.3, cap=0.4)
    for _ in range(7):
        free.update(0.6), capped.update(0.6)
    assert free.gamma == pytest.approx(1.05) and capped.gamma == 0.4
    assert capped.update(0.0) == pytest.approx(0.25)
    assert [round(free.update(0.0), 2) for _ in range(4)] == [0.9, 0.75, 0.6, 0.45]
    from settings import load_config

    from_cfg = DualVariable.from_config(load_config("configs/tiny_test.yaml", ["rl.gamma_max=0.4"]).rl)
    assert from_cfg.cap == 0.4  # the trainer's and routing DPO's dual carry the bound


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["rl.gamma_max=-1"], "rl.gamma_lr and rl.gamma_max must be >= 0"),
        (["rl.gamma=0.5", "rl.gamma_max=0.4"], "above rl.gamma_max"),
    ],
)
def test_gamma_max_bad_values_are_named(overrides, needle):
    from settings import ConfigError, load_config

    with pytest.raises(ConfigError, match=needle):
        load_config("configs/tiny_test.yaml", overrides)


def test_mixed_rule_needs_a_wrong_local_answer_where_any_correct_does_not():
    """The paper's "mixed": at least one local answer right and at least one local answer wrong.

    [right, right, escalate, escalate] has non-zero reward variance (1, 1, .25, .25), so it is not dropped as
    zero-variance; no local answer is wrong, so ``mixed`` leaves it out of D1 while ``any_correct`` keeps it.
    With a wrong local answer added, both rules agree."""
    F, T = False, True
    right_or_escalate = _rewarded("g", [T, T, F, F], [F, F, T, T], True)
    assert classify(right_or_escalate, "any_correct") == "d1"
    assert classify(right_or_escalate, "mixed") == "drop"
    right_wrong_escalate = _rewarded("h", [T, F, F, F], [F, F, T, T], True)
    assert classify(right_wrong_escalate, "any_correct") == classify(right_wrong_escalate, "mixed") == "d1"
    # the two rules select different batches from the same groups
    groups = [right_or_escalate, right_wrong_escalate]
    assert select_prompts(groups, 2, rho(0.3), "any_correct")[0] == [0, 1]
    assert select_prompts(groups, 2, rho(0.3), "mixed")[0] == [1]


@pytest.mark.parametrize("batch,n1,n2", [(6, 4, 2), (8, 6, 2), (12, 8, 4), (128, 90, 38)])
def test_batch_mix_reaches_the_budget_share_as_closely_as_integers_allow(batch, n1, n2):
    """ρ = 3/7 (a 30% budget) with plenty of both kinds: the D2 share is the nearest integer share to 30%."""
    from rl.filtering import batch_mix

    got = batch_mix(100, 100, batch, rho(0.3))
    assert got == (n1, n2)
    best = min(abs(k / batch - 0.3) for k in range(batch + 1))
    assert abs(got[1] / batch - 0.3) == pytest.approx(best)  # no other integer split is nearer the share


def test_batch_mix_when_one_kind_is_short():
    from rl.filtering import batch_mix

    assert batch_mix(2, 10, 6, rho(0.3)) == (2, 1)  # D1 short: 1 of 3 (33%) is nearest 30%
    assert batch_mix(10, 1, 6, rho(0.3)) == (5, 1)  # D2 short: all of it, D1 fills the batch
    assert batch_mix(0, 10, 6, rho(0.3)) == (0, 0)  # never D2 alone
    assert batch_mix(10, 0, 6, rho(0.3)) == (6, 0)
    assert batch_mix(10, 10, 6, float("inf")) == (1, 5)  # ρ = ∞: as much D2 as the batch holds, next to D1


def test_query_budget_is_calls_per_problem():
    import math

    from settings import ConfigError, load_config

    assert rho(0.3, "query") == pytest.approx(3 / 7)
    assert math.isinf(rho(1.5, "query")) and math.isinf(rho(1.0, "query"))
    cfg = load_config(None, ["rl.env=query", "rl.budget=1.5"])  # one and a half calls per problem is a valid budget
    assert cfg.rl.budget == 1.5
    with pytest.raises(ConfigError, match="calls per problem"):
        load_config(None, ["rl.env=query", "rl.budget=0"])
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        load_config(None, ["rl.env=route", "rl.budget=1.5"])


@pytest.mark.parametrize("path", ["configs/math_qwen2.5_1.5b.yaml", "configs/countdown_qwen2.5_1.5b.yaml"])
def test_paper_configs_train_with_the_lagrangian_penalty(path):
    """The paper configs hold the budget with the PID on the greedy probe; dual ascent and the paper's fixed γ
    (rl.gamma_controller=dual rl.gamma_lr=0) are the documented variants."""
    from rl.pid_lagrangian import PIDLagrangian
    from settings import load_config

    cfg = load_config(path, [])
    assert (cfg.rl.gamma_controller, cfg.rl.greedy_usage) == ("pid", True)
    pid = gamma_controller(cfg.rl)  # as the trainer and routing DPO build it
    assert isinstance(pid, PIDLagrangian)
    assert pid.update(cfg.rl.budget + 0.2) > cfg.rl.gamma  # over budget: the penalty rises
    dual = gamma_controller(load_config(path, ["rl.gamma_controller=dual"]).rl)
    assert isinstance(dual, DualVariable) and dual.lr > 0
    assert "rl.gamma_controller=dual rl.gamma_lr=0" in open(path).read()


def test_select_prompts_at_six_prompts_trains_two_d2_prompts():
    """B = 6 at a 30% budget: 4 D1 + 2 D2 (33%), not 5 + 1 (17%) as the old ceil/floor rule gave."""
    F, T = False, True
    d1 = [_rewarded(f"d1-{i}", [T, F, F, F], [F, F, F, F], None) for i in range(8)]
    d2 = [_rewarded(f"d2-{i}", [F, F, F, F], [T, F, F, F], True) for i in range(8)]
    picked, stats = select_prompts(d1 + d2, batch_prompts=6, rho=rho(0.3))
    assert (stats["d1"], stats["d2"]) == (4, 2) and len(picked) == 6


def test_expected_rounding_trains_d2_at_small_budgets_where_the_nearest_share_never_does():
    """ρ = 1/9 (a 10% budget), 2 D1 prompts: the nearest share is always 0 D2 prompts (1 would be 33%); rounding at
    random trains one D2 prompt with probability ρ·2 = 2/9, so the mean over steps is ρ·|D1|."""
    from rl.filtering import batch_mix, expected_mix

    r = rho(0.1)
    assert batch_mix(2, 3, 6, r) == (2, 0)
    draws = [expected_mix(2, 3, 6, r, u=(k + 0.5) / 900) for k in range(900)]  # u spread evenly over [0, 1)
    assert {d[0] for d in draws} == {2}
    assert sum(d[1] for d in draws) / len(draws) == pytest.approx(2 / 9, abs=1e-3)
    # a full batch: x = B·ρ/(1+ρ) = 6 · 0.3 = 1.8 at a 30% budget -> 1 or 2 D2 prompts, 1.8 on average
    full = [expected_mix(10, 10, 6, rho(0.3), u=(k + 0.5) / 1000) for k in range(1000)]
    assert {d for d in full} == {(5, 1), (4, 2)} and sum(d[1] for d in full) / 1000 == pytest.approx(1.8, abs=1e-3)
    assert expected_mix(2, 0, 6, r, u=0.0) == (2, 0)  # no D2 prompt to take
    assert expected_mix(0, 5, 6, r, u=0.0) == (0, 0)  # never D2 alone
    assert expected_mix(10, 10, 6, float("inf"), u=0.5) == (1, 5)  # ρ = ∞: as batch_mix


def test_the_trainer_draws_the_rounding_from_seed_and_step():
    """rl.d2_rounding=expected in select(): the same (seed, step) picks the same prompts; nearest ignores the draw."""
    from rl.trainer import select
    from settings import load_config

    F, T = False, True
    groups = [_rewarded(f"d1-{i}", [T, F, F, F], [F, F, F, F], None) for i in range(2)]
    groups += [_rewarded(f"d2-{i}", [F, F, F, F], [T, F, F, F], True) for i in range(2)]
    cfg = load_config(
        "configs/tiny_test.yaml", ["rl.d2_rounding=expected", "rl.batch_prompts=6", "rl.rollout_prompts=6"]
    )
    picks = [len(select(groups, cfg, rho(0.1), step)[0]) for step in range(60)]
    assert picks == [len(select(groups, cfg, rho(0.1), step)[0]) for step in range(60)]  # reproducible
    assert set(picks) == {2, 3} and 0 < picks.count(3) < 30  # about 2/9 of the steps train a D2 prompt
    nearest = load_config("configs/tiny_test.yaml", ["rl.batch_prompts=6", "rl.rollout_prompts=6"])
    assert {len(select(groups, nearest, rho(0.1), step)[0]) for step in range(20)} == {2}
