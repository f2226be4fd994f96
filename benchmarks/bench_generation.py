"""Rollout generation against the machine's limit: our ``HFGenerator`` against HF ``generate`` and an older rollout.

    python -m benchmarks.bench_generation                                   # SmolLM2-135M, 8 prompts x G=4 x 64 tokens
    python -m benchmarks.bench_generation task.name=math                    # zero-shot MATH prompts (MATH-500 file)
    python -m benchmarks.bench_generation --against 74a3af2 --json out.json # also time the rollout of a git revision

Each repetition takes the next training prompts (``problems_for_step``, seeded), renders them with the
environment's template, and generates G samples of each, every completion forced to exactly
``rl.max_new_tokens`` tokens, on every path in turn (the order rotates each repetition, so a change in
machine load slows all paths alike):

  * ``hf_generate``: one HF ``model.generate`` over the P x G prompt rows, left padded: the call TRL's
    ``GRPOTrainer`` makes when it does not use vLLM (it repeats each prompt G times in its batch);
  * ``ours@REV`` (``--against REV``): ``policies/generation.py`` as it was at git revision REV;
  * ``ours``: ``HFGenerator`` as ``train.py`` uses it (exact sampling from the fp32 policy);
  * ``ours bf16`` (``--bf16``, default on where the CPU has bf16 matmuls or on a GPU): ``HFGenerator(dtype=
    "bfloat16")``; it then scores its samples under the fp32 policy and prints the log-prob mismatch per
    token, as TRL and verl report it for vLLM rollouts;
  * ``vllm (bf16)`` (``--vllm``, on a GPU with vLLM installed): vLLM's offline engine on the same weights.

**The roofline.**  The benchmark measures the machine before and after the paths (the better of the two
counts): memory bandwidth (a 1 GiB tensor copy) and the peak matmul rate (a large GEMM in each dtype).  A
decode step at batch B must read every weight once (``bytes`` = parameters x dtype size) and do
2 x parameters x B FLOPs, so it cannot take less than
max(bytes / bandwidth, FLOPs / peak).  The prompt prefill needs 2 x parameters FLOPs per distinct prompt
token.  The *roofline time* of a rollout is that prefill plus T decode steps at B = P x G rows; a path's
*fraction of the roofline* is roofline time / its measured time (1.0 = the hardware limit; attention and the
KV cache, which the bound leaves out, are small at these lengths).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import (
    ROOT,
    add_common_args,
    command_line,
    device_name,
    load_cfg,
    mean_std,
    setup_torch,
    table,
    write_json,
)


def cpu_has_bf16() -> bool:
    """Does this CPU multiply bfloat16 natively (AVX-512 BF16 or AMX)?  Read from /proc/cpuinfo (Linux)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_limits(device: str) -> dict:
    """Memory bandwidth (bytes/s, a 1 GiB copy: read + write) and peak matmul FLOP/s in float32 and bfloat16."""
    import torch

    def best(fn, reps=5):
        fn()
        times = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return min(times)

    pair = [torch.empty(2**28, dtype=torch.float32, device=device) for _ in range(2)]  # 1 GiB each
    bandwidth = 2 * pair[0].numel() * 4 / best(lambda: pair[1].copy_(pair[0]))
    pair.clear()
    out = {"bandwidth": bandwidth}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        # a CPU without bf16 matmul units emulates them, ~100x slower: a smaller product measures its rate as well
        n = 8192 if device != "cpu" else (512 if dtype == torch.bfloat16 and not cpu_has_bf16() else 2048)
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out[f"flops_{name}"] = 2 * n**3 / best(lambda a=a, b=b: a @ b, reps=3)
    return out


def roofline_seconds(limits: dict, params: int, dtype: str, prefill_tokens: int, rows: int, steps: int) -> float:
    """The least time the hardware needs: prefill FLOPs, then ``steps`` decode steps at ``rows`` rows."""
    bytes_per_param = 2 if dtype == "bfloat16" else 4
    peak = limits[f"flops_{dtype}"]
    decode_step = max(params * bytes_per_param / limits["bandwidth"], 2 * params * rows / peak)
    return 2 * params * prefill_tokens / peak + steps * decode_step


def load_generation_at(rev: str):
    """``policies/generation.py`` as it was at git revision ``rev``, imported as a module of its own."""
    src = subprocess.run(
        ["git", "-C", ROOT, "show", f"{rev}:policies/generation.py"], capture_output=True, text=True, check=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="bench_gen_"), f"generation_{rev}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f"generation_at_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def older_generator(module, model, tok, min_new_tokens: int):
    """``module.HFGenerator`` with every completion forced to ``min_new_tokens``: through its constructor where it
    takes that argument, else through ``model.generation_config`` (read by the HF ``generate`` it then calls)."""
    import inspect

    if "min_new_tokens" in inspect.signature(module.HFGenerator.__init__).parameters:
        return module.HFGenerator(model, tok, min_new_tokens=min_new_tokens)
    model.generation_config.min_new_tokens = min_new_tokens or None
    return module.HFGenerator(model, tok)


def hf_generate(model, tok, prompts, G, temperature, top_p, T) -> int:
    """TRL's non-vLLM generation: the P x G prompt rows left padded, one ``generate`` call. Returns new tokens."""
    import torch

    rows = [p for p in prompts for _ in range(G)]
    enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=temperature > 0,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=T,
            min_new_tokens=T,
            pad_token_id=tok.pad_token_id,
        )
    return int(out[:, enc["input_ids"].shape[1] :].numel())


def vllm_path(cfg, G, temperature, top_p, T, device):
    """vLLM's offline engine on the same weights (bf16), or None (with a note) where vLLM cannot run."""
    from trl.import_utils import is_vllm_available

    if device != "cuda" or not is_vllm_available():
        print('vLLM path skipped: it needs a GPU and `pip install -e ".[gpu]"`', flush=True)
        return None
    from vllm import LLM, SamplingParams

    from policies.device import resolve_model_path

    path = resolve_model_path(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.cache_dir)
    llm = LLM(model=path, dtype="bfloat16", gpu_memory_utilization=0.35, seed=cfg.train.seed)
    params = SamplingParams(n=G, temperature=temperature, top_p=top_p, max_tokens=T, min_tokens=T)

    def run(prompts) -> int:
        outs = llm.generate(prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    return run


def logprob_mismatch(model, samples, pad_id, device) -> dict:
    """Mean and max |log p_fp32(token) - log p_bf16(token)| over the sampled tokens, and the mean of the
    per-sequence importance ratio exp(sum of differences) (1.0 = no bias), scoring with the fp32 policy and
    the bf16 copy that sampled them."""
    import copy

    import torch

    from rl.gapg import collate

    seqs = [(s.prompt_ids, s.completion_ids) for s in samples]
    ids, attn, mask = collate(seqs, pad_id)
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    low = copy.deepcopy(model)
    for p in low.parameters():
        p.data = p.data.to(torch.bfloat16)

    def token_logprobs(m):
        with torch.no_grad():
            logits = m(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    diff = (token_logprobs(model) - token_logprobs(low)) * mask[:, 1:]
    n = mask[:, 1:].sum()
    per_seq = diff.sum(-1)
    return {
        "mean_abs_token": float(diff.abs().sum() / n),
        "max_abs_token": float(diff.abs().max()),
        "seq_ratio_mean": float(per_seq.exp().mean()),
        "seq_ratio_min": float(per_seq.exp().min()),
        "seq_ratio_max": float(per_seq.exp().max()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, steps=3, warmup=1)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per rollout (P)")
    ap.add_argument("--against", default=None, help="also time policies/generation.py at this git revision")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="time the bf16 rollout copy")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF generate path")
    ap.add_argument("--vllm", action="store_true", help="also time vLLM's offline engine (GPU, when installed)")
    args, overrides = ap.parse_known_args(argv)
    threads = setup_torch(args)
    if not any(o.startswith("rl.max_new_tokens=") for o in overrides):
        overrides.append("rl.max_new_tokens=64")

    import torch

    from envs.tasks import load_problems
    from policies.device import load_device_model
    from policies.generation import HFGenerator
    from rl.trainer import make_env, problems_for_step

    cfg = load_cfg(args, overrides, extra=["train.wandb=false"])
    P, G, T = args.prompts, cfg.rl.group_size, cfg.rl.max_new_tokens
    temperature, top_p = cfg.rl.temperature, cfg.rl.top_p
    model, tok = load_device_model(cfg.model, for_training=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    env = make_env(cfg, tok, None)
    train, _ = load_problems(cfg.task)
    reps = args.warmup + args.steps
    prompt_sets = [[env.prompt(p) for p in problems_for_step(train, k, P, cfg.train.seed)] for k in range(reps)]

    print(f"measuring the machine ({device_name()}) ...", flush=True)
    limits = machine_limits(device)
    cpu_bf16 = (
        device == "cpu" and "avx512_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    )
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and (device == "cuda" or cpu_bf16))

    paths = {}
    if not args.no_hf:
        paths["hf_generate (TRL's path)"] = (
            "float32",
            lambda ps: hf_generate(model, tok, ps, G, temperature, top_p, T),
        )
    if args.against:
        old = load_generation_at(args.against)
        old_gen = older_generator(old, model, tok, T)

        def run_old(ps):
            model.generation_config.min_new_tokens = T if not hasattr(old_gen, "min_new_tokens") else None
            try:
                return sum(len(s.completion_ids) for g in old_gen.generate(ps, G, temperature, top_p, T) for s in g)
            finally:
                model.generation_config.min_new_tokens = None

        paths[f"ours@{args.against}"] = ("float32", run_old)
    ours = HFGenerator(model, tok, min_new_tokens=T)
    paths["ours"] = (
        "float32",
        lambda ps: sum(len(s.completion_ids) for g in ours.generate(ps, G, temperature, top_p, T) for s in g),
    )
    bf16_samples = []
    if use_bf16:
        ours_bf16 = HFGenerator(model, tok, dtype="bfloat16", min_new_tokens=T)

        def run_bf16(ps):
            groups = ours_bf16.generate(ps, G, temperature, top_p, T)
            bf16_samples[:] = [s for g in groups for s in g]
            return len(bf16_samples) * T

        paths["ours bf16"] = ("bfloat16", run_bf16)

    if args.vllm:
        vllm_run = vllm_path(cfg, G, temperature, top_p, T, device)
        if vllm_run is not None:
            paths["vllm (bf16)"] = ("bfloat16", vllm_run)

    records = {name: [] for name in paths}
    print("timing the paths ...", flush=True)
    names = list(paths)
    for k, prompts in enumerate(prompt_sets):
        order = names[k % len(names) :] + names[: k % len(names)]
        line = []
        for name in order:
            torch.manual_seed(cfg.train.seed + k)
            t = time.perf_counter()
            tokens = paths[name][1](prompts)
            dt = time.perf_counter() - t
            if k >= args.warmup:
                records[name].append({"seconds": dt, "tokens": tokens})
            line.append(f"{name} {dt:.2f}s")
        print(f"rep {k + 1}/{reps}{' (warm-up)' if k < args.warmup else ''}: " + "  ".join(line), flush=True)

    after = machine_limits(device)  # again at the end: the best of the two is the machine's (a busy moment lowers one)
    limits = {k: max(v, after[k]) for k, v in limits.items()}
    params = sum(p.numel() for p in model.parameters())
    prompt_tokens = [sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in ps) for ps in prompt_sets]
    rows_out, result_paths = [], {}
    for name, recs in records.items():
        dtype = paths[name][0]
        secs = [r["seconds"] for r in recs]
        tps = [r["tokens"] / r["seconds"] for r in recs]
        fracs = [
            roofline_seconds(limits, params, dtype, prompt_tokens[args.warmup + i], P * G, T) / r["seconds"]
            for i, r in enumerate(recs)
        ]
        (sm, ss), (tm, ts), (fm, fs) = mean_std(secs), mean_std(tps), mean_std(fracs)
        result_paths[name] = {
            "seconds": sm,
            "seconds_std": ss,
            "tokens_per_s": tm,
            "tokens_per_s_std": ts,
            "roofline_fraction": fm,
            "roofline_fraction_std": fs,
            "dtype": dtype,
        }
        rows_out.append([name, dtype, f"{sm:.2f} ± {ss:.2f}", f"{tm:.1f} ± {ts:.1f}", f"{fm:.2f} ± {fs:.2f}"])
    base = result_paths.get("ours@" + str(args.against)) if args.against else None
    speed_rows = []
    for r in result_paths.values():
        ref = base or result_paths.get("hf_generate (TRL's path)")
        speed_rows.append(r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan"))
    for row, s in zip(rows_out, speed_rows):
        row.append(f"{s:.2f}x")
    ref_name = f"ours@{args.against}" if args.against else "hf_generate"
    title = (
        f"== rollout generation: {P} prompts x G={G} x {T} tokens (fixed length), task {cfg.task.name}, "
        f"model {cfg.model.name_or_path} ({params / 1e6:.0f}M params); {args.steps} reps after {args.warmup} "
        f"warm-up; {device_name()} ==\n"
        f"machine: bandwidth {limits['bandwidth'] / 1e9:.1f} GB/s, matmul peak {limits['flops_float32'] / 1e9:.0f} "
        f"GFLOP/s fp32, {limits['flops_bfloat16'] / 1e9:.0f} GFLOP/s bf16; mean prompt "
        f"{sum(prompt_tokens) / len(prompt_tokens) / P:.0f} tokens"
    )
    headers = ["path", "weights", "s/rollout", "completion tok/s", "fraction of roofline", f"tok/s vs {ref_name}"]
    print("\n" + table(headers, rows_out, title))
    result = {
        "benchmark": "generation",
        "command": command_line(),
        "device": device_name(),
        "torch_threads": threads,
        "model": cfg.model.name_or_path,
        "task": cfg.task.name,
        "params": params,
        "prompts": P,
        "group_size": G,
        "max_new_tokens": T,
        "limits": limits,
        "paths": result_paths,
        "records": records,
    }
    if bf16_samples:
        mm = logprob_mismatch(model, bf16_samples, tok.pad_token_id, device)
        result["bf16_logprob_mismatch"] = mm
        print(
            f"\nbf16 rollouts scored by the fp32 policy: |Δ log p| per token {mm['mean_abs_token']:.4f} mean, "
            f"{mm['max_abs_token']:.3f} max; per-sequence ratio p_fp32/p_bf16 {mm['seq_ratio_mean']:.3f} mean "
            f"[{mm['seq_ratio_min']:.3f}, {mm['seq_ratio_max']:.3f}] ({len(bf16_samples)} sequences of the last rep)"
        )
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
