"""The ``query`` collaboration environment (docs/method.md §1): ask the cloud in the middle of reasoning.

    env = QueryEnv("arithmetic", tokenizer=tok, cloud=cloud, max_queries=2)
    groups = env.rollout(generator, problems, group_size=8, temperature=1.0, max_new_tokens=64)

The device may write ``<query>question</query>`` at any point.  Generation stops right
after the token that completes ``</query>``, the cloud's answer is inserted as
``<response>answer</response>`` and the device continues.  One rollout step is batched
over every unfinished row of all G×P rollouts (``HFGenerator.extend``):

  1. continue each unfinished row until EOS, its device-token budget (``max_new_tokens`` in
     total, over all its turns) or ``</query>``;
  2. send the queries of every row that stopped on ``</query>`` to the cloud in one
     cached request (``query_problem``; the same query is asked once);
  3. append ``<response>...</response>`` to those rows and go back to 1 with them.

Call limit: a rollout's first ``max_queries`` queries are answered.  A later ``<query>``
gets ``<response>call limit reached</response>``: no cloud call, no charge, and the device
goes on, so it can still finish its answer.  A ``</query>`` on the last token of the budget
ends the rollout unanswered (and uncharged): the device could not use the answer.

Masks: ``sample.loss_mask`` has one entry per completion token, 1 for every token the device
sampled and 0 for each inserted ``<response>`` token (cloud text and the tags the environment
writes), so cloud tokens are context only and never trained.  Token ids are kept exactly as
they were fed to the model, so the trainer scores the very sequence that was sampled.

Grading: the final answer is extracted from the device's own text, with every
``<query>...</query>`` and ``<response>...</response>`` removed (the cloud's numbers never
count as the device's answer).  ``<unknown> ... </unknown>`` at the end still escalates the
whole problem, as in the route environment.  Calls of a rollout = answered queries + the
escalation (if any); ``rewards/collaboration.py: query_reward`` charges γ per call.

Adaptive filtering (rl/filtering.py): a rollout is *unaided* when it made no call; D1 =
some unaided rollout is correct, D2 = none is but help (a query or the escalation) solved
it at least once (``Group.cloud_correct``).

Cloud failures (``CloudError``), as in the route environment: a query the cloud could not
answer gets ``<response>cloud unavailable</response>`` (not a call, not trained) so the
row can finish, an escalation gets no verdict, and such rollouts are ``cloud_failed``:
their group is left out of the update (``Group.trainable``) and counted in ``cloud_errors``.

Evaluation.  ``env.evaluate`` gives the held-out rows during training (envs/evaluation.py: ``evaluate_query``);
``QueryEnv.evaluate_suites(cfg, opts)`` is eval.py in query mode: per model its capped, uncapped and no-call rows,
and the cloud row, over the suites (envs/suite_evaluation.py).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

from core.problem import Problem
from envs.evaluation import evaluate_query, run_cloud, summarise
from envs.prompts import messages
from envs.route import (
    Group,
    Rollout,
    calls_per_rollout,
    check_prompt_tokens,
    cloud_replies_or_none,
    route_metrics,
    split_escalation,
)
from envs.suite_evaluation import EvalOptions, SuiteRun, cloud_label, comparisons_by_suite, format_row_models
from envs.tasks import template_for
from policies.cloud import query_problem
from policies.generation import Sample, chat_prompt
from rewards.collaboration import query_reward
from rewards.grading import grade_response

QUERY_OPEN, QUERY_CLOSE = "<query>", "</query>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<response>", "</response>"
CALL_LIMIT_TEXT = "call limit reached"
CLOUD_UNAVAILABLE_TEXT = "cloud unavailable"

_EXCHANGE = re.compile(r"<query>.*?</query>|<response>.*?</response>", re.DOTALL)


def device_text(text: str) -> str:
    """The device's own words: ``text`` without its ``<query>...</query>`` and ``<response>...</response>`` spans."""
    return _EXCHANGE.sub(" ", text)


def response_text(reply: str, overhang: str = "") -> str:
    """``<response>reply</response>`` to insert after a query.

    ``overhang`` is what the device's last token added after ``</query>`` (a BPE token such as
    ``><`` completes the tag and starts the next one): when it begins ``<response>``, only the
    rest of the tag is inserted, so the context reads ``</query><response>`` exactly once."""
    reply = reply.replace(RESPONSE_OPEN, "").replace(RESPONSE_CLOSE, "").strip()
    text = RESPONSE_OPEN + reply + RESPONSE_CLOSE
    if overhang and RESPONSE_OPEN.startswith(overhang):
        text = text[len(overhang) :]
    return text


@dataclass
class QueryRollout(Rollout):
    """One multi-turn rollout: ``escalated``/``cloud_correct`` as in route, plus its queries."""

    queries: list[str] = field(default_factory=list)  # the questions the cloud answered, in order
    refused: int = 0  # queries past the call limit (answered "call limit reached"; not calls)
    cloud_tokens: int = 0  # prompt + completion tokens the cloud reported for every call (queries, escalation)
    wanted_escalation: bool = False  # ended with <unknown>; ``escalated`` is False when the call limit refused it

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def calls(self) -> int:
        """Cloud calls: answered queries + the escalation."""
        return len(self.queries) + int(self.escalated)

    @property
    def unaided(self) -> bool:
        """Answered by the device alone: no answered ``<query>`` and no escalation."""
        return not self.queries and not self.escalated

    @property
    def unaided_correct(self) -> bool:
        return self.local_correct and self.unaided

    @property
    def correct(self) -> bool:
        """The final answer is right: the cloud's when it escalated, the device's (helped or not) otherwise."""
        return self.cloud_correct if self.escalated else self.local_correct


@dataclass
class _Row:
    """A rollout being generated."""

    index: int  # which problem
    prompt_ids: list[int]
    query_limit: int  # queries the cloud will answer
    call_limit: int | None  # all calls (queries + escalation); None = no limit on the escalation
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    device_tokens: int = 0
    queries: list[str] = field(default_factory=list)
    refused: int = 0
    cloud_tokens: int = 0
    done: bool = False
    truncated: bool = False
    cloud_error: str | None = None  # a query of this row got no answer: the CloudError's message
    rollout_logprob: float | None = None  # sum over its turns of the sampling copy's log-probs (Sample's field)

    def add(self, ids: list[int], trained: bool):
        self.ids += ids
        self.mask += [int(trained)] * len(ids)
        self.device_tokens += len(ids) if trained else 0


class QueryEnv:
    """Same surface as ``RouteEnv`` (envs/base.py: ``Environment``): ``prompt``, ``rollout`` (-> ``Group``s of
    ``QueryRollout``s), ``judge``, ``reward``, ``usage_of``, ``metrics``, ``evaluate``; the budget caps calls per
    rollout."""

    name = "query"
    usage = "calls"
    usage_metric = "calls_per_rollout_global"

    def __init__(
        self,
        template: str,
        tokenizer,
        cloud,
        max_queries: int = 2,
        max_response_tokens: int = 64,
        max_solve_steps: int = 6,
        few_shot: bool = True,
        system_prompt: str | None = None,
        max_prompt_tokens: int = 0,
        gamma_tokens: float = 0.0,
    ):
        self.gamma_tokens = gamma_tokens  # rl.gamma_tokens: the fixed extra cost per cloud token in the reward
        self.template, self.tokenizer, self.cloud = template, tokenizer, cloud
        self.max_queries, self.max_response_tokens = max_queries, max_response_tokens
        self.max_solve_steps, self.few_shot, self.system_prompt = max_solve_steps, few_shot, system_prompt
        self.max_prompt_tokens = max_prompt_tokens

    @classmethod
    def from_config(cls, cfg, tokenizer, cloud) -> QueryEnv:
        """The training environment of ``cfg`` (rl/trainer.py: ``make_env``)."""
        return cls(
            template_for(cfg.task),
            tokenizer,
            cloud,
            cfg.rl.max_queries,
            cfg.rl.max_response_tokens,
            cfg.task.max_solve_steps,
            max_prompt_tokens=cfg.rl.max_prompt_tokens,
            gamma_tokens=cfg.rl.gamma_tokens,
        )

    def prompt(self, problem: Problem) -> str:
        msgs = messages(
            self.template, problem.question, self.max_solve_steps, self.few_shot, self.system_prompt, mode="query"
        )
        return chat_prompt(self.tokenizer, msgs)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def response_ids(self, reply: str, overhang: str) -> list[int]:
        """The tokens of a cloud reply as the device reads it, ``<response>reply</response>`` (``response_text``:
        less the part of the tag that ``overhang``, what the device wrote past ``</query>``, already holds), the
        reply cut to rl.max_response_tokens."""
        reply = reply.strip()
        if self.max_response_tokens:
            ids = self._encode(reply)
            if len(ids) > self.max_response_tokens:  # a long cloud answer is cut to rl.max_response_tokens
                reply = self.tokenizer.decode(ids[: self.max_response_tokens], skip_special_tokens=True)
        return self._encode(response_text(reply, overhang))

    def judge(
        self,
        problem: Problem,
        sample: Sample,
        queries: list[str] | tuple = (),
        refused: int = 0,
        cloud_tokens: int = 0,
        may_escalate: bool = True,
        cloud_failed: bool = False,
    ) -> QueryRollout:
        """Grade the device's own final answer; ``may_escalate=False``: an ``<unknown>`` ending is refused
        (call cap)."""
        wants, text = split_escalation(sample.text)
        escalated = wants and may_escalate
        answer, correct = grade_response(problem, device_text(text))
        return QueryRollout(
            sample,
            escalated,
            answer,
            correct and not escalated,
            device_correct=correct,
            queries=list(queries),
            refused=refused,
            cloud_tokens=cloud_tokens,
            wanted_escalation=wants,
            cloud_failed=cloud_failed,
        )

    def rollout(
        self,
        generator,
        problems: list[Problem],
        group_size: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        call_limits: list[int] | None = None,
    ) -> list[Group]:
        """G multi-turn rollouts per problem (batched over all of them), graded; see the module docstring.

        ``call_limits[i]`` caps every rollout of problem i at that many calls (queries first, then the
        escalation), on top of ``max_queries``; evaluation uses it for the test-time budget cap.
        """
        tok = self.tokenizer
        prompt_ids = [self._encode(self.prompt(p)) for p in problems]
        for p, ids in zip(problems, prompt_ids):
            check_prompt_tokens(p, len(ids), self.max_prompt_tokens)
        rows = []
        for i in range(len(problems)):
            limit = None if call_limits is None else call_limits[i]
            qlimit = self.max_queries if limit is None else min(self.max_queries, limit)
            rows += [_Row(i, prompt_ids[i], qlimit, limit) for _ in range(group_size)]

        active = rows
        while active:
            outs = generator.extend(
                [r.prompt_ids + r.ids for r in active],
                [max_new_tokens - r.device_tokens for r in active],
                temperature=temperature,
                top_p=top_p,
                stop=QUERY_CLOSE,
            )
            asking = []  # (row, question, overhang)
            for r, o in zip(active, outs):
                r.add(o.ids, trained=True)
                if o.logprob is not None:
                    r.rollout_logprob = (r.rollout_logprob or 0.0) + o.logprob
                if o.reason != "stop" or r.device_tokens >= max_new_tokens:
                    r.done, r.truncated = True, o.reason != "eos"
                    continue
                turn = tok.decode(o.ids, skip_special_tokens=True)
                before, overhang = turn.split(QUERY_CLOSE, 1) if QUERY_CLOSE in turn else (turn, "")
                opened = before.rfind(QUERY_OPEN)
                question = (before[opened + len(QUERY_OPEN) :] if opened >= 0 else before).strip()
                if len(r.queries) < r.query_limit:
                    asking.append((r, question, overhang))
                else:
                    r.refused += 1
                    r.add(self.response_ids(CALL_LIMIT_TEXT, overhang), trained=False)
            if asking:
                replies, error = cloud_replies_or_none(self.cloud, [query_problem(q) for _, q, _ in asking], "queries")
                for (r, question, overhang), rep in zip(asking, replies):
                    if rep is None:  # no answer: the row goes on without one, and its reward is unknown
                        r.cloud_error = r.cloud_error or error
                        r.add(self.response_ids(CLOUD_UNAVAILABLE_TEXT, overhang), trained=False)
                        continue
                    r.queries.append(question)
                    r.cloud_tokens += rep.prompt_tokens + rep.completion_tokens
                    r.add(self.response_ids(rep.text, overhang), trained=False)
            active = [r for r in active if not r.done]

        rolls = []
        for r in rows:
            sample = Sample(
                r.prompt_ids,
                r.ids,
                tok.decode(r.ids, skip_special_tokens=True),
                r.truncated,
                loss_mask=r.mask,
                rollout_logprob=r.rollout_logprob,
            )
            may = r.call_limit is None or len(r.queries) < r.call_limit
            rolls.append(
                self.judge(
                    problems[r.index],
                    sample,
                    r.queries,
                    r.refused,
                    r.cloud_tokens,
                    may_escalate=may,
                    cloud_failed=r.cloud_error is not None,
                )
            )
        groups = [Group(p, rolls[i * group_size : (i + 1) * group_size]) for i, p in enumerate(problems)]
        for i, g in enumerate(groups):
            g.cloud_error = next(
                (r.cloud_error for r in rows[i * group_size : (i + 1) * group_size] if r.cloud_error), None
            )

        need = [
            g for g in groups if any(r.escalated for r in g.rollouts)
        ]  # escalations: the whole problem to the cloud
        if need:
            replies, error = cloud_replies_or_none(self.cloud, [g.problem for g in need])
            for g, rep in zip(need, replies):
                if rep is None:
                    g.cloud_error = error
                    for r in g.rollouts:
                        r.cloud_failed = r.cloud_failed or r.escalated
                    continue
                g.cloud_text = rep.text
                solved = grade_response(g.problem, rep.text)[1]
                for r in g.rollouts:
                    if r.escalated:
                        r.cloud_correct = solved
                        r.cloud_tokens += rep.prompt_tokens + rep.completion_tokens
        for g in groups:  # for D2: did help (a query or the escalation) solve it at least once?
            g.cloud_correct = any((r.local_correct and r.queries) or r.cloud_correct for r in g.rollouts)
        return groups

    def reward(self, groups: list[Group], reward_cfg, gamma: float) -> None:
        """r̃ = r − γ·calls − γ_tok·cloud tokens (rewards/collaboration.py: ``query_reward``), into each
        ``Group.rewards``."""
        rc = reward_cfg
        for g in groups:
            g.rewards = [
                query_reward(
                    r.local_correct,
                    r.escalated,
                    r.cloud_correct,
                    r.calls,
                    r.cloud_tokens,
                    rc.alpha_local,
                    rc.alpha_cloud,
                    gamma,
                    self.gamma_tokens,
                    rc.charge,
                )
                for r in g.rollouts
            ]

    def usage_of(self, groups: list[Group]) -> float:
        """Calls (answered queries + escalations) per rollout over all processes' groups: the dual constrains it."""
        return calls_per_rollout(groups)

    def metrics(self, groups: list[Group]) -> dict:
        """``route_metrics`` plus calls, queries and cloud tokens per rollout."""
        out = route_metrics(groups)
        rolls = [r for g in groups for r in g.rollouts]
        if rolls:
            n = len(rolls)
            calls_level = defaultdict(list)
            for g in groups:
                calls_level[g.problem.level] += [r.calls for r in g.rollouts]
            out.update(
                calls_per_rollout=sum(r.calls for r in rolls) / n,
                queries_per_rollout=sum(r.num_queries for r in rolls) / n,
                refused_per_rollout=sum(r.refused for r in rolls) / n,
                cloud_tokens_per_rollout=sum(r.cloud_tokens for r in rolls) / n,
                query_rate=sum(r.num_queries > 0 for r in rolls) / n,
                acc=sum(r.correct for r in rolls) / n,
                unaided_acc=sum(r.unaided_correct for r in rolls) / max(sum(r.calls == 0 for r in rolls), 1),
                helped_acc=sum(r.local_correct for r in rolls if r.queries)
                / max(sum(bool(r.queries) for r in rolls), 1),
                calls_by_level={str(k): sum(v) / len(v) for k, v in sorted(calls_level.items())},
            )
        return out

    def budget_text(self, budget: float) -> str:
        return f"{budget:g} calls per problem"

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
        """Held-out rows at the call budget (envs/evaluation.py: ``evaluate_query``)."""
        return evaluate_query(self, generator, problems, budget, batch_size, max_new_tokens, seed, progress)

    @staticmethod
    def suite_base_model(opts: EvalOptions, cfg, models: dict[str, str]) -> tuple[str | None, str | None]:
        """No base-model rows here (each model gets its own never row): an explicit ``--base-model`` (not ``same``)
        is evaluated as one more model."""
        if opts.base_model and opts.base_model != "same":
            return opts.base_model, "--base-model"
        return None, None

    @classmethod
    def evaluate_suites(cls, cfg, opts: EvalOptions) -> int:
        """eval.py in query mode (envs/suite_evaluation.py): per model and suite the rows of ``evaluate_query``
        (capped / uncapped / no calls), named ``<model>``, ``<model>/uncapped``, ``<model>/never``, and the ``cloud``
        row (the cloud answers every problem).  The router and random baselines are route-mode rows; query-mode
        evaluation regenerates instead of resuming (the cloud cache still answers every request it has seen).
        Returns the exit code."""
        run = SuiteRun.prepare(cfg, opts, cls)
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
                env = cls(
                    template, tok, run.cloud, cfg.rl.max_queries, cfg.rl.max_response_tokens, cfg.task.max_solve_steps
                )
                rows, recs = evaluate_query(
                    env, gen, probs, budget, run.batch_size, run.max_new(template), cfg.train.seed
                )

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
            "env": cls.name,
            "cloud": cfg.cloud.backend,
            "models": models,
            "row_models": {r["method"]: row_models[r["method"]] for rows in per_suite.values() for r in rows},
            "suites": per_suite,
            "comparisons": comparisons_by_suite(per_suite),
        }
        return run.finish(summary, per_suite)
