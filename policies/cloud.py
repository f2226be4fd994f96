"""Cloud backends and the persistent cache of their answers.

    cloud = make_cloud(cfg.cloud, cache_path="outputs/run/cloud_cache.jsonl")
    text = cloud.answer(problem)        # at most one real call per problem, ever

* ``SimulatedCloud``: seeded, accuracy configurable overall and per difficulty
  level.  Whether it solves a problem is a fixed draw from (seed, problem uid), so
  repeated and resumed runs see the same cloud.  A correct answer is the gold in
  ``\\boxed{}``; a wrong one is a plausible wrong number.
* ``HFCloud``: a local transformers model answering greedily.

``CachedCloud`` wraps either one with a JSON-lines file keyed by problem uid: an
answer is written (and flushed) as soon as it arrives, so a crash loses nothing
and a resumed run never pays twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass

from envs.problem import Problem
from envs.prompts import CLOUD_SYSTEM


@dataclass
class CloudReply:
    text: str
    tokens: int  # completion tokens the cloud produced (cost accounting)


class SimulatedCloud:
    name = "simulated"

    def __init__(self, accuracy: float = 0.95, accuracy_per_level: dict | None = None, seed: int = 1234):
        self.accuracy = accuracy
        self.accuracy_per_level = {int(k): float(v) for k, v in (accuracy_per_level or {}).items()}
        self.seed = seed

    def solves(self, problem: Problem) -> bool:
        acc = self.accuracy_per_level.get(problem.level, self.accuracy)
        h = hashlib.sha256(f"{self.seed}:{problem.uid}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < acc

    def answer_many(self, problems: list[Problem]) -> list[CloudReply]:
        replies = []
        for p in problems:
            if self.solves(p):
                ans = p.answer
            else:
                rng = random.Random(f"{self.seed}:{p.uid}:wrong")
                try:
                    ans = str(int(float(p.answer)) + rng.choice([-10, -2, -1, 1, 2, 10]))
                except ValueError:
                    ans = "\\text{no answer}"
            if "numbers" in p.meta:  # countdown: the cloud writes an equation
                eq = p.meta["solution"] if self.solves(p) else " + ".join(map(str, p.meta["numbers"]))
                text = f"<think> Let me search for a combination. </think>\n<answer> {eq} </answer>"
            else:
                text = f"Working it out carefully, the answer is \\boxed{{{ans}}}."
            replies.append(CloudReply(text=text, tokens=len(text.split())))
        return replies


class HFCloud:
    """A local transformers model as the cloud (greedy, batched)."""

    name = "hf"

    def __init__(self, model_path: str, max_new_tokens: int = 256, template: str = "math"):
        from policies.device import load_tokenizer, resolve_model_path
        from policies.generation import HFGenerator
        from transformers import AutoModelForCausalLM

        path = resolve_model_path(model_path)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.generator = HFGenerator(self.model, self.tokenizer)
        self.max_new_tokens = max_new_tokens

    def answer_many(self, problems: list[Problem]) -> list[CloudReply]:
        from policies.generation import chat_prompt

        prompts = [chat_prompt(self.tokenizer, p.question, CLOUD_SYSTEM) for p in problems]
        out = self.generator.generate(prompts, n=1, temperature=0.0, max_new_tokens=self.max_new_tokens)
        return [CloudReply(text=g[0].text, tokens=len(g[0].completion_ids)) for g in out]


class CachedCloud:
    """Any backend plus a JSON-lines answer cache keyed by problem uid (one call per problem, ever)."""

    def __init__(self, backend, path: str | None):
        self.backend, self.path = backend, path
        self.cache: dict[str, dict] = {}
        self.calls = 0  # real backend calls made by this process
        self.tokens = 0
        if path and os.path.exists(path):
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by a crash mid-write: that answer is simply asked again
                    self.cache[row["uid"]] = row

    def answer_many(self, problems: list[Problem]) -> list[str]:
        missing = [p for p in dict.fromkeys(problems) if p.uid not in self.cache]
        if missing:
            replies = self.backend.answer_many(missing)
            self.calls += len(missing)
            rows = []
            for p, r in zip(missing, replies):
                self.tokens += r.tokens
                row = {"uid": p.uid, "backend": self.backend.name, "text": r.text, "tokens": r.tokens}
                self.cache[p.uid] = row
                rows.append(row)
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                with open(self.path, "a") as f:
                    for row in rows:
                        f.write(json.dumps(row) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        return [self.cache[p.uid]["text"] for p in problems]

    def answer(self, problem: Problem) -> str:
        return self.answer_many([problem])[0]


def make_cloud(cfg, cache_path: str | None) -> CachedCloud:
    if cfg.backend == "simulated":
        backend = SimulatedCloud(cfg.accuracy, cfg.accuracy_per_level, cfg.seed)
    elif cfg.backend == "hf":
        backend = HFCloud(cfg.model, cfg.max_new_tokens)
    else:
        raise ValueError(f"cloud.backend={cfg.backend!r}: use simulated or hf")
    return CachedCloud(backend, cfg.cache_file or cache_path)
