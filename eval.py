"""Budget-capped held-out evaluation of a routing policy (SPEC §7).

    python eval.py --config configs/cpu_default.yaml --model outputs/cpu_default/final rl.budget=0.3

Greedy decoding.  The device answers every problem; a response ending in
``<unknown>`` goes to the cloud while the cloud share is under the budget cap
(``floor(budget·N)`` calls, granted in dataset order); escalations beyond the cap
are answered by the device (its own text before the tag is graded).

Reported, for the policy and for two baselines computed from the same device
outputs at the same budget:
  * policy         -- the trained routing policy, capped
  * never          -- task-tuning only: the device answers everything
  * random         -- naive offloading: a random budget share goes to the cloud
overall accuracy (device + cloud), conditional accuracy (device correct / problems
kept on device), offload rate, cloud calls, and offload rate per difficulty level.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections import defaultdict

from tqdm.auto import tqdm

from envs.tasks import grade_response


def _summarise(name, problems, rollouts, to_cloud, cloud_ok):
    n = len(problems)
    kept = [i for i in range(n) if i not in to_cloud]
    device_ok = sum(rollouts[i].device_correct for i in kept)
    cloud_right = sum(cloud_ok[i] for i in to_cloud)
    by_level = defaultdict(lambda: [0, 0, 0, 0])  # problems, sent to cloud, kept, kept-correct
    for i, p in enumerate(problems):
        b = by_level[p.level]
        b[0] += 1
        if i in to_cloud:
            b[1] += 1
        else:
            b[2] += 1
            b[3] += rollouts[i].device_correct
    return {
        "method": name,
        "n": n,
        "overall_acc": (device_ok + cloud_right) / max(n, 1),
        "device_acc": device_ok / max(len(kept), 1),
        "offload_rate": len(to_cloud) / max(n, 1),
        "cloud_calls": len(to_cloud),
        "per_level": {
            str(k): {"n": v[0], "offload_rate": v[1] / v[0], "device_acc": v[3] / max(v[2], 1)} for k, v in sorted(by_level.items())
        },
    }


def evaluate(env, generator, problems, budget: float, batch_size: int = 32, max_new_tokens: int = 64, seed: int = 0, progress=True):
    """Greedy rollouts, the budget cap, and the policy/never/random rows. Returns (rows, records)."""
    rollouts = []
    bar = tqdm(range(0, len(problems), batch_size), desc="eval", disable=not progress, leave=False)
    for start in bar:
        chunk = problems[start : start + batch_size]
        out = generator.generate([env.prompt(p) for p in chunk], n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        rollouts += [env.judge(p, g[0]) for p, g in zip(chunk, out)]
    cap = math.floor(budget * len(problems) + 1e-9)
    wants = [i for i, r in enumerate(rollouts) if r.escalated]
    policy_cloud = set(wants[:cap])  # fixed order: dataset order
    random_cloud = set(random.Random(seed).sample(range(len(problems)), cap))
    asked = sorted(policy_cloud | random_cloud)
    texts = env.cloud.answer_many([problems[i] for i in asked])
    cloud_ok = defaultdict(bool)
    cloud_text = {}
    for i, t in zip(asked, texts):
        cloud_text[i] = t
        cloud_ok[i] = grade_response(problems[i], t)[1]
    rows = [
        _summarise("policy", problems, rollouts, policy_cloud, cloud_ok),
        _summarise("never", problems, rollouts, set(), cloud_ok),
        _summarise("random", problems, rollouts, random_cloud, cloud_ok),
    ]
    rows[0]["wanted_offload_rate"] = len(wants) / max(len(problems), 1)
    records = [
        {
            "uid": p.uid,
            "level": p.level,
            "question": p.question,
            "gold": p.answer,
            "device_output": r.sample.text,
            "device_answer": r.local_answer,
            "device_correct": r.device_correct,
            "escalated": r.escalated,
            "sent_to_cloud": i in policy_cloud,
            "cloud_output": cloud_text.get(i) if i in policy_cloud else None,
            "correct": (cloud_ok[i] if i in policy_cloud else r.device_correct),
        }
        for i, (p, r) in enumerate(zip(problems, rollouts))
    ]
    return rows, records


def format_table(rows) -> str:
    head = f"{'method':<8} {'overall':>8} {'device':>8} {'offload':>8} {'calls':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<8} {100 * r['overall_acc']:>7.1f}% {100 * r['device_acc']:>7.1f}% {100 * r['offload_rate']:>7.1f}% {r['cloud_calls']:>6}"
        )
    levels = rows[0]["per_level"]
    if len(levels) > 1:
        lines.append("policy offload rate per level: " + "  ".join(f"L{k}={100 * v['offload_rate']:.0f}%" for k, v in levels.items()))
        if "wanted_offload_rate" in rows[0]:
            lines.append(f"policy asked for the cloud on {100 * rows[0]['wanted_offload_rate']:.1f}% (cap {100 * rows[0]['cloud_calls'] / max(rows[0]['n'], 1):.1f}% used)")
    return "\n".join(lines)


def main(argv=None):
    from rl.config import ConfigError, format_help, load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ap.add_argument("--config", default=None)
    ap.add_argument("--model", default=None, help="checkpoint / local dir / hub id (default: model.name_or_path)")
    ap.add_argument("--out", default=None, help="where to write summary.json and samples.jsonl")
    ap.add_argument("-h", "--help", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    if args.help:
        ap.print_help()
        print(format_help())
        return 0
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.model:
        cfg.model.name_or_path = args.model
        cfg.model.lora = False
    from envs.route import RouteEnv
    from envs.tasks import load_problems, template_for
    from policies.cloud import make_cloud
    from policies.device import load_device_model
    from policies.generation import HFGenerator

    out = args.out or os.path.join(cfg.train.output_dir, "eval")
    model, tok = load_device_model(cfg.model, for_training=False)
    cloud = make_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "cloud_cache.jsonl"))
    env = RouteEnv(template_for(cfg.task), tok, cloud, cfg.task.max_solve_steps)
    _, test = load_problems(cfg.task)
    rows, records = evaluate(env, HFGenerator(model, tok), test, cfg.rl.budget, cfg.train.eval_batch_size, cfg.train.eval_max_new_tokens, cfg.train.seed)
    print(format_table(rows))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(out, "samples.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {out}/summary.json and samples.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
