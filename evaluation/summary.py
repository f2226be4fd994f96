"""The three lines a finished training run ends with: held-out accuracy before -> after with its paired interval,
the cloud the policy wants (overall and on each level), and where the learning curve is.

    print("\n".join(run_summary("outputs/cpu_default", budget_text="30%", cloud_usage={"calls": 12})))

Read from the run's own files (``eval/before.json``, ``eval/final.json`` and their ``.samples.jsonl``), so a resumed
run summarises the same way.  The accuracy difference is the policy row's, with the paired percentile bootstrap over
the held-out problems (evaluation/metrics.py: ``bootstrap_ci``): both evaluations answered the same problems.
"""

from __future__ import annotations

import json
import os

from core.io import read_jsonl
from evaluation.metrics import BOOTSTRAP_N, BOOTSTRAP_SEED, bootstrap_ci


def _policy_row(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    rows = json.load(open(path))
    return next((r for r in rows if r["method"] == "policy"), None)


def _wanted(row: dict) -> tuple[float, str]:
    """(the usage the policy wants before the cap, how to print it): offload share, or calls per problem."""
    if "wanted_calls_per_problem" in row:
        return row["wanted_calls_per_problem"], "{:.2f} calls per problem"
    return row.get("wanted_offload_rate", row["offload_rate"]), "{:.1%} of problems"


def run_summary(
    out: str, budget_text: str = "", cloud_usage: dict | None = None, curve: str | None = None
) -> list[str]:
    """The summary lines of the run in ``out`` (empty when its final evaluation is missing, e.g. a failed cloud)."""
    evald = os.path.join(out, "eval")
    after = _policy_row(os.path.join(evald, "final.json"))
    if after is None:
        return []
    before = _policy_row(os.path.join(evald, "before.json"))
    lines = []
    if before is not None:
        b = read_jsonl(os.path.join(evald, "before.samples.jsonl"))
        a = read_jsonl(os.path.join(evald, "final.samples.jsonl"))
        uids = [u for u in a if u in b]
        diff = after["overall_acc"] - before["overall_acc"]
        ci = bootstrap_ci([a[u]["correct"] for u in uids], [b[u]["correct"] for u in uids], BOOTSTRAP_N, BOOTSTRAP_SEED)
        verdict = "beyond noise" if ci and (ci[0] > 0 or ci[1] < 0) else "within noise"
        band = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
        lines.append(
            f"held-out accuracy {before['overall_acc']:.1%} -> {after['overall_acc']:.1%}: {100 * diff:+.1f} points"
            f"{band} (paired 95% CI over {len(uids)} problems, {verdict})"
        )
    else:
        lines.append(f"held-out accuracy after training {after['overall_acc']:.1%} (no evaluation before training)")
    wa, fmt = _wanted(after)
    wanted = (fmt.format(_wanted(before)[0]) + " -> " if before is not None else "") + fmt.format(wa)
    levels = after.get("per_level", {})
    per_level = "  ".join(
        f"L{k} {v.get('calls_per_problem', v['offload_rate']):.0%}" for k, v in levels.items() if len(levels) > 1
    )
    paid = f"; cloud calls paid by this run: {cloud_usage.get('calls', 0)}" if cloud_usage else ""
    budget = f" (budget {budget_text})" if budget_text else ""
    lines.append(
        f"the policy asks the cloud for {wanted}{budget}" + (f"; by level {per_level}" if per_level else "") + paid
    )
    if curve:
        lines.append(f"learning curve: {curve}")
    return lines
