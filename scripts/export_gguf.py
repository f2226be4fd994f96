"""Export a trained device policy to one GGUF file, the format llama.cpp (and Ollama, LM Studio) serve.

    python -m scripts.export_gguf outputs/cpu_default/final --out model.gguf            # f16 (default)
    python -m scripts.export_gguf outputs/cpu_default/final --out model.gguf --dtype f32
    python -m llama_cpp.server --model model.gguf --port 8080     # then: serve.py --device-url http://127.0.0.1:8080/v1

The checkpoint is loaded with transformers (a run's ``final/`` holds the merged weights; a folder with a LoRA
adapter, ``adapter_config.json``, is merged into its base first) and written with the ``gguf`` package: the Llama
architecture (SmolLM2's; the tiny test model's), each tensor under llama.cpp's name (``gguf.get_tensor_name_map``),
the query and key projections permuted to llama.cpp's rotary layout (transformers' GGUF loader undoes it), norms in
f32, the other matrices in ``--dtype``; the tokenizer as a byte-level BPE (``tokenizer.ggml.model = gpt2``) with its
merges, special tokens as control tokens, and the chat template.  transformers reads the file back with
``from_pretrained(folder, gguf_file=name)`` (tests/test_export_gguf.py checks the greedy answers agree).

No quantised types: f32 is exact; f16 rounds each weight to 11 significant bits, which moves logits by about 1e-3
of their scale, so a greedy answer can change only where the two best tokens are that close.  llama.cpp's own
``llama-quantize`` turns the f16 file into q8_0/q4 for a smaller device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

DTYPES = ("f32", "f16")


def load_merged(path: str):
    """(model, tokenizer) of a checkpoint, a LoRA adapter merged into its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def byte_level(text: str) -> str:
    """``text`` in the byte-level alphabet of GPT-2's BPE (a space is ``Ġ``, a newline ``Ċ``)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def tokenizer_tables(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for GGUF's gpt2 tokenizer model.  A byte-level BPE keeps its vocab and merges;
    a WordLevel tokenizer of single characters (the tiny test model's) becomes a BPE with no merges over those
    characters, written in the byte-level alphabet, its longer tokens (``<unknown>``) user-defined ones, matched
    whole: it splits text the same way."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    vocab = model["vocab"]
    special = {t["content"] for t in spec.get("added_tokens", [])}
    n = max(max(vocab.values()), max((t["id"] for t in spec.get("added_tokens", [])), default=-1)) + 1
    by_id = {i: t for t, i in vocab.items()}
    for t in spec.get("added_tokens", []):
        by_id[t["id"]] = t["content"]
    byte_level_bpe = model["type"] == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    if model["type"] == "BPE" and not byte_level_bpe:
        raise ValueError("a BPE tokenizer that is not byte-level (SentencePiece-style): not supported by this export")
    if model["type"] not in ("BPE", "WordLevel"):
        raise ValueError(f"tokenizer model {model['type']}: this export writes byte-level BPE or WordLevel ones")
    tokens, types = [], []
    for i in range(n):
        t = by_id.get(i, f"[PAD{i}]")
        if t in special or t == model.get("unk_token"):
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL)
        elif not byte_level_bpe and len(t) > 1:  # a WordLevel token of several characters: matched whole
            tokens.append(byte_level(t))
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t if byte_level_bpe else byte_level(t))
            types.append(gguf.TokenType.NORMAL)
    merges = model.get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return tokens, types, merges


def export(model, tokenizer, out: str, dtype: str = "f16", name: str = "cloudroute-device") -> str:
    """Write ``model`` (a Llama-architecture causal LM) and ``tokenizer`` to ``out`` (see the module docstring)."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"model type {cfg.model_type!r}: this export writes the llama architecture (SmolLM2) only")
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    w = gguf.GGUFWriter(out, "llama")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    tokens, types, merges = tokenizer_tables(tokenizer)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    else:  # no merges (a single-character vocabulary): readers derive them from the scores, and find none to make
        w.add_token_scores([0.0] * len(tokens))
    for setter, tok_id in (
        (w.add_bos_token_id, tokenizer.bos_token_id),
        (w.add_eos_token_id, tokenizer.eos_token_id),
        (w.add_pad_token_id, tokenizer.pad_token_id),
        (w.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if tok_id is not None:
            setter(int(tok_id))
    w.add_add_bos_token(False)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    state = model.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reads the embedding when there is no output.weight
        if "rotary_emb" in hf_name:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = tensor.detach().float()
        if hf_name.endswith("q_proj.weight"):
            data = permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute(data, n_head, n_kv)
        array = data.numpy()
        if dtype == "f16" and array.ndim > 1:
            array = array.astype(np.float16)
        w.add_tensor(gguf_name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def permute(weights: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """llama.cpp's rotary layout of a query/key projection (its convert_hf_to_gguf.py ``LlamaModel.permute``):
    each head's two halves interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="the trained checkpoint (a run's final/), or a LoRA adapter folder")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    ap.add_argument("--dtype", default="f16", choices=DTYPES, help="type of the weight matrices (norms stay f32)")
    ap.add_argument("--name", default=None, help="the model's name in the file (default: the run's folder)")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.checkpoint):
        print(
            f"error: {args.checkpoint} is not a folder: pass a checkpoint such as outputs/cpu_default/final",
            file=sys.stderr,
        )
        return 2
    model, tokenizer = load_merged(args.checkpoint)
    parts = os.path.normpath(args.checkpoint).split(os.sep)
    name = args.name or (parts[-2] if parts[-1] == "final" and len(parts) > 1 else parts[-1])
    try:
        export(model, tokenizer, args.out, args.dtype, name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
