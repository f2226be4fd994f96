"""What the cloud is asked: the request kinds as ``Problem``s, the chat each becomes, and the key that caches it.

    cloud_messages(query_problem("What is 37 * 46?"))   # [system: CLOUD_QUERY_SYSTEM, user: the query]

Query mode (``envs/query.py``): a free-text ``<query>`` is wrapped by ``query_problem(text)`` into a ``Problem``
whose question is the query and whose uid is a hash of it.  Task tuning (``envs/augment.py``):
``augment_problem(prompt, source, k)`` asks for k Input/Response pairs similar to a training example.  LSRP
(``envs/lsrp/``): ``chat_problem(messages)`` carries a whole chat (a leader's or a judge's prompt), sent as it is.
``request_key`` is the sha256 every backend's ``cache_key`` is built from.
"""

from __future__ import annotations

import hashlib
import json

from core.problem import Problem

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
