"""A run's learning curve from its metrics.jsonl: reward, offload rate (overall and per level) against the
budget, and γ.  train.py writes ``<output_dir>/learning_curve.png`` at the end of every run (also a resumed one);
redraw any run with

    python -m scripts.plot_metrics outputs/cpu_route_1h --out docs/cpu_route_1h.png
"""

from __future__ import annotations

import json
import os


def plot_learning_curve(run_dir: str, out: str | None = None) -> str | None:
    """Write the learning curve of ``run_dir`` to ``out`` (default ``<run_dir>/learning_curve.png``); returns the
    path, or None when the run has no metrics yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    rows = [json.loads(line) for line in open(path) if line.strip()]
    budget = json.load(open(os.path.join(run_dir, "config.json")))["rl"]["budget"]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    nan = float("nan")
    axes[0].plot(steps, [r.get("reward", nan) for r in rows], marker="o", label="mean reward r̃")
    axes[0].plot(steps, [r.get("device_acc", nan) for r in rows], marker=".", label="device accuracy (local answers)")
    axes[0].set_title("reward")
    axes[1].plot(steps, [r.get("offload_rate", nan) for r in rows], marker="o", color="black", label="all levels")
    levels = sorted({k for r in rows for k in r.get("offload_by_level", {})}, key=lambda k: (len(str(k)), str(k)))
    cmap = plt.get_cmap("viridis", max(len(levels), 1))
    for i, lvl in enumerate(levels):
        axes[1].plot(
            steps,
            [r.get("offload_by_level", {}).get(lvl, nan) for r in rows],
            color=cmap(i),
            alpha=0.8,
            label=f"level {lvl}",
        )
    axes[1].axhline(budget, ls="--", color="red", label=f"budget {budget:.0%}")
    axes[1].set_title("offload rate of training rollouts")
    axes[2].plot(steps, [r.get("gamma", nan) for r in rows], marker="o", color="purple")
    axes[2].set_title("Lagrange multiplier γ")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = out or os.path.join(run_dir, "learning_curve.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
