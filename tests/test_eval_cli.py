"""eval.py as a user runs it: suites from files, every baseline, per-sample output, resume without regenerating."""

import json
import os

import pytest
import torch

import eval as evalmod

ARGS = ["task.levels=[1+1,1x1]", "task.num_test=12", "train.wandb=false", "--max-new-tokens", "6", "--batch-size", "5"]


def test_eval_cli_writes_tables_samples_and_resumes(tiny_model_dir, tmp_path, capsys):
    out = str(tmp_path / "ev")
    argv = [
        "--model",
        f"a={tiny_model_dir},b={tiny_model_dir}",
        "--base-model",
        "same",
        "--baselines",
        "never,random,cloud",
        "--out",
        out,
        *ARGS,
    ]
    assert evalmod.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = summary["suites"]["arithmetic"]
    assert [r["method"] for r in rows] == ["a", "b", "never", "random", "cloud"]
    # --base-model same: the baselines answer with the first --model, run once (no separate base work file)
    assert summary["row_models"]["never"] == summary["row_models"]["a"] == tiny_model_dir
    assert f"a/b/never/random={tiny_model_dir} (base model: --base-model same: the first --model)" in printed
    assert not os.path.exists(os.path.join(out, "arithmetic", "base.device.jsonl"))
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
    argv = [
        "--model",
        tiny_model_dir,
        "--data",
        str(data),
        "--question-field",
        "q",
        "--answer-field",
        "sol",
        "--limit",
        "5",
        "--baselines",
        "cloud",
        "--out",
        out,
        *ARGS,
    ]
    assert evalmod.main(argv) == 0  # the cloud baseline alone needs no base model
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = summary["suites"]["mine"]
    assert [r["method"] for r in rows] == ["policy", "cloud"] and summary["base_model"] is None
    assert rows[0]["n"] == 5 and rows[0].get("apgr") is None  # no weak model, no APGR
    cloud_row = next(r for r in rows if r["method"] == "cloud")
    assert cloud_row["overall_acc"] > 0.5  # the simulated cloud answers the gold taken from the solution's \boxed{}


def test_eval_cli_rejects_bad_input(tiny_model_dir, tmp_path, capsys):
    assert evalmod.main(["--model", tiny_model_dir, "--suites", "nosuch", "--out", str(tmp_path)]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert evalmod.main(["--model", tiny_model_dir, "--baselines", "oracle", "--out", str(tmp_path)]) == 2
    assert "oracle" in capsys.readouterr().err
    # a --model name used twice: a library exception, one line and exit 2 (not SystemExit from inside the library)
    assert evalmod.main(["--model", f"a={tiny_model_dir},a={tiny_model_dir}", "--out", str(tmp_path)]) == 2
    assert "used twice" in capsys.readouterr().err


def test_a_work_file_of_other_settings_is_an_exception_and_eval_says_the_fix(tiny_model_dir, tmp_path, capsys):
    from core.io import WorkFileMismatch, check_meta

    work = str(tmp_path / "suite" / "policy.device.jsonl")
    check_meta(work, {"model": "a", "max_new_tokens": 24})
    check_meta(work, {"model": "a", "max_new_tokens": 24})  # the same settings resume
    with pytest.raises(WorkFileMismatch, match="max_new_tokens"):
        check_meta(work, {"model": "a", "max_new_tokens": 64})
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "What is 1 + 1?", "answer": "2"}\n')
    args = ["--model", tiny_model_dir, "--data", str(data), "--baselines", "", "--out", str(tmp_path / "o")]
    assert evalmod.main([*args, "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    assert evalmod.main([*args, "--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert "Traceback" not in err and len(errors) == 1
    assert "--fresh" in errors[0] and "max_new_tokens" in errors[0]


def build_escalating_model(path: str) -> str:
    """A tiny model that answers every prompt with ``<unknown></unknown>``: its blocks write nothing into the residual
    stream (zero output projections), so the next token depends on the current one only, and an untied head maps
    the prompt's last token (the newline after ``assistant``) to ``<unknown>``, that to ``</unknown>``, that to EOS."""
    from conftest import build_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_tiny_model(path, seed=1)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, tie_word_embeddings=False)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        unit = emb / emb.norm(dim=-1, keepdim=True)
        head = torch.zeros_like(emb)
        ids = tok.convert_tokens_to_ids
        for prev, nxt in (("\n", "<unknown>"), ("<unknown>", "</unknown>"), ("</unknown>", "<|im_end|>")):
            head[ids(nxt)] += 100 * unit[ids(prev)]
        model.lm_head.weight = torch.nn.Parameter(head)
    model.config.tie_word_embeddings = False
    model.save_pretrained(path)
    return path


@pytest.mark.slow
def test_baselines_default_to_the_configs_base_model_not_the_policy(tiny_model_dir, tmp_path, capsys):
    """Without --base-model, never/random answer with the config's model.name_or_path: here a model that never
    escalates, while the evaluated policy escalates every problem."""
    policy = build_escalating_model(str(tmp_path / "escalator"))
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name_or_path: {tiny_model_dir}\n")
    out = str(tmp_path / "ev")
    argv = [
        "--config",
        str(config),
        "--model",
        f"gapg={policy}",
        "--baselines",
        "never,random,cloud",
        "--budget",
        "0.25",
        "--out",
        out,
        *ARGS,
    ]
    assert evalmod.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["base_model"] == tiny_model_dir
    assert summary["row_models"] == {
        "gapg": policy,
        "never": tiny_model_dir,
        "random": tiny_model_dir,
        "cloud": "simulated cloud",
    }
    assert (
        f"rows: gapg={policy}; never/random={tiny_model_dir} (base model: model.name_or_path of {config}); "
        "cloud=simulated cloud"
    ) in printed
    base_file = os.path.join(out, "arithmetic", "base.device.jsonl")
    assert json.load(open(base_file + ".meta.json"))["model"] == tiny_model_dir
    base_out = [json.loads(line)["output"] for line in open(base_file)]
    samples = [json.loads(line) for line in open(os.path.join(out, "arithmetic", "samples.jsonl"))]
    assert all(s["gapg"]["device_output"] == "<unknown></unknown>" and s["gapg"]["escalated"] for s in samples)
    assert [s["never"]["device_output"] for s in samples] == base_out
    assert not any(s["never"]["escalated"] for s in samples)
    rows = {r["method"]: r for r in summary["suites"]["arithmetic"]}
    assert rows["gapg"]["wanted_offload_rate"] == 1.0 and rows["gapg"]["cloud_calls"] == 3  # floor(0.25 * 12)
    assert rows["never"]["offload_rate"] == 0.0

    # every row carries its 95% CI; the policy is compared with each baseline, in summary.json and under the table
    for r in rows.values():
        lo, hi = r["overall_ci"]
        assert lo <= r["overall_acc"] <= hi
    comps = summary["comparisons"]["arithmetic"]
    assert [(c["a"], c["b"]) for c in comps] == [("gapg", "never"), ("gapg", "random"), ("gapg", "cloud")]
    for c in comps:
        assert abs(c["diff"] - (rows[c["a"]]["overall_acc"] - rows[c["b"]]["overall_acc"])) < 1e-12
        assert c["ci"][0] <= c["diff"] <= c["ci"][1] and c["significant"] == (c["ci"][0] > 0 or c["ci"][1] < 0)
        assert f"gapg - {c['b']}: {100 * c['diff']:+.1f} pts" in printed
    assert "paired 95% bootstrap CI" in printed and "overall [95% CI]" in printed


def test_baselines_without_a_known_base_model_stop_with_one_line(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert evalmod.main(["--model", tiny_model_dir, "--baselines", "never,router,cloud", "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "error: the never/router baseline rows need the base device model"
    )
    assert "--base-model <path>" in err and "--config" in err and "--base-model same" in err
    assert not out.exists()  # stopped before anything was loaded or written


def test_router_learns_from_the_rows_of_the_users_file_that_are_not_evaluated(tiny_model_dir, tmp_path, capsys):
    """--data mine.jsonl --limit 5: the router baseline learns from the other rows of mine.jsonl (at most
    max(limit, 20)), never from MATH train and never from the evaluated rows; a rerun reuses it."""
    data = tmp_path / "mine.jsonl"
    with open(data, "w") as f:
        for i in range(30):
            f.write(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n")
    out = str(tmp_path / "ev")
    argv = ["--model", tiny_model_dir, "--base-model", "same", "--data", str(data), "--limit", "5"]
    argv += ["--baselines", "router", "--out", out, *ARGS]
    assert evalmod.main(argv) == 0
    err = capsys.readouterr().err
    assert f"router: learning from 20 problems of {data} (rows not evaluated)" in err
    (rdir,) = [d for d in os.listdir(out) if d.startswith("router-arithmetic-")]  # short answers: that template
    uids = {json.loads(line)["uid"] for line in open(os.path.join(out, rdir, "device.jsonl"))}
    assert len(uids) == 20 and not uids & {f"mine:{i}" for i in range(5)}  # the evaluated rows stay out
    work = os.path.join(out, rdir, "device.jsonl")
    before = (os.path.getmtime(work), open(work).read())
    assert evalmod.main(argv) == 0  # a rerun: the router's rollouts are on disk, none is generated again
    assert (os.path.getmtime(work), open(work).read()) == before
