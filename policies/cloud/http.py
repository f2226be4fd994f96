"""An OpenAI-compatible ``/v1/chat/completions`` server as the cloud (``cloud.backend=openai``), over ``httpx``.

    OpenAICloud("http://127.0.0.1:8011/v1", "smollm2-135m-instruct", concurrency=8).answer_many(problems)

Works with vLLM, llama.cpp's server or a hosted API: per-request timeout, bounded concurrency, retries with
exponential backoff and jitter on 429/5xx/timeouts/connection errors/malformed replies, ``Retry-After``
honoured, a total deadline per request, and a clear ``CloudError`` without retrying on 400/401/403/404
(``CloudConfigError`` for 401/403/404).  The API key is read from the environment variable
``cloud.api_key_env`` and is never logged, cached or written.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from core.problem import Problem
from policies.cloud.protocol import CloudConfigError, CloudError, CloudReply
from policies.cloud.requests import cloud_messages, request_key

log = logging.getLogger(__name__)


class _NotSent(CloudError):
    """A request dropped or abandoned because another request of the batch failed for good: never the cause."""


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
        fix = (  # nothing listening: more retries or a longer timeout would not help
            f"Nothing is listening at {self.url}: start the server, or point cloud.base_url at one that runs."
            if refused
            else "Check the server, or raise cloud.max_retries / cloud.timeout_s."
        )
        raise CloudError(
            f"cloud request to {self.url} (model {self.model!r}) for problem {problem.uid} failed after "
            f"{attempts} attempts (cloud.max_retries={self.max_retries}); last cause: {last.cause}. {fix}"
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
