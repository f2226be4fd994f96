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
