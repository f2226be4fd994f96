"""Every shipped config (configs/*.yaml) runs a real update.

Each config goes through its own entry point (train.py, or sweep.py for a sweep config) in this process with a tiny
random model of the same family and tiny sizes (one step, a few prompts, a few tokens, a 2-problem held-out set).
Everything else is the config's own: trainer, environment, G, filtering, dual ascent, reward, LoRA, gradient
checkpointing, dtype and mixed precision.  The test then checks that the update moved the weights.

What is swapped, and why:
  - model.name_or_path -> a tiny random model of the config's family (Qwen2.5 -> Qwen2ForCausalLM, SmolLM2 ->
    LlamaForCausalLM), with a char-level tokenizer (tests/conftest.py); a hf cloud (LSRP's leader) gets the same;
  - sizes: train.max_steps=1, rl.rollout_prompts <= 3, rl.batch_prompts <= 2, rl.max_new_tokens <= 8,
    rl.probe_size <= 4, task.num_train/num_test tiny, no eval before training, train.output_dir under tmp_path;
  - token-length limits scale with the tokenizer: the char-level tokenizer needs ~4x the tokens of a real BPE
    tokenizer for the same prompt, so rl.max_prompt_tokens is 4x the config's (a Countdown prompt is ~410 chars);
  - train.mixed_precision=fp16 (and model.dtype=float16) -> bf16: fp16 autocast needs a GPU; bf16 runs on CPU;
  - train.wandb=false: a test logs nothing to W&B (and leaves no W&B session for the next test to inherit);
  - task.data_dir -> the absolute ../shared/data (the MATH config reads it); in a clone without it beside, a folder of
    MATH-format stand-in files written by the test under the config's file names;
  - LSRP: lsrp.device_temperature=1.0 (see tiny_overrides), else every SMFB-DPO pair ties and the leader is not trained;
  - RL modes (gapg, trl_drgrpo, dpo): a random model never solves a problem, so every reward in a group is equal and
    the advantage (or the DPO pair set) is empty. ``_force_reward_variance`` makes the grader also accept a response
    whose text hashes to an even CRC32: a deterministic per-rollout perturbation that leaves the rollout, the reward
    formula, the filtering and the update path unchanged.
"""

from __future__ import annotations

import glob
import json
import os
import zlib

import pytest
import torch
from conftest import build_tiny_model, write_math_files
from safetensors.torch import load_file

from settings import load_config, to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))  # not configs/accelerate/*: launch configs
DATA_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))

pytestmark = pytest.mark.slow


def family(name_or_path: str) -> str:
    """The architecture of a config's model: the tiny stand-in is built with the same one."""
    n = name_or_path.lower()
    if "qwen" in n:
        return "qwen2"
    if "smollm" in n or "llama" in n:
        return "llama"
    raise AssertionError(f"model {name_or_path!r}: add its family to tests/test_configs.py:family()")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return {f: build_tiny_model(str(tmp_path_factory.mktemp(f"tiny-{f}")), family=f) for f in ("llama", "qwen2")}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """One process runs one config in real use; here several share a process. Accelerate keeps its state (mixed
    precision included) in a process-wide singleton that refuses a second mixed_precision: reset it around each."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _force_reward_variance(monkeypatch):
    """The tiny random model gets every problem wrong: all rewards of a group are equal, the GAPG/Dr.GRPO advantage
    is zero and DPO finds no pair, so no update would run. Also count a response as correct when the CRC32 of its
    text is even: deterministic, per rollout, and everything downstream (reward, filtering, update) is the real one."""
    import envs.query
    import envs.route

    for mod in (envs.route, envs.query):
        real = mod.grade_response

        def grade(problem, text, real=real):
            answer, ok = real(problem, text)
            return answer, ok or zlib.crc32(text.encode()) % 2 == 0

        monkeypatch.setattr(mod, "grade_response", grade)


def math_stand_in(cfg, folder) -> str:
    """``task.data_dir`` for a MATH config: ../shared/data when it holds the config's files, else a folder of
    MATH-format problems (question, solution with a boxed answer) under the config's file names."""
    if all(os.path.exists(os.path.join(DATA_DIR, f)) for f in (cfg.task.train_file, cfg.task.test_file)):
        return DATA_DIR
    return write_math_files(folder, {cfg.task.train_file: 32, cfg.task.test_file: 8})


def tiny_overrides(cfg, models: dict, out: str, data_dir: str = DATA_DIR) -> list[str]:
    """Overrides that shrink ``cfg`` to a seconds-long run and swap in the tiny model; everything else is kept."""
    rl, t = cfg.rl, cfg.train
    # SFT drops reference responses longer than rl.max_new_tokens from its data (cpu_sft's 24 fit in chars too)
    new_tokens = rl.max_new_tokens if rl.trainer == "sft" else min(rl.max_new_tokens, 8)
    ov = [
        f"model.name_or_path={models[family(cfg.model.name_or_path)]}",
        "model.gguf_file=null",
        f"train.output_dir={out}",
        "train.max_steps=1",
        "train.eval_before=false",
        "train.wandb=false",
        "train.eval_max_new_tokens=4",
        "task.num_train=16",
        "task.num_test=2",
        f"rl.probe_size={min(rl.probe_size, 4)}",  # the greedy probe's held-out training problems (PID configs)
        f"task.data_dir={data_dir}",
        f"rl.rollout_prompts={min(rl.rollout_prompts, 3)}",
        f"rl.batch_prompts={min(rl.batch_prompts, 2)}",
        f"rl.max_new_tokens={new_tokens}",
        f"rl.max_prompt_tokens={4 * rl.max_prompt_tokens}",  # char-level tokenizer: ~4x the tokens of a BPE one
    ]
    # fp16 autocast needs a GPU; bf16 runs on the CPU (same code path: accelerate autocast + a half-precision dtype)
    if t.mixed_precision == "fp16":
        ov.append("train.mixed_precision=bf16")
    if cfg.model.dtype == "float16":
        ov.append("model.dtype=bfloat16")
    if cfg.cloud.backend == "hf":  # a local model as the cloud (LSRP's leader): the tiny model of its family
        ov += [
            f"cloud.model={models[family(cfg.cloud.model)]}",
            f"cloud.max_new_tokens={min(cfg.cloud.max_new_tokens, 6)}",
        ]
    if rl.trainer == "sft":
        ov += [
            "sft.num_real=4",
            f"sft.augment_k={min(cfg.sft.augment_k, 2)}",
            "sft.probe_problems=8",
            f"sft.batch_size={min(cfg.sft.batch_size, 4)}",
        ]
    if rl.trainer == "dpo":
        ov += [f"dpo.num_prompts={min(cfg.dpo.num_prompts, 3)}", "dpo.num_epochs=1"]
    if rl.env == "lsrp":  # 2 index users, 1 test user, 1 task each, a short NSGA-II
        ov += [
            "lsrp.num_users=2",
            "lsrp.tasks_per_user=1",
            "lsrp.num_test_users=1",
            f"lsrp.top_k={min(cfg.lsrp.top_k, 2)}",
            f"lsrp.device_max_new_tokens={min(cfg.lsrp.device_max_new_tokens, 6)}",
            "lsrp.nsga_pop_size=8",
            "lsrp.nsga_generations=3",
            "dpo.num_epochs=1",
            # the forcing for LSRP (as tests/test_lsrp.py): a greedy tiny random device answers every guideline
            # alike, so both guidelines of a pair tie on S and SMFB-DPO has no pair; a sampled device breaks the ties
            "lsrp.device_temperature=1.0",
        ]
    return ov


def _flat(cfg) -> dict:
    """{'section.key': value} of a Config."""
    return {f"{sec}.{k}": v for sec, d in to_dict(cfg).items() for k, v in d.items()}


def _is_sweep(path: str) -> bool:
    """A sweep config says so in its header (``python sweep.py --config configs/<it>``): sweep.py is its entry point."""
    head = "".join(line for line in open(path) if line.startswith("#"))
    return f"sweep.py --config configs/{os.path.basename(path)}" in head


def _changed(init_dir: str, final_dir: str) -> tuple[int, int]:
    """(tensors that differ, tensors) between the tiny model and a saved (merged) model, in the saved dtype."""
    init, final = (
        load_file(os.path.join(init_dir, "model.safetensors")),
        load_file(os.path.join(final_dir, "model.safetensors")),
    )
    assert init.keys() == final.keys(), "the saved model is not a plain (merged) model of the same architecture"
    return sum(not torch.equal(init[k].to(final[k].dtype), final[k]) for k in init), len(init)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_runs_a_real_update(path, tiny_models, tmp_path, monkeypatch):
    import sweep
    import train
    from rl import trainer

    cfg = load_config(path)
    if cfg.cloud.backend == "openai":
        pytest.skip(f"{os.path.basename(path)}: cloud.backend=openai needs a server, none in CI")
    data_dir = math_stand_in(cfg, tmp_path / "math-data") if cfg.task.name == "math" else DATA_DIR
    out = str(tmp_path / "run")
    ov = tiny_overrides(cfg, tiny_models, out, data_dir)
    tiny = load_config(path, ov)  # the overrides are valid for this config
    kept = {k for k in _flat(cfg)} - {o.split("=", 1)[0] for o in ov}
    assert {k: _flat(tiny)[k] for k in kept} == {k: _flat(cfg)[k] for k in kept}  # everything else is the config's
    if cfg.rl.trainer in ("gapg", "trl_drgrpo", "dpo") and cfg.rl.env != "lsrp":
        _force_reward_variance(monkeypatch)
    monkeypatch.chdir(tmp_path)  # a relative path a config may still hold lands in tmp_path, not in the repo
    scored = []  # GAPG updates: (training mode?, gradient checkpointing in effect?) at each scoring pass
    gapg = tiny.rl.trainer == "gapg" and tiny.rl.env != "lsrp"
    if gapg:
        real_score = trainer.score_sequences

        def spy(model, *a, **kw):
            inner = getattr(
                model, "module", model
            )  # DDP-wrapped or not; transformers checkpoints in training mode only
            scored.append((inner.training, inner.training and bool(inner.is_activation_checkpointing)))
            return real_score(model, *a, **kw)

        monkeypatch.setattr(trainer, "score_sequences", spy)

    if _is_sweep(path):
        budget = tiny.rl.budget
        assert sweep.main(["--config", path, "--budgets", str(budget), "--out", out, "--baselines", "never", *ov]) == 0
        final = os.path.join(sweep.point_dir(out, budget), "final")
    else:
        assert train.main(["--config", path, *ov]) == 0
        final = os.path.join(out, "final")

    if tiny.rl.env == "lsrp":  # the update is SMFB-DPO of the leader (cloud.model): its merged weights moved
        report = json.load(open(os.path.join(out, "report.json")))
        final, base = report["smfb"]["leader"], tiny.cloud.model
    else:
        base = tiny.model.name_or_path
    if gapg:  # the update ran in training mode, and with the config's gradient checkpointing actually in effect
        assert scored, f"{os.path.basename(path)}: no GAPG update ran"
        assert all(training for training, _ in scored), f"{os.path.basename(path)}: the GAPG update ran in eval mode"
        assert all(ckpt == tiny.model.gradient_checkpointing for _, ckpt in scored), (
            f"{os.path.basename(path)}: model.gradient_checkpointing={tiny.model.gradient_checkpointing} "
            f"but the update {'did not recompute' if tiny.model.gradient_checkpointing else 'recomputed'} activations"
        )
    changed, total = _changed(base, final)
    assert changed > 0, f"{os.path.basename(path)}: one update changed none of the {total} weight tensors"
    if gapg and not tiny.model.lora:  # full fine-tuning: Adam moves every weight that has a gradient, at any lr
        # (bf16 weights at the paper's lr 2e-6 rounded the update away: no norm weight moved, a few biases did)
        assert changed >= 0.9 * total, (
            f"{os.path.basename(path)}: one update moved only {changed} of {total} weight tensors"
        )
