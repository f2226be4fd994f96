"""Your own problems end to end: one reader for JSONL/JSON/CSV/Parquet in training and in eval.py, each unusable
file one line (exit 2), the template that follows the answers, and a run's own evaluation defaults (--run)."""

import csv
import json

import pytest

import eval as evalmod
from envs.suites import load_file, normalize_gold
from envs.tasks import choose_template, load_problems, template_for, template_token_warning
from evaluation.suites import EvalOptions, SuiteRun, router_problems
from settings import load_config

ROWS = [{"q": "What is 12 * 7?", "a": "#### 84"}, {"q": "What is 5 + 9?", "a": 14}]


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _one_error_line(capsys, argv) -> str:
    assert evalmod.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_show_gold_reads_csv_parquet_and_a_json_array(tmp_path, capsys):
    import datasets

    csv_path = _csv(tmp_path / "my_test.csv", ROWS)
    pq = tmp_path / "my.parquet"
    datasets.Dataset.from_list([{"q": r["q"], "a": str(r["a"])} for r in ROWS]).to_parquet(str(pq))
    arr = tmp_path / "my.json"
    arr.write_text(json.dumps(ROWS))
    for path in (csv_path, pq, arr):
        assert (
            evalmod.main(["--data", str(path), "--question-field", "q", "--answer-field", "a", "--show-gold", "2"]) == 0
        )
        out = capsys.readouterr().out
        assert "2 problems" in out and "gold: 84" in out and "gold: 14" in out, (path, out)


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("empty.jsonl", "", r"empty.jsonl holds no rows"),
        ("empty.csv", "", r"empty.csv holds no rows"),
        ("header.csv", "q,a\n", r"header.csv holds no rows"),
        (
            "broken.jsonl",
            '{"question": "What is 1 + 1?", "answer": "2"}\n{"q": oops}\n',
            r"broken.jsonl:2 is not valid JSON",
        ),
        (
            "fields.jsonl",
            '{"text": "What is 1 + 1?", "sol": "2"}\n',
            r"fields.jsonl:1 has no question.*--question-field",
        ),
        ("ragged.csv", "q,a\nWhat is 1 + 1?,2\nx,1,5,6\n", r"ragged.csv could not be read as CSV.*line 3"),
        ("junk.parquet", "not parquet", r"junk.parquet could not be read as PARQUET"),
        ("notes.txt", "hi", r"notes.txt: unknown file type '.txt'; use .jsonl, .json, .csv or .parquet"),
    ],
)
def test_every_unusable_file_is_one_line_and_exit_2_in_eval(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    import re

    line = _one_error_line(capsys, ["--data", str(path), "--show-gold", "2"])
    assert re.search(expected, line), line


def test_a_missing_data_file_names_the_flag(tmp_path, capsys):
    line = _one_error_line(capsys, ["--data", str(tmp_path / "nosuch.jsonl"), "--show-gold", "2"])
    assert line.startswith("error: --data ") and "nosuch.jsonl" in line and "no such file" in line


def _file_cfg(train, test, *more):
    return load_config(
        None,
        ["task.name=file", f"task.train_file={train}", f"task.test_file={test}", "task.question_field=q"]
        + ["task.answer_field=a", "task.num_train=0", "task.num_test=0", *more],
    )


def test_training_reads_files_with_the_same_reader_and_names_the_key_file_and_line(tmp_path):
    test = _csv(tmp_path / "test.csv", [{"q": "What is 3 * 3?", "a": 9}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"^task.train_file: .*empty.jsonl holds no rows"):
        load_problems(_file_cfg(empty, test).task)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROWS[0]) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:3 is not valid JSON") as e:
        load_problems(_file_cfg(broken, test).task)
    assert "hub" not in str(e.value) and "not a local file" not in str(e.value)
    mixed = tmp_path / "mixed.jsonl"  # a number in one row, a string in the next: one reader for both
    mixed.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert [p.answer for p in load_problems(_file_cfg(mixed, test).task)[0]] == ["84", "14"]


def test_aime_golds_lose_their_leading_zeros():
    assert [normalize_gold(g) for g in ("025", "007", "0", "-012", "0.5", "100")] == [
        "25",
        "7",
        "0",
        "-12",
        "0.5",
        "100",
    ]


def test_the_template_follows_the_answers_and_a_short_cap_under_math_warns(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    test = _csv(tmp_path / "test.csv", [{"q": "What is 3 * 3?", "a": 9}])
    cfg = _file_cfg(train, test)
    load_problems(cfg.task)
    assert template_for(cfg.task) == "arithmetic"  # short numeric golds, short questions: one-line answers
    cfg = _file_cfg(train, test, "task.template=math")
    load_problems(cfg.task)
    assert template_for(cfg.task) == "math"  # an explicit choice stands
    word = load_file(str(_csv(tmp_path / "gsm.csv", [{"q": "Natalia sold clips " * 12 + "?", "a": 72}])), "q", "a")
    assert choose_template(word) == "math"  # short gold, long question: it needs its steps
    latex = load_file(str(_csv(tmp_path / "latex.csv", [{"q": "Simplify.", "a": "\\frac{\\pi}{2}"}])), "q", "a")
    assert choose_template(latex) == "math"
    warning = template_token_warning("math", 24, "rl.max_new_tokens")
    assert "rl.max_new_tokens = 24" in warning and "task.template=arithmetic" in warning
    assert template_token_warning("math", 1024, "x") is None and template_token_warning("arithmetic", 24, "x") is None


def _run_dir(tmp_path, *overrides):
    from settings import save_config

    run = tmp_path / "run"
    cfg = load_config("configs/cpu_default.yaml", [f"train.output_dir={run}", *overrides])
    save_config(cfg)
    return run


def test_eval_run_takes_the_runs_config_model_and_token_cap(tmp_path, capsys):
    run = _run_dir(tmp_path, "train.eval_max_new_tokens=24")
    line = _one_error_line(capsys, ["--run", str(run)])
    assert "no final/ policy yet" in line and "--resume" in line
    line = _one_error_line(capsys, ["--run", str(tmp_path)])
    assert "no config.json" in line
    (run / "final").mkdir()
    args = type("Args", (), {"run": str(run), "config": None, "model": None, "out": None})()
    assert evalmod.use_run(args) is None
    assert (args.config, args.model, args.out) == (str(run / "config.json"), str(run / "final"), str(run / "eval"))
    cfg = load_config(args.config)
    suite_run = SuiteRun(cfg, EvalOptions(config=args.config), {}, {}, [], [], None, None, "", None)
    assert suite_run.max_new("math") == 24  # the run's own cap, not the MATH suites' 1,024
    data_run = SuiteRun(cfg, EvalOptions(data="x.jsonl"), {}, {}, [], [], None, None, "", None)
    assert data_run.max_new("arithmetic") == 64 and data_run.max_new("math") == 1024


def test_the_router_learns_from_a_capped_sample_and_says_how_many(tmp_path):
    cfg = load_config("configs/cpu_default.yaml", ["task.num_train=200"])
    probs, source = router_problems(EvalOptions(), cfg, "arithmetic")
    assert len(probs) == 64 and "a seeded sample of 64 of its 200" in source


def test_the_readme_launches_train_py_the_quiet_way():
    """Every README command that launches train.py with accelerate names the one-process launch config and -q: no
    six-line warning about unset defaults, and a bad option stays our one error line."""
    text = open("README.md").read()
    blocks = text.split("```")[1::2]
    launches = [line for b in blocks for line in b.splitlines() if "accelerate launch" in line and "train.py" in line]
    assert len(launches) >= 5
    assert all("accelerate launch -q --config_file configs/accelerate/" in line for line in launches), launches
    assert "learning_curve.png" in text and "eval.py --run" in text
