"""The trainers that run through TRL's own loops, set up and evaluated the way the GAPG run is (rl/trainer.py):
``rl.trainer=trl_drgrpo`` (Dr.GRPO, rl/trl_grpo.py), ``dpo`` (rl/dpo.py) and ``sft`` (task tuning, rl/sft.py)."""

from __future__ import annotations

import os
from dataclasses import replace

from accelerate import Accelerator
from tqdm.auto import tqdm

from envs.simulation import task_cloud
from envs.tasks import load_problems
from policies.device import load_device_model
from policies.generation import HFGenerator
from rl.dpo import train_with_dpo
from rl.sft import train_sft
from rl.trainer import make_env, run_eval
from rl.trl_grpo import train_with_trl
from settings import save_config


def run_trl_baseline(cfg, resume: bool) -> int:
    """rl.trainer=trl_drgrpo (TRL GRPOTrainer, rl/trl_grpo.py) or dpo (TRL DPOTrainer, rl/dpo.py), evaluated as
    above."""
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    if accelerator.is_main_process:
        save_config(cfg)
    test_problems = load_problems(cfg.task)[1]

    def eval_model(tag, model, tok):
        cloud = task_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "cloud_cache.sqlite"))
        return run_eval(tag, make_env(cfg, tok, cloud), HFGenerator(model, tok), test_problems, cfg, accelerator)

    if cfg.train.eval_before and cfg.train.max_steps > 0 and not resume and accelerator.is_main_process:
        eval_model("before", *load_device_model(replace(cfg.model, lora=False), for_training=False))
    final = (
        train_with_dpo(cfg, resume) if cfg.rl.trainer == "dpo" else train_with_trl(cfg, resume, eval_hook=eval_model)
    )
    if accelerator.is_main_process:
        rows = eval_model(
            "final",
            *load_device_model(replace(cfg.model, name_or_path=final, gguf_file=None, lora=False), for_training=False),
        )
        if rows and cfg.rl.env == "route":  # query mode's budget counts calls: eval/final.json has them
            tqdm.write(f"held-out offload {rows[0]['offload_rate']:.1%} against the budget {cfg.rl.budget:.0%}")
        tqdm.write(f"saved the trained policy to {final}  (evaluate it: python eval.py --run {cfg.train.output_dir})")
    return 0


def run_task_tuning(cfg, resume: bool) -> int:
    """rl.trainer=sft: cloud-augmented supervised task tuning (rl/sft.py), evaluated before and after as above."""
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    if accelerator.is_main_process:
        save_config(cfg)
    test_problems = load_problems(cfg.task)[1]

    def eval_model(tag, model, tok):
        if tag == "before" and not (cfg.train.eval_before and cfg.train.max_steps > 0):
            return None
        cloud = task_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "cloud_cache.sqlite"))
        return run_eval(tag, make_env(cfg, tok, cloud), HFGenerator(model, tok), test_problems, cfg, accelerator)

    final = train_sft(cfg, resume, eval_hook=eval_model)
    if accelerator.is_main_process:
        eval_model(
            "final",
            *load_device_model(replace(cfg.model, name_or_path=final, gguf_file=None, lora=False), for_training=False),
        )
        tqdm.write(
            f"saved the task-tuned model to {final}  (RL from it: train.py --config <yaml> model.name_or_path={final})"
        )
    return 0
