"""Prometheus metrics of the server (``GET /metrics``, the text format), on a registry of its own.

    curl -s localhost:8000/metrics | grep cloudroute_

Counters: requests by who answered (``answered_by``) and by HTTP outcome, escalations, cloud calls, cloud errors,
calls refused for the budget, device and cloud tokens.  Gauges: the budget, its cap and the cloud calls of the last
window (updated at each scrape).  Histograms: request latency, device batch size.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)


class ServerMetrics:
    """The server's metrics; ``observe(answer, seconds)`` after each answered request, ``render()`` for a scrape."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, budget=None):
        self.registry = r = CollectorRegistry()
        self.budget = budget
        self.requests = Counter(
            "cloudroute_requests", "Chat completion requests answered, by who answered", ["answered_by"], registry=r
        )
        self.errors = Counter(
            "cloudroute_request_errors", "Requests refused or failed, by HTTP status", ["status"], registry=r
        )
        self.escalations = Counter("cloudroute_escalations", "Device responses that ended with <unknown>", registry=r)
        self.cloud_calls = Counter(
            "cloudroute_cloud_calls", "Cloud calls answered (escalations and queries)", registry=r
        )
        self.cloud_errors = Counter("cloudroute_cloud_errors", "Requests whose cloud call failed", registry=r)
        self.refused = Counter(
            "cloudroute_budget_refused_calls", "Cloud calls refused because the budget was spent", registry=r
        )
        self.tokens = Counter(
            "cloudroute_tokens",
            "Tokens, by side (device, cloud) and kind (prompt, completion)",
            ["side", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "cloudroute_request_latency_seconds",
            "Request latency, by who answered",
            ["answered_by"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cloudroute_device_batch_size",
            "Requests per device batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.budget_value = Gauge(
            "cloudroute_budget", "The budget (route: cloud share; query: calls per request)", registry=r
        )
        self.budget_cap = Gauge(
            "cloudroute_budget_window_cap", "Cloud calls allowed per window of requests", registry=r
        )
        self.budget_window = Gauge("cloudroute_budget_window_requests", "Requests per budget window", registry=r)
        self.budget_used = Gauge(
            "cloudroute_budget_window_calls", "Cloud calls granted to the last window of requests", registry=r
        )
        self.budget_usage = Gauge(
            "cloudroute_budget_window_usage", "Cloud calls per request over the last window", registry=r
        )

    def observe(self, answer, seconds: float) -> None:
        self.requests.labels(answer.answered_by).inc()
        self.latency.labels(answer.answered_by).observe(seconds)
        self.escalations.inc(int(answer.escalated))
        self.cloud_calls.inc(answer.cloud_calls)
        self.cloud_errors.inc(int(answer.cloud_error is not None))
        self.refused.inc(answer.refused_calls)
        self.tokens.labels("device", "prompt").inc(answer.device_prompt_tokens)
        self.tokens.labels("device", "completion").inc(answer.device_completion_tokens)
        self.tokens.labels("cloud", "prompt").inc(answer.cloud_prompt_tokens)
        self.tokens.labels("cloud", "completion").inc(answer.cloud_completion_tokens)

    def error(self, status: int) -> None:
        self.errors.labels(str(status)).inc()

    def render(self) -> bytes:
        if self.budget is not None:
            s = self.budget.state()
            self.budget_value.set(s["budget"])
            self.budget_cap.set(s["cap"])
            self.budget_window.set(s["window"])
            self.budget_used.set(s["window_calls"])
            self.budget_usage.set(s["window_usage"])
        return generate_latest(self.registry)
