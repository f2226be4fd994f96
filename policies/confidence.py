"""A device's self-confidence in its own answer: the mean token log-probability of its greedy response.

    conf = response_confidence(model, tokenizer, prompts, responses, batch_size=32)   # one float per problem
    threshold = confidence_threshold(calibration_conf, budget=0.3)   # escalate where conf < threshold

The TT & self-confidence baseline (eval.py ``--baselines confidence``; docs/evaluation.md) routes by it: a task-tuned
device, which has no escalation option, answers every problem greedily; the problems it was least sure of go to
the cloud.  Teacher-forced once on the prompt (chat-formatted, as the generator got it) and the response text,
tokenized as the generator tokenizes (``add_special_tokens=False``):

    conf(x) = (1/|y|) Σ_t log π(y_t | x, y_<t)

A response with no text (the device ended at once) is scored as its end-of-sequence token.  One forward pass per
batch (``tail_logprobs``, shared with the escalation score: left-padded, positions from the attention mask, so a
row's score does not depend on its padding).

The threshold at a budget b (``confidence_threshold``) escalates the floor(b·n) least confident calibration
problems: it is ``threshold_for_budget`` (policies/escalation_score.py) on the doubt −conf, so exactly those lie
strictly below it (fewer under ties).
"""

from __future__ import annotations

import torch

from policies.escalation_score import tail_logprobs, threshold_for_budget


@torch.no_grad()
def response_confidence(
    model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 32
) -> list[float]:
    """Mean log π(y_t | x, y_<t) over each response's tokens (see the module docstring), one forward pass per
    ``batch_size`` problems."""
    if len(prompts) != len(responses):
        raise ValueError(f"response_confidence: {len(prompts)} prompts but {len(responses)} responses")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = tokenizer.eos_token_id
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows, lens = [], []
        for prompt, response in zip(prompts[start : start + batch_size], responses[start : start + batch_size]):
            resp = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
            if not resp and eos is not None:
                resp = [eos]
            rows.append(tokenizer(prompt, add_special_tokens=False)["input_ids"] + resp)
            lens.append(len(resp))
        for m, lp in zip(lens, tail_logprobs(model, rows, lens, pad)):
            out.append(float(lp.double().mean()) if m else float("-inf"))
    return out


def confidence_threshold(confidences: list[float], budget: float) -> float:
    """The confidence below which a problem is escalated, so that the floor(budget·n) least confident of
    ``confidences`` (calibration problems) are: ``-threshold_for_budget`` of the doubts −conf."""
    return -threshold_for_budget([-c for c in confidences], budget)


def confidence_order(confidences: list[float]) -> list[int]:
    """Problem indices by ascending confidence (ties in dataset order): the cost sweep of the confidence router."""
    return sorted(range(len(confidences)), key=lambda i: confidences[i])
