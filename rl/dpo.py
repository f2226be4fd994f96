"""DPO instead of RL (docs/method.md §6): preference pairs from routing rollouts, trained with TRL ``DPOTrainer``.

    accelerate launch train.py --config configs/cpu_dpo.yaml          # rl.trainer: dpo, 3 rounds with the dual
    accelerate launch train.py --config configs/cpu_default.yaml rl.trainer=dpo dpo.num_prompts=32

Each of ``dpo.rounds`` rounds:
1. Roll out the current policy (the base model in round 1, the previous round's ``final/`` after):
   ``dpo.num_prompts`` training problems (a seeded sample, fresh each round), ``rl.group_size`` responses
   each at ``rl.temperature``, in the ``rl.env`` environment (route or query) with the same prompts and cached
   cloud as GAPG.
2. Reward every response with the collaboration reward of docs/method.md §3 (``rewards/collaboration.py``) at the
   round's γ: α_a for a correct local answer, α_c − γ for an escalation the cloud gets right, else 0 (− γ).
3. Pairs (``preference_pairs``): within each group, every two responses with different rewards make a pair,
   the higher reward chosen; ties are dropped (they say nothing about which to prefer), and so are pairs of
   identical texts. At most ``dpo.max_pairs_per_prompt`` per problem, the largest reward gap first.
4. TRL ``DPOTrainer`` (β = ``dpo.beta``, ``dpo.loss_type``, LoRA when ``dpo.lora``; the reference model is
   the round's starting policy) on the exact token ids that were sampled: ``ExactPreferenceCollator`` feeds TRL
   the rollout's own prompt and completion ids (no re-tokenisation of decoded text) and its per-token loss
   mask, so the cloud's ``<response>`` tokens of a query rollout are context and never trained.
5. One step of γ's controller (rl/lagrangian.py: gamma_controller), so the next round's pairs charge the cloud
   more when it was over budget and less when under: by default the PID step of rl/pid_lagrangian.py on the greedy
   usage of the round's policy on rl.probe_size held-out training problems; ``rl.gamma_controller=dual`` is the
   dual step γ ← max(0, γ + rl.gamma_lr · (offload − rl.budget)) on the round's sampled rollouts (calls per
   rollout in query mode).
   ``dpo_rounds.json`` records γ, the usage, the pairs and the controller's state of every round.
``final/`` (the last round's merged policy) is evaluated by rl/baselines.py (before/after, with its held-out
offload against rl.budget) and loadable by eval.py like any checkpoint. ``dpo.rounds=1`` with
``rl.gamma_controller=dual rl.gamma_lr=0`` is one offline round at the fixed γ = rl.gamma.

The same ``dpo_args``/``train_dpo`` serve LSRP's SMFB-DPO of the leader (rl/smfb_dpo.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import replace
from itertools import combinations

from core.io import write_jsonl
from envs.simulation import task_cloud
from envs.tasks import load_problems
from policies.device import load_device_model
from policies.generation import HFGenerator
from rl.lagrangian import gamma_controller
from rl.trainer import make_env, split_probe
from rl.trl_run import common_args, metrics_callback, save_final, train_resumable

log = logging.getLogger("train.dpo")

PAIRS_FILE = "dpo_pairs.jsonl"


def preference_pairs(groups, max_pairs_per_prompt: int = 0, tol: float = 1e-9) -> list[dict]:
    """Pairs (chosen = higher reward) from rollout groups with ``.rewards``; ties and identical texts dropped.

    Each pair keeps the exact prompt/completion token ids and per-token loss masks of its two rollouts, and
    their texts (TRL's dataset preparation reads ``prompt``/``chosen``/``rejected``)."""
    pairs = []
    for g in groups:
        cands = []
        for i, j in combinations(range(len(g.rollouts)), 2):
            ri, rj = g.rewards[i], g.rewards[j]
            if abs(ri - rj) <= tol:
                continue  # a tie: no preference
            hi, lo = (i, j) if ri > rj else (j, i)
            cands.append((abs(ri - rj), hi, lo))
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        seen, kept = set(), 0
        for _, hi, lo in cands:
            a, b = g.rollouts[hi].sample, g.rollouts[lo].sample
            sig = (tuple(a.completion_ids), tuple(b.completion_ids))
            if a.completion_ids == b.completion_ids or sig in seen:
                continue
            seen.add(sig)
            pairs.append(
                {
                    "uid": g.problem.uid,
                    "prompt": "",
                    "chosen": a.text,
                    "rejected": b.text,
                    "chosen_reward": g.rewards[hi],
                    "rejected_reward": g.rewards[lo],
                    "exact_prompt_ids": list(a.prompt_ids),
                    "exact_chosen_ids": list(a.completion_ids),
                    "exact_rejected_ids": list(b.completion_ids),
                    "chosen_mask": list(a.loss_mask) if a.loss_mask is not None else [1] * len(a.completion_ids),
                    "rejected_mask": list(b.loss_mask) if b.loss_mask is not None else [1] * len(b.completion_ids),
                }
            )
            kept += 1
            if max_pairs_per_prompt and kept >= max_pairs_per_prompt:
                break
    return pairs


def exact_collator(pad_token_id: int, max_length: int | None):
    """TRL's ``DataCollatorForPreference`` on the ``exact_*`` token ids, with the pairs' per-token loss masks."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class ExactPreferenceCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            out = super().torch_call(
                [
                    {
                        "prompt_ids": e["exact_prompt_ids"],
                        "chosen_ids": e["exact_chosen_ids"],
                        "rejected_ids": e["exact_rejected_ids"],
                    }
                    for e in examples
                ]
            )
            masks = [[0] * len(e["exact_prompt_ids"]) + list(e["chosen_mask"]) for e in examples]
            masks += [[0] * len(e["exact_prompt_ids"]) + list(e["rejected_mask"]) for e in examples]
            width = out["completion_mask"].shape[1]

            def fit(m):  # the same keep_start cut as TRL's, then right padding
                m = m[: self.max_length] if self.max_length else m
                return m + [0] * (width - len(m))

            out["completion_mask"] = out["completion_mask"] * torch.tensor(
                [fit(m) for m in masks], dtype=out["completion_mask"].dtype
            )
            return out

    return ExactPreferenceCollator(pad_token_id=pad_token_id, max_length=max_length, truncation_mode="keep_start")


def dpo_args(cfg, output_dir: str, save: bool = True):
    """TRL ``DPOConfig`` from the ``dpo`` and ``train`` sections."""
    from trl import DPOConfig as TRLDPOConfig

    d = cfg.dpo
    return TRLDPOConfig(
        **common_args(cfg, output_dir),
        beta=d.beta,
        loss_type=[d.loss_type],
        learning_rate=d.learning_rate,
        num_train_epochs=d.num_epochs,
        per_device_train_batch_size=d.batch_size,
        gradient_accumulation_steps=d.grad_accum,
        max_length=d.max_length,
        truncation_mode="keep_start",
        activation_checkpointing=cfg.model.gradient_checkpointing,
        save_strategy="epoch" if save else "no",
        remove_unused_columns=False,  # the exact ids and masks reach the collator
        dataset_num_proc=None,
    )


def lora_config(model_cfg):
    from peft import LoraConfig

    return LoraConfig(
        r=model_cfg.lora_r,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules=list(model_cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def train_dpo(
    model, tokenizer, rows: list[dict], cfg, output_dir: str, final_dir: str, collator=None, resume: bool = False
) -> str:
    """DPOTrainer on ``rows`` (prompt/chosen/rejected, text or conversational); save the merged model to
    ``final_dir``."""
    from datasets import Dataset
    from trl import DPOTrainer

    if not rows:
        raise ValueError(
            "DPO got no preference pairs: every group had equal rewards (or identical texts). Roll out more problems "
            "(dpo.num_prompts), a larger group (rl.group_size) or a higher rl.temperature."
        )
    os.makedirs(output_dir, exist_ok=True)
    trainer = DPOTrainer(
        model=model,
        args=dpo_args(cfg, output_dir),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=collator,
        peft_config=lora_config(cfg.model) if cfg.dpo.lora else None,
        callbacks=[metrics_callback(os.path.join(output_dir, "metrics.jsonl"))],
    )
    train_resumable(trainer, output_dir, resume, os.path.join(output_dir, "metrics.jsonl"))
    return save_final(trainer, tokenizer, final_dir, merge_lora=cfg.dpo.lora)


# rl.trainer=dpo: the routing policy -------------------------------------------------------------


def rollout_pairs(cfg, env, generator, problems, gamma: float) -> tuple[list[dict], dict]:
    """Roll out ``problems`` (rl.rollout_prompts at a time), reward them with the cloud cost ``gamma`` and build the
    pairs; also rollout stats, with ``usage`` the constrained quantity (offload rate, or calls per rollout)."""
    groups = []
    for start in range(0, len(problems), cfg.rl.rollout_prompts):
        chunk = problems[start : start + cfg.rl.rollout_prompts]
        part = env.rollout(generator, chunk, cfg.rl.group_size, cfg.rl.temperature, cfg.rl.top_p, cfg.rl.max_new_tokens)
        env.reward(part, cfg.reward, gamma)  # the environment's reward (route or query) at this round's γ
        groups += part
        log.info("dpo rollouts: %d/%d problems", len(groups), len(problems))
    pairs = preference_pairs(groups, cfg.dpo.max_pairs_per_prompt)
    rolls = [r for g in groups for r in g.rollouts]
    stats = {
        "problems": len(groups),
        "rollouts": len(rolls),
        "pairs": len(pairs),
        "gamma": gamma,
        "reward": sum(x for g in groups for x in g.rewards) / max(len(rolls), 1),
        "offload_rate": sum(r.escalated for r in rolls) / max(len(rolls), 1),
        "calls_per_rollout": sum(r.calls for r in rolls) / max(len(rolls), 1),
        "usage": env.usage_of(groups),
        "groups_without_pairs": sum(len(set(g.rewards)) == 1 for g in groups),
    }
    return pairs, stats


def greedy_probe_usage(cfg, policy: str, probe: list) -> float:
    """The greedy usage of the round's merged policy (``policy``, a saved model) on the probe problems: what γ
    follows between rounds with rl.usage_signal=greedy."""
    model, tok = load_device_model(replace(cfg.model, name_or_path=policy, gguf_file=None, lora=False), False)
    env = make_env(cfg, tok, task_cloud(cfg.cloud, os.path.join(cfg.train.output_dir, "cloud_cache.sqlite")))
    return env.greedy_usage(HFGenerator(model, tok), probe, cfg.train.eval_max_new_tokens)


def train_with_dpo(cfg, resume: bool = False) -> str:
    """rl.trainer=dpo: ``dpo.rounds`` rounds of (roll out the current policy -> pairs at the current γ -> TRL
    DPOTrainer, the round's starting policy as reference); between rounds one step of γ's controller
    (rl/lagrangian.py), so the pairs of the next round charge the cloud more when it was over budget: on the greedy
    usage of the round's policy on rl.probe_size training problems held out of the rounds (the PID's default), or
    on the usage measured in the round's rollouts (offload rate, or calls per rollout in query mode;
    rl.usage_signal=sampled, dual ascent's default). Round k works in ``<output_dir>/round-<k>`` (the output_dir
    itself when dpo.rounds=1); the last round's policy is ``<output_dir>/final``, which this returns.
    ``dpo_rounds.json`` has γ and the usage of every round; a rerun with --resume skips the finished rounds."""
    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    dual = gamma_controller(cfg.rl)
    rounds_path = os.path.join(out, "dpo_rounds.json")
    done = json.load(open(rounds_path)) if resume and os.path.exists(rounds_path) else []
    train_problems = load_problems(cfg.task)[0]
    train_problems, probe = split_probe(cfg, train_problems)  # the probe is never rolled out for pairs
    policy = None  # None = the base model of the model section; else the previous round's merged final/
    for k in range(1, cfg.dpo.rounds + 1):
        work = out if cfg.dpo.rounds == 1 else os.path.join(out, f"round-{k}")
        final = os.path.join(out if k == cfg.dpo.rounds else work, "final")
        if k <= len(done) and os.path.exists(os.path.join(final, "config.json")):
            policy = final
            dual.load_state_dict(done[k - 1].get("gamma_controller", {"gamma": done[k - 1]["gamma_next"]}))
            log.info("--resume: DPO round %d is done (%s)", k, final)
            continue
        model_cfg = replace(cfg.model, lora=False)  # DPOTrainer attaches LoRA (dpo.lora)
        if policy is not None:
            model_cfg = replace(model_cfg, name_or_path=policy, gguf_file=None)
        model, tok = load_device_model(model_cfg)
        pairs_path = os.path.join(work, PAIRS_FILE)
        os.makedirs(work, exist_ok=True)
        stats_path = os.path.join(work, "dpo_rollouts.json")
        if resume and os.path.exists(pairs_path) and os.path.exists(stats_path):  # this round's rollouts are done
            pairs = [json.loads(line) for line in open(pairs_path)]
            stats = json.load(open(stats_path))
            log.info("--resume: %d preference pairs of round %d from %s", len(pairs), k, pairs_path)
        else:
            cloud = task_cloud(cfg.cloud, os.path.join(out, "cloud_cache.sqlite"))
            env = make_env(cfg, tok, cloud)  # rl.env: route or query
            seed = f"{cfg.train.seed}-dpo" if k == 1 else f"{cfg.train.seed}-dpo-{k}"  # fresh problems each round
            problems = random.Random(seed).sample(train_problems, min(cfg.dpo.num_prompts, len(train_problems)))
            pairs, stats = rollout_pairs(cfg, env, HFGenerator(model, tok), problems, dual.gamma)
            write_jsonl(pairs_path, pairs)
            with open(stats_path, "w") as f:
                json.dump(stats, f, indent=2)
        log.info("dpo round %d/%d: %s", k, cfg.dpo.rounds, stats)
        for p in pairs:  # TRL tokenises these texts; the collator trains on the exact ids
            p["prompt"] = tok.decode(p["exact_prompt_ids"])
        collator = exact_collator(tok.pad_token_id, cfg.dpo.max_length)
        policy = train_dpo(model, tok, pairs, cfg, work, final, collator=collator, resume=resume)
        gamma_used = dual.gamma
        greedy = greedy_probe_usage(cfg, policy, probe) if probe else None
        dual.update(stats["usage"] if greedy is None else greedy)
        done = done[: k - 1] + [
            {
                "round": k,
                "gamma": gamma_used,
                "usage": stats["usage"],
                **({"usage_greedy": greedy} if greedy is not None else {}),
                "budget": cfg.rl.budget,
                "pairs": len(pairs),
                "gamma_next": dual.gamma,
                "gamma_controller": dual.state_dict(),  # what --resume restores (the PID's integral too)
                "policy": final,
            }
        ]
        with open(rounds_path, "w") as f:
            json.dump(done, f, indent=2)
        log.info(
            "dpo round %d: usage %.3f against the budget %.3f, γ %.3f -> %.3f",
            k,
            stats["usage"],
            cfg.rl.budget,
            gamma_used,
            dual.gamma,
        )
    return policy
