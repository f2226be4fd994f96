"""train.py end to end on a tiny random model: metrics, checkpoints, exact resume, final eval."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import train

COMMON = [
    "task.name=arithmetic",
    "task.num_train=64",
    "rl.gamma_controller=dual",  # dual ascent on the sampled usage; the PID's probe has its own tests
    "task.num_test=14",
    "task.levels=[1+1,1x1]",
    "rl.group_size=8",
    "rl.rollout_prompts=8",
    "rl.batch_prompts=8",
    "rl.max_new_tokens=10",
    "rl.filtering=false",
    "rl.gamma=0.05",
    "rl.gamma_lr=0.5",
    "train.learning_rate=1e-2",
    "train.micro_batch_size=16",
    "train.wandb=false",
    "train.eval_max_new_tokens=8",
    "train.eval_before=false",
    "train.keep_checkpoints=5",
]


def _cache_rows(out) -> dict:
    import sqlite3

    with sqlite3.connect(os.path.join(out, "cloud_cache.sqlite")) as db:
        return {k: {"backend": b, "uid": u} for k, b, u in db.execute("SELECT key, backend, uid FROM answers")}


def _weights(out):
    return load_file(os.path.join(out, "final", "model.safetensors"))


@pytest.mark.slow
def test_train_runs_checkpoints_and_resumes_exactly(tiny_model_dir, tmp_path, capsys, caplog):
    base = COMMON + [f"model.name_or_path={tiny_model_dir}"]
    full = str(tmp_path / "full")
    assert train.main(base + [f"train.output_dir={full}", "train.max_steps=4", "train.save_every=2"]) == 0
    printed = capsys.readouterr().out.split("== summary ==\n")[-1].splitlines()
    assert printed[0].startswith("held-out accuracy after training") and "asks the cloud for" in printed[1]
    assert printed[2] == f"learning curve: {os.path.join(full, 'learning_curve.png')}"
    metrics = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(0.0 <= m["offload_rate"] <= 1.0 for m in metrics)
    # dual ascent: gamma follows the offload rate it saw (budget 0.3, lr 0.5)
    for a, b in zip(metrics, metrics[1:]):
        assert b["gamma"] == max(0.0, a["gamma"] + 0.5 * (a["offload_rate_global"] - 0.3))
    summary = json.load(open(os.path.join(full, "eval", "final.json")))
    assert [r["method"] for r in summary] == ["policy", "policy_never", "policy_random"]
    assert summary[0]["n"] == 14 and summary[0]["cloud_calls"] <= int(0.3 * 14)
    assert os.path.exists(os.path.join(full, "checkpoints", "step-2", "trainer_state.json"))

    init = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    trained = _weights(full)
    assert any(not torch.equal(init[k], trained[k]) for k in init), "four steps changed no weight"

    # interrupted after step 2, then resumed: identical final weights and metrics
    part = str(tmp_path / "part")
    assert train.main(base + [f"train.output_dir={part}", "train.max_steps=2", "train.save_every=2"]) == 0
    cached = _cache_rows(part)
    assert cached
    curve = os.path.join(part, "learning_curve.png")
    assert os.path.getsize(curve) > 0  # every run draws its learning curve
    os.remove(curve)
    assert train.main(base + [f"train.output_dir={part}", "train.max_steps=4", "train.save_every=2", "--resume"]) == 0
    resumed = _weights(part)
    for k in trained:
        assert torch.allclose(trained[k], resumed[k], atol=1e-6), k
    m2 = [json.loads(l) for l in open(os.path.join(part, "metrics.jsonl"))]
    assert [m["step"] for m in m2] == [1, 2, 3, 4]
    assert os.path.getsize(curve) > 0  # ... and a resumed one again, over all its steps
    assert [round(m["reward"], 6) for m in m2] == [round(m["reward"], 6) for m in metrics]
    assert set(cached) <= set(_cache_rows(part))  # nothing answered before the interruption is lost
    assert all(m["cloud_calls"] >= 0 and m["cloud_calls_total"] >= m["cloud_calls"] for m in m2)  # usage in metrics

    # a fresh run (no --resume) into a used folder: its metrics.jsonl holds its own steps, not the old run's too
    caplog.clear()
    assert train.main(base + [f"train.output_dir={full}", "train.max_steps=2", "train.save_every=2"]) == 0
    assert [json.loads(l)["step"] for l in open(os.path.join(full, "metrics.jsonl"))] == [1, 2]
    assert "holds checkpoints of an earlier run" in caplog.text  # the old step-4 checkpoint is still there


@pytest.mark.slow
def test_lora_run_with_local_hf_cloud_saves_a_merged_model(tiny_model_dir, tmp_path):
    """model.lora=true trains adapters only; cloud.backend=hf answers with a local model; final/ is a plain model."""
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "lora")
    args = COMMON + [
        f"model.name_or_path={tiny_model_dir}",
        "model.lora=true",
        "model.lora_r=4",
        "model.lora_alpha=8",
        "cloud.backend=hf",
        f"cloud.model={tiny_model_dir}",
        "cloud.max_new_tokens=6",
        f"train.output_dir={out}",
        "train.max_steps=1",
        "train.save_every=0",
    ]
    assert train.main(args) == 0
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"))
    assert not any("lora" in k for k in merged.state_dict())
    rows = _cache_rows(out)
    assert rows and all(r["backend"] == "hf" for r in rows.values())


def test_prompt_over_max_prompt_tokens_is_a_clear_error(tiny_model_dir, tmp_path):
    import pytest

    args = COMMON + [
        f"model.name_or_path={tiny_model_dir}",
        "rl.max_prompt_tokens=20",
        f"train.output_dir={tmp_path}",
        "train.max_steps=1",
    ]
    with pytest.raises(ValueError, match="rl.max_prompt_tokens"):
        train.main(args)
