"""What a cloud backend is (``CloudBackend``), what it returns (``CloudReply``) and what it raises (``CloudError``).

    reply = backend.answer_many([problem])[0]   # CloudReply(text=..., prompt_tokens=.., completion_tokens=..)

The backends (simulated.py, hf.py, http.py) follow it; ``CachedCloud`` (cache.py) wraps one and answers with the
same ``CloudReply``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from core.problem import Problem


class CloudError(RuntimeError):
    """A cloud request that cannot succeed (bad key, wrong URL or model, retries exhausted)."""


class CloudConfigError(CloudError):
    """The cloud refuses every request until the configuration is fixed: HTTP 401/403/404 (the key, its access to the
    model, the URL or the model name).  Training stops on it, where a failure of single requests is only counted."""


@dataclass
class CloudReply:
    text: str
    prompt_tokens: int = 0  # prompt tokens the cloud read (cost accounting)
    completion_tokens: int = 0  # completion tokens the cloud produced (cost accounting)
    cached: bool = False  # served from the cache (disk, or asked before in this process)


class CloudBackend(Protocol):
    """A cloud: ``name`` tags its cache rows; ``cache_key(problem)`` hashes everything its answer depends on
    (requests.py: ``request_key``); ``answer_many`` answers the problems in order.

    ``on_reply(i, reply)``, when given, is called in the caller's thread as the answer to ``problems[i]`` arrives,
    so ``CachedCloud`` commits it before the next is awaited (an HTTP backend's failure mid-batch loses nothing
    that arrived).  A backend that answers the whole batch at once accepts it and leaves it uncalled; the cache
    then commits the batch in one transaction."""

    name: str

    def cache_key(self, problem: Problem) -> str: ...

    def answer_many(
        self, problems: list[Problem], on_reply: Callable[[int, CloudReply], None] | None = None
    ) -> list[CloudReply]: ...
