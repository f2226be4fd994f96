"""Typed configuration: the composed ``Config`` of a run, read by training, evaluation and serving alike.

    accelerate launch train.py --config configs/cpu_default.yaml rl.budget=0.3 train.max_steps=40
    python train.py --help            # every option, its type, default, help text and choices

Sections: ``model``, ``cloud`` (policies/config.py), ``task`` (envs/config.py), ``reward`` (rewards/config.py),
``rl``, ``sft``, ``train``, ``dpo`` (here: the training's sections, which evaluation and serving read too, e.g.
``rl.budget``, ``rl.env``, ``rl.max_queries``, ``train.eval_max_new_tokens``), ``lsrp`` (envs/lsrp/config.py).  This
package sits below ``rl/`` and ``serving/`` (tests/test_layering.py), so serving a policy needs no training code.
Each section is a dataclass whose fields carry
``metadata={"help": ...}`` the way TRL's configs do and whose choices are ``Literal[...]`` types (core/config.py);
each validates itself (``validate``), and ``validate`` below adds the rules that need two sections.  OmegaConf
merges the dataclass defaults, the YAML file and the ``section.key=value`` overrides, and rejects unknown keys and
wrong types; the errors are rewritten here to name the key and the fix.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Literal

from omegaconf import MISSING as OC_MISSING  # noqa: F401  (re-exported for YAML users)
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from core.config import ConfigError, Section, choices_of, may_be_secret, option, type_name
from envs.config import TaskConfig
from envs.lsrp.config import LSRPConfig
from policies.config import CloudConfig, ModelConfig
from rewards.config import RewardConfig

__all__ = [
    "CloudConfig",
    "Config",
    "ConfigError",
    "DPOConfig",
    "LSRPConfig",
    "ModelConfig",
    "RLConfig",
    "RewardConfig",
    "TaskConfig",
    "TrainConfig",
    "TuningConfig",
    "format_help",
    "load_config",
    "rho",
    "save_config",
    "to_dict",
    "validate",
]


@dataclass
class RLConfig(Section):
    section = "rl"

    env: Literal["route", "query", "lsrp"] = option(
        "route",
        "Environment mode: route (answer, or escalate the whole problem with <unknown>) or query (ask the cloud "
        "mid-reasoning with <query>...</query>, answered inside <response>...</response>; envs/query.py). Same "
        "trainer, filtering and γ's controller; in query mode rl.budget counts cloud calls per problem. lsrp: the "
        "cloud leads with a guideline and the device answers with private user data (envs/lsrp/, rl/lsrp.py, "
        "section lsrp).",
    )
    trainer: Literal["gapg", "trl_drgrpo", "sft", "dpo"] = option(
        "gapg",
        "gapg: this repo's loop (GAPG + adaptive filtering + Lagrangian γ, docs/method.md §4-5). "
        "trl_drgrpo: the paper's 'collaboration-aware tuning' baseline, TRL GRPOTrainer with Dr.GRPO (no std "
        "scaling, β=0) on the same "
        "hierarchical reward with a fixed γ=rl.gamma; it ignores filtering, d1_rule, rollout_prompts and gamma_lr. "
        "sft: supervised task tuning (rl/sft.py, TRL SFTTrainer + LoRA, the sft.* keys): the warm start that RL "
        "starts from (model.name_or_path=<output_dir>/final) and the paper's 'task tuning only' baseline; of rl.* it "
        "uses budget (evaluation), max_new_tokens and max_prompt_tokens. "
        "dpo: preference optimisation (rl/dpo.py): rollouts of the policy, pairs by reward (higher chosen, ties "
        "dropped), TRL DPOTrainer (section dpo), for dpo.rounds rounds with γ's controller stepping between them.",
    )
    advantage: Literal["gapg", "grpo", "dr_grpo"] = option(
        "gapg",
        "Advantage estimator of rl.trainer=gapg's update (rl/advantages.py), for the ablation: gapg (the paper's: "
        "(r − mean)/(G−1), summed token log-probs), grpo (the original GRPO loss, TRL's loss_type='grpo' with "
        "scale_rewards='group': (r − mean)/std, each response's token mean; TRL's GRPOConfig loss_type defaults to "
        "'dapo', a token mean over the whole batch) or dr_grpo (r − mean, a constant normaliser rl.max_new_tokens). "
        "Same rollouts, filtering and γ's controller.",
    )
    budget: float = option(
        0.3,
        "Maximum share of problems sent to the cloud, in (0, 1); ρ = budget / (1 - budget). rl.env=query: the "
        "maximum mean number of cloud calls (answered queries + escalations) per problem, any positive number: "
        "γ's controller targets it, eval caps the calls of a suite at floor(budget·N), and filtering takes a D2 "
        "share of min(budget, 1).",
    )
    group_size: int = option(8, "G: responses sampled per prompt (>= 2).")
    rollout_prompts: int = option(
        16,
        "Prompts sampled per step before filtering, over all processes (each process rolls out its contiguous share).",
    )
    batch_prompts: int = option(
        8,
        "Prompts per update after adaptive filtering (D1 + D2), over all processes: filtering runs on the gathered "
        "groups.",
    )
    seed_per_prompt: bool = option(
        False,
        "Sample each prompt's G responses alone, seeded by (train.seed, step, position): rollouts then do not depend "
        "on the number of processes or on batching, so N processes reproduce 1 (the scale-out test). Slower on GPUs.",
    )
    generator: Literal["hf", "vllm"] = option(
        "hf",
        "Rollout generation: hf (batched transformers generate, CPU or GPU) or vllm (GPU only, pip install -e "
        '".[gpu]"; TRL\'s vLLM backend, weights pushed to it after every update). Evaluation always uses hf.',
    )
    rollout_dtype: Literal["policy", "bfloat16", "float16"] = option(
        "policy",
        "Weights the rl.generator=hf rollouts sample from. policy: the trained weights themselves (exact on-policy "
        "samples). bfloat16 / float16: a low-precision copy, refreshed after every update, that decodes about 1.5x "
        "faster on CPUs with bf16 matmuls (AVX512-BF16, AMX) and on GPUs; the gap between the copy and the policy "
        "is corrected by rl.rollout_is_cap (docs/rollout_speed.md). Evaluation always uses the policy itself.",
    )
    rollout_is_cap: float = option(
        2.0,
        "rl.rollout_dtype other than policy: truncated importance sampling. Each sequence's coefficient is "
        "multiplied by min(π_θ(y|x) / μ(y|x), cap), μ being the low-precision copy that sampled it (TIS, as TRL's "
        "vllm_importance_sampling_correction). 0 = no correction.",
    )
    vllm_mode: Literal["colocate", "server"] = option(
        "colocate",
        "rl.generator=vllm: colocate (a vLLM engine in each training process, sharing its GPU) or server "
        "(a separate `trl vllm-serve --model <path>` at rl.vllm_server_base_url), as TRL's GRPOTrainer offers.",
    )
    vllm_server_base_url: str = option("http://127.0.0.1:8000", "rl.vllm_mode=server: the URL of `trl vllm-serve`.")
    vllm_gpu_memory_utilization: float = option(0.3, "rl.vllm_mode=colocate: share of the GPU memory vLLM may take.")
    vllm_max_model_len: int = option(0, "vLLM context length (prompt + completion); 0 = the model's own.")
    filtering: bool = option(
        True, "Adaptive prompt filtering (paper Algorithm 1); off = train on every sampled prompt."
    )
    d1_rule: Literal["any_correct", "mixed"] = option(
        "any_correct",
        "D1 membership: any_correct (>= 1 local response correct) or mixed (>= 1 local answer right and "
        ">= 1 local answer wrong; escalations are not local answers).",
    )
    d2_rounding: Literal["nearest", "expected"] = option(
        "nearest",
        "How many D2 prompts a step trains (rl/filtering.py): nearest (the count whose D2 share is nearest "
        "ρ/(1+ρ); with few D1 prompts at a small budget that is always 0) or expected (rounded at random so that "
        "the mean over steps is ρ·|D1|).",
    )
    gamma: float = option(0.0, "Initial Lagrange multiplier γ (the cloud-call penalty).")
    gamma_lr: float = option(
        0.0,
        "rl.gamma_controller=dual: the dual-ascent step η, γ ← max(γ_min, γ + η (offload_rate − budget)); "
        "rl.env=query: calls per rollout instead of offload_rate. 0 keeps γ fixed as in the paper (the fixed γ is "
        "rl.gamma_controller=dual rl.gamma_lr=0; the PID does not use this key).",
    )
    gamma_max: float = option(
        0.0,
        "Upper bound on γ for γ's controller (0 = none). Set it to reward.alpha_cloud: past α_c a correct cloud "
        "answer earns less than a wrong local one, so no budget needs more, and an unbounded γ winds up while the "
        "policy lags and then drives offload far under the budget (docs/budget_dynamics.md).",
    )
    gamma_min: float = option(
        0.0,
        "Lower bound on γ for both controllers. 0 (default): the budget is a ceiling, γ ≥ 0 as a Lagrange "
        "multiplier of an inequality. Negative (e.g. -reward.alpha_cloud): the budget becomes a target; under it γ "
        "goes below 0 and pays a bonus of |γ| per cloud call, so a policy whose own reward optimum escalates less "
        "than the budget is pushed up to it (docs/budget_control.md).",
    )
    gamma_controller: Literal["dual", "pid"] = option(
        "pid",
        "How γ follows the usage (rl/lagrangian.py): pid (the PID Lagrangian of Stooke et al. 2020, "
        "rl/pid_lagrangian.py, with gains rl.pid_kp, rl.pid_ki, rl.pid_kd; rl.gamma_lr is then unused) or dual (dual "
        "ascent with step rl.gamma_lr; 0 = γ fixed at rl.gamma, the paper's setting). Both start at rl.gamma and stay "
        "in [rl.gamma_min, rl.gamma_max]. pid is the default by measurement: over 30 steps it holds the greedy "
        "policy's usage closer to the budget and is as accurate or more (docs/budget_control.md); the short CPU "
        "configs keep dual, within noise over 10 steps and a third cheaper a step.",
    )
    pid_kp: float = option(
        0.5,
        "rl.gamma_controller=pid: proportional gain K_P on the (smoothed) error usage − budget of this step.",
    )
    pid_ki: float = option(
        0.2,
        "rl.gamma_controller=pid: integral gain K_I, the integral's step per unit of error (the integral alone, "
        "K_P = K_D = 0, is dual ascent with rl.gamma_lr = K_I).",
    )
    pid_kd: float = option(
        0.0,
        "rl.gamma_controller=pid: derivative gain K_D on the rise of the (smoothed) usage over rl.pid_d_delay steps "
        "(a fall counts 0).",
    )
    pid_ema: float = option(
        0.0,
        "rl.gamma_controller=pid: weight α of the past in the moving averages of the error (K_P's term) and of the "
        "usage (K_D's term), in [0, 1): 0 = no smoothing; 0.5 averages over about 3 steps.",
    )
    pid_d_delay: int = option(
        1, "rl.gamma_controller=pid: the derivative compares the smoothed usage with its value this many steps back."
    )
    usage_signal: Literal["auto", "sampled", "greedy"] = option(
        "auto",
        "What the γ controller holds to the budget: sampled (the usage of the step's training rollouts, at "
        "rl.temperature) or greedy (the usage of the greedy policy, the one evaluated and served, on a probe of "
        "rl.probe_size training problems held out of training, measured every rl.probe_every steps; "
        "docs/budget_control.md). auto: greedy with rl.gamma_controller=pid, sampled with dual (each the signal its "
        "gains were measured on), so rl.gamma_controller=dual alone restores the old behaviour.",
    )
    probe_size: int = option(
        64, "rl.usage_signal=greedy: training problems set aside (never trained on) whose greedy usage γ follows."
    )
    probe_every: int = option(
        1, "rl.usage_signal=greedy: measure the probe (and step γ) every this many steps; γ holds in between."
    )
    temperature: float = option(1.0, "Sampling temperature for training rollouts.")
    top_p: float = option(1.0, "Nucleus sampling for training rollouts.")
    max_new_tokens: int = option(64, "Response tokens per rollout.")
    max_prompt_tokens: int = option(512, "Prompts longer than this (in tokens) are rejected with an error.")
    max_queries: int = option(
        2,
        "rl.env=query: <query> calls answered per rollout; a later <query> gets <response>call limit "
        "reached</response> (no call, no charge). An <unknown> escalation is one more call on top.",
    )
    max_response_tokens: int = option(
        64, "rl.env=query: a cloud answer inserted as <response> is cut to this many device tokens (0 = no cut)."
    )
    gamma_tokens: float = option(
        0.0,
        "rl.env=query: fixed extra cost per cloud token (prompt + completion, as the cloud reports them): "
        "r̃ = r − γ·calls − gamma_tokens·cloud_tokens.",
    )

    @property
    def greedy_usage(self) -> bool:
        """Whether γ's controller follows the greedy probe: rl.usage_signal=greedy, or auto with the PID (auto stays
        in the config, so a saved config with rl.gamma_controller=dual still goes back to the sampled usage)."""
        return self.usage_signal == "greedy" or (self.usage_signal == "auto" and self.gamma_controller == "pid")

    def check(self) -> None:
        self.require_finite(
            "gamma", "gamma_lr", "gamma_min", "gamma_max", "gamma_tokens", "pid_kp", "pid_ki", "pid_kd", "pid_ema"
        )
        if self.env == "query" and not (self.budget > 0.0 and math.isfinite(self.budget)):
            raise ConfigError(
                f"rl.budget={self.budget}: with rl.env=query the budget is the mean number of cloud calls per problem; "
                "it must be a positive number (e.g. rl.budget=0.3, or rl.budget=1.5 for one and a half calls per "
                "problem)."
            )
        if self.env != "query" and (not (0.0 < self.budget < 1.0) or math.isnan(self.budget)):
            raise ConfigError(
                f"rl.budget={self.budget} must lie strictly between 0 and 1 (it is the maximum cloud share, "
                "e.g. rl.budget=0.3 for 30%)."
            )
        if self.group_size < 2:
            raise ConfigError(
                f"rl.group_size={self.group_size}: the group policy gradient needs at least 2 responses per prompt "
                "(its baseline is the group mean and it divides by G-1). Set rl.group_size=2 or more."
            )
        if self.batch_prompts < 1 or (self.trainer == "gapg" and self.rollout_prompts < self.batch_prompts):
            raise ConfigError(
                f"rl.rollout_prompts={self.rollout_prompts} must be >= rl.batch_prompts={self.batch_prompts} >= 1 "
                "(filtering picks the update batch from the sampled prompts)."
            )
        if self.trainer == "sft" and self.env != "route":
            raise ConfigError("rl.trainer=sft teaches the route format (answers and <unknown>); set rl.env=route.")
        if self.generator == "vllm" and (self.env != "route" or self.seed_per_prompt or self.trainer != "gapg"):
            raise ConfigError(
                "rl.generator=vllm generates single-turn rollouts in one batch per step: it needs rl.env=route, "
                "rl.trainer=gapg and rl.seed_per_prompt=false (query mode continues rollouts turn by turn: use "
                "rl.generator=hf)."
            )
        if self.advantage != "gapg" and self.trainer != "gapg":
            raise ConfigError(
                f"rl.advantage={self.advantage} chooses the estimator of rl.trainer=gapg's update; rl.trainer="
                f"{self.trainer} has its own (set rl.advantage=gapg, or rl.trainer=gapg)."
            )
        if self.rollout_dtype != "policy" and (self.generator != "hf" or self.trainer != "gapg"):
            raise ConfigError(
                f"rl.rollout_dtype={self.rollout_dtype} is a setting of this repo's rollouts (rl.generator=hf, "
                "rl.trainer=gapg); set rl.rollout_dtype=policy."
            )
        if not (self.rollout_is_cap >= 0 and math.isfinite(self.rollout_is_cap)):
            raise ConfigError(f"rl.rollout_is_cap={self.rollout_is_cap} must be a number >= 0 (0 = no correction).")
        if self.env == "query" and self.trainer == "trl_drgrpo":
            raise ConfigError("rl.env=query trains with rl.trainer=gapg or dpo (the TRL GRPO baseline is single-turn).")
        if self.max_queries < 0 or self.max_response_tokens < 0 or self.gamma_tokens < 0:
            raise ConfigError("rl.max_queries, rl.max_response_tokens and rl.gamma_tokens must be >= 0.")
        if self.gamma_lr < 0 or self.gamma_max < 0:
            raise ConfigError("rl.gamma_lr and rl.gamma_max must be >= 0.")
        if self.gamma_min > 0:
            raise ConfigError(
                f"rl.gamma_min={self.gamma_min} must be <= 0 (0: the budget is a ceiling; < 0: a target)."
            )
        if self.gamma < self.gamma_min:
            raise ConfigError(
                f"rl.gamma={self.gamma} is below rl.gamma_min={self.gamma_min}: γ >= 0 unless rl.gamma_min < 0 "
                "makes the budget a target; raise rl.gamma or lower rl.gamma_min."
            )
        if self.gamma_max and self.gamma > self.gamma_max:
            raise ConfigError(f"rl.gamma={self.gamma} is above rl.gamma_max={self.gamma_max}; lower one of them.")
        for gain in ("pid_kp", "pid_ki", "pid_kd"):
            if getattr(self, gain) < 0:
                raise ConfigError(
                    f"rl.{gain}={getattr(self, gain)} must be >= 0 (a negative gain moves γ away from the budget)."
                )
        if not 0.0 <= self.pid_ema < 1.0:
            raise ConfigError(
                f"rl.pid_ema={self.pid_ema} must lie in [0, 1): it is the weight of the past in a moving average "
                "(0 = no smoothing; 1 would never take a new measurement)."
            )
        if self.pid_d_delay < 1:
            raise ConfigError(f"rl.pid_d_delay={self.pid_d_delay} must be >= 1 (steps back for the derivative).")
        if self.greedy_usage and (self.probe_size < 1 or self.probe_every < 1):
            raise ConfigError(
                f"rl.usage_signal=greedy needs rl.probe_size >= 1 and rl.probe_every >= 1 (got {self.probe_size}, "
                f"{self.probe_every}); or rl.usage_signal=sampled."
            )
        if self.gamma_controller == "pid" and not (self.pid_kp or self.pid_ki or self.pid_kd):
            raise ConfigError(
                "rl.gamma_controller=pid with rl.pid_kp, rl.pid_ki and rl.pid_kd all 0 never moves γ; set a gain "
                "(e.g. rl.pid_kp=0.5 rl.pid_ki=0.2), or for a fixed γ use rl.gamma_controller=dual rl.gamma_lr=0."
            )
        if self.temperature <= 0:
            raise ConfigError(f"rl.temperature={self.temperature} must be > 0 for sampled rollouts (training).")


@dataclass
class TuningConfig(Section):
    """rl.trainer=sft: cloud-augmented supervised task tuning (CDCDA-PLM, seed 004 §3; rl/sft.py, envs/augment.py,
    envs/filters.py)."""

    section = "sft"

    num_real: int = option(
        200,
        "Real examples: the first N training problems, each with its reference response in the device's answer "
        "format (ladder: '37 * 46 = 1702. \\boxed{1702}'; Countdown: <think>/<answer>; MATH: the dataset's solution).",
    )
    augment_k: int = option(
        5, "k: Input/Response pairs the cloud writes per real example (paper eq. 1, default 5); 0 = no augmentation."
    )
    verify_answers: bool = option(
        True,
        "Semantic consistency for math-like tasks: keep a synthetic pair only if its final answer is right (ladder: "
        "exact evaluation; Countdown: the equation checker; MATH: agreement with an independent cloud solution, "
        "one more cached call per pair).",
    )
    nli_model: str = option(
        "",
        "Semantic consistency filter (eq. 2): local directory or hub id of an NLI classifier; a pair is kept if "
        "P(entail) >= scf_threshold in both directions between the inputs. Empty = answer check only (no NLI ships "
        "offline).",
    )
    scf_threshold: float = option(
        0.5, "ε_scf: entailment probability both ways must reach this (only with sft.nli_model)."
    )
    rouge_l_max: float = option(
        0.7,
        "ε_tdf, token diversity filter (eq. 3): drop a synthetic pair whose input has ROUGE-L F1 above this with "
        "the original input (near-copies). 1.0 = keep all.",
    )
    length_ratio_min: float = option(
        0.5, "ε_min, length filter (eq. 4): len(x_syn)/len(x) and len(y_syn)/len(y), in words, at least this."
    )
    length_ratio_max: float = option(2.0, "ε_max, length filter (eq. 4): those ratios at most this.")
    unknown_share: float = option(
        0.15,
        "Share of the SFT mix that answers <unknown> I need external assistance </unknown> (problems the base "
        "model failed on), so the escalation tag exists before RL. 0 = pure task tuning (the 'task tuning only' "
        "baseline).",
    )
    probe_problems: int = option(
        200,
        "Training problems after the real ones that the base model tries, to find those it cannot solve "
        "(the <unknown> examples come from these).",
    )
    probe_samples: int = option(
        1, "Attempts per probed problem: 1 = greedy; n > 1 = n samples at temperature 1 (failed = none correct)."
    )
    unknown_max_level_acc: float = option(
        1.0,
        "Only failures from difficulty levels whose probe accuracy is at most this become <unknown> examples "
        "(1.0 = every failed problem; e.g. 0.2 = only levels the base model nearly never solves).",
    )
    batch_size: int = option(
        16, "Examples per optimizer step (split into train.micro_batch_size with gradient accumulation)."
    )

    def check(self) -> None:
        if not 0.0 <= self.unknown_share < 1.0:
            raise ConfigError(
                f"sft.unknown_share={self.unknown_share} must lie in [0, 1): it is the <unknown> share of the SFT mix "
                "(e.g. 0.15)."
            )
        if not (0.0 < self.length_ratio_min <= self.length_ratio_max):
            raise ConfigError(
                f"sft.length_ratio_min={self.length_ratio_min} and sft.length_ratio_max={self.length_ratio_max} "
                "must satisfy 0 < min <= max (e.g. 0.5 and 2.0)."
            )
        if (
            not 0.0 < self.rouge_l_max <= 1.0
            or not 0.0 <= self.scf_threshold <= 1.0
            or not 0.0 <= self.unknown_max_level_acc <= 1.0
        ):
            raise ConfigError(
                "sft.rouge_l_max must lie in (0, 1], sft.scf_threshold and sft.unknown_max_level_acc in [0, 1]."
            )
        if (
            self.num_real < 1
            or self.augment_k < 0
            or self.probe_problems < 0
            or self.probe_samples < 1
            or self.batch_size < 1
        ):
            raise ConfigError(
                "sft.num_real, sft.probe_samples and sft.batch_size must be >= 1; "
                "sft.augment_k and sft.probe_problems >= 0."
            )


@dataclass
class TrainConfig(Section):
    section = "train"

    output_dir: str = option("outputs/run", "Checkpoints, metrics.jsonl, cloud cache and the final model go here.")
    max_steps: int = option(20, "Policy-gradient updates.")
    learning_rate: float = option(1e-5, "AdamW learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient clipping (0 = off).")
    max_skipped_updates: int = option(
        3,
        "A non-finite (NaN/inf) loss or gradient norm skips that update (counted in metrics.jsonl as skipped_updates, "
        "with a warning); more than this many in a row stops the run with an error (0 = stop at the first).",
    )
    micro_batch_size: int = option(16, "Sequences per forward/backward pass (gradient accumulation splits the batch).")
    share_prompt_head: bool = option(
        True,
        "One process: score a prompt head shared by all sequences of the update once (KV cache) instead of in "
        "every sequence: the same loss and gradient up to float rounding, at a fraction of the tokens. Off: "
        "every sequence whole, as several processes do (bit-level comparisons across process counts).",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no", "Accelerate mixed precision: no, bf16 or fp16 (GPU).")
    seed: int = option(0, "Seed for sampling, data order and initialisation.")
    save_every: int = option(10, "Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = option(2, "How many step checkpoints to keep.")
    eval_every: int = option(0, "Held-out evaluation every N steps (0 = only before/after training).")
    eval_before: bool = option(True, "Evaluate the untrained policy before step 1 (the 'before' row).")
    eval_batch_size: int = option(32, "Prompts per generate() call in evaluation.")
    eval_max_new_tokens: int = option(64, "Response tokens in evaluation (greedy).")
    wandb: bool = option(
        True, "Log to Weights & Biases (offline unless WANDB_API_KEY is set or WANDB_MODE says otherwise)."
    )
    wandb_project: str = option("cloudroute", "W&B project.")
    run_name: str = option("", "Run name (default: the output_dir's name).")
    wandb_group: str = option("", "W&B group, e.g. the sweep a run belongs to (sweep.py sets it).")

    def check(self) -> None:
        self.require_finite("learning_rate", "max_grad_norm")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate} must be > 0 (e.g. 1e-5).")
        if self.max_skipped_updates < 0:
            raise ConfigError(
                f"train.max_skipped_updates={self.max_skipped_updates} must be >= 0 "
                "(0 = stop at the first NaN/inf update)."
            )
        if self.max_steps < 0 or self.micro_batch_size < 1:
            raise ConfigError("train.max_steps must be >= 0 and train.micro_batch_size >= 1.")


@dataclass
class DPOConfig(Section):
    section = "dpo"

    beta: float = option(0.1, "DPO β (strength of the implicit KL to the reference model; LSRP Appendix A: 0.1).")
    loss_type: str = option("sigmoid", "TRL DPO loss: sigmoid (the DPO paper, LSRP), ipo, hinge, robust, ...")
    learning_rate: float = option(5e-5, "DPO learning rate (LSRP Appendix A: 5e-5).")
    num_epochs: float = option(3.0, "Epochs over the preference pairs (LSRP Appendix A: 3).")
    batch_size: int = option(2, "Preference pairs per forward pass (per_device_train_batch_size; LSRP: 2 per GPU).")
    grad_accum: int = option(
        1, "Gradient accumulation steps: pairs per optimizer step = batch_size × grad_accum × processes."
    )
    lora: bool = option(
        True,
        "Train LoRA adapters (shape from model.lora_r/lora_alpha/lora_dropout/lora_target_modules); "
        "the reference model is the base with the adapters off. The saved final/ is merged.",
    )
    max_length: int = option(
        1024, "Longest prompt + completion in tokens; longer pairs are cut from the end (keep_start)."
    )
    num_prompts: int = option(
        64,
        "rl.trainer=dpo: training problems rolled out (rl.group_size samples each at rl.temperature) to build pairs.",
    )
    max_pairs_per_prompt: int = option(
        4, "rl.trainer=dpo: at most this many pairs per problem, largest reward gap first (0 = all)."
    )
    rounds: int = option(
        1,
        "rl.trainer=dpo: rounds of (roll out the current policy -> pairs -> DPO). Between rounds γ takes the dual "
        "step of rl.gamma_lr toward rl.budget on the measured offload (calls per rollout in query mode), so DPO "
        "holds the budget the way GAPG does; 1 = one offline round at the fixed γ = rl.gamma.",
    )

    def check(self) -> None:
        if (
            self.beta <= 0
            or self.learning_rate <= 0
            or self.num_epochs <= 0
            or self.batch_size < 1
            or self.grad_accum < 1
            or self.max_length < 16
        ):
            raise ConfigError(
                "dpo.beta, dpo.learning_rate and dpo.num_epochs must be > 0, dpo.batch_size and dpo.grad_accum >= 1, "
                "dpo.max_length >= 16."
            )
        if self.num_prompts < 1 or self.max_pairs_per_prompt < 0 or self.rounds < 1:
            raise ConfigError(
                "dpo.num_prompts and dpo.rounds must be >= 1 and dpo.max_pairs_per_prompt >= 0 (0 = every pair)."
            )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    sft: TuningConfig = field(default_factory=TuningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    lsrp: LSRPConfig = field(default_factory=LSRPConfig)


def _all_keys(dc=Config, prefix=""):
    """(dotted key, field, default, its section's class) of every option."""
    for f in fields(dc):
        default = f.default_factory() if f.default is MISSING else f.default
        if is_dataclass(default):
            yield from _all_keys(type(default), prefix + f.name + ".")
        else:
            yield prefix + f.name, f, default, dc


SECTIONS = {f.name for f in fields(Config)}


def format_help(effective: Config | None = None) -> str:
    """Every option with its type, default, help text and choices (``train.py --help``); with ``effective`` (the
    config after ``--config`` and the overrides), each option also shows the value a run would use."""
    lines, section = [], None
    values = _flatten(to_dict(effective)) if effective is not None else {}
    for key, f, default, cls in _all_keys():
        sec = key.split(".")[0]
        if sec != section:
            section = sec
            lines.append(f"\n[{sec}]")
        now = f", now {values[key]!r}" if key in values and values[key] != default else ""
        lines.append(f"  {key} ({type_name(cls, f.name)}, default {default!r}{now})")
        lines.append(f"      {f.metadata.get('help', '')}")
        allowed = choices_of(cls, f.name)
        if allowed is not None:
            lines.append(f"      choices: {', '.join(allowed)}")
    return "\n".join(lines)


def _unknown_key_error(key: str) -> ConfigError:
    known = [k for k, _, _, _ in _all_keys()]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else " Run `python train.py --help` for the list."
    return ConfigError(f"Unknown config key '{key}'.{hint}")


def _flatten(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix + k in SECTIONS and not prefix:
            out.update(_flatten(v, k + "."))
        else:
            out[prefix + k] = v
    return out


def _choice_error(key: str, layer) -> ConfigError | None:
    """``section.key='x' is not one of a, b.`` when ``key`` is a ``Literal`` field (OmegaConf rejected the value)."""
    classes = {k: cls for k, _, _, cls in _all_keys()}
    if key not in classes:
        return None
    allowed = choices_of(classes[key], key.split(".", 1)[1])
    if allowed is None:
        return None
    return ConfigError(f"{key}={str(OmegaConf.select(layer, key))!r} is not one of {', '.join(allowed)}.")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides, then validated."""
    schema = OmegaConf.structured(Config)
    layers = []
    if path:
        if not os.path.exists(path):
            raise ConfigError(
                f"Config file '{path}' does not exist. Pass an existing YAML, e.g. configs/cpu_default.yaml."
            )
        layers.append(OmegaConf.load(path))
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"Override '{ov}' is not of the form section.key=value (e.g. rl.budget=0.3).")
        key = ov.split("=", 1)[0].lstrip("-")
        layers.append(OmegaConf.from_dotlist([f"{key}={ov.split('=', 1)[1]}"]))
    cfg = schema
    classes = {k: cls for k, _, _, cls in _all_keys()}
    for layer in layers:
        # check keys first so the error names the full dotted key
        for key, value in _flatten(OmegaConf.to_container(layer)).items():
            if key not in classes:
                raise _unknown_key_error(key)
            allowed = choices_of(classes[key], key.split(".", 1)[1])
            if isinstance(value, bool) and allowed and ("yes", "no")[value is False] in allowed:
                OmegaConf.update(layer, key, ("yes", "no")[value is False])  # YAML reads a bare no/yes as a bool
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except (ConfigKeyError, ConfigAttributeError) as e:
            raise _unknown_key_error(str(e.full_key)) from None
        except ValidationError as e:
            msg = e.msg.splitlines()[0]
            choice = _choice_error(str(e.full_key), layer) if msg.startswith("Invalid value") else None
            if choice is not None:  # a value outside a Literal's choices
                raise choice from None
            msg = re.sub(r"field of type 'Literal\[[^]]*\]'", "field of type 'str'", msg)  # choices are strings
            m = re.match(r"Value '(.*)' of type", msg)
            if m and may_be_secret(m.group(1)):  # e.g. an API key pasted into the wrong key: never echo it
                msg = "Value <not shown: it looks like a secret>" + msg[m.end() - len(" of type") :]
            raise ConfigError(
                f"Config key '{e.full_key}' got a value of the wrong type: {msg}. "
                "See `python train.py --help` for its type."
            ) from None
    config: Config = OmegaConf.to_object(cfg)
    validate(config)
    return config


def validate(c: Config) -> None:
    """Every section validates itself (its choices and rules); then the rules that need two sections."""
    for f in fields(c):
        getattr(c, f.name).validate()
    if c.rl.env == "lsrp":  # the leader is the cloud section's model
        c.lsrp.check_run(c.cloud.backend)
    if not c.task.escalation and c.rl.env != "route":
        raise ConfigError(
            f"task.escalation=false (the task-tuning prompt, no escalation) is a route-mode prompt; rl.env={c.rl.env} "
            "has its own prompts with escalation. Use rl.env=route, or task.escalation=true."
        )
    if not c.task.escalation and c.rl.trainer == "sft" and c.sft.unknown_share > 0:
        raise ConfigError(
            f"task.escalation=false offers no escalation, but sft.unknown_share={c.sft.unknown_share:g} trains "
            "<unknown> answers: set sft.unknown_share=0 (pure task tuning), or task.escalation=true."
        )


def to_dict(c: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(c))


def to_yaml(c: Config) -> str:
    """The resolved config as YAML (``train.py --print-config``): loadable again with ``--config``.  The ``lsrp``
    section only with ``rl.env=lsrp`` (its defaults fill it in again when loaded)."""
    d = to_dict(c)
    if c.rl.env != "lsrp":
        d.pop("lsrp", None)
    return OmegaConf.to_yaml(OmegaConf.create(d))


def save_config(c: Config) -> str:
    """Create ``train.output_dir`` and write the resolved config to ``<output_dir>/config.json`` (no secret is in
    it: the cloud key is read from the variable ``cloud.api_key_env`` names).  Returns the file's path."""
    os.makedirs(c.train.output_dir, exist_ok=True)
    path = os.path.join(c.train.output_dir, "config.json")
    with open(path, "w") as f:
        json.dump(to_dict(c), f, indent=2)
    return path


def rho(budget: float, env: str = "route") -> float:
    """ρ of the constraint E[1{cloud}] <= ρ E[1{local}]; it sets the filtering mix D1 : D2 = 1 : ρ (docs/method.md §5).

    route: ``budget`` is the cloud share, ρ = b / (1 − b) (0.3 -> 3/7).  query: ``budget`` is cloud calls per problem;
    at one call each, at most a share min(b, 1) of the problems can be helped, so ρ = s / (1 − s) with s = min(b, 1),
    and ρ = ∞ (every D2 prompt) from one call per problem up."""
    share = min(budget, 1.0) if env == "query" else budget
    return math.inf if share >= 1.0 else share / (1.0 - share)
