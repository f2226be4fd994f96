"""SMFB-DPO (LSRP §3.3): the device's feedback trains the leader with DPO.

    pairs = smfb_pairs(records_t0, records_t1, weights)          # eq. 10-11: two temperatures, better S preferred
    pairs = balance(pairs, seed=0)                               # the same count for every strategy
    final = train_leader(pairs, tasks, cfg, "outputs/lsrp/leader_dpo")   # eq. 12-13: TRL DPOTrainer + LoRA

For each synthetic user-task pair the leader writes two guidelines for the same prompt at two
temperatures (``lsrp.dpo_temperatures``); the device executes both with the user's data; the one
with the higher score S (eq. 17) is "prefer", the other "reject" (eq. 11). Pairs whose scores differ
by at most ``lsrp.min_score_gap``, or whose guidelines are the same text, are ties and dropped.

Balancing: the paper notes that the four strategies feed back different numbers of samples and that
the imbalance biases the leader. With ``lsrp.dpo_prompt=strategy`` each pair keeps the strategy prompt
that produced it and ``balance`` downsamples every strategy to the smallest non-empty count (seeded);
with ``lsrp.dpo_prompt=general`` every guideline is written under the general prompt P_g (eq. 10, the
paper's own remedy) and there is one bucket.

DPO (eq. 12-13) is TRL ``DPOTrainer`` on the leader (the ``cloud.model`` weights) with LoRA, β 0.1,
sigmoid loss, lr 5e-5, 3 epochs by default (the ``dpo`` section; LSRP Appendix A), the reference model
being the leader before DPO. The merged leader is saved to ``<dir>/final``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from envs.lsrp.strategies import leader_messages
from policies.device import load_device_model
from rl.dpo import train_dpo


def smfb_pairs(records_a: list[dict], records_b: list[dict], weights, min_gap: float = 0.0) -> list[dict]:
    """Eq. 11: for each (uid, strategy) present at both temperatures, the guideline with the higher S is chosen."""
    other = {(r["uid"], r["strategy"]): r for r in records_b}
    pairs = []
    for a in records_a:
        b = other.get((a["uid"], a["strategy"]))
        if b is None:
            continue
        sa, sb = weights.score_record(a), weights.score_record(b)
        if abs(sa - sb) <= min_gap or a["guideline"].strip() == b["guideline"].strip():
            continue  # a tie: no preference to learn
        win, lose = (a, b) if sa > sb else (b, a)
        pairs.append(
            {
                "uid": a["uid"],
                "strategy": a["strategy"],
                "chosen": win["guideline"],
                "rejected": lose["guideline"],
                "s_chosen": max(sa, sb),
                "s_rejected": min(sa, sb),
                "t_chosen": win["temperature"],
                "t_rejected": lose["temperature"],
            }
        )
    return pairs


def balance(pairs: list[dict], seed: int = 0) -> list[dict]:
    """Per-strategy balancing: every strategy with pairs keeps the same number, the smallest count (seeded draw)."""
    by = defaultdict(list)
    for p in pairs:
        by[p["strategy"]].append(p)
    if not by:
        return []
    n = min(len(v) for v in by.values())
    keep = set()
    for strategy, group in sorted(by.items()):
        keep.update(id(p) for p in random.Random(f"{seed}:{strategy}").sample(group, n))
    return [p for p in pairs if id(p) in keep]


def dpo_rows(pairs: list[dict], tasks: dict[str, str]) -> list[dict]:
    """Conversational DPO rows: the leader's own prompt (strategy or general, and the task) and the two guidelines."""
    return [
        {
            "prompt": leader_messages(p["strategy"], tasks[p["uid"]]),
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]


def train_leader(pairs: list[dict], tasks: dict[str, str], cfg, output_dir: str, resume: bool = False) -> str:
    """DPO of the leader (cloud.model) on the pairs; returns the merged model's directory ``<output_dir>/final``."""
    import os

    model, tok = load_device_model(replace(cfg.model, name_or_path=cfg.cloud.model, gguf_file=None, lora=False))
    return train_dpo(
        model, tok, dpo_rows(pairs, tasks), cfg, output_dir, os.path.join(output_dir, "final"), resume=resume
    )
