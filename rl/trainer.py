"""The GAPG training loop (docs/method.md §3-5): ``train(cfg, resume)`` sets up, then runs ``train_step`` per step.

One step, top to bottom (``train_step``):
  1. take the next ``rl.rollout_prompts`` training problems (``problems_for_step``: a seeded, resumable order);
  2. the environment (``rl.env``; envs/base.py: ``Environment``) samples G responses each and grades them:
     ``route`` (envs/route.py) asks the cloud once per problem that needs it; ``query`` (envs/query.py) answers
     ``<query>``s mid-generation, batched (cached on disk);
  3. ``env.reward``: r̃ = r − γ·1{cloud} (route) or r̃ = r − γ·calls − γ_tok·cloud tokens (query)
     (rewards/collaboration.py, docs/method.md §3);
  4. adaptive prompt filtering keeps D1 and up to ρ|D1| D2 prompts (rl/filtering.py, docs/method.md §5);
  5. ``policy_update``: GAPG on the device tokens (rl/gapg.py, docs/method.md §4), sharded over the processes;
  6. dual ascent on γ toward the budget on ``env.usage_of``: the offload rate (route) or calls per rollout
     (query) (rl/lagrangian.py);
  7. a metrics.jsonl line, and at their intervals a checkpoint (rl/checkpoint.py) and a held-out evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from tqdm.auto import tqdm
from trl.models.utils import unwrap_model_for_generation

from envs.base import Environment, env_class_for
from envs.simulation import task_cloud
from envs.tasks import load_problems, template_for, template_token_warning
from evaluation.curves import plot_learning_curve
from evaluation.protocol import cloud_summary, evaluate_held_out
from evaluation.summary import run_summary
from evaluation.tables import format_table
from policies.cloud import CloudError
from policies.device import load_device_model
from policies.generation import HFGenerator, common_prefix_len
from rl.advantages import advantage_coefficients, length_normalisers
from rl.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
    save_final,
    truncate_metrics,
    warn_earlier_checkpoints,
)
from rl.filtering import select_prompts
from rl.gapg import gapg_loss, score_sequences, truncated_importance_weights
from rl.lagrangian import GammaController, gamma_controller
from rl.trl_run import wandb_offline_unless_configured
from settings import ConfigError, rho, save_config, to_dict

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


def make_env(cfg, tok, cloud) -> Environment:
    """The environment ``rl.env`` names (envs/base.py: ``env_class_for``): route (answer or escalate) or query (ask
    mid-reasoning)."""
    return env_class_for(cfg).from_config(cfg, tok, cloud)


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
            groups = env.rollout(
                generator, [p for _, p in mine], rl.group_size, rl.temperature, rl.top_p, rl.max_new_tokens
            )
    return gather_object(groups) if accelerator.num_processes > 1 else groups


class SkippedUpdates:
    """Updates skipped because the loss or the gradient norm was not finite (NaN/inf).

    ``policy_update`` calls ``skip`` instead of stepping the optimizer: the gradients are dropped, the weights stay as
    they were, a warning names the cause, and ``total`` goes into metrics.jsonl as ``skipped_updates``.  More than
    ``limit`` in a row (``train.max_skipped_updates``; 0 = stop at the first) stops the run with
    ``FloatingPointError``."""

    def __init__(self, limit: int):
        self.limit, self.total, self.in_a_row = limit, 0, 0

    def skip(self, what: str):
        self.total += 1
        self.in_a_row += 1
        fix = (
            "Lower train.learning_rate, check the rewards (reward.*), or use train.mixed_precision=no or bf16 "
            "instead of fp16; --resume restarts from the last checkpoint."
        )
        if self.in_a_row > self.limit:
            raise FloatingPointError(
                f"{what}: {self.in_a_row} update(s) in a row skipped, more than "
                f"train.max_skipped_updates={self.limit}; the run stops. {fix}"
            )
        log.warning(
            "%s: this update is skipped (%d in a row, %d in total; the run stops after more than "
            "train.max_skipped_updates=%d in a row). %s",
            what,
            self.in_a_row,
            self.total,
            self.limit,
            fix,
        )

    def ok(self):
        self.in_a_row = 0


def micro_batches(keep: list[int], world: int, rank: int, size: int) -> list[tuple[list[int], bool]]:
    """This process's micro-batches of the kept sequence indices ``keep``: ``[(indices, is_padding)]``.

    Each process scores every W-th kept sequence.  Every process runs the same number of micro-batches (backward
    passes): DDP all-reduces on the last one, and ZeRO-2/3 communicate on every backward, so an uneven count hangs
    or mixes gradients.  Rank 0 holds the most sequences; a process with fewer pads with zero-weight passes (and
    joins even when it has none to score): a padding pass scores any one sequence with coefficient 0."""
    mine = keep[rank::world]
    n_micro = -(-len(keep[0::world]) // size)
    if world > 1:
        n_micro = max(n_micro, 1)
    pad = keep[:1] or [0]
    out = []
    for k in range(n_micro):
        idx = mine[k * size : (k + 1) * size]
        out.append((idx, False) if idx else (pad, True))
    return out


def uses_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def sync_context(accelerator, model, last: bool, deepspeed: bool):
    """Gradients are all-reduced on the last micro-batch only: ``no_sync`` before it under DDP.  DeepSpeed steps on
    the last one too (ZeRO-2/3 have no ``no_sync``): it is told which backward ends the accumulation."""
    if deepspeed:
        accelerator.gradient_state._set_sync_gradients(last)
        return nullcontext()
    return accelerator.no_sync(model) if (not last and accelerator.num_processes > 1) else nullcontext()


def nonfinite_cause(accelerator, model, loss: float, max_grad_norm: float, deepspeed: bool) -> str | None:
    """Why this update must not be applied (a NaN/inf loss or gradient norm), or None; clips the gradients.
    DeepSpeed clips inside its own step (gradient_clipping)."""
    if not math.isfinite(loss):
        return f"GAPG loss is {loss}"
    if max_grad_norm > 0 and not deepspeed:
        norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm))
        if not math.isfinite(norm):
            return f"gradient norm is {norm} (loss {loss})"
    return None


def policy_update(
    model, optimizer, accelerator, groups, cfg, pad_id: int, skipped: SkippedUpdates | None = None
) -> float:
    """One GAPG step on the picked groups (the same list on every process): each process scores every
    W-th sequence, micro-batched, and the gradients meet in one all-reduce and one optimizer step.

    A non-finite loss or gradient norm skips the optimizer step on every process alike and is counted in
    ``skipped``; without ``skipped`` it raises ``FloatingPointError`` at once."""
    model.train()  # from_pretrained returns eval mode; gradient checkpointing (and dropout) act in training mode only
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
    coefs = advantage_coefficients(rewards, cfg.rl.advantage).flatten()  # GAPG's by default (rl/advantages.py)
    # (prompt, completion, per-token mask): the query mode's inserted cloud tokens are context only, never trained
    seqs = [(r.sample.prompt_ids, r.sample.completion_ids, r.sample.loss_mask) for g in groups for r in g.rollouts]
    device_tokens = [len(c) if m is None else sum(m) for _, c, m in seqs]
    coefs = coefs / length_normalisers(cfg.rl.advantage, device_tokens, cfg.rl.max_new_tokens)
    behaviour = [r.sample.rollout_logprob for g in groups for r in g.rollouts]  # None: sampled by the policy itself
    cap = cfg.rl.rollout_is_cap
    keep = [i for i in range(len(seqs)) if coefs[i] != 0]  # zero-coefficient sequences add nothing to the gradient
    world, rank = accelerator.num_processes, accelerator.process_index
    batches = micro_batches(keep, world, rank, cfg.train.micro_batch_size)
    # DDP and DeepSpeed average gradients over W processes: dividing by |batch|/W gives the global mean
    # (docs/method.md §4)
    num_prompts = len(groups) / world
    # a prompt head shared by every sequence (chat template, worked examples) is scored once;
    # DDP allows one forward per backward, so several processes score full sequences
    mine = keep[rank::world]
    one = mine and world == 1 and cfg.train.share_prompt_head
    shared = common_prefix_len([seqs[i][0] for i in mine]) - 1 if one else 0
    shared = shared if shared >= 32 else 0
    deepspeed = uses_deepspeed(accelerator)
    total = 0.0
    for k, (idx, padding) in enumerate(batches):
        weight = torch.zeros(1) if padding else coefs[idx]
        with sync_context(accelerator, model, k == len(batches) - 1, deepspeed), accelerator.autocast():
            logps = score_sequences(model, [seqs[i] for i in idx], pad_id, accelerator.device, shared)
            weight = weight.to(accelerator.device)
            if cap > 0 and not padding and behaviour[idx[0]] is not None:  # a low-precision copy sampled them
                mu = torch.tensor([behaviour[i] for i in idx], device=accelerator.device)
                weight = weight * truncated_importance_weights(logps, mu, cap)
            loss = gapg_loss(logps, weight, num_prompts)
            accelerator.backward(loss)
        total += loss.item()
    if world > 1:  # the logged loss is the global one: the mean of the processes' W-scaled partial sums
        total = accelerator.reduce(torch.tensor(total, device=accelerator.device), reduction="mean").item()
    # the reduced loss (and the all-reduced gradients' norm) is the same on every process: they skip together
    skipped = skipped if skipped is not None else SkippedUpdates(0)
    what = nonfinite_cause(accelerator, model, total, cfg.train.max_grad_norm, deepspeed)
    if what is not None:
        optimizer.zero_grad(set_to_none=True)
        if deepspeed:  # the engine stepped inside backward: this update cannot be undone, only stopped
            raise FloatingPointError(
                f"{what} under DeepSpeed, whose engine steps inside backward, so the update could "
                "not be skipped. Resume from the last checkpoint (--resume) with a lower train.learning_rate."
            )
        skipped.skip(what)
        return float("nan")
    skipped.ok()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


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
    cloud_before = env.cloud.usage()
    try:
        rows, records = evaluate_held_out(
            env,
            generator,
            test,
            cfg.rl.budget,
            cfg.train.eval_batch_size,
            cfg.train.eval_max_new_tokens,
            cfg.train.seed,
        )
    except CloudError as e:  # training goes on; the checkpoint can be evaluated later
        log.warning(
            "held-out evaluation '%s' skipped: the cloud failed (%s). Evaluate the checkpoint later with eval.py.",
            tag,
            e,
        )
        return None
    cap = env.budget_text(cfg.rl.budget)
    tqdm.write(
        f"\n== held-out evaluation ({tag}, {len(test)} problems, budget {cap}) ==\n{format_table(rows)}\n"
        f"cloud this evaluation: {cloud_summary(env.cloud, cloud_before)}\n"
    )
    out = os.path.join(cfg.train.output_dir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(out, f"{tag}.samples.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return rows


def make_accelerator(cfg) -> Accelerator:
    """The Accelerator of the launch config (configs/accelerate/). On a machine without GPUs, accelerate 1.15 counts
    one process while torch.distributed runs N unless told: CPU processes (gloo DDP) for a multi-process launch, and
    the gloo backend named for DeepSpeed."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    no_gpu = not torch.cuda.is_available()
    # the main process evaluates alone while the others wait: a longer timeout than NCCL's 10 minutes
    handlers = [InitProcessGroupKwargs(backend="gloo" if deepspeed and no_gpu else None, timeout=timedelta(hours=3))]
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision, cpu=no_gpu and not deepspeed, kwargs_handlers=handlers
    )


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
            # the mode of this run's environment, not the one W&B cached when an earlier run of this process set
            # it up; a run left open by an earlier one (a TRL trainer, a sweep point) is finished first
            mode=os.environ.get("WANDB_MODE"),
            reinit="finish_previous",
        )
    except Exception as e:  # logging must never stop training
        log.warning("wandb disabled: %s", e)
        return None


@dataclass
class Run:
    """Everything a GAPG step works with, set up once by ``train``."""

    cfg: object
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tok: object
    generator: HFGenerator  # evaluation (always the policy's own weights)
    rollout_generator: object  # HFGenerator (the same one, or one with rl.rollout_dtype), or vLLM
    env: Environment
    dual: GammaController
    skipped: SkippedUpdates
    train_problems: list
    test_problems: list
    probe_problems: list  # rl.usage_signal=greedy: training problems held out of training, whose greedy usage γ follows
    wandb: object = None
    bar: object = None

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.cfg.train.output_dir, "metrics.jsonl")


def select(groups, cfg, rho_: float, step: int) -> tuple[list[int], dict]:
    """The groups the update trains on: adaptive filtering (``rl.filtering``), else the first trainable ones.
    ``rl.d2_rounding=expected`` draws its uniform from a string seed of (seed, step), hashed by ``random.Random``
    (adjacent integer seeds gave clustered first draws), the same on every process and on resume."""
    if cfg.rl.filtering:
        u = random.Random(f"{cfg.train.seed}-{step}-d2").random() if cfg.rl.d2_rounding == "expected" else 0.0
        return select_prompts(groups, cfg.rl.batch_prompts, rho_, cfg.rl.d1_rule, cfg.rl.d2_rounding, u)
    return [i for i, g in enumerate(groups) if g.trainable][: cfg.rl.batch_prompts], {}


def rollout(run: Run, problems, step: int):
    """Every process's groups for this step's problems (the same global list on every process)."""
    if isinstance(run.rollout_generator, HFGenerator):
        with unwrap_model_for_generation(
            run.model, run.accelerator
        ) as policy:  # ZeRO-3: gathers the weights for generation
            run.rollout_generator.model = policy
            return rollout_step(run.env, run.rollout_generator, problems, step, run.cfg, run.accelerator)
    # vLLM holds its own copy of the weights, synced after every update
    return rollout_step(run.env, run.rollout_generator, problems, step, run.cfg, run.accelerator)


def train_step(run: Run, index: int) -> dict:
    """One training step, top to bottom: rollout → reward → select → update → dual → log / checkpoint / evaluate."""
    cfg, env, dual, accelerator = run.cfg, run.env, run.dual, run.accelerator
    t0 = time.time()
    problems = problems_for_step(run.train_problems, index, cfg.rl.rollout_prompts, cfg.train.seed)
    groups = rollout(run, problems, index)  # all processes' groups
    t_roll = time.time() - t0
    env.reward(groups, cfg.reward, dual.gamma)
    picked, fstats = select(groups, cfg, rho(cfg.rl.budget, env.name), index)
    # the same groups on every process, so every process picks the same prompts (or none, and skips together)
    loss = (
        policy_update(
            run.model, run.optimizer, accelerator, [groups[i] for i in picked], cfg, run.tok.pad_token_id, run.skipped
        )
        if picked
        else 0.0
    )
    if picked and hasattr(run.rollout_generator, "sync_weights"):  # vLLM; HFGenerator's copy follows by itself
        run.rollout_generator.sync_weights()

    used = env.usage_of(groups)  # the constrained quantity: offload rate (route) or calls per rollout (query)
    gamma_used = dual.gamma
    greedy = None
    if cfg.rl.greedy_usage:
        if (index + 1) % cfg.rl.probe_every == 0:  # the updated policy's greedy usage; γ holds between probes
            greedy = greedy_probe(run)
            dual.update(greedy)
    else:
        dual.update(used)

    m = env.metrics(groups)
    gen_tokens = sum(len(r.sample.completion_ids) for g in groups for r in g.rollouts)
    m[env.usage_metric] = used
    if greedy is not None:
        m["usage_greedy"] = greedy  # the probe's greedy usage after this step's update (what γ followed)
    m.update(
        step=index + 1,
        loss=loss,
        gamma=gamma_used,
        gamma_next=dual.gamma,
        trained_prompts=len(picked),
        rollout_tokens_per_s=gen_tokens / max(t_roll, 1e-9),
        step_time_s=time.time() - t0,
        cloud_calls_total=len(run.env.cloud),
        **{f"cloud_{k}": v for k, v in run.env.cloud.usage().items()},
        **fstats,
        skipped_updates=run.skipped.total,
        problem_uids=[p.uid for p in problems],
    )
    if accelerator.is_main_process:
        log_step(run, m, used, gamma_used, fstats, loss)
    done = index + 1
    if cfg.train.save_every and done % cfg.train.save_every == 0 and done < cfg.train.max_steps:
        save_checkpoint(accelerator, cfg, done, dual)
    if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.max_steps:
        run_eval(f"step-{done}", env, run.generator, run.test_problems, cfg, accelerator, run.model)
    return m


def split_probe(cfg, train_problems: list) -> tuple[list, list]:
    """(training problems, probe problems): with the greedy usage signal the last rl.probe_size training problems
    are held out of training as the probe γ follows (GAPG and routing DPO); else no probe."""
    if not cfg.rl.greedy_usage:
        return train_problems, []
    if cfg.rl.probe_size >= len(train_problems):
        raise ConfigError(
            f"rl.probe_size={cfg.rl.probe_size} leaves no training problems of {len(train_problems)}: lower "
            "rl.probe_size, give more training problems (task.num_train), or rl.gamma_controller=dual."
        )
    return train_problems[: -cfg.rl.probe_size], train_problems[-cfg.rl.probe_size :]


def greedy_probe(run: Run) -> float:
    """The greedy usage of the current policy on the probe problems (rl.usage_signal=greedy), the same number on every
    process: the main process measures it (every process joins the weight gather of ZeRO-3) and sends it to all."""
    with unwrap_model_for_generation(run.model, run.accelerator) as policy:
        value = [None]
        if run.accelerator.is_main_process:
            run.generator.model = policy
            value = [run.env.greedy_usage(run.generator, run.probe_problems, run.cfg.train.eval_max_new_tokens)]
    if run.accelerator.num_processes > 1:
        broadcast_object_list(value, from_process=0)
    return value[0]


def log_step(run: Run, m: dict, used: float, gamma_used: float, fstats: dict, loss: float) -> None:
    """The step's metrics.jsonl line, progress bar, console line and wandb point (main process)."""
    name = run.env.usage
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(m) + "\n")
    if run.bar is not None:
        run.bar.set_postfix({"reward": f"{m['reward']:.3f}", name: f"{used:.2f}", "gamma": f"{gamma_used:.3f}"})
    greedy = f" (greedy {m['usage_greedy']:.3f})" if "usage_greedy" in m else ""
    tqdm.write(
        f"step {m['step']:>4} | reward {m['reward']:+.3f} | device acc {m['device_acc']:.3f} | "
        f"{name} {used:.3f}{greedy} | gamma {gamma_used:.3f} | D1 {fstats.get('d1', '-')} D2 {fstats.get('d2', '-')} | "
        f"loss {loss:+.4f} | {m['rollout_tokens_per_s']:.0f} tok/s | {m['step_time_s']:.1f}s"
    )
    if run.wandb is not None:
        run.wandb.log(
            {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
            | {f"offload_level/{k}": v for k, v in m["offload_by_level"].items()},
            step=m["step"],
        )


def setup(cfg) -> Run | int:
    """Accelerator, data, model, optimizer, generators, cloud, environment, dual variable (``resume_from_checkpoint``
    then restores them from the last checkpoint).  Returns 2 (after one error line) when the task's data cannot be
    loaded."""
    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed + accelerator.process_index)
    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg)
    try:
        train_problems, test_problems = load_problems(cfg.task)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        train_problems, probe_problems = split_probe(cfg, train_problems)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    caps = min(cfg.rl.max_new_tokens, cfg.train.eval_max_new_tokens)
    mismatch = template_token_warning(template_for(cfg.task), caps, "rl.max_new_tokens and train.eval_max_new_tokens")
    if mismatch and accelerator.is_main_process:
        log.warning(mismatch)
    model, tok = load_device_model(cfg.model)
    if uses_deepspeed(accelerator):  # one clipping setting: DeepSpeed clips in its step
        accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] = cfg.train.max_grad_norm
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = HFGenerator(accelerator.unwrap_model(model), tok)
    if cfg.rl.generator == "vllm":
        from policies.vllm_generation import VLLMGenerator  # optional dependency (vllm): imported only when asked for

        rollout_generator = VLLMGenerator(accelerator.unwrap_model(model), accelerator, tok, cfg.rl)
    elif cfg.rl.rollout_dtype != "policy":
        rollout_generator = HFGenerator(accelerator.unwrap_model(model), tok, dtype=cfg.rl.rollout_dtype)
    else:
        rollout_generator = generator
    cloud = task_cloud(cfg.cloud, os.path.join(out, "cloud_cache.sqlite"))
    env = make_env(cfg, tok, cloud)
    run = Run(
        cfg,
        accelerator,
        model,
        optimizer,
        tok,
        generator,
        rollout_generator,
        env,
        gamma_controller(cfg.rl),
        SkippedUpdates(cfg.train.max_skipped_updates),
        train_problems,
        test_problems,
        probe_problems,
    )
    return run


def resume_from_checkpoint(run: Run) -> int:
    """Load the latest complete checkpoint (model, optimizer, RNG, γ); return its step (0 when there is none)."""
    out = run.cfg.train.output_dir
    start = 0
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        log.warning("--resume: no complete checkpoint in %s/checkpoints; starting from step 0", out)
    else:
        run.accelerator.load_state(ckpt)
        start = load_trainer_state(ckpt, run.dual)
        log.info(
            "resumed from %s (step %d, gamma %.4f, %d cached cloud answers)",
            ckpt,
            start,
            run.dual.gamma,
            len(run.env.cloud),
        )
        if hasattr(run.rollout_generator, "sync_weights"):
            run.rollout_generator.sync_weights()  # vLLM loaded the initial weights from disk
    return start


def train(cfg, resume: bool = False) -> int:
    """The GAPG run of train.py: set up, (resume,) evaluate before, ``train_step`` to ``train.max_steps``, checkpoint,
    save the final policy and evaluate it.  Returns the exit code."""
    run = setup(cfg)
    if isinstance(run, int):
        return run
    accelerator, out = run.accelerator, cfg.train.output_dir
    start = resume_from_checkpoint(run) if resume else 0
    if accelerator.is_main_process:
        if not resume:
            warn_earlier_checkpoints(out, latest_checkpoint(out))
        truncate_metrics(run.metrics_path, start)  # the lines after the start run again (all, when starting afresh)
    run.wandb = init_wandb(cfg, accelerator)
    if start == 0 and cfg.train.eval_before and cfg.train.max_steps > 0:
        run_eval("before", run.env, run.generator, run.test_problems, cfg, accelerator, run.model)

    run.bar = tqdm(
        range(start, cfg.train.max_steps),
        initial=start,
        total=cfg.train.max_steps,
        desc="train",
        disable=not accelerator.is_main_process,
    )
    for i in run.bar:
        train_step(run, i)

    # the end: checkpoint, final model, held-out evaluation
    if cfg.train.max_steps > start:
        save_checkpoint(accelerator, cfg, cfg.train.max_steps, run.dual)
    final = os.path.join(out, "final")
    policy = save_final(accelerator, run.model, run.tok, cfg, final)
    generator = run.generator
    if accelerator.is_main_process:
        generator = HFGenerator(policy, run.tok)  # the saved (merged) weights are the ones evaluated
    rows = run_eval("final", run.env, generator, run.test_problems, cfg, accelerator)
    if accelerator.is_main_process:
        tqdm.write(
            f"saved the trained policy to {final}  (evaluate it: python eval.py --run {out}; serve it: "
            f"python serve.py --model {final})"
        )
        curve = None
        try:
            curve = plot_learning_curve(out)
        except Exception as e:  # a plot never fails a finished run
            log.warning(
                "learning curve not drawn (%s: %s); python -m scripts.plot_metrics %s", type(e).__name__, e, out
            )
        summary = run_summary(out, run.env.budget_text(cfg.rl.budget), run.env.cloud.usage(), curve)
        if summary:
            tqdm.write("\n== summary ==\n" + "\n".join(summary))
        if run.wandb is not None:  # finished also when the final evaluation was skipped (a failed cloud)
            if rows:
                run.wandb.summary.update(
                    {f"final/{r['method']}/{k}": v for r in rows for k, v in r.items() if isinstance(v, float)}
                )
            run.wandb.finish()
    accelerator.end_training()
    return 0
