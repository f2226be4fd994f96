"""The cloud: three backends behind one interface, and the persistent cache of their answers.

    cloud = make_cloud(cfg.cloud, cache_path="outputs/run/cloud_cache.sqlite")
    text = cloud.answer(problem).text   # at most one real call per (model, messages, sampling), ever
    cloud.usage()   # {'calls': .., 'cache_hits': .., 'prompt_tokens': .., 'completion_tokens': .., ...}

Every backend has ``name``, ``answer_many(problems, on_reply=None) -> list[CloudReply]`` and
``cache_key(problem) -> str`` (protocol.py: ``CloudBackend``); ``cloud.backend`` picks one:

* ``SimulatedCloud`` (``simulated``, simulated.py): seeded, accuracy configurable overall and per difficulty level.
* ``HFCloud`` (``hf``, hf.py): a local transformers model (loaded on first use).
* ``OpenAICloud`` (``openai``, http.py): any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, llama.cpp,
  a hosted API) over ``httpx``, with timeouts, bounded concurrency and retries.

``CachedCloud`` (cache.py) wraps a backend with an SQLite file keyed by ``backend.cache_key(problem)``; its
``answer_many(problems)`` returns the same ``CloudReply``s, with ``cached`` set on those that cost nothing.  The
requests themselves (requests.py): a task problem, a free-text ``<query>`` (``query_problem``, query mode), a
data-augmentation request (``augment_problem``, task tuning) or a whole chat (``chat_problem``, LSRP); every
backend sends the chat ``cloud_messages(problem)`` gives, and the cache keys it like any other request.
"""

from __future__ import annotations

from policies.cloud.cache import CachedCloud
from policies.cloud.hf import HFCloud
from policies.cloud.http import REFUSED_RETRIES, OpenAICloud, parse_retry_after
from policies.cloud.protocol import CloudBackend, CloudConfigError, CloudError, CloudReply
from policies.cloud.requests import (
    CLOUD_AUGMENT_SYSTEM,
    augment_problem,
    chat_problem,
    cloud_messages,
    query_problem,
    request_key,
)
from policies.cloud.simulated import SimulatedCloud

__all__ = [
    "CLOUD_AUGMENT_SYSTEM",
    "REFUSED_RETRIES",
    "CachedCloud",
    "CloudBackend",
    "CloudConfigError",
    "CloudError",
    "CloudReply",
    "HFCloud",
    "OpenAICloud",
    "SimulatedCloud",
    "augment_problem",
    "chat_problem",
    "cloud_messages",
    "make_backend",
    "make_cloud",
    "parse_retry_after",
    "query_problem",
    "request_key",
]


def make_backend(cfg, simulator=None) -> CloudBackend:
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
