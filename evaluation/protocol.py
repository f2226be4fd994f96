"""The evaluation protocol (docs/evaluation.md): budget-capped rows of a policy and of every baseline at one budget.

    rows, records = suite_rows(problems, {"policy": dev}, base_dev, cloud, budget=0.3)   # eval.py, one suite
    rows, records = evaluate_held_out(env, generator, problems, budget=0.3)              # the trainer's held-out rows

The device answers every problem; at most ``floor(budget·N)`` problems go to the cloud, granted in dataset order
(evaluation/metrics.py: ``capped``); the same cap applies to every row: the policy, never, random, the router
(policies/router.py), the base device's self-confidence (policies/confidence.py), the oracle, and cloud only.
``suite_rows`` builds the rows of one suite from the resumable device passes and cloud answers
(evaluation/passes.py), with APGR/CPT and paired bootstrap intervals (evaluation/metrics.py).
``evaluate_held_out`` is the in-training evaluation of either environment: ``evaluate_route`` (the policy, and the
same policy never escalating or escalating a random budget share) or ``evaluate_query`` (capped, uncapped, no calls).
The run of eval.py over whole suites (models, base model, tables, summary.json) is evaluation/suites.py.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np

from evaluation.metrics import (
    BOOTSTRAP_N,
    BOOTSTRAP_SEED,
    accuracy_curve,
    apgr_cpt,
    bootstrap_ci,
    capped,
    compare_rows,
    row_correct,
)
from evaluation.passes import call_cap_limits, query_pass, rerun_with_limits, run_cloud, run_device
from policies.confidence import confidence_order
from policies.escalation_score import score_order, threshold_for_budget

BASELINES = ("never", "random", "router", "confidence", "oracle", "cloud")
DEFAULT_BASELINES = ("never", "random", "router", "cloud")  # eval.py's rows unless --baselines names others
BASE_ROWS = ("never", "random", "router", "confidence", "oracle")  # the rows answered by the base device model
POLICY_BASELINES = {"never": "policy_never", "random": "policy_random"}  # in training, the policy answers them
MATH_SUITE_MAX_NEW_TOKENS = 1024  # the paper's response length on MATH (docs/method.md §8)
CALIBRATION_SHARE = 0.2  # the "<name>@score" rows' threshold is picked on this first share of a suite by default
SCORE_ROW = "{}@score"  # a policy escalating the problems whose escalation score exceeds the budget's threshold


def score_plan(scores: list[float], calibration: list[float] | None, budget: float) -> dict:
    """The threshold mode of a policy (``<name>@score``): the threshold that escalates a ``budget`` share of the
    calibration scores (``threshold_for_budget``; default: the first ``CALIBRATION_SHARE`` of ``scores`` themselves),
    the problems whose score exceeds it, and the cost-sweep order by descending score.  Returns {threshold,
    calibration_n, calibration_offload, wants, order}."""
    n_cal = max(1, math.floor(CALIBRATION_SHARE * len(scores))) if calibration is None else len(calibration)
    cal = scores[:n_cal] if calibration is None else calibration
    threshold = threshold_for_budget(cal, budget)
    return {
        "threshold": threshold,
        "calibration_n": n_cal,
        "calibration_offload": sum(s > threshold for s in cal) / max(len(cal), 1),
        "wants": [i for i, s in enumerate(scores) if s > threshold],
        "order": score_order(scores),
    }


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
    baselines=DEFAULT_BASELINES,
    cloud_path=None,
    score_rows=False,
    calibration: dict | None = None,
    confidence_plan: dict | None = None,
):
    """Every method's row for one suite, from the device outputs already computed.  Returns (rows, records).

    ``base`` holds the base device model's outputs: the never/random/router rows answer with them, and they are
    the weak model of every row's APGR/CPT.  ``None`` (no base model was run): no such rows, and no APGR/CPT.
    Every row carries ``overall_ci`` (95% bootstrap over problems); each policy row carries ``comparisons``, the
    paired bootstrap of its overall accuracy minus every later policy's and every baseline's (``compare_rows``).

    Escalation scores (``escalation_score`` in a policy's outputs, evaluation/passes.py ``run_device(score=True)``):
    the policy row keeps its own numbers (its escalations, capped in dataset order; APGR/CPT on its escalations in
    dataset order, flat beyond them) and adds ``apgr_by_score``, ``cpt50_by_score``, ``cpt80_by_score``: the cost
    sweep in descending score, the policy's whole curve.  ``score_rows``: one more row per scored policy,
    ``<name>@score``, that escalates the problems whose score exceeds the threshold picked to hit ``budget`` on a
    calibration split (``score_plan``): ``calibration[name]`` (scores of other problems, e.g. eval.py
    ``--calibration FILE``), else the first 20% of this suite, which stay among the evaluated problems (one scalar is
    fitted on them).  Its cap, dataset order and APGR are those of every row, its sweep the score order.

    ``confidence`` (TT & self-confidence): the base device escalates the problems whose ``confidence`` (each base
    output's mean token log-probability, evaluation/passes.py ``run_device(confidence=True)``) is below
    ``confidence_plan["threshold"]`` (calibrated on training problems: policies/confidence.py
    ``confidence_threshold``; the plan's fields go into the row); no plan, no row.  ``oracle`` (a reference
    ceiling, not a competitor): the base device escalates exactly the problems it answers wrong.  Both under the
    cap, in dataset order; their sweeps: ascending confidence, and the wrong answers first."""
    n = len(problems)
    cap = math.floor(budget * n + 1e-9)
    plans = {}  # method -> (device outputs, capped cloud set, wanted requests, cost-sweep order)
    scored = {}  # policy name -> its escalation scores
    thresholds = {}  # score row -> score_plan's threshold fields
    for name, dev in policies.items():
        wants = [i for i, d in enumerate(dev) if d["escalated"]]
        plans[name] = (dev, set(capped(wants, cap)), wants, wants)
        if all(d.get("escalation_score") is not None for d in dev):
            scored[name] = [d["escalation_score"] for d in dev]
        if score_rows and name in scored:
            plan = score_plan(scored[name], (calibration or {}).get(name), budget)
            row = SCORE_ROW.format(name)
            plans[row] = (dev, set(capped(plan["wants"], cap)), plan["wants"], plan["order"])
            thresholds[row] = {k: plan[k] for k in ("threshold", "calibration_n", "calibration_offload")}
    policy_rows = [m for m in plans]  # the policies and their score rows, before the baselines
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
    if "confidence" in baselines and confidence_plan is not None:
        conf = [d["confidence"] for d in base]
        wants = [i for i in range(n) if conf[i] < confidence_plan["threshold"]]
        plans["confidence"] = (base, set(capped(wants, cap)), wants, confidence_order(conf))
        thresholds["confidence"] = dict(confidence_plan)
    if "oracle" in baselines:
        wants = [i for i in range(n) if not base[i]["correct"]]
        plans["oracle"] = (base, set(capped(wants, cap)), wants, wants + [i for i in range(n) if base[i]["correct"]])
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
        row.update(thresholds.get(row["method"], {}))
        if row["method"] in scored and cloud_all is not None:  # the policy's whole curve, in descending score
            curve = accuracy_curve(
                score_order(scored[row["method"]]),
                [d["correct"] for d in dev],
                {i: c["correct"] for i, c in cloud_all.items()},
            )
            strong = sum(c["correct"] for c in cloud_all.values()) / max(n, 1)
            row.update({f"{k}_by_score": v for k, v in apgr_cpt(curve, weak, strong).items()})
    if every:
        rows.append(summarise("cloud", problems, [None] * n, range(n), cloud_res))
    correct = {m: row_correct(n, dev, sent, cloud_res) for m, (dev, sent, _, _) in plans.items()}
    if every:
        correct["cloud"] = row_correct(n, None, range(n), cloud_res)
    comparisons = compare_rows(correct, policy_rows, BOOTSTRAP_N, BOOTSTRAP_SEED)
    for row in rows:
        if row["method"] in policy_rows:
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
            if d.get("escalation_score") is not None:
                rec[m]["escalation_score"] = d["escalation_score"]
            if m == "confidence":
                rec[m]["confidence"] = d["confidence"]
        records.append(rec)
    return rows, records


def evaluate_route(
    env,
    generator,
    problems,
    budget: float,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    seed: int = 0,
    progress=True,
):
    """The in-training evaluation: rows policy / policy_never / policy_random from one set of greedy outputs, all
    answered by this policy (eval.py's never/random rows are the base model's).  Returns (rows, records)."""
    dev = run_device(env, generator, problems, batch_size, max_new_tokens, progress=progress, desc="eval")
    rows, recs = suite_rows(problems, {"policy": dev}, dev, env.cloud, budget, seed, baselines=("never", "random"))
    for row in rows:  # this policy never escalating / escalating at random
        row["method"] = POLICY_BASELINES.get(row["method"], row["method"])
        for c in row.get("comparisons", []):
            c["b"] = POLICY_BASELINES.get(c["b"], c["b"])
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


def evaluate_held_out(
    env,
    generator,
    problems,
    budget: float,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    seed: int = 0,
    progress=True,
):
    """The trainer's held-out evaluation of ``env``'s mode (``env.name``: route or query).  Returns (rows, records)."""
    run = evaluate_query if env.name == "query" else evaluate_route
    return run(env, generator, problems, budget, batch_size, max_new_tokens, seed, progress)


def cloud_summary(cloud, before: dict) -> str:
    """One line for an evaluation's cloud traffic (the cache logs each batch at debug level only): answers asked of
    the backend and answers the cache held, since ``before`` (an earlier ``cloud.usage()``)."""
    now = cloud.usage()
    new, cached = now["calls"] - before["calls"], now["cache_hits"] - before["cache_hits"]
    tokens = now["prompt_tokens"] + now["completion_tokens"] - before["prompt_tokens"] - before["completion_tokens"]
    return f"{new} new answers ({tokens} tokens), {cached} from the cache"
