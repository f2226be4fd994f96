"""The task-tuning baselines: the no-escalation prompt (task.escalation=false) and its reward, the router and the
self-confidence threshold learning from the base model they route, and the confidence and oracle rows."""

import json
import math
import os
import random
import re
import shutil

import pytest

import eval as evalmod
from core.problem import Problem
from envs import prompts
from envs.route import RouteEnv
from evaluation import router as router_mod
from evaluation.protocol import suite_rows
from policies.cloud import CachedCloud, SimulatedCloud
from policies.confidence import confidence_threshold, response_confidence
from policies.generation import Sample
from rewards.config import RewardConfig
from settings import ConfigError, load_config, save_config

ESC = prompts.ESCALATION


class ScriptedGenerator:
    """Fixed device outputs by prompt (stands in for the model); records the prompts it was given."""

    def __init__(self, answer):
        self.answer, self.seen = answer, []

    def generate(self, prompts, n=1, **kw):
        self.seen += prompts
        return [[Sample([], [], self.answer(p), False) for _ in range(n)] for p in prompts]


class PlainTok:
    chat_template = None


def text_of(msgs):
    return "\n".join(m["content"] for m in msgs)


@pytest.mark.parametrize("template", ["arithmetic", "math", "countdown"])
def test_the_task_tuning_prompt_offers_no_escalation_and_the_routing_prompt_is_unchanged(template):
    tuned = text_of(prompts.messages(template, "What is 2 + 2?", escalation=False))
    assert "<unknown>" not in tuned and "unknown" not in tuned and "external assistance" not in tuned
    assert "\\boxed{}" in tuned or "<answer>" in tuned  # it still says how to answer
    routing = text_of(prompts.messages(template, "What is 2 + 2?"))
    assert ESC in routing  # the default prompt keeps its escalation option
    if template == "math":
        assert "If you cannot solve it after 6 steps, stop and return " + ESC in routing
    with pytest.raises(ValueError, match="query"):
        prompts.messages(template, "What is 2 + 2?", mode="query", escalation=False)


def test_the_task_tuning_worked_examples_are_solved_correctly():
    msgs = prompts.messages("arithmetic", "What is 2 + 2?", escalation=False)
    shots = [(q["content"], a["content"]) for q, a in zip(msgs[1:-1:2], msgs[2:-1:2])]
    assert len(shots) == 4 and msgs[0]["content"] == "Compute the result and give the final answer in \\boxed{}."
    for q, a in shots:
        expr = q.removeprefix("What is ").removesuffix("?")
        assert a == f"{expr} = {eval(expr)}. \\boxed{{{eval(expr)}}}"
    routing = prompts.messages("arithmetic", "What is 2 + 2?")
    assert [m["content"] for m in routing[2::2][:4]].count(ESC) == 2  # the routing prompt's two escalations


def test_without_escalation_the_reward_is_accuracy_and_a_tag_is_a_wrong_answer_with_no_cloud_call():
    probs = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1), level=1) for i in range(4)]
    # p0 right, p1 wrong, p2 only the tag, p3 a right answer then the tag
    outputs = {0: "\\boxed{1}", 1: "\\boxed{0}", 2: ESC, 3: "\\boxed{4} " + ESC}

    def answer(prompt):
        return outputs[next(i for i in range(4) if f"What is {i} + 1?" in prompt)]

    results = {}
    for escalation in (False, True):
        cloud = CachedCloud(SimulatedCloud(accuracy=1.0), None)
        env = RouteEnv("arithmetic", PlainTok(), cloud, few_shot=False, escalation=escalation)
        assert ("<unknown>" in env.prompt(probs[0])) == escalation
        groups = env.rollout(ScriptedGenerator(answer), probs, group_size=2, temperature=1.0)
        env.reward(groups, RewardConfig(), gamma=0.5)
        results[escalation] = (groups, cloud.usage()["calls"], env.usage_of(groups))
    groups, calls, usage = results[False]
    assert [g.rewards for g in groups] == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert not any(r.escalated or r.device_correct for g in groups[2:] for r in g.rollouts)
    assert calls == 0 and usage == 0.0 and all(g.cloud_correct is None for g in groups)
    # the routing environment, same outputs: the tags are escalations, paid for and charged gamma
    groups, calls, usage = results[True]
    assert calls > 0 and usage == 0.5 and groups[2].rewards == [0.25 - 0.5] * 2


def test_task_escalation_is_read_by_the_training_env_and_refused_where_it_cannot_hold():
    cfg = load_config(None, ["task.escalation=false"])
    env = RouteEnv.from_config(cfg, PlainTok(), None)
    assert env.escalation is False and "<unknown>" not in env.prompt(Problem("x", "What is 1 + 1?", "2"))
    assert RouteEnv.from_config(load_config(None, []), PlainTok(), None).escalation is True
    with pytest.raises(ConfigError, match="rl.env=query"):
        load_config(None, ["task.escalation=false", "rl.env=query"])
    with pytest.raises(ConfigError, match="sft.unknown_share=0"):
        load_config(None, ["task.escalation=false", "rl.trainer=sft"])
    load_config(None, ["task.escalation=false", "rl.trainer=sft", "sft.unknown_share=0"])


class RecordingRouter:
    """Stands in for the sentence-encoder router: records the labels it is fitted on."""

    fitted = []

    def fit(self, questions, device_correct):
        RecordingRouter.fitted.append(list(device_correct))
        return self

    def calibrate(self, questions):
        return self

    def save(self, path):
        open(path, "wb").close()


def test_the_router_learns_from_rollouts_of_the_base_model_it_routes_with_its_own_prompt(tmp_path, monkeypatch):
    monkeypatch.setattr(router_mod, "PromptRouter", RecordingRouter)
    RecordingRouter.fitted = []
    probs = [Problem(f"r{i}", f"What is {i} + 1?", str(i + 1), level=1) for i in range(10)]

    def parity_model(right_on):  # a base model right on the problems of one parity
        def answer(prompt):
            i = int(re.search(r"What is (\d+) \+ 1\?\s*$", prompt).group(1))
            return f"\\boxed{{{i + 1 if i % 2 == right_on else 0}}}"

        return ScriptedGenerator(answer)

    gens = {}
    for name, right_on, escalation in (("even", 0, False), ("odd", 1, True)):
        env = RouteEnv("arithmetic", PlainTok(), None, few_shot=False, escalation=escalation)
        gens[name] = parity_model(right_on)
        out = str(tmp_path / name)
        router_mod.train_router(probs, "test", env, gens[name], "arithmetic", 8, 4, out, f"model-{name}")
        (rdir,) = os.listdir(out)
        assert rdir.startswith("router-arithmetic-tt-" if not escalation else "router-arithmetic-")
        rows = [json.loads(line) for line in open(os.path.join(out, rdir, "device.jsonl"))]
        assert [r["prompt"] for r in rows] == [env.prompt(p) for p in probs]
    even, odd = RecordingRouter.fitted
    assert even == [i % 2 == 0 for i in range(8)] and odd == [i % 2 == 1 for i in range(8)]  # 80% fit split
    assert not any("<unknown>" in p for p in gens["even"].seen)  # the task-tuned base: its own prompt
    assert all("<unknown>" in p for p in gens["odd"].seen)
    # another base model's rollouts in the same folder are refused, never reused
    env = RouteEnv("arithmetic", PlainTok(), None, few_shot=False, escalation=False)
    with pytest.raises(ValueError, match="model"):
        router_mod.train_router(probs, "test", env, gens["odd"], "arithmetic", 8, 4, str(tmp_path / "even"), "other")


@pytest.mark.parametrize("n", [1, 7, 10, 37])
def test_the_confidence_threshold_escalates_the_budget_share_of_its_calibration_problems(n):
    rng = random.Random(n)
    conf = [-rng.random() * 3 for _ in range(n)]
    for budget in (0.0, 0.1, 0.25, 0.3, 0.5, 0.9, 1.0):
        t = confidence_threshold(conf, budget)
        below = sorted(i for i, c in enumerate(conf) if c < t)
        assert len(below) == math.floor(budget * n + 1e-9)
        assert below == sorted(sorted(range(n), key=lambda i: conf[i])[: len(below)])  # the least confident


def test_response_confidence_is_the_mean_token_log_prob_of_the_response(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts_, responses = ["What is 1 + 1?\n", "Q: 12 * 34 =\n"], ["2", "408. \\boxed{408}"]
    got = response_confidence(model, tok, prompts_, responses, batch_size=2)  # one padded batch
    for p, r, g in zip(prompts_, responses, got):
        ids = tok(p + r, add_special_tokens=False)["input_ids"]
        n = len(tok(r, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        by_hand = sum(logp[len(ids) - n - 1 + t, ids[len(ids) - n + t]].item() for t in range(n)) / n
        assert abs(g - by_hand) < 1e-4
    assert got[0] != got[1]


def test_oracle_row_by_hand_and_confidence_row_under_the_cap():
    probs = [Problem(f"o{i}", f"What is {i} + 5?", str(i + 5), level=1) for i in range(10)]
    wrong = {1, 4, 6, 9}
    conf = [-0.1, -2.0, -0.2, -3.0, -0.3, -0.4, -2.5, -0.5, -0.6, -0.05]  # 1, 3, 6 the least confident
    base = [
        {"uid": p.uid, "output": "x", "escalated": False, "answer": None, "correct": i not in wrong, "confidence": c}
        for i, (p, c) in enumerate(zip(probs, conf))
    ]
    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), None)
    plan = {"threshold": -0.45, "calibration_n": 20}  # below it: 1, 3, 6, 7, 8 (5 wanted), capped to 3
    rows, records = suite_rows(
        probs, {}, base, cloud, 0.3, baselines=("never", "confidence", "oracle"), confidence_plan=plan
    )
    by = {r["method"]: r for r in rows}
    assert list(by) == ["never", "confidence", "oracle"]
    # oracle: the first floor(0.3 * 10) = 3 wrong answers go to the cloud (right on all), the 4th stays wrong
    assert [i for i, r in enumerate(records) if r["oracle"]["sent_to_cloud"]] == [1, 4, 6]
    assert by["oracle"]["overall_acc"] == (6 + 3) / 10 and by["oracle"]["device_acc"] == 6 / 7
    assert by["oracle"]["cloud_calls"] == 3 and by["oracle"]["wanted_offload_rate"] == 0.4
    # confidence: problems below the threshold in dataset order, capped: 1 (wrong), 3 (right), 6 (wrong)
    assert [i for i, r in enumerate(records) if r["confidence"]["sent_to_cloud"]] == [1, 3, 6]
    assert by["confidence"]["overall_acc"] == (6 + 2) / 10 and by["confidence"]["wanted_offload_rate"] == 0.5
    assert by["confidence"]["threshold"] == -0.45 and by["confidence"]["calibration_n"] == 20
    assert records[3]["confidence"]["confidence"] == -3.0
    assert by["never"]["overall_acc"] == 0.6
    assert by["oracle"]["overall_acc"] >= max(r["overall_acc"] for r in rows)


ARGS = ["task.levels=[1+1,1x1]", "train.wandb=false", "--max-new-tokens", "6", "--batch-size", "8"]


def test_eval_with_a_task_tuned_base_run_uses_its_prompt_for_the_base_rows(tiny_model_dir, tmp_path, capsys):
    """--base-model <tt run>/final: the base rows, and the confidence calibration, answer with the run's
    task-tuning prompt; the evaluated policy (not a run) with the config's routing prompt."""
    run = tmp_path / "tt"
    save_config(load_config(None, ["task.escalation=false", f"train.output_dir={run}"]))
    shutil.copytree(tiny_model_dir, run / "final")
    data = tmp_path / "mine.jsonl"
    with open(data, "w") as f:
        for i in range(30):
            f.write(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n")
    out = str(tmp_path / "ev")
    argv = ["--model", f"gapg={tiny_model_dir}", "--base-model", str(run / "final"), "--data", str(data)]
    argv += ["--limit", "10", "--baselines", "never,random,confidence,oracle,cloud", "--out", out, *ARGS]
    assert evalmod.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = {r["method"]: r for r in summary["suites"]["mine"]}
    assert list(rows) == ["gapg", "never", "random", "confidence", "oracle", "cloud"]
    assert summary["prompts"]["base"]["escalation"] is False and summary["prompts"]["gapg"]["escalation"] is True
    assert "prompt: base answered with the task-tuning prompt" in printed
    base = [json.loads(line) for line in open(os.path.join(out, "mine", "base.device.jsonl"))]
    policy = [json.loads(line) for line in open(os.path.join(out, "mine", "gapg.device.jsonl"))]
    assert not any("<unknown>" in r["prompt"] for r in base) and all("<unknown>" in r["prompt"] for r in policy)
    assert all(isinstance(r["confidence"], float) for r in base)
    # the threshold was calibrated on the router's training problems, answered by the base model with its prompt
    (rdir,) = [d for d in os.listdir(out) if d.startswith("router-arithmetic-tt-")]
    cal = [json.loads(line) for line in open(os.path.join(out, rdir, "device.jsonl"))]
    assert len(cal) == 20 and not any("<unknown>" in r["prompt"] for r in cal)
    conf = rows["confidence"]
    assert conf["calibration_n"] == 20 and conf["calibration_offload"] == math.floor(0.3 * 20) / 20
    assert sum(r["confidence"] < conf["threshold"] for r in cal) == 6
    assert conf["cloud_calls"] <= 3 and rows["oracle"]["cloud_calls"] <= 3  # floor(0.3 * 10)
    assert rows["oracle"]["overall_acc"] >= max(rows[m]["overall_acc"] for m in ("never", "random", "confidence"))


@pytest.mark.slow
def test_task_tuning_run_of_the_trainer_pays_no_cloud_for_a_device_that_only_writes_the_tag(tmp_path):
    """train.py task.escalation=false with a model that answers every prompt with ``<unknown></unknown>``: its
    prompts offer no escalation, every rollout is a wrong answer (reward 0, offload 0) and the cloud is never asked."""
    import sqlite3

    from test_eval_cli import build_escalating_model

    import train

    model = build_escalating_model(str(tmp_path / "escalator"))
    out = str(tmp_path / "tt")
    args = [
        f"model.name_or_path={model}",
        "task.escalation=false",
        "task.num_train=16",
        "rl.gamma_controller=dual",  # dual ascent on the sampled usage; the PID's probe has its own tests
        "task.num_test=6",
        "task.levels=[1+1]",
        "rl.group_size=2",
        "rl.rollout_prompts=4",
        "rl.batch_prompts=4",
        "rl.max_new_tokens=4",
        "train.max_steps=1",
        "train.wandb=false",
        "train.eval_max_new_tokens=4",
        "train.eval_before=false",
        f"train.output_dir={out}",
    ]
    assert train.main(args) == 0
    (step,) = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"step"' in line][:1]
    assert step["offload_rate"] == 0.0 and step["reward"] == 0.0 and step["cloud_calls_total"] == 0
    assert step["stray_tags"] == 1.0  # the tags are written, and counted as stray
    policy, _, policy_random = json.load(open(os.path.join(out, "eval", "final.json")))
    assert policy["method"] == "policy" and policy["cloud_calls"] == 0 and policy["wanted_offload_rate"] == 0.0
    with sqlite3.connect(os.path.join(out, "cloud_cache.sqlite")) as db:  # only the policy_random row's answers
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == policy_random["cloud_calls"] == 1
    assert policy["format_rate"] == 0.0  # a tag the prompt does not offer is not the template's form
