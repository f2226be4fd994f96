"""The "collaboration-aware tuning" baseline: TRL ``GRPOTrainer`` with Dr.GRPO on the hierarchical reward.

    accelerate launch train.py --config configs/cpu_drgrpo.yaml        # rl.trainer: trl_drgrpo

The paper's baseline (docs/method.md §4, §7): the same device model, route environment, prompts and
cloud as the GAPG run, rewarded with the hierarchical reward of docs/method.md §3 (α_a for a correct
local answer, α_c for an escalation the cloud gets right, else 0, minus a *fixed*
γ = ``rl.gamma`` per charged cloud call), but trained by TRL's own rollout and update
machinery with ``loss_type="dr_grpo"`` and ``scale_rewards="none"`` (advantage r − mean r,
token losses summed and divided by a constant), ``beta=0`` (no KL).  There is no adaptive
prompt filtering and no dual ascent on γ.  Each optimizer step generates ``rl.batch_prompts``
prompts × ``rl.group_size`` responses and updates once on them.

Prompts are the strings ``RouteEnv.prompt`` renders (chat template, system prompt and worked
examples already applied), so TRL tokenizes them as plain text and never applies the chat
template again.  Rewards reuse ``RouteEnv.judge``, the cloud cache and
``rewards.collaboration.collaboration_reward``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from envs.rollout import check_prompt_tokens, cloud_replies_or_none
from envs.route import RouteEnv
from envs.simulation import task_cloud
from envs.tasks import load_problems
from policies.device import load_device_model
from policies.generation import Sample
from rewards.collaboration import collaboration_reward
from rewards.grading import grade_response
from rl.trl_run import common_args, metrics_callback, per_device_batch, save_final, train_resumable

log = logging.getLogger("train.trl")


def make_reward_fn(env: RouteEnv, problems, reward_cfg, gamma: float):
    """``reward_fn(prompts, completions, uid, **kw) -> list[float]``: the hierarchical reward r − γ·1{charged}.

    Each completion is judged by ``env.judge`` (escalated iff it ENDS with ``<unknown>...</unknown>``);
    the cloud (cached, one call per problem ever) is asked for every problem with an escalation.
    ``log_metric`` (passed by TRL) receives the offload rate, device and cloud accuracy of the batch.
    A problem whose cloud call fails (``CloudError``) has no known reward: all of its completions get the same
    reward, 0, so its Dr.GRPO advantages (r − mean r) are 0 and it adds nothing to the update; ``cloud_errors``
    counts such problems.
    """
    by_uid = {p.uid: p for p in problems}

    def reward_fn(prompts, completions, uid, completion_ids=None, **kw) -> list[float]:
        probs = [by_uid[u] for u in uid]
        ids = completion_ids or [[] for _ in completions]
        rolls = [env.judge(p, Sample([], list(c_ids), text, False)) for p, text, c_ids in zip(probs, completions, ids)]
        asked = list(dict.fromkeys(p for p, r in zip(probs, rolls) if r.escalated))
        cloud_ok, failed = {}, set()
        if asked:
            replies, _ = cloud_replies_or_none(env.cloud, asked)
            for p, rep in zip(asked, replies):
                if rep is None:
                    failed.add(p.uid)
                else:
                    cloud_ok[p.uid] = grade_response(p, rep.text)[1]
        rewards = [
            0.0
            if p.uid in failed
            else collaboration_reward(
                r.escalated,
                r.local_correct,
                r.escalated and cloud_ok[p.uid],
                reward_cfg.alpha_local,
                reward_cfg.alpha_cloud,
                gamma,
                reward_cfg.charge,
            )
            for p, r in zip(probs, rolls)
        ]
        log_metric = kw.get("log_metric")
        if log_metric is not None:
            n, esc = len(rolls), sum(r.escalated for r in rolls)
            log_metric("offload_rate", esc / max(n, 1))
            log_metric("device_acc", sum(r.local_correct for r in rolls) / max(n - esc, 1))
            answered = [cloud_ok[p.uid] for p, r in zip(probs, rolls) if r.escalated and p.uid not in failed]
            log_metric("cloud_acc", sum(answered) / max(len(answered), 1))
            log_metric("cloud_errors", len(failed))
            per_level = defaultdict(list)
            for p, r in zip(probs, rolls):
                per_level[p.level].append(r.escalated)
            for level, v in sorted(per_level.items()):
                log_metric(f"offload_level/{level}", sum(v) / len(v))
        return rewards

    return reward_fn


def build_dataset(env: RouteEnv, problems, max_prompt_tokens: int = 0):
    """A ``datasets.Dataset`` with the rendered (already chat-templated) string prompt, the uid and the level."""
    from datasets import Dataset

    rows = [{"prompt": env.prompt(p), "uid": p.uid, "level": p.level} for p in problems]
    tok = env.tokenizer
    if max_prompt_tokens:
        for p, row in zip(problems, rows):
            check_prompt_tokens(p, len(tok(row["prompt"], add_special_tokens=False)["input_ids"]), max_prompt_tokens)
    if rows and tok(rows[0]["prompt"])["input_ids"] != tok(rows[0]["prompt"], add_special_tokens=False)["input_ids"]:
        log.warning(
            "The tokenizer adds special tokens (e.g. BOS) to plain text; TRL tokenizes the rendered prompts with them, "
            "so its prompts differ from RouteEnv's by those tokens."
        )
    return Dataset.from_list(rows)


def grpo_config(cfg, num_processes: int = 1):
    """The TRL ``GRPOConfig`` for this run (see the mapping table in docs/drgrpo.md)."""
    from trl import GRPOConfig

    t, rl = cfg.train, cfg.rl
    gen_batch = rl.batch_prompts * rl.group_size  # completions per optimizer step, all processes together
    if gen_batch % num_processes:
        raise ValueError(
            f"rl.batch_prompts * rl.group_size = {gen_batch} completions per step must divide evenly among "
            f"{num_processes} processes."
        )
    per_device = per_device_batch(gen_batch // num_processes, t.micro_batch_size)
    accum = gen_batch // (per_device * num_processes)
    return GRPOConfig(
        **common_args(cfg, t.output_dir),
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type="constant",  # GAPG's AdamW runs at a constant rate too
        warmup_steps=0,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,  # one optimizer step per generation batch: on-policy, no reuse
        generation_batch_size=gen_batch,
        num_iterations=1,
        num_generations=rl.group_size,
        max_completion_length=rl.max_new_tokens,
        temperature=rl.temperature,
        top_p=rl.top_p,
        beta=0.0,
        loss_type="dr_grpo",
        scale_rewards="none",
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        remove_unused_columns=False,  # the reward needs the uid column
        shuffle_dataset=True,
        log_completions=False,
    )


def build_trainer(cfg, model, tok, cloud, train_problems, eval_hook=None, callbacks=(), args=None):
    """The ``GRPOTrainer`` of the Dr.GRPO baseline: RouteEnv prompts, the hierarchical reward, ``grpo_config(cfg)``.

    ``train_with_trl`` and ``benchmarks/bench_train_step.py`` build it here, so the baseline that is trained and the
    one that is timed are the same object.  ``args`` replaces the ``GRPOConfig`` (e.g. the benchmark turns off the
    dataset shuffle to feed GAPG's prompts in GAPG's order); ``callbacks`` are added to the metrics callback.
    """
    from accelerate import PartialState
    from trl import GRPOTrainer

    env = RouteEnv.from_config(cfg, tok, cloud)
    args = args if args is not None else grpo_config(cfg, PartialState().num_processes)
    log.info(
        "TRL Dr.GRPO baseline: %d prompts x G=%d per step (%d per forward, %d accumulation steps), fixed gamma %.3f; "
        "rl.filtering, rl.d1_rule, rl.rollout_prompts and rl.gamma_lr do not apply",
        cfg.rl.batch_prompts,
        cfg.rl.group_size,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        cfg.rl.gamma,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=make_reward_fn(env, train_problems, cfg.reward, cfg.rl.gamma),
        args=args,
        train_dataset=build_dataset(env, train_problems, cfg.rl.max_prompt_tokens),
        processing_class=tok,
        callbacks=[
            metrics_callback(
                os.path.join(cfg.train.output_dir, "metrics.jsonl"), "reward", eval_hook, cfg.train.eval_every
            ),
            *callbacks,
        ],
    )


def train_with_trl(cfg, resume: bool = False, eval_hook=None) -> str:
    """Train the device policy with TRL GRPOTrainer (Dr.GRPO); save ``<output_dir>/final`` and return its path.

    ``resume`` continues from the last ``<output_dir>/checkpoint-N``; ``eval_hook(tag, model, tokenizer)``, if
    given, runs every ``train.eval_every`` steps (rl/baselines.py passes the held-out evaluation).
    """
    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    train_problems, _ = load_problems(cfg.task)
    model, tok = load_device_model(cfg.model)  # LoRA adapters already attached when cfg.model.lora
    cloud = task_cloud(cfg.cloud, os.path.join(out, "cloud_cache.sqlite"))
    trainer = build_trainer(cfg, model, tok, cloud, train_problems, eval_hook=eval_hook)
    if cfg.train.max_steps > 0:
        train_resumable(trainer, out, resume, os.path.join(out, "metrics.jsonl"))
    return save_final(trainer, tok, os.path.join(out, "final"), merge_lora=cfg.model.lora)
