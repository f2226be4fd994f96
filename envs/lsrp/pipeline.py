"""One LSRP record = one user-task pair x one leader strategy: guideline -> device answer -> metrics.

    device = Device(model, tokenizer)
    rows = execute(jobs, leader, "base", 0.0, device, judge, store)     # jobs: [(UserTask, strategy)]

For each job (eq. 4 and 1): the leader (a ``CachedCloud``: every guideline is cached, so a rerun never
asks twice) writes the guideline g_s from the strategy prompt and the public task only; the device
answers (greedily by default) from the task, the private user data and g_s; then the answer is scored: UDRR
(eq. 15), PPL under the device model (eq. 16), Flesch reading ease, and the judge's Q-A Rel. and
Persona (envs/lsrp/metrics.py). Rows go to a JSONL work file (``RecordStore``) chunk by chunk, keyed by
(leader tag, temperature, pair uid, strategy): a killed run resumes where it stopped.

``Device.choose_strategies`` is the "SLM-choose" baseline (Table 4): the device model picks the
strategy, as the letter A-D with the highest next-token probability after ``choice_prompt``.
"""

from __future__ import annotations

import torch

from core.io import append_jsonl, read_jsonl
from envs.lsrp.metrics import flesch, perplexities, udrr
from envs.lsrp.strategies import CHOICE_LETTERS, STRATEGIES, choice_prompt, device_messages, leader_messages
from envs.lsrp.users import UserTask
from policies.cloud import chat_problem
from policies.generation import HFGenerator, chat_prompt


class Device:
    """The on-device SLM: answers with the private data, scores perplexity, and (baseline) picks a strategy."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer = model, tokenizer
        # one left-padded batch for prompts of different lengths (the shared-head path batches equal lengths only)
        self.generator = HFGenerator(model, tokenizer, batch_size=batch_size, min_shared_prefix=0)
        self.batch_size = batch_size

    def answer(
        self, pairs: list[UserTask], guidelines: list[str], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        prompts = [
            chat_prompt(self.tokenizer, device_messages(p.task, p.user_data, g)) for p, g in zip(pairs, guidelines)
        ]
        out = self.generator.generate(prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens)
        return [g[0].text.strip() for g in out]

    def perplexities(self, texts: list[str]) -> list[float]:
        return perplexities(self.model, self.tokenizer, texts, self.batch_size)

    @torch.no_grad()
    def choose_strategies(self, pairs: list[UserTask]) -> list[str]:
        tok, model = self.tokenizer, self.model
        letters = [tok(letter, add_special_tokens=False)["input_ids"][0] for letter in CHOICE_LETTERS]
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            prompts = [chat_prompt(tok, choice_prompt(p.task, p.user_data)) for p in chunk]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )  # left padded
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = model(**enc, position_ids=pos).logits[:, -1, letters]
            out += [STRATEGIES[i] for i in logits.argmax(-1).tolist()]
        return out


def leader_guidelines(leader, pairs: list[UserTask], strategies: list[str]) -> list[str]:
    """Eq. 4: g_s = LLM(P_s, t) for each (pair, strategy); the leader never sees the user data."""
    requests = [chat_problem(leader_messages(s, p.task), "leader") for p, s in zip(pairs, strategies)]
    return [r.text for r in leader.answer_many(requests)]


class RecordStore:
    """The JSONL work file of records, keyed by (leader tag, temperature, pair uid, strategy)."""

    def __init__(self, path: str | None):
        self.path, self.rows = path, read_jsonl(path, key="key")  # a line torn by a crash: that record is redone

    @staticmethod
    def key(tag: str, temperature: float, uid: str, strategy: str) -> str:
        return f"{tag}|{float(temperature):g}|{uid}|{strategy}"

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> dict:
        return self.rows[key]

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            self.rows[r["key"]] = r
        append_jsonl(self.path, rows)


def execute(
    jobs,
    leader,
    tag: str,
    temperature: float,
    device: Device,
    judge,
    store: RecordStore,
    max_new_tokens: int = 128,
    device_temperature: float = 0.0,
    chunk: int = 16,
    log=print,
) -> list[dict]:
    """Records for ``jobs`` = [(UserTask, strategy)], made for those not in ``store`` (``chunk`` at a time)."""
    keys = [store.key(tag, temperature, p.uid, s) for p, s in jobs]
    todo = [(k, p, s) for k, (p, s) in zip(keys, jobs) if k not in store]
    todo = list({k: (k, p, s) for k, p, s in todo}.values())  # a job listed twice is done once
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        pairs, strategies = [p for _, p, _ in part], [s for _, _, s in part]
        guides = leader_guidelines(leader, pairs, strategies)
        outputs = device.answer(pairs, guides, max_new_tokens, device_temperature)
        ppl = device.perplexities(outputs)
        judged = judge.scores([p.task for p in pairs], [p.user_data for p in pairs], outputs)
        store.add(
            [
                {
                    "key": k,
                    "leader": tag,
                    "temperature": float(temperature),
                    "uid": p.uid,
                    "strategy": s,
                    "guideline": g,
                    "output": o,
                    "udrr": udrr(p.user_data, o),
                    "ppl": x,
                    "flesch": flesch(o),
                    **j,
                }
                for (k, p, s), g, o, x, j in zip(part, guides, outputs, ppl, judged)
            ]
        )
        log(f"lsrp [{tag}, T={temperature:g}]: {min(start + chunk, len(todo))}/{len(todo)} new records")
    return [store[k] for k in keys]
