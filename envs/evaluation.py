"""The evaluation protocol (SPEC §7): budget-capped runs of a policy with every baseline at the same budget.

The device answers every problem; at most ``floor(budget·N)`` problems go to the cloud, granted in dataset order
(``capped``); the same cap applies to every row: the policy, never, random, the router (policies/router.py), and
cloud only.  ``suite_rows`` builds the rows of one suite from resumable device passes (``run_device``) and cloud
answers (``run_cloud``), with RouteLLM's APGR/CPT (``apgr_cpt``) and paired bootstrap CIs (``bootstrap_ci``,
``compare_rows``); ``evaluate`` / ``evaluate_query`` are the in-training evaluations of the route and query
environments; ``format_table`` prints the rows.  The run of eval.py over whole suites (models, base model,
tables, summary.json) is envs/suite_evaluation.py with each environment's ``evaluate_suites``.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from core.io import append_jsonl, check_meta, read_jsonl
from envs.format import format_ok
from policies.router import PromptRouter
from rewards.grading import grade_response

BASELINES = ("never", "random", "router", "cloud")
BASE_ROWS = ("never", "random", "router")  # the rows answered by the base device model
BOOTSTRAP_N, BOOTSTRAP_SEED = 2000, 0  # resamples of the problems for every confidence interval (bootstrap_ci)
MATH_SUITE_MAX_NEW_TOKENS = 1024  # the paper's response length on MATH (SPEC §8)


def parse_models(spec: str) -> dict[str, str]:
    """'path' -> {'policy': path};  'a=path1,b=path2' -> {'a': path1, 'b': path2}."""
    models = {}
    for part in [s for s in spec.split(",") if s]:
        name, path = part.split("=", 1) if "=" in part else ("policy", part)
        if name in models or name in BASELINES:
            raise SystemExit(f"error: --model name '{name}' is used twice or clashes with a baseline name {BASELINES}.")
        models[name] = path
    return models


# ---------------------------------------------------------------------------- device and cloud passes


def run_device(
    env, generator, problems, batch_size=32, max_new_tokens=64, temperature=0.0, path=None, desc="device", progress=True
):
    """Greedy device responses, graded; each finished batch is appended to ``path`` so a killed run resumes."""
    done = read_jsonl(path)
    todo = [p for p in problems if p.uid not in done]
    bar = tqdm(
        total=len(problems),
        initial=len(problems) - len(todo),
        desc=desc,
        unit="prob",
        disable=not progress,
        leave=False,
    )
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prompts = [env.prompt(p) for p in chunk]
        out = generator.generate(prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        rows = []
        for p, prompt, g in zip(chunk, prompts, out):
            r = env.judge(p, g[0])
            rows.append(
                {
                    "uid": p.uid,
                    "prompt": prompt,
                    "output": r.sample.text,
                    "escalated": r.escalated,
                    "answer": r.local_answer,
                    "correct": bool(r.device_correct),
                    "tokens": len(g[0].completion_ids),
                    "format_ok": format_ok(r.sample.text, env.template),
                }
            )
        append_jsonl(path, rows)
        done.update((row["uid"], row) for row in rows)
        bar.update(len(chunk))
    bar.close()
    return [done[p.uid] for p in problems]


def run_cloud(cloud, problems, idxs, path=None, chunk_size=16) -> dict[int, dict]:
    """Cloud answers for problems[idxs], graded; appended to ``path`` chunk by chunk (the cloud cache keeps the
    texts too)."""
    done = read_jsonl(path)
    need = [problems[i] for i in sorted(idxs) if problems[i].uid not in done]
    need = list({p.uid: p for p in need}.values())
    for start in range(0, len(need), chunk_size):
        chunk = need[start : start + chunk_size]
        rows = []
        for p, rep in zip(chunk, cloud.answer_many(chunk)):
            pred, ok = grade_response(p, rep.text)
            rows.append(
                {
                    "uid": p.uid,
                    "text": rep.text,
                    "answer": pred,
                    "correct": bool(ok),
                    "prompt_tokens": rep.prompt_tokens,
                    "completion_tokens": rep.completion_tokens,
                }
            )
        append_jsonl(path, rows)
        done.update((row["uid"], row) for row in rows)
    return {i: done[problems[i].uid] for i in idxs}


# ---------------------------------------------------------------------------- methods, rows and metrics


def capped(order: list[int], cap: int) -> list[int]:
    """The test-time budget cap: the first ``cap`` requests in the given order (dataset order for every method)."""
    return list(order)[:cap]


def accuracy_curve(order: list[int], device_ok: list[bool], cloud_ok: dict[int, bool]) -> np.ndarray:
    """acc after k cloud calls, k = 0..N, sending ``order`` first; flat once the method wants no more calls."""
    n = len(device_ok)
    acc = np.empty(n + 1)
    correct = float(sum(device_ok))
    acc[0] = correct
    for k in range(1, n + 1):
        if k <= len(order):
            i = order[k - 1]
            correct += float(cloud_ok[i]) - float(device_ok[i])
        acc[k] = correct
    return acc / max(n, 1)


def apgr_cpt(curve: np.ndarray, weak: float, strong: float) -> dict:
    """RouteLLM's APGR (area under PGR over cost in [0,1], trapezoid) and CPT(50%), CPT(80%) as cloud shares."""
    if strong - weak <= 1e-12:
        return {"apgr": None, "cpt50": None, "cpt80": None}
    pgr = (curve - weak) / (strong - weak)
    cost = np.linspace(0.0, 1.0, len(curve))
    out = {"apgr": float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(cost))) if len(curve) > 1 else None}
    for x in (50, 80):
        hit = np.nonzero(pgr >= x / 100 - 1e-12)[0]
        out[f"cpt{x}"] = float(cost[hit[0]]) if len(hit) else None
    return out


def bootstrap_ci(correct_a, correct_b=None, n: int = 2000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """A percentile-bootstrap confidence interval over problems (Efron & Tibshirani, *An Introduction to the
    Bootstrap*, 1993, ch. 13): draw the problems ``n`` times with replacement, compute the statistic on each
    resample, and take its ``(1-level)/2`` and ``(1+level)/2`` quantiles.

    With ``correct_a`` alone the statistic is accuracy (the mean of the per-problem 0/1 correctness).  With
    ``correct_b`` (the same problems, in the same order) it is the **paired** difference ``acc(a) - acc(b)``: both
    rows are evaluated on the same resampled problems, so what the problems share (some are easy for everyone)
    cancels and only the rows' disagreements make the interval wide.  Identical rows give exactly ``[0, 0]``.

    Seeded: the same ``seed`` and number of problems draw the same resamples, so every row and every pair of a
    suite is judged on one set of resamples.  Returns ``[lo, hi]``, or None when there are no problems."""
    a = np.asarray(correct_a, dtype=np.float64)
    if correct_b is not None:
        b = np.asarray(correct_b, dtype=np.float64)
        if b.shape != a.shape:
            raise ValueError(f"bootstrap_ci: paired rows need the same problems ({a.shape[0]} vs {b.shape[0]})")
        a = a - b  # the mean of per-problem differences is the difference of accuracies, on every resample
    m = a.shape[0]
    if m == 0:
        return None
    rng = np.random.default_rng(seed)
    stats = np.empty(n)
    chunk = max(1, 2_000_000 // m)  # resamples drawn per block: bounded memory on large suites, same draws either way
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        stats[start : start + k] = a[rng.integers(0, m, size=(k, m))].mean(axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def compare_rows(
    correct: dict[str, list], policies: list[str], n: int = 2000, seed: int = 0, level: float = 0.95
) -> list[dict]:
    """Paired bootstrap comparisons of overall accuracy (``bootstrap_ci`` with two rows): each policy row against
    every later policy row and every other row.  ``correct`` maps a row's method to its per-problem correctness.
    ``significant``: the interval excludes 0 (the difference is beyond the noise of this many problems)."""
    out = []
    for i, a in enumerate(policies):
        for b in [p for p in policies[i + 1 :]] + [m for m in correct if m not in policies]:
            ca, cb = correct[a], correct[b]
            diff = (sum(ca) - sum(cb)) / max(len(ca), 1)
            ci = bootstrap_ci(ca, cb, n, seed, level)
            out.append({"a": a, "b": b, "diff": diff, "ci": ci, "significant": bool(ci and (ci[0] > 0 or ci[1] < 0))})
    return out


def format_comparisons(comparisons: list[dict]) -> list[str]:
    """``gapg - router: +1.4 pts [-8.6, +11.4] (within noise)``: the difference in overall accuracy, points, 95% CI."""
    lines = []
    for c in comparisons:
        ci = c.get("ci")
        band = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
        verdict = "beyond noise" if c.get("significant") else "within noise"
        lines.append(f"{c['a']} - {c['b']}: {100 * c['diff']:+.1f} pts{band} ({verdict})")
    return lines


def row_correct(n: int, device, sent, cloud) -> list[bool]:
    """A row's per-problem correctness: the cloud's answer where it was sent, the device's elsewhere."""
    return [bool(cloud[i]["correct"]) if i in sent else bool(device[i]["correct"]) for i in range(n)]


def summarise(method, problems, device, sent, cloud, wants=None, order=None, cloud_all=None, weak=None) -> dict:
    """One row: overall / conditional accuracy, offload, calls, tokens, per level; APGR/CPT when every cloud answer
    is known.

    ``weak`` is the accuracy of the one weak model every row of the table is measured against (RouteLLM's PGR):
    the base device model answering everything (the ``never`` row).  It is not this row's own device accuracy."""
    n, sent = len(problems), set(sent)  # the cloud row passes a range
    kept = [i for i in range(n) if i not in sent]
    correct = row_correct(n, device, sent, cloud)
    device_ok = sum(device[i]["correct"] for i in kept)
    cloud_ok = sum(cloud[i]["correct"] for i in sent)
    by_level = defaultdict(lambda: [0, 0, 0, 0])  # problems, sent, kept, kept-correct
    for i, p in enumerate(problems):
        b = by_level[p.level]
        b[0] += 1
        if i in sent:
            b[1] += 1
        else:
            b[2] += 1
            b[3] += device[i]["correct"]
    row = {
        "method": method,
        "n": n,
        "overall_acc": (device_ok + cloud_ok) / max(n, 1),
        "overall_ci": bootstrap_ci(correct, n=BOOTSTRAP_N, seed=BOOTSTRAP_SEED),  # 95%, over problems
        "device_acc": device_ok / max(len(kept), 1),
        "offload_rate": len(sent) / max(n, 1),
        "cloud_calls": len(sent),
        "cloud_tokens": sum(cloud[i]["prompt_tokens"] + cloud[i]["completion_tokens"] for i in sent),
        "per_level": {
            str(k): {"n": v[0], "offload_rate": v[1] / v[0], "device_acc": v[3] / max(v[2], 1)}
            for k, v in sorted(by_level.items())
        },
    }
    if wants is not None:
        row["wanted_offload_rate"] = len(wants) / max(n, 1)
    if order is not None and cloud_all is not None:
        if weak is None:
            raise ValueError("summarise: APGR needs the weak model's accuracy (the never row's), one for every row")
        dev = [d["correct"] for d in device]
        cok = {i: c["correct"] for i, c in cloud_all.items()}
        strong = sum(cok.values()) / max(n, 1)
        row.update(apgr_cpt(accuracy_curve(order, dev, cok), weak, strong))
    return row


def suite_rows(
    problems,
    policies: dict,
    base: list[dict] | None,
    cloud,
    budget,
    seed=0,
    router_scores=None,
    router_threshold=None,
    baselines=BASELINES,
    cloud_path=None,
):
    """Every method's row for one suite, from the device outputs already computed.  Returns (rows, records).

    ``base`` holds the base device model's outputs: the never/random/router rows answer with them, and they are
    the weak model of every row's APGR/CPT.  ``None`` (no base model was run): no such rows, and no APGR/CPT.
    Every row carries ``overall_ci`` (95% bootstrap over problems); each policy row carries ``comparisons``, the
    paired bootstrap of its overall accuracy minus every later policy's and every baseline's (``compare_rows``)."""
    n = len(problems)
    cap = math.floor(budget * n + 1e-9)
    plans = {}  # method -> (device outputs, capped cloud set, wanted requests, cost-sweep order)
    for name, dev in policies.items():
        wants = [i for i, d in enumerate(dev) if d["escalated"]]
        plans[name] = (dev, set(capped(wants, cap)), wants, wants)
    if base is None:
        baselines = tuple(b for b in baselines if b not in BASE_ROWS)
    if "never" in baselines:
        plans["never"] = (base, set(), None, [])
    if "random" in baselines:
        perm = random.Random(seed).sample(range(n), n)
        plans["random"] = (base, set(perm[:cap]), None, perm)
    if "router" in baselines and router_scores is not None:
        wants = [i for i in range(n) if router_scores[i] > router_threshold]
        plans["router"] = (
            base,
            set(capped(wants, cap)),
            wants,
            list(np.argsort(-np.asarray(router_scores), kind="stable")),
        )
    every = "cloud" in baselines
    asked = set(range(n)) if every else set().union(*(p[1] for p in plans.values()))
    cloud_res = run_cloud(cloud, problems, asked, cloud_path)
    cloud_all = cloud_res if every and base is not None else None
    # the base device model answering everything: one weak model for every row
    weak = sum(d["correct"] for d in base) / max(n, 1) if base is not None else None
    rows = [
        summarise(m, problems, dev, sent, cloud_res, wants, order, cloud_all, weak)
        for m, (dev, sent, wants, order) in plans.items()
    ]
    for row, (dev, _, _, _) in zip(rows, plans.values()):
        # work files from before the field have no format_ok: none
        flags = [d["format_ok"] for d in dev if d.get("format_ok") is not None]
        row["format_rate"] = sum(flags) / len(flags) if flags else None
    if every:
        rows.append(summarise("cloud", problems, [None] * n, range(n), cloud_res))
    correct = {m: row_correct(n, dev, sent, cloud_res) for m, (dev, sent, _, _) in plans.items()}
    if every:
        correct["cloud"] = row_correct(n, None, range(n), cloud_res)
    comparisons = compare_rows(correct, list(policies), BOOTSTRAP_N, BOOTSTRAP_SEED)
    for row in rows:
        if row["method"] in policies:
            row["comparisons"] = [c for c in comparisons if c["a"] == row["method"]]
    records = []
    for i, p in enumerate(problems):
        rec = {"uid": p.uid, "level": p.level, "question": p.question, "gold": p.answer}
        c = cloud_res.get(i)
        if c is not None:
            rec.update(cloud_output=c["text"], cloud_answer=c["answer"], cloud_correct=c["correct"])
        for m, (dev, sent, _wants, _) in plans.items():
            d = dev[i]
            rec[m] = {
                "prompt": d.get("prompt"),
                "device_output": d["output"],
                "device_answer": d["answer"],
                "device_correct": d["correct"],
                "escalated": d["escalated"],
                "sent_to_cloud": i in sent,
                "correct": correct[m][i],  # row_correct: the cloud's answer where sent, the device's elsewhere
            }
        records.append(rec)
    return rows, records


def evaluate(
    env,
    generator,
    problems,
    budget: float,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    seed: int = 0,
    progress=True,
):
    """The in-training evaluation: rows policy / never / random from one set of greedy outputs.
    Returns (rows, records)."""
    dev = run_device(env, generator, problems, batch_size, max_new_tokens, progress=progress, desc="eval")
    rows, recs = suite_rows(problems, {"policy": dev}, dev, env.cloud, budget, seed, baselines=("never", "random"))
    records = [
        {
            "uid": r["uid"],
            "level": r["level"],
            "question": r["question"],
            "gold": r["gold"],
            **r["policy"],
            "cloud_output": r.get("cloud_output") if r["policy"]["sent_to_cloud"] else None,
        }
        for r in recs
    ]
    return rows, records


# ---------------------------------------------------------------------------- query mode (rl.env=query)


def query_pass(
    env, generator, problems, batch_size=32, max_new_tokens=64, call_limits=None, progress=True, desc="query"
):
    """Greedy multi-turn rollouts (one per problem) of a ``QueryEnv``; ``call_limits[i]`` caps problem i's calls."""
    out = []
    bar = tqdm(total=len(problems), desc=desc, unit="prob", disable=not progress, leave=False)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        limits = None if call_limits is None else call_limits[start : start + batch_size]
        groups = env.rollout(generator, chunk, 1, temperature=0.0, max_new_tokens=max_new_tokens, call_limits=limits)
        out += [g.rollouts[0] for g in groups]
        bar.update(len(chunk))
    bar.close()
    return out


def call_cap_limits(calls: list[int], cap: int) -> list[int | None]:
    """The test-time call cap in dataset order: problems are granted the calls they make until ``cap`` calls are
    used; the problem that would cross the cap gets what is left, every later one 0 (None = not limited)."""
    limits, used = [], 0
    for c in calls:
        if used + c <= cap:
            limits.append(None)
            used += c
        else:
            limits.append(cap - used)
            used = cap
    return limits


def rerun_with_limits(
    env, generator, problems, rolls, limits, batch_size, max_new_tokens, progress=True, desc="capped"
):
    """``rolls`` with every problem whose call limit is below the calls it made generated again under that limit."""
    redo = [i for i, (r, lim) in enumerate(zip(rolls, limits)) if lim is not None and r.calls > lim]
    out = list(rolls)
    if redo:
        again = query_pass(
            env,
            generator,
            [problems[i] for i in redo],
            batch_size,
            max_new_tokens,
            [limits[i] for i in redo],
            progress,
            desc,
        )
        for i, r in zip(redo, again):
            out[i] = r
    return out


def summarise_query(method, problems, rolls, wanted=None) -> dict:
    """One query-mode row: accuracy, conditional (no-call) accuracy, share of problems with a call, calls and
    cloud tokens (in total and per problem), per level."""
    n = len(problems)
    unaided = [r for r in rolls if r.calls == 0]
    by_level = defaultdict(list)
    for p, r in zip(problems, rolls):
        by_level[p.level].append(r)
    row = {
        "method": method,
        "n": n,
        "overall_acc": sum(r.correct for r in rolls) / max(n, 1),
        "overall_ci": bootstrap_ci([bool(r.correct) for r in rolls], n=BOOTSTRAP_N, seed=BOOTSTRAP_SEED),
        "device_acc": sum(r.correct for r in unaided) / max(len(unaided), 1),
        "offload_rate": sum(r.calls > 0 for r in rolls) / max(n, 1),
        "cloud_calls": sum(r.calls for r in rolls),
        "cloud_tokens": sum(r.cloud_tokens for r in rolls),
        "calls_per_problem": sum(r.calls for r in rolls) / max(n, 1),
        "cloud_tokens_per_problem": sum(r.cloud_tokens for r in rolls) / max(n, 1),
        "queries_per_problem": sum(r.num_queries for r in rolls) / max(n, 1),
        "escalation_rate": sum(r.escalated for r in rolls) / max(n, 1),
        "per_level": {
            str(k): {
                "n": len(v),
                "offload_rate": sum(r.calls > 0 for r in v) / len(v),
                "calls_per_problem": sum(r.calls for r in v) / len(v),
                "acc": sum(r.correct for r in v) / len(v),
                "device_acc": sum(r.correct for r in v if r.calls == 0) / max(sum(r.calls == 0 for r in v), 1),
            }
            for k, v in sorted(by_level.items())
        },
    }
    if wanted is not None:
        row["wanted_calls_per_problem"] = sum(r.calls for r in wanted) / max(n, 1)
    return row


def query_record(r) -> dict:
    return {
        "output": r.sample.text,
        "queries": r.queries,
        "refused": r.refused,
        "calls": r.calls,
        "cloud_tokens": r.cloud_tokens,
        "escalated": r.escalated,
        "wanted_escalation": r.wanted_escalation,
        "answer": r.local_answer,
        "device_correct": bool(r.device_correct),
        "correct": bool(r.correct),
    }


def evaluate_query(
    env,
    generator,
    problems,
    budget: float,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    seed: int = 0,
    progress=True,
):
    """Query-mode evaluation (rl.env=query), greedy.  Returns (rows, records); the rows:

      * policy    -- calls capped at the budget: granted in dataset order until floor(budget·N) calls
                     are used; later queries get "call limit reached", later escalations are graded as
                     device answers (the route cap, counted in calls);
      * uncapped  -- every call granted (up to rl.max_queries queries per problem, plus the escalation);
      * never     -- the same model with no call granted at all (the device alone).

    Only problems that called the cloud are generated again for the capped rows (greedy decoding
    makes the others' outputs identical).  ``seed`` is unused (no random baseline in query mode).
    Every row carries ``overall_ci``; the policy row carries ``comparisons`` against uncapped and never
    (paired bootstrap, ``compare_rows``).
    """
    n = len(problems)
    cap = math.floor(budget * n + 1e-9)
    free = query_pass(env, generator, problems, batch_size, max_new_tokens, progress=progress, desc="eval")
    capped_rolls = rerun_with_limits(
        env,
        generator,
        problems,
        free,
        call_cap_limits([r.calls for r in free], cap),
        batch_size,
        max_new_tokens,
        progress,
    )
    never = rerun_with_limits(
        env, generator, problems, free, [0] * n, batch_size, max_new_tokens, progress, desc="no calls"
    )
    rows = [
        summarise_query("policy", problems, capped_rolls, wanted=free),
        summarise_query("uncapped", problems, free),
        summarise_query("never", problems, never),
    ]
    correct = {
        m: [bool(r.correct) for r in rs] for m, rs in (("policy", capped_rolls), ("uncapped", free), ("never", never))
    }
    rows[0]["comparisons"] = compare_rows(correct, ["policy"], BOOTSTRAP_N, BOOTSTRAP_SEED)
    records = [
        {
            "uid": p.uid,
            "level": p.level,
            "question": p.question,
            "gold": p.answer,
            **query_record(c),
            "uncapped": query_record(f),
            "never": query_record(nv),
        }
        for p, c, f, nv in zip(problems, capped_rolls, free, never)
    ]
    return rows, records


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
    head = (
        f"{'method':<12} {'overall [95% CI]':<21} {'device':>8} {'offload':>8} {'calls':>6} {'c.tokens':>9} "
        f"{'format':>7} {'APGR':>6} {'CPT50':>6}"
    )
    lines = ([title] if title else []) + [head, "-" * len(head)]
    fmt = lambda v, pct=False: "     -" if v is None else (f"{100 * v:>5.1f}%" if pct else f"{v:>6.3f}")  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['method']:<12} {fmt_overall(r)} {100 * r['device_acc']:>7.1f}% {100 * r['offload_rate']:>7.1f}% "
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


def average_rows(per_suite: dict[str, list[dict]]) -> list[dict]:
    """The paper's summary: each method's metrics averaged over suites (unweighted)."""
    by_method = defaultdict(list)
    for rows in per_suite.values():
        for r in rows:
            by_method[r["method"]].append(r)
    out = []
    for m, rs in by_method.items():
        avg = {
            "method": m,
            "n": sum(r["n"] for r in rs),
            "cloud_calls": sum(r["cloud_calls"] for r in rs),
            "cloud_tokens": sum(r["cloud_tokens"] for r in rs),
            "per_level": {},
        }
        for k in ("overall_acc", "device_acc", "offload_rate", "format_rate", "apgr", "cpt50", "cpt80"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            avg[k] = sum(vals) / len(vals) if vals else None
        for k in ("calls_per_problem", "cloud_tokens_per_problem"):  # query-mode rows only
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                avg[k] = sum(vals) / len(vals)
        out.append(avg)
    return out


def train_router(probs, source, env, gen, template, max_new_tokens, bs, out, base_path):
    """Greedy rollouts of the base device model on the router training problems ``probs``; fit on 80%, calibrate on
    20%; saved under ``out``/router-<template>-<digest of the problems>/ and loaded from there when it exists (a rerun,
    or a later run with the same --out, reuses it; other router data gets a folder of its own)."""
    digest = hashlib.sha1("\n".join(p.uid for p in probs).encode()).hexdigest()[:8]
    rdir = os.path.join(out, f"router-{template}-{digest}")
    rpath = os.path.join(rdir, "router.pkl")
    wpath = os.path.join(rdir, "device.jsonl")
    meta = {"model": base_path, "template": template, "max_new_tokens": max_new_tokens, "n": len(probs)}
    meta["source"] = source
    check_meta(wpath, meta)
    if os.path.exists(rpath):
        print(f"router: reusing {rpath} ({len(probs)} problems from {source})", file=sys.stderr)
        return PromptRouter.load(rpath)
    print(f"router: learning from {len(probs)} problems of {source} (rollouts of the base model)", file=sys.stderr)
    dev = run_device(env, gen, probs, bs, max_new_tokens, 0.0, wpath, desc=f"router-data:{template}")
    cut = max(1, int(0.8 * len(probs)))
    router = PromptRouter().fit([p.question for p in probs[:cut]], [d["correct"] for d in dev[:cut]])
    router.calibrate([p.question for p in probs[cut:]])
    router.save(rpath)
    return router
