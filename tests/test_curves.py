"""evaluation/curves.py: the learning curve and the side-by-side comparison of runs (scripts/plot_metrics.py)."""

import json
import os

import pytest

from evaluation.curves import held_out_points, plot_learning_curve, plot_run_comparison
from scripts import plot_metrics


def write_run(root, name: str, gammas: list[float], evals: dict[str, float]):
    """A run directory as train.py leaves it: config.json, metrics.jsonl, eval/<tag>.json with a policy row."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"rl": {"budget": 0.3}, "train": {"max_steps": len(gammas)}}))
    with open(run / "metrics.jsonl", "w") as f:
        for step, g in enumerate(gammas, 1):
            f.write(json.dumps({"step": step, "reward": 0.5, "offload_rate": 0.3 + g, "gamma": g}) + "\n")
        f.write(json.dumps({"step": 2, "eval": "step-2"}) + "\n")  # a line without training metrics is skipped
    for tag, wanted in evals.items():
        rows = [
            {"method": "never", "overall_acc": 0.4, "overall_ci": [0.3, 0.5], "offload_rate": 0.0},
            {
                "method": "policy",
                "overall_acc": 0.5 + wanted,
                "overall_ci": [0.45, 0.6 + wanted],
                "offload_rate": 0.3,
                "wanted_offload_rate": wanted,
            },
        ]
        (run / "eval" / f"{tag}.json").write_text(json.dumps(rows))
        (run / "eval" / f"{tag}.samples.jsonl").write_text("{}\n")  # the samples beside each evaluation are not read
    return str(run)


def test_held_out_points_are_the_policy_rows_in_step_order_with_final_at_max_steps(tmp_path):
    run = write_run(tmp_path, "a", [0.0, 0.1, 0.0, 0.0], {"final": 0.28, "step-2": 0.23, "before": 0.25})
    points = held_out_points(run)
    assert [s for s, _ in points] == [0, 2, 4]
    assert [p["wanted_offload_rate"] for _, p in points] == [0.25, 0.23, 0.28]


def test_compare_writes_one_figure_for_several_runs_and_the_command_names_a_missing_run(tmp_path, capsys):
    a = write_run(tmp_path, "a", [0.0, 0.1, 0.05], {"step-2": 0.2, "final": 0.3})
    b = write_run(tmp_path, "b", [0.0, 0.0, 0.0], {"final": 0.29})
    out = tmp_path / "cmp.png"
    plot_metrics.main(["--compare", f"dual 0.5={a},fixed={b}", "--out", str(out)])
    assert out.stat().st_size > 10_000 and f"wrote {out}" in capsys.readouterr().out
    assert plot_run_comparison({"a": a}, str(tmp_path / "one.png")) == str(tmp_path / "one.png")
    with pytest.raises(SystemExit):
        plot_metrics.main(["--compare", f"a={a},b={tmp_path / 'nope'}", "--out", str(out)])
    assert "nope" in capsys.readouterr().err
    assert plot_learning_curve(a) == os.path.join(a, "learning_curve.png")


def test_results_title_names_only_the_methods_the_grid_ran():
    from evaluation.results import method_title

    assert method_title(["gapg", "grpo"]) == "GAPG against GRPO-std"
    assert "Dr.GRPO advantages" in method_title(["gapg", "grpo", "dr_grpo"])
    assert method_title(["gapg"]) == "GAPG"
    assert method_title(["gapg", "gapg@score", "cat", "cat@score"]) == "GAPG against Collaboration-Aware Tuning"


def test_learning_curve_has_labelled_axes_integer_steps_held_out_points_and_a_panel_per_level(tmp_path):
    from evaluation.curves import learning_curve_figure

    run = write_run(tmp_path, "a", [0.0, 0.1, 0.2, 0.1, 0.0], {"before": 0.2, "step-2": 0.25, "final": 0.3})
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for line in lines:
            if "eval" not in line:
                line["offload_by_level"] = {"1": 0.1, "2": 0.5, "3": 0.9}
            f.write(json.dumps(line) + "\n")
    fig = learning_curve_figure(run)
    axes = fig.axes
    assert len(axes) == 3 + 3  # reward, offload, γ; then one small panel per level
    assert all(ax.get_ylabel() for ax in axes[:4]) and all(ax.get_xlabel() == "step" for ax in axes)
    for ax in axes:
        lo, hi = ax.get_xlim()
        assert all(float(t).is_integer() for t in ax.get_xticks() if lo <= t <= hi), ax.get_title()
    held = {line.get_label(): list(line.get_xdata()) for line in axes[0].lines + axes[1].lines}
    assert held["held-out accuracy (device + cloud)"] == [0, 2, 5] and held["held-out (asked for)"] == [0, 2, 5]
    assert [ax.get_title() for ax in axes[3:]] == ["level 1", "level 2", "level 3"]


def test_accuracy_plot_names_rows_as_the_tables_do_and_draws_the_cloud_as_a_line(tmp_path, monkeypatch):
    """evaluation/results.py plot_accuracy: legend labels from row_name (task-tuned baselines), the @score row after
    its policy, the cloud as a horizontal line (not a point at 100% that would stretch the axis)."""
    import matplotlib.figure

    from evaluation.results import plot_accuracy

    seen = {}

    def capture(fig, path, **kw):
        ax = fig.axes[0]
        seen["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        seen["xlim"] = ax.get_xlim()
        seen["hlines"] = [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
        open(path, "wb").write(b"png")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    rows = [
        {"budget": b, "seed": s, "method": m, "overall_acc": 0.5 + 0.1 * s, "offload_rate": b}
        for m in ("gapg", "gapg@score", "random", "confidence")
        for b in (0.1, 0.3)
        for s in range(3)
    ] + [{"budget": 0.3, "seed": s, "method": "cloud", "overall_acc": 0.95, "offload_rate": 1.0} for s in range(3)]
    out = plot_accuracy(rows, ["gapg", "gapg@score"], str(tmp_path / "acc.png"), tuned=True)
    assert os.path.exists(out)
    assert seen["labels"] == [
        "cloud alone (every problem)",
        "GAPG",
        "GAPG by its escalation score",
        "TT & naive",
        "TT & self-confidence",
    ]
    assert seen["xlim"][1] == 45.0  # the largest budget (30%) + 15, not 100
    assert 95.0 in [round(y, 6) for y in seen["hlines"]]
