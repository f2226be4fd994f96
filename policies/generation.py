"""Rollouts from the device policy: ``generate(prompts, n, ...) -> [[Sample]*n]*len(prompts)``.

    gen = HFGenerator(model, tokenizer)                       # exact sampling from the fp32 policy
    groups = gen.generate(prompts, n=4, temperature=1.0, max_new_tokens=64)
    gen = HFGenerator(model, tokenizer, dtype="bfloat16")     # faster where bf16 matmuls are (docs/rollout_speed.md)

``HFGenerator`` runs its own decode loop over a transformers model and its KV cache (``DynamicCache``),
built for RL rollouts, where HF ``generate`` wastes most of its time on a CPU:
  * every prompt is prefilled once, not once per sample: its KV cache is repeated G times afterwards;
  * a head shared by all prompts (chat template, system prompt, worked examples) is prefilled once per call;
  * prompts of different lengths share one batch: the padding sits between the shared head and each row's
    own tokens, and positions come from the attention mask, so a row's tokens do not depend on its padding;
  * a row that finishes (EOS, its token budget, a stop string) leaves the batch at once, cache and all;
  * a token is drawn by inverting the CDF of softmax(logits / T) with one uniform number per row, which is
    exact sampling from the policy, and the same distribution as ``torch.multinomial`` at a fraction of its
    cost on a 49k vocabulary.  No repetition penalty or top-k from a model's ``generation_config`` enters:
    the samples come from the distribution the trainer scores.
A sample keeps its prompt and completion token ids so the trainer scores exactly the tokens that were sampled.

Multi-turn environments (``envs/query.py``) use ``extend(contexts, budgets, stop=...)``: continue many token
sequences at once, each row stopping on EOS, on its own token budget, or right after the token that completes
a stop string (``</query>``).  ``benchmarks/bench_generation.py`` measures all of this against HF ``generate``
and TRL, as a fraction of the machine's roofline.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.generation.logits_process import TopPLogitsWarper

from policies.device import DTYPES
from rewards.math_grader import last_boxed


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]  # device tokens, EOS included when it stopped on EOS
    text: str  # decoded completion without special tokens
    truncated: bool  # hit max_new_tokens without EOS
    # 1 = device token (trained), 0 = inserted context (cloud <response> tokens);
    # None = every completion token is the device's
    loss_mask: list[int] | None = None
    # sum of the device tokens' log-probs under the weights that sampled them, when those are a low-precision
    # copy of the policy (HFGenerator(dtype=...)): the trainer's importance weights need it; None = the policy's
    rollout_logprob: float | None = None


class DecodeSpec(NamedTuple):
    """How one decode call samples: ``n`` continuations per context, the sampler's settings, an optional stop string
    and logits processor."""

    n: int
    temperature: float
    top_p: float
    stop: str | None
    logits_processor: object
    on_token: object = None  # on_token(context_index, token_id) after each sampled token (serving's streaming)
    on_done: object = None  # on_done() as each row finishes (eval.py's per-problem progress bar)


@dataclass
class Continuation:
    """What ``HFGenerator.extend`` added to one context: the new device tokens and why they stopped."""

    ids: list[int]
    reason: str  # "stop" (the stop string was completed), "eos", or "length" (the row's budget ran out)
    logprob: float | None = None  # sum of log-probs of ``ids`` under a low-precision sampling copy (else None)


def chat_prompt(tokenizer, user_text: str | list[dict], system: str | None = None) -> str:
    """The tokenizer's chat template applied to a user message (or a full message list)."""
    if isinstance(user_text, str):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_text}
        ]
    else:
        messages = user_text
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n"


def eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end a response: the generation config's EOS (one or several), else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])


def to_sample(tokenizer, prompt_ids: list[int], gen: list[int], eos: set[int]) -> Sample:
    """A generated row as a Sample: cut after the first EOS (kept, it is a sampled token), truncated if none came."""
    ids, stopped = [], False
    for t in gen:
        ids.append(t)
        if t in eos:
            stopped = True
            break
    return Sample(prompt_ids, ids, tokenizer.decode(ids, skip_special_tokens=True), truncated=not stopped)


def common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs):
            return i
    return n


def cache_keyword(model) -> str:
    """The name a model's forward gives its KV cache argument: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier releases, which the later ones still accept with a deprecation warning)."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """One token per row of ``logits`` (B, V): argmax when ``temperature == 0``, else a draw from
    softmax(logits / temperature) restricted to the top-p nucleus (HF's ``TopPLogitsWarper``).

    The draw inverts the CDF: token = the first index whose cumulative probability exceeds u * total, with u
    uniform in [0, 1).  The softmax, its cumulative sum and u are float64: each token's chance is then its
    probability to within about 1e-13 in total variation over a 49k vocabulary, as with ``torch.multinomial``,
    which draws one exponential number per vocabulary entry instead.  (In float32 the cumulative sum near 1
    moves in steps of 6e-8: the draw was off the softmax by about 3e-4 in total variation, and thousands of
    tail tokens, each below half a step, could never be drawn.)"""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    cdf = torch.softmax(scores.double(), dim=-1).cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1), device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


class _AppendInPlace(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in a buffer with room for ``reserve`` more positions.

    ``DynamicLayer.update`` concatenates, copying the whole cache at every decode step; this one writes the new
    position in place (on the 2-core CPU the saving was within the noise of a step: docs/rollout_speed.md).
    ``keys``/``values`` stay views of the filled part, so everything else (masks, ``batch_select_indices``,
    ``batch_repeat_interleave``, ``crop``) works unchanged; when one of those replaces the tensors, the next
    update moves them into a fresh buffer."""

    def __init__(self, reserve: int = 64):
        super().__init__()
        self.reserve, self._buffer = reserve, None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        total = n + key_states.shape[-2]
        buf = self._buffer
        if (
            buf is None
            or buf[0].shape[0] != key_states.shape[0]
            or buf[0].shape[-2] < total
            or (n and buf[0].data_ptr() != self.keys.data_ptr())
        ):
            shape = (*key_states.shape[:2], total + self.reserve)
            buf = (
                key_states.new_empty((*shape, key_states.shape[-1])),
                value_states.new_empty((*shape, value_states.shape[-1])),
            )
            if n:
                buf[0][:, :, :n], buf[1][:, :, :n] = self.keys, self.values
            self._buffer = buf
        buf[0][:, :, n:total], buf[1][:, :, n:total] = key_states, value_states
        self.keys, self.values = buf[0][:, :, :total], buf[1][:, :, :total]
        return self.keys, self.values


def rollout_cache(reserve: int, head: DynamicCache | None = None) -> DynamicCache:
    """A ``DynamicCache`` that appends in place (``_AppendInPlace``), with room for ``reserve`` more tokens;
    a copy of ``head`` (a rollout cache) when given."""
    if head is None:
        cache = DynamicCache()
        cache.layer_class_to_replicate = functools.partial(_AppendInPlace, reserve=reserve)
        return cache
    cache = copy.deepcopy(head)
    for layer in cache.layers:
        layer.reserve = reserve
    return cache


def completes_stop(tokenizer, new_ids: list[int], stop, window: int = 24) -> bool:
    """True once a row's new tokens contain ``stop``, or, for a callable ``stop``, once ``stop(text)`` is true
    (``boxed_answer``).  Only the last ``window`` tokens are decoded, so the check is cheap, and the text is decoded
    whole, so ``stop`` is found however the tokenizer splits it (``</query>`` may end inside a token such as
    ``><``)."""
    if callable(stop):
        return stop(tokenizer.decode(new_ids[-window:]))
    return stop in tokenizer.decode(new_ids[-window:])


def boxed_answer(text: str) -> bool:
    """A stop for ``generate``: true right after the token that closes a complete ``\\boxed{...}`` (a one-line
    answer is over; what follows would be chatter)."""
    return text.rstrip().endswith("}") and last_boxed(text) is not None


class HFGenerator:
    """Batched sampling from a transformers causal LM (greedy when ``temperature == 0``); see the module docstring.

    ``batch_size``: the most rows (prompts x samples) decoded at once.  ``min_shared_prefix``: the shortest
    head common to all contexts of a call that is prefilled once for all of them (0 = never).
    ``dtype``: sample from a copy of the weights in this dtype (``bfloat16`` decodes about 1.5x faster on a
    CPU with bf16 matmuls: docs/rollout_speed.md), refreshed whenever the policy's weights change; ``None`` = the
    policy itself (exact).  ``min_new_tokens``: no EOS before this many new tokens (benchmarks force fixed
    lengths with it).
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 64,
        min_shared_prefix: int = 32,
        dtype: str | None = None,
        min_new_tokens: int = 0,
    ):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.min_shared_prefix, self.min_new_tokens = min_shared_prefix, min_new_tokens
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"rollout dtype {dtype!r}: use one of {', '.join(DTYPES)} (or None for the policy's own)")
        self.dtype = DTYPES[dtype] if dtype else None
        self._copy, self._copy_versions = None, None
        self._cache_kw = cache_keyword(model)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop=None,
        on_done=None,
    ) -> list[list[Sample]]:
        """``n`` samples of each prompt (chat-formatted text), in prompt order.  ``stop``: a string or a predicate
        (``completes_stop``; e.g. ``boxed_answer``) that ends a row early; ``on_done()`` is called as each row
        finishes (a progress bar that moves per problem)."""
        tok = self.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        reps = n if temperature > 0 else 1  # greedy: one decode, copied n times
        conts = self._decode(ids, reps, [max_new_tokens] * len(ids), temperature, top_p, stop, on_done=on_done)
        return [[self._sample(ids[i], conts[i * reps + k % reps]) for k in range(n)] for i in range(len(ids))]

    def _sample(self, prompt_ids: list[int], cont: Continuation) -> Sample:
        text = self.tokenizer.decode(cont.ids, skip_special_tokens=True)
        return Sample(prompt_ids, list(cont.ids), text, cont.reason == "length", rollout_logprob=cont.logprob)

    @torch.no_grad()
    def extend(
        self,
        contexts: list[list[int]],
        max_new_tokens: int | list[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | None = None,
        logits_processor=None,
        on_token=None,
    ) -> list[Continuation]:
        """Continue every token sequence in ``contexts`` (batched); one ``Continuation`` per context.

        Row ``i`` gets at most ``max_new_tokens[i]`` new tokens and stops early on EOS or right after the
        token that completes ``stop`` (``completes_stop``).
        ``logits_processor``: an HF ``LogitsProcessorList``, called as ``(input_ids, scores)`` on the rows
        still running (tests force scripted outputs with it).
        ``on_token(i, token_id)``: called on each token of context ``i`` as it is sampled (serving/streaming.py
        streams the device's work with it).
        """
        budgets = [max_new_tokens] * len(contexts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        return self._decode(contexts, 1, budgets, temperature, top_p, stop, logits_processor, on_token)

    # ------------------------------------------------------------------ the decode loop

    def _policy(self):
        """The module that samples: the policy itself, or its ``dtype`` copy with the policy's current weights."""
        model = self.model
        if self.dtype is None or next(model.parameters()).dtype == self.dtype:
            return model
        params = list(model.parameters())
        if any(hasattr(p, "ds_id") for p in params):
            raise ValueError("rl.rollout_dtype needs whole weights in each process: not with DeepSpeed ZeRO-3")
        if self._copy is None:
            self._copy = copy.deepcopy(model)
            for p in self._copy.parameters():  # buffers (rotary frequencies) keep their precision
                p.requires_grad_(False)
                p.data = p.data.to(self.dtype)
        versions = [p._version for p in params]  # bumped by every in-place update (optimizer steps, loading)
        if versions != self._copy_versions:
            for c, p in zip(self._copy.parameters(), params):
                c.copy_(p)
            self._copy_versions = versions
        return self._copy

    def _forward(self, model, ids, mask, positions, cache) -> torch.Tensor:
        kwargs = {self._cache_kw: cache}
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **kwargs
        )
        return out.logits[:, -1]

    def _decode(
        self, contexts, n, budgets, temperature, top_p, stop=None, logits_processor=None, on_token=None, on_done=None
    ):
        """``n`` continuations of each context (context-major order), each within its context's budget."""
        out = [Continuation([], "length") for _ in range(len(contexts) * n)]
        todo = [i for i in range(len(contexts)) if budgets[i] > 0]
        if not todo:
            return out
        policy = self._policy()
        was_training = policy.training
        policy.eval()
        try:
            device = next(policy.parameters()).device
            shared = common_prefix_len([contexts[i] for i in todo]) - 1  # every row keeps >= 1 token of its own
            shared = shared if self.min_shared_prefix and shared >= self.min_shared_prefix else 0
            head = None
            if shared:
                head = rollout_cache(0)
                ids = torch.tensor([contexts[todo[0]][:shared]], device=device)
                self._forward(policy, ids, torch.ones_like(ids), None, head)
            todo.sort(key=lambda i: len(contexts[i]))  # similar lengths share a batch: less padding
            per_call = max(1, self.batch_size // n)
            spec = DecodeSpec(n, temperature, top_p, stop, logits_processor, on_token, on_done)
            for start in range(0, len(todo), per_call):
                rows = todo[start : start + per_call]
                self._decode_rows(
                    policy,
                    device,
                    [contexts[i] for i in rows],
                    [budgets[i] for i in rows],
                    spec,
                    shared,
                    head,
                    [i * n for i in rows],
                    out,
                )
        finally:
            policy.train(was_training)
        return out

    def _decode_rows(self, policy, device, contexts, budgets, spec: DecodeSpec, shared, head, first_slots, out):
        """Prefill ``contexts`` (after the ``shared`` prefix cached in ``head``) and sample ``spec.n`` continuations of
        each within its budget; continuation k of context j goes to ``out[first_slots[j] + k]``."""
        n, temperature, top_p, stop, logits_processor, on_token, on_done = spec
        tok, eos = self.tokenizer, eos_ids(self.model, self.tokenizer)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        # prefill: [shared head (cached)] [padding] [the row's own tokens], each context once
        width = max(len(c) for c in contexts)
        ids, mask = [], []
        for c in contexts:
            gap = width - len(c)
            ids.append([pad] * gap + c[shared:])
            mask.append([1] * shared + [0] * gap + [1] * (len(c) - shared))
        ids = torch.tensor(ids, device=device)
        mask = torch.tensor(mask, device=device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        cache = rollout_cache(width - shared + max(budgets), head)
        if head is not None:
            cache.batch_repeat_interleave(len(contexts))
        logits = self._forward(policy, ids, mask, positions[:, shared:], cache)
        # each context's cache and last logits, repeated for its n samples
        slots = [first + k for first in first_slots for k in range(n)]  # where each running row's result goes in out
        budget = [b for b in budgets for _ in range(n)]
        seqs = [c for c in contexts for _ in range(n)] if logits_processor is not None else None
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        position = positions[:, -1:].repeat_interleave(n, 0)
        new: list[list[int]] = [[] for _ in slots]
        eos_list = sorted(eos)
        behaviour = torch.zeros(len(slots), device=device) if policy is not self.model else None
        for t in range(max(budget)):
            if t < self.min_new_tokens:
                logits[:, eos_list] = float("-inf")
            if logits_processor is not None:
                width_now = max(len(s) for s in seqs) + t
                grid = torch.full((len(slots), width_now), pad, dtype=torch.long, device=device)
                for j, s in enumerate(seqs):
                    row = s + new[j]
                    grid[j, width_now - len(row) :] = torch.tensor(row, device=device)
                logits = logits_processor(grid, logits.float())
            picked = sample_tokens(logits, temperature, top_p)
            if behaviour is not None:  # log μ(token) at temperature 1, the trainer's log π_θ counterpart
                behaviour += torch.log_softmax(logits.float(), -1).gather(1, picked[:, None]).squeeze(1)
            keep = []
            for j, token in enumerate(picked.tolist()):
                new[j].append(token)
                if on_token is not None:
                    on_token(slots[j] // n, token)
                reason = None
                if token in eos:
                    reason = "eos"
                elif stop and completes_stop(tok, new[j], stop):
                    reason = "stop"
                elif len(new[j]) >= budget[j]:
                    reason = "length"
                if reason:
                    out[slots[j]] = Continuation(new[j], reason, None if behaviour is None else behaviour[j].item())
                    if on_done is not None:
                        on_done()
                else:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(slots):  # finished rows leave the batch, cache included
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, position, picked = mask[index], position[index], picked[index]
                behaviour = behaviour[index] if behaviour is not None else None
                slots, budget, new = [slots[j] for j in keep], [budget[j] for j in keep], [new[j] for j in keep]
                seqs = [seqs[j] for j in keep] if seqs is not None else None
            mask = torch.cat([mask, mask.new_ones((len(slots), 1))], dim=1)
            position = position + 1
            logits = self._forward(policy, picked[:, None], mask, position, cache)
