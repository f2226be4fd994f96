"""Cloud data augmentation for task tuning (CDCDA-PLM, seed 004 §3 "Data augmentation with server LLM", eq. 1).

    cands, stats = augment(cloud, examples, template="arithmetic", k=5)   # examples: [(Problem, response)]

For each real training example (x, y) the cloud is asked once, with the paper's prompt paraphrased
(``envs/prompts.py: AUGMENT_PROMPT``), for k "Input: ... / Response: ..." pairs similar to it, the
responses in the device's answer format for the task (``AUGMENT_RULES``: a worked calculation or a
step-by-step solution ending in ``\\boxed{}``, or Countdown's ``<think>``/``<answer>``).  The request
goes through the normal cloud interface (``policies/cloud/requests.py: augment_problem``), so:

* any backend answers it: ``hf`` and ``openai`` send the prompt to a real LLM, which writes the pairs;
* the simulated cloud (no LLM) draws k new problems of the same kind from the task generator
  (arithmetic ladder, Countdown) and writes them in the same text, wrong as often as its accuracy says;
  for MATH it writes nothing, and a warning says to use a real backend;
* every reply is in the answer cache (``cloud_cache.sqlite``): nothing is asked twice, and a killed run
  asks only for what it did not get.

The reply is parsed back into pairs (``parse_pairs``: numbering, markdown bold and ``[...]`` brackets
are tolerated; at most k are kept) and returned as ``envs.filters.Candidate`` for the three filters.
"""

from __future__ import annotations

import logging
import re

from core.problem import Problem
from envs.filters import Candidate
from envs.prompts import AUGMENT_PROMPT, AUGMENT_RULES
from policies.cloud import augment_problem

log = logging.getLogger(__name__)

# "Input:", "1. Input:", "**Input:**", "- Response -", "Response 2:" ... at the start of a line
_FIELD = re.compile(
    r"^\s*(?:\d+[.)]\s*|[-*•]\s+)?\**\s*(input|response)\s*\d*\s*\**\s*[:：]\s*\**\s*(.*)$", re.IGNORECASE
)


def augment_prompt(template: str, question: str, response: str, k: int) -> str:
    return AUGMENT_PROMPT.format(
        k=k, rule=AUGMENT_RULES.get(template, AUGMENT_RULES["math"]), input=question, response=response
    )


def _unwrap(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == "[" and s[-1] == "]" and s.count("[") == 1:  # the model mirrored "Input: [...]"
        s = s[1:-1].strip()
    return s


def parse_pairs(text: str, k: int | None = None) -> list[tuple[str, str]]:
    """The (input, response) pairs of a reply, in order; a response runs until the next ``Input:`` line.
    An input without a response, or an empty field, is dropped.  At most ``k`` pairs when given."""
    pairs, cur, field = [], None, None
    for line in (text or "").splitlines():
        m = _FIELD.match(line)
        if m:
            field = m.group(1).lower()
            if field == "input":
                if cur and cur["response"].strip():
                    pairs.append(cur)
                cur = {"input": m.group(2), "response": ""}
            elif cur is not None:
                cur["response"] = m.group(2)
            continue
        if cur is not None and field:
            cur[field] += "\n" + line
    if cur and cur["response"].strip():
        pairs.append(cur)
    out = [(_unwrap(p["input"]), _unwrap(p["response"].strip().rstrip("*").strip())) for p in pairs]
    out = [(x, y) for x, y in out if x and y]
    return out[:k] if k is not None else out


def augment(cloud, examples: list[tuple[Problem, str]], template: str, k: int, chunk_size: int = 16):
    """(candidates, stats): k synthetic pairs per real example (problem, response), parsed from the cloud's reply.

    ``cloud`` is a ``CachedCloud`` (``policies.cloud.make_cloud``): every reply is cached, its usage is counted.

    Requests go out ``chunk_size`` at a time; each reply is committed to the cloud cache as it arrives."""
    requests = [augment_problem(augment_prompt(template, p.question, y, k), p, k) for p, y in examples]
    cands, short, empty = [], 0, 0
    before = cloud.usage()
    for s in range(0, len(requests), chunk_size):
        part = list(zip(examples[s : s + chunk_size], requests[s : s + chunk_size]))
        replies = cloud.answer_many([r for _, r in part])
        for ((p, y), _), reply in zip(part, replies):
            pairs = parse_pairs(reply.text, k)
            short += len(pairs) < k
            empty += not reply.text.strip()
            cands += [Candidate(p.question, y, x_syn, y_syn, p.uid, p.level) for x_syn, y_syn in pairs]
        log.info(
            "augmentation: %d/%d examples done, %d synthetic pairs so far",
            min(s + chunk_size, len(requests)),
            len(requests),
            len(cands),
        )
    if requests and empty == len(requests):
        log.warning(
            "augmentation: the cloud (%s) wrote no pairs for any of %d examples. The simulated cloud writes similar "
            "problems only for the arithmetic ladder and Countdown; for %s use a real LLM (cloud.backend=hf or "
            "openai), or sft.augment_k=0 to train on the real examples alone.",
            cloud.backend.name,
            len(requests),
            template,
        )
    after = cloud.usage()
    stats = {
        "examples": len(examples),
        "k": k,
        "requests": len(requests),
        "pairs_parsed": len(cands),
        "replies_with_fewer_than_k": short,
        "empty_replies": empty,
        "backend": cloud.backend.name,
        "cloud_calls": after["calls"] - before["calls"],
        "cache_hits": after["cache_hits"] - before["cache_hits"],
        "written_by": "generator (simulated cloud, no LLM)"
        if cloud.backend.name == "simulated"
        else f"LLM ({cloud.backend.name})",
    }
    return cands, stats
