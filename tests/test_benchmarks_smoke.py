"""The benchmark scripts run end to end on the tiny model and compare like with like (no timing is asserted)."""

from __future__ import annotations

import json
import os

import pytest

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_test.yaml")


@pytest.mark.slow
def test_train_step_benchmark_feeds_both_trainers_the_same_work(tiny_model_dir, tmp_path):
    from benchmarks import bench_train_step

    out = tmp_path / "ts.json"
    r = bench_train_step.main(
        [
            "--model",
            tiny_model_dir,
            "--config",
            TINY,
            "--steps",
            "2",
            "--warmup",
            "1",
            "--fixed-length",
            "--out",
            str(tmp_path / "scratch"),
            "--json",
            str(out),
        ]
    )
    assert json.load(open(out))["speedup"] == r["speedup"] > 0
    P, G, T = r["prompts_per_step"], r["group_size"], r["max_new_tokens"]
    assert len(r["gapg_steps"]) == len(r["trl_steps"]) == 3
    for g, t in zip(r["gapg_steps"], r["trl_steps"]):
        assert g["samples"] == t["samples"] == P * G  # the same prompts and G, step by step
        assert g["completion_tokens"] == t["completion_tokens"] == P * G * T  # --fixed-length: the same tokens too
        for rec in (g, t):
            assert rec["total_s"] > 0 and min(rec["generation_s"], rec["update_s"]) >= 0
            assert (
                abs(rec["generation_s"] + rec["scoring_s"] + rec["update_s"] + rec["other_s"] - rec["total_s"]) < 1e-6
            )
        assert g["problem_uids"] == t["problem_uids"] and len(g["problem_uids"]) == P  # the same prompts, step by step


def test_rollout_benchmark_generates_the_same_tokens_on_both_paths(tiny_model_dir, tmp_path):
    from benchmarks import bench_rollout

    r = bench_rollout.main(["--model", tiny_model_dir, "--config", TINY, "--steps", "2", "--warmup", "0"])
    want = r["prompts"] * r["group_size"] * r["max_new_tokens"]
    assert [x["tokens"] for x in r["raw_reps"]] == [x["tokens"] for x in r["env_reps"]] == [want, want]
    assert all(x["cloud_calls"] > 0 for x in r["env_reps"])  # new problems every repetition: the calls are real
    assert all(0 < x["generation_s"] < x["total_s"] for x in r["env_reps"])
