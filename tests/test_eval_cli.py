"""eval.py as a user runs it: suites from files, every baseline, per-sample output, resume without regenerating."""

import json
import os

import eval as evalmod

ARGS = ["task.levels=[1+1,1x1]", "task.num_test=12", "train.wandb=false", "--max-new-tokens", "6", "--batch-size", "5"]


def test_eval_cli_writes_tables_samples_and_resumes(tiny_model_dir, tmp_path, capsys):
    out = str(tmp_path / "ev")
    argv = ["--model", f"a={tiny_model_dir},b={tiny_model_dir}", "--baselines", "never,random,cloud", "--out", out, *ARGS]
    assert evalmod.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = summary["suites"]["arithmetic"]
    assert [r["method"] for r in rows] == ["a", "b", "never", "random", "cloud"]
    assert all(r["n"] == 12 for r in rows) and rows[-1]["cloud_calls"] == 12
    assert "== arithmetic: 12 problems" in printed
    samples = [json.loads(l) for l in open(os.path.join(out, "arithmetic", "samples.jsonl"))]
    assert len(samples) == 12 and {"a", "b", "never", "cloud_output", "gold"} <= set(samples[0])
    assert summary["cloud_usage"]["calls"] == 12
    device_file = os.path.join(out, "arithmetic", "a.device.jsonl")
    before = open(device_file).read()

    # a second run over the same --out regenerates nothing and pays the cloud nothing
    assert evalmod.main(argv) == 0
    assert open(device_file).read() == before
    again = json.load(open(os.path.join(out, "summary.json")))
    assert again["cloud_usage"]["calls"] == 0
    assert again["suites"]["arithmetic"] == rows


def test_eval_cli_any_jsonl_with_field_names_and_limit(tiny_model_dir, tmp_path):
    data = tmp_path / "mine.jsonl"
    with open(data, "w") as f:
        for i in range(8):
            f.write(json.dumps({"q": f"What is {i} + {i}?", "sol": f"Double it: \\boxed{{{2 * i}}}"}) + "\n")
    out = str(tmp_path / "ev2")
    argv = ["--model", tiny_model_dir, "--data", str(data), "--question-field", "q", "--answer-field", "sol",
            "--limit", "5", "--baselines", "never,cloud", "--out", out, *ARGS]
    assert evalmod.main(argv) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = summary["suites"]["mine"]
    assert rows[0]["n"] == 5
    cloud_row = next(r for r in rows if r["method"] == "cloud")
    assert cloud_row["overall_acc"] > 0.5  # the simulated cloud answers the gold taken from the solution's \boxed{}


def test_eval_cli_rejects_bad_input(tiny_model_dir, tmp_path, capsys):
    assert evalmod.main(["--model", tiny_model_dir, "--suites", "nosuch", "--out", str(tmp_path)]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert evalmod.main(["--model", tiny_model_dir, "--baselines", "oracle", "--out", str(tmp_path)]) == 2
    assert "oracle" in capsys.readouterr().err
