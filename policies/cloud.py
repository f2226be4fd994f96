"""Cloud backends and the persistent cache of their answers.

    cloud = make_cloud(cfg.cloud, cache_path="outputs/run/cloud_cache.sqlite")
    text = cloud.answer(problem)        # at most one real call per (model, messages, sampling), ever
    cloud.usage()   # {'calls': .., 'cache_hits': .., 'prompt_tokens': .., 'completion_tokens': .., ...}

Every backend has ``name``, ``answer_many(problems) -> list[CloudReply]`` and
``cache_key(problem) -> str``; ``cloud.backend`` picks one:

* ``SimulatedCloud`` (``simulated``): seeded, accuracy configurable overall and per
  difficulty level.  Whether it solves a problem is a fixed draw from (seed, problem
  uid), so repeated and resumed runs see the same cloud.  A correct answer is the gold
  in ``\\boxed{}``; a wrong one is a plausible wrong number.
* ``HFCloud`` (``hf``): a local transformers model (loaded on first use).
* ``OpenAICloud`` (``openai``): any OpenAI-compatible ``/v1/chat/completions`` server
  (vLLM, llama.cpp, a hosted API) over ``httpx``: per-request timeout, bounded
  concurrency, retries with exponential backoff and jitter on 429/5xx/timeouts/
  connection errors/malformed replies, ``Retry-After`` honoured, and a clear
  ``CloudError`` without retrying on 400/401/403/404.  The API key is read from the
  environment variable ``cloud.api_key_env`` and is never logged, cached or written.

``CachedCloud`` wraps a backend with an SQLite file (WAL mode, one row per answer,
committed as each answer arrives, safe for several processes) keyed by
``backend.cache_key(problem)``: a sha256 over the backend's identity (model, seed...),
the chat messages and the sampling parameters.  Training, evaluation and sweeps that
point at the same file never pay twice for the same request.

LSRP (``envs/lsrp/``): ``chat_problem(messages)`` carries a whole chat (a leader's or a judge's prompt);
every backend sends those messages as they are, and the cache keys them like any other request.

Query mode (``envs/query.py``): a free-text ``<query>`` is wrapped by ``query_problem(text)``
into a ``Problem`` whose question is the query and whose uid is a hash of it, so the same
cache and every backend serve it (``cloud.answer_queries(texts)``).  A real backend gets the
query as the user message under ``CLOUD_QUERY_SYSTEM``; the simulated cloud evaluates the
arithmetic it asks for (``policies/calculator.py``), always correctly.

Task tuning (``envs/augment.py``): ``augment_problem(prompt, source, k)`` asks for k Input/Response
pairs similar to a training example, under ``CLOUD_AUGMENT_SYSTEM``; a real backend writes them.  The
simulated cloud has no language model and knows no task: the task layer injects a ``simulator``
(envs/simulation.py: ``TaskSimulator``, via ``make_cloud(..., simulator=)``) that, for the arithmetic ladder
and Countdown, draws k new problems of the source's kind from the task generator and writes them in the same
Input/Response text, with the answer right as often as the cloud's accuracy says, and writes Countdown's
equation-style reply; without one (or for other tasks) augmentation gets nothing.  The simulator is not part
of the cache key.
"""

from __future__ import annotations

import email.utils
import hashlib
import inspect
import json
import logging
import os
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from core.problem import Problem
from policies.calculator import answer_query

log = logging.getLogger(__name__)


class CloudError(RuntimeError):
    """A cloud request that cannot succeed (bad key, wrong URL or model, retries exhausted)."""


class _NotSent(CloudError):
    """A request dropped or abandoned because another request of the batch failed for good: never the cause."""


class CloudConfigError(CloudError):
    """The cloud refuses every request until the configuration is fixed: HTTP 401/403/404 (the key, its access to the
    model, the URL or the model name).  Training stops on it, where a failure of single requests is only counted."""


@dataclass
class CloudReply:
    text: str
    prompt_tokens: int = 0  # prompt tokens the cloud read (cost accounting)
    completion_tokens: int = 0  # completion tokens the cloud produced (cost accounting)
    cached: bool = False  # served from the cache (disk, or asked before in this process)


# The cloud's system prompts, one per kind of request (a ``chat_problem`` brings its own messages).
CLOUD_SYSTEM = "You are an expert problem solver. Answer the problem; put the final answer in \\boxed{}."
# A <query> from the device mid-reasoning (query mode): a short, direct answer it can use.
CLOUD_QUERY_SYSTEM = (
    "A smaller model asks you a question in the middle of solving a problem. Answer it correctly and briefly: "
    "give the result, not a full solution."
)
# Cloud data augmentation for task tuning (envs/augment.py; CDCDA-PLM, seed 004 §3 "Data augmentation with server LLM")
CLOUD_AUGMENT_SYSTEM = "You write training data for a small model. Follow the requested format exactly."

QUERY_KIND = "query"
AUGMENT_KIND = "augment"
SIMULATED_QUERY_FAILURE = "I can only evaluate arithmetic expressions."


def query_problem(text: str) -> Problem:
    """A free-text sub-question as a Problem: question = the text, uid = a hash of it (keys the cache)."""
    text = text.strip()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
    return Problem(uid=f"query-{digest}", question=text, answer="", level=0, meta={"kind": QUERY_KIND})


def is_query(problem: Problem) -> bool:
    return problem.meta.get("kind") == QUERY_KIND


def augment_problem(prompt: str, source: Problem, k: int) -> Problem:
    """A data-augmentation request as a Problem: question = the augmentation prompt (it holds the source example),
    uid = a hash of it (keys the cache); the source problem rides along for the simulated cloud."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:24]
    meta = {"kind": AUGMENT_KIND, "k": k, "source_uid": source.uid, "source_meta": dict(source.meta)}
    return Problem(uid=f"augment-{digest}", question=prompt, answer="", level=source.level, meta=meta)


def is_augment(problem: Problem) -> bool:
    return problem.meta.get("kind") == AUGMENT_KIND


_SYSTEMS = {QUERY_KIND: CLOUD_QUERY_SYSTEM, AUGMENT_KIND: CLOUD_AUGMENT_SYSTEM}


def chat_problem(messages: list[dict], kind: str = "chat") -> Problem:
    """A whole chat as a Problem (LSRP's leader and judge prompts): uid = a hash of the messages (keys the cache)."""
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]
    return Problem(
        uid=f"{kind}-{digest}",
        question=messages[-1]["content"],
        answer="",
        level=0,
        meta={"kind": kind, "messages": messages},
    )


def cloud_messages(problem: Problem) -> list[dict]:
    """The chat the cloud sees: a ``chat_problem``'s own messages, else the system prompt of the request's kind
    (answer, ``<query>``, augmentation) and the bare question."""
    if "messages" in problem.meta:
        return problem.meta["messages"]
    system = _SYSTEMS.get(problem.meta.get("kind"), CLOUD_SYSTEM)
    return [{"role": "system", "content": system}, {"role": "user", "content": problem.question}]


def request_key(identity: dict, messages: list[dict], sampling: dict) -> str:
    """sha256 over canonical JSON of (backend identity, messages, sampling parameters)."""
    blob = json.dumps(
        {"backend": identity, "messages": messages, "sampling": sampling},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# Backends ----------------------------------------------------------------------------------------


class SimulatedCloud:
    """A seeded stand-in for a cloud LLM (see the module doc).  It knows no task: ``simulator`` (the task layer's,
    envs/simulation.py) writes the replies that depend on one (Countdown's equation, augmentation pairs); without
    it every problem gets the generic ``\\boxed{}`` answer and an augmentation request gets no pairs."""

    name = "simulated"

    def __init__(
        self, accuracy: float = 0.95, accuracy_per_level: dict | None = None, seed: int = 1234, simulator=None
    ):
        self.accuracy = accuracy
        self.accuracy_per_level = {int(k): float(v) for k, v in (accuracy_per_level or {}).items()}
        self.seed = seed
        self.simulator = simulator  # not part of the cache identity: it writes what the seeded draws decide

    def cache_key(self, problem: Problem) -> str:
        # The simulated answer is a function of the problem's uid and gold answer, so both are part
        # of its identity (a real model's answer depends on the messages alone).
        identity = {
            "name": "simulated",
            "seed": self.seed,
            "accuracy": self.accuracy,
            "accuracy_per_level": {str(k): v for k, v in sorted(self.accuracy_per_level.items())},
            "problem": {"uid": problem.uid, "answer": problem.answer},
        }
        return request_key(identity, cloud_messages(problem), {})

    def solves(self, problem: Problem) -> bool:
        acc = self.accuracy_per_level.get(problem.level, self.accuracy)
        h = hashlib.sha256(f"{self.seed}:{problem.uid}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < acc

    def wrong_answer(self, uid: str, answer: str) -> str:
        """A plausible wrong number for a problem the draw says it gets wrong."""
        rng = random.Random(f"{self.seed}:{uid}:wrong")
        try:
            return str(int(float(answer)) + rng.choice([-10, -2, -1, 1, 2, 10]))
        except ValueError:
            return "\\text{no answer}"

    def augment(self, p: Problem) -> str:
        """Offline augmentation: the simulator's Input/Response pairs for the source problem (none without one)."""
        return self.simulator.augment(self, p) if self.simulator is not None else ""

    def reply_text(self, p: Problem) -> str:
        """The answer to a task problem: the simulator's task-specific reply, else the gold (or a wrong number)
        in \\boxed{}."""
        text = self.simulator.reply(self, p) if self.simulator is not None else None
        if text is None:
            ans = p.answer if self.solves(p) else self.wrong_answer(p.uid, p.answer)
            text = f"Working it out carefully, the answer is \\boxed{{{ans}}}."
        return text

    def answer_many(self, problems: list[Problem]) -> list[CloudReply]:
        replies = []
        for p in problems:
            if is_augment(p):
                text = self.augment(p)
            elif is_query(p):  # a <query> mid-reasoning: evaluate its arithmetic, honestly
                text = answer_query(p.question) or SIMULATED_QUERY_FAILURE
            else:
                text = self.reply_text(p)
            prompt_words = sum(len(m["content"].split()) for m in cloud_messages(p))
            replies.append(CloudReply(text=text, prompt_tokens=prompt_words, completion_tokens=len(text.split())))
        return replies


class HFCloud:
    """A local transformers model as the cloud (batched; greedy unless temperature > 0). Loaded on first use."""

    name = "hf"

    def __init__(self, model_path: str, max_new_tokens: int = 256, template: str = "math", temperature: float = 0.0):
        self.model_path, self.max_new_tokens, self.temperature = model_path, max_new_tokens, temperature
        self.tokenizer = self.model = self.generator = None

    def cache_key(self, problem: Problem) -> str:
        sampling = {"temperature": self.temperature, "max_tokens": self.max_new_tokens}
        return request_key({"name": "hf", "model": self.model_path}, cloud_messages(problem), sampling)

    def _load(self):
        from transformers import AutoModelForCausalLM

        from policies.device import load_tokenizer, resolve_model_path
        from policies.generation import HFGenerator

        path = resolve_model_path(self.model_path)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForCausalLM.from_pretrained(path)
        # min_shared_prefix=0: one left-padded batch for prompts of different lengths (the shared-head path
        # batches equal lengths only, which runs free-text prompts such as LSRP's one by one); greedy outputs match
        self.generator = HFGenerator(self.model, self.tokenizer, min_shared_prefix=0)

    def answer_many(self, problems: list[Problem]) -> list[CloudReply]:
        from policies.generation import chat_prompt

        if self.generator is None:
            self._load()
        prompts = [chat_prompt(self.tokenizer, cloud_messages(p)) for p in problems]
        out = self.generator.generate(prompts, n=1, temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        return [
            CloudReply(text=g[0].text, prompt_tokens=len(g[0].prompt_ids), completion_tokens=len(g[0].completion_ids))
            for g in out
        ]


class _Retryable(Exception):
    def __init__(self, cause: str, retry_after: float | None = None):
        super().__init__(cause)
        self.cause, self.retry_after = cause, retry_after


RETRYABLE_STATUS = {408, 409, 425, 429}  # plus every 5xx
RETRY_AFTER_MAX_S = 600.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


REFUSED_RETRIES = 2  # nothing listens on the port: a server that is down stays down for a while; fail fast


class OpenAICloud:
    """An OpenAI-compatible chat-completions server (vLLM, llama.cpp server, hosted APIs) as the cloud."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        concurrency: int = 8,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
        deadline_s: float = 600.0,
    ):
        import httpx

        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
        self.concurrency = max(1, int(concurrency))
        self.temperature, self.max_new_tokens = float(temperature), int(max_new_tokens)
        self.deadline_s = float(deadline_s)
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if not key:
            log.info("cloud: $%s is not set; sending the placeholder key 'EMPTY' (fine for local servers)", api_key_env)
            key = "EMPTY"
        self._api_key = key  # never logged, never part of a cache key, never written
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            headers={"Authorization": f"Bearer {key}"},
        )
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests sent (retries included)
        self.retries = 0
        log.info(
            "cloud: OpenAI-compatible backend %s model=%s (timeout %.0fs, %d retries, concurrency %d)",
            self.url,
            model,
            self.timeout_s,
            self.max_retries,
            self.concurrency,
        )

    def __repr__(self) -> str:
        return f"OpenAICloud(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_new_tokens}

    def cache_key(self, problem: Problem) -> str:
        # base_url is deliberately left out: the same model behind another server gives the same answers.
        return request_key({"name": "openai", "model": self.model}, cloud_messages(problem), self.sampling())

    def close(self):
        self._client.close()

    # one request, with retries -------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key and self._api_key != "EMPTY" else text

    def _fatal(self, status: int, body: str) -> CloudError:
        where = f"{status} from {self.url}"
        if status == 401:
            fix = (
                f"the server rejected the API key. Set the API key in ${self.api_key_env} "
                "(cloud.api_key_env names the variable; the key itself never goes in a config)."
            )
        elif status == 403:
            fix = (
                f"the API key in ${self.api_key_env} has no access to model {self.model!r}. "
                "Check the key's permissions or cloud.model."
            )
        elif status == 404:
            fix = (
                f"check cloud.base_url (OpenAI-compatible servers usually serve under .../v1) and that the "
                f"server serves cloud.model={self.model!r}."
            )
        elif status == 400 or status == 422:
            fix = (
                f"the server refused the request; check cloud.model={self.model!r}, "
                f"cloud.max_new_tokens={self.max_new_tokens} and cloud.temperature={self.temperature}. "
                f"Server said: {self._scrub(body[:300])!r}"
            )
        else:
            fix = f"the server refused the request (not retried). Server said: {self._scrub(body[:300])!r}"
        kind = CloudConfigError if status in (401, 403, 404) else CloudError
        return kind(f"cloud request failed with HTTP {where}: {fix}")

    def _parse(self, response) -> CloudReply:
        try:
            data = response.json()
        except ValueError as e:
            raise _Retryable(f"malformed JSON in the reply ({e.__class__.__name__}: {str(e)[:80]})") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Retryable("reply has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise _Retryable(f"choices[0].message.content is {type(content).__name__}, not text")
        usage = data.get("usage") or {}
        try:
            pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (TypeError, ValueError, AttributeError):
            pt, ct = 0, 0
        return CloudReply(text=content, prompt_tokens=pt, completion_tokens=ct)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter before retry ``attempt`` (1-based): uniform in [d/2, d]."""
        d = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return d * (0.5 + 0.5 * random.random())

    def ask(self, problem: Problem, stop: threading.Event | None = None) -> CloudReply:
        """One reply, retried on 429/5xx, timeouts, connection errors and malformed replies (backoff with jitter,
        Retry-After honoured) within ``cloud.max_retries`` and the ``cloud.deadline_s`` of the whole request; a
        refused connection (nothing listening) is retried at most ``REFUSED_RETRIES`` times."""
        httpx = self._httpx
        body = {"model": self.model, "messages": cloud_messages(problem), **self.sampling()}
        attempts = 1 + self.max_retries
        last: _Retryable | None = None
        start, refused = time.monotonic(), 0
        for attempt in range(attempts):
            if attempt:
                delay = self._backoff(attempt)
                if last.retry_after is not None:
                    delay = max(delay, min(last.retry_after, RETRY_AFTER_MAX_S))
                if refused > REFUSED_RETRIES:
                    attempts = attempt
                    break
                if self.deadline_s and time.monotonic() - start + delay > self.deadline_s:
                    raise CloudError(
                        f"cloud request to {self.url} for problem {problem.uid} gave up: its next retry would pass "
                        f"cloud.deadline_s={self.deadline_s:g}s ({attempt} attempts; last cause: {last.cause})."
                    )
                log.debug(  # a failure that outlives its retries is reported once, by the caller (CloudError)
                    "cloud: %s for problem %s (attempt %d/%d); retrying in %.2fs%s",
                    last.cause,
                    problem.uid,
                    attempt,
                    attempts,
                    delay,
                    " (Retry-After)" if last.retry_after is not None else "",
                )
                if stop is not None and stop.wait(delay):
                    raise _NotSent(f"cloud request for problem {problem.uid} abandoned: another request failed")
                if stop is None:
                    time.sleep(delay)
            with self._lock:
                self.requests += 1
                self.retries += attempt > 0
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException as e:
                last = _Retryable(f"no reply within cloud.timeout_s={self.timeout_s:g}s ({type(e).__name__})")
                continue
            except httpx.TransportError as e:  # refused, reset, closed mid-reply, protocol errors
                refused += isinstance(e, httpx.ConnectError) and "refused" in str(e).lower()
                last = _Retryable(f"connection error to {self.url} ({type(e).__name__}: {self._scrub(str(e))[:120]})")
                continue
            status = response.status_code
            if 200 <= status < 300:
                try:
                    return self._parse(response)
                except _Retryable as e:
                    last = e
                    continue
            if status in RETRYABLE_STATUS or status >= 500:
                last = _Retryable(f"HTTP {status}", parse_retry_after(response.headers.get("retry-after")))
                continue
            raise self._fatal(status, response.text)
        raise CloudError(
            f"cloud request to {self.url} (model {self.model!r}) for problem {problem.uid} failed after "
            f"{attempts} attempts (cloud.max_retries={self.max_retries}); last cause: {last.cause}. "
            "Check the server, or raise cloud.max_retries / cloud.timeout_s."
        )

    def answer_many(self, problems: list[Problem], on_reply=None) -> list[CloudReply]:
        """Ask ``cloud.concurrency`` requests at a time; ``on_reply(i, reply)`` is called (in this thread)
        as each answer arrives.  On a permanent failure the requests not yet sent are dropped, those in
        flight finish (and are reported), then the first error is raised."""
        replies: list[CloudReply | None] = [None] * len(problems)
        if not problems:
            return []
        stop = threading.Event()
        error: BaseException | None = None
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(problems)), thread_name_prefix="cloud")
        try:

            def task(p):
                if stop.is_set():  # another request failed for good: do not send this one
                    raise _NotSent(f"cloud request for problem {p.uid} not sent: another request failed")
                try:
                    return self.ask(p, stop)
                except BaseException:
                    stop.set()
                    raise

            futures = {pool.submit(task, p): i for i, p in enumerate(problems)}
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                i = futures[fut]
                try:
                    reply = fut.result()
                except BaseException as e:  # noqa: BLE001 -- re-raised below, after the others are saved
                    if error is None:
                        stop.set()
                        for other in futures:
                            other.cancel()
                    if error is None or (isinstance(error, _NotSent) and not isinstance(e, _NotSent)):
                        error = e  # raise the failure itself, not a request dropped because of it
                    continue
                replies[i] = reply
                if on_reply is not None:
                    on_reply(i, reply)
        finally:
            stop.set()  # requests waiting to retry give up
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error
        return replies


# The cache ---------------------------------------------------------------------------------------


def _cache_paths(path: str | None) -> tuple[str | None, str | None]:
    """(sqlite file, legacy JSON-lines file or None) for a configured cache path."""
    if not path:
        return None, None
    if path.endswith(".jsonl"):
        return path[: -len(".jsonl")] + ".sqlite", path
    stem = path[: -len(".sqlite")] if path.endswith(".sqlite") else path
    legacy = stem + ".jsonl"
    return path, legacy if os.path.exists(legacy) else None


_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, backend TEXT NOT NULL, model TEXT, uid TEXT, text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, created_at REAL
)"""


def _set_wal(db: sqlite3.Connection, wait_s: float = 60.0) -> str:
    """Switch the file to WAL.  Two processes opening a new file at once (DDP ranks) can get SQLITE_BUSY here
    without sqlite's busy handler ever waiting, so the switch is retried until ``wait_s`` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class CachedCloud:
    """Any backend plus an SQLite answer cache keyed by ``backend.cache_key(problem)``.

    ``answer_many(problems) -> list[str]``; ``replies(problems) -> list[CloudReply]``;
    ``usage()`` counts this process's real calls, cache hits and tokens; ``len(cloud)`` is the
    number of answers in the cache file.  A ``.jsonl`` path (the old format, keyed by problem uid)
    is still read; new answers go to the ``.sqlite`` file beside it.
    """

    def __init__(self, backend, path: str | None):
        self.backend = backend
        self.path, self.legacy_path = _cache_paths(path)
        self.cache: dict[str, dict] = {}  # key -> row, for the answers this process has seen
        self._legacy: dict[str, dict] = {}
        self._usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            # autocommit (isolation_level=None): every INSERT is its own committed transaction
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            mode = _set_wal(self._db)
            if str(mode).lower() != "wal":
                log.warning(
                    "cloud cache %s: WAL journal unavailable (%s); concurrent writers will wait on each other",
                    self.path,
                    mode,
                )
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        if self.legacy_path and os.path.exists(self.legacy_path):
            self._read_legacy(self.legacy_path)

    def _read_legacy(self, path: str):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                    self._legacy[row["uid"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-write: that answer is simply asked again
        if self._legacy:
            log.info(
                "cloud cache: read %d answers from the legacy file %s; new answers go to %s",
                len(self._legacy),
                path,
                self.path,
            )

    # compatibility with the old attributes
    @property
    def calls(self) -> int:
        return self._usage["calls"]

    @property
    def tokens(self) -> int:
        return self._usage["completion_tokens"]

    def usage(self) -> dict:
        """Real backend calls this process made, cache hits, and the tokens of those real calls."""
        out = dict(self._usage)
        for extra in ("requests", "retries"):  # HTTP backends: requests sent, retries among them
            if hasattr(self.backend, extra):
                out[extra] = getattr(self.backend, extra)
        return out

    def __bool__(self) -> bool:  # a cloud with an empty cache is still a cloud
        return True

    def __len__(self) -> int:
        if self._db is None:
            return len(self.cache)
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def _lookup(self, wanted: dict[str, Problem]):
        """Fill ``self.cache`` for the keys in ``wanted`` that the file (or the legacy file) holds."""
        todo = [k for k in wanted if k not in self.cache]
        if self._db is not None and todo:
            with self._lock:
                for s in range(0, len(todo), 500):
                    chunk = todo[s : s + 500]
                    rows = self._db.execute(
                        "SELECT key, text, prompt_tokens, completion_tokens FROM answers "
                        f"WHERE key IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                    for key, text, pt, ct in rows:
                        self.cache[key] = {"text": text, "prompt_tokens": pt, "completion_tokens": ct}
        if self._legacy:
            migrated = []
            for k in todo:
                row = self._legacy.get(wanted[k].uid)
                if k not in self.cache and row is not None and row.get("backend") == self.backend.name:
                    reply = CloudReply(row["text"], 0, int(row.get("tokens", 0) or 0))
                    self.cache[k] = {
                        "text": reply.text,
                        "prompt_tokens": 0,
                        "completion_tokens": reply.completion_tokens,
                    }
                    migrated.append((k, wanted[k], reply))
            self._write(migrated)

    def _write(self, items: list[tuple[str, Problem, CloudReply]]):
        if self._db is None or not items:
            return
        model = getattr(self.backend, "model_path", None) or getattr(self.backend, "model", None)  # hf / openai
        model = model if isinstance(model, str) else None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (k, self.backend.name, model, p.uid, r.text, r.prompt_tokens, r.completion_tokens, time.time())
                        for k, p, r in items
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _record(self, items: list[tuple[str, Problem, CloudReply]]):
        """Answers that just came from the backend: count them, keep them, commit them (one transaction)."""
        with self._lock:
            for key, _, reply in items:
                self.cache[key] = {
                    "text": reply.text,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                }
                self._usage["calls"] += 1
                self._usage["prompt_tokens"] += reply.prompt_tokens
                self._usage["completion_tokens"] += reply.completion_tokens
            self._write(items)

    def replies(self, problems: list[Problem]) -> list[CloudReply]:
        if not problems:
            return []
        t0, before = time.time(), dict(self._usage)
        keys = [self.backend.cache_key(p) for p in problems]
        wanted = dict(zip(keys, problems))
        self._lookup(wanted)
        missing = [(k, p) for k, p in wanted.items() if k not in self.cache]  # each request once, in order
        fresh: set[str] = set()
        if missing:

            def store(i: int, reply: CloudReply):  # an answer arrived: committed before the next one is awaited
                k, p = missing[i]
                if k not in fresh:
                    fresh.add(k)
                    self._record([(k, p, reply)])

            batch = [p for _, p in missing]
            try:
                if "on_reply" in inspect.signature(self.backend.answer_many).parameters:
                    out = self.backend.answer_many(batch, on_reply=store)
                else:
                    out = self.backend.answer_many(batch)
                if len(out) != len(batch):
                    raise CloudError(
                        f"cloud backend {self.backend.name} returned {len(out)} answers for {len(batch)} problems"
                    )
                rest = [(k, p, r) for (k, p), r in zip(missing, out) if k not in fresh]
                fresh.update(k for k, _, _ in rest)
                self._record(rest)  # a backend that answers all at once: one transaction
            except BaseException:
                self._log_batch(len(problems), before, t0, failed=True)
                raise
        out, first_seen = [], set()
        for k in keys:
            row = self.cache[k]
            new = k in fresh and k not in first_seen
            if new:
                first_seen.add(k)
            else:
                self._usage["cache_hits"] += 1
            out.append(CloudReply(row["text"], row["prompt_tokens"], row["completion_tokens"], cached=not new))
        self._log_batch(len(problems), before, t0)
        return out

    def _log_batch(self, asked: int, before: dict, t0: float, failed: bool = False):
        u = self._usage
        log.info(
            "cloud %s: %d asked%s, %d new answers in %.1fs (+%d prompt / +%d completion tokens), %d from the cache; "
            "this process so far: %d calls, %d cache hits, %d prompt + %d completion tokens (%s)",
            self.backend.name,
            asked,
            " (FAILED, answers received so far are kept)" if failed else "",
            u["calls"] - before["calls"],
            time.time() - t0,
            u["prompt_tokens"] - before["prompt_tokens"],
            u["completion_tokens"] - before["completion_tokens"],
            u["cache_hits"] - before["cache_hits"],
            u["calls"],
            u["cache_hits"],
            u["prompt_tokens"],
            u["completion_tokens"],
            f"cache {self.path}" if self.path else "no cache file",
        )

    def lookup(self, problems: list[Problem]) -> list[CloudReply | None]:
        """The cached reply of each problem, or None; never calls the backend.  After a ``CloudError`` the
        environments take what did arrive (answers are committed as they come) and mark only the rest as failed."""
        keys = [self.backend.cache_key(p) for p in problems]
        self._lookup(dict(zip(keys, problems)))
        out = []
        for k in keys:
            row = self.cache.get(k)
            out.append(
                None
                if row is None
                else CloudReply(row["text"], row["prompt_tokens"], row["completion_tokens"], cached=True)
            )
        return out

    def answer_many(self, problems: list[Problem]) -> list[str]:
        return [r.text for r in self.replies(problems)]

    def answer(self, problem: Problem) -> str:
        return self.answer_many([problem])[0]

    def answer_queries(self, texts: list[str]) -> list[CloudReply]:
        """Replies to free-text ``<query>`` questions (query mode), cached like any problem."""
        return self.replies([query_problem(t) for t in texts])

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
        if hasattr(self.backend, "close"):
            self.backend.close()


def make_backend(cfg, simulator=None):
    """The backend ``cloud.backend`` names, built from the ``cloud`` config section; ``simulator``: the task layer's
    replies for the simulated backend (envs/simulation.py: ``TaskSimulator``)."""
    if cfg.backend == "simulated":
        return SimulatedCloud(cfg.accuracy, cfg.accuracy_per_level, cfg.seed, simulator=simulator)
    if cfg.backend == "hf":
        return HFCloud(cfg.model, cfg.max_new_tokens, temperature=getattr(cfg, "temperature", 0.0))
    if cfg.backend == "openai":
        return OpenAICloud(
            base_url=cfg.base_url,
            model=cfg.model,
            api_key_env=cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
            concurrency=cfg.concurrency,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            deadline_s=cfg.deadline_s,
        )
    raise ValueError(f"cloud.backend={cfg.backend!r}: use simulated, hf or openai")


def make_cloud(cfg, cache_path: str | None, simulator=None) -> CachedCloud:
    """The cached backend of the ``cloud`` config section (the task layer's ``envs.simulation.task_cloud`` passes its
    ``simulator``)."""
    return CachedCloud(make_backend(cfg, simulator), cfg.cache_file or cache_path)
