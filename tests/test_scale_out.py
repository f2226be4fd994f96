"""Scale-out: 2 processes (gloo DDP, DeepSpeed ZeRO-2, ZeRO-3 + LoRA) make the update 1 process makes.

Each run is a real ``accelerate launch`` of train.py on 2 CPU processes with a tiny random model.
``rl.seed_per_prompt`` makes the samples independent of the process count; the filtering,
the update batch and γ are computed on the gathered groups (train.py ``rollout_step``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # several processes: accelerate launch, SIGKILL
ARGS = [
    "task.name=arithmetic",
    "task.num_train=64",
    "rl.gamma_controller=dual",  # dual ascent on the sampled usage; the PID's probe has its own tests
    "task.num_test=4",
    "task.levels=[1+1,1x1]",
    "rl.group_size=8",
    "rl.rollout_prompts=8",
    "rl.batch_prompts=4",
    "rl.max_new_tokens=10",
    "rl.gamma=0.05",
    "rl.gamma_lr=0.5",
    "rl.seed_per_prompt=true",
    "train.learning_rate=1e-2",
    "train.micro_batch_size=2",
    "train.share_prompt_head=false",  # one process scores as two do: equal up to float rounding
    "train.max_steps=3",
    "train.save_every=2",
    "train.wandb=false",
    "train.eval_max_new_tokens=4",
    "train.eval_before=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(accelerate_config: str, args: list[str], deepspeed: bool = False):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    if deepspeed:
        env["DS_ACCELERATOR"] = "cpu"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(ROOT, accelerate_config),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        os.path.join(ROOT, "train.py"),
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _run_pair(tmp_path, tiny_model_dir, accelerate_config, extra=(), deepspeed=False):
    args = ARGS + [f"model.name_or_path={tiny_model_dir}", *extra]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert train.main(args + [f"train.output_dir={one}"]) == 0
    _launch(accelerate_config, args + [f"train.output_dir={two}"], deepspeed)
    m1 = [json.loads(l) for l in open(os.path.join(one, "metrics.jsonl"))]
    m2 = [json.loads(l) for l in open(os.path.join(two, "metrics.jsonl"))]
    w1 = load_file(os.path.join(one, "final", "model.safetensors"))
    w2 = load_file(os.path.join(two, "final", "model.safetensors"))
    return m1, m2, w1, w2


def _assert_same_run(m1, m2, w1, w2, tiny_model_dir):
    assert [m["step"] for m in m2] == [1, 2, 3]
    # the gathered groups: same rewards, same filtering picks, same γ, same global loss
    for a, b in zip(m1, m2):
        for key in ("reward", "offload_rate", "trained_prompts", "d1", "d2", "gamma", "gamma_next"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), (key, a, b)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert any(m["trained_prompts"] > 0 and m["loss"] != 0 for m in m1), "no step trained: the comparison shows nothing"
    init = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert any(not torch.allclose(init[k], w1[k]) for k in init if k in w1), "the weights did not move"
    assert sorted(w1) == sorted(w2)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), (k, (w1[k] - w2[k]).abs().max().item())


def test_two_cpu_processes_make_the_update_of_one(tiny_model_dir, tmp_path):
    m1, m2, w1, w2 = _run_pair(tmp_path, tiny_model_dir, "configs/accelerate/multi_cpu.yaml")
    _assert_same_run(m1, m2, w1, w2, tiny_model_dir)
    assert os.path.exists(tmp_path / "two" / "checkpoints" / "step-3" / "random_states_1.pkl")  # both processes' RNG


def test_deepspeed_zero2_two_processes_match_one_and_resume(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    m1, m2, w1, w2 = _run_pair(tmp_path, tiny_model_dir, "configs/accelerate/zero2.yaml", deepspeed=True)
    _assert_same_run(m1, m2, w1, w2, tiny_model_dir)
    assert os.path.isdir(tmp_path / "two" / "checkpoints" / "step-3" / "pytorch_model")  # a DeepSpeed checkpoint
    # stop after step 2, resume from the DeepSpeed checkpoint: the same final weights
    part = str(tmp_path / "part")
    base = ARGS + [f"model.name_or_path={tiny_model_dir}", f"train.output_dir={part}"]
    _launch("configs/accelerate/zero2.yaml", base + ["train.max_steps=2"], deepspeed=True)
    _launch("configs/accelerate/zero2.yaml", base + ["--resume"], deepspeed=True)
    w3 = load_file(os.path.join(part, "final", "model.safetensors"))
    for k in w2:
        assert torch.allclose(w2[k], w3[k], atol=1e-6), k


def test_deepspeed_zero3_with_lora_matches_one_process(tiny_model_dir, tmp_path):
    """ZeRO-3 partitions the weights: rollouts gather them, and the merged LoRA policy is gathered before saving."""
    pytest.importorskip("deepspeed")
    lora = ["model.lora=true", "model.lora_r=4", "model.lora_alpha=8"]
    m1, m2, w1, w2 = _run_pair(tmp_path, tiny_model_dir, "configs/accelerate/zero3.yaml", lora, deepspeed=True)
    _assert_same_run(m1, m2, w1, w2, tiny_model_dir)
    assert not any("lora" in k for k in w2)  # merged into a plain model


@pytest.mark.parametrize("accelerate_config", ["configs/accelerate/zero2.yaml", "configs/accelerate/zero3.yaml"])
def test_deepspeed_uneven_shares_run_the_same_backward_passes_and_match_one_process(
    tiny_model_dir, tmp_path, accelerate_config
):
    """13 sequences with a non-zero advantage on 2 processes with micro-batch 2: 7 and 6 sequences, so 4 and 3
    micro-batches.  ZeRO-2/3 communicate on every backward, so each process must run the same number of backward
    passes (the short one pads with a zero-weight pass).  The update finishes and equals 1 process's."""
    pytest.importorskip("deepspeed")
    from safetensors import safe_open

    # small buckets (ZeRO-2 reduces a bucket as soon as it fills, inside every backward) and no persistent
    # parameters (ZeRO-3 gathers every weight in every forward), as a real model of 1B+ weights does
    ds_config = json.load(
        open(
            os.path.join(
                ROOT,
                "configs",
                "accelerate",
                os.path.basename(accelerate_config).replace(".yaml", ".json").replace("zero", "ds_zero"),
            )
        )
    )
    ds_config["zero_optimization"].update(
        reduce_bucket_size=500, allgather_bucket_size=500, stage3_param_persistence_threshold=0
    )
    json.dump(ds_config, open(tmp_path / "ds.json", "w"))
    launch_config = (
        open(os.path.join(ROOT, accelerate_config))
        .read()
        .replace(
            "configs/accelerate/ds_" + os.path.basename(accelerate_config).replace(".yaml", ".json"),
            str(tmp_path / "ds.json"),
        )
    )
    assert str(tmp_path / "ds.json") in launch_config
    open(tmp_path / "accelerate.yaml", "w").write(launch_config)
    script = os.path.join(ROOT, "tests", "scripts", "one_update.py")
    one, two = str(tmp_path / "one.safetensors"), str(tmp_path / "two.safetensors")
    # the script imports this checkout's packages (not an installed copy): the repository root on PYTHONPATH
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, script, tiny_model_dir, one], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(tmp_path / "accelerate.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        script,
        tiny_model_dir,
        two,
    ]
    try:  # an uneven number of backward passes hangs in a collective: a timeout is the failure
        done = subprocess.run(
            cmd, cwd=ROOT, env=dict(env, DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"2-process {accelerate_config} update hung: {str(e.stderr)[-2000:]}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    w1, w2 = load_file(one), load_file(two)
    with safe_open(one, "pt") as f1, safe_open(two, "pt") as f2:
        assert float(f1.metadata()["loss"]) == pytest.approx(float(f2.metadata()["loss"]), abs=1e-5)
    init = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert any(not torch.allclose(init[k], w1[k]) for k in init if k in w1), "the weights did not move"
    assert sorted(w1) == sorted(w2)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), (k, (w1[k] - w2[k]).abs().max().item())


def test_cpu_install_never_imports_vllm_and_asking_for_it_is_a_clear_error(tiny_model_dir, tmp_path):
    probe = "import sys, train, eval, sweep, policies.generation; print('vllm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]
    from settings import ConfigError, load_config

    with pytest.raises(ConfigError, match="rl.generator=vllm"):
        load_config(None, ["rl.generator=vllm", "rl.env=query"])
    try:
        import vllm  # noqa: F401
    except ImportError:
        args = ARGS + [
            f"model.name_or_path={tiny_model_dir}",
            f"train.output_dir={tmp_path}",
            "rl.generator=vllm",
            "rl.seed_per_prompt=false",
        ]
        with pytest.raises(ImportError, match=re.escape('pip install -e ".[gpu]"')):
            train.main(args)
