"""Peak memory of one training step, GAPG and TRL GRPOTrainer (Dr.GRPO), each in a fresh process.

    python -m benchmarks.bench_memory                       # SmolLM2-135M, configs/cpu_default.yaml
    python -m benchmarks.bench_memory --steps 2 --json out.json rl.group_size=8

Each trainer runs in its own subprocess (so neither sees the other's allocations) with the same settings as
``bench_train_step.py``.  After ``--warmup`` steps (the optimizer's state exists by then) the next ``--steps``
steps are measured:
  * CPU: resident set size sampled every 2 ms by a thread (``psutil``): RSS at the start of the step
    (weights, gradients, Adam state, caches), its peak during the step, and the difference -- what one step
    adds on top.  The peak over the child's whole life (loading included) is sampled too.  (``ru_maxrss`` is not
    used: on Linux a child started from a large parent inherits the parent's peak.)
  * CUDA: ``torch.cuda.max_memory_allocated`` over the step (reset before it) and ``memory_allocated`` at its start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from benchmarks.common import (
    ROOT,
    PeakRSS,
    add_common_args,
    command_line,
    device_name,
    mean_std,
    setup_torch,
    table,
    write_json,
)

MB = 1024 * 1024


class StepMemory:
    """Memory of one step: CUDA allocator peak when there is a GPU, else sampled RSS."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self._rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._rss.__exit__(*exc)
            self.before, self.peak = self._rss.before, self._rss.peak

    def record(self) -> dict:
        return {
            "kind": "cuda_allocated" if self.cuda else "rss",
            "before_mb": self.before / MB,
            "peak_mb": self.peak / MB,
            "step_mb": (self.peak - self.before) / MB,
        }


def child(args, overrides) -> dict:
    """Run ``args.child`` (gapg or trl) for warm-up + measured steps; return the per-step memory records."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from benchmarks.bench_train_step import GapgStepper, bench_cfg, build_trl, step_problems

    setup_torch(args)
    whole = PeakRSS(interval=0.01).__enter__()  # the child's own peak, loading included
    cfg = bench_cfg(args, overrides, tempfile.mkdtemp(prefix=f"bench_memory_{args.child}_"))
    n = args.warmup + args.steps
    per_step = step_problems(cfg, n)
    set_seed(cfg.train.seed)
    records = []
    if args.child == "gapg":
        gapg = GapgStepper(cfg, Accelerator(mixed_precision=cfg.train.mixed_precision))
        for k in range(n):
            with StepMemory() as m:
                gapg.step(per_step[k])
            records.append(m.record())
    else:
        from transformers import TrainerCallback

        state = {}

        class Measure(TrainerCallback):  # one StepMemory from the end of step k-1 to the end of step k
            def on_step_end(self, a, s, control, **kw):
                m = state.pop("m")
                m.__exit__(None, None, None)
                records.append(m.record())
                state["m"] = StepMemory().__enter__()

        trainer, _, _ = build_trl(cfg, [p for s in per_step for p in s], callbacks=[Measure()])
        state["m"] = StepMemory().__enter__()
        trainer.train()
        state.pop("m").__exit__(None, None, None)
    whole.__exit__(None, None, None)
    # the step samplers run every 2 ms, the whole-life one every 10 ms: the peak is the highest of them all
    peak_mb = max([whole.peak / MB] + [r["peak_mb"] for r in records if r["kind"] == "rss"])
    return {"trainer": args.child, "steps": records[args.warmup :], "process_peak_mb": peak_mb}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, steps=2, warmup=1)
    ap.add_argument("--child", choices=["gapg", "trl"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--trainers", default="gapg,trl", help="comma list of gapg, trl")
    args, overrides = ap.parse_known_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args, overrides)), flush=True)
        return {}

    passthrough = ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.model:
        passthrough += ["--model", args.model]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    results = {}
    for name in [t for t in args.trainers.split(",") if t]:
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_memory", "--child", name, *passthrough, *overrides],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"memory child {name} failed (exit {proc.returncode})")
        results[name] = json.loads(lines[-1][len("RESULT ") :])
        print(f"{name}: measured in {time.time() - t0:.0f}s", flush=True)

    from settings import load_config

    cfg = load_config(args.config, overrides + ([f"model.name_or_path={args.model}"] if args.model else []))
    kind = next(iter(results.values()))["steps"][0]["kind"]
    rows = []
    for name, r in results.items():
        before, peak, step = (mean_std([s[k] for s in r["steps"]]) for k in ("before_mb", "peak_mb", "step_mb"))
        rows.append(
            [
                {"gapg": "GAPG (ours)", "trl": "TRL GRPOTrainer"}[name],
                f"{before[0]:.0f}",
                f"{peak[0]:.0f}",
                f"{step[0]:.0f} ± {step[1]:.0f}",
                f"{r['process_peak_mb']:.0f}",
            ]
        )
        r["summary"] = {"before_mb": before[0], "peak_mb": peak[0], "step_mb": step[0], "step_mb_std": step[1]}
    what = "CUDA max_memory_allocated" if kind == "cuda_allocated" else "resident set size (RSS, sampled every 2 ms)"
    title = (
        f"== peak memory of a training step: {what} ==\n"
        f"model {cfg.model.name_or_path}; {cfg.rl.batch_prompts} prompts x "
        f"G={cfg.rl.group_size}, max_new_tokens {cfg.rl.max_new_tokens}, micro-batch {cfg.train.micro_batch_size}; "
        f"{args.steps} measured steps after {args.warmup} warm-up, one process per trainer; {device_name()}"
    )
    print(
        "\n"
        + table(["trainer", "at step start MB", "peak in step MB", "step adds MB", "process peak RSS MB"], rows, title)
    )
    result = {
        "benchmark": "memory",
        "command": command_line(),
        "device": device_name(),
        "kind": kind,
        "model": cfg.model.name_or_path,
        "trainers": results,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
