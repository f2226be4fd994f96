"""evaluation/summary.py: the lines a finished run ends with, read from its eval files."""

import json
import os

from evaluation.summary import run_summary


def write_eval(out, tag, correct, wanted, levels):
    d = os.path.join(out, "eval")
    os.makedirs(d, exist_ok=True)
    n = len(correct)
    row = {
        "method": "policy",
        "overall_acc": sum(correct) / n,
        "offload_rate": wanted,
        "wanted_offload_rate": wanted,
        "per_level": {str(k): {"offload_rate": v} for k, v in levels.items()},
    }
    json.dump([row, {"method": "policy_never", "overall_acc": 0.0, "offload_rate": 0.0}], open(f"{d}/{tag}.json", "w"))
    with open(f"{d}/{tag}.samples.jsonl", "w") as f:
        for i, c in enumerate(correct):
            f.write(json.dumps({"uid": f"p{i}", "correct": c}) + "\n")


def test_summary_says_the_gain_with_its_paired_interval_the_cloud_and_the_curve(tmp_path):
    out = str(tmp_path)
    before = [True] * 40 + [False] * 60
    after = [True] * 60 + [False] * 40  # 20 problems fixed, none broken: +20 points, beyond noise
    write_eval(out, "before", before, 0.25, {1: 0.0, 7: 0.6})
    write_eval(out, "final", after, 0.3, {1: 0.0, 7: 1.0})
    lines = run_summary(out, "30%", {"calls": 12}, "x/learning_curve.png")
    assert len(lines) == 3
    assert lines[0].startswith("held-out accuracy 40.0% -> 60.0%: +20.0 points [+")
    assert "over 100 problems, beyond noise" in lines[0]
    assert "25.0% of problems -> 30.0% of problems (budget 30%)" in lines[1] and "L7 100%" in lines[1]
    assert "cloud calls paid by this run: 12" in lines[1] and lines[2] == "learning curve: x/learning_curve.png"


def test_summary_calls_a_one_problem_change_within_noise_and_needs_the_final_eval(tmp_path):
    out = str(tmp_path)
    assert run_summary(out) == []
    write_eval(out, "before", [True] * 10 + [False] * 60, 0.2, {1: 0.0})
    write_eval(out, "final", [True] * 11 + [False] * 59, 0.2, {1: 0.0})
    assert "+1.4 points" in run_summary(out)[0] and "within noise" in run_summary(out)[0]
