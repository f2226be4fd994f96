"""A run's learning curve from its metrics.jsonl and its held-out evaluations: reward and accuracy, offload rate
(overall, and per level in small panels) against the budget, and γ, per integer step.  train.py writes
``<output_dir>/learning_curve.png`` at the end of every run (also a resumed one);
redraw any run with

    python -m scripts.plot_metrics outputs/cpu_route_1h --out docs/data/cpu_route_1h.png

and put runs side by side (γ, the training offload, and the held-out offload and accuracy at every evaluation) with

    python -m scripts.plot_metrics --compare "dual 0.5=outputs/a,dual 0.1=outputs/b" --out docs/compare.png
"""

from __future__ import annotations

import json
import os


def run_metrics(run_dir: str) -> list[dict]:
    """The lines of a run's metrics.jsonl (training steps and evaluation lines alike); [] when there are none."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_config(run_dir: str) -> dict:
    """The resolved config train.py saved beside the run (config.json)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        return json.load(f)


def learning_curve_figure(run_dir: str):
    """The learning curve of ``run_dir`` as a matplotlib figure, or None when the run has no metrics yet.

    Top row: reward and device accuracy, the offload rate against the budget, and γ, per training step, with the
    held-out evaluations (eval/before.json at step 0, eval/step-N.json, eval/final.json) as large markers at their
    steps (accuracy; the offload the policy asks for).  Bottom row, one small panel per difficulty level on a shared
    0-1 scale: that level's offload in training and at each held-out evaluation.  Steps are integers on every axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in run_metrics(run_dir) if "step" in r and "eval" not in r]
    if not rows:
        return None
    budget = run_config(run_dir)["rl"]["budget"]
    points = held_out_points(run_dir)
    steps = [r["step"] for r in rows]
    levels = {str(k) for r in rows for k in r.get("offload_by_level", {})}
    levels |= {str(k) for _, p in points for k in p.get("per_level", {})}  # levels a step's sample missed
    levels = sorted(levels, key=lambda k: (len(k), k))
    fig = plt.figure(figsize=(15, 7.5 if levels else 4.2))
    grid = fig.add_gridspec(
        2 if levels else 1, max(len(levels), 3) * 2 if levels else 3, height_ratios=[3, 2][: 1 + bool(levels)]
    )
    width = grid.ncols // 3
    top = [fig.add_subplot(grid[0, i * width : (i + 1) * width]) for i in range(3)]
    nan = float("nan")
    eval_steps = [s for s, _ in points]

    ax = top[0]
    ax.plot(steps, [r.get("reward", nan) for r in rows], marker="o", label="mean reward r̃ (training)")
    ax.plot(steps, [r.get("device_acc", nan) for r in rows], marker=".", label="device accuracy (training)")
    if points:
        ax.plot(
            eval_steps,
            [p["overall_acc"] for _, p in points],
            "D",
            ms=8,
            color="C3",
            label="held-out accuracy (device + cloud)",
        )
    ax.set(title="reward and accuracy", ylabel="reward / accuracy")
    ax.set_ylim(min(ax.get_ylim()[0], -0.03), max(ax.get_ylim()[1], 1.03))

    ax = top[1]
    ax.plot(steps, [r.get("offload_rate", nan) for r in rows], marker="o", color="black", label="training rollouts")
    if points:
        wanted = [p.get("wanted_offload_rate", p.get("offload_rate", nan)) for _, p in points]
        ax.plot(eval_steps, wanted, "D", ms=8, color="C3", label="held-out (asked for)")
    ax.axhline(budget, ls="--", color="red", label=f"budget {budget:.0%}")
    ax.set(title="offload rate, all levels", ylabel="share sent to the cloud", ylim=(-0.03, 1.03))

    ax = top[2]
    ax.plot(steps, [r.get("gamma", nan) for r in rows], marker="o", color="purple")
    ax.set(title="Lagrange multiplier γ", ylabel="γ")

    small = []
    for i, lvl in enumerate(levels):
        ax = fig.add_subplot(grid[1, i * 2 : i * 2 + 2], sharey=small[0] if small else None)
        by_level = [{str(k): v for k, v in r.get("offload_by_level", {}).items()} for r in rows]
        ax.plot(steps, [b.get(lvl, nan) for b in by_level], marker=".", color=f"C{i % 10}")
        held = [(s, p.get("per_level", {}).get(str(lvl), {}).get("offload_rate")) for s, p in points]
        held = [(s, v) for s, v in held if v is not None]
        if held:
            ax.plot([s for s, _ in held], [v for _, v in held], "D", ms=6, color="C3")
        ax.axhline(budget, ls="--", color="red", lw=0.8)
        ax.set_title(f"level {lvl}", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        if small:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel("offload rate")
        small.append(ax)
    first, last = min(steps + eval_steps), max(steps + eval_steps)
    for ax in top + small:
        ax.set_xlabel("step")
        ax.set_xlim(first - 0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    top[0].legend(fontsize=8)
    top[1].legend(fontsize=8)
    if small:
        small[0].figure.text(
            0.5,
            0.005,
            "per level: training offload (line), held-out offload (diamonds), budget (dashed)",
            ha="center",
            fontsize=8,
        )
    fig.tight_layout(rect=(0, 0.02 if small else 0, 1, 1))
    return fig


def plot_learning_curve(run_dir: str, out: str | None = None) -> str | None:
    """Write the learning curve of ``run_dir`` (``learning_curve_figure``) to ``out`` (default
    ``<run_dir>/learning_curve.png``); returns the path, or None when the run has no metrics yet."""
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(run_dir)
    if fig is None:
        return None
    out = out or os.path.join(run_dir, "learning_curve.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def held_out_points(run_dir: str, max_steps: int | None = None) -> list[tuple[int, dict]]:
    """(step, the policy's row) of every held-out evaluation a run wrote (eval/before.json, eval/step-N.json,
    eval/final.json), in step order; ``final`` is at ``max_steps`` (default: ``train.max_steps`` of config.json)."""
    max_steps = run_config(run_dir)["train"]["max_steps"] if max_steps is None else max_steps
    points = []
    for name in os.listdir(os.path.join(run_dir, "eval")) if os.path.isdir(os.path.join(run_dir, "eval")) else []:
        stem = name[: -len(".json")] if name.endswith(".json") else None  # not the .samples.jsonl beside each
        if stem is None or not (
            stem in ("before", "final") or (stem.startswith("step-") and stem[len("step-") :].isdigit())
        ):
            continue
        step = {"before": 0, "final": max_steps}[stem] if stem in ("before", "final") else int(stem[len("step-") :])
        rows = json.load(open(os.path.join(run_dir, "eval", name)))
        policy = next((r for r in rows if r.get("method") == "policy"), None)
        if policy is not None:
            points.append((step, policy))
    return sorted(points, key=lambda p: p[0])


def plot_run_comparison(runs: dict[str, str], out: str, smooth: int = 5) -> str:
    """Runs side by side: γ per step, the training usage (offload rate, or calls per rollout in query mode: a
    ``smooth``-step running mean over the faint raw curve, and the greedy probe's usage as dashed points where
    rl.usage_signal=greedy measured it), and at every held-out evaluation the usage the policy asks for before the
    cap and the accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    nan = float("nan")
    budget = None
    for i, (label, run_dir) in enumerate(runs.items()):
        color = f"C{i}"
        cfg = run_config(run_dir)
        query = cfg["rl"].get("env") == "query"
        key, wanted_key = (
            ("calls_per_rollout", "wanted_calls_per_problem") if query else ("offload_rate", "wanted_offload_rate")
        )
        rows = [r for r in run_metrics(run_dir) if key in r]
        budget = cfg["rl"]["budget"]
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r.get("gamma", nan) for r in rows], color=color, marker=".", label=label)
        raw = [r[key] for r in rows]
        mean = [
            sum(raw[max(0, j - smooth + 1) : j + 1]) / len(raw[max(0, j - smooth + 1) : j + 1]) for j in range(len(raw))
        ]
        axes[1].plot(steps, raw, color=color, alpha=0.25)
        axes[1].plot(steps, mean, color=color, label=f"{label} ({smooth}-step mean)")
        probe = [(r["step"], r["usage_greedy"]) for r in rows if "usage_greedy" in r]
        if probe:
            axes[1].plot(*zip(*probe), color=color, ls="--", marker="x", label=f"{label} (greedy probe)")
        points = held_out_points(run_dir, cfg["train"]["max_steps"])
        wanted = [p.get(wanted_key, p["offload_rate"]) for _, p in points]
        axes[2].plot([s for s, _ in points], wanted, color=color, marker="o", label=label)
        accs = [p["overall_acc"] for _, p in points]
        errs = [
            [a - p["overall_ci"][0] for a, (_, p) in zip(accs, points)],
            [p["overall_ci"][1] - a for a, (_, p) in zip(accs, points)],
        ]
        axes[3].errorbar([s for s, _ in points], accs, yerr=errs, color=color, marker="o", capsize=3, label=label)
    for ax in axes[1:3]:
        ax.set_ylim(0, max(ax.get_ylim()[1], 1.2 * (budget or 0)))
        if budget is not None:
            ax.axhline(budget, ls="--", color="red", label=f"budget {budget:.0%}")
    titles = [
        "Lagrange multiplier γ",
        "cloud usage in training (offload, or calls per rollout)",
        "held-out usage the greedy policy asks for",
        "held-out accuracy (95% CI over problems)",
    ]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
