"""Train the device model to answer or escalate, within a cloud budget (GAPG + adaptive filtering + Lagrangian).

    accelerate launch train.py --config configs/cpu_default.yaml            # the CPU default, a few minutes
    accelerate launch train.py --config configs/cpu_default.yaml rl.budget=0.2 train.max_steps=40
    accelerate launch train.py --config configs/cpu_default.yaml --resume   # continue the last checkpoint
    python train.py --help                                                  # every option

One step, top to bottom (read ``step()``):
  1. take the next ``rl.rollout_prompts`` training problems (a seeded, resumable order);
  2. the environment (``rl.env``) samples G responses each and grades them: ``route``
     (envs/route.py) asks the cloud once per problem that needs it; ``query``
     (envs/query.py) answers ``<query>``s mid-generation, batched (cached on disk);
  3. rewards r̃ = r − γ·1{cloud} (route) or r̃ = r − γ·calls − γ_tok·cloud tokens (query)
     (rewards/collaboration.py, SPEC §3);
  4. adaptive prompt filtering keeps D1 and up to ρ|D1| D2 prompts (rl/filtering.py, SPEC §5);
  5. GAPG update on the device tokens (rl/gapg.py, SPEC §4);
  6. dual ascent on γ toward the budget: offload rate (route) or calls per rollout (query) (rl/lagrangian.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import replace

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from envs.query import QueryEnv
from envs.route import RouteEnv
from envs.tasks import load_problems, template_for
from eval import evaluate, evaluate_query, format_table
from policies.cloud import make_cloud
from policies.device import load_device_model
from policies.generation import HFGenerator
from rewards.collaboration import collaboration_reward, query_reward
from rl.config import ConfigError, format_help, load_config, rho, to_dict
from rl.filtering import select_prompts
from policies.generation import common_prefix_len
from rl.gapg import gapg_loss, group_advantages, score_sequences
from rl.lagrangian import DualVariable

log = logging.getLogger("train")


def problems_for_step(problems, step: int, count: int, seed: int):
    """The ``count`` problems of step ``step``: epochs of seeded permutations, so a resumed run sees the same data."""
    n = len(problems)
    perms: dict[int, list[int]] = {}  # a step spans at most two epochs: shuffle each once
    out = []
    for pos in range(step * count, (step + 1) * count):
        epoch, k = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = list(range(n))
            random.Random(f"{seed}-epoch-{epoch}").shuffle(perms[epoch])
        out.append(problems[perms[epoch][k]])
    return out


def latest_checkpoint(output_dir: str) -> str | None:
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return None
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(root) if d.startswith("step-") and os.path.exists(os.path.join(root, d, "trainer_state.json")))
    return os.path.join(root, f"step-{steps[-1]}") if steps else None


def save_checkpoint(accelerator, cfg, step: int, dual: DualVariable):
    path = os.path.join(cfg.train.output_dir, "checkpoints", f"step-{step}")
    accelerator.save_state(path)  # model, optimizer, RNG states of every process
    if accelerator.is_main_process:
        with open(os.path.join(path, "trainer_state.json"), "w") as f:  # written last: marks the checkpoint complete
            json.dump({"step": step, "gamma": dual.gamma}, f)
        root = os.path.dirname(path)
        done = sorted((int(d.split("-")[1]) for d in os.listdir(root) if d.startswith("step-")), reverse=True)
        for old in done[cfg.train.keep_checkpoints :]:
            shutil.rmtree(os.path.join(root, f"step-{old}"), ignore_errors=True)
    accelerator.wait_for_everyone()


def make_env(cfg, tok, cloud):
    """The environment ``rl.env`` names: route (answer or escalate) or query (ask mid-reasoning)."""
    if cfg.rl.env == "query":
        return QueryEnv(
            template_for(cfg.task), tok, cloud, cfg.rl.max_queries, cfg.rl.max_response_tokens, cfg.task.max_solve_steps,
            max_prompt_tokens=cfg.rl.max_prompt_tokens,
        )
    return RouteEnv(template_for(cfg.task), tok, cloud, cfg.task.max_solve_steps, max_prompt_tokens=cfg.rl.max_prompt_tokens)


def compute_rewards(groups, cfg, gamma: float):
    rc = cfg.reward
    for g in groups:
        if cfg.rl.env == "query":
            g.rewards = [
                query_reward(r.local_correct, r.escalated, r.cloud_correct, r.calls, r.cloud_tokens, rc.alpha_local, rc.alpha_cloud,
                             gamma, cfg.rl.gamma_tokens, rc.charge)
                for r in g.rollouts
            ]
        else:
            g.rewards = [
                collaboration_reward(r.escalated, r.local_correct, r.cloud_correct, rc.alpha_local, rc.alpha_cloud, gamma, rc.charge)
                for r in g.rollouts
            ]


def policy_update(model, optimizer, accelerator, groups, cfg, pad_id: int, zero_weight: bool = False) -> float:
    """One GAPG step on the picked groups: micro-batched forward/backward, then one optimizer step."""
    coefs = group_advantages(torch.tensor([g.rewards for g in groups], dtype=torch.float32)).flatten()
    if zero_weight:
        coefs.zero_()
    # (prompt, completion, per-token mask): the query mode's inserted cloud tokens are context only, never trained
    seqs = [(r.sample.prompt_ids, r.sample.completion_ids, r.sample.loss_mask) for g in groups for r in g.rollouts]
    keep = [i for i in range(len(seqs)) if coefs[i] != 0]  # zero-coefficient sequences add nothing to the gradient
    if not keep and accelerator.num_processes > 1:
        keep = [0]  # DDP: every process must join the gradient all-reduce; a zero coefficient adds nothing
    # a prompt head shared by every sequence (chat template, worked examples) is scored once;
    # DDP allows one forward per backward, so several processes score full sequences
    shared = common_prefix_len([seqs[i][0] for i in keep]) - 1 if keep and accelerator.num_processes == 1 else 0
    shared = shared if shared >= 32 else 0
    total = 0.0
    mbs = cfg.train.micro_batch_size
    for start in range(0, len(keep), mbs):
        idx = keep[start : start + mbs]
        last = start + mbs >= len(keep)
        ctx = accelerator.no_sync(model) if (not last and accelerator.num_processes > 1) else nullcontext()
        with ctx, accelerator.autocast():
            logps = score_sequences(model, [seqs[i] for i in idx], pad_id, accelerator.device, shared)
            loss = gapg_loss(logps, coefs[idx].to(accelerator.device), len(groups))
            accelerator.backward(loss)
        total += loss.item()
    if not torch.isfinite(torch.tensor(total)):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"GAPG loss is {total}: the update was skipped. Lower train.learning_rate or check rewards.")
    if cfg.train.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def rollout_metrics(groups) -> dict:
    rolls = [r for g in groups for r in g.rollouts]
    local = [r for r in rolls if not r.escalated]
    per_level = defaultdict(list)
    for g in groups:
        per_level[g.problem.level] += [r.escalated for r in g.rollouts]
    out = {
        "reward": sum(x for g in groups for x in g.rewards) / max(len(rolls), 1),
        "offload_rate": sum(r.escalated for r in rolls) / max(len(rolls), 1),
        "device_acc": sum(r.local_correct for r in local) / max(len(local), 1),
        "cloud_acc": sum(r.cloud_correct for r in rolls if r.escalated) / max(sum(r.escalated for r in rolls), 1),
        "truncated": sum(r.sample.truncated for r in rolls) / max(len(rolls), 1),
        "offload_by_level": {str(k): sum(v) / len(v) for k, v in sorted(per_level.items())},
    }
    if rolls and hasattr(rolls[0], "queries"):  # query mode: calls, queries and cloud tokens per rollout
        n = len(rolls)
        calls_level = defaultdict(list)
        for g in groups:
            calls_level[g.problem.level] += [r.calls for r in g.rollouts]
        out.update(
            calls_per_rollout=sum(r.calls for r in rolls) / n,
            queries_per_rollout=sum(r.num_queries for r in rolls) / n,
            refused_per_rollout=sum(r.refused for r in rolls) / n,
            cloud_tokens_per_rollout=sum(r.cloud_tokens for r in rolls) / n,
            query_rate=sum(r.num_queries > 0 for r in rolls) / n,
            acc=sum(r.correct for r in rolls) / n,
            unaided_acc=sum(r.unaided_correct for r in rolls) / max(sum(r.calls == 0 for r in rolls), 1),
            helped_acc=sum(r.local_correct for r in rolls if r.queries) / max(sum(bool(r.queries) for r in rolls), 1),
            calls_by_level={str(k): sum(v) / len(v) for k, v in sorted(calls_level.items())},
        )
    return out


def run_eval(tag, env, generator, test, cfg, accelerator):
    if not accelerator.is_main_process:
        return None
    run = evaluate_query if isinstance(env, QueryEnv) else evaluate
    rows, records = run(env, generator, test, cfg.rl.budget, cfg.train.eval_batch_size, cfg.train.eval_max_new_tokens, cfg.train.seed)
    cap = f"{cfg.rl.budget:g} calls per problem" if isinstance(env, QueryEnv) else f"{cfg.rl.budget:.0%}"
    tqdm.write(f"\n== held-out evaluation ({tag}, {len(test)} problems, budget {cap}) ==\n{format_table(rows)}\n")
    out = os.path.join(cfg.train.output_dir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(out, f"{tag}.samples.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return rows


def run_trl_baseline(cfg, resume: bool) -> int:
    """rl.trainer=trl_drgrpo (TRL GRPOTrainer, rl/trl_grpo.py) or dpo (TRL DPOTrainer, rl/dpo.py), evaluated as above."""
    from rl.dpo import train_with_dpo
    from rl.trl_grpo import train_with_trl

    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        with open(os.path.join(cfg.train.output_dir, "config.json"), "w") as f:
            json.dump(to_dict(cfg), f, indent=2)
    test_problems = load_problems(cfg.task)[1]

    def eval_model(tag, model, tok):
        cloud = make_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "cloud_cache.sqlite"))
        return run_eval(tag, make_env(cfg, tok, cloud), HFGenerator(model, tok), test_problems, cfg, accelerator)

    if cfg.train.eval_before and cfg.train.max_steps > 0 and not resume and accelerator.is_main_process:
        eval_model("before", *load_device_model(replace(cfg.model, lora=False), for_training=False))
    final = train_with_dpo(cfg, resume) if cfg.rl.trainer == "dpo" else train_with_trl(cfg, resume, eval_hook=eval_model)
    if accelerator.is_main_process:
        eval_model("final", *load_device_model(replace(cfg.model, name_or_path=final, gguf_file=None, lora=False), for_training=False))
        tqdm.write(f"saved the trained policy to {final}  (evaluate it: python eval.py --config <yaml> --model {final})")
    return 0


def init_wandb(cfg, accelerator):
    if not (cfg.train.wandb and accelerator.is_main_process):
        return None
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"  # never block on a login prompt
    try:
        import wandb

        return wandb.init(
            project=cfg.train.wandb_project,
            name=cfg.train.run_name or os.path.basename(os.path.normpath(cfg.train.output_dir)),
            group=cfg.train.wandb_group or None,
            config=to_dict(cfg),
            dir=cfg.train.output_dir,
        )
    except Exception as e:  # logging must never stop training
        log.warning("wandb disabled: %s", e)
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ap.add_argument("--config", default=None, help="YAML config (configs/*.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    ap.add_argument("-h", "--help", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    if args.help:
        ap.print_help()
        print("\nOptions (section.key=value):" + format_help())
        return 0
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cfg.rl.env == "lsrp":  # the cloud leads, the device answers with private data (lsrp/run.py)
        from lsrp.run import run_lsrp

        return run_lsrp(cfg)
    if cfg.rl.trainer in ("trl_drgrpo", "dpo"):  # TRL's own loops (Dr.GRPO baseline, DPO), same evaluation
        return run_trl_baseline(cfg, args.resume)

    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    set_seed(cfg.train.seed + accelerator.process_index)
    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    if accelerator.is_main_process:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(to_dict(cfg), f, indent=2)

    # Data, models, environment ------------------------------------------------------------
    try:
        train_problems, test_problems = load_problems(cfg.task)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, tok = load_device_model(cfg.model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = HFGenerator(accelerator.unwrap_model(model), tok)
    cloud = make_cloud(cfg.cloud, os.path.join(out, "cloud_cache.sqlite"))
    env = make_env(cfg, tok, cloud)
    dual = DualVariable(cfg.rl.gamma, cfg.rl.gamma_lr, cfg.rl.budget)
    rho_ = rho(cfg.rl.budget)

    start = 0
    if args.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            log.warning("--resume: no complete checkpoint in %s/checkpoints; starting from step 0", out)
        else:
            accelerator.load_state(ckpt)
            state = json.load(open(os.path.join(ckpt, "trainer_state.json")))
            start, dual.gamma = state["step"], state["gamma"]
            log.info("resumed from %s (step %d, gamma %.4f, %d cached cloud answers)", ckpt, start, dual.gamma, len(cloud))
    wb = init_wandb(cfg, accelerator)
    if start == 0 and cfg.train.eval_before and cfg.train.max_steps > 0:
        run_eval("before", env, generator, test_problems, cfg, accelerator)

    # The loop ------------------------------------------------------------------------------
    metrics_path = os.path.join(out, "metrics.jsonl")
    bar = tqdm(range(start, cfg.train.max_steps), initial=start, total=cfg.train.max_steps, desc="train", disable=not accelerator.is_main_process)
    for step in bar:
        t0 = time.time()
        problems = problems_for_step(train_problems, step, cfg.rl.rollout_prompts, cfg.train.seed)
        shard = problems[accelerator.process_index :: accelerator.num_processes]
        groups = env.rollout(generator, shard, cfg.rl.group_size, cfg.rl.temperature, cfg.rl.top_p, cfg.rl.max_new_tokens)
        t_roll = time.time() - t0
        compute_rewards(groups, cfg, dual.gamma)
        if cfg.rl.filtering:
            picked, fstats = select_prompts(groups, cfg.rl.batch_prompts, rho_, cfg.rl.d1_rule)
        else:
            picked, fstats = list(range(min(len(groups), cfg.rl.batch_prompts))), {}
        if picked:
            loss = policy_update(model, optimizer, accelerator, [groups[i] for i in picked], cfg, tok.pad_token_id)
        elif accelerator.num_processes > 1:  # DDP: join the all-reduce with a zero-weight pass
            loss = policy_update(model, optimizer, accelerator, groups[:1], cfg, tok.pad_token_id, zero_weight=True)
        else:
            loss = 0.0

        m = rollout_metrics(groups)
        # the constrained quantity: escalations per rollout (route: the offload rate) or calls per rollout (query)
        counts = torch.tensor([sum(r.calls for g in groups for r in g.rollouts), sum(len(g.rollouts) for g in groups)], dtype=torch.float64, device=accelerator.device)
        counts = accelerator.reduce(counts, reduction="sum")
        offload = (counts[0] / counts[1]).item()
        gamma_used = dual.gamma
        dual.update(offload)
        gen_tokens = sum(len(r.sample.completion_ids) for g in groups for r in g.rollouts)
        used = "calls" if cfg.rl.env == "query" else "offload"
        m["calls_per_rollout_global" if used == "calls" else "offload_rate_global"] = offload
        m.update(step=step + 1, loss=loss, gamma=gamma_used, gamma_next=dual.gamma, trained_prompts=len(picked),
                 rollout_tokens_per_s=gen_tokens / max(t_roll, 1e-9), step_time_s=time.time() - t0, cloud_calls_total=len(cloud), **{f"cloud_{k}": v for k, v in cloud.usage().items()}, **fstats)
        if accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(m) + "\n")
            bar.set_postfix({"reward": f"{m['reward']:.3f}", used: f"{offload:.2f}", "gamma": f"{gamma_used:.3f}"})
            tqdm.write(
                f"step {step + 1:>4} | reward {m['reward']:+.3f} | device acc {m['device_acc']:.3f} | {used} {offload:.3f} | "
                f"gamma {gamma_used:.3f} | D1 {fstats.get('d1', '-')} D2 {fstats.get('d2', '-')} | loss {loss:+.4f} | "
                f"{m['rollout_tokens_per_s']:.0f} tok/s | {m['step_time_s']:.1f}s"
            )
            if wb is not None:
                wb.log({k: v for k, v in m.items() if not isinstance(v, dict)} | {f"offload_level/{k}": v for k, v in m["offload_by_level"].items()}, step=step + 1)
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.max_steps:
            save_checkpoint(accelerator, cfg, step + 1, dual)
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.max_steps:
            run_eval(f"step-{step + 1}", env, generator, test_problems, cfg, accelerator)

    # The end: checkpoint, final model, held-out evaluation -----------------------------------
    if cfg.train.max_steps > start:
        save_checkpoint(accelerator, cfg, cfg.train.max_steps, dual)
    final = os.path.join(out, "final")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        to_save = unwrapped.merge_and_unload() if cfg.model.lora else unwrapped
        to_save.save_pretrained(final)
        tok.save_pretrained(final)
        if cfg.model.lora:  # merge_and_unload replaced the modules: evaluate the merged model
            generator = HFGenerator(to_save, tok)
    rows = run_eval("final", env, generator, test_problems, cfg, accelerator)
    if accelerator.is_main_process:
        tqdm.write(f"saved the trained policy to {final}  (evaluate it: python eval.py --config <yaml> --model {final})")
        if wb is not None and rows:
            wb.summary.update({f"final/{r['method']}/{k}": v for r in rows for k, v in r.items() if isinstance(v, float)})
            wb.finish()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
