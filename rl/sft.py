"""Task tuning: the supervised warm start of the device policy, and the paper's "task tuning only" baseline.

    accelerate launch train.py --config configs/cpu_sft.yaml                       # rl.trainer: sft
    accelerate launch train.py --config configs/cpu_default.yaml model.name_or_path=outputs/cpu_sft/final   # RL from it
    python eval.py --config configs/cpu_default.yaml --model outputs/cpu_sft/final   # evaluate it

The recipe of CDCDA-PLM (seed 004 §3), on the task's own training problems:

1. Real examples D_u: the first ``sft.num_real`` training problems, each with its reference response in the
   device's answer format (``reference_response``: the ladder's ``37 * 46 = 1702. \\boxed{1702}``, Countdown's
   ``<think>``/``<answer>``, MATH's dataset solution).
2. Augmentation (eq. 1, ``envs/augment.py``): the cloud writes ``sft.augment_k`` similar pairs per example.
3. Selection (eqs. 2-4, ``envs/filters.py``): semantic consistency, token diversity, length ratio.
4. Format teaching for escalation: the base model tries ``sft.probe_problems`` further training problems
   (greedy, or ``sft.probe_samples`` samples); problems it never solves, from levels where its probe accuracy
   is at most ``sft.unknown_max_level_acc``, are answered with ``<unknown> I need external assistance
   </unknown>`` and make up ``sft.unknown_share`` of the final mix, so the tag exists before RL shapes it.
5. Fine-tuning (eqs. 5-6): TRL ``SFTTrainer`` with LoRA (``model.lora``), cross-entropy on the response
   only (prompt-completion data, ``completion_only_loss``), each prompt being exactly the RL prompt
   (``envs/prompts.py: messages``: system prompt, worked examples, problem) under the device model's
   chat template.  The adapters are merged and ``<output_dir>/final`` loads with ``from_pretrained``.

Written to ``<output_dir>/sft_data/``: ``stats.json`` (augmentation, each filter's removals, the probe's
accuracy per level, the mix), ``candidates.jsonl`` (every synthetic pair and the filter that removed it),
``mix.jsonl`` (the training examples) and ``probe.jsonl`` (resumable).  ``sft.unknown_share=0`` gives the
pure task-tuning baseline (never escalates by training).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict, dataclass

from core.io import append_jsonl, read_jsonl, write_jsonl
from core.problem import Problem
from envs import arithmetic, countdown
from envs.augment import augment
from envs.filters import AnswerVerifier, NLIScorer, filter_pairs
from envs.prompts import ESCALATION, messages
from envs.rollout import check_prompt_tokens
from envs.route import RouteEnv
from envs.simulation import task_cloud
from envs.tasks import load_problems, template_for
from policies.device import load_device_model
from policies.generation import HFGenerator
from rewards.math_grader import grade
from rl.trl_run import common_args, metrics_callback, per_device_batch, save_final, train_resumable

log = logging.getLogger("train.sft")


@dataclass
class Example:
    """One supervised example: the problem text (rendered into the RL prompt) and the target response."""

    question: str
    response: str
    kind: str  # real | synthetic | unknown
    uid: str
    level: int = 0


def reference_response(problem: Problem) -> str | None:
    """The gold answer written in the device's answer format, or None when the task gives no way to write it."""
    m = problem.meta
    if "op" in m:  # the arithmetic ladder: as the prompt's worked examples
        return arithmetic.worked_response(m["a"], m["op"], m["b"], problem.answer)
    if "numbers" in m:  # Countdown
        return countdown.worked_response(m["numbers"], m["target"], m["solution"])
    sol = m.get("gold_solution")  # MATH: the dataset's own solution, if it proves the gold answer
    return sol.strip() if sol and grade(problem.answer, sol)[1] else None


# ---- probing the base model for problems it cannot solve -----------------------------------------


def probe(
    generator,
    env: RouteEnv,
    problems: list[Problem],
    samples: int,
    max_new_tokens: int,
    batch_size: int,
    path: str | None,
):
    """uid -> {"level", "n_correct", "solved", "output"}: the base model's attempts (greedy if ``samples == 1``,
    else that many at temperature 1) graded on the device's own text; appended to ``path`` batch by batch."""
    done = read_jsonl(path)
    todo = [p for p in problems if p.uid not in done]
    per_call = max(1, batch_size // samples)
    for s in range(0, len(todo), per_call):
        chunk = todo[s : s + per_call]
        temp = 0.0 if samples == 1 else 1.0
        out = generator.generate(
            [env.prompt(p) for p in chunk], n=samples, temperature=temp, max_new_tokens=max_new_tokens
        )
        rows = []
        for p, group in zip(chunk, out):
            n_ok = sum(env.judge(p, smp).device_correct for smp in group)
            rows.append(
                {"uid": p.uid, "level": p.level, "n_correct": n_ok, "solved": n_ok > 0, "output": group[0].text}
            )
        append_jsonl(path, rows)
        done.update((r["uid"], r) for r in rows)
    return {p.uid: done[p.uid] for p in problems}


def level_accuracy(rows: dict) -> dict[int, float]:
    by = {}
    for r in rows.values():
        by.setdefault(r["level"], []).append(r["solved"])
    return {lvl: sum(v) / len(v) for lvl, v in sorted(by.items())}


def unknown_pool(problems: list[Problem], rows: dict, max_level_acc: float) -> list[Problem]:
    """Problems the base model never solved, from levels whose probe accuracy is at most ``max_level_acc``."""
    acc = level_accuracy(rows)
    return [p for p in problems if not rows[p.uid]["solved"] and acc[p.level] <= max_level_acc + 1e-12]


# ---- the mix --------------------------------------------------------------------------------------


def build_mix(answers: list[Example], pool: list[Problem], share: float, seed: int):
    """(examples, counts): the answer examples (real + synthetic) plus ``<unknown>`` examples from ``pool`` so that
    they are ``share`` of the whole, round(share/(1-share)·|answers|) of them, or all the pool has (with a warning)."""
    want = round(share / (1.0 - share) * len(answers)) if share > 0 else 0
    rng = random.Random(f"sft-mix-{seed}")
    pool = list(pool)
    rng.shuffle(pool)
    if want > len(pool):
        log.warning(
            "sft: %d <unknown> examples wanted (sft.unknown_share=%.2f of the mix) but the probe found only %d "
            "problems the base model cannot solve; raise sft.probe_problems or sft.unknown_max_level_acc for more.",
            want,
            share,
            len(pool),
        )
    unknown = [Example(p.question, ESCALATION, "unknown", p.uid, p.level) for p in pool[:want]]
    examples = answers + unknown
    rng.shuffle(examples)
    counts = {k: sum(e.kind == k for e in examples) for k in ("real", "synthetic", "unknown")}
    counts.update(total=len(examples), unknown_share=counts["unknown"] / max(len(examples), 1), unknown_wanted=want)
    return examples, counts


def to_dataset(examples: list[Example], template: str, max_solve_steps: int, escalation: bool = True):
    """A TRL conversational prompt-completion dataset: the RL prompt's messages (``escalation=False``: the
    task-tuning prompt, task.escalation) and the assistant's response."""
    from datasets import Dataset

    rows = [
        {
            "prompt": messages(template, e.question, max_solve_steps, escalation=escalation),
            "completion": [{"role": "assistant", "content": e.response}],
            "kind": e.kind,
            "uid": e.uid,
        }
        for e in examples
    ]
    return Dataset.from_list(rows)


def prepare_data(cfg, generator, tok, cloud, out_dir: str):
    """Real examples, cloud augmentation, the three filters, the probe and the mix (steps 1-4 of the module doc).
    Returns (examples, stats) and writes ``out_dir``/{stats.json, candidates.jsonl, mix.jsonl, probe.jsonl}."""
    s, template = cfg.sft, template_for(cfg.task)
    os.makedirs(out_dir, exist_ok=True)
    train_problems, _ = load_problems(cfg.task)
    need = s.num_real + s.probe_problems
    if len(train_problems) < need:
        raise ValueError(
            f"sft.num_real + sft.probe_problems = {need} training problems are needed but the task has "
            f"{len(train_problems)}. Raise task.num_train or lower sft.num_real / sft.probe_problems."
        )
    real_problems, probe_problems = train_problems[: s.num_real], train_problems[s.num_real : need]
    stats: dict = {"template": template}

    # 1. real examples
    real = [(p, reference_response(p)) for p in real_problems]
    stats["real_without_reference"] = sum(y is None for _, y in real)
    real = [(p, y) for p, y in real if y is not None]
    answers = [Example(p.question, y, "real", p.uid, p.level) for p, y in real]

    # 2-3. augmentation and the three filters
    if s.augment_k > 0 and real:
        cands, stats["augment"] = augment(cloud, real, template, s.augment_k)
        verifier = AnswerVerifier(template, cloud) if s.verify_answers else None
        nli = NLIScorer(s.nli_model) if s.nli_model else None
        kept, stats["filters"] = filter_pairs(cands, s, verifier, nli)
        write_jsonl(os.path.join(out_dir, "candidates.jsonl"), [asdict(c) for c in cands])
        answers += [Example(c.x, c.y, "synthetic", f"{c.source_uid}:syn{i}", c.level) for i, c in enumerate(kept)]
        f = stats["filters"]
        log.info(
            "sft: %d synthetic pairs from %d examples; removed by semantic consistency %d, token diversity %d, length "
            "ratio %d; kept %d",
            f["candidates"],
            len(real),
            f["removed"]["semantic"],
            f["removed"]["diversity"],
            f["removed"]["length"],
            f["kept"],
        )

    # responses that RL could never produce within its generation budget are dropped
    fits = [len(tok(e.response, add_special_tokens=False)["input_ids"]) <= cfg.rl.max_new_tokens for e in answers]
    stats["dropped_over_max_new_tokens"] = fits.count(False)
    answers = [e for e, ok in zip(answers, fits) if ok]

    # 4. probe the base model; <unknown> examples in the configured share
    pool = []
    env = RouteEnv.from_config(cfg, tok, cloud)  # RL's prompts: the probe's and the length check's
    if s.unknown_share > 0:
        rows = probe(
            generator,
            env,
            probe_problems,
            s.probe_samples,
            cfg.rl.max_new_tokens,
            cfg.train.eval_batch_size,
            os.path.join(out_dir, "probe.jsonl"),
        )
        pool = unknown_pool(probe_problems, rows, s.unknown_max_level_acc)
        stats["probe"] = {
            "problems": len(probe_problems),
            "samples": s.probe_samples,
            "solved": sum(r["solved"] for r in rows.values()),
            "accuracy_by_level": {str(k): v for k, v in level_accuracy(rows).items()},
            "unknown_pool": len(pool),
        }
    examples, stats["mix"] = build_mix(answers, pool, s.unknown_share, cfg.train.seed)
    for e in examples:  # the RL prompt of every example must fit, as RL checks it
        problem = Problem(e.uid, e.question, "")
        check_prompt_tokens(
            problem, len(tok(env.prompt(problem), add_special_tokens=False)["input_ids"]), cfg.rl.max_prompt_tokens
        )
    write_jsonl(os.path.join(out_dir, "mix.jsonl"), [asdict(e) for e in examples])
    with open(os.path.join(out_dir, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=2)
    m = stats["mix"]
    log.info(
        "sft mix: %d real + %d synthetic + %d <unknown> = %d examples (%.1f%% <unknown>)",
        m["real"],
        m["synthetic"],
        m["unknown"],
        m["total"],
        100 * m["unknown_share"],
    )
    return examples, stats


# ---- TRL SFTTrainer -------------------------------------------------------------------------------


def sft_config(cfg, num_processes: int = 1):
    """The TRL ``SFTConfig`` of this run: ``sft.batch_size`` examples per optimizer step, ``train.max_steps`` steps."""
    from trl import SFTConfig

    t = cfg.train
    if cfg.sft.batch_size % num_processes:
        raise ValueError(f"sft.batch_size={cfg.sft.batch_size} must divide evenly among {num_processes} processes.")
    per_device = per_device_batch(cfg.sft.batch_size // num_processes, t.micro_batch_size)
    return SFTConfig(
        **common_args(cfg, t.output_dir),
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.sft.batch_size // (per_device * num_processes),
        completion_only_loss=True,  # cross-entropy on the response tokens only (eq. 6 over y given x)
        max_length=None,  # prompt lengths are checked against rl.max_prompt_tokens, responses against rl.max_new_tokens
        packing=False,
        **({"gradient_checkpointing": True} if cfg.model.gradient_checkpointing else {}),
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
    )


def train_sft(cfg, resume: bool = False, eval_hook=None) -> str:
    """Prepare the data, fine-tune with TRL SFTTrainer (LoRA when ``model.lora``), save ``<output_dir>/final``
    (adapters merged) and return its path.  ``eval_hook("before", model, tokenizer)`` runs on the untouched model."""
    from accelerate import PartialState
    from trl import SFTTrainer

    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    model, tok = load_device_model(cfg.model)  # LoRA adapters start at zero: the model still answers as the base model
    if eval_hook is not None and not resume:
        eval_hook("before", model, tok)
    cloud = task_cloud(cfg.cloud, os.path.join(out, "cloud_cache.sqlite"))
    with PartialState().main_process_first():  # the main process asks the cloud and probes; the others read its work
        examples, _ = prepare_data(cfg, HFGenerator(model, tok), tok, cloud, os.path.join(out, "sft_data"))
    if not examples:
        raise ValueError(
            "sft: no training examples (no real example had a reference response). Check task and sft.num_real."
        )
    args = sft_config(cfg, PartialState().num_processes)
    log.info(
        "SFT: %d examples, %d per step (%d per forward), %d steps = %.2f epochs, LoRA %s",
        len(examples),
        cfg.sft.batch_size,
        args.per_device_train_batch_size,
        cfg.train.max_steps,
        cfg.train.max_steps * cfg.sft.batch_size / len(examples),
        "on" if cfg.model.lora else "off (all weights)",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(examples, template_for(cfg.task), cfg.task.max_solve_steps, cfg.task.escalation),
        processing_class=tok,
        callbacks=[metrics_callback(os.path.join(out, "metrics.jsonl"))],
    )
    if cfg.train.max_steps > 0:
        train_resumable(trainer, out, resume, os.path.join(out, "metrics.jsonl"))
    return save_final(trainer, tok, os.path.join(out, "final"), merge_lora=cfg.model.lora)
