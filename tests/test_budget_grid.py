"""scripts/budget_grid.py: the budget-control grid's table counts what the runs' files say."""

from __future__ import annotations

import json

import pytest

from scripts import budget_grid


def _run(folder, variant, seed, budget, wanted_by_step, acc=0.7, gamma=(0.0, 0.2, 0.1)):
    stem = folder / f"{variant}-seed{seed}-b{budget}"
    last = max(wanted_by_step)
    with open(f"{stem}.metrics.jsonl", "w") as f:
        for step in range(1, last + 1):
            g = gamma[min(step - 1, len(gamma) - 1)]
            f.write(json.dumps({"step": step, "gamma": g, "gamma_next": g, "offload_rate": 0.5}) + "\n")
    for step, wanted in wanted_by_step.items():
        tag = "final" if step == last else f"step-{step}"
        row = {"method": "policy", "overall_acc": acc, "wanted_offload_rate": wanted}
        (folder / f"{stem.name}.eval-{tag}.json").write_text(json.dumps([row, {"method": "policy_never"}]))


def test_the_table_counts_runs_within_the_tolerance_per_step(tmp_path):
    _run(tmp_path, "pid", 0, 0.3, {10: 0.35, 30: 0.31})  # step 10 off by 5 points, step 30 within 3
    _run(tmp_path, "pid", 1, 0.3, {10: 0.29, 30: 0.25})  # within, then off by 5
    _run(tmp_path, "dual", 0, 0.1, {10: 0.10, 30: 0.02}, gamma=(0.0, 1.2))
    rows = budget_grid.summary_rows(budget_grid.read_grid(str(tmp_path)), tolerance=3.0)
    by = {(r["variant"], r["budget"], r["step"]): r for r in rows}
    assert by[("pid", 0.3, 10)]["within"] == 1 and by[("pid", 0.3, 10)]["seeds"] == 2
    assert by[("pid", 0.3, 10)]["over"] == 1 and by[("pid", 0.3, 30)]["over"] == 0  # 35% wants more, 25% less
    assert by[("pid", 0.3, 30)]["within"] == 1
    assert by[("pid", 0.3, 30)]["wanted"][0] == pytest.approx(0.28)
    assert by[("dual", 0.1, 10)]["within"] == 1 and by[("dual", 0.1, 30)]["within"] == 0
    assert by[("dual", 0.1, 30)]["gamma_max"] == pytest.approx(1.2)

    out = tmp_path / "grid"
    assert budget_grid.main([str(tmp_path), "--out", str(out)]) == 0
    text = (tmp_path / "grid.md").read_text()
    assert "| pid | 30% | 30 | 2 | 28.0 ± " in text and "- pid, step 30: 1 of 2 (0 over)" in text
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_an_empty_folder_is_refused_with_what_it_needs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        budget_grid.main([str(tmp_path), "--out", str(tmp_path / "g")])
    assert "no <variant>-seed<s>-b<b>.eval-*.json files" in capsys.readouterr().err


def test_store_files_a_run_and_two_controllers_on_the_same_seed_are_compared_problem_by_problem(tmp_path):
    """--store copies a run's metrics and evaluations and keeps each problem's correctness; the report then gives
    the paired difference of two variants at the same (budget, seed, step)."""
    uids = [f"p{i}" for i in range(20)]
    for variant, n_right in (("dual", 10), ("pid", 14)):  # pid right on 4 more problems: +20 points
        run = tmp_path / "runs" / variant
        (run / "eval").mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "gamma": 0.0, "gamma_next": 0.0}) + "\n")
        row = {"method": "policy", "overall_acc": n_right / 20, "wanted_offload_rate": 0.3}
        (run / "eval" / "final.json").write_text(json.dumps([row]))
        with open(run / "eval" / "final.samples.jsonl", "w") as f:
            for i, u in enumerate(uids):
                f.write(json.dumps({"uid": u, "correct": i < n_right, "prompt": "long text"}) + "\n")
        assert budget_grid.main(["--store", str(run), str(tmp_path / "grid" / f"{variant}-seed0-b0.3")]) == 0
    stored = json.loads((tmp_path / "grid" / "pid-seed0-b0.3.correct-final.json").read_text())
    assert stored["uid"] == uids and sum(stored["correct"]) == 14
    pairs = budget_grid.paired_rows(budget_grid.read_grid(str(tmp_path / "grid")))
    assert [(p["a"], p["b"], p["seed"], p["step"]) for p in pairs] == [("dual", "pid", 0, 1)]
    assert pairs[0]["diff"] == pytest.approx(-0.2)
    assert pairs[0]["ci"][1] < 0  # pid never wrong where dual is right: the interval excludes 0
    assert budget_grid.main([str(tmp_path / "grid"), "--out", str(tmp_path / "out")]) == 0
    assert "| dual − pid | 30% | 0 | 1 | -20.0 |" in (tmp_path / "out.md").read_text()


def test_store_refuses_a_run_without_its_final_evaluation(tmp_path, capsys):
    (tmp_path / "run" / "eval").mkdir(parents=True)
    with pytest.raises(SystemExit):
        budget_grid.main(["--store", str(tmp_path / "run"), str(tmp_path / "x")])
    assert "has not finished its last evaluation" in capsys.readouterr().err


def test_the_modes_picture_reads_route_query_and_dpo_files(tmp_path):
    """Route at 30% from the grid, query and DPO from their own files: each series is what the files say (γ after
    each step or round, the probe where measured, the held-out wanted usage before and after)."""
    _run(tmp_path, "pid", 0, 0.3, {10: 0.35, 30: 0.31})
    _run(tmp_path, "pid", 0, 0.1, {10: 0.12, 30: 0.1})  # not the route row's budget
    steps = [{"step": k, "gamma": 0.1 * k, "gamma_next": 0.1 * (k + 1), "calls_per_rollout": 0.5} for k in (1, 2)]
    steps[1]["usage_greedy"] = 0.4
    (tmp_path / "query-pid-seed1.metrics.jsonl").write_text("\n".join(map(json.dumps, steps)) + "\n")
    policy = {"method": "policy", "wanted_calls_per_problem": 0.33, "wanted_offload_rate": 0.25}
    (tmp_path / "query-pid-seed1.eval-final.json").write_text(json.dumps([policy]))
    rounds = [{"round": r, "gamma": 0.0, "gamma_next": 0.05 * r, "usage": 0.2, "budget": 0.3} for r in (1, 2, 3)]
    (tmp_path / "dpo_dual-seed0.rounds.json").write_text(json.dumps(rounds))
    (tmp_path / "dpo_dual-seed0.eval-final.json").write_text(json.dumps([dict(policy, wanted_offload_rate=0.55)]))
    (tmp_path / "dpo_dual-seed0.eval-before.json").write_text(json.dumps([dict(policy, wanted_offload_rate=0.26)]))
    modes = budget_grid.read_modes(str(tmp_path), budget_grid.read_grid(str(tmp_path)))
    assert list(modes["route"]) == [("pid", 0)] and modes["route"][("pid", 0)]["wanted"] == [(10, 0.35), (30, 0.31)]
    query = modes["query"][("pid", 1)]
    assert query["gamma"] == pytest.approx([0.2, 0.3]) and query["probe"] == [(2, 0.4)]
    assert query["wanted"] == [(2, 0.33)] and query["usage"] == [0.5, 0.5]
    dpo = modes["DPO"][("dual", 0)]
    assert dpo["gamma"] == pytest.approx([0.05, 0.1, 0.15]) and dpo["wanted"] == [(0, 0.26), (3, 0.55)]
    assert dpo["budget"] == 0.3 and dpo["probe"] == []
    assert budget_grid.main([str(tmp_path), "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g_modes.png").stat().st_size > 0
