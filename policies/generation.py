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


class HFGenerator:
    """Batched sampling with ``transformers`` ``generate``; greedy when ``temperature == 0``."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

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
        eos_ids = model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids if eos_ids is not None else tok.eos_token_id])
        out: list[list[Sample]] = []
        per_call = max(1, self.batch_size // n)
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            kwargs = dict(max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id)
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            seqs = model.generate(**enc, **kwargs)
            width = enc["input_ids"].shape[1]
            for j in range(len(chunk)):
                mask = enc["attention_mask"][j].bool()
                prompt_ids = enc["input_ids"][j][mask].tolist()
                group = []
                for k in range(n):
                    gen = seqs[j * n + k, width:].tolist()
                    ids, stopped = [], False
                    for t in gen:
                        ids.append(t)
                        if t in eos_ids:
                            stopped = True
                            break
                    text = tok.decode(ids, skip_special_tokens=True)
                    group.append(Sample(prompt_ids, ids, text, truncated=not stopped))
                out.append(group)
        model.train(was_training)
        return out
