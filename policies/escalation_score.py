"""A policy's escalation score: the probability it puts on the escalation tag at the end of its own answer.

    scores = escalation_scores(model, tokenizer, prompts, own_texts, tag="<unknown>", batch_size=32)
    threshold = threshold_for_budget(calibration_scores, budget=0.2)   # escalate where score > threshold

A route-mode policy escalates by ending its response with ``<unknown> ... </unknown>``: its greedy decision is
binary.  The score says how close it came: given the prompt and the device's own text (the greedy response with a
final ``<unknown> ... </unknown>`` removed, envs/format.py ``split_escalation``), teacher-forced,

    score = P(tag | prompt + own text) = exp( Σ_t log π(tag_t | prompt, own text, tag_<t) )

on the tokenizer's own tokenization of ``own text + tag``; the tag's tokens are those that differ from the
tokenization of the own text alone, so a token that joins the own text's last characters to the tag's first
(e.g. `` <``) counts with the tag.  One forward pass per batch, left-padded with positions from the attention
mask (a row's score does not depend on its padding), and only the last positions' logits are computed.

Which tokens: the callers score the tag's opening ``<unknown>`` (``escalation_opening``), not the whole tag the
prompt teaches (``<unknown> I need external assistance </unknown>``).  Writing ``<unknown>`` is the decision:
``is_escalation`` accepts any body before ``</unknown>``, and once a policy has opened the tag the rest is nearly
certain; scoring the body would only add the policy's uncertainty about wording that does not change where the
problem goes.

Where the own text is not empty and does not end in whitespace (an answer: ``... \\boxed{7}``), the tag follows
it after one space, as a tag follows a sentence; a response that escalated at once has an empty own text, and its
score is the probability of opening with the tag.  The threshold at a budget b (``threshold_for_budget``) is the
score of the (k+1)-th most likely escalation, k = floor(b·n), on calibration problems: strictly above it lie the k
highest scores, so the share of the calibration problems that escalate is the budget (fewer under ties).
"""

from __future__ import annotations

import inspect
import math

import torch


def escalation_opening(tag: str) -> str:
    """The opening of an escalation tag, ``<unknown>`` for ``<unknown> I need external assistance </unknown>``:
    the text up to the first ``>``."""
    end = tag.find(">")
    return tag[: end + 1] if end >= 0 else tag


def scored_text(own_text: str, tag: str) -> tuple[str, str]:
    """(context, context + tag): the own text, and the tag after it (one space after a non-empty own text that does
    not end in whitespace)."""
    sep = " " if own_text and not own_text[-1].isspace() else ""
    return own_text, own_text + sep + tag


def tag_token_ids(tokenizer, own_text: str, tag: str) -> tuple[list[int], list[int]]:
    """(own-text token ids, tag token ids): the tokenization of ``own text + tag`` cut where it stops agreeing with
    the tokenization of the own text alone."""
    own, full = scored_text(own_text, tag)
    own_ids = tokenizer(own, add_special_tokens=False)["input_ids"] if own else []
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(own_ids), len(full_ids)) and own_ids[k] == full_ids[k]:
        k += 1
    return full_ids[:k], full_ids[k:]


def _keeps_logits(model) -> bool:
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def tail_logprobs(model, rows: list[list[int]], tail_lens: list[int], pad_id: int) -> list[torch.Tensor]:
    """log π(token | everything before it) for the last ``tail_lens[i]`` tokens of each row of token ids, teacher-forced
    in one forward pass: left-padded, positions from the attention mask (a row's values do not depend on its padding),
    the LM head only on the last positions when the model takes ``logits_to_keep``.  One float tensor per row."""
    device = next(model.parameters()).device
    width, last = max(len(r) for r in rows), max(tail_lens) + 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding: every row's tail ends at the last position
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {"logits_to_keep": last} if _keeps_logits(model) else {}
    logits = model(
        input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), **kw
    ).logits[:, -last:]
    logp = torch.log_softmax(logits.float(), dim=-1)  # position j predicts token j+1
    out = []
    for i, m in enumerate(tail_lens):
        targets = ids[i, width - m :].to(device)
        out.append(logp[i, last - 1 - m : last - 1].gather(-1, targets[:, None]).squeeze(-1))
    return out


@torch.no_grad()
def escalation_logprobs(
    model, tokenizer, prompts: list[str], own_texts: list[str], tag: str = "<unknown>", batch_size: int = 32
) -> list[float]:
    """log P(tag | prompt + own text) per problem (see the module docstring), teacher-forced, one forward pass per
    ``batch_size`` problems.  ``prompts`` are chat-formatted texts (as the generator got them)."""
    if len(prompts) != len(own_texts):
        raise ValueError(f"escalation_logprobs: {len(prompts)} prompts but {len(own_texts)} own texts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows, tag_lens = [], []
        for prompt, own in zip(prompts[start : start + batch_size], own_texts[start : start + batch_size]):
            own_ids, tag_ids = tag_token_ids(tokenizer, own, tag)
            rows.append(tokenizer(prompt, add_special_tokens=False)["input_ids"] + own_ids + tag_ids)
            tag_lens.append(len(tag_ids))
        out += [float(lp.double().sum()) for lp in tail_logprobs(model, rows, tag_lens, pad)]
    return out


def escalation_scores(
    model, tokenizer, prompts: list[str], own_texts: list[str], tag: str = "<unknown>", batch_size: int = 32
) -> list[float]:
    """P(tag | prompt + own text) per problem: ``exp`` of ``escalation_logprobs``."""
    return [math.exp(lp) for lp in escalation_logprobs(model, tokenizer, prompts, own_texts, tag, batch_size)]


def threshold_for_budget(scores: list[float], budget: float) -> float:
    """The threshold that escalates a ``budget`` share of ``scores`` (calibration problems): the (k+1)-th highest
    score, k = floor(budget·n), so exactly the k highest lie strictly above it (fewer under ties); -1.0 (below every
    probability) when k = n, the highest score when k = 0."""
    if not scores:
        raise ValueError("threshold_for_budget: no calibration scores")
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"threshold_for_budget: budget {budget:g} is a share of problems, in [0, 1]")
    ranked = sorted(scores, reverse=True)
    k = math.floor(budget * len(ranked) + 1e-9)
    return -1.0 if k >= len(ranked) else float(ranked[k])


def score_order(scores: list[float]) -> list[int]:
    """Problem indices by descending score (ties in dataset order): the cost sweep of a thresholded policy."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])
