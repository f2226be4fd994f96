"""The base device's training rollouts: the router baseline's training data, and the self-confidence calibration.

router = train_router(problems, source, env, generator, "arithmetic", 24, 32, out_dir, base_path)
router.threshold_for(0.3)   # policies/router.py: the prompt classifier and its budget threshold
conf = base_rollouts(problems, source, env, generator, "arithmetic", 24, 32, out_dir, base_path, confidence=True)

Both learn from greedy rollouts of the base device model they route, with its own prompt (``env``: a task-tuned
run answers with the task-tuning prompt, ``env.escalation`` False), on the same ``--router-train-size`` training
problems, generated once into one work file.
"""

from __future__ import annotations

import hashlib
import os
import sys

from core.io import check_meta
from evaluation.passes import run_device
from policies.router import PromptRouter

FEW_ROUTER_PROBLEMS = 20  # below this the router's fit (80%) and calibration (20%) sets are a handful of rows


def router_dir(probs, template: str, out: str, escalation: bool = True) -> str:
    """``out``/router-<template>[-tt]-<digest of the problems>/: the base model's rollouts and the router fitted on
    them (``-tt``: rollouts with the task-tuning prompt)."""
    digest = hashlib.sha1("\n".join(p.uid for p in probs).encode()).hexdigest()[:8]
    return os.path.join(out, f"router-{template}{'' if escalation else '-tt'}-{digest}")


def rollouts_meta(probs, source, env, template, max_new_tokens, base_path, stop) -> dict:
    """The settings the rollouts work file belongs to (``check_meta``): the model, its prompt and decoding."""
    meta = {"model": base_path, "template": template, "max_new_tokens": max_new_tokens, "n": len(probs)}
    meta["source"] = source
    if stop is not None:
        meta["stop"] = "boxed"
    if not env.escalation:
        meta["escalation"] = False
    return meta


def base_rollouts(
    probs, source, env, gen, template, max_new_tokens, bs, out, base_path, stop=None, confidence=False
) -> list[dict]:
    """Greedy rollouts of the base device model (``env``'s prompt, ``gen``'s model) on ``probs``, graded, in
    ``router_dir``/device.jsonl (resumable); ``confidence``: with each response's mean token log-probability."""
    wpath = os.path.join(router_dir(probs, template, out, env.escalation), "device.jsonl")
    check_meta(wpath, rollouts_meta(probs, source, env, template, max_new_tokens, base_path, stop))
    return run_device(
        env,
        gen,
        probs,
        bs,
        max_new_tokens,
        0.0,
        wpath,
        desc=f"router-data:{template}",
        stop=stop,
        confidence=confidence,
    )


def train_router(probs, source, env, gen, template, max_new_tokens, bs, out, base_path, stop=None):
    """Greedy rollouts of the base device model on the router training problems ``probs`` (``base_rollouts``); fit
    on 80%, calibrate on 20%; ``stop`` ends a rollout early (``evaluation.suites.answer_stop``).  Saved under
    ``router_dir`` and loaded from there when it exists (a rerun, or a later run with the same --out, reuses it;
    other router data, or the same model with the other prompt, gets a folder of its own; another base model's
    rollouts are refused by the work file's meta)."""
    rdir = router_dir(probs, template, out, env.escalation)
    rpath = os.path.join(rdir, "router.pkl")
    check_meta(
        os.path.join(rdir, "device.jsonl"),
        rollouts_meta(probs, source, env, template, max_new_tokens, base_path, stop),
    )
    if os.path.exists(rpath):
        print(f"router: reusing {rpath} ({len(probs)} problems from {source})", file=sys.stderr)
        return PromptRouter.load(rpath)
    print(f"router: learning from {len(probs)} problems of {source} (rollouts of the base model)", file=sys.stderr)
    if len(probs) < FEW_ROUTER_PROBLEMS:
        print(
            f"warning: the router learns from only {len(probs)} problems, so its row is little better than random: "
            "pass --router-data FILE (or more rows with --router-train-size N) for a router worth comparing",
            file=sys.stderr,
        )
    dev = base_rollouts(probs, source, env, gen, template, max_new_tokens, bs, out, base_path, stop)
    cut = max(1, int(0.8 * len(probs)))
    router = PromptRouter().fit([p.question for p in probs[:cut]], [d["correct"] for d in dev[:cut]])
    router.calibrate([p.question for p in probs[cut:]])
    router.save(rpath)
    return router
