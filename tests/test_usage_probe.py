"""rl.usage_signal=greedy: γ follows the greedy policy's usage on training problems held out of training."""

import json
import os

import pytest
from test_eval_cap import ESC, PlainTok, ScriptedGenerator
from test_train_e2e import COMMON

import train
from core.problem import Problem
from envs.route import RouteEnv
from policies.cloud import CachedCloud, SimulatedCloud
from settings import ConfigError, load_config


def test_route_greedy_usage_is_the_share_the_greedy_policy_escalates_with_no_cloud_call():
    probs = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1)) for i in range(10)]
    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), None)
    env = RouteEnv("arithmetic", PlainTok(), cloud, few_shot=False)
    escalate = {1, 4, 7}  # a hand count: 3 of 10; one ends with the tag after an answer, one has a stray tag first
    outputs = {}
    for i, p in enumerate(probs):
        text = ESC if i in (1, 4) else ("\\boxed{8} " + ESC if i == 7 else f"\\boxed{{{i + 1}}}")
        outputs[env.prompt(p)] = "<unknown> hm </unknown> \\boxed{3}" if i == 9 else text
    assert env.greedy_usage(ScriptedGenerator(outputs), probs) == len(escalate) / len(probs)
    assert len(cloud) == 0  # deciding needs no cloud answer


def test_split_probe_holds_out_the_last_problems_and_refuses_a_probe_that_leaves_none():
    """GAPG and routing DPO hold out the last rl.probe_size training problems as the probe (rl/trainer.py:
    split_probe); a probe as large as the training set is refused with the keys to change; no probe with dual."""
    from rl.trainer import split_probe

    problems = list(range(10))
    cfg = load_config(None, ["rl.probe_size=3"])  # the PID default: the greedy probe
    assert split_probe(cfg, problems) == (list(range(7)), [7, 8, 9])
    with pytest.raises(ConfigError, match="rl.probe_size=10 leaves no training problems of 10"):
        split_probe(load_config(None, ["rl.probe_size=10"]), problems)
    assert split_probe(load_config(None, ["rl.gamma_controller=dual", "rl.probe_size=10"]), problems) == (problems, [])


def test_greedy_signal_needs_a_probe():
    with pytest.raises(ConfigError, match="probe_size"):
        load_config(None, ["rl.usage_signal=greedy", "rl.probe_size=0"])


@pytest.mark.slow
def test_train_with_the_greedy_signal_steps_gamma_on_the_probe_and_never_trains_on_it(tiny_model_dir, tmp_path):
    out = str(tmp_path / "run")
    args = COMMON + [
        f"model.name_or_path={tiny_model_dir}",
        f"train.output_dir={out}",
        "train.max_steps=3",
        "rl.usage_signal=greedy",
        "rl.probe_size=8",
        "rl.probe_every=2",
        "rl.budget=0.3",
    ]
    assert train.main(["--config", "configs/tiny_test.yaml", *args]) == 0
    steps = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    cfg = load_config("configs/tiny_test.yaml", args)
    from envs.tasks import load_problems

    probe = {p.uid for p in load_problems(cfg.task)[0][-8:]}
    assert all(not probe & set(m["problem_uids"]) for m in steps)  # the probe is never trained on
    assert ["usage_greedy" in m for m in steps] == [False, True, False]  # measured every 2 steps
    # dual ascent on the greedy usage, γ held between probes: γ' = max(0, γ + η (greedy − budget))
    assert steps[0]["gamma_next"] == steps[0]["gamma"] == 0.05
    want = max(0.0, 0.05 + 0.5 * (steps[1]["usage_greedy"] - 0.3))
    assert steps[1]["gamma_next"] == pytest.approx(want)
    assert steps[2]["gamma"] == steps[2]["gamma_next"] == pytest.approx(want)
