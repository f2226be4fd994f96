"""The device and cloud passes of an evaluation: greedy device responses and cloud answers, graded, resumable.

    dev = run_device(env, generator, problems, batch_size=32, max_new_tokens=64, path="out/suite/policy.device.jsonl")
    dev = run_device(env, generator, problems, path=..., score=True)   # + each problem's escalation_score
    dev = run_device(env, generator, problems, path=..., confidence=True)   # + each problem's confidence
    cloud = run_cloud(cloud, problems, {0, 3, 5}, path="out/suite/cloud.jsonl")
    rolls = query_pass(query_env, generator, problems, call_limits=call_cap_limits(calls, cap))

Each pass appends every finished batch to its work file, so a killed evaluation resumes where it stopped and never
regenerates or regrades what is done.  The query mode's passes (``query_pass``, ``rerun_with_limits``) regenerate:
greedy decoding makes a rerun identical, and the cloud cache answers every request it has seen.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from core.io import append_jsonl, read_jsonl
from envs.format import format_ok, split_escalation
from envs.prompts import ESCALATION
from policies.confidence import response_confidence
from policies.escalation_score import escalation_opening, escalation_scores
from policies.generation import HFGenerator
from rewards.grading import grade_response


def run_device(
    env,
    generator,
    problems,
    batch_size=32,
    max_new_tokens=64,
    temperature=0.0,
    path=None,
    desc="device",
    progress=True,
    score=False,
    stop=None,
    confidence=False,
):
    """Greedy device responses, graded; each finished batch is appended to ``path`` so a killed run resumes.  The
    bar moves per problem (an ``HFGenerator`` reports each finished row); ``stop`` ends a response early
    (``policies.generation.boxed_answer``: at its first complete ``\\boxed{}``).

    ``score``: also record each problem's ``escalation_score``, the probability the policy puts on opening the
    escalation tag at the end of its own text (policies/escalation_score.py; needs the generator's ``model``).  Rows
    of a work file written without it are scored on resume (one forward pass, nothing regenerated) and appended
    again with the score.

    ``confidence``: also record each problem's ``confidence``, the mean token log-probability of its greedy
    response (policies/confidence.py: the TT & self-confidence baseline), scored on resume the same way."""
    done = read_jsonl(path)
    model = getattr(generator, "model", None) if score or confidence else None
    if (score or confidence) and model is None:
        raise ValueError(
            "run_device(score=True, confidence=True) needs a generator with the device model (HFGenerator)"
        )
    fields = [k for k, on in (("escalation_score", score), ("confidence", confidence)) if on]
    todo = [p for p in problems if p.uid not in done]
    bar = tqdm(
        total=len(problems),
        initial=len(problems) - len(todo),
        desc=desc,
        unit="prob",
        disable=not progress,
        leave=False,
    )
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prompts = [env.prompt(p) for p in chunk]
        if isinstance(generator, HFGenerator):
            out = generator.generate(
                prompts,
                n=1,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                stop=stop,
                on_done=lambda: bar.update(1),
            )
        else:  # another generator (vLLM, a test's): the bar moves per batch
            out = generator.generate(prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens)
            bar.update(len(chunk))
        rows = []
        for p, prompt, g in zip(chunk, prompts, out):
            r = env.judge(p, g[0])
            rows.append(
                {
                    "uid": p.uid,
                    "prompt": prompt,
                    "output": r.sample.text,
                    "escalated": r.escalated,
                    "answer": r.local_answer,
                    "correct": bool(r.device_correct),
                    "tokens": len(g[0].completion_ids),
                    "format_ok": format_ok(r.sample.text, env.template, getattr(env, "escalation", True)),
                }
            )
        add_scores(model, env.tokenizer, rows, prompts, batch_size, fields)
        append_jsonl(path, rows)
        done.update((row["uid"], row) for row in rows)
    bar.close()
    for key in fields:  # rows of an older work file, written without this score
        unscored = [p for p in problems if key not in done[p.uid]]
        for start in range(0, len(unscored), batch_size):
            chunk = [done[p.uid] for p in unscored[start : start + batch_size]]
            prompts = [
                row.get("prompt") or env.prompt(p) for row, p in zip(chunk, unscored[start : start + batch_size])
            ]
            add_scores(model, env.tokenizer, chunk, prompts, batch_size, [key])
            append_jsonl(path, chunk)
    return [done[p.uid] for p in problems]


def add_scores(model, tokenizer, rows: list[dict], prompts: list[str], batch_size: int, fields: list[str]) -> None:
    """Set the ``fields`` of each work-file row: ``escalation_score`` and/or ``confidence``."""
    if "escalation_score" in fields:
        add_escalation_scores(model, tokenizer, rows, prompts, batch_size)
    if "confidence" in fields:
        conf = response_confidence(model, tokenizer, prompts, [r["output"] for r in rows], batch_size)
        for r, c in zip(rows, conf):
            r["confidence"] = c


def add_escalation_scores(model, tokenizer, rows: list[dict], prompts: list[str], batch_size: int) -> None:
    """Set each work-file row's ``escalation_score``: P(``<unknown>`` | its prompt + its own text)."""
    own = [split_escalation(r["output"])[1] for r in rows]
    scores = escalation_scores(model, tokenizer, prompts, own, escalation_opening(ESCALATION), batch_size)
    for r, s in zip(rows, scores):
        r["escalation_score"] = s


def run_cloud(cloud, problems, idxs, path=None, chunk_size=16) -> dict[int, dict]:
    """Cloud answers for problems[idxs], graded; appended to ``path`` chunk by chunk (the cloud cache keeps the
    texts too)."""
    done = read_jsonl(path)
    need = [problems[i] for i in sorted(idxs) if problems[i].uid not in done]
    need = list({p.uid: p for p in need}.values())
    for start in range(0, len(need), chunk_size):
        chunk = need[start : start + chunk_size]
        rows = []
        for p, rep in zip(chunk, cloud.answer_many(chunk)):
            pred, ok = grade_response(p, rep.text)
            rows.append(
                {
                    "uid": p.uid,
                    "text": rep.text,
                    "answer": pred,
                    "correct": bool(ok),
                    "prompt_tokens": rep.prompt_tokens,
                    "completion_tokens": rep.completion_tokens,
                }
            )
        append_jsonl(path, rows)
        done.update((row["uid"], row) for row in rows)
    return {i: done[problems[i].uid] for i in idxs}


def query_pass(
    env, generator, problems, batch_size=32, max_new_tokens=64, call_limits=None, progress=True, desc="query"
):
    """Greedy multi-turn rollouts (one per problem) of a ``QueryEnv``; ``call_limits[i]`` caps problem i's calls."""
    out = []
    bar = tqdm(total=len(problems), desc=desc, unit="prob", disable=not progress, leave=False)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        limits = None if call_limits is None else call_limits[start : start + batch_size]
        groups = env.rollout(generator, chunk, 1, temperature=0.0, max_new_tokens=max_new_tokens, call_limits=limits)
        out += [g.rollouts[0] for g in groups]
        bar.update(len(chunk))
    bar.close()
    return out


def call_cap_limits(calls: list[int], cap: int) -> list[int | None]:
    """The test-time call cap in dataset order: problems are granted the calls they make until ``cap`` calls are
    used; the problem that would cross the cap gets what is left, every later one 0 (None = not limited)."""
    limits, used = [], 0
    for c in calls:
        if used + c <= cap:
            limits.append(None)
            used += c
        else:
            limits.append(cap - used)
            used = cap
    return limits


def rerun_with_limits(
    env, generator, problems, rolls, limits, batch_size, max_new_tokens, progress=True, desc="capped"
):
    """``rolls`` with every problem whose call limit is below the calls it made generated again under that limit."""
    redo = [i for i, (r, lim) in enumerate(zip(rolls, limits)) if lim is not None and r.calls > lim]
    out = list(rolls)
    if redo:
        again = query_pass(
            env,
            generator,
            [problems[i] for i in redo],
            batch_size,
            max_new_tokens,
            [limits[i] for i in redo],
            progress,
            desc,
        )
        for i, r in zip(redo, again):
            out[i] = r
    return out
