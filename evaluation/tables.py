"""The tables an evaluation prints: one row per method, the per-level offload, the paired comparisons.

print(format_table(rows, "== arithmetic: 70 problems, budget 30% =="))   # route or query rows alike
"""

from __future__ import annotations


def format_comparisons(comparisons: list[dict]) -> list[str]:
    """``gapg - router: +1.4 pts [-8.6, +11.4] (within noise)``: the difference in overall accuracy, points, 95% CI."""
    lines = []
    for c in comparisons:
        ci = c.get("ci")
        band = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
        verdict = "beyond noise" if c.get("significant") else "within noise"
        lines.append(f"{c['a']} - {c['b']}: {100 * c['diff']:+.1f} pts{band} ({verdict})")
    return lines


def fmt_overall(r: dict) -> str:
    """``70.0% [58.6, 80.0]``: overall accuracy and its 95% bootstrap CI (the CI left out where a row has none)."""
    ci = r.get("overall_ci")
    band = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
    return f"{100 * r['overall_acc']:>5.1f}% {band:<14}"


def comparison_lines(rows) -> list[str]:
    """The paired comparisons the policy rows carry, one line each, under a note of what they mean."""
    comps = [c for r in rows for c in r.get("comparisons", [])]
    if not comps:
        return []
    return ["overall accuracy differences, paired 95% bootstrap CI over problems:"] + [
        "  " + line for line in format_comparisons(comps)
    ]


def format_query_table(rows, title: str | None = None) -> str:
    head = (
        f"{'method':<16} {'overall [95% CI]':<21} {'device':>8} {'w/ call':>8} {'calls/p':>8} {'tok/p':>7} "
        f"{'calls':>6} {'c.tokens':>9}"
    )
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<16} {fmt_overall(r)} {100 * r['device_acc']:>7.1f}% {100 * r['offload_rate']:>7.1f}% "
            f"{r.get('calls_per_problem', r['cloud_calls'] / max(r['n'], 1)):>8.3f} "
            f"{r.get('cloud_tokens_per_problem', r['cloud_tokens'] / max(r['n'], 1)):>7.1f} "
            f"{r['cloud_calls']:>6} {r['cloud_tokens']:>9}"
        )
    for r in rows:
        levels = r.get("per_level", {})
        if len(levels) > 1:
            extra = (
                f"  (wanted {r['wanted_calls_per_problem']:.3f} calls/problem)"
                if "wanted_calls_per_problem" in r
                else ""
            )
            lines.append(
                f"{r['method']} calls per level: "
                + "  ".join(f"L{k}={v.get('calls_per_problem', v['offload_rate']):.2f}" for k, v in levels.items())
                + extra
            )
    return "\n".join(lines + comparison_lines(rows))


def format_table(rows, title: str | None = None) -> str:
    if rows and "calls_per_problem" in rows[0]:
        return format_query_table(rows, title)
    w = max([12] + [len(r["method"]) for r in rows])  # policy_random, a long --model name
    head = (
        f"{'method':<{w}} {'overall [95% CI]':<21} {'device':>8} {'offload':>8} {'calls':>6} {'c.tokens':>9} "
        f"{'format':>7} {'APGR':>6} {'CPT50':>6}"
    )
    lines = ([title] if title else []) + [head, "-" * len(head)]
    fmt = lambda v, pct=False: "     -" if v is None else (f"{100 * v:>5.1f}%" if pct else f"{v:>6.3f}")  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['method']:<{w}} {fmt_overall(r)} {100 * r['device_acc']:>7.1f}% {100 * r['offload_rate']:>7.1f}% "
            f"{r['cloud_calls']:>6} {r.get('cloud_tokens', 0):>9} {fmt(r.get('format_rate'), pct=True):>7} "
            f"{fmt(r.get('apgr'))} {fmt(r.get('cpt50'), pct=True)}"
        )
    for r in rows:
        levels = r["per_level"]
        if "wanted_offload_rate" in r and len(levels) > 1:
            lines.append(
                f"{r['method']} offload per level: "
                + "  ".join(f"L{k}={100 * v['offload_rate']:.0f}%" for k, v in levels.items())
                + f"  (asked for the cloud on {100 * r['wanted_offload_rate']:.1f}%)"
            )
    return "\n".join(lines + comparison_lines(rows))
