"""The cloud off the request path: its own bounded pool of threads, one call per question in flight, a deadline.

    cloud = ServingCloud(CachedCloud(backend, "cache.sqlite"), workers=8, max_pending=64, timeout_s=30)
    fut = cloud.submit([problem])[0]             # a concurrent Future of the CloudReply; never blocks
    cloud.answer_many(problems)                  # blocking, at most timeout_s, then CloudTimeout
    cloud.state()                                # {"state": "ready" | "degraded", "in_flight": .., ...}

A cloud call runs on this class's own ``workers`` threads, never on the server's (the pool that reads requests,
checks keys and tokenises), so a slow or frozen cloud holds only these threads: auth, ``/v1/models`` and the
requests the device answers alone go on.  At most ``max_pending`` questions are in flight or queued; past that a
new question fails at once with ``CloudBusy`` (the device answers it), so the queue cannot grow without bound.

In-flight coalescing: requests for the same question (the same ``backend.cache_key``) share one call while it is in
flight; a question already in the cache file is answered from it at once, without a thread.  This lives here, not
in ``CachedCloud`` (policies/cloud/cache.py): the cache is the synchronous, single-caller store that training and
evaluation share across processes; waiting on another thread's call, deadlines and a bounded pool are the server's
concerns.  A call whose waiter gave up (``timeout_s``) stays in flight: its answer still lands in the cache, and a
retry of the same question joins it rather than paying for the question again.

OpenAI-compatible APIs take no idempotency key on ``/chat/completions``: a request the client abandoned (a timeout)
may still be answered and billed by the server, and sending it again is a second, billed request.  The protocol
gives no way to tell the two apart, so the only defence is on this side: do not send a question again while its
call is in flight (coalescing), keep the late answer (the cache), and bound the backend's own retries on a read
timeout (``cloud.timeout_s``, ``cloud.max_retries``: each retried timeout may be paid twice).

``state()``: ``degraded`` while the last outcome was a failure or a timeout, or a call has been in flight longer than
``timeout_s`` (a frozen cloud); ``ready`` again after the next answer.  ``/health`` reports it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from core.problem import Problem
from policies.cloud import CloudError, CloudReply

log = logging.getLogger(__name__)


class CloudTimeout(CloudError):
    """The cloud did not answer within the serving deadline (``--cloud-timeout``); the call goes on in the
    background and its answer is cached."""


class CloudBusy(CloudError):
    """Too many questions already in flight to the cloud (``max_pending``): refused at once."""


class ServingCloud:
    """A ``CachedCloud`` for a server; see the module docstring.  ``timeout_s``: None or 0 = wait as long as the
    backend does (its ``cloud.deadline_s``)."""

    def __init__(self, cached, workers: int = 8, max_pending: int = 64, timeout_s: float | None = 30.0):
        if int(workers) < 1 or int(max_pending) < 1:
            raise ValueError(f"workers={workers}, max_pending={max_pending}: give at least 1 of each")
        if timeout_s is not None and not timeout_s >= 0:
            raise ValueError(f"cloud timeout {timeout_s!r}: give seconds >= 0 (0: no serving deadline)")
        self.cached, self.backend = cached, cached.backend
        self.workers, self.max_pending, self.timeout_s = int(workers), int(max_pending), timeout_s or None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[Future, float]] = {}  # cache key -> (its future, when it was sent)
        self._local = threading.local()
        self.last_success = self.last_failure = None  # time.monotonic() of the last answer / failure or timeout
        self.sent = self.coalesced = self.failures = self.timeouts = self.busy = 0

    # ------------------------------------------------------------------ the calls

    def submit(self, problems: list[Problem]) -> list[Future]:
        """One future per problem, never blocking: a cached answer (done at once), the call already in flight for
        the same question, or a new call on the pool (``CloudBusy`` in the future when ``max_pending`` are out)."""
        keys = [self.backend.cache_key(p) for p in problems]
        hits = self.cached.lookup(problems)
        futures, new = [], []
        with self._lock:
            for k, p, hit in zip(keys, problems, hits):
                if k in self._inflight:
                    self.coalesced += 1
                    futures.append(self._inflight[k][0])
                    continue
                f: Future = Future()
                if hit is not None:  # in the cache: no thread, no wait (counted as a hit by the cache)
                    f.set_result(self.cached.answer_many([p])[0])
                elif len(self._inflight) >= self.max_pending:
                    self.busy += 1
                    f.set_exception(CloudBusy(f"{len(self._inflight)} questions are already in flight to the cloud"))
                else:
                    self._inflight[k] = (f, time.monotonic())
                    new.append((k, p, f))
                futures.append(f)
            if new:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cloud")
                self.sent += len(new)
                self._pool.submit(self._call, new)
        return futures

    def _call(self, items: list[tuple[str, Problem, Future]]) -> None:
        try:
            replies = self.cached.answer_many([p for _, p, _ in items])
        except BaseException as e:  # noqa: BLE001 -- handed to the waiters; what did arrive is in the cache
            got = self.cached.lookup([p for _, p, _ in items])
            self.last_failure = time.monotonic()
            self.failures += 1
            self._settle([(k, f, r, e) for (k, _, f), r in zip(items, got)])
        else:
            self.last_success = time.monotonic()
            self._settle([(k, f, r, None) for (k, _, f), r in zip(items, replies)])

    def _settle(self, outcomes) -> None:
        with self._lock:
            for k, _, _, _ in outcomes:
                self._inflight.pop(k, None)
        for _, f, reply, error in outcomes:
            if reply is not None:
                f.set_result(reply)
            else:
                f.set_exception(
                    error if isinstance(error, CloudError) else CloudError(f"{type(error).__name__}: {error}")
                )

    def answer_many(self, problems: list[Problem]) -> list[CloudReply]:
        """``CachedCloud.answer_many`` within ``timeout_s`` (the query mode's turn loop calls it): ``CloudTimeout``
        past it, ``CloudBusy``/``CloudError`` as the calls fail.  ``timed_out()`` then says which, in this thread."""
        self._local.timed_out = False
        futures = self.submit(problems)
        done, pending = wait_futures(futures, timeout=self.timeout_s)
        if pending:
            self.note_timeout()
            self._local.timed_out = True
            raise CloudTimeout(f"the cloud did not answer within the serving deadline of {self.timeout_s:g}s")
        return [f.result() for f in futures]

    def timed_out(self) -> bool:
        """Did this thread's last ``answer_many`` pass the deadline (its calls may still be answered, and paid)?"""
        return getattr(self._local, "timed_out", False)

    def note_timeout(self) -> None:
        self.last_failure = time.monotonic()
        self.timeouts += 1

    def lookup(self, problems: list[Problem]) -> list[CloudReply | None]:
        return self.cached.lookup(problems)

    def usage(self) -> dict:
        return self.cached.usage()

    # ------------------------------------------------------------------ health

    def state(self) -> dict:
        """``ready`` or ``degraded`` (see the module docstring), with the counts behind it."""
        now = time.monotonic()
        with self._lock:
            oldest = min((t for _, t in self._inflight.values()), default=None)
            in_flight = len(self._inflight)
        stuck = oldest is not None and self.timeout_s is not None and now - oldest > self.timeout_s
        failed_last = self.last_failure is not None and (
            self.last_success is None or self.last_failure > self.last_success
        )
        return {
            "state": "degraded" if stuck or failed_last else "ready",
            "in_flight": in_flight,
            "oldest_in_flight_s": None if oldest is None else round(now - oldest, 3),
            "timeout_s": self.timeout_s,
            "sent": self.sent,
            "coalesced": self.coalesced,
            "failures": self.failures,
            "timeouts": self.timeouts,
            "busy": self.busy,
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.cached.close()
