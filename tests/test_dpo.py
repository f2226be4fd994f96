"""rl.trainer=dpo: preference pairs from routing rollouts, the exact-token collator, and a tiny DPO run through
train.py."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import train
from core.problem import Problem
from envs.rollout import Group, Rollout
from policies.generation import Sample
from rl.dpo import exact_collator, preference_pairs
from settings import load_config

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_test.yaml")
PROBLEM = Problem(uid="t:1", question="What is 2 + 3?", answer="5", level=1)


def _group(texts_rewards, mask=None):
    rolls = [
        Rollout(Sample([1, 2, 3], [10 + i, 20 + i] if t != "dup" else [99, 99], t, False, mask), False, None, False)
        for i, (t, _) in enumerate(texts_rewards)
    ]
    return Group(PROBLEM, rolls, rewards=[r for _, r in texts_rewards])


def dpo_run_args(model_dir: str, out: str, *extra: str) -> list[str]:
    """train.py arguments of a tiny routing-DPO run (16 problems of 1+1, G=8, one epoch at a large lr)."""
    return [
        *("--config", TINY, f"model.name_or_path={model_dir}", "rl.trainer=dpo", f"train.output_dir={out}"),
        *("task.levels=[1+1]", "rl.group_size=8", "rl.rollout_prompts=8", "rl.max_new_tokens=10"),
        *("dpo.num_prompts=16", "dpo.num_epochs=1", "dpo.batch_size=4", "dpo.learning_rate=1e-2", "dpo.max_length=512"),
        *extra,
    ]


def test_pairs_prefer_the_higher_reward_and_drop_ties():
    g = _group([("right", 1.0), ("escalated", 0.4), ("escalated again", 0.4), ("wrong", 0.0)])
    pairs = preference_pairs([g])
    got = sorted((p["chosen"], p["rejected"]) for p in pairs)
    assert got == sorted(
        [
            ("right", "escalated"),
            ("right", "escalated again"),
            ("right", "wrong"),
            ("escalated", "wrong"),
            ("escalated again", "wrong"),
        ]
    )  # the 0.4/0.4 tie is dropped
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert pairs[0]["chosen"] == "right" and pairs[0]["rejected"] == "wrong"  # the largest gap comes first
    # the cap keeps the largest gaps; a group of equal rewards gives nothing
    assert [(p["chosen_reward"], p["rejected_reward"]) for p in preference_pairs([g], max_pairs_per_prompt=2)] == [
        (1.0, 0.0),
        (1.0, 0.4),
    ]
    assert preference_pairs([_group([("a", 0.4), ("b", 0.4)])]) == []
    # identical token sequences are never a pair, even with different (stale) rewards
    assert preference_pairs([_group([("dup", 1.0), ("dup", 0.0)])]) == []
    # exact ids and masks travel with the pair; route rollouts train every completion token
    p = pairs[0]
    assert (
        p["exact_prompt_ids"] == [1, 2, 3] and p["exact_chosen_ids"] == [10, 20] and p["exact_rejected_ids"] == [13, 23]
    )
    assert p["chosen_mask"] == [1, 1] and p["rejected_mask"] == [1, 1]


def test_collator_trains_only_device_tokens():
    ex = [
        {
            "exact_prompt_ids": [1, 2],
            "exact_chosen_ids": [5, 6, 7],
            "exact_rejected_ids": [8],
            "chosen_mask": [1, 0, 1],
            "rejected_mask": [1],
        },  # token 6 is a cloud <response> token (query mode)
        {
            "exact_prompt_ids": [3],
            "exact_chosen_ids": [9, 9],
            "exact_rejected_ids": [4, 4, 4],
            "chosen_mask": [1, 1],
            "rejected_mask": [0, 1, 1],
        },
    ]
    out = exact_collator(pad_token_id=0, max_length=None)(ex)
    assert out["input_ids"].tolist() == [[1, 2, 5, 6, 7], [3, 9, 9, 0, 0], [1, 2, 8, 0, 0], [3, 4, 4, 4, 0]]
    assert out["completion_mask"].tolist() == [[0, 0, 1, 0, 1], [0, 1, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0]]
    cut = exact_collator(pad_token_id=0, max_length=3)(ex)  # keep_start truncation cuts the masks the same way
    assert cut["completion_mask"].tolist() == [[0, 0, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1]]


def test_dpo_config_maps_the_dpo_section(tmp_path):
    from rl.dpo import dpo_args

    cfg = load_config(TINY, ["rl.trainer=dpo", f"train.output_dir={tmp_path}"])
    a = dpo_args(cfg, str(tmp_path))
    assert (a.beta, a.loss_type, a.learning_rate, a.num_train_epochs) == (0.1, ["sigmoid"], 5e-5, 3.0)
    assert a.per_device_train_batch_size == 2 and a.max_length == 1024 and a.remove_unused_columns is False


@pytest.mark.slow
def test_train_py_dpo_builds_pairs_trains_saves_and_evaluates(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "dpo")
    args = dpo_run_args(tiny_model_dir, out, "train.eval_before=true")
    assert train.main(args) == 0
    pairs = [json.loads(l) for l in open(os.path.join(out, "dpo_pairs.jsonl"))]
    assert pairs and all(len(p["chosen_mask"]) == len(p["exact_chosen_ids"]) for p in pairs)
    stats = json.load(open(os.path.join(out, "dpo_rollouts.json")))
    assert stats["problems"] == 16 and stats["rollouts"] == 128 and stats["pairs"] == len(pairs) <= 16 * 4
    logs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert logs and all("loss" in r for r in logs) and any("rewards/margins" in r for r in logs)
    # the reference is the policy before DPO (LoRA starts at zero): the first step's loss is -log σ(0) = ln 2
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    # final/ is a merged plain model (no adapter files) whose weights moved
    final = os.path.join(out, "final")
    AutoModelForCausalLM.from_pretrained(final)
    assert not os.path.exists(os.path.join(final, "adapter_config.json"))
    init, trained = (
        load_file(os.path.join(tiny_model_dir, "model.safetensors")),
        load_file(os.path.join(final, "model.safetensors")),
    )
    assert init.keys() == trained.keys() and any(not torch.equal(init[k], trained[k]) for k in init)
    for tag in ("before", "final"):  # evaluated like any checkpoint
        rows = json.load(open(os.path.join(out, "eval", f"{tag}.json")))
        assert [r["method"] for r in rows] == ["policy", "policy_never", "policy_random"] and rows[0]["n"] == 14


def test_dpo_with_no_pairs_says_what_to_change(tiny_model_dir, tmp_path):
    # one sample per prompt can never make a pair
    args = [
        "--config",
        TINY,
        f"model.name_or_path={tiny_model_dir}",
        "rl.trainer=dpo",
        f"train.output_dir={tmp_path}",
        "rl.group_size=2",
        "dpo.num_prompts=1",
        "rl.max_new_tokens=2",
        "task.levels=[3x2]",
    ]
    with pytest.raises(ValueError, match="dpo.num_prompts"):
        train.main(args)


@pytest.mark.slow
def test_dpo_rounds_take_the_dual_step_on_the_measured_offload(tiny_model_dir, tmp_path):
    """dpo.rounds=2: round 2 rolls out round 1's policy, its pairs are rewarded at the γ that the dual step made of
    round 1's measured offload (rl/lagrangian.py), and final/ is round 2's policy, moved from round 1's."""
    out = str(tmp_path / "dpo")
    args = dpo_run_args(tiny_model_dir, out, "rl.budget=0.3", "rl.gamma=0.5", "rl.gamma_lr=2.0", "dpo.rounds=2")
    assert train.main(args) == 0
    rounds = json.load(open(os.path.join(out, "dpo_rounds.json")))
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # γ_next = max(0, γ + η (usage − budget))
        assert r["gamma_next"] == pytest.approx(max(0.0, r["gamma"] + 2.0 * (r["usage"] - 0.3)))
    assert rounds[0]["gamma"] == 0.5 and rounds[1]["gamma"] == rounds[0]["gamma_next"]
    second = json.load(open(os.path.join(out, "round-2", "dpo_rollouts.json")))
    assert second["gamma"] == rounds[0]["gamma_next"] and second["usage"] == rounds[1]["usage"]
    first_pairs = open(os.path.join(out, "round-1", "dpo_pairs.jsonl")).read()
    assert first_pairs != open(os.path.join(out, "round-2", "dpo_pairs.jsonl")).read()  # fresh problems, new policy
    r1, r2 = (load_file(os.path.join(d, "model.safetensors")) for d in (f"{out}/round-1/final", f"{out}/final"))
    assert any(not torch.equal(r1[k], r2[k]) for k in r1)
    # --resume with both rounds done: nothing is rolled out or trained again
    stamp = os.path.getmtime(os.path.join(out, "final", "model.safetensors"))
    assert train.main(args + ["--resume"]) == 0
    assert os.path.getmtime(os.path.join(out, "final", "model.safetensors")) == stamp


@pytest.mark.slow
def test_dpo_rounds_with_the_greedy_signal_step_gamma_on_the_round_policys_probe(tiny_model_dir, tmp_path):
    """rl.usage_signal=greedy: between rounds γ follows the greedy usage of the round's merged policy on the probe
    (training problems never rolled out for pairs), measured again here by hand."""
    from dataclasses import replace

    from envs.route import RouteEnv
    from envs.tasks import load_problems
    from policies.device import load_device_model
    from policies.generation import HFGenerator
    from settings import load_config

    out = str(tmp_path / "dpo")
    extra = ("rl.budget=0.3", "rl.gamma=0.5", "rl.gamma_lr=2.0", "rl.usage_signal=greedy", "rl.probe_size=6")
    args = dpo_run_args(tiny_model_dir, out, *extra)
    assert train.main(args) == 0
    (r,) = json.load(open(os.path.join(out, "dpo_rounds.json")))
    cfg = load_config(args[1], args[2:])
    probe = load_problems(cfg.task)[0][-6:]
    model, tok = load_device_model(replace(cfg.model, name_or_path=f"{out}/final", lora=False), False)
    env = RouteEnv.from_config(cfg, tok, None)
    outs = HFGenerator(model, tok).generate(
        [env.prompt(p) for p in probe], n=1, temperature=0.0, max_new_tokens=cfg.train.eval_max_new_tokens
    )
    by_hand = sum(o[0].text.rstrip().endswith("</unknown>") for o in outs) / len(probe)
    assert r["usage_greedy"] == pytest.approx(by_hand)
    assert r["gamma_next"] == pytest.approx(max(0.0, 0.5 + 2.0 * (r["usage_greedy"] - 0.3)))
    pairs = open(os.path.join(out, "dpo_pairs.jsonl")).read()
    assert not any(f'"{p.uid}"' in pairs for p in probe)  # the probe never gave pairs
