"""How a training step's cost grows with G and with the response length: GAPG and TRL on the same axes.

    python -m benchmarks.bench_scaling --out docs/data/bench/scaling_cpu    # .json and .png; resumable
    python -m benchmarks.bench_scaling --groups 4,8 --tokens 32,64 --prompts 2 --out /tmp/scaling

Each point is one run of ``benchmarks/bench_train_step.py --fixed-length`` (GAPG and TRL GRPOTrainer, the same
prompts, every completion exactly T tokens): G in ``--groups`` at T = ``--base-tokens``, and T in ``--tokens``
at G = ``--base-group``.  A finished point is written to ``<out>.json`` at once, and a rerun skips the points
already there, so a stopped run loses only the point in flight.  The plot (``<out>.png``) shows seconds per
step against G and against T, one line per trainer, with the spread over the measured steps as error bars.
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.common import command_line, device_name


def points(groups, tokens, base_group, base_tokens) -> list[tuple[int, int]]:
    """(G, T) pairs: the G sweep at base_tokens, then the T sweep at base_group, without repeats."""
    out = [(g, base_tokens) for g in groups] + [(base_group, t) for t in tokens]
    return list(dict.fromkeys(out))


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = results["meta"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis, fixed_key, fixed in (
        (axes[0], "G", "T", meta["base_tokens"]),
        (axes[1], "T", "G", meta["base_group"]),
    ):
        pts = sorted((p for p in results["points"].values() if p[fixed_key] == fixed), key=lambda p: p[axis])
        for trainer, style, color in (("gapg", "o-", "C0"), ("trl", "s--", "C3")):
            xs = [p[axis] for p in pts if trainer in p]
            ys = [p[trainer]["total_s"]["mean"] for p in pts if trainer in p]
            es = [p[trainer]["total_s"]["std"] for p in pts if trainer in p]
            gen = [p[trainer]["generation_s"]["mean"] for p in pts if trainer in p]
            label = "GAPG (ours)" if trainer == "gapg" else "TRL GRPOTrainer"
            ax.errorbar(xs, ys, yerr=es, fmt=style, color=color, capsize=3, label=f"{label}: step")
            ax.plot(xs, gen, style[0] + ":", color=color, alpha=0.5, label=f"{label}: its generation")
        ax.set_xscale("log", base=2)
        ax.set_xticks([p[axis] for p in pts], [str(p[axis]) for p in pts])
        ax.set_xlabel("G (responses per prompt)" if axis == "G" else "max_new_tokens (fixed length)")
        ax.set_ylabel("seconds")
        ax.set_title(f"{meta['prompts']} prompts, {fixed_key} = {fixed}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    steps = f"{meta.get('steps', 1)} measured step(s) per point after {meta.get('warmup', 1)} warm-up"
    fig.suptitle(f"Training-step cost, SmolLM2-135M, {meta['device']}; {steps}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="writes <out>.json (point by point) and <out>.png")
    ap.add_argument("--groups", default="4,8,16", help="G values (at --base-tokens)")
    ap.add_argument("--tokens", default="32,64,128,256", help="max_new_tokens values (at --base-group)")
    ap.add_argument("--base-group", type=int, default=4)
    ap.add_argument("--base-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step (P)")
    ap.add_argument("--steps", type=int, default=1, help="measured steps per point")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps per point before them")
    args, overrides = ap.parse_known_args(argv)

    from benchmarks import bench_train_step

    path = args.out + ".json"
    results = json.load(open(path)) if os.path.exists(path) else {"points": {}}
    results["meta"] = {
        "command": command_line(),
        "device": device_name(),
        "prompts": args.prompts,
        "base_group": args.base_group,
        "base_tokens": args.base_tokens,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    todo = points(
        [int(g) for g in args.groups.split(",")],
        [int(t) for t in args.tokens.split(",")],
        args.base_group,
        args.base_tokens,
    )
    for i, (G, T) in enumerate(todo):
        key = f"G={G},T={T}"
        if key in results["points"]:
            print(f"[{i + 1}/{len(todo)}] {key}: done before, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(todo)}] {key} ...", flush=True)
        r = bench_train_step.main(
            ["--fixed-length", "--steps", str(args.steps), "--warmup", str(args.warmup)]
            + [f"rl.group_size={G}", f"rl.max_new_tokens={T}", f"rl.batch_prompts={args.prompts}"]
            + [f"rl.rollout_prompts={args.prompts}", *overrides]
        )
        results["points"][key] = {"G": G, "T": T, "gapg": r["gapg"], "trl": r["trl"], "speedup": r["speedup"]}
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)  # a stop mid-write leaves the previous file whole
        plot(results, args.out + ".png")
    plot(results, args.out + ".png")
    print(f"wrote {path} and {args.out}.png")
    return results


if __name__ == "__main__":
    main()
