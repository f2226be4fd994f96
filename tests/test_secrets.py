"""The cloud API key never appears in logs, checkpoints, saved configs, metrics, wandb files or error messages.

A sentinel key goes through ``cloud.api_key_env`` into real runs against a loopback HTTP server (GAPG training
with wandb offline and a checkpoint every step, eval.py, the TRL baseline); then every file the runs wrote,
everything they logged or printed, and the cloud client's errors and repr are searched for it.  The server
echoes the key back in an error body once, the way some proxies do, so the scrubbing is exercised too.
A key passed inline (as the variable's name, or in a key that does not exist) is refused without being echoed.
"""

from __future__ import annotations

import logging
import os

import pytest
from test_cloud_http import MODEL, ScriptedServer

import train
from core.problem import Problem
from policies.cloud import CachedCloud, CloudError, OpenAICloud
from settings import ConfigError, load_config

SENTINEL = "sk-SENTINEL-7f3a9c1e5b2d4086aa11-do-not-log"
KEY_ENV = "CLOUDROUTE_SECRET_TEST_KEY"
ECHO = f'{{"error": {{"message": "bad request for key Bearer {SENTINEL}"}}}}'.encode()


@pytest.fixture
def server():
    s = ScriptedServer({None: [("raw", 400, ECHO), ("status", 429, {"Retry-After": "0"}), ("status", 500)]})
    yield s
    s.close()


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb writes its run files (config, history, logs) to disk
    # rl/trl_grpo.py setdefaults these for transformers' WandbCallback; set them here so they stay test-local
    monkeypatch.setenv("WANDB_PROJECT", "cloudroute-test")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "trl"))


def _files_with_secret(root) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                data = f.read()
            if SENTINEL.encode() in data or SENTINEL[3:].encode() in data:
                hits.append(path)
    return hits


def _count_files(root) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _cloud_args(server):
    return [
        "cloud.backend=openai",
        f"cloud.base_url={server.base_url}",
        f"cloud.model={MODEL}",
        f"cloud.api_key_env={KEY_ENV}",
        "cloud.backoff_base_s=0.01",
        "cloud.backoff_max_s=0.05",
        "cloud.max_new_tokens=16",
        "cloud.max_retries=3",
    ]


TINY = [
    "task.name=arithmetic",
    "task.num_train=32",
    "rl.gamma_controller=dual",  # dual ascent on the sampled usage; the PID's probe has its own tests
    "task.num_test=4",
    "task.levels=[1+1,1x1]",
    "rl.group_size=4",
    "rl.rollout_prompts=4",
    "rl.batch_prompts=4",
    "rl.max_new_tokens=6",
    "train.eval_max_new_tokens=4",
    "train.wandb=true",
]


@pytest.mark.slow
def test_the_key_is_in_no_file_log_or_message(tiny_model_dir, tmp_path, server, env, caplog, capfd):
    import eval as evalmod

    caplog.set_level(logging.DEBUG)
    gapg, trl, ev = str(tmp_path / "gapg"), str(tmp_path / "trl"), str(tmp_path / "ev")
    assert (
        train.main(
            TINY
            + [
                f"model.name_or_path={tiny_model_dir}",
                f"train.output_dir={gapg}",
                "train.max_steps=2",
                "train.save_every=1",
                "train.eval_before=false",
                *_cloud_args(server),
            ]
        )
        == 0
    )
    assert (
        train.main(
            TINY
            + [
                f"model.name_or_path={tiny_model_dir}",
                f"train.output_dir={trl}",
                "train.max_steps=1",
                "train.save_every=1",
                "rl.trainer=trl_drgrpo",
                "train.eval_before=false",
                *_cloud_args(server),
            ]
        )
        == 0
    )
    assert (
        evalmod.main(
            [
                "--model",
                os.path.join(gapg, "final"),
                "--base-model",
                "same",
                "--out",
                ev,
                "--baselines",
                "never,cloud",
                "--max-new-tokens",
                "4",
                "task.levels=[1+1,1x1]",
                "task.num_test=4",
                *_cloud_args(server),
            ]
        )
        == 0
    )

    # the runs really used the key, really met the echoing error, and really wrote what is searched
    assert server.requests and all(r["auth"] == f"Bearer {SENTINEL}" for r in server.requests)
    assert "HTTP 400" in caplog.text and "left out of the update" in caplog.text
    for d in (gapg, trl):
        assert os.path.isdir(os.path.join(d, "wandb")), f"wandb wrote nothing under {d}"
    for path in (
        "gapg/config.json",
        "gapg/metrics.jsonl",
        "gapg/checkpoints/step-1/trainer_state.json",
        "gapg/eval/final.json",
        "trl/config.json",
        "trl/checkpoint-1/trainer_state.json",
        "trl/checkpoint-1/training_args.bin",
        "ev/summary.json",
    ):
        assert os.path.exists(tmp_path / path), path
    assert _count_files(tmp_path) > 40

    assert _files_with_secret(tmp_path) == []
    assert SENTINEL not in caplog.text and SENTINEL[3:] not in caplog.text
    out, err = capfd.readouterr()
    assert SENTINEL not in out + err and SENTINEL[3:] not in out + err


def test_errors_and_the_client_repr_never_hold_the_key(tmp_path, server, env):
    backend = OpenAICloud(server.base_url, MODEL, api_key_env=KEY_ENV, max_retries=0)
    with pytest.raises(CloudError) as e:  # the server's error body holds the key: it is scrubbed from the message
        CachedCloud(backend, None).answer(Problem("u", "q?", "1"))
    assert "HTTP 400" in str(e.value) and "***" in str(e.value)
    for text in (str(e.value), repr(e.value), repr(backend), str(backend.__dict__.get("url"))):
        assert SENTINEL not in text and SENTINEL[3:] not in text


@pytest.mark.parametrize(
    "override",
    [
        f"cloud.api_key_env={SENTINEL}",  # the key where its variable's name belongs
        "cloud.api_key_env=0123456789abcdef0123456789abcdef",  # a hex key
        "cloud.api_key_env=AbCdEf0123456789XyZw9876QrSt",  # a random-looking key with no prefix
        f"cloud.api_key={SENTINEL}",  # an inline key option that does not exist
        f"cloud.timeout_s={SENTINEL}",  # the key pasted into the wrong option
    ],
)
def test_an_inline_key_is_refused_without_being_echoed(override):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["cloud.backend=openai", "cloud.base_url=http://127.0.0.1:9/v1", "cloud.model=m", override])
    value = override.split("=", 1)[1]
    assert value not in str(e.value) and SENTINEL[3:] not in str(e.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "HF_TOKEN", "MY_KEY_2", "AZURE_OPENAI_API_KEY_2024_05_01"])
def test_variable_names_are_accepted(name):
    assert load_config(None, [f"cloud.api_key_env={name}"]).cloud.api_key_env == name


def test_the_cli_refuses_an_inline_key_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([f"cloud.api_key_env={SENTINEL}", f"train.output_dir={out}"]) == 2
    captured = capsys.readouterr()
    assert "NAME of an environment variable" in captured.err and SENTINEL not in captured.out + captured.err
    assert not out.exists()
