"""SIGKILL a real training run and a real eval run mid-way, resume them, and compare with uninterrupted runs.

Every process here is a real ``python train.py`` / ``python eval.py`` subprocess killed with SIGKILL (no
cleanup, no atexit), on the tiny random model.  The cloud is the OpenAI-compatible client talking to a
real HTTP server on 127.0.0.1 (tests/test_cloud_http.py's ``ScriptedServer``) that records every
request, so "no cloud answer is paid for twice" is checked on the wire, not only in the cache file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_cloud_http import MODEL, ScriptedServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # several processes: accelerate launch, SIGKILL
KEY_ENV = "CLOUDROUTE_KILL_TEST_KEY"


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def _env():
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        KEY_ENV: "sk-kill-test-not-a-real-key",
    }


def _cloud_args(server, **kw):
    opts = {
        "cloud.backend": "openai",
        "cloud.base_url": server.base_url,
        "cloud.model": MODEL,
        "cloud.api_key_env": KEY_ENV,
        "cloud.backoff_base_s": 0.01,
        "cloud.backoff_max_s": 0.05,
        "cloud.max_new_tokens": 16,
        **kw,
    }
    return [f"{k}={v}" for k, v in opts.items()]


def _train_args(tiny_model_dir, out, server, steps):
    return [
        "train.py",
        f"model.name_or_path={tiny_model_dir}",
        "task.name=arithmetic",
        "task.num_train=64",
        "rl.gamma_controller=dual",  # dual ascent on the sampled usage; the PID's probe has its own tests
        "task.num_test=6",
        "task.levels=[1+1,1x1]",
        "rl.group_size=4",
        "rl.rollout_prompts=4",
        "rl.batch_prompts=4",
        "rl.max_new_tokens=8",
        "rl.filtering=false",
        "rl.gamma=0.05",
        "rl.gamma_lr=0.5",
        "train.learning_rate=1e-2",
        "train.wandb=false",
        "train.eval_before=false",
        "train.eval_max_new_tokens=4",
        "train.save_every=2",
        "train.keep_checkpoints=20",
        f"train.max_steps={steps}",
        f"train.output_dir={out}",
        *_cloud_args(server),
    ]


def _lines(path) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.readlines()


def _complete_json_lines(path) -> list[dict]:
    out = []
    for line in _lines(path):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line torn by the kill
    return out


def _cache_keys(path) -> set[str]:
    if not os.path.exists(path):
        return set()
    with sqlite3.connect(path) as db:
        try:
            return {k for (k,) in db.execute("SELECT key FROM answers")}
        except sqlite3.OperationalError:  # the table is created by the first writer
            return set()


def _start(args, log_path):
    """A subprocess whose output goes to a file (a pipe nobody reads would fill up and stall it)."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    log.close()
    return proc


def _kill_when(proc, ready, cache, counts, timeout=300.0):
    """Poll until ``ready()``, recording the cache's row count each time; then SIGKILL ``proc`` (which must still
    run)."""
    t0 = time.monotonic()
    while not ready():
        counts.append(len(_cache_keys(cache)))
        assert proc.poll() is None, (
            f"the run ended (exit {proc.returncode}) before it could be killed:\n{open(proc.log_path).read()[-3000:]}"
        )
        assert time.monotonic() - t0 < timeout, "the run did not get far enough to be killed"
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    counts.append(len(_cache_keys(cache)))


def _test_problems(n):
    from envs.tasks import load_problems
    from settings import load_config

    return load_problems(load_config(None, [f"task.num_test={n}", "task.levels=[1+1,1x1]"]).task)[1]


def _run(args, timeout=600):
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _questions(server) -> list[str]:
    return [r["question"] for r in server.requests]


def _cached_questions(cache, num_train=64, num_test=6, levels="[1+1,1x1]") -> set[str]:
    """The questions whose answers the cache file holds (its rows name the problem uid)."""
    from envs.tasks import load_problems
    from settings import load_config

    cfg = load_config(None, [f"task.num_train={num_train}", f"task.num_test={num_test}", f"task.levels={levels}"])
    by_uid = {p.uid: p.question for split in load_problems(cfg.task) for p in split}
    with sqlite3.connect(cache) as db:
        return {by_uid[u] for (u,) in db.execute("SELECT uid FROM answers")}


def _check_no_received_answer_asked_again(
    before: list[str], after: list[str], cached_at_kill: set[str], in_flight: int
):
    """A kill loses only the requests in flight (sent, answer not yet received): at most ``in_flight`` questions are
    asked again, none of them one whose answer had been received, and nothing else repeats."""
    again = set(before) & set(after)
    assert not again & cached_at_kill, f"answers received before the kill were paid for again: {again & cached_at_kill}"
    assert len(again) <= in_flight, again
    assert len(before) == len(set(before)) and len(after) == len(set(after))


def test_sigkilled_training_resumes_with_the_same_data_order_and_no_repaid_cloud_call(tiny_model_dir, tmp_path, server):
    steps = 8
    ref, part = str(tmp_path / "ref"), str(tmp_path / "part")
    _run(_train_args(tiny_model_dir, ref, server, steps))
    reference = _complete_json_lines(os.path.join(ref, "metrics.jsonl"))
    assert [m["step"] for m in reference] == list(range(1, steps + 1))
    server.requests.clear()

    # the run under test: killed during step 4, after step 3's metrics line (checkpoint step-2 is the last complete one)
    metrics, cache = os.path.join(part, "metrics.jsonl"), os.path.join(part, "cloud_cache.sqlite")
    proc = _start(_train_args(tiny_model_dir, part, server, steps), str(tmp_path / "killed.log"))
    counts: list[int] = []
    _kill_when(proc, lambda: len(_complete_json_lines(metrics)) >= 3, cache, counts)
    assert not os.path.exists(os.path.join(part, "final")), "the run was not killed mid-way"
    killed_lines = _lines(metrics)
    done_before_kill = [m["step"] for m in _complete_json_lines(metrics)]
    cached_at_kill = _cache_keys(cache)
    cached_questions = _cached_questions(cache)
    asked_before_kill = _questions(server)
    ckpts = [
        d
        for d in os.listdir(os.path.join(part, "checkpoints"))
        if os.path.exists(os.path.join(part, "checkpoints", d, "trainer_state.json"))
    ]
    last_ckpt = max(int(d.split("-")[1]) for d in ckpts)
    rerun = [s for s in done_before_kill if s > last_ckpt]  # finished before the kill, run again after the resume
    assert rerun, (
        f"killed too late to test re-running finished steps (checkpoint {last_ckpt}, steps {done_before_kill})"
    )
    assert cached_at_kill and asked_before_kill

    resumed = _run(_train_args(tiny_model_dir, part, server, steps) + ["--resume"])
    assert f"resumed from {os.path.join(part, 'checkpoints', f'step-{last_ckpt}')}" in resumed.stderr
    after = _complete_json_lines(metrics)
    counts.append(len(_cache_keys(cache)))

    # metrics.jsonl: every step once; the lines up to the checkpoint are the ones written before the kill
    assert [m["step"] for m in after] == list(range(1, steps + 1))
    assert _lines(metrics)[:last_ckpt] == killed_lines[:last_ckpt]
    # the same data order and the same numbers as the uninterrupted run, step by step
    for a, b in zip(after, reference):
        assert a["problem_uids"] == b["problem_uids"], a["step"]
        assert len(a["problem_uids"]) == 4 and len(set(a["problem_uids"])) == 4
        for k in ("reward", "offload_rate", "gamma", "device_acc"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), (a["step"], k)
    for name, w in load_file(os.path.join(ref, "final", "model.safetensors")).items():
        assert torch.allclose(w, load_file(os.path.join(part, "final", "model.safetensors"))[name], atol=1e-6), name

    # the cloud cache only grows, keeps every answer it had at the kill, and the server never answered a question twice
    assert counts == sorted(counts) and counts[-1] >= len(cached_at_kill) > 0
    assert cached_at_kill <= _cache_keys(cache)
    asked = _questions(server)
    _check_no_received_answer_asked_again(
        asked_before_kill, asked[len(asked_before_kill) :], cached_questions, in_flight=8
    )
    # the steps re-run after the resume were answered from the cache: the resumed process made no call for them
    first = after[last_ckpt]  # metrics of step last_ckpt + 1, the first step of the resumed process
    assert first["cloud_calls"] == 0 and first["cloud_cache_hits"] > 0


def test_sigkilled_eval_resumes_without_regenerating_or_repaying(tiny_model_dir, tmp_path):
    """Killed once in the device pass and once in the cloud pass; the third run finishes. Each problem is generated
    once and each cloud answer is paid once, over all three processes."""
    n = 48
    distinct = len({p.question for p in _test_problems(n)})  # a repeated question is one cache entry, asked once
    slow = ScriptedServer({None: [("delay", 0.15)] * 1000})  # a slow cloud: the cloud pass takes seconds
    try:
        out = str(tmp_path / "ev")
        args = [
            "eval.py",
            "--model",
            tiny_model_dir,
            "--base-model",
            "same",
            "--out",
            out,
            "--baselines",
            "never,random,cloud",
            "--batch-size",
            "4",
            "--max-new-tokens",
            "6",
            "task.levels=[1+1,1x1]",
            f"task.num_test={n}",
            "train.wandb=false",
            *_cloud_args(slow, **{"cloud.concurrency": 1}),
        ]
        device, cache = os.path.join(out, "arithmetic", "policy.device.jsonl"), os.path.join(out, "cloud_cache.sqlite")
        counts: list[int] = []

        proc = _start(args, str(tmp_path / "first.log"))
        _kill_when(proc, lambda: 8 <= len(_complete_json_lines(device)), cache, counts)
        first_lines = _lines(device)
        assert len(_complete_json_lines(device)) < n and not os.path.exists(os.path.join(out, "summary.json"))
        assert slow.requests == []  # killed in the device pass, before any cloud call

        proc = _start(args, str(tmp_path / "second.log"))
        _kill_when(proc, lambda: len(_cache_keys(cache)) >= 5, cache, counts)
        assert len(_complete_json_lines(device)) == n  # the device pass finished in the second process
        second_lines = _lines(device)
        cached_at_kill = _cache_keys(cache)
        cached_questions = _cached_questions(cache, num_test=n)
        asked_before_kill = [r["question"] for r in slow.requests]
        assert 5 <= len(cached_at_kill) < distinct and not os.path.exists(os.path.join(out, "summary.json"))

        done = _run(args)
        summary = json.load(open(os.path.join(out, "summary.json")))
        counts.append(len(_cache_keys(cache)))
    finally:
        slow.close()

    rows = _complete_json_lines(device)
    uids = [r["uid"] for r in rows]
    assert len(uids) == len(set(uids)) == n, "a problem was generated twice"
    assert (
        second_lines[: len(first_lines) - 1] == first_lines[: len(first_lines) - 1]
    )  # kept verbatim (the last may be torn)
    assert _lines(device) == second_lines  # the third run generated nothing
    asked = [r["question"] for r in slow.requests]
    assert len(set(asked)) == distinct
    _check_no_received_answer_asked_again(
        asked_before_kill, asked[len(asked_before_kill) :], cached_questions, in_flight=1
    )
    assert summary["cloud_usage"]["calls"] == distinct - len(
        cached_at_kill
    )  # the third run paid only for the missing ones
    assert summary["cloud_usage"]["cache_hits"] >= len(cached_at_kill)
    assert counts == sorted(counts) and counts[-1] == distinct
    rows_by_method = {r["method"]: r for r in summary["suites"]["arithmetic"]}
    assert rows_by_method["cloud"]["n"] == n and rows_by_method["cloud"]["cloud_calls"] == n
    assert "cloud usage this run" in done.stdout


def test_a_torn_work_file_line_does_not_swallow_the_next_row(tmp_path):
    """A kill in the middle of a write leaves a line without its newline; the next append must start a new line."""
    from core.io import append_jsonl, read_jsonl

    path = str(tmp_path / "w.jsonl")
    append_jsonl(path, [{"uid": "a", "x": 1}])
    with open(path, "a") as f:
        f.write('{"uid": "b", "x"')  # torn by a SIGKILL
    append_jsonl(path, [{"uid": "c", "x": 3}])
    rows = read_jsonl(path)
    assert set(rows) == {"a", "c"}  # b is redone; c is not lost with it


def test_resume_drops_metrics_of_steps_after_the_checkpoint(tmp_path):
    from rl.checkpoint import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward": s / 10}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "rew')
    assert truncate_metrics(str(path), 2) == 2
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2]
    assert truncate_metrics(str(path), 2) == 0


def test_eval_stopped_by_a_cloud_outage_says_so_and_resumes(tiny_model_dir, tmp_path):
    """The cloud fails for good mid-way (503 after retries): eval.py exits 3 with one clear line, keeps what it has,
    and the same command finishes once the cloud is back, generating nothing again."""
    n = 12
    outage = ScriptedServer({None: [("ok",)] * 5 + [("status", 503)] * 2})  # 5 answers, then one request fails twice
    try:
        out = str(tmp_path / "ev")
        args = [
            "eval.py",
            "--model",
            tiny_model_dir,
            "--base-model",
            "same",
            "--out",
            out,
            "--baselines",
            "never,cloud",
            "--max-new-tokens",
            "4",
            "task.levels=[1+1,1x1]",
            f"task.num_test={n}",
            "train.wandb=false",
            *_cloud_args(outage, **{"cloud.concurrency": 1, "cloud.max_retries": 1}),
        ]
        proc = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert (
            "error: cloud request" in proc.stderr
            and "HTTP 503" in proc.stderr
            and "run the same command again" in proc.stderr
        )
        assert "Traceback" not in proc.stderr
        device = os.path.join(out, "arithmetic", "policy.device.jsonl")
        before = _lines(device)
        assert len(before) == n and len(_cache_keys(os.path.join(out, "cloud_cache.sqlite"))) == 5

        _run(args)  # the cloud answers again
    finally:
        outage.close()
    assert _lines(device) == before
    asked = [r["question"] for r in outage.requests]
    distinct = len({p.question for p in _test_problems(n)})
    from collections import Counter

    times = Counter(asked)  # the failed question: 2 attempts in the first run, 1 in the second; every other one once
    assert len(times) == distinct and sorted(times.values()) == [1] * (distinct - 1) + [3]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["cloud_usage"]["calls"] == distinct - 5


def test_a_save_that_fails_midway_leaves_no_final_that_looks_finished(tiny_model_dir, tmp_path):
    """A full disk while saving final/ (the model written, the tokenizer not): no final/ appears, or the previous
    one stays whole, so resuming code that tests final/config.json never takes a half-written model for done."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.io import replaced_dir

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    final = str(tmp_path / "final")

    def save(fail: bool):
        with replaced_dir(final) as tmp:
            model.save_pretrained(tmp)
            if fail:
                raise OSError(28, "No space left on device")
            tok.save_pretrained(tmp)

    with pytest.raises(OSError, match="No space left"):
        save(fail=True)
    assert not os.path.exists(final)  # the model file alone never stands in for a finished save
    save(fail=False)
    AutoTokenizer.from_pretrained(final)
    stamp = os.path.getmtime(os.path.join(final, "config.json"))
    with pytest.raises(OSError):
        save(fail=True)
    assert os.path.getmtime(os.path.join(final, "config.json")) == stamp  # the previous final/ is whole
    AutoTokenizer.from_pretrained(final)
    save(fail=False)  # the stray .partial of the failed save is cleared
    assert sorted(os.listdir(tmp_path)) == ["final"]
