"""Offload-budget sweep: train one policy per cloud budget, evaluate it with every baseline, table + plot.

    python sweep.py --config configs/cpu_sweep.yaml --budgets 0.1,0.2,0.3,0.5 --out outputs/sweep
    python sweep.py --config configs/cpu_sweep.yaml --budgets 0.1,0.2 --launch "accelerate launch --num_processes 2"
    python sweep.py --config configs/cpu_sweep.yaml --budgets 0.1,0.2,0.3,0.5 --plot-only    # redraw from the table

For each budget b the sweep runs, in order:
  1. ``train.py --config <config> rl.budget=b train.output_dir=<out>/budget-b`` (in this process, or as a
     separate ``accelerate launch`` job with ``--launch``); a half-trained point continues from its last
     checkpoint (``--resume``), a finished one (``final/`` exists) is skipped;
  2. ``eval.py --model budget-b=<out>/budget-b/final --base-model <config's model> --budget b`` into one
     shared ``<out>/eval`` folder, so the base model's outputs, the router and the cloud answers are made once
     for the whole sweep; a finished point (``<out>/budget-b/eval.json``) is skipped.
Then it writes ``<out>/sweep.csv`` and ``sweep.json`` (one row per budget and method) and ``sweep.png``:
overall accuracy against the cloud share actually used, one line per method (error bars: each point's 95%
bootstrap CI over problems, where the rows carry one), with the cloud-only and device-only accuracies as
reference lines.  Training runs share the wandb group ``--group``.

Grid mode (``--methods`` and/or ``--seeds``): the results grid of method (``rl.advantage``: gapg, grpo,
dr_grpo) x budget x seed.  Each point trains into ``<out>/<method>/seed-<s>/budget-<b>`` (skipped when
finished, resumed when half done; once finished only its ``final/`` stays unless ``--keep-checkpoints``);
each (budget, seed) is evaluated once with all its methods and the baselines (paired comparisons between
every row), into ``<out>/eval-points/``; after every point
``--report`` (default ``<out>/results``) gets ``.md`` (means ± 95% t-intervals over seeds, bootstrap CIs
over problems, comparisons), ``.csv``, ``.png`` and ``_offload.png`` (evaluation/results.py):

    python sweep.py --config configs/cpu_results.yaml --budgets 0.1,0.2,0.3,0.5 --methods gapg,grpo,dr_grpo \
        --seeds 0,1,2 --out outputs/results --report docs/results

The same command with ``--plot-only`` writes the report of the points evaluated so far and trains nothing (a grid
still running, or its ``eval-points/`` copied from another machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from core.logs import setup_logging

FIELDS = [
    "budget",
    "method",
    "overall_acc",
    "overall_ci_lo",
    "overall_ci_hi",
    "device_acc",
    "offload_rate",
    "cloud_calls",
    "cloud_tokens",
    "apgr",
    "cpt50",
    "n",
]


def point_dir(out: str, budget: float) -> str:
    return os.path.join(out, f"budget-{budget:.2f}")


def grid_dir(out: str, method: str, seed: int, budget: float | None) -> str:
    """A grid point's run; a budget-free method (task tuning) has one run per seed."""
    if budget is None:
        return os.path.join(out, method, f"seed-{seed}")
    return os.path.join(out, method, f"seed-{seed}", f"budget-{budget:.2f}")


# The grid's methods: each a recipe of config overrides on top of --config (docs/method.md §7).
METHODS = {
    "gapg": [],  # the method: GAPG advantages, adaptive filtering, the budget's controller on γ
    "grpo": ["rl.advantage=grpo"],  # GRPO's std-normalised advantages: the collapse ablation
    "dr_grpo": ["rl.advantage=dr_grpo"],  # GAPG up to a constant factor ((r - mean)/G over the longest response)
    # Collaboration-Aware Tuning, the paper's baseline: TRL GRPOTrainer, Dr.GRPO loss, the hierarchical reward with
    # γ fixed at rl.gamma, no adaptive filtering, no controller; each step trains rl.batch_prompts x G fresh samples
    "cat": ["rl.trainer=trl_drgrpo"],
    "gapg_no_filter": ["rl.filtering=false"],  # ablation: every sampled prompt trained
    "gapg_fixed_gamma": ["rl.gamma_controller=dual", "rl.gamma_lr=0"],  # ablation: γ fixed at rl.gamma, no controller
    # task tuning at equal compute: the same trainer, steps, prompts, G, lr and seed, with no escalation offered
    # (the prompt has no <unknown> option, so the reward is accuracy); one run per seed serves every budget as the
    # base device of the TT rows (never/random/router/confidence/oracle)
    "tt": ["task.escalation=false", "rl.gamma_controller=dual", "rl.gamma_lr=0"],  # nothing to charge: γ stays put
}
# Methods whose training reads no budget: one run per seed serves every budget.  Task tuning offers no escalation;
# Collaboration-Aware Tuning charges the fixed γ = rl.gamma with no controller, so its runs at different budgets are
# one run (the Table-1 grid trained it at each budget: the same loss at every step) and only the evaluation's cap
# differs between its rows.
BUDGET_FREE = {"tt", "cat"}
UNROUTED = {"tt"}  # no escalation offered: the base device of the baseline rows, not a routed row of its own


def run_dir(out: str, method: str, seed: int, budget: float) -> str:
    """The training run of a (method, seed, budget) point: the seed's one run for a budget-free method, unless the
    grid already holds a run of it trained at this budget (grids made before ``cat`` was budget-free)."""
    at_budget = grid_dir(out, method, seed, budget)
    if method not in BUDGET_FREE or os.path.exists(os.path.join(at_budget, "config.json")):
        return at_budget
    return grid_dir(out, method, seed, None)


def run_training(
    config: str,
    budget: float,
    run: str,
    overrides: list[str],
    launch: str | None,
    group: str,
    name: str | None = None,
) -> None:
    """Train one point into ``run`` unless it is finished; resume it when it has checkpoints."""
    if os.path.exists(os.path.join(run, "final", "config.json")):
        print(f"[sweep] budget {budget:.0%}: trained already ({run}/final)")
        return
    point = [
        *overrides,
        f"rl.budget={budget}",
        f"train.output_dir={run}",
        f"train.run_name={group}-{name or f'budget-{budget:.2f}'}",
        f"train.wandb_group={group}",
    ]
    from rl.checkpoint import step_checkpoint_dirs

    resume = bool(step_checkpoint_dirs(run))
    print(f"[sweep] budget {budget:.0%}: training -> {run}")
    if launch:
        train_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
        cmd = [*shlex.split(launch), train_py, "--config", config, *point, *(["--resume"] if resume else [])]
        subprocess.run(cmd, check=True)
    else:  # in this process, through the library train.py calls (rl/run.py), with train.py's config handling
        from rl.run import run as train_run
        from settings import ConfigError, load_config

        try:
            cfg = load_config(config, point)
        except ConfigError as e:
            raise SystemExit(f"[sweep] error: {e}") from None
        if train_run(cfg, resume=resume) != 0:
            raise SystemExit(
                f"[sweep] training at budget {budget} failed; fix the error above and rerun (finished points are kept)."
            )


def run_eval(
    config: str, budget: float, out: str, overrides: list[str], eval_args: list[str], base_model: str
) -> list[dict]:
    """Evaluate one budget point with all baselines (shared work folder); returns its rows."""
    import eval as evalmod

    done = os.path.join(point_dir(out, budget), "eval.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    name = f"budget-{budget:.2f}"
    args = [
        "--config",
        config,
        *overrides,
        "--model",
        f"{name}={point_dir(out, budget)}/final",
        "--base-model",
        base_model,
        "--budget",
        str(budget),
        "--out",
        os.path.join(out, "eval"),
        *eval_args,
    ]
    if evalmod.main(args) != 0:
        raise SystemExit(f"[sweep] evaluation at budget {budget} failed; see the error above.")
    with open(os.path.join(out, "eval", "summary.json")) as f:
        summary = json.load(f)
    suites = summary["suites"]
    rows = summary["average"] if len(suites) > 1 else next(iter(suites.values()))
    rows = [{**r, "method": "policy" if r["method"] == name else r["method"], "budget": budget} for r in rows]
    with open(done + ".tmp", "w") as f:
        json.dump(rows, f, indent=2)
    os.replace(done + ".tmp", done)
    return rows


def point_rows(methods, score_rows: bool) -> set[str]:
    """The rows an evaluated point must hold: each method's and, with ``--score-rows``, its ``<method>@score`` too."""
    from evaluation.results import SCORE_SUFFIX

    return {x for m in methods for x in ((m, m + SCORE_SUFFIX) if score_rows else (m,))}


def run_grid_eval(
    config: str, budget: float, seed: int, models: dict[str, str], out: str, overrides: list[str], eval_args, base_model
) -> list[dict]:
    """Evaluate the trained methods of one (budget, seed) and the baselines in one eval.py call (paired
    comparisons between all rows); returns its rows, each with budget, seed and the last training offload."""
    import eval as evalmod
    from evaluation.results import train_offload_curve

    done = os.path.join(out, "eval-points", f"budget-{budget:.2f}-seed-{seed}.json")
    if os.path.exists(done):
        with open(done) as f:
            rows = json.load(f)
        if point_rows(models, "--score-rows" in eval_args) <= {r["method"] for r in rows}:
            return rows
    args = ["--config", config, *overrides, f"train.seed={seed}", "--model"]
    args += [",".join(f"{m}={path}/final" for m, path in models.items()), "--base-model", base_model]
    point = os.path.join(out, "eval", f"budget-{budget:.2f}-seed-{seed}")  # each point's models are its own
    args += ["--budget", str(budget), "--out", point, *eval_args]
    started = time.time()
    if evalmod.main(args) != 0:
        raise SystemExit(f"[sweep] evaluation at budget {budget}, seed {seed} failed; see the error above.")
    took = time.time() - started  # a resumed evaluation counts only its own part
    with open(os.path.join(point, "summary.json")) as f:
        summary = json.load(f)
    suites = summary["suites"]
    rows = summary["average"] if len(suites) > 1 else next(iter(suites.values()))
    for r in rows:
        curve = train_offload_curve(models[r["method"]]) if r["method"] in models else []
        r.update(budget=budget, seed=seed, train_offload_last=curve[-1][1] if curve else None, eval_s=took)
    os.makedirs(os.path.dirname(done), exist_ok=True)
    with open(done + ".tmp", "w") as f:
        json.dump(rows, f, indent=2)
    os.replace(done + ".tmp", done)
    return rows


def report_data(report: str) -> str:
    """Where a report's generated files go: ``docs/results`` -> ``docs/data/results`` (.csv, .png, _offload.png),
    so the folder of pages holds pages."""
    return os.path.join(os.path.dirname(report), "data", os.path.basename(report))


def write_report(
    rows,
    methods,
    budgets,
    seeds,
    out: str,
    report: str,
    command: str,
    standins: str = "",
    tuned: bool = False,
    task: str = "task",
) -> list[str]:
    """``report``.md, and ``report_data(report)``.csv/.png/_offload.png, from the grid's rows
    (evaluation/results.py).  ``tuned``: the baseline rows answered with the task-tuned device (the ``tt`` runs),
    which also adds the table in the shape of the paper's Table 1 for ``task``."""
    from evaluation import results

    data = report_data(report)
    os.makedirs(os.path.dirname(os.path.abspath(data)), exist_ok=True)
    curves = {
        (b, m): [results.train_offload_curve(run_dir(out, m, s, b)) for s in seeds] for b in budgets for m in methods
    }
    evaluated = {(r["budget"], r["seed"]) for r in rows if "seed" in r}
    progress = (
        f" **In progress: {len(evaluated)} of {len(budgets) * len(seeds)} (budget, seed) points evaluated** "
        "(each cell says how many seeds it has; the command above goes on from there)."
        if len(evaluated) < len(budgets) * len(seeds)
        else ""
    )
    meta = {
        "description": f"Grid: methods {', '.join(methods)} x budgets {', '.join(f'{b:.0%}' for b in budgets)} x "
        f"seeds {', '.join(map(str, seeds))}; rows in `data/{os.path.basename(report)}.csv`.{progress}",
        "standins": standins,
        "tuned": tuned,
        "task": task,
    }
    train_s = {
        results.row_name(m, tuned): [
            t  # a budget-free method's one run per seed is counted once
            for d in dict.fromkeys(run_dir(out, m, s, b) for b in budgets for s in seeds)
            if (t := results.train_seconds(d))
        ]
        for m in methods
    }
    if tuned:
        train_s["task tuning (TT)"] = [t for s in seeds if (t := results.train_seconds(grid_dir(out, "tt", s, None)))]
    evals = {(r["budget"], r["seed"]): r["eval_s"] for r in rows if r.get("eval_s") is not None}
    meta["time"] = results.time_lines(
        train_s,
        list(evals.values()),
        "Wall time: each run's training steps (the sum of its metrics.jsonl `step_time_s`; loading "
        "and its own held-out evaluation not counted), and each (budget, seed) point's `eval.py` run with every row.",
    )
    shown = results.with_score_rows(methods, rows)  # sweep.py --score-rows: <method>@score rows too
    return [
        results.write_csv(rows, data + ".csv"),
        results.write_markdown(rows, shown, report + ".md", command, meta),
        results.plot_accuracy(rows, shown, data + ".png", tuned),
        results.plot_offload_curves(curves, data + "_offload.png"),
    ]


def write_table(rows: list[dict], out: str) -> tuple[str, str]:
    """sweep.csv (FIELDS, one row per budget x method, sorted) and sweep.json (full rows).  ``overall_ci_lo/hi``:
    the row's 95% bootstrap CI of overall accuracy (eval.py's ``overall_ci``; blank for an average over suites)."""
    rows = sorted(rows, key=lambda r: (r["budget"], r["method"]))
    flat = [
        {**r, "overall_ci_lo": r["overall_ci"][0], "overall_ci_hi": r["overall_ci"][1]} if r.get("overall_ci") else r
        for r in rows
    ]
    csv_path, json_path = os.path.join(out, "sweep.csv"), os.path.join(out, "sweep.json")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in flat:
            w.writerow(
                {
                    k: ("" if r.get(k) is None else round(r[k], 4) if isinstance(r.get(k), float) else r.get(k))
                    for k in FIELDS
                }
            )
    with open(json_path, "w") as f:
        json.dump(rows, f, indent=2)
    return csv_path, json_path


def read_table(csv_path: str) -> list[dict]:
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    num = lambda v: None if v == "" else float(v)  # noqa: E731
    return [{k: (v if k == "method" else num(v)) for k, v in r.items()} for r in rows]


def ci_of(row: dict) -> list[float] | None:
    """A row's overall-accuracy CI: ``overall_ci`` (eval rows) or ``overall_ci_lo/hi`` (rows read back from
    sweep.csv)."""
    if row.get("overall_ci"):
        return row["overall_ci"]
    if row.get("overall_ci_lo") is not None and row.get("overall_ci_hi") is not None:
        return [row["overall_ci_lo"], row["overall_ci_hi"]]
    return None


def plot(rows: list[dict], path: str, title: str = "") -> str:
    """Overall accuracy against the cloud share used; one line per method; cloud-only and device-only levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    avg = lambda m: sum(r["overall_acc"] for r in by[m]) / len(by[m])  # noqa: E731
    if "cloud" in by:
        ax.axhline(100 * avg("cloud"), color="black", ls="--", lw=1, label=f"cloud only ({100 * avg('cloud'):.1f}%)")
    if "never" in by:
        ax.axhline(
            100 * avg("never"), color="grey", ls=":", lw=1.2, label=f"device only / never ({100 * avg('never'):.1f}%)"
        )
    style = {
        "policy": ("C3", "o", "GAPG policy (trained per budget)"),
        "random": ("C0", "s", "naive offloading (random)"),
        "router": ("C2", "^", "router (prompt classifier)"),
    }
    for m, rs in by.items():
        if m in ("cloud", "never"):
            continue
        color, marker, label = style.get(m, (None, "d", m))
        rs = sorted(rs, key=lambda r: r["budget"])
        ax.plot(
            [100 * r["offload_rate"] for r in rs],
            [100 * r["overall_acc"] for r in rs],
            marker=marker,
            color=color,
            label=label,
        )
        for r in rs:
            ci = ci_of(r)
            if ci:
                acc = 100 * r["overall_acc"]
                ax.errorbar(
                    100 * r["offload_rate"],
                    acc,
                    yerr=[[acc - 100 * ci[0]], [100 * ci[1] - acc]],
                    color=color,
                    capsize=2,
                    lw=0.8,
                    alpha=0.6,
                )
        for r in rs:
            ax.annotate(
                f"{r['budget']:.0%}",
                (100 * r["offload_rate"], 100 * r["overall_acc"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color=color,
            )
    ax.set_xlabel("cloud share used (% of problems sent to the cloud)")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title(title or "Accuracy vs cloud budget (labels: the budget cap)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config", required=True, help="training config (YAML); key=value overrides follow and apply to train and eval"
    )
    ap.add_argument("--budgets", default="0.2,0.3,0.4,0.5", help="comma list of cloud budgets in (0,1)")
    ap.add_argument(
        "--out", default="outputs/sweep", help="sweep folder: one budget-<b>/ run per budget, eval/, sweep.csv/json/png"
    )
    ap.add_argument(
        "--launch", default=None, help='run training as a separate job, e.g. "accelerate launch --num_processes 2"'
    )
    ap.add_argument("--baselines", default="never,random,router,cloud", help="eval.py --baselines at every budget")
    ap.add_argument(
        "--eval-args", default="", help='extra eval.py arguments, e.g. --eval-args="--suites math500 --limit 100"'
    )
    ap.add_argument(
        "--score-rows",
        action="store_true",
        help="eval.py --score-rows at every point: each trained policy also escalating by its escalation score "
        "(a <method>@score row, threshold calibrated to the budget; docs/budget_control.md)",
    )
    ap.add_argument("--group", default=None, help="wandb group of the training runs (default: the --out folder's name)")
    ap.add_argument("--verbose", action="store_true", help="debug logging (cloud retries, accelerate, checkpoints)")
    ap.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw sweep.png from sweep.csv; in grid mode, write the report of the points evaluated so far "
        "(in <out>/eval-points) and train nothing",
    )
    ap.add_argument(
        "--methods",
        default="",
        help="grid mode: comma list of methods to train at every budget: gapg, grpo, dr_grpo, cat (Collaboration-Aware "
        "Tuning), gapg_no_filter, gapg_fixed_gamma, tt (task tuning: one run per seed, the base device of the "
        "baseline rows); the recipes are sweep.py's METHODS",
    )
    ap.add_argument(
        "--ablations", default="", help="grid mode: methods trained only at --ablation-budgets (e.g. gapg_no_filter)"
    )
    ap.add_argument("--ablation-budgets", default="0.3", help="grid mode: the budgets of --ablations")
    ap.add_argument("--seeds", default="", help="grid mode: comma list of train.seed values (default 0)")
    ap.add_argument("--report", default=None, help="grid mode: write <report>.md/.csv/.png (e.g. docs/results)")
    ap.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="grid mode: keep each finished run's step checkpoints (by default only final/ stays: a 135M run's "
        "checkpoints with optimizer state take about 3 GB, a 36-run grid over 100 GB)",
    )
    args, overrides = ap.parse_known_args(argv)
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b]
    except ValueError:
        print(f"error: --budgets {args.budgets!r} must be numbers like 0.1,0.3", file=sys.stderr)
        return 2
    bad = [b for b in budgets if not 0 < b < 1]
    if bad:
        print(
            f"error: budgets {bad} are outside (0, 1); a budget is the share of problems the cloud may answer.",
            file=sys.stderr,
        )
        return 2
    os.makedirs(args.out, exist_ok=True)
    if args.plot_only and not (args.methods or args.seeds):
        print(plot(read_table(os.path.join(args.out, "sweep.csv")), os.path.join(args.out, "sweep.png")))
        return 0
    from settings import ConfigError, load_config

    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging(args.verbose)  # as train.py
    group = args.group or os.path.basename(os.path.normpath(args.out))
    eval_args = [
        "--baselines",
        args.baselines,
        *shlex.split(args.eval_args),
        *(["--score-rows"] if args.score_rows else []),
    ]
    rows = []
    if args.methods or args.seeds:
        argv = sys.argv[1:] if argv is None else list(argv)
        return run_grid(args, budgets, overrides, group, eval_args, cfg, argv)
    for b in budgets:
        run_training(args.config, b, point_dir(args.out, b), overrides, args.launch, group)
        rows += run_eval(args.config, b, args.out, overrides, eval_args, cfg.model.name_or_path)
        write_table(rows, args.out)  # the table grows point by point
    csv_path, json_path = write_table(rows, args.out)
    png = plot(rows, os.path.join(args.out, "sweep.png"))
    print(f"\n[sweep] wrote {csv_path}, {json_path}, {png}")
    for r in sorted(rows, key=lambda r: (r["method"], r["budget"])):
        print(
            f"  budget {r['budget']:.0%}  {r['method']:<8} overall {100 * r['overall_acc']:5.1f}%  "
            f"offload {100 * r['offload_rate']:5.1f}%"
        )
    return 0


def run_grid(args, budgets, overrides, group, eval_args, cfg, argv: list[str]) -> int:
    """Grid mode: (method x budget x seed), trained and evaluated point by point, seed by seed; the report after every
    point (or once, of every point, when earlier runs evaluated them all)."""
    from evaluation.results import standins_caption

    methods = [m for m in (args.methods or "gapg").split(",") if m]
    ablations = [m for m in args.ablations.split(",") if m]
    bad = [m for m in methods + ablations if m not in METHODS]
    if bad:
        print(f"error: --methods/--ablations {bad}: choose from {','.join(METHODS)}.", file=sys.stderr)
        return 2
    if all(m in UNROUTED for m in methods + ablations):
        print("error: --methods names no routing method to compare (add gapg, cat, ...).", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in (args.seeds or "0").split(",") if s]
    except ValueError:
        print(f"error: --seeds {args.seeds!r} must be integers like 0,1,2", file=sys.stderr)
        return 2
    try:
        ablation_budgets = [float(b) for b in args.ablation_budgets.split(",") if b]
    except ValueError:
        print(f"error: --ablation-budgets {args.ablation_budgets!r} must be numbers like 0.3", file=sys.stderr)
        return 2
    report = args.report or os.path.join(args.out, "results")
    shown = [a for a in argv if a != "--plot-only"]  # the command that makes (and goes on with) the grid
    command = "python sweep.py " + " ".join(shlex.quote(a) for a in shown)  # what the report says made it
    done: dict[tuple[float, int], list[dict]] = {}  # the rows of every evaluated point, those of earlier runs too
    for s in seeds:
        for b in budgets:
            path = os.path.join(args.out, "eval-points", f"budget-{b:.2f}-seed-{s}.json")
            if os.path.exists(path):
                with open(path) as f:
                    done[(b, s)] = json.load(f)

    def train_point(m: str, s: int, b: float) -> str:
        run = run_dir(args.out, m, s, b)
        point = [*overrides, *METHODS[m], f"train.seed={s}"]
        run_training(
            args.config,
            b,
            run,
            point,
            args.launch,
            group,
            f"{m}-seed{s}" + ("" if run == grid_dir(args.out, m, s, None) else f"-budget-{b:.2f}"),
        )
        if not args.keep_checkpoints and os.path.exists(os.path.join(run, "final", "config.json")):
            from rl.checkpoint import step_checkpoint_dirs

            for ckpt in step_checkpoint_dirs(run):  # finished: final/ is enough
                shutil.rmtree(ckpt, ignore_errors=True)
        return run

    routed = [m for m in methods + ablations if m not in UNROUTED]

    def evaluated(b: float, s: int, here: list[str]) -> bool:
        """The point's evaluation holds every method already: none of it is trained again (its models may be gone)."""
        return (b, s) in done and point_rows(here, args.score_rows) <= {r["method"] for r in done[(b, s)]}

    def report_all() -> list[str]:  # the report of every evaluated point, those of earlier runs too
        rows = [r for point in done.values() for r in point]
        return write_report(
            rows,
            routed,
            budgets,
            seeds,
            args.out,
            report,
            command,
            standins_caption(cfg),
            tuned="tt" in methods,
            task=cfg.task.name,
        )

    if args.plot_only:  # the report of the points evaluated so far; nothing trained or evaluated
        if not done:
            print(
                f"error: --plot-only: no evaluated point in {args.out}/eval-points for these budgets and seeds.",
                file=sys.stderr,
            )
            return 2
        print(f"[sweep] report of {len(done)} evaluated point(s): {', '.join(report_all())}", flush=True)
        return 0
    reported = False
    for s in seeds:  # seed-major: a grid stopped early holds whole replicates (every budget) of the seeds it finished
        points = [(b, [m for m in routed if m in methods or b in ablation_budgets]) for b in budgets]
        points = [(b, here) for b, here in points if not evaluated(b, s, here)]
        if not points:
            continue
        # the base device of the baseline rows: the task-tuned run of this seed when the grid trains one
        base = os.path.join(train_point("tt", s, budgets[0]), "final") if "tt" in methods else cfg.model.name_or_path
        for b, here in points:
            models = {m: train_point(m, s, b) for m in here}
            done[(b, s)] = run_grid_eval(args.config, b, s, models, args.out, overrides, eval_args, base)
            print(f"[sweep] point budget {b:.0%} seed {s} done; report: {', '.join(report_all())}", flush=True)
            reported = True
    if not reported and done:  # every point was evaluated by earlier runs: the report of them all
        print(f"[sweep] every point evaluated already; report: {', '.join(report_all())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
