"""The escalation score (policies/escalation_score.py) and its uses: the sweep order and the threshold rows of an
evaluation (evaluation/protocol.py), the work file (evaluation/passes.py)."""

import math

import pytest
import torch
from test_eval_cli import build_escalating_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.problem import Problem
from evaluation.metrics import accuracy_curve, apgr_cpt
from evaluation.protocol import score_plan, suite_rows
from policies.escalation_score import (
    escalation_logprobs,
    escalation_opening,
    escalation_scores,
    score_order,
    tag_token_ids,
    threshold_for_budget,
)

ESC = "<unknown> I need external assistance </unknown>"


def test_opening_of_the_taught_tag():
    assert escalation_opening(ESC) == "<unknown>"


def load(path):
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path).eval(), tok


def test_score_equals_a_hand_computation_from_the_logits(tiny_model_dir):
    """Batched (left padding, rows of different lengths, only the last logits) == one row at a time, by hand."""
    model, tok = load(tiny_model_dir)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 3 + 4?", "What is 12 * 345 + 6?", "Hi")
    ]
    own = ["3 + 4 = 7. \\boxed{7}", "", "Step 1: 12 * 345 = 4140 "]
    for tag in ("<unknown>", ESC):
        got = escalation_logprobs(model, tok, prompts, own, tag, batch_size=3)
        for prompt, text, lp in zip(prompts, own, got):
            own_ids, tag_ids = tag_token_ids(tok, text, tag)
            ids = tok(prompt, add_special_tokens=False)["input_ids"] + own_ids
            with torch.no_grad():
                logits = model(torch.tensor([ids + tag_ids])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            hand = sum(logp[len(ids) + j - 1, t].item() for j, t in enumerate(tag_ids))
            assert lp == pytest.approx(hand, abs=1e-4)
        assert escalation_scores(model, tok, prompts, own, tag, 2) == pytest.approx([math.exp(x) for x in got])


def test_tag_tokens_follow_the_own_text_after_one_space(tiny_model_dir):
    _, tok = load(tiny_model_dir)
    own_ids, tag_ids = tag_token_ids(tok, "7", "<unknown>")
    assert tok.decode(own_ids) == "7" and tok.convert_ids_to_tokens(tag_ids) == [" ", "<unknown>"]
    own_ids, tag_ids = tag_token_ids(tok, "", "<unknown>")  # escalated at once: the tag alone
    assert own_ids == [] and tok.convert_ids_to_tokens(tag_ids) == ["<unknown>"]


def test_a_model_that_always_escalates_scores_near_one(tmp_path):
    model, tok = load(build_escalating_model(str(tmp_path / "escalator")))
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 3 + 4?", "What is 4821 * 967?")
    ]
    assert min(escalation_scores(model, tok, prompts, ["", ""], "<unknown>")) > 0.99
    assert min(escalation_scores(model, tok, prompts, ["", ""], ESC)) < 1e-3  # it writes no body: the whole tag
    # after an answer of its own (not what this model writes) the tag is far from certain
    assert max(escalation_scores(model, tok, prompts, ["x", "y"], "<unknown>")) < 0.5


def test_threshold_hits_the_budget_on_its_calibration_split():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3, 0.05, 0.6, 0.2, 0.8, 0.4]
    for budget, k in ((0.0, 0), (0.1, 1), (0.25, 2), (0.3, 3), (0.5, 5), (1.0, 10)):
        t = threshold_for_budget(scores, budget)
        assert sum(s > t for s in scores) == k
    # score_plan: the first 20% by default; a calibration split of other problems when given
    suite = [0.9, 0.1, 0.5, 0.7, 0.3, 0.05, 0.6, 0.2, 0.8, 0.4] * 2
    plan = score_plan(suite, None, 0.5)
    assert plan["calibration_n"] == 4 and plan["calibration_offload"] == 0.5
    assert plan["threshold"] == 0.5 and plan["wants"] == [i for i, s in enumerate(suite) if s > 0.5]
    plan = score_plan(suite, [0.95, 0.85, 0.75, 0.65], 0.25)
    assert plan["calibration_n"] == 4 and plan["calibration_offload"] == 0.25 and plan["threshold"] == 0.85
    assert plan["wants"] == [0, 10]  # the suite's two 0.9s
    with pytest.raises(ValueError):
        threshold_for_budget([], 0.3)


def dev_row(correct, escalated, score):
    return {
        "output": "<unknown> I need external assistance </unknown>" if escalated else "\\boxed{1}",
        "answer": "1",
        "correct": correct,
        "escalated": escalated,
        "format_ok": True,
        "escalation_score": score,
    }


def test_sweep_order_by_score_against_a_hand_example(monkeypatch):
    """Five problems: the device is right on 0, 2, 4; the cloud right on every one.  The policy escalates 1 only
    (dataset-order sweep: [1], flat beyond); by score it sends 3, 1, 0, 4, 2."""
    import evaluation.protocol as protocol

    n = 5
    probs = [Problem(uid=f"p{i}", question=f"q{i}", answer="1", level=1) for i in range(n)]
    device_ok = [True, False, True, False, True]
    scores = [0.3, 0.6, 0.05, 0.9, 0.2]
    policy = [dev_row(device_ok[i], i == 1, scores[i]) for i in range(n)]
    base = [dev_row(False, False, None) for _ in range(n)]
    cloud_rows = {
        i: {"text": "\\boxed{1}", "answer": "1", "correct": True, "prompt_tokens": 1, "completion_tokens": 1}
        for i in range(n)
    }
    monkeypatch.setattr(
        protocol, "run_cloud", lambda cloud, problems, idxs, path=None: {i: cloud_rows[i] for i in idxs}
    )
    rows, records = suite_rows(probs, {"gapg": policy}, base, None, 0.4, baselines=("never", "cloud"), score_rows=True)
    by = {r["method"]: r for r in rows}
    assert score_order(scores) == [3, 1, 0, 4, 2]
    # by hand: acc after k calls by score, k = 0..5: 3/5, 4/5 (3 fixed), 5/5 (1 fixed), then flat at 5/5
    # APGR (trapezoid over cost 0, 0.2, ..., 1): (0.6+0.8)/2·0.2 + (0.8+1)/2·0.2 + 3·0.2 = 0.92
    assert by["gapg"]["apgr_by_score"] == pytest.approx(0.92)
    assert by["gapg"]["cpt80_by_score"] == pytest.approx(0.2)
    # the policy row keeps its own sweep: its one escalation (1), flat beyond
    old = apgr_cpt(accuracy_curve([1], device_ok, {i: True for i in range(n)}), 0.0, 1.0)
    assert by["gapg"]["apgr"] == pytest.approx(old["apgr"]) and by["gapg"]["apgr"] < by["gapg"]["apgr_by_score"]
    # the threshold row: calibration = the first 20% (problem 0, score 0.3); budget 0.4 of one problem -> k = 0:
    # threshold 0.3, so 1 (0.6) and 3 (0.9) escalate, both within the cap of 2
    at = by["gapg@score"]
    assert at["threshold"] == 0.3 and at["calibration_n"] == 1 and at["calibration_offload"] == 0.0
    assert at["cloud_calls"] == 2 and at["overall_acc"] == 1.0 and at["apgr"] == pytest.approx(0.92)
    assert records[0]["gapg"]["escalation_score"] == 0.3
    # without score rows the rows are exactly the old ones
    plain, _ = suite_rows(probs, {"gapg": policy}, base, None, 0.4, baselines=("never", "cloud"))
    assert [r["method"] for r in plain] == ["gapg", "never", "cloud"]
    assert {k: v for k, v in plain[0].items() if k != "comparisons"} == {
        k: v for k, v in by["gapg"].items() if k != "comparisons"
    }


def test_served_policy_escalates_by_score_at_the_calibrated_threshold(tiny_model_dir, tmp_path):
    """serving/policy.py: ``calibrate`` picks the threshold on calibration questions; the served policy then sends
    exactly the questions whose score (computed with the device model) exceeds it, whatever its tag says."""
    from test_serve import make_policy

    from envs.format import split_escalation
    from policies.device import load_tokenizer
    from serving.policy import calibration_questions, served_problem

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)
    policy = make_policy(model, tok, scripted=False, max_new_tokens=6)
    path = tmp_path / "cal.jsonl"
    path.write_text("".join(f'{{"question": "What is {i} * 7?"}}\n' for i in range(10)))
    questions = calibration_questions(str(path))
    threshold = policy.calibrate(questions, 0.3)
    answers = policy.ask_many(questions)
    assert sum(a.answered_by == "cloud" for a in answers) == 3  # the budget, on its calibration questions
    assert all((a.answered_by == "cloud") == (a.escalation_score > threshold) for a in answers)
    own = [split_escalation(a.device_text)[1] for a in answers]
    prompts = [policy.env.prompt(served_problem(q)) for q in questions]
    assert [a.escalation_score for a in answers] == pytest.approx(escalation_scores(model, tok, prompts, own))
    assert policy.info()["escalation_threshold"] == threshold


def test_eval_records_scores_resumes_old_work_files_and_adds_score_rows(tiny_model_dir, tmp_path):
    """eval.py: every policy's work file records escalation_score; a work file written without it is scored on
    resume (nothing regenerated, the old rows' numbers unchanged); --score-rows adds <name>@score."""
    import json
    import os

    from test_eval_cli import ARGS

    import eval as evalmod

    out = str(tmp_path / "ev")
    argv = ["--model", f"a={tiny_model_dir}", "--base-model", "same", "--baselines", "never,cloud", "--out", out]
    assert evalmod.main([*argv, *ARGS]) == 0
    work = os.path.join(out, "arithmetic", "a.device.jsonl")
    rows = [json.loads(line) for line in open(work)]
    assert len(rows) == 12 and all(0.0 <= r["escalation_score"] <= 1.0 for r in rows)
    summary = json.load(open(os.path.join(out, "summary.json")))["suites"]["arithmetic"]
    with open(work, "w") as f:  # an older work file: no scores
        f.writelines(json.dumps({k: v for k, v in r.items() if k != "escalation_score"}) + "\n" for r in rows)
    assert evalmod.main([*argv, "--score-rows", *ARGS]) == 0
    again = {r["uid"]: r for r in map(json.loads, open(work))}
    assert [again[r["uid"]]["escalation_score"] for r in rows] == pytest.approx([r["escalation_score"] for r in rows])
    assert [again[r["uid"]]["output"] for r in rows] == [r["output"] for r in rows]
    new = json.load(open(os.path.join(out, "summary.json")))["suites"]["arithmetic"]
    assert [r["method"] for r in new] == ["a", "a@score", "never", "cloud"]
    for old, now in zip(summary, [r for r in new if r["method"] != "a@score"]):
        assert {k: v for k, v in old.items() if k != "comparisons"} == {
            k: v for k, v in now.items() if k != "comparisons"
        }
    at = new[1]
    assert at["calibration_n"] == 2 and at["calibration_offload"] <= 0.3 and at["cloud_calls"] <= 3
