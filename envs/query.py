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

The types (``QueryRollout``, ``Group``) and the escalation step are shared with the route mode (envs/rollout.py); the
evaluation of a query policy (capped, uncapped and no-call rows) is evaluation/protocol.py: ``evaluate_query``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from core.problem import Problem
from envs.format import split_escalation
from envs.prompts import messages
from envs.rollout import (
    Group,
    QueryRollout,
    ask_cloud_for_escalations,
    calls_per_rollout,
    check_prompt_tokens,
    cloud_replies_or_none,
    route_metrics,
)
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
class QueryRow:
    """A multi-turn response being generated: a training rollout (``QueryEnv.rollout``) or a served request
    (serving/policy.py), both run by ``run_query_turns``."""

    prompt_ids: list[int]
    max_new_tokens: int  # device tokens over all its turns
    query_limit: int  # queries the cloud will answer (rl.max_queries, or fewer under a call cap)
    call_limit: int | None = None  # all calls (queries + escalation); None = no limit on the escalation
    index: int = 0  # which problem
    ids: list[int] = field(default_factory=list)  # completion tokens: the device's and the inserted responses
    mask: list[int] = field(default_factory=list)  # 1 for a token the device sampled, 0 for an inserted one
    device_tokens: int = 0
    queries: list[str] = field(default_factory=list)  # the questions the cloud answered, in order
    refused: int = 0  # queries past query_limit, answered "call limit reached" (not calls)
    budget_refused: int = 0  # queries refused because ``grant`` said no (serving's live budget)
    cloud_prompt_tokens: int = 0
    cloud_completion_tokens: int = 0
    done: bool = False
    truncated: bool = False  # stopped at its token budget, not at EOS
    cloud_error: str | None = None  # a query of this row got no answer: the CloudError's message
    rollout_logprob: float | None = None  # sum over its turns of the sampling copy's log-probs (Sample's field)

    @property
    def cloud_tokens(self) -> int:
        return self.cloud_prompt_tokens + self.cloud_completion_tokens

    def add(self, ids: list[int], trained: bool):
        self.ids += ids
        self.mask += [int(trained)] * len(ids)
        self.device_tokens += len(ids) if trained else 0


def split_query(turn: str) -> tuple[str, str]:
    """(the question of the ``<query>`` that ``turn`` ends with, what the last token added after ``</query>``)."""
    before, overhang = turn.split(QUERY_CLOSE, 1) if QUERY_CLOSE in turn else (turn, "")
    opened = before.rfind(QUERY_OPEN)
    return (before[opened + len(QUERY_OPEN) :] if opened >= 0 else before).strip(), overhang


def run_query_turns(
    env,
    generator,
    rows: list[QueryRow],
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: str | None = QUERY_CLOSE,
    grant=None,
    refund=None,
    logits_processor=None,
    config_errors_raise: bool = True,
) -> None:
    """Generate ``rows`` to the end, batched over every unfinished row, answering their queries (the module
    docstring's steps 1-3).  ``grant(row)`` may refuse a call within ``query_limit`` (serving's live budget: the
    device reads "call limit reached", as in training, and ``budget_refused`` counts it); ``refund(row)`` gives back
    a granted call the cloud could not answer.  ``stop=None`` is one turn (the route mode: no queries).
    ``config_errors_raise``: see envs/rollout.py ``cloud_replies_or_none``."""
    active = rows
    while active:
        outs = generator.extend(
            [r.prompt_ids + r.ids for r in active],
            [r.max_new_tokens - r.device_tokens for r in active],
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            logits_processor=logits_processor,
        )
        asking = []  # (row, question, overhang)
        for r, o in zip(active, outs):
            r.add(o.ids, trained=True)
            if o.logprob is not None:
                r.rollout_logprob = (r.rollout_logprob or 0.0) + o.logprob
            if o.reason != "stop" or r.device_tokens >= r.max_new_tokens:
                r.done, r.truncated = True, o.reason != "eos"
                continue
            question, overhang = split_query(env.tokenizer.decode(o.ids, skip_special_tokens=True))
            if len(r.queries) >= r.query_limit:
                r.refused += 1
                r.add(env.response_ids(CALL_LIMIT_TEXT, overhang), trained=False)
            elif grant is None or grant(r):
                asking.append((r, question, overhang))
            else:  # refused by the caller (over budget): the device reads what it reads at its call limit
                r.budget_refused += 1
                r.add(env.response_ids(CALL_LIMIT_TEXT, overhang), trained=False)
        if asking:
            questions = [query_problem(q) for _, q, _ in asking]
            replies, error = cloud_replies_or_none(env.cloud, questions, "queries", config_errors_raise)
            for (r, question, overhang), rep in zip(asking, replies):
                if rep is None:  # no answer: the row goes on without one, and its reward is unknown
                    if refund is not None:
                        refund(r)
                    r.cloud_error = r.cloud_error or error
                    r.add(env.response_ids(CLOUD_UNAVAILABLE_TEXT, overhang), trained=False)
                    continue
                r.queries.append(question)
                r.cloud_prompt_tokens += rep.prompt_tokens
                r.cloud_completion_tokens += rep.completion_tokens
                r.add(env.response_ids(rep.text, overhang), trained=False)
        active = [r for r in active if not r.done]


class QueryEnv:
    """Same surface as ``RouteEnv`` (envs/base.py: ``Environment``): ``prompt``, ``rollout`` (-> ``Group``s of
    ``QueryRollout``s), ``judge``, ``reward``, ``usage_of``, ``metrics``; the budget caps calls per
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
            rows += [QueryRow(prompt_ids[i], max_new_tokens, qlimit, limit, index=i) for _ in range(group_size)]
        run_query_turns(self, generator, rows, temperature, top_p)

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

        ask_cloud_for_escalations(self.cloud, [g for g in groups if any(r.escalated for r in g.rollouts)])
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

    def greedy_usage(self, generator, problems: list[Problem], max_new_tokens: int = 64) -> float:
        """Calls per problem of the greedy policy (answered queries + escalations; the queries' answers come from the
        cloud cache when it has them): the usage the γ controller follows with rl.usage_signal=greedy."""
        groups = self.rollout(generator, problems, 1, temperature=0.0, max_new_tokens=max_new_tokens)
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
