"""The LSRP run (rl.env=lsrp): build U-U-RAG, compare strategy choices, SMFB-DPO the leader, compare again.

    accelerate launch train.py --config configs/lsrp_cpu.yaml        # or: python train.py --config ...

Stages (everything cached; a killed run restarts with the same command and redoes nothing):
  1. index:  synthetic pairs x 4 strategies: leader guideline -> device answer -> metrics (records.jsonl);
             the weights of S at the NSGA-II knee (score_weights.json); the best strategy per pair (eq. 5)
             goes into the FAISS index with the pair's embedding (uurag/).
  2. test:   "real" pairs x (4 strategies + the general prompt), base leader. A strategy choice picks one
             record per pair: U-U-RAG (top-k vote), the device model (SLM-choose), a fixed strategy, the
             general prompt (the paper's "LLM guide SLM"), a uniformly random strategy (expected value) and
             the best strategy in hindsight (oracle, an upper bound).
  3. SMFB-DPO: synthetic pairs at two leader temperatures -> preference pairs by S -> balanced -> DPO
             of the leader with LoRA (leader_dpo/final).
  4. after:  stage 2 again with the DPO'd leader: S before and after SMFB-DPO for every choice.
Outputs in train.output_dir: users.jsonl, records.jsonl, score_weights.json, uurag/, smfb_pairs.jsonl,
leader_dpo/<hash of its training pairs and settings>/final, report.json and report.md (the tables printed at the end).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import replace

import numpy as np
from accelerate.utils import set_seed

from core.io import write_jsonl
from envs.lsrp.metrics import Judge, fit_score_weights, judge_caption
from envs.lsrp.pipeline import Device, RecordStore, execute
from envs.lsrp.rag import UURAG
from envs.lsrp.strategies import STRATEGIES
from envs.lsrp.users import make_pairs
from policies.cloud import CachedCloud, make_backend
from policies.device import load_device_model
from policies.router import embed, load_encoder
from rl.smfb_dpo import balance, smfb_pairs, train_leader
from settings import save_config, to_dict

log = logging.getLogger("lsrp")
COLUMNS = ("S", "qa_rel", "persona", "udrr", "ppl", "flesch", "qa_rel_emb", "persona_emb")


def choice_rows(records: dict, pairs, choices: dict[str, list[str]], weights) -> list[dict]:
    """One row per choice method: the mean of each metric over the records it picks (one per pair)."""
    rows = []
    for method, picked in choices.items():
        recs = [records[(p.uid, s)] for p, s in zip(pairs, picked)]
        row = {"method": method, "n": len(recs)}
        for c in COLUMNS:
            row[c] = float(np.mean([weights.score_record(r) if c == "S" else r[c] for r in recs]))
        row["llm_judged"] = sum(r["qa_rel_source"] == "llm" for r in recs) / len(recs)
        row["strategies"] = {s: picked.count(s) for s in sorted(set(picked))}
        rows.append(row)
    return rows


def random_row(records: dict, pairs, weights) -> dict:
    """A uniformly random strategy per pair, in expectation: the mean over the four strategies' records."""
    recs = [records[(p.uid, s)] for p in pairs for s in STRATEGIES]
    row = {"method": "random strategy (expected)", "n": len(pairs)}
    for c in COLUMNS:
        row[c] = float(np.mean([weights.score_record(r) if c == "S" else r[c] for r in recs]))
    row["llm_judged"] = sum(r["qa_rel_source"] == "llm" for r in recs) / len(recs)
    return row


def best_strategies(records: dict, pairs, weights) -> list[str]:
    """Eq. 5: the strategy whose output scores the highest S, per pair."""
    return [max(STRATEGIES, key=lambda s: weights.score_record(records[(p.uid, s)])) for p in pairs]


def standins_caption(cfg) -> str:
    """The line under every LSRP table that says which parts are stand-ins for the paper's models and users."""
    leader, device = cfg.cloud.model, cfg.model.name_or_path
    judge = "embedding similarity" if cfg.lsrp.judge == "offline" else (cfg.lsrp.judge_model or leader)
    if cfg.lsrp.judge == "cloud" and cfg.lsrp.judge_base_url:
        judge += f" at {cfg.lsrp.judge_base_url}"
    return (
        f"Models: leader {leader} (cloud.backend={cfg.cloud.backend}), device {device}, judge {judge}; users: "
        "synthetic, and the held-out 'real' users come from the same generator (envs/lsrp/users.py)."
    )


def format_rows(rows: list[dict], title: str, captions: tuple[str, ...] = ()) -> str:
    """A markdown table of ``choice_rows``, with ``captions`` (the judge's sources, the stand-ins) under it."""
    head = f"| {title} | S | Q-A Rel. | Persona | UDRR | PPL | FRE | Q-A Rel. (emb) | Persona (emb) | LLM-judged |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['S']:+.3f} | {r['qa_rel']:.2f} | {r['persona']:.2f} | {r['udrr']:.3f} | "
            f"{r['ppl']:.2f} | {r['flesch']:.1f} | {r['qa_rel_emb']:.2f} | {r['persona_emb']:.2f} | "
            f"{r['llm_judged']:.0%} |"
        )
    return "\n".join(lines + ["", *captions])


def run_lsrp(cfg) -> int:
    s, out = cfg.lsrp, cfg.train.output_dir
    save_config(cfg)
    set_seed(cfg.train.seed)
    t_start, timings = time.time(), {}
    say = lambda msg: print(msg, flush=True)  # noqa: E731  (tables and stage summaries; progress goes to the log)

    index_pairs = make_pairs(s.num_users, s.tasks_per_user, s.seed, "synthetic")
    test_pairs = make_pairs(s.num_test_users, s.tasks_per_user, s.seed, "real")
    write_jsonl(os.path.join(out, "users.jsonl"), [p.to_dict() for p in index_pairs + test_pairs])
    tasks = {p.uid: p.task for p in index_pairs + test_pairs}

    cache = cfg.cloud.cache_file or os.path.join(out, "cloud_cache.sqlite")

    def leader_at(model: str, temperature: float) -> CachedCloud:
        """The leader (cloud.model, or the DPO'd one) at one sampling temperature, sharing the one answer cache."""
        return CachedCloud(make_backend(replace(cfg.cloud, model=model, temperature=float(temperature))), cache)

    leader = leader_at(cfg.cloud.model, cfg.cloud.temperature)
    model, tok = load_device_model(replace(cfg.model, lora=False), for_training=False)
    device = Device(model, tok)
    encoder = load_encoder(s.encoder)
    judge_cloud = None
    if s.judge == "cloud":  # greedy, a few tokens: the reply is a number
        judge_cfg = replace(cfg.cloud, model=s.judge_model or cfg.cloud.model, temperature=0.0, max_new_tokens=8)
        if s.judge_base_url:  # a judge behind its own OpenAI-compatible server (the leader stays cloud.backend)
            judge_cfg = replace(judge_cfg, backend="openai", base_url=s.judge_base_url)
        judge_cloud = CachedCloud(make_backend(judge_cfg), cache)
    judge = Judge(judge_cloud, lambda texts: embed(encoder, texts), fallback=s.judge_fallback)
    store = RecordStore(os.path.join(out, "records.jsonl"))

    def run(pairs, strategies, ldr, tag: str, temperature: float) -> list[dict]:
        """Records of every (pair, strategy): guideline by ``ldr`` at ``temperature``, device answer, metrics."""
        jobs = [(p, st) for p in pairs for st in strategies]
        return execute(
            jobs,
            ldr,
            tag,
            temperature,
            device,
            judge,
            store,
            s.device_max_new_tokens,
            s.device_temperature,
            log=log.info,
        )

    # 1. the index ---------------------------------------------------------------------------------
    t0 = time.time()
    recs = run(index_pairs, STRATEGIES, leader, "base", cfg.cloud.temperature)
    by = {(r["uid"], r["strategy"]): r for r in recs}
    grid = lambda key: np.array([[by[(p.uid, st)][key] for st in STRATEGIES] for p in index_pairs])  # noqa: E731
    weights = fit_score_weights(
        grid("qa_rel"), grid("udrr"), grid("ppl"), s.nsga_pop_size, s.nsga_generations, cfg.train.seed
    )
    weights.save(os.path.join(out, "score_weights.json"))
    index_best = best_strategies(by, index_pairs, weights)
    rag = UURAG(s.encoder, encoder).build([p.text() for p in index_pairs], index_best, [p.uid for p in index_pairs])
    rag.save(os.path.join(out, "uurag"))
    timings["index_s"] = time.time() - t0
    w = weights.w
    say(
        f"S = {w[0]:.3f}·QA-Rel + {w[1]:.3f}·UDRR − {w[2]:.3f}·PPL (min-max normalised; knee of a "
        f"{len(weights.front)}-point NSGA-II front). Best strategy of the {len(index_pairs)} synthetic pairs: "
        f"{ {st: index_best.count(st) for st in STRATEGIES} }"
    )

    # 2. strategy choice on the real pairs, base leader ------------------------------------------------
    t0 = time.time()
    base = {
        (r["uid"], r["strategy"]): r
        for r in run(test_pairs, STRATEGIES + ("general",), leader, "base", cfg.cloud.temperature)
    }
    rag = UURAG.load(os.path.join(out, "uurag"), model=encoder)  # the saved index, as a deployment would load it
    choices = {
        f"U-U-RAG (k={s.top_k})": rag.choose([p.text() for p in test_pairs], s.top_k),
        "device chooses (SLM-choose)": device.choose_strategies(test_pairs),
        f"fixed: {s.fixed_strategy}": [s.fixed_strategy] * len(test_pairs),
        "general prompt (LLM guide SLM)": ["general"] * len(test_pairs),
        "best in hindsight (oracle)": best_strategies(base, test_pairs, weights),
    }
    rows_before = choice_rows(base, test_pairs, choices, weights) + [random_row(base, test_pairs, weights)]
    captions_before = (judge_caption(list(base.values())), standins_caption(cfg))
    oracle = choices["best in hindsight (oracle)"]
    agree = {m: sum(a == b for a, b in zip(c, oracle)) / len(oracle) for m, c in choices.items()}
    timings["test_before_s"] = time.time() - t0
    report = {
        "weights": weights.w,
        "bounds": {"lo": weights.lo, "hi": weights.hi},
        "front_points": len(weights.front),
        "index_best": {st: index_best.count(st) for st in STRATEGIES},
        "choices": choices,
        "agreement_with_oracle": agree,
        "before": rows_before,
        "captions_before": captions_before,
    }
    say(format_rows(rows_before, f"{len(test_pairs)} real pairs, base leader", captions_before))

    # 3-4. SMFB-DPO and the same comparison after it -----------------------------------------------------
    kept = []
    if s.dpo:  # 3. SMFB-DPO
        t0 = time.time()
        bucket = STRATEGIES if s.dpo_prompt == "strategy" else ("general",)
        ta, tb = (float(t) for t in s.dpo_temperatures)
        rec_a = run(
            index_pairs, bucket, leader if ta == cfg.cloud.temperature else leader_at(cfg.cloud.model, ta), "base", ta
        )
        rec_b = run(
            index_pairs, bucket, leader if tb == cfg.cloud.temperature else leader_at(cfg.cloud.model, tb), "base", tb
        )
        pairs = smfb_pairs(rec_a, rec_b, weights, s.min_score_gap)
        kept = balance(pairs, s.seed) if (s.balance == "downsample" and s.dpo_prompt == "strategy") else pairs
        write_jsonl(os.path.join(out, "smfb_pairs.jsonl"), kept)
        counts = lambda ps: {st: sum(p["strategy"] == st for p in ps) for st in bucket}  # noqa: E731
        report["smfb"] = {
            "candidates": len(rec_a),
            "pairs": counts(pairs),
            "balanced": counts(kept),
            "chosen_at_T": {str(t): sum(p["t_chosen"] == t for p in kept) for t in (ta, tb)},
            "mean_S_gap": float(np.mean([p["s_chosen"] - p["s_rejected"] for p in kept])) if kept else 0.0,
        }
        say(f"SMFB-DPO pairs per strategy: {report['smfb']['pairs']} -> balanced {report['smfb']['balanced']}")
        timings["smfb_pairs_s"] = time.time() - t0
        t0 = time.time()
        # the DPO'd leader lives in a folder named by what it was trained from, so the cloud cache (keyed by the
        # model's path) and the records (keyed by the tag) never serve a previous leader's guidelines
        recipe = json.dumps(
            {
                "pairs": kept,
                "dpo": to_dict(cfg)["dpo"],
                "leader": cfg.cloud.model,
                "seed": cfg.train.seed,
                "lora": [
                    cfg.model.lora_r,
                    cfg.model.lora_alpha,
                    cfg.model.lora_dropout,
                    list(cfg.model.lora_target_modules),
                ],
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
        leader_dir = os.path.join(out, "leader_dpo", digest)
        final = os.path.join(leader_dir, "final")
        report["smfb"]["leader"] = final
        if not kept:
            say(
                "SMFB-DPO skipped: no preference pairs (every two guidelines tied on S). Use more users, two "
                "temperatures further apart (lsrp.dpo_temperatures) or a lower lsrp.min_score_gap."
            )
            report["smfb"]["skipped"] = True
        elif not os.path.exists(os.path.join(final, "config.json")):
            train_leader(kept, tasks, cfg, leader_dir)
        timings["dpo_train_s"] = time.time() - t0
    if s.dpo and kept:  # 4. the real pairs again, with the leader after SMFB-DPO
        t0 = time.time()
        after_leader = leader_at(final, cfg.cloud.temperature)
        after = {
            (r["uid"], r["strategy"]): r
            for r in run(test_pairs, STRATEGIES + ("general",), after_leader, f"dpo-{digest}", cfg.cloud.temperature)
        }
        after_choices = dict(choices, **{"best in hindsight (oracle)": best_strategies(after, test_pairs, weights)})
        rows_after = choice_rows(after, test_pairs, after_choices, weights) + [random_row(after, test_pairs, weights)]
        report["after"] = rows_after
        report["captions_after"] = (judge_caption(list(after.values())), standins_caption(cfg))
        timings["test_after_s"] = time.time() - t0
        say(format_rows(rows_after, f"{len(test_pairs)} real pairs, leader after SMFB-DPO", report["captions_after"]))

    timings["total_s"] = time.time() - t_start
    report["timings"] = timings
    report["judge"] = (
        "llm: " + (s.judge_model or cfg.cloud.model) if s.judge == "cloud" else "offline-embedding (no LLM judge)"
    )
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(
            f"Judge: {report['judge']}. S = {w[0]:.3f}·QA-Rel + {w[1]:.3f}·UDRR − {w[2]:.3f}·PPL (min-max normalised, "
            f"knee of a {len(weights.front)}-point NSGA-II front).\n\n"
        )
        f.write(f"Best strategy of the {len(index_pairs)} synthetic pairs (the index): {report['index_best']}.\n")
        f.write(
            "Agreement with the best strategy in hindsight on the real pairs: "
            + ", ".join(f"{m} {a:.0%}" for m, a in agree.items() if not m.startswith("best"))
            + ".\n\n"
        )
        f.write(format_rows(rows_before, "before SMFB-DPO", captions_before) + "\n\n")
        if "smfb" in report:
            f.write(f"SMFB-DPO: {report['smfb']}\n\n")
        if "after" in report:
            f.write(format_rows(report["after"], "after SMFB-DPO", report["captions_after"]) + "\n\n")
        f.write(f"Timings (s): { {k: round(v) for k, v in timings.items()} }\n")
    say(f"LSRP report: {os.path.join(out, 'report.md')} ({timings['total_s'] / 60:.1f} min)")
    return 0
