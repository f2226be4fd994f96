"""The simulated cloud's replies and every backend's cache keys are those of the code before the task-specific
simulation moved out of policies/cloud/ (envs/simulation.py injects it): cache files on disk stay valid.

The digest below was computed with the pre-move code (commit 5de7f99) on the same requests: arithmetic, Countdown,
MATH-style, ``<query>``, augmentation (arithmetic and Countdown sources) and a whole chat (LSRP), each with its
simulated reply and token counts and the simulated, hf and openai cache keys, under two simulated-cloud settings."""

from __future__ import annotations

import hashlib
import json

from core.problem import Problem
from envs import arithmetic, countdown
from envs.simulation import TASK_SIMULATOR
from policies.cloud import HFCloud, OpenAICloud, SimulatedCloud, augment_problem, chat_problem, query_problem

DIGEST_BEFORE_THE_MOVE = "6f16d3748e4365590c90dbc84fb8e3f650f930f730ced01da3390da4c99d3298"


def _requests():
    reqs = arithmetic.make_problems(4, 0, ["2x1", "2+2", "3x3"]) + countdown.make_problems(4, 0)
    reqs.append(Problem("math-1", "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "\\frac{5}{6}", level=3))
    reqs.append(Problem("math-2", "What is the largest prime below 20?", "19", level=1))
    reqs += [query_problem("3 * 7"), query_problem("what is 12 + 30?"), query_problem("the capital of France")]
    for src in arithmetic.make_problems(2, 1, ["2x1"]) + countdown.make_problems(2, 1):
        reqs.append(augment_problem(f"Generate 3 pairs like: {src.question}", src, 3))
    reqs.append(chat_problem([{"role": "system", "content": "lead"}, {"role": "user", "content": "hi"}], kind="leader"))
    return reqs


def _fingerprint(sim):
    hf, oa = HFCloud("some/model"), OpenAICloud("http://localhost:1", "gpt-x")
    out = []
    for p in _requests():
        rep = sim.answer_many([p])[0]
        out.append(
            {
                "uid": p.uid,
                "sim_key": sim.cache_key(p),
                "hf_key": hf.cache_key(p),
                "openai_key": oa.cache_key(p),
                "text": rep.text,
                "prompt_tokens": rep.prompt_tokens,
                "completion_tokens": rep.completion_tokens,
            }
        )
    return out


def test_replies_and_cache_keys_are_unchanged_by_the_injected_task_simulator():
    rows = _fingerprint(SimulatedCloud(accuracy=0.6, seed=7, simulator=TASK_SIMULATOR)) + _fingerprint(
        SimulatedCloud(accuracy=0.95, accuracy_per_level={2: 0.2}, seed=1234, simulator=TASK_SIMULATOR)
    )
    assert rows[0]["sim_key"].startswith("fe1a9292e59ac3de") and rows[0]["openai_key"].startswith("647db6c815078fb8")
    assert rows[4]["text"].startswith(
        "<think> Let me search for a combination. </think>\n<answer> ((75 + 96)"
    )  # Countdown
    assert rows[13]["text"].startswith("Input: What is 51 * 1?\nResponse: 51 * 1 = 52. \\boxed{52}")  # augmentation
    assert rows[10]["text"] == "21"  # a <query>
    assert hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest() == DIGEST_BEFORE_THE_MOVE


def test_without_a_simulator_the_cloud_knows_no_task():
    sim = SimulatedCloud(accuracy=1.0, seed=7)
    cd = countdown.make_problems(1, 0)[0]
    assert sim.answer_many([cd])[0].text == f"Working it out carefully, the answer is \\boxed{{{cd.answer}}}."
    src = arithmetic.make_problems(1, 0, ["2x1"])[0]
    assert sim.answer_many([augment_problem("Generate 2 pairs", src, 2)])[0].text == ""
    assert sim.cache_key(cd) == SimulatedCloud(accuracy=1.0, seed=7, simulator=TASK_SIMULATOR).cache_key(cd)
