"""Generation backends behind one small interface: ``generate(prompts, n, ...) -> [[Sample]*n]*len(prompts)``.

``HFGenerator`` batches HF ``model.generate`` (left padding, ``num_return_sequences``);
a vLLM backend can sit behind the same call.  Prompts are chat-formatted with the
tokenizer's own template; a sample keeps its prompt and completion token ids so
the trainer scores exactly the tokens that were sampled.

Multi-turn environments (``envs/query.py``) use ``extend(contexts, budgets, stop=...)``:
continue many token sequences at once, each row stopping on EOS, on its own token
budget, or right after the token that completes a stop string (``</query>``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]  # device tokens, EOS included when it stopped on EOS
    text: str  # decoded completion without special tokens
    truncated: bool  # hit max_new_tokens without EOS
    # 1 = device token (trained), 0 = inserted context (cloud <response> tokens);
    # None = every completion token is the device's
    loss_mask: list[int] | None = None


@dataclass
class Continuation:
    """What ``HFGenerator.extend`` added to one context: the new device tokens and why they stopped."""

    ids: list[int]
    reason: str  # "stop" (the stop string was completed), "eos", or "length" (the row's budget ran out)


class _RowStop(StoppingCriteria):
    """Per-row stop: a row is done once it has ``budget`` new tokens, or once its new tokens contain ``stop``.

    The check decodes only the last ``window`` new tokens of a row, so a stop string is found
    however the tokenizer splits it (``</query>`` may end inside a token such as ``><``)."""

    def __init__(self, tokenizer, start: int, budgets: list[int], stop: str | None, window: int = 24):
        self.tokenizer, self.start, self.budgets, self.stop, self.window = tokenizer, start, budgets, stop, window
        self.stop_at: list[int | None] = [None] * len(
            budgets
        )  # new tokens up to and including the one completing ``stop``

    def __call__(self, input_ids, scores, **kwargs):
        cur = input_ids.shape[1]
        new = cur - self.start
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for b in range(input_ids.shape[0]):
            if self.stop_at[b] is not None or new >= self.budgets[b]:
                done[b] = True
            elif self.stop and new > 0:
                tail = input_ids[b, max(self.start, cur - self.window) : cur].tolist()
                if self.stop in self.tokenizer.decode(tail):
                    self.stop_at[b], done[b] = new, True
        return done


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


class HFGenerator:
    """Batched sampling with ``transformers`` ``generate``; greedy when ``temperature == 0``.

    Prefix sharing: prompts of one call usually share a long head (chat template, system
    prompt, worked examples), and the G samples of a prompt share all of it.  When that
    head is at least ``min_shared_prefix`` tokens, its KV cache is computed once and
    copied into every row; prompts are batched by length so no padding enters the
    middle.  Greedy outputs equal the padded path's; samples follow the same distribution.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, min_shared_prefix: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.min_shared_prefix = min_shared_prefix

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
    ) -> list[list[Sample]]:
        tok, model = self.tokenizer, self.model
        was_training = model.training
        model.eval()
        try:
            ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
            shared = common_prefix_len(ids) - 1 if len(ids) else 0  # every row keeps >= 1 token of its own
            if self.min_shared_prefix and shared >= self.min_shared_prefix:
                return self._generate_shared(ids, shared, n, temperature, top_p, max_new_tokens)
            return self._generate_padded(prompts, n, temperature, top_p, max_new_tokens)
        finally:
            model.train(was_training)

    def _sampling_kwargs(self, temperature, top_p, max_new_tokens) -> dict:
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    @torch.no_grad()
    def extend(
        self,
        contexts: list[list[int]],
        max_new_tokens: int | list[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | None = None,
        **generate_kwargs,
    ) -> list[Continuation]:
        """Continue every token sequence in ``contexts`` (batched); one ``Continuation`` per context.

        Row ``i`` gets at most ``max_new_tokens[i]`` new tokens and stops early on EOS or right after
        the token that completes ``stop``.  Contexts of different lengths share one batch: a head
        common to all of them (``>= min_shared_prefix`` tokens) is encoded once and its KV cache
        copied into every row, and the padding goes between that head and each row's own tokens
        (positions come from the attention mask, so a row's outputs do not depend on its padding).
        Without a shared head the rows are left padded.  ``generate_kwargs`` go to ``model.generate``.
        """
        tok, model = self.tokenizer, self.model
        budgets = [max_new_tokens] * len(contexts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        out: list[Continuation] = [Continuation([], "length") for _ in contexts]
        todo = [i for i in range(len(contexts)) if budgets[i] > 0]
        if not todo:
            return out
        was_training = model.training
        model.eval()
        try:
            eos, pad = eos_ids(self.model, tok), tok.pad_token_id
            shared = common_prefix_len([contexts[i] for i in todo]) - 1  # every row keeps >= 1 token of its own
            shared = shared if self.min_shared_prefix and shared >= self.min_shared_prefix else 0
            prefix_cache = None
            if shared:
                prefix_cache = model(
                    input_ids=torch.tensor([contexts[todo[0]][:shared]], device=model.device), use_cache=True
                ).past_key_values
            todo.sort(key=lambda i: len(contexts[i]))  # similar lengths share a batch: less padding
            for start in range(0, len(todo), self.batch_size):
                rows = todo[start : start + self.batch_size]
                width = max(len(contexts[i]) for i in rows)
                ids, mask = [], []
                for i in rows:
                    c, gap = contexts[i], width - len(contexts[i])
                    ids.append(c[:shared] + [pad] * gap + c[shared:])
                    mask.append([1] * shared + [0] * gap + [1] * (len(c) - shared))
                stopper = _RowStop(tok, width, [budgets[i] for i in rows], stop)
                kwargs = self._sampling_kwargs(temperature, top_p, max(budgets[i] for i in rows))
                if prefix_cache is not None:
                    kwargs["past_key_values"] = copy.deepcopy(prefix_cache)
                    kwargs["past_key_values"].batch_repeat_interleave(len(rows))
                seqs = model.generate(
                    input_ids=torch.tensor(ids, device=model.device),
                    attention_mask=torch.tensor(mask, device=model.device),
                    stopping_criteria=StoppingCriteriaList([stopper]),
                    **kwargs,
                    **generate_kwargs,
                )
                for j, i in enumerate(rows):
                    out[i] = self._cut(seqs[j, width:].tolist(), budgets[i], stopper.stop_at[j], eos)
        finally:
            model.train(was_training)
        return out

    @staticmethod
    def _cut(gen: list[int], budget: int, stop_at: int | None, eos: set[int]) -> Continuation:
        ids: list[int] = []
        for t in gen[:budget]:
            ids.append(t)
            if t in eos:
                return Continuation(ids, "eos")
            if stop_at is not None and len(ids) == stop_at:
                return Continuation(ids, "stop")
        return Continuation(ids, "length")

    def _generate_shared(self, ids, shared, n, temperature, top_p, max_new_tokens) -> list[list[Sample]]:
        model, eos = self.model, eos_ids(self.model, self.tokenizer)
        prefix = torch.tensor([ids[0][:shared]], device=model.device)
        prefix_cache = model(input_ids=prefix, use_cache=True).past_key_values
        kwargs = self._sampling_kwargs(temperature, top_p, max_new_tokens)
        out: list[list[Sample] | None] = [None] * len(ids)
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(ids):
            by_len.setdefault(len(s), []).append(i)
        per_call = max(1, self.batch_size // n)
        for length, members in sorted(by_len.items()):
            for start in range(0, len(members), per_call):
                rows = members[start : start + per_call]
                batch = torch.tensor([ids[i] for i in rows for _ in range(n)], device=model.device)
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(batch.shape[0])
                seqs = model.generate(
                    input_ids=batch, attention_mask=torch.ones_like(batch), past_key_values=cache, **kwargs
                )
                for j, i in enumerate(rows):
                    out[i] = [
                        to_sample(self.tokenizer, ids[i], seqs[j * n + k, length:].tolist(), eos) for k in range(n)
                    ]
        return out

    def _generate_padded(self, prompts, n, temperature, top_p, max_new_tokens) -> list[list[Sample]]:
        tok, model = self.tokenizer, self.model
        eos = eos_ids(self.model, self.tokenizer)
        out: list[list[Sample]] = []
        per_call = max(1, self.batch_size // n)
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            reps = n if temperature > 0 else 1  # greedy: one decode, copied n times
            seqs = model.generate(
                **enc, num_return_sequences=reps, **self._sampling_kwargs(temperature, top_p, max_new_tokens)
            )
            width = enc["input_ids"].shape[1]
            for j in range(len(chunk)):
                mask = enc["attention_mask"][j].bool()
                prompt_ids = enc["input_ids"][j][mask].tolist()
                out.append(
                    [
                        to_sample(self.tokenizer, prompt_ids, seqs[j * reps + k % reps, width:].tolist(), eos)
                        for k in range(n)
                    ]
                )
        return out
