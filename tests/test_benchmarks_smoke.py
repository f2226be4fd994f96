"""The benchmark scripts run end to end on the tiny model and compare like with like (no timing is asserted)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import write_math_files

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


def test_generation_benchmark_times_every_path_on_the_same_tokens(tiny_model_dir, tmp_path):
    """HF generate, the rollout of a git revision, ours and ours in bf16 all write P x G x T tokens; the roofline
    fractions are positive and the bf16 log-prob mismatch is measured."""
    from benchmarks import bench_generation

    out = tmp_path / "gen.json"
    r = bench_generation.main(
        ["--model", tiny_model_dir, "--config", TINY, "--steps", "2", "--warmup", "0", "--prompts", "3"]
        + ["--against", "HEAD", "--bf16", "on", "--json", str(out), "rl.max_new_tokens=6"]
    )
    assert json.load(open(out))["paths"].keys() == r["paths"].keys() == r["records"].keys()
    assert set(r["paths"]) == {"hf_generate (TRL's path)", "ours@HEAD", "ours", "ours bf16"}
    want = 3 * r["group_size"] * 6
    for name, recs in r["records"].items():
        assert [x["tokens"] for x in recs] == [want, want], name
        assert r["paths"][name]["roofline_fraction"] > 0
    assert r["limits"]["bandwidth"] > 0 and r["limits"]["flops_float32"] > 0
    mm = r["bf16_logprob_mismatch"]
    assert mm["mean_abs_token"] >= 0 and mm["seq_ratio_min"] <= mm["seq_ratio_mean"] <= mm["seq_ratio_max"]


def test_train_step_benchmark_against_an_older_rollout(tiny_model_dir, tmp_path):
    """--no-trl --against REV: GAPG with today's rollout and with REV's run the same prompts and tokens."""
    from benchmarks import bench_train_step

    r = bench_train_step.main(
        ["--model", tiny_model_dir, "--config", TINY, "--steps", "1", "--warmup", "0", "--fixed-length"]
        + ["--no-trl", "--against", "HEAD", "--out", str(tmp_path / "scratch")]
    )
    new, old = r["gapg_steps"], r["gapg_old_steps"]
    assert len(new) == len(old) == 1 and "trl" not in r
    assert new[0]["problem_uids"] == old[0]["problem_uids"]
    assert (
        new[0]["completion_tokens"]
        == old[0]["completion_tokens"]
        == r["prompts_per_step"] * r["group_size"] * (r["max_new_tokens"])
    )
    assert r["vs_old"]["speedup"] > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.group_size=4", "the benchmark sets these itself"),  # G is --group-size: the record would say 8
        ("task.dat_dir=/data", "Did you mean task.data_dir"),  # a typo fails before the 1.5B model is built
    ],
)
def test_gpu_benchmark_refuses_overrides_it_cannot_honour(override, message, tmp_path, capsys):
    from benchmarks import bench_gpu

    with pytest.raises(SystemExit):
        bench_gpu.main(["--out", str(tmp_path), override])
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before any model was built


@pytest.mark.slow
def test_gpu_benchmark_runs_at_the_tiny_shape_on_cpu(tmp_path):
    """benchmarks/bench_gpu.py is the script a GPU session runs in one call: CI runs all of it at a tiny shape."""
    from benchmarks import bench_gpu

    # MATH-format files of our own: the checkout need not have ../shared/data beside it
    data = write_math_files(tmp_path / "data", {"math_train.jsonl": 64, "math500.jsonl": 8})
    args = ["--shape", "tiny", "--steps", "1", "--out", str(tmp_path), "--json", str(tmp_path / "g.json")]
    r = bench_gpu.main(args + [f"task.data_dir={data}", "task.hub_id=/nonexistent/offline"])
    P, G, T = r["P"], r["G"], r["T"]
    assert json.load(open(tmp_path / "g.json"))["shape"] == "tiny"
    for name, recs in r["generation"]["records"].items():
        assert [x["tokens"] for x in recs] == [P * G * T], name
    ts = r["train_step"]
    assert ts["gapg_steps"][-1]["completion_tokens"] == ts["trl_steps"][-1]["completion_tokens"] == P * G * T
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tmp_path / "random-tiny")
    assert cfg.model_type == "qwen2" and cfg.num_hidden_layers == bench_gpu.SHAPES["tiny"]["num_hidden_layers"]


@pytest.mark.slow
def test_scaling_benchmark_writes_each_point_and_resumes(tiny_model_dir, tmp_path):
    from benchmarks import bench_scaling

    out = str(tmp_path / "scaling")
    args = ["--out", out, "--groups", "2,4", "--tokens", "3", "--base-group", "2", "--base-tokens", "3"]
    args += ["--prompts", "2", "--model", tiny_model_dir, "--config", TINY]
    r = bench_scaling.main(args)
    assert sorted(r["points"]) == ["G=2,T=3", "G=4,T=3"]  # (2, 3) is on both axes: measured once
    for p in r["points"].values():
        assert p["gapg"]["completion_tokens"]["mean"] == p["trl"]["completion_tokens"]["mean"] == 2 * p["G"] * 3
    assert os.path.getsize(out + ".png") > 0
    on_disk = json.load(open(out + ".json"))
    on_disk["points"]["G=4,T=3"]["speedup"] = -1.0  # a marker: a rerun must keep finished points, not redo them
    json.dump(on_disk, open(out + ".json", "w"))
    again = bench_scaling.main(args)
    assert again["points"]["G=4,T=3"]["speedup"] == -1.0


def test_serve_benchmark_sends_the_same_requests_to_both_servers(tiny_model_dir, tmp_path):
    from benchmarks import bench_serve

    out = tmp_path / "serve.json"
    r = bench_serve.main(
        ["--model", tiny_model_dir, "--config", TINY, "--concurrency", "1,4", "--requests-per-client", "2"]
        + ["--steps", "1", "--warmup", "0", "--max-new-tokens", "6", "--json", str(out)]
    )
    assert json.load(open(out))["levels"]["4"]["speedup"] == r["levels"]["4"]["speedup"] > 0
    for c in (1, 4):
        level = r["levels"][str(c)]
        for name in ("batched", "one-at-a-time"):
            rec = level[name]
            assert rec["requests"] == c * 2 == sum(rec["answered_by"].values())
            assert 0 < rec["min_s"] <= rec["p50_s"] <= rec["p99_s"] <= rec["max_s"] and rec["requests_per_s"] > 0
    assert bench_serve.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and bench_serve.percentile([5.0], 99) == 5.0
