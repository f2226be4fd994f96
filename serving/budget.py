"""The live cloud budget of a server: a sliding window over the last ``window`` requests.

    budget = SlidingBudget(0.3, window=100)        # route: at most 30 of any 100 consecutive requests reach the cloud
    budget = SlidingBudget(0.5, window=100)        # query: at most 50 cloud calls per 100 consecutive requests
    seq = budget.open()                            # a request arrives: its place in arrival order
    if budget.try_call(seq): ...                   # may it call the cloud now?  (False: over budget)
    budget.refund(seq)                             # the call failed (a cloud error costs nothing)
    budget.close(seq)                              # the request is answered

Requests are numbered in arrival order.  A call for request ``s`` is granted only if, with it, every window of
``window`` consecutive requests that holds ``s`` has at most ``cap = floor(budget * window)`` calls.  Each grant
checks every window that it changes, under one lock, so the invariant holds at every moment and for any
interleaving of concurrent requests: in every ``window`` consecutive arrivals, at most ``cap`` calls (route: at most
``cap`` of them reach the cloud).  Requests that have not arrived yet count as making no call, so right after a
start the first ``cap`` escalations are all granted.

route mode: ``budget`` is the share of requests that may reach the cloud, in [0, 1] (rl.budget's meaning); query
mode: the mean number of cloud calls per request (queries + escalation), any number >= 0.
"""

from __future__ import annotations

import math
import threading


class SlidingBudget:
    """See the module docstring.  Thread-safe."""

    def __init__(self, budget: float, window: int = 100):
        if not (budget >= 0 and math.isfinite(budget)):
            raise ValueError(f"budget={budget!r}: give a finite number >= 0 (e.g. --budget 0.3)")
        if int(window) < 1:
            raise ValueError(
                f"budget window={window!r}: give a whole number of requests >= 1 (e.g. --budget-window 100)"
            )
        self.budget, self.window = float(budget), int(window)
        self.cap = math.floor(self.budget * self.window + 1e-9)  # 0.3 * 10 is 3.0000000000000004; 0.29 * 100 28.99..
        self._lock = threading.Lock()
        self._next = 0
        self._calls: dict[int, int] = {}  # seq -> calls granted, for the requests that may still matter
        self._open: set[int] = set()
        self.granted = self.refused = 0

    def open(self) -> int:
        """Register an arriving request; returns its sequence number."""
        with self._lock:
            seq = self._next
            self._next += 1
            self._open.add(seq)
            return seq

    def close(self, seq: int) -> None:
        """The request is answered: it makes no more calls (its calls keep counting in their windows)."""
        with self._lock:
            self._open.discard(seq)
            self._prune()

    def _prune(self) -> None:
        # a window that can still change holds an open request or a future one: nothing older than the oldest
        # open request (or the next arrival) minus the window matters any more
        # (and ``recent_calls`` reads the last window of arrivals)
        oldest = min(min(self._open, default=self._next) - self.window + 1, self._next - self.window)
        for s in [s for s in self._calls if s < oldest]:
            del self._calls[s]

    def _window_sums(self, seq: int) -> list[int]:
        """Calls in each window [a, a + window - 1] that holds ``seq``."""
        w = self.window
        counts = [self._calls.get(s, 0) for s in range(seq - w + 1, seq + w)]
        sums, run = [], sum(counts[:w])
        sums.append(run)
        for i in range(1, w):
            run += counts[i + w - 1] - counts[i - 1]
            sums.append(run)
        return sums

    def try_call(self, seq: int) -> bool:
        """Grant one cloud call to request ``seq`` if every window holding it stays within the cap."""
        with self._lock:
            if self.cap > 0 and max(self._window_sums(seq)) < self.cap:
                self._calls[seq] = self._calls.get(seq, 0) + 1
                self.granted += 1
                return True
            self.refused += 1
            return False

    def refund(self, seq: int) -> None:
        """Give back a granted call that did not happen (the cloud failed)."""
        with self._lock:
            if self._calls.get(seq, 0) > 0:
                self._calls[seq] -= 1
                self.granted -= 1

    def recent_calls(self) -> int:
        """Calls granted to the last ``window`` arrivals (the budget's current use)."""
        with self._lock:
            return sum(self._calls.get(s, 0) for s in range(self._next - self.window, self._next))

    def state(self) -> dict:
        """Budget, window, cap, the last window's calls and its share, grants and refusals so far."""
        used = self.recent_calls()
        return {
            "budget": self.budget,
            "window": self.window,
            "cap": self.cap,
            "window_calls": used,
            "window_usage": used / self.window,
            "granted": self.granted,
            "refused": self.refused,
        }
