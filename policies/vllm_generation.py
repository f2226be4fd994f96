"""vLLM rollouts (GPU only; ``pip install -e ".[gpu]"``) behind HFGenerator's ``generate()`` interface.

    accelerate launch train.py --config configs/math_qwen2.5_1.5b.yaml rl.generator=vllm                  # colocate
    trl vllm-serve --model <policy dir> --port 8000 &                                                     # server mode:
    accelerate launch train.py --config configs/math_qwen2.5_1.5b.yaml rl.generator=vllm rl.vllm_mode=server

The engine, its two modes and the weight sync are TRL's ``VLLMGeneration`` (the backend of its GRPOTrainer):
``colocate`` runs a vLLM engine inside each training process on that process's GPU; ``server`` sends the
prompts to a separate ``trl vllm-serve`` and pushes the weights to it over NCCL. ``sync_weights()`` copies
the trainer's weights into vLLM after every update (gathering ZeRO-3 shards and merging LoRA adapters on the
way), so rollouts always come from the current policy. This module only turns its token ids into ``Sample``s.
Nothing imports it unless ``rl.generator=vllm``: a CPU install never needs vllm.
"""

from __future__ import annotations

from policies.generation import Sample, eos_ids, to_sample


class VLLMGenerator:
    """``generate(prompts, n, temperature, top_p, max_new_tokens)`` on vLLM; call ``sync_weights()`` after each
    update."""

    def __init__(self, model, accelerator, tokenizer, cfg):
        """``model``: the unwrapped training model (a PeftModel with LoRA); ``cfg``: the ``rl`` config section."""
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise ImportError(
                'rl.generator=vllm needs vLLM, which runs on GPUs only: pip install -e ".[gpu]" on a GPU machine, '
                "or use rl.generator=hf."
            )
        from trl.generation.vllm_generation import VLLMGeneration

        self.tokenizer, self.eos = tokenizer, eos_ids(model, tokenizer)
        self.engine = VLLMGeneration(
            model,
            accelerator,
            tokenizer,
            mode=cfg.vllm_mode,
            server_base_url=cfg.vllm_server_base_url,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_length=cfg.vllm_max_model_len or None,
            max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            logprobs=None,
        )

    def sync_weights(self) -> None:
        """Copy the trainer's current weights into vLLM (a collective: every process calls it)."""
        self.engine.sync_weights()

    def generate(
        self, prompts: list[str], n: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64
    ) -> list[list[Sample]]:
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        engine = self.engine
        engine.temperature, engine.top_p, engine.max_completion_length = temperature, top_p, max_new_tokens
        # TRL's convention: each prompt repeated n times, one completion per row, in prompt order
        _, completions, _, _ = engine.generate([p for p in ids for _ in range(n)], None, n)
        return [
            [to_sample(self.tokenizer, ids[j], list(completions[j * n + k]), self.eos) for k in range(n)]
            for j in range(len(ids))
        ]
