"""Plot a run's learning curve from its metrics.jsonl: reward, offload rate (overall and per level), γ.

python -m scripts.plot_metrics outputs/cpu_route_1h --out docs/cpu_route_1h.png
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None, help="PNG path (default: <run_dir>/learning_curve.png)")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in open(os.path.join(args.run_dir, "metrics.jsonl"))]
    budget = json.load(open(os.path.join(args.run_dir, "config.json")))["rl"]["budget"]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r["reward"] for r in rows], marker="o", label="mean reward r̃")
    axes[0].plot(steps, [r["device_acc"] for r in rows], marker=".", label="device accuracy (local answers)")
    axes[0].set_title("reward")
    axes[1].plot(steps, [r["offload_rate"] for r in rows], marker="o", color="black", label="all levels")
    levels = sorted(rows[0]["offload_by_level"], key=int)
    cmap = plt.get_cmap("viridis", len(levels))
    for i, lvl in enumerate(levels):
        axes[1].plot(
            steps,
            [r["offload_by_level"].get(lvl, float("nan")) for r in rows],
            color=cmap(i),
            alpha=0.8,
            label=f"level {lvl}",
        )
    axes[1].axhline(budget, ls="--", color="red", label=f"budget {budget:.0%}")
    axes[1].set_title("offload rate of training rollouts")
    axes[2].plot(steps, [r["gamma"] for r in rows], marker="o", color="purple")
    axes[2].set_title("Lagrange multiplier γ")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = args.out or os.path.join(args.run_dir, "learning_curve.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
