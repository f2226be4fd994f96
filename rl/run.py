"""One entry point for every training mode: ``run(cfg, resume)`` picks the loop that ``rl.env``/``rl.trainer`` name.

    from settings import load_config
    from rl.run import run
    run(load_config("configs/cpu_default.yaml", ["rl.budget=0.2"]), resume=False)   # what train.py does

``train.py`` (the command) and ``sweep.py`` (one run per budget) both call it, so neither imports the other.
"""

from __future__ import annotations

from rl.baselines import run_task_tuning, run_trl_baseline
from rl.lsrp import run_lsrp
from rl.trainer import train


def run(cfg, resume: bool = False) -> int:
    """Train as ``cfg`` says; returns the exit code (0 on success)."""
    if cfg.rl.env == "lsrp":  # the cloud leads, the device answers with private data (rl/lsrp.py)
        return run_lsrp(cfg)
    if cfg.rl.trainer in ("trl_drgrpo", "dpo"):  # TRL's own loops (Dr.GRPO baseline, DPO), same evaluation
        return run_trl_baseline(cfg, resume)
    if cfg.rl.trainer == "sft":  # task tuning: the supervised warm start and the task-tuning-only baseline
        return run_task_tuning(cfg, resume)
    return train(cfg, resume)  # GAPG (rl/trainer.py)
