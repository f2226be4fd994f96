"""Running a TRL trainer the way rl/trainer.py runs GAPG: a ``metrics.jsonl`` line per logged step, ``--resume`` from
the last ``checkpoint-N``, and a plain ``final/`` folder (LoRA merged) that eval.py loads.

Shared by the modes that train through TRL: ``rl.trainer=trl_drgrpo`` (rl/trl_grpo.py), ``rl.trainer=sft``
(rl/sft.py), ``rl.trainer=dpo`` (rl/dpo.py) and LSRP's SMFB-DPO (rl/smfb_dpo.py).

    accelerate launch train.py --config configs/cpu_sft.yaml --resume     # continues from the last checkpoint-N
"""

from __future__ import annotations

import json
import logging
import os
import time

from core.io import replaced_dir
from rl.checkpoint import truncate_metrics, warn_earlier_checkpoints

log = logging.getLogger(__name__)


def wandb_offline_unless_configured() -> None:
    """W&B never blocks on a login prompt: offline mode unless ``WANDB_API_KEY`` or ``WANDB_MODE`` is set.  And it is
    silent (no banner at the start, no history and summary at the end: metrics.jsonl and the console lines say it)
    unless ``WANDB_SILENT`` is set (``WANDB_SILENT=false`` shows them)."""
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")


def per_device_batch(total: int, cap: int) -> int:
    """The largest divisor of ``total`` that is <= ``cap`` (sequences per forward/backward)."""
    return max(d for d in range(1, min(total, max(cap, 1)) + 1) if total % d == 0)


def common_args(cfg, output_dir: str) -> dict:
    """The ``TrainingArguments`` every TRL-backed mode takes from the ``train`` section (run name, W&B, seed, weight
    decay, clipping, precision, a log line per step, checkpoints kept).  With ``train.wandb`` it also sets the
    environment that transformers' ``WandbCallback`` reads (project, folder, group)."""
    t = cfg.train
    if t.wandb:
        wandb_offline_unless_configured()
        os.environ.setdefault("WANDB_PROJECT", t.wandb_project)
        os.environ.setdefault("WANDB_DIR", output_dir)
        if t.wandb_group:
            os.environ.setdefault("WANDB_RUN_GROUP", t.wandb_group)
    return dict(
        output_dir=output_dir,
        run_name=t.run_name or os.path.basename(os.path.normpath(output_dir)),
        report_to=["wandb"] if t.wandb else "none",
        seed=t.seed,
        data_seed=t.seed,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.mixed_precision == "bf16",
        fp16=t.mixed_precision == "fp16",
        logging_steps=1,
        save_total_limit=t.keep_checkpoints,
    )


def metrics_callback(path: str, require: str = "loss", eval_hook=None, eval_every: int = 0):
    """A ``TrainerCallback`` that appends every log holding ``require`` (per-step logs, not the end-of-training
    summary) to ``path`` as one JSON line, from the main process only; with ``eval_hook(tag, model, tokenizer)``
    it also evaluates every ``eval_every`` steps before the last."""
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        started, took = None, None  # the step's wall time goes in as step_time_s, as GAPG's does: without the
        # evaluation below (transformers calls on_step_end before on_log)

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.time()

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and require in logs:
                timing = {"step_time_s": self.took} if self.took is not None else {}
                with open(path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs, **timing}) + "\n")

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
            self.took = time.time() - self.started if self.started else None
            step = state.global_step
            if eval_hook and eval_every and step % eval_every == 0 and step < state.max_steps:
                eval_hook(f"step-{step}", model, processing_class)

    return MetricsJsonl()


def last_checkpoint_step(output_dir: str) -> int | None:
    """The step of the newest complete ``checkpoint-N`` in ``output_dir`` (transformers' rule), or None."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    return int(last.rsplit("-", 1)[1]) if last else None


def train_resumable(trainer, output_dir: str, resume: bool, metrics_path: str | None = None) -> None:
    """``trainer.train()``, from the last checkpoint when ``resume``.  The steps after that checkpoint run again,
    so their lines in ``metrics_path`` (left by a killed run) are dropped first, as rl/trainer.py does for GAPG; a
    fresh start drops every old line (a run into a used folder)."""
    step = last_checkpoint_step(output_dir) if resume else None
    if resume and step is None:
        log.warning("--resume: no checkpoint-N in %s; starting from step 0", output_dir)
    if trainer.accelerator.is_main_process:
        if not resume:
            newest = last_checkpoint_step(output_dir)
            warn_earlier_checkpoints(output_dir, None if newest is None else f"checkpoint-{newest}")
        if metrics_path:  # a fresh start keeps no old lines either
            truncate_metrics(metrics_path, step or 0)
    trainer.train(resume_from_checkpoint=True if step is not None else None)


def save_final(trainer, tokenizer, final_dir: str, merge_lora: bool) -> str:
    """Save the trained model (LoRA adapters merged into the weights when ``merge_lora``) and its tokenizer to
    ``final_dir`` from the main process; every process waits for it."""
    if trainer.accelerator.is_main_process:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        to_save = unwrapped.merge_and_unload() if merge_lora else unwrapped
        with replaced_dir(final_dir) as tmp:  # a crash mid-save leaves no final/ that looks finished
            to_save.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    trainer.accelerator.wait_for_everyone()
    return final_dir
