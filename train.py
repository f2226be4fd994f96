"""Train the device model to answer or escalate, within a cloud budget (GAPG + adaptive filtering + Lagrangian).

    accelerate launch train.py --config configs/cpu_default.yaml            # the CPU default, a few minutes
    accelerate launch train.py --config configs/cpu_default.yaml rl.budget=0.2 train.max_steps=40
    accelerate launch train.py --config configs/cpu_default.yaml --resume   # continue the last checkpoint
    accelerate launch train.py --config configs/cpu_sft.yaml                # rl.trainer=sft: task tuning (rl/sft.py)
    python train.py --help                                                  # every option
    python train.py --config configs/cpu_default.yaml rl.budget=0.2 --print-config   # the resolved config (YAML)

The command: parse the options, load the config (settings/), hand it to the library: the GAPG run is
rl/trainer.py: ``train`` (the TRL trainers: rl/baselines.py; ``rl.env=lsrp``: rl/lsrp.py).
One step, top to bottom (read ``train_step()`` in rl/trainer.py):
  1. take the next ``rl.rollout_prompts`` training problems (a seeded, resumable order);
  2. the environment (``rl.env``; envs/base.py) samples G responses each and grades them: ``route``
     (envs/route.py) asks the cloud once per problem that needs it; ``query``
     (envs/query.py) answers ``<query>``s mid-generation, batched (cached on disk);
  3. ``env.reward``: r̃ = r − γ·1{cloud} (route) or r̃ = r − γ·calls − γ_tok·cloud tokens (query)
     (rewards/collaboration.py, docs/method.md §3);
  4. adaptive prompt filtering keeps D1 and up to ρ|D1| D2 prompts (rl/filtering.py, docs/method.md §5);
  5. GAPG update on the device tokens (rl/gapg.py, docs/method.md §4);
  6. dual ascent on γ toward the budget: offload rate (route) or calls per rollout (query) (rl/lagrangian.py);
  7. the metrics.jsonl line, and at their intervals a checkpoint (rl/checkpoint.py) and a held-out evaluation.
"""

from __future__ import annotations

import argparse
import sys

from core.logs import setup_logging
from policies.device import ModelNotFoundError
from settings import ConfigError, format_help, load_config, to_yaml


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    ap.add_argument("--config", default=None, help="YAML config (configs/*.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    ap.add_argument("--verbose", action="store_true", help="debug logging (cloud retries, accelerate, checkpoints)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    ap.add_argument("-h", "--help", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        if args.help:  # the help still prints; the values it would show are not valid
            ap.print_help()
            print("\nOptions (section.key=value):" + format_help())
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.help:
        ap.print_help()
        given = " (', now' = the value from --config and the overrides)" if args.config or overrides else ""
        print(f"\nOptions (section.key=value){given}:" + format_help(cfg))
        return 0
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    setup_logging(args.verbose)
    # Imported once the config is valid: importing the trainers imports transformers' integrations, which print a
    # line when WANDB_MODE=offline, and a bad option should read as our one error line.
    from envs.lsrp.metrics import JudgeReplyError
    from rl.run import run

    try:
        return run(cfg, args.resume)  # rl/run.py: GAPG (rl/trainer.py), or the mode rl.env / rl.trainer names
    except (ModelNotFoundError, JudgeReplyError) as e:  # a missing model, an unreadable LSRP judge: one line
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
