"""The router baseline's training data: greedy rollouts of the device model it routes, then the fit and calibration.

router = train_router(problems, source, env, generator, "arithmetic", 24, 32, out_dir, base_path)
router.threshold_for(0.3)   # policies/router.py: the prompt classifier and its budget threshold
"""

from __future__ import annotations

import hashlib
import os
import sys

from core.io import check_meta
from evaluation.passes import run_device
from policies.router import PromptRouter

FEW_ROUTER_PROBLEMS = 20  # below this the router's fit (80%) and calibration (20%) sets are a handful of rows


def train_router(probs, source, env, gen, template, max_new_tokens, bs, out, base_path, stop=None):
    """Greedy rollouts of the base device model on the router training problems ``probs``; fit on 80%, calibrate on
    20%; ``stop`` ends a rollout early (``evaluation.suites.answer_stop``).  Saved under
    ``out``/router-<template>-<digest of the problems>/ and loaded from there when it exists (a rerun, or a later run
    with the same --out, reuses it; other router data gets a folder of its own)."""
    digest = hashlib.sha1("\n".join(p.uid for p in probs).encode()).hexdigest()[:8]
    rdir = os.path.join(out, f"router-{template}-{digest}")
    rpath = os.path.join(rdir, "router.pkl")
    wpath = os.path.join(rdir, "device.jsonl")
    meta = {"model": base_path, "template": template, "max_new_tokens": max_new_tokens, "n": len(probs)}
    meta["source"] = source
    if stop is not None:
        meta["stop"] = "boxed"
    check_meta(wpath, meta)
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
    dev = run_device(env, gen, probs, bs, max_new_tokens, 0.0, wpath, desc=f"router-data:{template}", stop=stop)
    cut = max(1, int(0.8 * len(probs)))
    router = PromptRouter().fit([p.question for p in probs[:cut]], [d["correct"] for d in dev[:cut]])
    router.calibrate([p.question for p in probs[cut:]])
    router.save(rpath)
    return router
