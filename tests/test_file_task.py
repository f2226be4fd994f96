"""task.name=file: your own problems from JSONL, CSV or Parquet (through ``datasets``), trained with train.py."""

import csv
import json
import logging

import pytest

from envs.tasks import load_problems, template_for
from settings import load_config

ROWS = [
    {"q": "What is 2 + 3?", "a": "#### 5"},
    {"q": "What is 10 * 4?", "a": "40"},
    {"q": "What is 7 - 9?", "a": "-2"},
    {"q": "What is 1,000 + 1?", "a": "1,001"},
]


def _files(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    test = tmp_path / "test.csv"
    with open(test, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["q", "a"])
        w.writeheader()
        w.writerows([{"q": "What is 6 + 6?", "a": "12"}, ROWS[1]])  # one question also in the training file
    return train, test


def test_file_task_reads_jsonl_and_csv_with_named_fields_and_warns_on_shared_questions(tmp_path, caplog):
    train, test = _files(tmp_path)
    cfg = load_config(
        None,
        ["task.name=file", f"task.train_file={train}", f"task.test_file={test}", "task.question_field=q"]
        + ["task.answer_field=a", "task.num_test=0", "task.num_train=0"],
    )
    with caplog.at_level(logging.WARNING, logger="envs.tasks"):
        tr, te = load_problems(cfg.task)
    assert [p.answer for p in tr] == ["5", "40", "-2", "1001"]  # GSM8K '####' and thousands separators parsed
    assert [p.question for p in te] == ["What is 6 + 6?", "What is 10 * 4?"] and te[0].answer == "12"
    assert "1 of the 2 held-out questions also appear in the training problems" in caplog.text
    assert template_for(cfg.task) == "arithmetic"  # short numeric answers: the one-line template
    pq = tmp_path / "train.parquet"
    import datasets

    datasets.Dataset.from_list(ROWS).to_parquet(str(pq))
    cfg.task.train_file = str(pq)
    assert [p.answer for p in load_problems(cfg.task)[0]] == ["5", "40", "-2", "1001"]


def test_file_task_errors_name_the_config_keys(tmp_path):
    train, test = _files(tmp_path)
    cfg = load_config(None, ["task.name=file", f"task.train_file={train}", f"task.test_file={test}"])
    with pytest.raises(ValueError, match="Set task.question_field=NAME"):
        load_problems(cfg.task)  # fields q/a are not among the automatic names
    cfg.task.train_file = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="task.train_file=.*no such file"):
        load_problems(cfg.task)
    (tmp_path / "x.txt").write_text("hi")
    cfg.task.train_file = str(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="unknown file type"):
        load_problems(cfg.task)


@pytest.mark.slow
def test_train_py_runs_an_update_on_a_file_task(tmp_path, tiny_model_dir):
    import train

    tr, te = _files(tmp_path)
    out = tmp_path / "run"
    rc = train.main(
        ["--config", "configs/tiny_test.yaml", f"model.name_or_path={tiny_model_dir}", "task.name=file"]
        + [f"task.train_file={tr}", f"task.test_file={te}", "task.question_field=q", "task.answer_field=a"]
        + [f"train.output_dir={out}", "train.max_steps=1", "rl.filtering=false"]
    )
    assert rc == 0
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(metrics) == 1 and metrics[0]["step"] == 1
    assert (out / "final" / "config.json").exists()
