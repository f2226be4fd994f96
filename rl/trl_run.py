"""Running a TRL trainer the way train.py runs GAPG: a ``metrics.jsonl`` line per logged step, ``--resume`` from
the last ``checkpoint-N``, and a plain ``final/`` folder (LoRA merged) that eval.py loads.

Shared by the modes that train through TRL: ``rl.trainer=trl_drgrpo`` (rl/trl_grpo.py), ``rl.trainer=sft``
(tuning/sft.py), ``rl.trainer=dpo`` (rl/dpo.py) and LSRP's SMFB-DPO (lsrp/smfb_dpo.py).

    accelerate launch train.py --config configs/cpu_sft.yaml --resume     # continues from the last checkpoint-N
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)


def metrics_callback(path: str, require: str = "loss", eval_hook=None, eval_every: int = 0):
    """A ``TrainerCallback`` that appends every log holding ``require`` (per-step logs, not the end-of-training
    summary) to ``path`` as one JSON line, from the main process only; with ``eval_hook(tag, model, tokenizer)``
    it also evaluates every ``eval_every`` steps before the last."""
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and require in logs:
                with open(path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
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
    so their lines in ``metrics_path`` (left by a killed run) are dropped first, as train.py does for GAPG."""
    step = last_checkpoint_step(output_dir) if resume else None
    if resume and step is None:
        log.warning("--resume: no checkpoint-N in %s; starting from step 0", output_dir)
    if resume and metrics_path and trainer.accelerator.is_main_process:
        from train import truncate_metrics

        truncate_metrics(metrics_path, step or 0)
    trainer.train(resume_from_checkpoint=True if step is not None else None)


def save_final(trainer, tokenizer, final_dir: str, merge_lora: bool) -> str:
    """Save the trained model (LoRA adapters merged into the weights when ``merge_lora``) and its tokenizer to
    ``final_dir`` from the main process; every process waits for it."""
    if trainer.accelerator.is_main_process:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        to_save = unwrapped.merge_and_unload() if merge_lora else unwrapped
        to_save.save_pretrained(final_dir)
        tokenizer.save_pretrained(final_dir)
    trainer.accelerator.wait_for_everyone()
    return final_dir
