"""The budget-control grid: does the greedy policy want the budget it was trained for? Table and picture.

    python -m scripts.budget_grid docs/data/budget_control --out docs/data/budget_control_grid

Reads the runs' files as the grid stores them, one set per (controller variant, seed, budget)::

    <dir>/<variant>-seed<s>-b<b>.metrics.jsonl        the trainer's metrics.jsonl (γ, usage per step)
    <dir>/<variant>-seed<s>-b<b>.eval-step-10.json    the held-out evaluation after 10 steps (eval/step-10.json)
    <dir>/<variant>-seed<s>-b<b>.eval-final.json      ... after the last step (eval/final.json)

Where two variants ran the same (seed, budget), ``<stem>.correct-<tag>.json`` (each problem's capped correctness,
in the evaluation's order) gives their paired accuracy difference with a 95% bootstrap interval over problems.
``--store RUN_DIR STEM`` files one finished run that way (what the grid's driver calls after each point)::

    python -m scripts.budget_grid --store outputs/bc/pid_greedy/seed-0/budget-0.3 \
        docs/data/budget_control/pid_greedy-seed0-b0.3

The other modes are filed beside it, one set per (variant, seed), at their config's budget::

    <dir>/query-<variant>-seed<s>.metrics.jsonl / .eval-final.json     query mode (configs/cpu_query.yaml)
    <dir>/dpo_<variant>-seed<s>.rounds.json / .eval-before.json / .eval-final.json   routing DPO (configs/cpu_dpo.yaml)

and, when there are any, ``<out>_modes.png`` puts the modes side by side (one row per mode: route at the 30%
budget, query, DPO; γ, the controlled usage and the held-out wanted usage per step or round, one colour per variant).

It writes ``<out>.md`` (per variant and budget: the held-out wanted offload and accuracy at each evaluated step, as
means with 95% t-intervals over seeds, how many runs want the budget within ±``--tolerance`` points, γ at most) and
``<out>.png`` (one panel per budget: γ, the controlled usage and the held-out wanted offload per step, one colour per
variant).  The wanted offload is the share of held-out problems the greedy policy ends with ``<unknown>`` before the
evaluation's cap (``wanted_offload_rate`` of the ``policy`` row); accuracy is the capped overall accuracy.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import re
import shutil
from collections import defaultdict

from evaluation.metrics import bootstrap_ci
from evaluation.results import fmt, mean_ci

TAG = r"step-\d+|final"  # an evaluation's name in a run's eval/ folder: after step N, or after the last step
NAME_TAG = re.compile(rf"^({TAG})\.json$")
NAME = re.compile(rf"^(?P<variant>.+)-seed(?P<seed>\d+)-b(?P<budget>[0-9.]+)\.eval-(?P<tag>{TAG})\.json$")


def policy_row(path: str) -> dict:
    """The ``policy`` row of a held-out evaluation's JSON (eval/<tag>.json as the grid files it)."""
    return next(r for r in json.load(open(path)) if r["method"] == "policy")


def read_grid(folder: str) -> dict:
    """{(variant, budget): {seed: {"evals": {step: policy row}, "metrics": [steps]}}} from the grid's files."""
    grid: dict = defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(folder, "*.eval-*.json"))):
        m = NAME.match(os.path.basename(path))
        if not m:
            continue
        stem = path[: path.rindex(".eval-")]
        metrics = (
            [json.loads(line) for line in open(stem + ".metrics.jsonl")]
            if os.path.exists(stem + ".metrics.jsonl")
            else []
        )
        steps = [r for r in metrics if "step" in r]
        tag = m["tag"]
        step = int(tag.split("-")[1]) if tag.startswith("step-") else max((r["step"] for r in steps), default=0)
        policy = policy_row(path)
        run = grid[(m["variant"], float(m["budget"]))].setdefault(int(m["seed"]), {"evals": {}, "metrics": steps})
        run["evals"][step] = policy
        correct = f"{stem}.correct-{tag}.json"
        if os.path.exists(correct):
            run.setdefault("correct", {})[step] = json.load(open(correct))
    return grid


def store_run(run_dir: str, stem: str) -> list[str]:
    """File a finished run of the grid: its metrics.jsonl, every held-out evaluation's policy rows
    (``eval/step-N.json``, ``eval/final.json``) and, from each evaluation's samples, the problems' uids and capped
    correctness (``<stem>.correct-<tag>.json``).  Returns the paths written."""
    evals = sorted(f[: -len(".json")] for f in os.listdir(os.path.join(run_dir, "eval")) if NAME_TAG.match(f))
    if "final" not in evals:
        raise FileNotFoundError(f"{run_dir}/eval/final.json: the run has not finished its last evaluation")
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    written = [shutil.copyfile(os.path.join(run_dir, "metrics.jsonl"), f"{stem}.metrics.jsonl")]
    for tag in evals:
        written.append(shutil.copyfile(os.path.join(run_dir, "eval", f"{tag}.json"), f"{stem}.eval-{tag}.json"))
        samples = os.path.join(run_dir, "eval", f"{tag}.samples.jsonl")
        if os.path.exists(samples):
            rows = [json.loads(line) for line in open(samples)]
            with open(f"{stem}.correct-{tag}.json", "w") as f:
                json.dump({"uid": [r["uid"] for r in rows], "correct": [bool(r["correct"]) for r in rows]}, f)
            written.append(f"{stem}.correct-{tag}.json")
    return written


def paired_rows(grid: dict) -> list[dict]:
    """Every pair of variants evaluated on the same (budget, seed, step) with per-problem correctness: accuracy of
    the first minus the second (variants in name order), with the paired 95% bootstrap interval over problems."""
    out = []
    variants, budgets = sorted({v for v, _ in grid}), sorted({b for _, b in grid})
    for budget, (a, b) in itertools.product(budgets, itertools.combinations(variants, 2)):
        runs_a, runs_b = grid.get((a, budget), {}), grid.get((b, budget), {})
        for seed in sorted(set(runs_a) & set(runs_b)):
            ca, cb = runs_a[seed].get("correct", {}), runs_b[seed].get("correct", {})
            for step in sorted(set(ca) & set(cb)):
                if ca[step]["uid"] != cb[step]["uid"]:
                    raise ValueError(f"{a} and {b} (seed {seed}, budget {budget}) evaluated other problems")
                xa, xb = ca[step]["correct"], cb[step]["correct"]
                diff = (sum(xa) - sum(xb)) / len(xa)
                out.append(dict(a=a, b=b, budget=budget, seed=seed, step=step, diff=diff, ci=bootstrap_ci(xa, xb)))
    return out


def summary_rows(grid: dict, tolerance: float) -> list[dict]:
    """One row per (variant, budget, evaluated step): wanted offload and accuracy over seeds, runs within tolerance."""
    out = []
    for (variant, budget), runs in sorted(grid.items()):
        for step in sorted({s for r in runs.values() for s in r["evals"]}):
            rows = [r["evals"][step] for r in runs.values() if step in r["evals"]]
            wanted = [r["wanted_offload_rate"] for r in rows]
            acc = [r["overall_acc"] for r in rows]
            gmax = [
                max((m["gamma_next"] for m in r["metrics"] if m["step"] <= step), default=0.0)
                for r in runs.values()
                if step in r["evals"]
            ]
            out.append(
                {
                    "variant": variant,
                    "budget": budget,
                    "step": step,
                    "seeds": len(rows),
                    "wanted": mean_ci(wanted),
                    "accuracy": mean_ci(acc),
                    "within": sum(abs(w - budget) <= tolerance / 100 for w in wanted),
                    "over": sum(w - budget > tolerance / 100 for w in wanted),
                    "gamma_max": max(gmax, default=0.0),
                }
            )
    return out


def write_markdown(rows: list[dict], path: str, tolerance: float, command: str, pairs: list[dict] = ()) -> str:
    lines = [
        f"Made by `{command}`. Greedy held-out policy on 350 problems; means with 95% t-intervals over seeds.",
        "",
        f"| controller | budget | step | seeds | wanted offload | within ±{tolerance:g} pts | over | under | accuracy "
        "| γ at most |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['budget']:.0%} | {r['step']} | {r['seeds']} | {fmt(*r['wanted'])}% | "
            f"{r['within']}/{r['seeds']} | {r['over']} | {r['seeds'] - r['within'] - r['over']} | "
            f"{fmt(*r['accuracy'])}% | {r['gamma_max']:.3f} |"
        )
    by_step = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        by_step[(r["variant"], r["step"])][0] += r["within"]
        by_step[(r["variant"], r["step"])][1] += r["over"]
        by_step[(r["variant"], r["step"])][2] += r["seeds"]
    lines += [
        "",
        "Runs whose greedy policy wants the budget within the tolerance (and how many want more), over every budget:",
        "",
    ]
    lines += [f"- {v}, step {s}: {a} of {n} ({o} over)" for (v, s), (a, o, n) in sorted(by_step.items())]
    if pairs:
        lines += [
            "",
            "Same seed and budget, two controllers: accuracy difference on the same problems (paired 95% bootstrap "
            "interval over problems).",
            "",
            "| difference | budget | seed | step | points | 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['a']} − {p['b']} | {p['budget']:.0%} | {p['seed']} | {p['step']} | {100 * p['diff']:+.1f} | "
            f"[{100 * p['ci'][0]:+.1f}, {100 * p['ci'][1]:+.1f}] |"
            for p in pairs
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def plot(grid: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({b for _, b in grid})
    variants = sorted({v for v, _ in grid})
    colours = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(2, len(budgets), figsize=(4.2 * len(budgets), 6.5), squeeze=False, sharex=True)
    for j, budget in enumerate(budgets):
        top, bottom = axes[0][j], axes[1][j]
        for variant in variants:
            for seed, run in sorted(grid.get((variant, budget), {}).items()):
                c = colours[variant]
                label = variant if seed == min(grid[(variant, budget)]) else None
                steps = [m["step"] for m in run["metrics"]]
                signal = [m.get("usage_greedy", m.get("offload_rate")) for m in run["metrics"]]
                top.plot(steps, signal, color=c, alpha=0.35, lw=1)
                ev = sorted(run["evals"].items())
                top.plot([s for s, _ in ev], [r["wanted_offload_rate"] for _, r in ev], "o-", color=c, label=label)
                bottom.plot(steps, [m["gamma"] for m in run["metrics"]], color=c, label=label)
        top.axhline(budget, color="k", ls="--", lw=1)
        top.axhspan(budget - 0.03, budget + 0.03, color="k", alpha=0.07)
        top.set_title(f"budget {budget:.0%}")
        top.set_ylim(0, 1)
        bottom.set_xlabel("step")
        if j == 0:
            top.set_ylabel("offload: held-out wanted (dots),\ncontrolled signal (thin)")
            bottom.set_ylabel("γ")
            top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


MODE_FILES = {
    "query": re.compile(r"^query-(?P<variant>.+)-seed(?P<seed>\d+)\.eval-final\.json$"),
    "DPO": re.compile(r"^dpo_(?P<variant>.+)-seed(?P<seed>\d+)\.rounds\.json$"),
}
ROUTE_BUDGET = 0.3  # the route row of the modes picture: the budget the query and DPO configs use


def read_modes(folder: str, grid: dict) -> dict:
    """{mode: {(variant, seed): {"steps", "gamma", "usage", "probe": [(step, u)], "wanted": [(step, u)],
    "budget"}}}: the route grid at ROUTE_BUDGET, and the query and DPO files (see the module docstring)."""
    modes: dict = defaultdict(dict)
    for (variant, budget), runs in grid.items():
        for seed, run in runs.items() if budget == ROUTE_BUDGET else ():
            m = run["metrics"]
            modes["route"][(variant, seed)] = {
                "steps": [r["step"] for r in m],
                "gamma": [r.get("gamma_next", r["gamma"]) for r in m],
                "usage": [r.get("offload_rate", float("nan")) for r in m],
                "probe": [(r["step"], r["usage_greedy"]) for r in m if "usage_greedy" in r],
                "wanted": [(s, e["wanted_offload_rate"]) for s, e in sorted(run["evals"].items())],
                "budget": budget,
            }
    for name in sorted(os.listdir(folder)):
        for mode, pattern in MODE_FILES.items():
            hit = pattern.match(name)
            if not hit:
                continue
            stem = os.path.join(folder, name[: name.index(".")])
            policy = policy_row(f"{stem}.eval-final.json")
            if mode == "query":
                m = [r for r in map(json.loads, open(f"{stem}.metrics.jsonl")) if "step" in r]
                steps, usage = [r["step"] for r in m], [r["calls_per_rollout"] for r in m]
                gamma, probe = (
                    [r.get("gamma_next", r["gamma"]) for r in m],
                    [(r["step"], r["usage_greedy"]) for r in m if "usage_greedy" in r],
                )
                wanted, budget = [(steps[-1], policy["wanted_calls_per_problem"])], None
            else:
                rounds = json.load(open(f"{stem}.rounds.json"))
                steps, usage = [r["round"] for r in rounds], [r["usage"] for r in rounds]
                gamma, probe = (
                    [r.get("gamma_next", r["gamma"]) for r in rounds],
                    [(r["round"], r["usage_greedy"]) for r in rounds if "usage_greedy" in r],
                )
                wanted, budget = [(steps[-1], policy["wanted_offload_rate"])], rounds[0]["budget"]
                if os.path.exists(f"{stem}.eval-before.json"):
                    before = policy_row(f"{stem}.eval-before.json")
                    wanted.insert(0, (0, before["wanted_offload_rate"]))
            modes[mode][(hit["variant"], int(hit["seed"]))] = dict(
                steps=steps, gamma=gamma, usage=usage, probe=probe, wanted=wanted, budget=budget
            )
    return modes


def plot_modes(modes: dict, path: str, query_budget: float | None = None) -> str:
    """One row per mode: γ; the training usage (thin) and the greedy probe (dashed crosses); the held-out usage the
    greedy policy wants (dots), each run one line, one colour per controller variant; the budget dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [m for m in ("route", "query", "DPO") if modes.get(m)]
    variants = sorted({v for runs in modes.values() for v, _ in runs})
    colours = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(len(order), 3, figsize=(14, 3.4 * len(order)), squeeze=False)
    for row, mode in zip(axes, order):
        unit = "calls per problem" if mode == "query" else "offload"
        seen = set()
        for (variant, _seed), run in sorted(modes[mode].items()):
            c, label = colours[variant], (variant if variant not in seen else None)
            seen.add(variant)
            row[0].plot(run["steps"], run["gamma"], color=c, label=label)
            row[1].plot(run["steps"], run["usage"], color=c, alpha=0.35, lw=1)
            if run["probe"]:
                row[1].plot(*zip(*run["probe"]), "x--", color=c, ms=4, lw=1)
            row[2].plot(*zip(*run["wanted"]), "o-", color=c, label=label)
            budget = run["budget"] if run["budget"] is not None else query_budget
        x = "round" if mode == "DPO" else "step"
        for ax, title in zip(row, ("γ", f"training {unit} (thin), greedy probe (x)", f"held-out wanted {unit}")):
            ax.set_title(f"{mode}: {title}", fontsize=10)
            ax.set_xlabel(x)
            if ax is not row[0] and budget is not None:
                ax.axhline(budget, color="k", ls="--", lw=1)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", help="the grid's files (<variant>-seed<s>-b<b>.metrics.jsonl / .eval-*.json)")
    ap.add_argument("--out", help="write <out>.md and <out>.png")
    ap.add_argument(
        "--store",
        nargs=2,
        metavar=("RUN_DIR", "STEM"),
        help="file one finished run as <STEM>.metrics.jsonl / .eval-<tag>.json / .correct-<tag>.json, and exit",
    )
    ap.add_argument("--query-budget", type=float, default=0.3, help="the query runs' budget (calls per problem)")
    ap.add_argument("--tolerance", type=float, default=3.0, help="points around the budget that count as holding it")
    args = ap.parse_args(argv)
    if args.store:
        try:
            print("\n".join(store_run(*args.store)))
        except FileNotFoundError as e:
            ap.error(str(e))
        return 0
    if not args.folder or not args.out:
        ap.error("give the grid's folder and --out (or --store RUN_DIR STEM)")
    grid = read_grid(args.folder)
    if not grid:
        ap.error(f"no <variant>-seed<s>-b<b>.eval-*.json files in {args.folder}")
    rows = summary_rows(grid, args.tolerance)
    command = f"python -m scripts.budget_grid {args.folder} --out {args.out}"
    print(write_markdown(rows, args.out + ".md", args.tolerance, command, paired_rows(grid)))
    print(plot(grid, args.out + ".png"))
    modes = read_modes(args.folder, grid)
    if set(modes) - {"route"}:
        print(plot_modes(modes, args.out + "_modes.png", query_budget=args.query_budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
