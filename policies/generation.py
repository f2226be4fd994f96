"""Generation backends behind one small interface: ``generate(prompts, n, ...) -> [[Sample]*n]*len(prompts)``.

``HFGenerator`` batches HF ``model.generate`` (left padding, ``num_return_sequences``);
a vLLM backend can sit behind the same call.  Prompts are chat-formatted with the
tokenizer's own template; a sample keeps its prompt and completion token ids so
the trainer scores exactly the tokens that were sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]  # device tokens, EOS included when it stopped on EOS
    text: str  # decoded completion without special tokens
    truncated: bool  # hit max_new_tokens without EOS


def chat_prompt(tokenizer, user_text: str | list[dict], system: str | None = None) -> str:
    """The tokenizer's chat template applied to a user message (or a full message list)."""
    if isinstance(user_text, str):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    else:
        messages = user_text
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n"


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

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])

    def _to_sample(self, prompt_ids: list[int], gen: list[int], eos_ids: set[int]) -> Sample:
        ids, stopped = [], False
        for t in gen:
            ids.append(t)
            if t in eos_ids:
                stopped = True
                break
        return Sample(prompt_ids, ids, self.tokenizer.decode(ids, skip_special_tokens=True), truncated=not stopped)

    def _generate_shared(self, ids, shared, n, temperature, top_p, max_new_tokens) -> list[list[Sample]]:
        import copy

        model, eos_ids = self.model, self._eos_ids()
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
                seqs = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), past_key_values=cache, **kwargs)
                for j, i in enumerate(rows):
                    out[i] = [self._to_sample(ids[i], seqs[j * n + k, length:].tolist(), eos_ids) for k in range(n)]
        return out

    def _generate_padded(self, prompts, n, temperature, top_p, max_new_tokens) -> list[list[Sample]]:
        tok, model = self.tokenizer, self.model
        eos_ids = self._eos_ids()
        out: list[list[Sample]] = []
        per_call = max(1, self.batch_size // n)
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            reps = n if temperature > 0 else 1  # greedy: one decode, copied n times
            seqs = model.generate(**enc, num_return_sequences=reps, **self._sampling_kwargs(temperature, top_p, max_new_tokens))
            width = enc["input_ids"].shape[1]
            for j in range(len(chunk)):
                mask = enc["attention_mask"][j].bool()
                prompt_ids = enc["input_ids"][j][mask].tolist()
                out.append([self._to_sample(prompt_ids, seqs[j * reps + k % reps, width:].tolist(), eos_ids) for k in range(n)])
        return out
