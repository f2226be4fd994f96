"""Checkpoints of the GAPG loop and the final model.

    <train.output_dir>/checkpoints/step-N/   accelerate state (model, optimizer, RNG of every process)
                                             + trainer_state.json (step, γ, γ's controller state)
    <train.output_dir>/checkpoint-N/          the same for a TRL trainer (rl/trl_run.py: transformers' layout)
    <train.output_dir>/final/                 the trained policy (LoRA merged), loadable with from_pretrained
    <train.output_dir>/metrics.jsonl          one line per step; ``truncate_metrics`` drops the steps a resume
                                              runs again

``trainer_state.json`` is written last: a checkpoint without it is incomplete and ``latest_checkpoint`` skips it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from accelerate.utils import DistributedType

from core.io import replaced_dir
from policies.device import load_device_model

log = logging.getLogger("train")


def latest_checkpoint(output_dir: str) -> str | None:
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return None
    steps = sorted(
        int(d.split("-")[1])
        for d in os.listdir(root)
        if d.startswith("step-") and os.path.exists(os.path.join(root, d, "trainer_state.json"))
    )
    return os.path.join(root, f"step-{steps[-1]}") if steps else None


def step_checkpoint_dirs(output_dir: str) -> list[str]:
    """The step checkpoints a run left in ``output_dir``, whichever trainer wrote them: the GAPG loop's
    ``checkpoints/`` folder or a TRL trainer's ``checkpoint-N`` folders.  sweep.py resumes a run that has any and
    deletes them once its ``final/`` is written."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(d for d in os.listdir(output_dir) if d == "checkpoints" or re.fullmatch(r"checkpoint-\d+", d))
    return [os.path.join(output_dir, d) for d in names]


def warn_earlier_checkpoints(output_dir: str, newest: str | None) -> None:
    """A fresh run into ``output_dir``, which holds ``newest`` (an earlier run's checkpoint): say what --resume does."""
    if newest:
        log.warning(
            "%s holds checkpoints of an earlier run (%s); this run starts afresh, and a later --resume would take the "
            "newest checkpoint there, its or theirs: use a new train.output_dir, or --resume to continue that run",
            output_dir,
            newest,
        )


def truncate_metrics(path: str, last_step: int) -> int:
    """Keep the metrics.jsonl lines of steps <= ``last_step`` (the checkpoint a run resumes from): the steps after it
    are run again, so their old lines (from a killed run) would appear twice.  A line torn by the kill is dropped too.
    Returns how many lines were dropped."""
    if not os.path.exists(path):
        return 0
    keep, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                dropped += 1
                continue
            if step <= last_step:
                keep.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        if last_step:
            log.info("metrics.jsonl: dropped %d line(s) after step %d (they are run again)", dropped, last_step)
        else:
            log.info("metrics.jsonl: dropped the %d line(s) of an earlier run (this one starts at step 0)", dropped)
    return dropped


def save_checkpoint(accelerator, cfg, step: int, dual):
    path = os.path.join(cfg.train.output_dir, "checkpoints", f"step-{step}")
    accelerator.save_state(path)  # model, optimizer, RNG states of every process
    if accelerator.is_main_process:
        with open(os.path.join(path, "trainer_state.json"), "w") as f:  # written last: marks the checkpoint complete
            json.dump({"step": step, "gamma": dual.gamma, "gamma_controller": dual.state_dict()}, f)
        root = os.path.dirname(path)
        done = sorted((int(d.split("-")[1]) for d in os.listdir(root) if d.startswith("step-")), reverse=True)
        for old in done[cfg.train.keep_checkpoints :]:
            shutil.rmtree(os.path.join(root, f"step-{old}"), ignore_errors=True)
    accelerator.wait_for_everyone()


def load_trainer_state(ckpt: str, dual) -> int:
    """Restore γ's controller from ``ckpt``'s trainer_state.json and return its step.  A checkpoint written before
    the controller's state was saved has only ``gamma``; the controller starts from that γ."""
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        state = json.load(f)
    saved = state.get("gamma_controller", {}).get("controller", "dual")  # before the PID, every run used dual ascent
    own = dual.state_dict()["controller"]
    if saved != own:
        log.warning(
            "%s was written by rl.gamma_controller=%s and this run uses %s (the library default is pid since the "
            "defaults changed): γ goes on from %.3f under the new controller; set rl.gamma_controller=%s to resume "
            "the run as it was trained.",
            ckpt,
            saved,
            own,
            state.get("gamma_controller", state).get("gamma", 0.0),
            saved,
        )
    dual.load_state_dict(state.get("gamma_controller", {"gamma": state["gamma"]}))
    return state["step"]


def save_final(accelerator, model, tok, cfg, path: str):
    """Save the trained policy to ``path`` (LoRA merged), loadable with ``from_pretrained``; return it on the main
    process.

    Under ZeRO-3 each process holds a shard: the weights are gathered (a collective) into a fresh copy first."""
    zero3 = (
        accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    )
    state = accelerator.get_state_dict(model) if zero3 else None
    if not accelerator.is_main_process:
        return None
    policy = accelerator.unwrap_model(model)
    if zero3:  # training is over: a plain full copy on this process (transformers would zero.Init it, a collective)
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        policy = load_device_model(cfg.model, for_training=False)[0]
        policy.load_state_dict(state)
    if cfg.model.lora:
        policy = policy.merge_and_unload()
    with replaced_dir(path) as tmp:  # a crash mid-save leaves no final/ that looks finished
        policy.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return policy
