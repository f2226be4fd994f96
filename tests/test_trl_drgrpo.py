"""rl.trainer=trl_drgrpo: the Dr.GRPO baseline through TRL's GRPOTrainer, on a tiny random model."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import train
from core.problem import Problem
from envs.route import RouteEnv
from policies.cloud import CachedCloud, SimulatedCloud
from rl.trl_grpo import build_dataset, grpo_config, make_reward_fn
from settings import RewardConfig, load_config

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_test.yaml")
ESC = "<unknown> I need external assistance </unknown>"
PROBLEM = Problem(uid="t:1", question="What is 2 + 3?", answer="5", level=1)


def _reward(cloud_accuracy, charge="all_escalations", gamma=0.1):
    env = RouteEnv("arithmetic", None, CachedCloud(SimulatedCloud(accuracy=cloud_accuracy), None))
    return make_reward_fn(env, [PROBLEM], RewardConfig(alpha_local=1.0, alpha_cloud=0.4, charge=charge), gamma)


def test_reward_fn_is_the_hierarchical_reward_minus_fixed_gamma():
    completions = [
        "2 + 3 = 5. \\boxed{5}",  # correct local answer
        "Hmm. " + ESC,  # escalates; the cloud (accuracy 1) is right: α_c − γ
        "2 + 3 = 7. \\boxed{7}",  # wrong local answer
        ESC + " Actually 2 + 3 = 5. \\boxed{5}",  # the tag counts only at the END: graded locally
    ]
    logged = {}
    out = _reward(1.0)([""] * 4, completions, ["t:1"] * 4, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert out == pytest.approx([1.0, 0.4 - 0.1, 0.0, 1.0])
    assert (
        logged["offload_rate"] == 0.25 and logged["cloud_acc"] == 1.0 and logged["device_acc"] == pytest.approx(2 / 3)
    )
    # a wrong cloud: the escalation earns nothing and pays γ under eq. 18, nothing under eq. 11
    assert _reward(0.0)([""], [ESC], ["t:1"]) == pytest.approx([-0.1])
    assert _reward(0.0, "correct_escalations")([""], [ESC], ["t:1"]) == pytest.approx([0.0])


def test_dataset_prompts_are_routeenv_prompts_and_config_maps_to_dr_grpo(tiny_model_dir, tmp_path):
    from policies.device import load_tokenizer

    cfg = load_config(
        TINY,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"train.output_dir={tmp_path}",
            "rl.trainer=trl_drgrpo",
            "rl.group_size=4",
            "rl.batch_prompts=6",
            "train.micro_batch_size=8",
            "rl.max_new_tokens=12",
        ],
    )
    tok = load_tokenizer(tiny_model_dir)
    env = RouteEnv("arithmetic", tok, None)
    ds = build_dataset(env, [PROBLEM])
    assert ds[0]["prompt"] == env.prompt(PROBLEM) and ds[0]["uid"] == "t:1"
    assert isinstance(ds[0]["prompt"], str)  # a plain string: TRL does not apply the chat template again
    a = grpo_config(cfg)
    assert (a.loss_type, a.scale_rewards, a.beta, a.num_iterations) == ("dr_grpo", "none", 0.0, 1)
    assert (a.num_generations, a.generation_batch_size, a.max_completion_length) == (4, 24, 12)
    assert (
        a.per_device_train_batch_size * a.gradient_accumulation_steps == 24
    )  # one optimizer step per generation batch
    assert a.per_device_train_batch_size <= 8 and a.steps_per_generation == a.gradient_accumulation_steps
    assert a.report_to in ([], "none", ["none"]) and a.logging_steps == 1 and not a.bf16


@pytest.mark.slow
def test_train_py_trl_drgrpo_trains_saves_evaluates_and_resumes(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "drgrpo")
    args = [
        "--config",
        TINY,
        f"model.name_or_path={tiny_model_dir}",
        "rl.trainer=trl_drgrpo",
        "train.max_steps=2",
        f"train.output_dir={out}",
        "task.levels=[1+1]",
        "rl.group_size=8",
        "rl.batch_prompts=8",
        "rl.max_new_tokens=10",
        "rl.gamma=0.05",
        "train.learning_rate=1e-2",
        "train.micro_batch_size=32",
        "train.save_every=1",
    ]
    assert train.main(args) == 0
    # TRL logged two optimizer steps, each with the collaboration metrics
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["offload_rate"] <= 1.0 and "reward" in r and "loss" in r for r in rows)
    assert all(r["step_time_s"] > 0 for r in rows)  # each step's wall time, as GAPG records it
    # the random model answers a few 1+1 sums by chance (graded by the last number): rewards vary within groups
    assert any(r["reward_std"] > 0 for r in rows), "no reward variance: Dr.GRPO has nothing to learn from"
    state = json.load(open(os.path.join(out, "checkpoint-2", "trainer_state.json")))
    assert state["global_step"] == 2 and [h["step"] for h in state["log_history"] if "reward" in h] == [1, 2]
    # the final model loads, and training moved its weights
    final = os.path.join(out, "final")
    AutoModelForCausalLM.from_pretrained(final)
    init, trained = (
        load_file(os.path.join(tiny_model_dir, "model.safetensors")),
        load_file(os.path.join(final, "model.safetensors")),
    )
    assert any(not torch.equal(init[k], trained[k]) for k in init), "two Dr.GRPO steps changed no weight"
    # the same held-out evaluation as the GAPG path
    summary = json.load(open(os.path.join(out, "eval", "final.json")))
    assert [r["method"] for r in summary] == ["policy", "policy_never", "policy_random"] and summary[0]["n"] == 14

    # a run killed after step 2's log line, before checkpoint-2 and final/: --resume runs step 2 again from
    # checkpoint-1 and metrics.jsonl ends with each step once (the stale step-2 line and a torn line are dropped)
    shutil.rmtree(os.path.join(out, "checkpoint-2"))
    shutil.rmtree(final)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "rew')
    assert train.main(args + ["--resume"]) == 0
    assert [json.loads(l)["step"] for l in open(os.path.join(out, "metrics.jsonl"))] == [1, 2]
    assert os.path.exists(os.path.join(out, "checkpoint-2")) and os.path.exists(
        os.path.join(final, "model.safetensors")
    )
    # a fresh run (no --resume) into the used folder: metrics.jsonl holds its own steps only
    assert train.main([a if a != "train.max_steps=2" else "train.max_steps=1" for a in args]) == 0
    assert [json.loads(l)["step"] for l in open(os.path.join(out, "metrics.jsonl"))] == [1]
