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

By score (route mode, ``calibration=`` a JSONL of questions, serve.py ``--calibration``): the policy escalates when
its escalation score (policies/escalation_score.py: P(``<unknown>`` | prompt + its own greedy text), computed with
the device model under the device lock) exceeds ``threshold``, picked on the calibration questions to send the
budget's share of them to the cloud (``calibrate``); the budget still caps the calls.  One trained policy serves
any budget.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace

from transformers import LogitsProcessorList

from core.io import find_run_config
from core.problem import Problem
from envs.base import env_class_for
from envs.format import split_escalation
from envs.prompts import ESCALATION
from envs.query import QUERY_CLOSE, QueryRow, device_text, run_query_turns
from envs.suites import QUESTION_FIELDS, get_field, read_jsonl_rows
from policies.calculator import answer_query
from policies.escalation_score import escalation_opening, escalation_scores, threshold_for_budget
from policies.generation import HFGenerator
from rewards.math_grader import extract_answer, last_boxed
from serving.budget import SlidingBudget
from serving.cloud import CloudBusy, CloudTimeout, ServingCloud
from serving.streaming import StreamingGenerator, takes_on_token

log = logging.getLogger(__name__)

DEVICE, CLOUD, OVER_BUDGET, CLOUD_ERROR = "device", "cloud", "device-over-budget", "device-cloud-error"
ANSWERED_BY = (DEVICE, CLOUD, OVER_BUDGET, CLOUD_ERROR)
ESCALATION_TAG = "<unknown>"
NO_ANSWER_TEXT = "I could not answer this question."  # the last resort when even the second pass writes only the tag


class BanTokens:
    """A logits processor that bans ``token_ids`` (their logits to -inf): the second pass bans the first token of the
    escalation tag, so the device answers on its own.  ``logit_bias``: the same ban for an OpenAI-compatible device
    server (serving/remote.py sends it as the request's ``logit_bias``)."""

    def __init__(self, token_ids):
        self.token_ids = sorted(set(int(t) for t in token_ids))
        self.logit_bias = {t: -100 for t in self.token_ids}

    def __call__(self, input_ids, scores):
        scores[:, self.token_ids] = float("-inf")
        return scores


def escalation_token_ids(tokenizer) -> list[int]:
    """The first token of the escalation tag as the device can write it (alone or after a space): the token that
    starts ``<unknown>``."""
    out = set()
    for text in (ESCALATION_TAG, " " + ESCALATION_TAG):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids and "<" in tokenizer.decode(ids[:1]):
            out.add(ids[0])
    return sorted(out)


class PolicyLoadError(ValueError):
    """The policy cannot be loaded as asked; the message says what to pass instead."""


class PromptTooLong(ValueError):
    """A question whose training prompt, plus the room its generation needs, does not fit the device model's context.
    Refused before it joins a batch: one such row would make the whole batch allocate for its length."""


RESPONSE_TAG_TOKENS = 16  # room kept per inserted query-mode response for its <response></response> tags


def context_tokens_of(generator) -> int | None:
    """The device model's context in tokens: ``generator.context_tokens`` when it says (a remote device), else the
    transformers config's ``max_position_embeddings``; None when unknown (no check)."""
    n = getattr(generator, "context_tokens", None)
    if n is None:
        n = getattr(getattr(getattr(generator, "model", None), "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


@dataclass
class Request:
    """One question for the device: its sampling and its place in the budget's arrival order (``seq``)."""

    question: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seq: int | None = None  # SlidingBudget.open(); None = no budget
    suppress_escalation: bool = False  # the second, greedy pass: the <unknown> tag banned, no cloud calls
    stream: object = field(default=None, repr=False, compare=False)  # serving/streaming.py DeviceStream, or None


@dataclass
class Draft(QueryRow):
    """The device's response to a ``Request``, generated by the query mode's turn loop (envs/query.py:
    ``run_query_turns``; in route mode one turn): in query mode with the cloud's replies to its queries inside.
    ``refused`` counts queries past rl.max_queries ("call limit reached", as in training), ``budget_refused`` those
    refused because the budget was spent."""

    request: Request | None = None
    escalation_score: float | None = None  # P(<unknown> | prompt + own text), when the policy has a threshold

    @property
    def reason(self) -> str:
        """Why the device stopped: eos or length."""
        return "length" if self.truncated else "eos"


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
    escalation_suppressed: bool = False  # the device escalated, the cloud did not answer: ``text`` is its own answer
    cloud_error_kind: str | None = None  # timeout (the serving deadline), busy (too many in flight), failed
    awaiting_cloud: bool = False  # granted a cloud call that ``resolve`` has not settled yet

    @property
    def needs_own_answer(self) -> bool:
        """The device wrote the escalation tag and the cloud did not answer (over budget, a cloud failure, or a score
        under the threshold when serving by score): it must answer with the escalation suppressed."""
        return self.escalated and not self.escalation_suppressed and self.answered_by != CLOUD

    escalation_score: float | None = None  # P(<unknown> | prompt + own text) when serving by score


def reply_answer(text: str, reason: str) -> str | None:
    """The answer a reply states: its last ``\\boxed{}`` (then "the answer is", then the last number); a reply cut off
    at its token limit (``reason`` length) states only a ``\\boxed{}``, never a number it was still working with."""
    return last_boxed(text) if reason == "length" else extract_answer(text)


def served_problem(question: str) -> Problem:
    """A user's question as a Problem: uid = a hash of it (it keys the cloud cache).  There is no gold; the simulated
    cloud answers with the calculator's value of the arithmetic in it (right as often as cloud.accuracy says), a real
    cloud ignores it."""
    digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:24]
    return Problem(uid=f"serve-{digest}", question=question, answer=answer_query(question) or "", level=0)


def calibration_questions(path: str) -> list[str]:
    """The questions of a calibration file: a JSONL of objects with a question field (problem, question, prompt,
    input, query) or of bare strings."""
    out = []
    for lineno, row in read_jsonl_rows(path):
        q = (
            row
            if isinstance(row, str)
            else next((get_field(row, f) for f in QUESTION_FIELDS if get_field(row, f)), None)
        )
        if not isinstance(q, str) or not q.strip():
            raise PolicyLoadError(f"{path}:{lineno}: no question (a string, or a {'/'.join(QUESTION_FIELDS)} field)")
        out.append(q)
    if not out:
        raise PolicyLoadError(f"{path}: no questions")
    return out


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
    script the device with it).  ``threshold``: escalate by score (route mode; see ``calibrate``), None = by the
    device's tag."""

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
        cloud_timeout_s: float | None = 30.0,
        cloud_workers: int = 8,
        cloud_max_pending: int = 64,
        threshold: float | None = None,
    ):
        if not isinstance(cloud, ServingCloud):  # the cloud off the request path (serving/cloud.py)
            cloud = ServingCloud(cloud, cloud_workers, cloud_max_pending, cloud_timeout_s)
        env.cloud = cloud  # query-mode queries go through it too (deadline, coalescing)
        self.env, self.generator, self.cloud, self.budget = env, generator, cloud, budget
        self.threshold = threshold
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
        self.context_tokens = context_tokens_of(generator)
        self.ban_escalation = BanTokens(escalation_token_ids(self.tokenizer))

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
        cloud_timeout_s: float | None = 30.0,
        calibration: str | None = None,
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
        tokenizer and config; serving/remote.py); ``device_model``: its model name there.  ``cloud_timeout_s``: the
        serving deadline of a cloud call (serving/cloud.py), after which the device answers; None: no deadline.
        ``calibration``: a JSONL of questions; the policy then escalates by score, at the threshold that sends
        ``budget`` of them to the cloud (route mode, local device model)."""
        from policies.device import load_device_model, load_tokenizer, resolve_model_path
        from settings import ConfigError, load_config

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
        if calibration and (cfg.rl.env != "route" or device_url or b < 0):
            raise PolicyLoadError(
                "--calibration picks a score threshold for the budget: route mode, a local device model (no "
                "--device-url) and a budget in [0, 1]"
            )
        policy = cls(
            env,
            generator,
            cloud,
            SlidingBudget(b, budget_window) if b >= 0 else None,
            max_new_tokens=max_new_tokens or cfg.train.eval_max_new_tokens,
            max_queries=cfg.rl.max_queries,
            max_response_tokens=cfg.rl.max_response_tokens,
            name=name or default_name(mcfg.name_or_path),
            cloud_timeout_s=cloud_timeout_s,
        )
        if calibration:
            t = policy.calibrate(calibration_questions(calibration), b)
            log.info("escalating by score: threshold %.4g sends %.0f%% of %s to the cloud", t, 100 * b, calibration)
        return policy

    def calibrate(self, questions: list[str], budget: float) -> float:
        """Set ``threshold`` to the one that escalates a ``budget`` share of ``questions`` (greedy answers, their
        scores: ``threshold_for_budget``); returns it.  The questions take no place in the live budget."""
        self.threshold = None
        drafts = self.draft_many([Request(q, self.max_new_tokens) for q in questions])
        self.threshold = threshold_for_budget(self._scores(drafts), budget)
        return self.threshold

    def _scores(self, drafts: list[Draft]) -> list[float]:
        """The drafts' escalation scores, with the device model (call it holding the device lock or before serving)."""
        texts = [split_escalation(self.tokenizer.decode(d.ids, skip_special_tokens=True))[1] for d in drafts]
        prompts = [self.env.prompt(served_problem(d.request.question)) for d in drafts]
        batch = getattr(self.generator, "batch_size", 32)
        return escalation_scores(
            self.generator.model, self.tokenizer, prompts, texts, escalation_opening(ESCALATION), batch
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
        """Answer every question: one batched device pass, the escalations within the budget, then one batched
        greedy pass with the escalation suppressed for those the cloud did not answer."""
        reqs = [self.request(q, max_new_tokens, temperature, top_p) for q in questions]
        try:
            answers = [self.finish(d) for d in self.draft_many(reqs)]
            again = [(a, r) for a, r in zip(answers, reqs) if a.needs_own_answer]
            if again:
                for (a, _), d in zip(again, self.draft_many([self.suppressed(r) for _, r in again])):
                    self.apply_suppressed(a, d)
            return answers
        finally:
            for r in reqs:
                self.close(r)

    # ------------------------------------------------------------------ the pieces the server calls

    def request(self, question: str, max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0):
        """A ``Request`` registered with the budget (call ``close`` once it is answered)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty: send the problem as the last user message")
        max_new_tokens = max_new_tokens or self.max_new_tokens
        self.check_fits(question, max_new_tokens)
        seq = self.budget.open() if self.budget is not None else None
        return Request(question, max_new_tokens, temperature, top_p, seq)

    def reserved_tokens(self, max_new_tokens: int) -> int:
        """Context a generation may fill after its prompt: the device's ``max_new_tokens`` and, in query mode, the
        cloud's inserted responses (``rl.max_queries`` of at most ``rl.max_response_tokens`` each, plus tags)."""
        if self.mode != "query":
            return max_new_tokens
        return max_new_tokens + self.max_queries * ((self.max_response_tokens or 256) + RESPONSE_TAG_TOKENS)

    def check_fits(self, question: str, max_new_tokens: int) -> int:
        """The prompt's length in tokens; ``PromptTooLong`` (naming the limit) when the prompt plus
        ``reserved_tokens`` would pass the device model's context."""
        ids = self.prompt_ids(question)
        if self.context_tokens is not None:
            room = self.context_tokens - self.reserved_tokens(max_new_tokens)
            if len(ids) > room:
                raise PromptTooLong(
                    f"the question takes {len(ids)} tokens in the device's prompt, over the limit of {room}: the "
                    f"model's context is {self.context_tokens} tokens and {self.context_tokens - room} are kept for "
                    "the answer. Send a shorter question (or a smaller max_tokens)."
                )
        return len(ids)

    def close(self, request: Request) -> None:
        if self.budget is not None and request.seq is not None:
            self.budget.close(request.seq)

    def prompt_ids(self, question: str) -> list[int]:
        """The training prompt of ``question``, tokenised."""
        ids = self._prompt_cache.get(question)
        if ids is None:
            ids = self.tokenizer(self.env.prompt(served_problem(question)), add_special_tokens=False)["input_ids"]
            if len(self._prompt_cache) < 4096 and (self.context_tokens is None or len(ids) <= self.context_tokens):
                self._prompt_cache[question] = ids
        return ids

    def _grant(self, request: Request) -> bool:
        return self.budget is None or self.budget.try_call(request.seq)

    def _refund(self, request: Request) -> None:
        if self.budget is not None and request.seq is not None:
            self.budget.refund(request.seq)

    def draft_many(self, requests: list[Request]) -> list[Draft]:
        """The device's responses, batched (requests with the same sampling share ``extend`` calls); in query mode
        with the cloud's replies to their queries, round by round (envs/query.py: ``run_query_turns``, the loop the
        training rollouts run)."""
        drafts = [
            Draft(
                self.prompt_ids(r.question),
                r.max_new_tokens,
                0 if r.suppress_escalation else self.max_queries,
                request=r,
            )
            for r in requests
        ]
        groups: dict[tuple, list[Draft]] = {}
        for d in drafts:
            r = d.request
            groups.setdefault((r.temperature, r.top_p, r.suppress_escalation), []).append(d)
        with self._device_lock:
            try:
                self._run_groups(groups)
            except Exception:  # the batch failed: give back the calls its answered queries were granted
                for d in drafts:
                    for _ in d.queries:
                        self._refund(d.request)
                raise
            if self.threshold is not None and drafts:
                for d, score in zip(drafts, self._scores(drafts)):
                    d.escalation_score = score
        for d in drafts:  # the last token (and a generator that does not stream tokens) reaches the stream
            if d.request.stream is not None:
                d.request.stream.update(d.ids)
        return drafts

    def _run_groups(self, groups: dict[tuple, list[Draft]]) -> None:
        for (temperature, top_p, suppress), group in groups.items():
            processors = list(self.logits_processor or []) + ([self.ban_escalation] if suppress else [])
            generator = self.generator
            if any(d.request.stream is not None for d in group) and takes_on_token(generator):
                generator = StreamingGenerator(generator, group)  # each token to its request's stream
            run_query_turns(
                self.env,
                generator,
                group,
                temperature,
                top_p,
                stop=QUERY_CLOSE if self.mode == "query" else None,
                grant=lambda d: self._grant(d.request),
                refund=self._refund_query,
                logits_processor=LogitsProcessorList(processors) if processors else None,
                config_errors_raise=False,
            )

    def _refund_query(self, draft: Draft) -> None:
        """A query the cloud did not answer gives its call back, unless it passed the deadline: that call goes on and
        may still be answered (and paid), so it keeps counting."""
        if not self.cloud.timed_out():
            self._refund(draft.request)

    def settle(self, draft: Draft) -> Answer:
        """The device's answer to a drafted request; when it escalated, the budget is asked: a granted call leaves
        ``awaiting_cloud`` set (``resolve`` settles it), a refused one marks it over budget.  Never calls the cloud."""
        req = draft.request
        text = self.tokenizer.decode(draft.ids, skip_special_tokens=True)
        tagged, own = split_escalation(text)
        wants = tagged if draft.escalation_score is None else draft.escalation_score > self.threshold
        own_answer = reply_answer(device_text(own) if self.mode == "query" else own, draft.reason)
        a = Answer(
            question=req.question,
            text=text,
            answer=own_answer,
            answered_by=DEVICE,
            device_text=text,
            escalated=tagged,
            cloud_calls=len(draft.queries),
            queries=list(draft.queries),
            refused_calls=draft.budget_refused,
            cloud_error=draft.cloud_error,
            cloud_error_kind=None if draft.cloud_error is None else "failed",
            finish_reason="length" if draft.reason == "length" else "stop",
            device_prompt_tokens=len(draft.prompt_ids),
            device_completion_tokens=draft.device_tokens,
            cloud_prompt_tokens=draft.cloud_prompt_tokens,
            cloud_completion_tokens=draft.cloud_completion_tokens,
            request_index=req.seq,
            escalation_score=draft.escalation_score,
        )
        if wants:
            if self._grant(req):
                a.awaiting_cloud = True
                return a
            a.refused_calls += 1
        self._label(a)
        return a

    def _label(self, a: Answer) -> None:
        if a.cloud_error is not None:
            a.answered_by = CLOUD_ERROR
        elif a.refused_calls:
            a.answered_by = OVER_BUDGET

    def ask_cloud(self, a: Answer):
        """The future of the cloud's reply to an escalated ``a`` (serving/cloud.py: never blocks)."""
        return self.cloud.submit([served_problem(a.question)])[0]

    def resolve(self, a: Answer, future) -> Answer:
        """Settle ``a``'s granted cloud call from ``future`` (done, or not: the deadline passed).  A failed call is
        given back to the budget; one past the deadline keeps counting (it may still be answered and paid) unless
        it fails later."""
        seq = a.request_index
        a.awaiting_cloud = False
        if not future.done():
            self.cloud.note_timeout()
            a.cloud_error = f"the cloud did not answer within the serving deadline of {self.cloud.timeout_s:g}s"
            a.cloud_error_kind = "timeout"
            future.add_done_callback(lambda f: f.exception() is not None and self._refund_seq(seq))
        elif future.exception() is not None:
            e = future.exception()
            self._refund_seq(seq)
            a.cloud_error = str(e)
            a.cloud_error_kind = (
                "busy" if isinstance(e, CloudBusy) else "timeout" if isinstance(e, CloudTimeout) else "failed"
            )
        else:
            reply = future.result()
            a.text, a.cloud_text, a.answered_by, a.finish_reason = reply.text, reply.text, CLOUD, "stop"
            a.answer = extract_answer(reply.text)
            a.cloud_calls += 1
            a.cloud_prompt_tokens += reply.prompt_tokens
            a.cloud_completion_tokens += reply.completion_tokens
            return a
        log.warning("cloud failed for an escalated request; the device answers: %s", a.cloud_error)
        self._label(a)
        return a

    def _refund_seq(self, seq: int | None) -> None:
        if self.budget is not None and seq is not None:
            self.budget.refund(seq)

    def finish(self, draft: Draft) -> Answer:
        """``settle``, then the cloud (waiting at most the serving deadline) when the device escalated and the
        budget grants the call.  Blocks on the cloud: the server awaits ``ask_cloud``'s future instead."""
        a = self.settle(draft)
        if a.awaiting_cloud:
            future = self.ask_cloud(a)
            wait_futures([future], timeout=self.cloud.timeout_s)
            self.resolve(a, future)
        return a

    def suppressed(self, request: Request) -> Request:
        """The second pass of ``request``: greedy, the escalation tag banned, no cloud calls, the same budget slot."""
        return replace(request, temperature=0.0, top_p=1.0, suppress_escalation=True, stream=None)

    def apply_suppressed(self, a: Answer, draft: Draft | None) -> Answer:
        """``a`` answered by the second pass's ``draft`` (None: it failed): its own answer, still labelled
        over budget or cloud error, with ``escalation_suppressed``.  The bare tag is never the reply: whatever
        the device wrote before it, else ``NO_ANSWER_TEXT``."""
        a.escalation_suppressed = True
        if draft is not None:
            text = self.tokenizer.decode(draft.ids, skip_special_tokens=True)
            a.device_completion_tokens += draft.device_tokens
            a.finish_reason = "length" if draft.reason == "length" else "stop"
        else:
            text = a.device_text
        wants, own = split_escalation(text)
        text = (own if wants else text).replace(ESCALATION_TAG, "").replace("</unknown>", "").strip() or NO_ANSWER_TEXT
        a.text = text
        reason = draft.reason if draft is not None else "eos"
        a.answer = reply_answer(device_text(text) if self.mode == "query" else text, reason)
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
            "escalation_threshold": self.threshold,
        }

    def cut_at_stop(self, a: Answer, stops: list[str]) -> Answer:
        """OpenAI's ``stop``: the reply ends before the first of ``stops`` it holds (finish_reason stop), and its
        answer is what is left.  Applied to the finished reply: the device still generates to its own end (its
        escalation decision reads the whole response), so stop strings save no device time."""
        cuts = [a.text.find(x) for x in stops if x and x in a.text]
        if cuts:
            a.text = a.text[: min(cuts)]
            a.finish_reason = "stop"
            a.answer = extract_answer(
                device_text(a.text) if self.mode == "query" and a.answered_by != CLOUD else a.text
            )
        return a

    def cloud_state(self) -> dict:
        """The cloud's state for ``/health`` (serving/cloud.py: ready or degraded)."""
        return self.cloud.state()

    def close_cloud(self) -> None:
        if hasattr(self.cloud, "close"):
            self.cloud.close()
