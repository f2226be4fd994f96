"""Rollout overhead of the environment: ``RouteEnv.rollout`` (generation, grading, cloud) against raw HF ``generate``.

    python -m benchmarks.bench_rollout   # SmolLM2-135M, configs/cpu_default.yaml's G, prompts, tokens
    python -m benchmarks.bench_rollout --steps 8 rl.group_size=8 --json out.json

Each repetition takes the next training prompts (``problems_for_step``, seeded) and runs, in alternating order:
  * raw: one batched ``model.generate`` over the rendered prompts (left padding, ``num_return_sequences=G``),
    the env's sampling settings (temperature, top_p, top_k=0) -- what a hand-written loop would do;
  * env: ``RouteEnv.rollout(HFGenerator, ...)``: prompt rendering, generation (shared-prefix KV cache),
    grading of every response, and the cloud (simulated, through the SQLite answer cache, new problems
    every repetition so the calls are real).
Both force ``min_new_tokens = max_new_tokens`` (default; ``--free-length`` lets them stop at EOS), so both
generate exactly the same number of tokens, and both draw from the same seed.  Reported: seconds per
rollout and tokens/s for each; the env's total against raw generate; and the env's own work beyond
generation (prompt rendering, grading, cloud) as a share of its generation time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import (
    Timer,
    add_common_args,
    command_line,
    device_name,
    load_cfg,
    mean_std,
    setup_torch,
    table,
    write_json,
)


def raw_generate(model, tok, prompts, G, temperature, top_p, max_new_tokens, fixed: bool):
    """The plain batched HF call: left-padded prompts, G samples each. Returns the number of new tokens."""
    import torch

    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    kw = dict(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=G,
        pad_token_id=tok.pad_token_id,
    )
    if fixed:
        kw["min_new_tokens"] = max_new_tokens
    with torch.no_grad():
        out = model.generate(**enc, **kw)
    new = out[:, enc["input_ids"].shape[1] :]
    eos = set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    n = 0
    for row in new.tolist():  # tokens up to and including the first EOS, as HFGenerator counts them
        for t in row:
            n += 1
            if t in eos:
                break
    return n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, steps=6, warmup=1)
    ap.add_argument(
        "--free-length", action="store_true", help="let completions stop at EOS (default: exactly max_new_tokens)"
    )
    args, overrides = ap.parse_known_args(argv)
    threads = setup_torch(args)

    import torch

    from envs.route import RouteEnv
    from envs.simulation import task_cloud
    from envs.tasks import load_problems, template_for
    from policies.device import load_device_model
    from policies.generation import HFGenerator
    from rl.trainer import problems_for_step

    fixed = not args.free_length
    cfg = load_cfg(args, overrides)
    tmp = tempfile.mkdtemp(prefix="bench_rollout_")
    model, tok = load_device_model(cfg.model, for_training=False)
    model.eval()
    cloud = task_cloud(cfg.cloud, os.path.join(tmp, "cloud_cache.sqlite"))
    env = RouteEnv(
        template_for(cfg.task), tok, cloud, cfg.task.max_solve_steps, max_prompt_tokens=cfg.rl.max_prompt_tokens
    )
    gen = HFGenerator(model, tok, min_new_tokens=cfg.rl.max_new_tokens if fixed else 0)
    timer = Timer()
    timer.wrap(gen, "generate", "generation")
    train_problems, _ = load_problems(cfg.task)
    P, G, T = cfg.rl.rollout_prompts, cfg.rl.group_size, cfg.rl.max_new_tokens
    temp, top_p = cfg.rl.temperature, cfg.rl.top_p

    raw, envr = [], []
    for k in range(args.warmup + args.steps):
        problems = problems_for_step(train_problems, k, P, cfg.train.seed)
        seed = cfg.train.seed * 1000 + k

        def run_raw(problems=problems, seed=seed):
            t0 = time.perf_counter()
            prompts = [env.prompt(p) for p in problems]  # rendering is cheap; the raw loop needs the same text
            torch.manual_seed(seed)
            n = raw_generate(model, tok, prompts, G, temp, top_p, T, fixed)
            return {"total_s": time.perf_counter() - t0, "tokens": n}

        def run_env(problems=problems, seed=seed):
            cloud_before = cloud.usage()["calls"]
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            groups = env.rollout(gen, problems, G, temp, top_p, T)
            total = time.perf_counter() - t0
            ph = timer.take()
            return {
                "total_s": total,
                "generation_s": ph["generation"],
                "env_s": total - ph["generation"],
                "tokens": sum(len(r.sample.completion_ids) for g in groups for r in g.rollouts),
                "cloud_calls": cloud.usage()["calls"] - cloud_before,
            }

        first, second = (run_raw, run_env) if k % 2 == 0 else (run_env, run_raw)
        a, b = first(), second()
        r, e = (a, b) if first is run_raw else (b, a)
        if k >= args.warmup:
            raw.append(r)
            envr.append(e)
        print(
            f"rep {k + 1}: raw {r['total_s']:.2f}s ({r['tokens']} tok)  env {e['total_s']:.2f}s ({e['tokens']} tok, "
            f"{e['cloud_calls']} cloud calls){' (warm-up)' if k < args.warmup else ''}",
            flush=True,
        )

    ms = lambda xs: mean_std(xs)  # noqa: E731
    raw_t, env_t = ms([r["total_s"] for r in raw]), ms([e["total_s"] for e in envr])
    raw_tps, env_tps = ms([r["tokens"] / r["total_s"] for r in raw]), ms([e["tokens"] / e["total_s"] for e in envr])
    gen_t, extra_t = ms([e["generation_s"] for e in envr]), ms([e["env_s"] for e in envr])
    overhead_vs_raw = ms([(e["total_s"] - r["total_s"]) / r["total_s"] * 100 for r, e in zip(raw, envr)])
    env_work = ms([e["env_s"] / e["generation_s"] * 100 for e in envr])
    tok_raw, tok_env = ms([r["tokens"] for r in raw]), ms([e["tokens"] for e in envr])
    title = (
        f"== rollout: RouteEnv.rollout vs raw HF generate ==\nmodel {cfg.model.name_or_path}; {P} prompts x G={G}, "
        f"{T} new tokens{' (forced: min_new_tokens = max_new_tokens)' if fixed else ' (free length)'}, "
        f"T={temp}, top_p={top_p}; "
        f"simulated cloud with SQLite cache; {args.steps} reps after {args.warmup} warm-up; {device_name()}"
    )
    rows = [
        [
            "raw HF generate (padded batch)",
            f"{raw_t[0]:.2f} ± {raw_t[1]:.2f}",
            f"{raw_tps[0]:.1f} ± {raw_tps[1]:.1f}",
            f"{tok_raw[0]:.0f}",
            "-",
            "-",
        ],
        [
            "RouteEnv.rollout",
            f"{env_t[0]:.2f} ± {env_t[1]:.2f}",
            f"{env_tps[0]:.1f} ± {env_tps[1]:.1f}",
            f"{tok_env[0]:.0f}",
            f"{gen_t[0]:.2f}",
            f"{extra_t[0]:.3f}",
        ],
    ]
    print(
        "\n" + table(["path", "s/rollout", "tokens/s", "tokens", "generation s", "render+grade+cloud s"], rows, title)
    )
    print(
        f"\nRouteEnv.rollout vs raw generate: {overhead_vs_raw[0]:+.1f}% ± {overhead_vs_raw[1]:.1f}% wall time "
        f"(negative = faster: the env's generator computes the shared prompt head once)"
    )
    print(
        f"environment work beyond generation (render, grade, cloud): {env_work[0]:.2f}% ± {env_work[1]:.2f}% "
        "of its generation time"
    )
    result = {
        "benchmark": "rollout",
        "command": command_line(),
        "device": device_name(),
        "torch_threads": threads,
        "model": cfg.model.name_or_path,
        "prompts": P,
        "group_size": G,
        "max_new_tokens": T,
        "fixed_length": fixed,
        "raw_s": raw_t,
        "env_s": env_t,
        "raw_tokens_per_s": raw_tps,
        "env_tokens_per_s": env_tps,
        "env_generation_s": gen_t,
        "env_extra_s": extra_t,
        "overhead_vs_raw_pct": overhead_vs_raw,
        "env_work_pct_of_generation": env_work,
        "raw_reps": raw,
        "env_reps": envr,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
