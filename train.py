"""Train the device model to answer or escalate, within a cloud budget (GAPG + adaptive filtering + Lagrangian).

    accelerate launch train.py --config configs/cpu_default.yaml            # the CPU default, a few minutes
    accelerate launch train.py --config configs/cpu_default.yaml rl.budget=0.2 train.max_steps=40
    accelerate launch train.py --config configs/cpu_default.yaml --resume   # continue the last checkpoint
    accelerate launch train.py --config configs/cpu_sft.yaml                # rl.trainer=sft: task tuning (tuning/sft.py)
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
import math
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import replace
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, gather_object, set_seed
from tqdm.auto import tqdm

from envs.query import QueryEnv
from envs.route import RouteEnv
from envs.tasks import load_problems, template_for
from envs.evaluation import evaluate, evaluate_query, format_table
from policies.cloud import CloudError, make_cloud
from policies.device import load_device_model
from policies.generation import HFGenerator
from rewards.collaboration import collaboration_reward, query_reward
from rl.config import ConfigError, format_help, load_config, rho, save_config, to_dict
from rl.filtering import select_prompts
from policies.generation import common_prefix_len
from rl.gapg import gapg_loss, group_advantages, score_sequences
from rl.lagrangian import DualVariable
from rl.trl_run import wandb_offline_unless_configured
from trl.models.utils import unwrap_model_for_generation

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


def truncate_metrics(path: str, last_step: int) -> int:
    """Keep the metrics.jsonl lines of steps <= ``last_step`` (the checkpoint a run resumes from): the steps after it
    are run again, so their old lines (from a killed run) would appear twice.  A line torn by the kill is dropped too.
    Returns how many lines were dropped."""
    if not os.path.exists(path):
        return 0
    keep, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                dropped += 1
                continue
            if step <= last_step:
                keep.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        log.info("metrics.jsonl: dropped %d line(s) after step %d (they are run again)", dropped, last_step)
    return dropped


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


def rollout_step(env, generator, problems, step: int, cfg, accelerator):
    """Roll out this process's contiguous share of the step's problems; return every process's groups, in order.

    Every process ends with the same global list, so the filtering, the update batch and γ are computed over
    all of them and N processes make the update 1 process makes on the same global batch.
    ``rl.seed_per_prompt`` samples each prompt's group alone, seeded by its position in the step, so the
    samples too do not depend on the number of processes."""
    rl = cfg.rl
    with accelerator.split_between_processes(list(enumerate(problems))) as mine:
        if rl.seed_per_prompt:
            groups = []
            for pos, problem in mine:
                torch.manual_seed(random.Random(f"{cfg.train.seed}-{step}-{pos}").getrandbits(63))
                groups += env.rollout(generator, [problem], rl.group_size, rl.temperature, rl.top_p, rl.max_new_tokens)
        else:
            groups = env.rollout(generator, [p for _, p in mine], rl.group_size, rl.temperature, rl.top_p, rl.max_new_tokens)
    return gather_object(groups) if accelerator.num_processes > 1 else groups


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


class SkippedUpdates:
    """Updates skipped because the loss or the gradient norm was not finite (NaN/inf).

    ``policy_update`` calls ``skip`` instead of stepping the optimizer: the gradients are dropped, the weights stay as
    they were, a warning names the cause, and ``total`` goes into metrics.jsonl as ``skipped_updates``.  More than
    ``limit`` in a row (``train.max_skipped_updates``; 0 = stop at the first) stops the run with ``FloatingPointError``."""

    def __init__(self, limit: int):
        self.limit, self.total, self.in_a_row = limit, 0, 0

    def skip(self, what: str):
        self.total += 1
        self.in_a_row += 1
        fix = ("Lower train.learning_rate, check the rewards (reward.*), or use train.mixed_precision=no or bf16 "
               "instead of fp16; --resume restarts from the last checkpoint.")
        if self.in_a_row > self.limit:
            raise FloatingPointError(
                f"{what}: {self.in_a_row} update(s) in a row skipped, more than train.max_skipped_updates={self.limit}; "
                f"the run stops. {fix}"
            )
        log.warning("%s: this update is skipped (%d in a row, %d in total; the run stops after more than "
                    "train.max_skipped_updates=%d in a row). %s", what, self.in_a_row, self.total, self.limit, fix)

    def ok(self):
        self.in_a_row = 0


def policy_update(model, optimizer, accelerator, groups, cfg, pad_id: int, skipped: SkippedUpdates | None = None) -> float:
    """One GAPG step on the picked groups (the same list on every process): each process scores every
    W-th sequence, micro-batched, and the gradients meet in one all-reduce and one optimizer step.

    A non-finite loss or gradient norm skips the optimizer step on every process alike and is counted in
    ``skipped``; without ``skipped`` it raises ``FloatingPointError`` at once."""
    coefs = group_advantages(torch.tensor([g.rewards for g in groups], dtype=torch.float32)).flatten()
    # (prompt, completion, per-token mask): the query mode's inserted cloud tokens are context only, never trained
    seqs = [(r.sample.prompt_ids, r.sample.completion_ids, r.sample.loss_mask) for g in groups for r in g.rollouts]
    keep = [i for i in range(len(seqs)) if coefs[i] != 0]  # zero-coefficient sequences add nothing to the gradient
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = keep[rank::world]
    mbs = cfg.train.micro_batch_size
    # Every process runs the same number of micro-batches (backward passes): DDP all-reduces on the last one, and
    # ZeRO-2/3 communicate on every backward, so an uneven count hangs or mixes gradients.  Rank 0 holds the most
    # sequences; a process with fewer pads with zero-weight passes (and joins even when it has none to score).
    n_micro = -(-len(keep[0::world]) // mbs)
    if world > 1:
        n_micro = max(n_micro, 1)
    pad = keep[:1] or [0]  # a zero-weight pass scores any one sequence with coefficient 0
    # DDP and DeepSpeed average gradients over W processes: dividing by |batch|/W gives the global mean (SPEC §4)
    num_prompts = len(groups) / world
    # a prompt head shared by every sequence (chat template, worked examples) is scored once;
    # DDP allows one forward per backward, so several processes score full sequences
    shared = common_prefix_len([seqs[i][0] for i in mine]) - 1 if mine and world == 1 else 0
    shared = shared if shared >= 32 else 0
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    total = 0.0
    for k in range(n_micro):
        idx = mine[k * mbs : (k + 1) * mbs]
        weight = coefs[idx] if idx else torch.zeros(1)
        idx = idx or pad
        last = k == n_micro - 1
        # gradients are all-reduced on the last micro-batch only; DeepSpeed steps there too (ZeRO-2/3 have no no_sync)
        ctx = accelerator.no_sync(model) if (not last and world > 1 and not deepspeed) else nullcontext()
        if deepspeed:
            accelerator.gradient_state._set_sync_gradients(last)
        with ctx, accelerator.autocast():
            logps = score_sequences(model, [seqs[i] for i in idx], pad_id, accelerator.device, shared)
            loss = gapg_loss(logps, weight.to(accelerator.device), num_prompts)
            accelerator.backward(loss)
        total += loss.item()
    if world > 1:  # the logged loss is the global one: the mean of the processes' W-scaled partial sums
        total = accelerator.reduce(torch.tensor(total, device=accelerator.device), reduction="mean").item()
    # the reduced loss (and the all-reduced gradients' norm) is the same on every process: they skip together
    skipped = skipped if skipped is not None else SkippedUpdates(0)
    what = None if math.isfinite(total) else f"GAPG loss is {total}"
    if what is None and cfg.train.max_grad_norm > 0 and not deepspeed:  # DeepSpeed clips inside its step (gradient_clipping)
        norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm))
        if not math.isfinite(norm):
            what = f"gradient norm is {norm} (loss {total})"
    if what is not None:
        optimizer.zero_grad(set_to_none=True)
        if deepspeed:  # the engine stepped inside backward: this update cannot be undone, only stopped
            raise FloatingPointError(f"{what} under DeepSpeed, whose engine steps inside backward, so the update could "
                                     "not be skipped. Resume from the last checkpoint (--resume) with a lower train.learning_rate.")
        skipped.skip(what)
        return float("nan")
    skipped.ok()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def rollout_metrics(groups) -> dict:
    rolls = [r for g in groups for r in g.rollouts]
    local = [r for r in rolls if not r.escalated]
    per_level = defaultdict(list)
    for g in groups:
        per_level[g.problem.level] += [r.escalated for r in g.rollouts]
    # a group whose cloud call failed has no known reward: it is left out of the reward (and of the update)
    scored = [x for g in groups if g.trainable for x in g.rewards]
    answered = [r for r in rolls if r.escalated and not r.cloud_failed]
    out = {
        "reward": sum(scored) / len(scored) if scored else float("nan"),
        "offload_rate": sum(r.escalated for r in rolls) / max(len(rolls), 1),
        "device_acc": sum(r.local_correct for r in local) / max(len(local), 1),
        "cloud_acc": sum(r.cloud_correct for r in answered) / max(len(answered), 1),
        "truncated": sum(r.sample.truncated for r in rolls) / max(len(rolls), 1),
        "offload_by_level": {str(k): sum(v) / len(v) for k, v in sorted(per_level.items())},
        # the cloud failed (CloudError) for this many problems; their rollouts that needed it were not trained on
        "cloud_errors": sum(g.cloud_error is not None for g in groups),
        "cloud_failed_rollouts": sum(r.cloud_failed for r in rolls),
        # an <unknown>/</unknown> tag that is not a final escalation (unbalanced, or text after it): graded as the device's answer
        "stray_tags": sum(("<unknown>" in r.sample.text or "</unknown>" in r.sample.text) and not r.escalated
                          for r in rolls if not getattr(r, "wanted_escalation", False)) / max(len(rolls), 1),
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


def run_eval(tag, env, generator, test, cfg, accelerator, model=None):
    """Held-out evaluation on the main process. With ``model`` (the prepared training model) every process joins
    so that ZeRO-3 can gather the weights first; the others wait."""
    if model is not None:
        with unwrap_model_for_generation(model, accelerator) as policy:
            generator.model = policy
            rows = run_eval(tag, env, generator, test, cfg, accelerator)
        accelerator.wait_for_everyone()
        return rows
    if not accelerator.is_main_process:
        return None
    run = evaluate_query if isinstance(env, QueryEnv) else evaluate
    try:
        rows, records = run(env, generator, test, cfg.rl.budget, cfg.train.eval_batch_size, cfg.train.eval_max_new_tokens, cfg.train.seed)
    except CloudError as e:  # training goes on; the checkpoint can be evaluated later
        log.warning("held-out evaluation '%s' skipped: the cloud failed (%s). Evaluate the checkpoint later with eval.py.", tag, e)
        return None
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


def save_final(accelerator, model, tok, cfg, path: str):
    """Save the trained policy to ``path`` (LoRA merged), loadable with ``from_pretrained``; return it on the main process.

    Under ZeRO-3 each process holds a shard: the weights are gathered (a collective) into a fresh copy first."""
    zero3 = accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    state = accelerator.get_state_dict(model) if zero3 else None
    if not accelerator.is_main_process:
        return None
    policy = accelerator.unwrap_model(model)
    if zero3:  # training is over: a plain full copy on this process (transformers would zero.Init it, a collective)
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        policy = load_device_model(cfg.model, for_training=False)[0]
        policy.load_state_dict(state)
    if cfg.model.lora:
        policy = policy.merge_and_unload()
    policy.save_pretrained(path)
    tok.save_pretrained(path)
    return policy


def run_trl_baseline(cfg, resume: bool) -> int:
    """rl.trainer=trl_drgrpo (TRL GRPOTrainer, rl/trl_grpo.py) or dpo (TRL DPOTrainer, rl/dpo.py), evaluated as above."""
    from rl.dpo import train_with_dpo
    from rl.trl_grpo import train_with_trl

    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    if accelerator.is_main_process:
        save_config(cfg)
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


def run_task_tuning(cfg, resume: bool) -> int:
    """rl.trainer=sft: cloud-augmented supervised task tuning (tuning/sft.py), evaluated before and after as above."""
    from tuning.sft import train_sft

    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    if accelerator.is_main_process:
        save_config(cfg)
    test_problems = load_problems(cfg.task)[1]

    def eval_model(tag, model, tok):
        if tag == "before" and not (cfg.train.eval_before and cfg.train.max_steps > 0):
            return None
        cloud = make_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "cloud_cache.sqlite"))
        return run_eval(tag, make_env(cfg, tok, cloud), HFGenerator(model, tok), test_problems, cfg, accelerator)

    final = train_sft(cfg, resume, eval_hook=eval_model)
    if accelerator.is_main_process:
        eval_model("final", *load_device_model(replace(cfg.model, name_or_path=final, gguf_file=None, lora=False), for_training=False))
        tqdm.write(f"saved the task-tuned model to {final}  (RL from it: train.py --config <yaml> model.name_or_path={final})")
    return 0


def make_accelerator(cfg) -> Accelerator:
    """The Accelerator of the launch config (configs/accelerate/). On a machine without GPUs, accelerate 1.15 counts
    one process while torch.distributed runs N unless told: CPU processes (gloo DDP) for a multi-process launch, and
    the gloo backend named for DeepSpeed."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    no_gpu = not torch.cuda.is_available()
    # the main process evaluates alone while the others wait: a longer timeout than NCCL's 10 minutes
    handlers = [InitProcessGroupKwargs(backend="gloo" if deepspeed and no_gpu else None, timeout=timedelta(hours=3))]
    return Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=no_gpu and not deepspeed, kwargs_handlers=handlers)


def init_wandb(cfg, accelerator):
    if not (cfg.train.wandb and accelerator.is_main_process):
        return None
    wandb_offline_unless_configured()
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
    if cfg.rl.trainer == "sft":  # task tuning: the supervised warm start and the task-tuning-only baseline
        return run_task_tuning(cfg, args.resume)

    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed + accelerator.process_index)
    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg)

    # Data, models, environment ------------------------------------------------------------
    try:
        train_problems, test_problems = load_problems(cfg.task)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, tok = load_device_model(cfg.model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # one clipping setting: DeepSpeed clips in its step
        accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] = cfg.train.max_grad_norm
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = HFGenerator(accelerator.unwrap_model(model), tok)  # evaluation, and rollouts with rl.generator=hf
    if cfg.rl.generator == "vllm":
        from policies.vllm_generation import VLLMGenerator

        rollout_generator = VLLMGenerator(accelerator.unwrap_model(model), accelerator, tok, cfg.rl)
    else:
        rollout_generator = generator
    cloud = make_cloud(cfg.cloud, os.path.join(out, "cloud_cache.sqlite"))
    env = make_env(cfg, tok, cloud)
    dual = DualVariable(cfg.rl.gamma, cfg.rl.gamma_lr, cfg.rl.budget)
    rho_ = rho(cfg.rl.budget, cfg.rl.env)
    skipped = SkippedUpdates(cfg.train.max_skipped_updates)

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
            if rollout_generator is not generator:
                rollout_generator.sync_weights()  # vLLM loaded the initial weights from disk
    if args.resume and accelerator.is_main_process:
        truncate_metrics(os.path.join(out, "metrics.jsonl"), start)
    wb = init_wandb(cfg, accelerator)
    if start == 0 and cfg.train.eval_before and cfg.train.max_steps > 0:
        run_eval("before", env, generator, test_problems, cfg, accelerator, model)

    # The loop ------------------------------------------------------------------------------
    metrics_path = os.path.join(out, "metrics.jsonl")
    bar = tqdm(range(start, cfg.train.max_steps), initial=start, total=cfg.train.max_steps, desc="train", disable=not accelerator.is_main_process)
    for step in bar:
        t0 = time.time()
        problems = problems_for_step(train_problems, step, cfg.rl.rollout_prompts, cfg.train.seed)
        if rollout_generator is generator:
            with unwrap_model_for_generation(model, accelerator) as policy:  # ZeRO-3: gathers the weights for generation
                generator.model = policy
                groups = rollout_step(env, generator, problems, step, cfg, accelerator)  # all processes' groups
        else:  # vLLM holds its own copy of the weights, synced after every update
            groups = rollout_step(env, rollout_generator, problems, step, cfg, accelerator)
        t_roll = time.time() - t0
        compute_rewards(groups, cfg, dual.gamma)
        if cfg.rl.filtering:
            picked, fstats = select_prompts(groups, cfg.rl.batch_prompts, rho_, cfg.rl.d1_rule)
        else:
            picked, fstats = [i for i, g in enumerate(groups) if g.trainable][: cfg.rl.batch_prompts], {}
        # the same groups on every process, so every process picks the same prompts (or none, and skips together)
        loss = policy_update(model, optimizer, accelerator, [groups[i] for i in picked], cfg, tok.pad_token_id, skipped) if picked else 0.0
        if picked and rollout_generator is not generator:
            rollout_generator.sync_weights()

        m = rollout_metrics(groups)
        # the constrained quantity: escalations per rollout (route: the offload rate) or calls per rollout (query)
        offload = sum(r.calls for g in groups for r in g.rollouts) / max(sum(len(g.rollouts) for g in groups), 1)
        gamma_used = dual.gamma
        dual.update(offload)
        gen_tokens = sum(len(r.sample.completion_ids) for g in groups for r in g.rollouts)
        used = "calls" if cfg.rl.env == "query" else "offload"
        m["calls_per_rollout_global" if used == "calls" else "offload_rate_global"] = offload
        m.update(step=step + 1, loss=loss, gamma=gamma_used, gamma_next=dual.gamma, trained_prompts=len(picked),
                 rollout_tokens_per_s=gen_tokens / max(t_roll, 1e-9), step_time_s=time.time() - t0, cloud_calls_total=len(cloud), **{f"cloud_{k}": v for k, v in cloud.usage().items()}, **fstats,
                 skipped_updates=skipped.total, problem_uids=[p.uid for p in problems])
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
                wb.log({k: v for k, v in m.items() if not isinstance(v, (dict, list))} | {f"offload_level/{k}": v for k, v in m["offload_by_level"].items()}, step=step + 1)
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.max_steps:
            save_checkpoint(accelerator, cfg, step + 1, dual)
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.max_steps:
            run_eval(f"step-{step + 1}", env, generator, test_problems, cfg, accelerator, model)

    # The end: checkpoint, final model, held-out evaluation -----------------------------------
    if cfg.train.max_steps > start:
        save_checkpoint(accelerator, cfg, cfg.train.max_steps, dual)
    final = os.path.join(out, "final")
    policy = save_final(accelerator, model, tok, cfg, final)
    if accelerator.is_main_process:
        generator = HFGenerator(policy, tok)  # the saved (merged) weights are the ones evaluated
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
