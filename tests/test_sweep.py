"""sweep.py: one training + evaluation per budget, resumed point by point; the table writer and the plot."""

import json
import math
import os
import shutil
import statistics
import sys

import pytest

import sweep
import train
from rl.checkpoint import step_checkpoint_dirs

TINY = [
    "task.levels=[1+1,1x1]",
    "task.num_train=32",
    "task.num_test=10",
    "rl.group_size=4",
    "rl.rollout_prompts=4",
    "rl.batch_prompts=4",
    "rl.max_new_tokens=6",
    "rl.filtering=false",
    "train.max_steps=2",
    "train.save_every=1",
    "train.eval_max_new_tokens=6",
    "train.eval_before=false",
    "train.wandb=false",
]


@pytest.mark.slow
def test_sweep_runs_each_budget_once_and_resumes_a_half_finished_point(tiny_model_dir, tmp_path):
    out = str(tmp_path / "sw")
    over = [f"model.name_or_path={tiny_model_dir}", *TINY]
    argv = [
        "--config",
        "configs/tiny_test.yaml",
        "--budgets",
        "0.2,0.4",
        "--out",
        out,
        "--baselines",
        "never,random,cloud",
        *over,
    ]
    # a sweep killed during the second point: budget 0.4 has its step-1 checkpoint but no final model
    half = sweep.point_dir(out, 0.4)
    assert (
        train.main(
            [
                "--config",
                "configs/tiny_test.yaml",
                *over,
                "rl.budget=0.4",
                f"train.output_dir={half}",
                "train.max_steps=1",
            ]
        )
        == 0
    )
    shutil.rmtree(os.path.join(half, "final"))
    assert sweep.main(argv) == 0
    steps = [json.loads(l)["step"] for l in open(os.path.join(half, "metrics.jsonl"))]
    assert steps == [1, 2]  # resumed from the checkpoint, not retrained from scratch
    rows = sweep.read_table(os.path.join(out, "sweep.csv"))
    assert sorted({r["budget"] for r in rows}) == [0.2, 0.4]
    assert {r["method"] for r in rows} == {"policy", "never", "random", "cloud"}
    assert all(
        r["overall_ci_lo"] <= r["overall_acc"] <= r["overall_ci_hi"] for r in rows
    )  # one suite: every row has its CI
    for r in rows:
        if r["method"] in ("policy", "random"):
            assert r["cloud_calls"] <= int(r["budget"] * 10)  # every capped method respects its own budget
    with open(os.path.join(out, "sweep.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # a finished sweep run again trains nothing and evaluates nothing
    stamp = {b: os.path.getmtime(os.path.join(sweep.point_dir(out, b), "final", "config.json")) for b in (0.2, 0.4)}
    assert sweep.main(argv) == 0
    assert stamp == {
        b: os.path.getmtime(os.path.join(sweep.point_dir(out, b), "final", "config.json")) for b in (0.2, 0.4)
    }
    assert len(open(os.path.join(half, "metrics.jsonl")).read().splitlines()) == 2


def test_table_writer_round_trip_sorted_and_blank_for_missing(tmp_path):
    rows = [
        {
            "budget": 0.5,
            "method": "random",
            "overall_acc": 0.61234567,
            "overall_ci": [0.5, 0.7],
            "device_acc": 0.5,
            "offload_rate": 0.5,
            "cloud_calls": 5,
            "n": 10,
        },
        {
            "budget": 0.1,
            "method": "policy",
            "overall_acc": 0.7,
            "device_acc": 0.66,
            "offload_rate": 0.1,
            "cloud_calls": 1,
            "apgr": None,
            "n": 10,
            "per_level": {"1": {}},
        },
    ]
    csv_path, json_path = sweep.write_table(rows, str(tmp_path))
    back = sweep.read_table(csv_path)
    assert [(r["budget"], r["method"]) for r in back] == [(0.1, "policy"), (0.5, "random")]
    assert back[1]["overall_acc"] == 0.6123 and back[0]["apgr"] is None and back[0]["cloud_calls"] == 1
    assert back[0]["overall_ci_lo"] is None  # no CI (e.g. an average over suites): blank
    assert json.load(open(json_path))[0]["per_level"] == {"1": {}}
    assert (back[1]["overall_ci_lo"], back[1]["overall_ci_hi"]) == (0.5, 0.7)
    assert (
        sweep.plot(back, str(tmp_path / "p.png"))
        and sweep.ci_of(back[1]) == [0.5, 0.7]
        and sweep.ci_of(back[0]) is None
    )


def test_seed_interval_uses_the_student_t_quantile_for_any_number_of_seeds():
    from evaluation.results import mean_ci

    sd_over_root_n = statistics.stdev([0.0, 1.0, 2.0]) / math.sqrt(3)
    assert abs(mean_ci([0.0, 1.0, 2.0])[1] / sd_over_root_n - 4.303) < 1e-3  # t_{0.975, 2}
    twelve = [float(i % 3) for i in range(12)]
    assert abs(mean_ci(twelve)[1] / (statistics.stdev(twelve) / math.sqrt(12)) - 2.201) < 1e-3  # t_{0.975, 11}
    assert mean_ci([0.5]) == (0.5, None)


def test_sweep_rejects_budgets_outside_the_unit_interval(capsys):
    assert sweep.main(["--config", "configs/tiny_test.yaml", "--budgets", "0.3,1.5"]) == 2
    assert "1.5" in capsys.readouterr().err


@pytest.mark.slow
def test_grid_mode_trains_methods_and_seeds_and_writes_the_report(tiny_model_dir, tmp_path, monkeypatch):
    """--methods x --seeds x --budgets: one run per point, one eval per (budget, seed) with every method and
    baseline, the report after each point; a rerun redoes nothing."""
    out, report = str(tmp_path / "grid"), str(tmp_path / "docs" / "results")
    argv = ["--config", "configs/tiny_test.yaml", "--budgets", "0.2,0.3", "--methods", "gapg,grpo", "--seeds", "0,1"]
    argv += ["--out", out, "--report", report, "--baselines", "never,random", f"model.name_or_path={tiny_model_dir}"]
    argv += [*TINY, "rl.filtering=true"]
    assert sweep.main(argv) == 0
    data = str(tmp_path / "docs" / "data" / "results")  # generated files beside the page, in docs/data/
    rows = list(__import__("csv").DictReader(open(data + ".csv")))
    assert sorted((r["budget"], r["method"], r["seed"]) for r in rows) == sorted(
        (b, m, s) for b in ("0.2", "0.3") for m in ("gapg", "grpo", "never", "random") for s in ("0", "1")
    )
    # each budget's row of a method is that budget's own model (the evaluation of one point never reuses another's)
    evals = {b: json.load(open(os.path.join(out, "eval-points", f"budget-{b}-seed-0.json"))) for b in ("0.20", "0.30")}
    assert all(r["budget"] == float(b) for b, rs in evals.items() for r in rs)
    for m in ("gapg", "grpo"):
        for s in (0, 1):
            run = sweep.grid_dir(out, m, s, 0.3)
            cfg = json.load(open(os.path.join(run, "config.json")))
            assert cfg["rl"]["advantage"] == m and cfg["train"]["seed"] == s
            # finished: final/ stays, the step checkpoints (saved every step here) are gone
            assert os.path.exists(os.path.join(run, "final", "config.json"))
            assert not os.path.exists(os.path.join(run, "checkpoints"))
    trained = [r for r in rows if r["method"] in ("gapg", "grpo")]
    assert all(r["train_offload_last"] != "" and r["offload_per_level"] for r in trained)
    md = open(report + ".md").read()
    command = md.splitlines()[5]  # the command that made it, in its first lines
    assert command.startswith("python ") and "sweep.py" in command and "--methods gapg,grpo" in command
    assert "| GAPG − GRPO-std |" in md and "| GAPG − base & naive |" in md and " ± " in md  # two seeds: intervals
    assert "*Stand-ins: the cloud is simulated (no LLM: right with probability" in md  # under every table
    assert "| wanted offload % |" in md
    assert "| offload per level % |" in md and "\n| GAPG | " in md.split("| offload per level % |")[1]
    assert "| GAPG | " in md.split("## Every budget at a glance")[1].split("## Budget 20%")[0]  # the headline table
    assert os.path.getsize(data + ".png") > 0 and os.path.getsize(data + "_offload.png") > 0
    assert "](data/results.png)" in md and not os.path.exists(report + ".csv")
    took = md.split("## Time it took")[1]  # the time each kind of run took, from metrics.jsonl and the evaluations
    assert "| training: GAPG | 4 | " in took and "| training: GRPO-std | 4 | " in took
    assert "| evaluation of a point (every row) | 4 | " in took
    stamp = os.path.getmtime(os.path.join(out, "eval-points", "budget-0.30-seed-1.json"))
    final = os.path.getmtime(os.path.join(sweep.grid_dir(out, "grpo", 1, 0.3), "final", "config.json"))
    reports = []  # the rows of every report this rerun writes
    real_report = sweep.write_report
    monkeypatch.setattr(
        sweep, "write_report", lambda rows, *a, **k: reports.append(len(rows)) or real_report(rows, *a, **k)
    )
    assert sweep.main(argv) == 0  # a rerun: every point is done
    assert os.path.getmtime(os.path.join(out, "eval-points", "budget-0.30-seed-1.json")) == stamp
    assert os.path.getmtime(os.path.join(sweep.grid_dir(out, "grpo", 1, 0.3), "final", "config.json")) == final
    assert reports == [len(rows)]  # nothing to train or evaluate: one report of every finished point
    # the models of evaluated points gone (a new machine keeps only the committed eval-points): nothing retrained
    shutil.rmtree(os.path.join(out, "gapg"))
    reports.clear()
    assert sweep.main(argv) == 0
    assert not os.path.exists(sweep.grid_dir(out, "gapg", 0, 0.3)) and reports == [len(rows)]
    # --plot-only with a seed not run yet: the report of what is evaluated, says how much; nothing trained
    assert sweep.main([*argv[:7], "0,1,2", *argv[8:], "--plot-only"]) == 0
    assert not os.path.exists(os.path.join(out, "grpo", "seed-2"))
    md = open(report + ".md").read()
    assert "In progress: 4 of 6 (budget, seed) points evaluated" in md
    assert "--seeds 0,1,2" in md.splitlines()[5] and "--plot-only" not in md


def test_budget_free_methods_train_one_run_per_seed_and_older_grids_keep_their_runs(tmp_path):
    """sweep.run_dir: Collaboration-Aware Tuning and task tuning read no budget, so a point of either uses the seed's
    one run; a grid that already trained Collaboration-Aware Tuning at a budget keeps that run (no retraining); a
    budgeted method (GAPG) has a run per budget."""
    out = str(tmp_path)
    assert {"tt", "cat"} <= sweep.BUDGET_FREE and "gapg" not in sweep.BUDGET_FREE
    for b in (0.1, 0.3):
        assert sweep.run_dir(out, "cat", 0, b) == os.path.join(out, "cat", "seed-0")
        assert sweep.run_dir(out, "tt", 1, b) == os.path.join(out, "tt", "seed-1")
        assert sweep.run_dir(out, "gapg", 0, b) == os.path.join(out, "gapg", "seed-0", f"budget-{b:.2f}")
    older = os.path.join(out, "cat", "seed-0", "budget-0.30")
    os.makedirs(older)
    open(os.path.join(older, "config.json"), "w").write("{}")
    assert sweep.run_dir(out, "cat", 0, 0.3) == older
    assert sweep.run_dir(out, "cat", 0, 0.1) == os.path.join(out, "cat", "seed-0")


def test_grid_mode_rejects_unknown_methods(capsys):
    assert sweep.main(["--config", "configs/tiny_test.yaml", "--methods", "ppo", "--out", "/tmp/x"]) == 2
    assert "['ppo']: choose from gapg,grpo,dr_grpo,cat" in capsys.readouterr().err
    assert sweep.main(["--config", "configs/tiny_test.yaml", "--methods", "tt", "--out", "/tmp/x"]) == 2
    assert "no routing method" in capsys.readouterr().err


@pytest.mark.slow
def test_grid_trains_task_tuning_once_per_seed_as_the_base_device_and_ablations_at_their_budget(
    tiny_model_dir, tmp_path
):
    """--methods gapg,tt --ablations gapg_fixed_gamma: the task-tuned run (no escalation offered) is trained once per
    seed and answers the baseline rows at every budget; the ablation is trained and reported only at its budget."""
    out, report = str(tmp_path / "grid"), str(tmp_path / "docs" / "results")
    argv = ["--config", "configs/tiny_test.yaml", "--budgets", "0.2,0.3", "--methods", "gapg,tt", "--seeds", "0"]
    argv += ["--ablations", "gapg_fixed_gamma", "--ablation-budgets", "0.3", "--out", out, "--report", report]
    argv += ["--baselines", "never,random,oracle", f"model.name_or_path={tiny_model_dir}", *TINY]
    argv += ["--score-rows"]  # each policy also escalating by its escalation score
    assert sweep.main(argv) == 0
    tt = sweep.grid_dir(out, "tt", 0, None)
    assert json.load(open(os.path.join(tt, "config.json")))["task"]["escalation"] is False
    assert not os.path.exists(os.path.join(out, "tt", "seed-0", "budget-0.20"))  # one run serves every budget
    fixed = json.load(open(os.path.join(sweep.grid_dir(out, "gapg_fixed_gamma", 0, 0.3), "config.json")))
    assert fixed["rl"]["gamma_lr"] == 0
    assert not os.path.exists(sweep.grid_dir(out, "gapg_fixed_gamma", 0, 0.2))
    for b in ("0.20", "0.30"):
        summary = json.load(open(os.path.join(out, "eval", f"budget-{b}-seed-0", "summary.json")))
        assert summary["row_models"]["never"] == os.path.join(tt, "final")  # the base rows answer with the TT device
        prompts = summary["prompts"]  # each model answers with its own run's prompt
        assert prompts["base"]["escalation"] is False and prompts["gapg"]["escalation"] is True, prompts
    rows = list(__import__("csv").DictReader(open(str(tmp_path / "docs" / "data" / "results") + ".csv")))
    assert sorted((r["budget"], r["method"]) for r in rows) == sorted(
        [(b, m) for b in ("0.2", "0.3") for m in ("gapg", "gapg@score", "never", "random", "oracle")]
        + [("0.3", "gapg_fixed_gamma"), ("0.3", "gapg_fixed_gamma@score")]
    )
    md = open(report + ".md").read()
    assert "| TT only |" in md and "| TT & oracle (ceiling) |" in md and "| GAPG with γ fixed |" in md
    table1 = md.split("## Table 1's shape (budget 30%)")[1].split("## Budget")[0]
    assert "| GAPG | " in table1 and "| GAPG by its escalation score | " in table1
    assert "| TT & oracle (ceiling) | " in table1
    assert "GAPG with γ fixed" not in md.split("## Budget 20%")[1].split("## Budget 30%")[0]
    assert "| training: task tuning (TT) | 1 | " in md.split("## Time it took")[1]
    # every point evaluated (with its @score rows): a rerun without the models trains nothing, not even the TT run
    shutil.rmtree(os.path.join(out, "tt"))
    shutil.rmtree(os.path.join(out, "gapg"))
    assert sweep.main(argv) == 0
    assert not os.path.exists(tt) and not os.path.exists(sweep.grid_dir(out, "gapg", 0, 0.3))


def test_the_report_says_per_budget_whether_gapg_beats_the_routing_baselines_and_the_oracle_gap_it_closes():
    """evaluation/results.py: verdict_lines and verdict_table from hand-made rows of 3 seeds at one budget."""
    from evaluation.results import comparison_rows, verdict_lines, verdict_table

    acc = {  # seed -> overall accuracy per row
        "gapg": [0.70, 0.72, 0.74],
        "cat": [0.69, 0.74, 0.70],  # differences -0.01..+0.04 around +0.01: within noise
        "router": [0.60, 0.61, 0.65],  # +0.10, +0.11, +0.09: beyond noise
        "confidence": [0.80, 0.81, 0.83],  # GAPG worse in every seed
        "random": [0.50, 0.52, 0.54],
        "oracle": [0.90, 0.92, 0.94],
    }
    rows = [
        {"budget": 0.3, "seed": s, "method": m, "overall_acc": a[s], "offload_rate": 0.2 + 0.05 * s}
        for m, a in acc.items()
        for s in range(3)
    ]
    lines = verdict_lines(comparison_rows(rows, ["gapg", "cat"]), rows, 0.3, tuned=True)
    text = "\n".join(lines)
    assert "GAPG − TT & router: 10.0 ± 2.5 points over 3 seeds: GAPG beats TT & router beyond noise." in text
    assert "GAPG is worse than TT & self-confidence beyond noise" in text
    assert "GAPG and Collaboration-Aware Tuning are within noise" in text
    assert "GAPG closes 50% of the gap from TT & naive (52.0%) to the TT & oracle (ceiling) (92.0%)." in text
    # the same verdicts in one row of the at-a-glance table: the differences' t-intervals by hand,
    # confidence: -10, -9, -9 -> -9.3 ± 4.303 · 0.577/√3 = 1.4; cat: +1, -2, +4 -> 1.0 ± 4.303 · 3/√3 = 7.5
    table = verdict_table(comparison_rows(rows, ["gapg", "cat"]), rows, tuned=True)
    assert table[0] == (
        "| budget | GAPG accuracy % (cloud %) | GAPG − TT & router, points | GAPG − TT & self-confidence, points | "
        "GAPG − Collaboration-Aware Tuning, points | naive-to-oracle gap closed | seeds |"
    )
    assert table[2] == (
        "| 30% | 72.0 ± 5.0 (25.0) | 10.0 ± 2.5 (beyond noise) | -9.3 ± 1.4 (beyond noise) | 1.0 ± 7.5 (within noise) "
        "| 50% | 3 |"
    )
    below = [dict(r, overall_acc=0.40) if r["method"] == "gapg" else r for r in rows]  # under TT & naive
    text = "\n".join(verdict_lines(comparison_rows(below, ["gapg", "cat"]), below, 0.3, tuned=True))
    assert "GAPG (40.0%) is under naive offloading: it closes none of the gap from TT & naive (52.0%)" in text
    assert verdict_table(comparison_rows(below, ["gapg", "cat"]), below, tuned=True)[2].endswith(
        "| none (under naive) | 3 |"
    )
    assert verdict_table(comparison_rows(rows, ["grpo"]), rows, tuned=True) == []  # no GAPG comparisons: no table
    # the same difference in every seed (+0.10): a t-interval of no width is no verdict, not "beyond noise"
    equal = [dict(r, overall_acc=[0.60, 0.62, 0.64][r["seed"]]) if r["method"] == "router" else r for r in rows]
    (c,) = [c for c in comparison_rows(equal, ["gapg", "cat"]) if (c["a"], c["b"]) == ("gapg", "router")]
    assert c["no_spread"] and not c["beyond"]
    text = "\n".join(verdict_lines([c], equal, 0.3, tuned=True))
    assert "GAPG − TT & router: 10.0 ± 0.0 points over 3 seeds: the seeds' differences are equal" in text
    assert "beats" not in text
    one = [r for r in rows if r["seed"] == 0]  # one seed: a difference with no interval, said in the singular
    text = "\n".join(verdict_lines(comparison_rows(one, ["gapg", "cat"]), one, 0.3, tuned=True))
    assert "GAPG − TT & router: 10.0 points over 1 seed: one seed, no interval." in text


def test_seeds_beyond_noise_both_ways_are_counted_apart_and_said_to_disagree():
    """evaluation/results.py: two seeds where GAPG is under TT & router beyond noise over the problems, one where it
    is over it beyond noise; the mean is negative, so 2 count the mean's way and 1 the other way."""
    from evaluation.results import comparison_rows, other_way, verdict_lines

    gapg, router = [0.70, 0.66, 0.79], [0.82, 0.75, 0.67]
    significant = [True, True, True]
    rows = [
        {
            "budget": 0.3,
            "seed": s,
            "method": "gapg",
            "overall_acc": gapg[s],
            "comparisons": [{"b": "router", "diff": gapg[s] - router[s], "significant": significant[s]}],
        }
        for s in range(3)
    ] + [{"budget": 0.3, "seed": s, "method": "router", "overall_acc": router[s]} for s in range(3)]
    (c,) = [c for c in comparison_rows(rows, ["gapg"]) if c["b"] == "router"]
    assert (c["beyond_in_seeds"], c["other_way_in_seeds"], c["beyond"]) == (2, 1, False)
    assert other_way(c) == " (1 the other way)"
    text = "\n".join(verdict_lines([c], rows, 0.3, tuned=True))
    assert "GAPG and TT & router are within noise (the seeds disagree: beyond noise over the problems " in text
    assert "in 2 seeds the mean's way and in 1 seed the other)." in text
    significant[2] = False  # seed 2 within noise over its problems: nothing the other way, no disagreement said
    for r in rows[:3]:
        r["comparisons"][0]["significant"] = significant[r["seed"]]
    (c,) = [c for c in comparison_rows(rows, ["gapg"]) if c["b"] == "router"]
    assert (c["beyond_in_seeds"], c["other_way_in_seeds"], other_way(c)) == (2, 0, "")
    text = "\n".join(verdict_lines([c], rows, 0.3, tuned=True))
    assert "disagree" not in text  # but the two seeds beyond noise over their problems are still said
    assert "are within noise over seeds (GAPG under it beyond noise over the problems in 2 of 3 seeds)." in text
    for r in rows[:3]:  # only seed 2 (GAPG over TT & router) beyond noise over its problems: against the mean's sign
        r["comparisons"][0]["significant"] = r["seed"] == 2
    text = "\n".join(verdict_lines(comparison_rows(rows, ["gapg"]), rows, 0.3, tuned=True))
    assert "are within noise over seeds (GAPG over it beyond noise over the problems in 1 of 3 seeds)." in text


def test_the_report_has_the_table_1_shape_at_30_percent_with_the_task_tuned_rows(tmp_path):
    """evaluation/results.py: with task-tuned baselines, write_markdown adds one row per method and TT baseline at
    the 30% budget, with conditional accuracy, overall accuracy and cloud share as means ± t-intervals over seeds."""
    from evaluation.results import table1_lines, write_markdown

    acc = {"gapg": [0.70, 0.72, 0.74], "cat": [0.60, 0.60, 0.60], "never": [0.5, 0.5, 0.5], "oracle": [0.9, 0.9, 0.9]}
    rows = [
        {"budget": b, "seed": s, "method": m, "overall_acc": a[s], "device_acc": a[s] - 0.1, "offload_rate": 0.3}
        for m, a in acc.items()
        for s in range(3)
        for b in (0.1, 0.3)
    ]
    lines = table1_lines(rows, ["gapg", "cat"], "arithmetic")
    assert lines[0].startswith("| method (arithmetic, budget 30%) | conditional accuracy % | overall accuracy %")
    body = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert list(body) == ["GAPG", "Collaboration-Aware Tuning", "TT only", "TT & oracle (ceiling)"]
    # gapg: overall 72.0 ± t(2)·sd/√3 = 4.303 · 0.02/√3 · 100 = 5.0; conditional 10 points lower, same interval
    assert body["GAPG"] == "| GAPG | 62.0 ± 5.0 | 72.0 ± 5.0 | 30.0 ± 0.0 | 3 |"
    assert table1_lines(rows, ["gapg"], "arithmetic", budget=0.5) == []
    path = write_markdown(rows, ["gapg", "cat"], str(tmp_path / "r.md"), "cmd", {"tuned": True, "task": "arithmetic"})
    text = open(path).read()
    assert "## Table 1's shape (budget 30%)" in text and body["TT only"] in text
    untuned = write_markdown(rows, ["gapg", "cat"], str(tmp_path / "u.md"), "cmd", {"tuned": False})
    assert "Table 1's shape" not in open(untuned).read()


def test_score_rows_follow_their_policy_in_the_report_and_get_a_verdict():
    """eval.py --score-rows in the grid: gapg@score is shown after gapg, named, and judged against TT & router."""
    from evaluation.results import comparison_rows, row_name, table1_lines, verdict_lines, with_score_rows

    acc = {"gapg": [0.70, 0.72, 0.74], "gapg@score": [0.80, 0.82, 0.84], "grpo": [0.7] * 3, "router": [0.75] * 3}
    rows = [
        {"budget": 0.3, "seed": s, "method": m, "overall_acc": a[s], "device_acc": 0.5, "offload_rate": 0.3}
        for m, a in acc.items()
        for s in range(3)
    ]
    shown = with_score_rows(["gapg", "grpo"], rows)
    assert shown == ["gapg", "gapg@score", "grpo"]  # grpo has no score row here
    assert row_name("gapg@score") == "GAPG by its escalation score"
    text = "\n".join(verdict_lines(comparison_rows(rows, shown), rows, 0.3, tuned=True))
    assert "GAPG − TT & router: -3.0 ± 5.0 points over 3 seeds: GAPG and TT & router are within noise." in text
    assert "GAPG by its escalation score beats TT & router beyond noise" in text
    assert [line.split(" | ")[0] for line in table1_lines(rows, shown, "arithmetic")[2:]] == [
        "| GAPG",
        "| GAPG by its escalation score",
        "| GRPO-std",
        "| TT & router",
    ]


@pytest.mark.parametrize("layout", ["checkpoints/step-5", "checkpoint-5"])  # the GAPG trainer's, TRL's
def test_a_half_trained_point_is_launched_with_resume_whichever_trainer_saved_it(tmp_path, layout):
    """A TRL run (Collaboration-Aware Tuning) killed mid-way keeps ``checkpoint-N`` beside its config, not under
    ``checkpoints/``: the grid relaunches it with --resume too, instead of retraining it from step 0."""
    run, record = tmp_path / "cat" / "seed-0" / "budget-0.10", tmp_path / "argv.json"
    os.makedirs(run / layout)
    recorder = tmp_path / "record_argv.py"  # the launcher: writes the command it was given, trains nothing
    recorder.write_text(f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    launch = f"{sys.executable} {recorder}"
    sweep.run_training("configs/tiny_test.yaml", 0.1, str(run), ["train.seed=0"], launch, "g")
    argv = json.load(open(record))
    assert argv[0].endswith("train.py") and "--resume" in argv and f"train.output_dir={run}" in argv
    os.remove(record)
    sweep.run_training("configs/tiny_test.yaml", 0.1, str(tmp_path / "fresh"), ["train.seed=0"], launch, "g")
    assert "--resume" not in json.load(open(record))  # nothing saved yet: a fresh start
    assert step_checkpoint_dirs(str(run)) == [str(run / layout.split("/")[0])]
