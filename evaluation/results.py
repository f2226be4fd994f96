"""The results grid's report: (method x budget x seed) evaluation rows -> tables with confidence intervals, plots.

    python sweep.py --config configs/cpu_results.yaml --methods gapg,grpo,dr_grpo --seeds 0,1,2 \\
        --budgets 0.1,0.2,0.3,0.5 --out outputs/results --report docs/results

``sweep.py`` trains and evaluates the grid point by point; this module turns its rows into ``<report>.md`` and,
beside it in ``data/``, ``<report>.csv``, ``<report>.png`` (accuracy against the cloud share used) and
``<report>_offload.png`` (offload rate over training steps, per method and budget).  Two kinds of interval:

* **over seeds**: a trained method's mean over its seeds ± the 95% Student-t half-width
  t_{0.975, n−1} · sd / √n (n seeds; none for one seed);
* **over problems**: each run's 95% percentile-bootstrap CI over the held-out problems (``eval.py``'s
  ``overall_ci``, evaluation/metrics.py: ``bootstrap_ci``), and its paired bootstrap CI against each baseline.

A comparison "beats X beyond noise" when the seed-mean difference's t-interval excludes 0; the table also says in
how many seeds the paired bootstrap over problems excluded 0 with the mean's sign, and in how many with the other
("2/3 (1 the other way)": the seeds disagree, each beyond noise over the problems). Equal differences in every
seed give an interval of no width, which is reported as no verdict rather than as beyond noise.
"""

from __future__ import annotations

import csv
import math
import os
import statistics

from scipy.special import stdtrit

from evaluation.curves import run_metrics
from evaluation.protocol import BASELINES

FIELDS = [
    "budget",
    "seed",
    "method",
    "overall_acc",
    "overall_ci_lo",
    "overall_ci_hi",
    "device_acc",
    "offload_rate",
    "wanted_offload_rate",
    "cloud_calls",
    "n",
    "train_offload_last",
    "offload_per_level",
]


def mean_ci(xs: list[float]) -> tuple[float, float | None]:
    """Mean and the 95% Student-t half-width over ``xs`` (None for fewer than 2 values)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    t = float(stdtrit(len(xs) - 1, 0.975))  # t_{0.975, n-1}: scipy.stats.t.ppf(0.975, n - 1), a lighter import
    return m, t * statistics.stdev(xs) / math.sqrt(len(xs))


def fmt(m: float, h: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * m:.{digits}f}" + ("" if h is None else f" ± {scale * h:.{digits}f}")


def train_offload_curve(run_dir: str) -> list[tuple[int, float]]:
    """(step, training offload rate) from a run's metrics.jsonl (empty if none)."""
    return [
        (int(m["step"]), float(m["offload_rate"])) for m in run_metrics(run_dir) if "step" in m and "offload_rate" in m
    ]


def train_seconds(run_dir: str) -> float | None:
    """The wall time of a run's training steps: the sum of ``step_time_s`` over its metrics.jsonl (None when no step
    recorded one; loading the model and the in-training evaluations are not counted)."""
    times = [float(m["step_time_s"]) for m in run_metrics(run_dir) if "step_time_s" in m]
    return sum(times) if times else None


def time_lines(train_s: dict[str, list[float]], eval_s: list[float], how: str = "") -> list[str]:
    """Markdown lines: the time the grid took, per kind of run (``train_s``: name -> seconds of each run timed) and
    per evaluated point (``eval_s``), in minutes per run and hours in all."""
    rows = [(name, ts) for name, ts in train_s.items() if ts]
    if not rows and not eval_s:
        return []
    lines = ["## Time it took", ""]
    if how:
        lines += [how, ""]
    lines += ["| work | runs timed | minutes per run | hours in all |", "|---|---|---|---|"]
    for name, ts in rows:
        lines.append(f"| training: {name} | {len(ts)} | {statistics.fmean(ts) / 60:.1f} | {sum(ts) / 3600:.2f} |")
    if eval_s:
        lines.append(
            f"| evaluation of a point (every row) | {len(eval_s)} | {statistics.fmean(eval_s) / 60:.1f} | "
            f"{sum(eval_s) / 3600:.2f} |"
        )
    return lines + [""]


def write_csv(rows: list[dict], path: str) -> str:
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["budget"], r["method"], r["seed"])):
            flat = dict(r)
            if r.get("overall_ci"):
                flat["overall_ci_lo"], flat["overall_ci_hi"] = r["overall_ci"]
            if r.get("per_level"):
                flat["offload_per_level"] = ";".join(
                    f"{lvl}:{v['offload_rate']:.3f}" for lvl, v in sorted(r["per_level"].items())
                )
            w.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in flat.items() if k in FIELDS})
    os.replace(path + ".tmp", path)  # a stop mid-write keeps the previous table whole
    return path


def by_key(rows: list[dict]) -> dict[tuple[float, str], list[dict]]:
    out: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["budget"], r["method"]), []).append(r)
    return out


def row_order(
    grouped: dict[tuple[float, str], list[dict]], methods: list[str], budget: float | None = None, cloud: bool = True
) -> list[str]:
    """The rows of a table: the trained methods as given, then each baseline that has rows (at ``budget``, or at
    any budget), in BASELINES' order; ``cloud=False`` leaves out the cloud-only row."""
    present = {m for (b, m), rs in grouped.items() if rs and (budget is None or b == budget)}
    return methods + [b for b in BASELINES if b in present and (cloud or b != "cloud")]


def comparison_rows(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per budget, each trained method against each baseline (and each later method): the seed-mean difference
    in overall accuracy with its t-interval, and in how many seeds the paired bootstrap over problems excluded 0."""
    seeds_of: dict[tuple[float, str], dict[int, dict]] = {}
    for r in rows:
        seeds_of.setdefault((r["budget"], r["method"]), {})[r["seed"]] = r
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        for i, a in enumerate(methods):
            for b in list(methods[i + 1 :]) + [x for x in BASELINES if x != "cloud"]:
                ra, rb = seeds_of.get((budget, a), {}), seeds_of.get((budget, b), {})
                common = sorted(set(ra) & set(rb))
                if not common:
                    continue
                diffs = [ra[s]["overall_acc"] - rb[s]["overall_acc"] for s in common]
                m, h = mean_ci(diffs)
                # equal differences in every seed give a t-interval of no width: no verdict, not "beyond noise"
                no_spread = h is not None and h < 1e-12
                signs = [  # the sign of each seed's difference where its paired bootstrap excluded 0
                    c["diff"] * m
                    for s in common
                    for c in ra[s].get("comparisons", [])
                    if c["b"] == b and c.get("significant")
                ]
                out.append(
                    {
                        "budget": budget,
                        "a": a,
                        "b": b,
                        "diff": m,
                        "half_width": h,
                        "seeds": len(common),
                        "no_spread": no_spread,
                        "beyond": h is not None and not no_spread and (m - h > 0 or m + h < 0),
                        "beyond_in_seeds": sum(1 for x in signs if x > 0),  # the mean's way
                        "other_way_in_seeds": sum(1 for x in signs if x < 0),
                    }
                )
    return out


def headline_table(rows: list[dict], methods: list[str], tuned: bool = False) -> list[str]:
    """Markdown lines: one row per method and baseline, one column per budget, each cell the held-out accuracy
    (mean ± 95% t-interval over seeds) and, after it, the cloud share actually used and the number of seeds."""
    grouped = by_key(rows)
    budgets = sorted({r["budget"] for r in rows})
    order = row_order(grouped, methods)
    lines = [
        "| method | " + " | ".join(f"budget {b:.0%}: accuracy % (cloud %, seeds)" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for method in order:
        cells = []
        for b in budgets:
            rs = grouped.get((b, method), [])
            if not rs:
                cells.append("-")
                continue
            acc, share = mean_ci([r["overall_acc"] for r in rs]), statistics.fmean(r["offload_rate"] for r in rs)
            cells.append(f"{fmt(*acc)} ({100 * share:.1f}, {len(rs)})")
        lines.append(f"| {row_name(method, tuned)} | " + " | ".join(cells) + " |")
    return lines


TABLE1_BUDGET = 0.3  # the budget of the paper's Table 1 rows (SPEC: Qwen2.5-1.5B on MATH at a 30% offload)


def table1_lines(rows: list[dict], methods: list[str], task: str, budget: float = TABLE1_BUDGET) -> list[str]:
    """Markdown lines in the shape of the paper's Table 1 at one budget: one row per trained method and per
    task-tuned baseline; for the task, the conditional accuracy (the device's, on the problems it kept), the overall
    accuracy and the cloud share, each a mean ± 95% t-interval over seeds.  Empty when no row has this budget."""
    grouped = by_key(rows)
    order = row_order(grouped, methods, budget, cloud=False)
    if not any(grouped.get((budget, m)) for m in order):
        return []
    lines = [
        f"| method ({task}, budget {budget:.0%}) | conditional accuracy % | overall accuracy % | cloud share % "
        "| seeds |",
        "|---|---|---|---|---|",
    ]
    for method in order:
        rs = grouped.get((budget, method), [])
        if not rs:
            continue
        cond = [r["device_acc"] for r in rs if r.get("device_acc") is not None]
        lines.append(
            f"| {row_name(method, tuned=True)} | {fmt(*mean_ci(cond)) if len(cond) == len(rs) else '-'} | "
            f"{fmt(*mean_ci([r['overall_acc'] for r in rs]))} | {fmt(*mean_ci([r['offload_rate'] for r in rs]))} | "
            f"{len(rs)} |"
        )
    return lines


def per_level_offload_table(method_rows: list[tuple[str, list[dict]]]) -> list[str]:
    """Markdown lines: each method's held-out offload per task level (mean over seeds), for the methods whose rows
    carry ``per_level``; empty when none does."""
    have = [(m, rs) for m, rs in method_rows if rs and all(r.get("per_level") for r in rs)]
    if not have:
        return []
    levels = sorted({lvl for _, rs in have for r in rs for lvl in r["per_level"]}, key=lambda x: (len(x), x))
    lines = ["| offload per level % | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for method, rs in have:
        cells = [
            f"{100 * statistics.fmean(r['per_level'][lvl]['offload_rate'] for r in rs if lvl in r['per_level']):.0f}"
            if any(lvl in r["per_level"] for r in rs)
            else "-"
            for lvl in levels
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def standins_caption(cfg) -> str:
    """The line under every results table that names the stand-ins: the cloud (simulated or a model), the device
    model and the task."""
    c = cfg.cloud
    cloud = (
        f"simulated (no LLM: right with probability {c.accuracy:.2f}, cloud.accuracy)"
        if c.backend == "simulated"
        else f"{c.model} (cloud.backend={c.backend})"
    )
    return f"Stand-ins: the cloud is {cloud}; the device is {cfg.model.name_or_path}; the task is {cfg.task.name}."


# sweep.py's methods -> how the report names them
METHOD_NAMES = {
    "gapg": "GAPG",
    "grpo": "GRPO-std",
    "dr_grpo": "GAPG rescaled (Dr.GRPO advantages)",
    "cat": "Collaboration-Aware Tuning",
    "gapg_no_filter": "GAPG without adaptive filtering",
    "gapg_fixed_gamma": "GAPG with γ fixed",
}
# the baseline rows, answered by the base device: the untrained model, or the task-tuned one (sweep.py's tt runs)
BASE_NAMES = {"never": "base only", "random": "base & naive", "router": "base & router"}
TUNED_NAMES = {
    "never": "TT only",
    "random": "TT & naive",
    "router": "TT & router",
    "confidence": "TT & self-confidence",
    "oracle": "TT & oracle (ceiling)",
}


SCORE_SUFFIX = "@score"  # eval.py --score-rows: the row of a policy escalating by its escalation score


def with_score_rows(methods: list[str], rows: list[dict]) -> list[str]:
    """``methods`` with each one's ``<method>@score`` row right after it, where the rows have one."""
    present = {r["method"] for r in rows}
    return [x for m in methods for x in (m, m + SCORE_SUFFIX) if x == m or x in present]


def row_name(method: str, tuned: bool = False) -> str:
    """The name a table gives a row: a trained method's (``<method>@score``: the same policy escalating by its
    escalation score, eval.py ``--score-rows``), or a baseline's on the base or the task-tuned device."""
    if method.endswith(SCORE_SUFFIX):
        return f"{row_name(method[: -len(SCORE_SUFFIX)])} by its escalation score"
    if method in METHOD_NAMES:
        return METHOD_NAMES[method]
    return (TUNED_NAMES if tuned else BASE_NAMES).get(method, method)


def method_title(methods: list[str]) -> str:
    """``GAPG against GRPO, Dr.GRPO``: the report's title names the methods the grid ran, the first against the rest
    (a ``<method>@score`` row is the same trained policy, so the title leaves it out)."""
    names = [METHOD_NAMES.get(m, m) for m in methods if not m.endswith(SCORE_SUFFIX)]
    return names[0] + (" against " + ", ".join(names[1:]) if len(names) > 1 else "")


VERDICT_AGAINST = ("router", "confidence", "cat")  # what the method must beat: the strongest routing baselines


def seed_count(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def other_way(c: dict) -> str:
    """The comparison table's note on seeds whose paired bootstrap excluded 0 against the mean's sign."""
    n = c["other_way_in_seeds"]
    return f" ({n} the other way)" if n else ""


def gap_closed(rows: list[dict], budget: float) -> tuple[float | None, dict[str, float]]:
    """The share of the gap from naive offloading to the oracle ceiling that GAPG closes at one budget,
    (GAPG − naive) / (oracle − naive) on the seed means, and those means; None without the three rows."""
    grouped = by_key(rows)
    means = {
        m: statistics.fmean(r["overall_acc"] for r in grouped[(budget, m)])
        for m in ("gapg", "random", "oracle")
        if grouped.get((budget, m))
    }
    if len(means) < 3 or means["oracle"] <= means["random"]:
        return None, means
    return (means["gapg"] - means["random"]) / (means["oracle"] - means["random"]), means


def verdict_word(c: dict) -> str:
    """A comparison's verdict over seeds in a table cell; the sign of the difference says which way."""
    if c["half_width"] is None:
        return "one seed: no interval"
    if c["no_spread"]:
        return "equal in every seed: no interval"
    return "beyond noise" if c["beyond"] else "within noise"


def verdict_table(comparisons: list[dict], rows: list[dict], tuned: bool) -> list[str]:
    """Markdown lines, one row per budget: GAPG's accuracy and cloud share, its difference from each baseline it
    must beat (``VERDICT_AGAINST``) with the t-interval over seeds and the verdict, and the share of the
    naive-to-oracle gap it closes (``gap_closed``).  Empty when the grid has no GAPG row or none of those baselines."""
    grouped = by_key(rows)
    budgets = sorted({b for (b, m) in grouped if m == "gapg"})
    found = {(c["budget"], c["b"]): c for c in comparisons if c["a"] == "gapg" and c["b"] in VERDICT_AGAINST}
    against = [b for b in VERDICT_AGAINST if any(k[1] == b for k in found)]
    if not budgets or not against:
        return []
    lines = [
        "| budget | GAPG accuracy % (cloud %) | "
        + " | ".join(f"GAPG − {row_name(b, tuned)}, points" for b in against)
        + " | naive-to-oracle gap closed | seeds |",
        "|---|---|" + "---|" * len(against) + "---|---|",
    ]
    for budget in budgets:
        rs = grouped[(budget, "gapg")]
        cells = [
            f"{fmt(c['diff'], c['half_width'])} ({verdict_word(c)})" if c else "-"
            for c in (found.get((budget, b)) for b in against)
        ]
        share, _ = gap_closed(rows, budget)
        closed = "-" if share is None else f"{100 * share:.0f}%" if share >= 0 else "none (under naive)"
        lines.append(
            f"| {budget:.0%} | {fmt(*mean_ci([r['overall_acc'] for r in rs]))} "
            f"({100 * statistics.fmean(r['offload_rate'] for r in rs):.1f}) | "
            + " | ".join(cells)
            + f" | {closed} | {len(rs)} |"
        )
    return lines


def verdict_lines(comparisons: list[dict], rows: list[dict], budget: float, tuned: bool) -> list[str]:
    """In words, at one budget: does GAPG beat TT & router, TT & self-confidence and Collaboration-Aware Tuning
    beyond the t-interval over seeds, and how much of the gap from naive offloading to the oracle ceiling it closes
    ((GAPG − naive) / (oracle − naive), on the seed means)."""
    out = []
    for c in comparisons:
        if c["budget"] != budget or c["a"] not in ("gapg", "gapg" + SCORE_SUFFIX) or c["b"] not in VERDICT_AGAINST:
            continue
        other, name = row_name(c["b"], tuned), row_name(c["a"])
        if c["half_width"] is None:
            word = "one seed, no interval"
        elif c["no_spread"]:
            word = (
                f"the seeds' differences are equal, so the t-interval has no width and gives no verdict (beyond "
                f"noise over the problems in {seed_count(c['beyond_in_seeds'] + c['other_way_in_seeds'])})"
            )
        elif c["beyond"]:
            word = f"{name} {'beats' if c['diff'] > 0 else 'is worse than'} {other} beyond noise"
        else:
            word = f"{name} and {other} are within noise"
            if c["other_way_in_seeds"] and c["beyond_in_seeds"]:
                word += (
                    f" (the seeds disagree: beyond noise over the problems in {seed_count(c['beyond_in_seeds'])} the "
                    f"mean's way and in {seed_count(c['other_way_in_seeds'])} the other)"
                )
            elif c["beyond_in_seeds"] or c["other_way_in_seeds"]:  # one-sided: said beside the interval
                n = c["beyond_in_seeds"] or c["other_way_in_seeds"]
                over = (c["diff"] > 0) == bool(c["beyond_in_seeds"])  # the seeds' sign: the mean's, or the other
                word += (
                    f" over seeds ({name} {'over' if over else 'under'} it beyond noise over the problems in {n} of "
                    f"{seed_count(c['seeds'])})"
                )
        out.append(
            f"- {name} − {other}: {fmt(c['diff'], c['half_width'])} points over {seed_count(c['seeds'])}: {word}."
        )
    share, means = gap_closed(rows, budget)
    if share is not None:
        gap = (
            f"the gap from {row_name('random', tuned)} ({100 * means['random']:.1f}%) to the "
            f"{row_name('oracle', tuned)} ({100 * means['oracle']:.1f}%)"
        )
        if share >= 0:
            out.append(f"- GAPG closes {100 * share:.0f}% of {gap}.")
        else:  # under naive offloading: a negative share, said in words
            out.append(f"- GAPG ({100 * means['gapg']:.1f}%) is under naive offloading: it closes none of {gap}.")
    return out + ([""] if out else [])


def write_markdown(rows: list[dict], methods: list[str], path: str, command: str, meta: dict) -> str:
    tuned = bool(meta.get("tuned"))
    grouped = by_key(rows)
    budgets = sorted({r["budget"] for r in rows})
    order = row_order(grouped, methods)
    comparisons = comparison_rows(rows, methods)
    lines = [
        f"# Results: {method_title(methods)} and the baselines, at CPU scale",
        "",
        "Made by this command (resumable point by point; rerun it to finish or extend the grid):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{meta.get('description', '')}",
        "",
        "Accuracy and offload: mean over seeds ± the 95% t-interval over seeds (no ± with one seed). "
        "*Problems CI*: the mean over seeds of each run's 95% bootstrap interval over the held-out problems. "
        "*Cloud share*: the held-out problems that reached the cloud, under the evaluation's cap at the budget. "
        "*Wanted offload*: the share the greedy policy asked the cloud for before the cap; above the budget, the "
        "cap (not the policy) holds it. "
        "*Train offload*: the training offload rate at the last step (mean over seeds); it shows whether a "
        "method drifts toward the cloud. "
        "*Seeds beyond noise (problems)*: the seeds whose paired bootstrap over the problems excluded 0 with the "
        'sign of the mean difference; "(1 the other way)" counts those that excluded it with the opposite sign.',
        "",
        "## Every budget at a glance",
        "",
        *headline_table(rows, methods, tuned),
        "",
    ]
    verdicts = verdict_table(comparisons, rows, tuned)
    if verdicts:
        lines += [
            "## GAPG's verdicts at a glance",
            "",
            "GAPG's own decision against the baselines it must beat, per budget: the seed-mean difference in overall "
            "accuracy ± its 95% t-interval over seeds, and whether that interval excludes 0 (each budget's section "
            "says in how many seeds the difference was beyond noise over the problems).",
            "",
            *verdicts,
            "",
        ]
    table1 = table1_lines(rows, methods, meta.get("task", "task")) if tuned else []
    if table1:
        lines += [
            f"## Table 1's shape (budget {TABLE1_BUDGET:.0%})",
            "",
            "The paper's Table 1 rows at CPU scale: the methods, and every baseline routing the task-tuned device "
            "(the TT rows); conditional accuracy is the device's on the problems it kept.",
            "",
            *table1,
            "",
        ]
    for budget in budgets:
        lines += [
            f"## Budget {budget:.0%}",
            "",
            "| method | seeds | accuracy % | problems CI % | conditional accuracy % | cloud share % | wanted offload % "
            "| train offload % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method in order:
            rs = grouped.get((budget, method))
            if not rs:
                continue
            acc, off = mean_ci([r["overall_acc"] for r in rs]), mean_ci([r["offload_rate"] for r in rs])
            cis = [r["overall_ci"] for r in rs if r.get("overall_ci")]
            pci = (
                f"[{100 * statistics.fmean(c[0] for c in cis):.1f}, {100 * statistics.fmean(c[1] for c in cis):.1f}]"
                if cis
                else "-"
            )
            last = [r["train_offload_last"] for r in rs if r.get("train_offload_last") is not None]
            wanted = [r["wanted_offload_rate"] for r in rs if r.get("wanted_offload_rate") is not None]
            cond = mean_ci([r["device_acc"] for r in rs]) if all(r.get("device_acc") is not None for r in rs) else None
            lines.append(
                f"| {row_name(method, tuned)} | {len(rs)} | {fmt(*acc)} | {pci} | {fmt(*cond) if cond else '-'} | "
                f"{fmt(*off)} | "
                f"{fmt(*mean_ci(wanted)) if wanted else '-'} | {fmt(statistics.fmean(last), None) if last else '-'} |"
            )
        lines.append("")
        lines += verdict_lines(comparisons, rows, budget, tuned)
        lines += per_level_offload_table([(row_name(m, tuned), grouped.get((budget, m), [])) for m in order])
        if meta.get("standins"):
            lines += [f"*{meta['standins']}*", ""]
        comps = [c for c in comparisons if c["budget"] == budget]
        if comps:
            lines += [
                "| comparison | accuracy difference, points | verdict over seeds | seeds beyond noise (problems) |"
            ]
            lines += ["|---|---|---|---|"]
            for c in comps:
                lines.append(
                    f"| {row_name(c['a'], tuned)} − {row_name(c['b'], tuned)} | "
                    f"{fmt(c['diff'], c['half_width'])} | {verdict_word(c)} | "
                    f"{c['beyond_in_seeds']}/{c['seeds']}{other_way(c)} |"
                )
            lines.append("")
    lines += meta.get("time", [])
    lines += [
        f"![accuracy against cloud share](data/{os.path.basename(path)[:-3]}.png)",
        "",
        f"![offload over training](data/{os.path.basename(path)[:-3]}_offload.png)",
        "",
    ]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path


def plot_accuracy(rows: list[dict], methods: list[str], path: str, tuned: bool = False) -> str:
    """Overall accuracy against the cloud share used, mean over seeds with t-interval error bars: one line per
    trained method (solid; its ``@score`` row dotted, in the same hue), one per baseline (dashed squares), named as
    the report's tables name them; the cloud alone is a horizontal line, so the axis stops past the largest budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = by_key(rows)
    trained = [m for m in methods if not m.endswith(SCORE_SUFFIX)]
    hue = {m: plt.cm.tab20(2 * k % 20) for k, m in enumerate(trained)}
    hue.update({m + SCORE_SUFFIX: plt.cm.tab20((2 * k + 1) % 20) for k, m in enumerate(trained)})
    baselines = [b for b in BASELINES if b != "cloud" and any(m == b for _, m in grouped)]
    hue.update({b: plt.cm.Dark2(k % 8) for k, b in enumerate(baselines)})
    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    for method in methods + baselines:
        pts = sorted((b, rs) for (b, m), rs in grouped.items() if m == method)
        if not pts:
            continue
        xs, ys, xe, ye = [], [], [], []
        for _, rs in pts:
            (x, hx), (y, hy) = mean_ci([r["offload_rate"] for r in rs]), mean_ci([r["overall_acc"] for r in rs])
            xs.append(100 * x), ys.append(100 * y), xe.append(100 * (hx or 0)), ye.append(100 * (hy or 0))
        style = "s--" if method in baselines else "o:" if method.endswith(SCORE_SUFFIX) else "o-"
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt=style, capsize=3, color=hue[method], label=row_name(method, tuned))
    cloud = [r["overall_acc"] for (_, m), rs in grouped.items() if m == "cloud" for r in rs]
    if cloud:
        ax.axhline(100 * statistics.fmean(cloud), color="black", ls=":", lw=1, label="cloud alone (every problem)")
    budgets = sorted({b for b, m in grouped if m != "cloud"})
    # a share lies in [0, 100]; a two-seed t-interval (t = 12.7) reaches far past the points, so the axis stops
    ax.set_xlim(-3, min(103.0, 100 * max(budgets, default=1.0) + 15))
    ax.set_ylim(max(0.0, ax.get_ylim()[0]), min(100.0, ax.get_ylim()[1]))
    ax.set_xlabel("cloud share used (% of held-out problems)")
    ax.set_ylabel("overall accuracy (%)")
    ax.set_title("Accuracy against cloud share (mean over seeds, 95% t-intervals)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_offload_curves(curves: dict[tuple[float, str], list[list[tuple[int, float]]]], path: str) -> str:
    """Training offload rate per step, one panel per budget, one line per method (mean over seeds, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({b for b, _ in curves})
    methods = sorted({m for _, m in curves})
    fig, axes = plt.subplots(1, max(len(budgets), 1), figsize=(4 * max(len(budgets), 1), 3.6), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        for k, method in enumerate(methods):
            runs = [c for c in curves.get((budget, method), []) if c]
            if not runs:
                continue
            steps = sorted({s for c in runs for s, _ in c})
            vals = [[dict(c).get(s) for c in runs] for s in steps]
            mean = [100 * statistics.fmean(v for v in vs if v is not None) for vs in vals]
            lo = [100 * min(v for v in vs if v is not None) for vs in vals]
            hi = [100 * max(v for v in vs if v is not None) for vs in vals]
            ax.plot(steps, mean, color=f"C{k}", label=row_name(method))
            ax.fill_between(steps, lo, hi, color=f"C{k}", alpha=0.15)
        ax.axhline(100 * budget, color="black", ls="--", lw=1, label="budget")
        ax.set_title(f"budget {budget:.0%}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("offload rate in training rollouts (%)")
    fullest = max(axes[0], key=lambda ax: len(ax.get_lines()))  # the panel with every method (ablations: one budget)
    fullest.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
