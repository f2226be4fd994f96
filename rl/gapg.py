"""Group-adaptive policy gradient (GAPG, docs/method.md §4).

For a prompt x with G sampled responses and Lagrangian rewards r̃_i:

    ĝ = 1/(G−1) Σ_i ∇ log π_θ(y_i^θ | x) · (r̃_i − mean_j r̃_j)          (paper, group-level PG)

with log π_θ(y^θ | x) the SUM of the device tokens' log-probabilities (cloud and
prompt tokens are masked out).  No std normalisation, no ratio clipping, no KL.
``1/(G−1)`` makes the leave-one-out form unbiased.  The batch loss averages the
per-prompt estimates over prompts:  L = −1/P Σ_x 1/(G−1) Σ_i A_i log π(y_i | x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from policies.generation import cache_keyword


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, G) rewards -> (P, G) coefficients (r̃_i − mean r̃) / (G − 1).

    A reward equal to its group's mean has coefficient exactly 0, also where float rounding of the mean says
    otherwise (``[1, 1, .4, .4, .4, 0, 0, 0]`` has mean .4, but ``.4 − mean`` is −4e-9 in float32): those
    responses are skipped by the update, as they add nothing to the gradient."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, G>=2), got {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    rounding = 1e-6 * rewards.abs().amax(dim=1, keepdim=True).clamp(min=1.0)
    centred = torch.where(centred.abs() <= rounding, torch.zeros_like(centred), centred)
    return centred / (rewards.shape[1] - 1)


def truncated_importance_weights(logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """w_i = min(π_θ(y_i|x) / μ(y_i|x), cap) per sequence, without gradient: truncated importance sampling
    (TIS; the correction TRL applies to vLLM rollouts) for responses sampled by a low-precision copy μ of the
    policy π_θ (``HFGenerator(dtype=...)``).  The group policy gradient becomes

        ĝ = 1/(G−1) Σ_i w_i ∇ log π_θ(y_i | x) · (r̃_i − mean_j r̃_j).

    ``logprobs`` and ``behaviour_logprobs``: (B,) sums over the same device tokens."""
    return torch.exp(logprobs.detach().float() - behaviour_logprobs.float()).clamp(max=cap)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log π(token_t | tokens_<t) for t = 1..L-1: (B, L-1)."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    return -F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none").view(
        labels.shape
    )


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log-probs over the tokens where ``loss_mask`` is 1 (device tokens only): (B,)."""
    return (token_logprobs(logits, input_ids) * loss_mask[:, 1:].to(torch.float32)).sum(dim=1)


def gapg_loss(seq_logprobs: torch.Tensor, coefficients: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """−1/P Σ coef_i · log π(y_i|x); ``coefficients`` from ``group_advantages`` (flattened, no gradient)."""
    return -(coefficients.detach().to(seq_logprobs.dtype) * seq_logprobs).sum() / num_prompts


def collate(sequences: list[tuple], pad_id: int):
    """Right-padded (input_ids, attention_mask, loss_mask) from (prompt_ids, completion_ids[, completion_mask]).

    The loss mask is 0 on the prompt and 1 on the completion, or the completion's own per-token
    mask when one is given (query mode: 0 on the inserted cloud ``<response>`` tokens)."""
    width = max(len(s[0]) + len(s[1]) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        p, c = seq[0], seq[1]
        m = seq[2] if len(seq) > 2 else None
        n = len(p) + len(c)
        if m is not None and len(m) != len(c):
            raise ValueError(f"sequence {i}: {len(m)} mask entries for {len(c)} completion tokens")
        ids[i, :n] = torch.tensor(p + c)
        attn[i, :n] = 1
        mask[i, len(p) : n] = 1 if m is None else torch.tensor(m, dtype=torch.long)
    return ids, attn, mask


def scored_positions(sequences: list[tuple], width: int) -> int:
    """How many of the last positions of a right-padded batch (``collate``) need logits: from the one before the
    earliest completion token on.  The LM head (vocabulary x hidden, a fifth of a 135M model's weights) then skips
    the prompt tokens, whose predictions no loss uses (``logits_to_keep``)."""
    return min(width, width - (min(len(s[0]) for s in sequences) - 1))


def recomputes_activations(model) -> bool:
    """True when ``model`` (bare, PEFT- or DDP-wrapped) trains with gradient checkpointing.

    A checkpointed forward in training mode returns no KV cache (each layer is run again in the backward pass, so
    transformers turns ``use_cache`` off), which the shared-prefix path needs."""
    inner = getattr(model, "module", model)
    name = (
        "is_activation_checkpointing" if hasattr(inner, "is_activation_checkpointing") else "is_gradient_checkpointing"
    )
    return bool(getattr(inner, name, False)) and inner.training


def score_sequences(model, sequences: list[tuple], pad_id: int, device, shared_prefix: int = 0) -> torch.Tensor:
    """Sum of device-token log-probs for each (prompt_ids, completion_ids[, completion_mask]), with gradient: (B,).

    With ``shared_prefix = P > 0`` (all sequences start with the same P tokens), the prefix
    goes through the model once and its KV cache is repeated for every row, with the
    gradient flowing back through the repeat: the same value and gradient as scoring the
    full sequences, at a fraction of the tokens.  A model trained with gradient checkpointing
    has no cache to share, so it scores the full padded sequences (same value and gradient).
    """
    if shared_prefix > 0 and recomputes_activations(model):
        shared_prefix = 0
    if shared_prefix <= 0:
        ids, attn, mask = collate(sequences, pad_id)
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
        keep = scored_positions(sequences, ids.shape[1])
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
        return sequence_logprobs(logits, ids[:, -keep:], mask[:, -keep:])
    prefix = torch.tensor([sequences[0][0][:shared_prefix]], device=device)
    cache = DynamicCache()
    model(input_ids=prefix, use_cache=True, **{cache_keyword(model): cache})
    cache.batch_repeat_interleave(len(sequences))
    rest = [(s[0][shared_prefix:], *s[1:]) for s in sequences]
    ids, attn, mask = collate(rest, pad_id)
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    full_attn = torch.cat([torch.ones((len(sequences), shared_prefix), dtype=attn.dtype, device=device), attn], dim=1)
    keep = scored_positions(rest, ids.shape[1])
    kwargs = {cache_keyword(model): cache}
    logits = model(input_ids=ids, attention_mask=full_attn, use_cache=True, logits_to_keep=keep, **kwargs).logits
    return sequence_logprobs(logits, ids[:, -keep:], mask[:, -keep:])
