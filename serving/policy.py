"""A trained device policy with its cloud, as one object: the Python API of serving, and the server's only path.

    from serving.policy import CollaborativePolicy
    policy = CollaborativePolicy.load("outputs/cpu_default/final", budget=0.3)   # its run's config.json beside it
    a = policy.ask("What is 37 * 46?")
    a.text, a.answer, a.answered_by          # '... \\boxed{1702}', '1702', 'device' (or 'cloud', ...)
    answers = policy.ask_many(["What is 3 + 4?", "What is 4821 * 967?"])   # one batched device pass

``load`` reads the training run's resolved config (``<output_dir>/config.json``, found next to ``final/`` or a
``checkpoints/step-N/``; or ``config=`` a YAML with ``overrides``), so the device gets the prompt template, the task's
template and the environment mode (``rl.env``: route or query) it was trained with, and the cloud section it was
trained against (``cloud_backend=`` replaces the backend, e.g. ``"simulated"``).

What a question goes through (the same as a rollout of training, at temperature 0 by default):

* route mode (envs/route.py): the device answers with the training prompt; a response that ends with
  ``<unknown> ... </unknown>`` escalates: the cloud answers the question (``CachedCloud``: each question is paid
  for once, ever, with a cache file);
* query mode (envs/query.py): generation stops after each ``</query>``; the cloud's reply is inserted as
  ``<response>...</response>`` and the device continues (``HFGenerator.extend``, batched over every running
  request, one cached cloud request per round), up to ``rl.max_queries`` answered queries; past the limit the device
  reads ``<response>call limit reached</response>``, as in training; a final ``<unknown>`` escalates as in route.

Budget (serving/budget.py: ``SlidingBudget``): every cloud call (an escalation, a query) is granted only within the
budget over the last ``budget_window`` requests.  A call refused for the budget leaves the device's own answer (route)
or gets ``call limit reached`` (query).  A cloud that fails (``CloudError``, whatever the cause) also leaves the
device's answer: no question is ever lost.  ``Answer.answered_by`` says which: ``device``, ``cloud``,
``device-over-budget`` or ``device-cloud-error``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace

from core.problem import Problem
from envs.base import env_class_for
from envs.format import split_escalation
from envs.query import CALL_LIMIT_TEXT, CLOUD_UNAVAILABLE_TEXT, QUERY_CLOSE, QUERY_OPEN, device_text
from policies.calculator import answer_query
from policies.cloud import CloudError, query_problem
from policies.generation import HFGenerator
from rewards.math_grader import extract_answer
from serving.budget import SlidingBudget

log = logging.getLogger(__name__)

DEVICE, CLOUD, OVER_BUDGET, CLOUD_ERROR = "device", "cloud", "device-over-budget", "device-cloud-error"
ANSWERED_BY = (DEVICE, CLOUD, OVER_BUDGET, CLOUD_ERROR)


class PolicyLoadError(ValueError):
    """The policy cannot be loaded as asked; the message says what to pass instead."""


@dataclass
class Request:
    """One question for the device: its sampling and its place in the budget's arrival order (``seq``)."""

    question: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seq: int | None = None  # SlidingBudget.open(); None = no budget


@dataclass
class Draft:
    """The device's response to a ``Request`` (query mode: with the cloud's replies to its queries inside)."""

    request: Request
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # completion tokens: the device's and the inserted responses
    device_tokens: int = 0
    reason: str = "length"  # why the device stopped: eos or length
    queries: list[str] = field(default_factory=list)  # queries the cloud answered
    limit_refused: int = 0  # queries past rl.max_queries ("call limit reached", as in training)
    budget_refused: int = 0  # queries refused because the budget was spent
    cloud_prompt_tokens: int = 0
    cloud_completion_tokens: int = 0
    cloud_error: str | None = None
    done: bool = False


@dataclass
class Answer:
    """What came of a question.  ``text`` is the reply: the cloud's answer when the cloud answered the question,
    else the device's response as it wrote it (with its ``<query>``/``<response>`` exchanges, or its ``<unknown>``
    tag when the escalation was refused or failed)."""

    question: str
    text: str
    answer: str | None  # the final answer in it (the last \\boxed{}), None when there is none
    answered_by: str  # device | cloud | device-over-budget | device-cloud-error
    device_text: str
    escalated: bool = False  # the device's response ended with <unknown>
    cloud_text: str | None = None
    cloud_calls: int = 0  # calls the cloud answered: queries + the escalation
    queries: list[str] = field(default_factory=list)
    refused_calls: int = 0  # calls refused for the budget (queries and the escalation)
    cloud_error: str | None = None
    finish_reason: str = "stop"  # stop (the device ended its response, or the cloud answered) or length
    device_prompt_tokens: int = 0
    device_completion_tokens: int = 0
    cloud_prompt_tokens: int = 0
    cloud_completion_tokens: int = 0
    request_index: int | None = None  # the request's place in the budget's arrival order


def served_problem(question: str) -> Problem:
    """A user's question as a Problem: uid = a hash of it (it keys the cloud cache).  There is no gold; the simulated
    cloud answers with the calculator's value of the arithmetic in it (right as often as cloud.accuracy says), a real
    cloud ignores it."""
    digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:24]
    return Problem(uid=f"serve-{digest}", question=question, answer=answer_query(question) or "", level=0)


def find_run_config(model_path: str) -> str | None:
    """The training run's resolved config (a ``config.json`` with the ``rl`` and ``model`` sections) in the
    checkpoint's folder or up to three folders above it (``<out>/final``, ``<out>/checkpoints/step-N``)."""
    here = os.path.abspath(os.path.expanduser(model_path))
    for _ in range(4):
        path = os.path.join(here, "config.json")
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and "rl" in data and "model" in data:
                return path
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    return None


def default_name(path: str) -> str:
    """The served model's name: the run's folder for ``<run>/final`` (``cpu_default``), else the path's last part."""
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) > 1 and parts[-1] == "final":
        return parts[-2]
    return parts[-1].split(":")[-1] or "cloudroute-device"


class CollaborativePolicy:
    """The device model, its training prompt and mode, a cloud and an optional live budget; see the module doc.

    Build it with ``load`` (a checkpoint), or directly from parts (tests): ``env`` is the training environment
    (``RouteEnv``/``QueryEnv``: its ``prompt`` is the training prompt), ``generator`` an ``HFGenerator`` (or anything
    with its ``extend``), ``cloud`` a ``CachedCloud``.  ``logits_processor`` goes to every ``extend`` call (tests
    script the device with it)."""

    def __init__(
        self,
        env,
        generator,
        cloud,
        budget: SlidingBudget | None = None,
        max_new_tokens: int = 256,
        max_queries: int = 2,
        max_response_tokens: int = 64,
        name: str = "cloudroute-device",
        logits_processor=None,
    ):
        self.env, self.generator, self.cloud, self.budget = env, generator, cloud, budget
        self.tokenizer = env.tokenizer
        self.mode = env.name  # route | query
        self.max_new_tokens, self.max_queries, self.max_response_tokens = (
            max_new_tokens,
            max_queries,
            max_response_tokens,
        )
        self.name, self.logits_processor = name, logits_processor
        self._device_lock = threading.Lock()  # one device pass at a time (the model is not re-entrant)
        self._prompt_cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        model: str | None = None,
        config: str | None = None,
        overrides: list[str] | tuple = (),
        cloud_backend: str | None = None,
        budget: float | None = None,
        budget_window: int = 100,
        cloud_cache: str | None = "",
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        name: str | None = None,
        device_url: str | None = None,
        device_model: str | None = None,
    ) -> CollaborativePolicy:
        """A trained policy from its checkpoint.

        ``model``: the checkpoint (``<output_dir>/final``), or any model directory / hub id / ``package:...``; None:
        the config's ``model.name_or_path``.  ``config``: a training YAML (default: the run's ``config.json`` found
        next to ``model``); ``overrides``: ``section.key=value`` on top.  ``cloud_backend``: sets ``cloud.backend``.
        ``budget``: the live budget (route: share of requests, query: calls per request; default: ``rl.budget``;
        a negative number: no budget); ``budget_window``: its window in requests.  ``cloud_cache``: the SQLite file
        of the cloud's answers ("" = ``cloud.cache_file`` or ``~/.cache/cloudroute/serve_cloud_cache.sqlite``, None =
        no file).  ``max_new_tokens``: device tokens per answer (default: ``train.eval_max_new_tokens``).
        ``device_url``: an OpenAI-compatible server that serves the device model (``model`` then only gives the
        tokenizer and config; serving/remote.py); ``device_model``: its model name there."""
        from policies.device import load_device_model, load_tokenizer, resolve_model_path
        from rl.config import ConfigError, load_config

        source = config
        if config is None and model is not None and not model.startswith("package:"):
            source = find_run_config(model)
        if source is None and model is None:
            raise PolicyLoadError("no model: pass the trained checkpoint (e.g. --model outputs/cpu_default/final)")
        try:
            cfg = load_config(source, list(overrides) + ([f"cloud.backend={cloud_backend}"] if cloud_backend else []))
        except ConfigError as e:
            raise PolicyLoadError(str(e)) from None
        if source is None:
            log.warning(
                "no training config found next to %s (a config.json with the rl section, as train.py writes beside "
                "final/): using the defaults (rl.env=%s, task %s). Pass --config <the training YAML> to serve it "
                "with its training template and mode.",
                model,
                cfg.rl.env,
                cfg.task.name,
            )
        else:
            log.info("serving with the training config %s (rl.env=%s, task %s)", source, cfg.rl.env, cfg.task.name)
        if cfg.rl.env not in ("route", "query"):
            raise PolicyLoadError(
                f"rl.env={cfg.rl.env}: serving answers questions in the route or query mode; an LSRP policy has no "
                "cloud escalation to serve. Pass rl.env=route or rl.env=query."
            )
        mcfg = cfg.model
        if model is not None and model != mcfg.name_or_path:
            mcfg = replace(mcfg, name_or_path=model, gguf_file=None)
        mcfg = replace(mcfg, lora=False)  # a saved final/ holds the merged weights
        if device_url:
            from serving.remote import RemoteGenerator

            tok = load_tokenizer(resolve_model_path(mcfg.name_or_path, mcfg.gguf_file, mcfg.cache_dir))
            generator = RemoteGenerator(device_url, device_model or name or "device", tok)
        else:
            net, tok = load_device_model(mcfg, for_training=False)
            net.eval()
            generator = HFGenerator(net, tok, batch_size=batch_size, min_shared_prefix=32)
        from envs.simulation import task_cloud

        if cloud_cache == "":
            cloud_cache = cfg.cloud.cache_file or os.path.expanduser("~/.cache/cloudroute/serve_cloud_cache.sqlite")
        cloud = task_cloud(replace(cfg.cloud, cache_file=""), cloud_cache)
        env = env_class_for(cfg).from_config(cfg, tok, cloud)
        b = cfg.rl.budget if budget is None else budget
        if cfg.rl.env == "route" and b > 1:
            raise PolicyLoadError(
                f"budget {b:g}: in route mode it is the share of requests sent to the cloud, in [0, 1]"
            )
        return cls(
            env,
            generator,
            cloud,
            SlidingBudget(b, budget_window) if b >= 0 else None,
            max_new_tokens=max_new_tokens or cfg.train.eval_max_new_tokens,
            max_queries=cfg.rl.max_queries,
            max_response_tokens=cfg.rl.max_response_tokens,
            name=name or default_name(mcfg.name_or_path),
        )

    # ------------------------------------------------------------------ the notebook API

    def ask(self, question: str, **kw) -> Answer:
        """One question (see ``ask_many``)."""
        return self.ask_many([question], **kw)[0]

    def ask_many(
        self,
        questions: list[str],
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Answer every question: one batched device pass, then the escalations within the budget."""
        reqs = [self.request(q, max_new_tokens, temperature, top_p) for q in questions]
        try:
            return [self.finish(d) for d in self.draft_many(reqs)]
        finally:
            for r in reqs:
                self.close(r)

    # ------------------------------------------------------------------ the pieces the server calls

    def request(self, question: str, max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0):
        """A ``Request`` registered with the budget (call ``close`` once it is answered)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty: send the problem as the last user message")
        seq = self.budget.open() if self.budget is not None else None
        return Request(question, max_new_tokens or self.max_new_tokens, temperature, top_p, seq)

    def close(self, request: Request) -> None:
        if self.budget is not None and request.seq is not None:
            self.budget.close(request.seq)

    def prompt_ids(self, question: str) -> list[int]:
        """The training prompt of ``question``, tokenised."""
        ids = self._prompt_cache.get(question)
        if ids is None:
            ids = self.tokenizer(self.env.prompt(served_problem(question)), add_special_tokens=False)["input_ids"]
            if len(self._prompt_cache) < 4096:
                self._prompt_cache[question] = ids
        return ids

    def _grant(self, request: Request) -> bool:
        return self.budget is None or self.budget.try_call(request.seq)

    def _refund(self, request: Request) -> None:
        if self.budget is not None and request.seq is not None:
            self.budget.refund(request.seq)

    def draft_many(self, requests: list[Request]) -> list[Draft]:
        """The device's responses, batched (requests with the same sampling share ``extend`` calls); in query mode
        with the cloud's replies to their queries, round by round."""
        drafts = [Draft(r, self.prompt_ids(r.question)) for r in requests]
        groups: dict[tuple, list[Draft]] = {}
        for d in drafts:
            groups.setdefault((d.request.temperature, d.request.top_p), []).append(d)
        with self._device_lock:
            for (temperature, top_p), group in groups.items():
                self._run(group, temperature, top_p)
        return drafts

    def _run(self, drafts: list[Draft], temperature: float, top_p: float) -> None:
        query = self.mode == "query"
        active = drafts
        while active:
            outs = self.generator.extend(
                [d.prompt_ids + d.ids for d in active],
                [d.request.max_new_tokens - d.device_tokens for d in active],
                temperature=temperature,
                top_p=top_p,
                stop=QUERY_CLOSE if query else None,
                logits_processor=self.logits_processor,
            )
            asking = []  # (draft, question, overhang)
            for d, o in zip(active, outs):
                d.ids += o.ids
                d.device_tokens += len(o.ids)
                if o.reason != "stop" or d.device_tokens >= d.request.max_new_tokens:
                    d.reason = "eos" if o.reason == "eos" else "length"
                    d.done = True
                    continue
                turn = self.tokenizer.decode(o.ids, skip_special_tokens=True)
                before, overhang = turn.split(QUERY_CLOSE, 1) if QUERY_CLOSE in turn else (turn, "")
                opened = before.rfind(QUERY_OPEN)
                q = (before[opened + len(QUERY_OPEN) :] if opened >= 0 else before).strip()
                if len(d.queries) >= self.max_queries:
                    d.limit_refused += 1
                    d.ids += self.env.response_ids(CALL_LIMIT_TEXT, overhang)
                elif self._grant(d.request):
                    asking.append((d, q, overhang))
                else:  # over budget: the device reads what it reads at its call limit in training, and goes on
                    d.budget_refused += 1
                    d.ids += self.env.response_ids(CALL_LIMIT_TEXT, overhang)
            if asking:
                problems = [query_problem(q) for _, q, _ in asking]
                error = None
                try:
                    replies = self.cloud.answer_many(problems)
                except CloudError as e:  # what arrived is in the cache; the rest goes on without an answer
                    error = str(e)
                    replies = self.cloud.lookup(problems) if hasattr(self.cloud, "lookup") else [None] * len(problems)
                    log.warning("cloud failed for %d queries: %s", sum(r is None for r in replies), e)
                for (d, q, overhang), rep in zip(asking, replies):
                    if rep is None:
                        self._refund(d.request)
                        d.cloud_error = d.cloud_error or error
                        d.ids += self.env.response_ids(CLOUD_UNAVAILABLE_TEXT, overhang)
                        continue
                    d.queries.append(q)
                    d.cloud_prompt_tokens += rep.prompt_tokens
                    d.cloud_completion_tokens += rep.completion_tokens
                    d.ids += self.env.response_ids(rep.text, overhang)
            active = [d for d in active if not d.done]

    def finish(self, draft: Draft) -> Answer:
        """The answer to a drafted request: the device's, or the cloud's when the device escalated and the budget
        grants the call.  Calls the cloud (it may block): the server runs it outside the device's batch."""
        req = draft.request
        text = self.tokenizer.decode(draft.ids, skip_special_tokens=True)
        wants, own = split_escalation(text)
        own_answer = extract_answer(device_text(own) if self.mode == "query" else own)
        a = Answer(
            question=req.question,
            text=text,
            answer=own_answer,
            answered_by=DEVICE,
            device_text=text,
            escalated=wants,
            cloud_calls=len(draft.queries),
            queries=list(draft.queries),
            refused_calls=draft.budget_refused,
            cloud_error=draft.cloud_error,
            finish_reason="length" if draft.reason == "length" else "stop",
            device_prompt_tokens=len(draft.prompt_ids),
            device_completion_tokens=draft.device_tokens,
            cloud_prompt_tokens=draft.cloud_prompt_tokens,
            cloud_completion_tokens=draft.cloud_completion_tokens,
            request_index=req.seq,
        )
        if wants:
            if self._grant(req):
                try:
                    reply = self.cloud.answer_many([served_problem(req.question)])[0]
                except CloudError as e:
                    self._refund(req)
                    a.cloud_error = str(e)
                    log.warning("cloud failed for an escalated request; the device's answer is returned: %s", e)
                else:
                    a.text, a.cloud_text, a.answered_by, a.finish_reason = reply.text, reply.text, CLOUD, "stop"
                    a.answer = extract_answer(reply.text)
                    a.cloud_calls += 1
                    a.cloud_prompt_tokens += reply.prompt_tokens
                    a.cloud_completion_tokens += reply.completion_tokens
                    return a
            else:
                a.refused_calls += 1
        if a.cloud_error is not None:
            a.answered_by = CLOUD_ERROR
        elif a.refused_calls:
            a.answered_by = OVER_BUDGET
        return a

    def info(self) -> dict:
        """What is served: mode, template, model name, budget state."""
        return {
            "model": self.name,
            "mode": self.mode,
            "template": self.env.template,
            "cloud": getattr(getattr(self.cloud, "backend", None), "name", type(self.cloud).__name__),
            "max_new_tokens": self.max_new_tokens,
            "budget": self.budget.state() if self.budget is not None else None,
        }

    def close_cloud(self) -> None:
        if hasattr(self.cloud, "close"):
            self.cloud.close()
