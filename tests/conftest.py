"""Shared fixtures: a tiny randomly initialised Llama with a character-level tokenizer, built in the test."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIALS = ["<|im_start|>", "<|im_end|>", "<pad>", "<unknown>", "</unknown>", "\\boxed"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(path: str, seed: int = 0, family: str = "llama") -> str:
    """Save a 2-layer model (hidden 32) of ``family`` and a char-level tokenizer to ``path``; return ``path``.

    family: llama (SmolLM2's architecture, LlamaForCausalLM) or qwen2 (Qwen2.5's, Qwen2ForCausalLM: biased q/k/v)."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    families = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if family not in families:
        raise ValueError(f"family={family!r}: use one of {', '.join(families)}")

    chars = sorted(set("0123456789+-*/=.,?!:;()[]{}<>_ \nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\\\"'$|"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + ["[UNK]"] + chars)}
    special_re = "|".join(s.replace("|", "\\|").replace("\\b", "\\\\b") for s in SPECIALS)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(f"{special_re}|."), behavior="isolated")
    from tokenizers import decoders

    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="[UNK]"
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config_cls, model_cls = families[family]
    cfg = config_cls(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=True,
    )
    model = model_cls(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_math_files(folder, sizes: dict) -> str:
    """MATH-format JSONL files in ``folder`` ({file name: number of rows}; problem, solution ending in a boxed
    answer), for tests that must run in a checkout without ../shared/data beside it.  Returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for name, n in sizes.items():
        rows = [{"problem": f"What is {i} + {i + 1}?", "solution": f"\\boxed{{{2 * i + 1}}}"} for i in range(n)]
        with open(os.path.join(folder, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(folder)


def score_with_grads(model, seqs, coef, shared_prefix: int):
    """rl.gapg.score_sequences, then backward of (coef · log-probs): (log-probs, {param: grad}) for exactness tests."""
    from rl.gapg import score_sequences

    model.zero_grad()
    lp = score_sequences(model, seqs, pad_id=0, device="cpu", shared_prefix=shared_prefix)
    (coef * lp).sum().backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))
