"""Cloud faults during training: a real HTTP server on 127.0.0.1 answers with 429/5xx/timeouts/resets.

The policy (documented in envs/route.py and docs/reliability.md): transient faults are retried by the client;
a request that still fails (``CloudError``) does not stop the step.  Answers that did arrive are used;
a problem still without one keeps its escalated rollouts as escalations (never graded as device answers),
with no reward: its group is left out of the update and counted in ``cloud_errors``.  A wrong key, URL
or model (401/403/404, ``CloudConfigError``) stops the run with a message that names the fix.
"""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
from test_cloud_http import MODEL, serve  # noqa: F401  (serve: the pytest fixture, shared)

import train
from core.problem import Problem
from envs.route import RouteEnv
from policies.cloud import CachedCloud, CloudConfigError, OpenAICloud
from policies.device import load_tokenizer
from policies.generation import Sample
from rl import trainer

KEY_ENV = "CLOUDROUTE_FAULT_TEST_KEY"
ESC = "<unknown> I need external assistance </unknown>"


@pytest.fixture(autouse=True)
def _retry_logs(caplog):
    """Retries log at debug level (shown by --verbose); these tests read them."""
    caplog.set_level(logging.DEBUG, logger="policies.cloud")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-fault-test-key")


def reply_body(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {}}).encode()


class FixedGenerator:
    """Stands in for the device model: problem i's G responses are ``texts[question]`` (the env code is what is
    tested)."""

    def __init__(self, texts: dict[str, list[str]]):
        self.texts = texts

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=64):
        out = []
        for prompt in prompts:
            q = max((prompt.rfind(q), q) for q in self.texts if q in prompt)[1]  # the last: not a worked example
            out.append([Sample([1, 2, 3], [4, 5], t, False) for t in self.texts[q][:n]])
        return out


A = Problem("a", "What is 2 + 3?", "5", level=1)
B = Problem("b", "What is 4 + 5?", "9", level=2)


def test_a_failed_cloud_call_is_an_escalation_without_reward_and_the_answers_that_arrived_are_used(
    serve, tiny_model_dir, tmp_path
):
    from rl.filtering import select_prompts
    from settings import load_config

    server = serve({A.question: [("raw", 200, reply_body("It is \\boxed{5}."))], B.question: [("status", 503)] * 20})
    backend = OpenAICloud(
        server.base_url,
        MODEL,
        api_key_env=KEY_ENV,
        max_retries=1,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        concurrency=1,
    )
    cloud = CachedCloud(backend, str(tmp_path / "c.sqlite"))
    env = RouteEnv("arithmetic", load_tokenizer(tiny_model_dir), cloud)
    gen = FixedGenerator({A.question: [ESC, "\\boxed{5}", "\\boxed{7}"], B.question: [ESC, "\\boxed{9}", "\\boxed{1}"]})
    ga, gb = env.rollout(gen, [A, B], group_size=3)

    assert [r["question"] for r in server.requests] == [A.question, B.question, B.question]  # B: 1 retry, then given up
    assert ga.cloud_error is None and ga.cloud_correct and ga.rollouts[0].cloud_correct and ga.trainable
    assert "HTTP 503" in gb.cloud_error and "failed after 2 attempts" in gb.cloud_error
    esc, right, wrong = gb.rollouts
    assert esc.escalated and esc.cloud_failed and not esc.local_correct and not esc.cloud_correct  # not a device answer
    assert (
        right.local_correct and not right.cloud_failed and not wrong.local_correct
    )  # its own answers are graded as usual
    assert not gb.trainable and gb.cloud_correct is None
    assert len(cloud) == 1  # A's answer arrived before B failed and is kept

    cfg = load_config(None, ["rl.batch_prompts=2", "rl.rollout_prompts=2", "rl.gamma=0.1"])
    env.reward([ga, gb], cfg.reward, 0.1)
    picked, stats = select_prompts([ga, gb], 2, 1.0)
    assert picked == [0] and stats["dropped"] == 1
    m = env.metrics([ga, gb])
    assert m["cloud_errors"] == 1 and m["cloud_failed_rollouts"] == 1
    assert m["reward"] == pytest.approx(sum(ga.rewards) / 3)  # B's unknown rewards are not averaged in
    assert m["cloud_acc"] == 1.0  # only the escalation the cloud answered counts
    assert m["device_acc"] == pytest.approx(2 / 4) and m["offload_rate"] == pytest.approx(2 / 6)


def test_the_error_raised_is_the_failure_not_a_request_dropped_because_of_it(serve, tmp_path):
    """When one request fails for good, the others are dropped with their own CloudError; whichever finishes first,
    the batch must raise (and the step log) the cause.  Repeated, since the order of the threads varies."""
    from policies.cloud import CloudError

    for attempt in range(6):
        qs = [f"r{attempt}q{i}?" for i in range(8)]
        server = serve({qs[0]: [("status", 400)], **{q: [("delay", 0.02)] for q in qs[1:]}})
        cloud = CachedCloud(
            OpenAICloud(server.base_url, MODEL, api_key_env=KEY_ENV, max_retries=0, concurrency=4), None
        )
        with pytest.raises(CloudError, match="HTTP 400"):
            cloud.answer_many([Problem(f"u{i}", q, "1") for i, q in enumerate(qs)])


def test_a_wrong_key_stops_the_rollout_with_the_fix(serve, tiny_model_dir, tmp_path):
    server = serve({None: [("status", 401)] * 5})
    cloud = CachedCloud(
        OpenAICloud(server.base_url, MODEL, api_key_env=KEY_ENV, max_retries=3), str(tmp_path / "c.sqlite")
    )
    env = RouteEnv("arithmetic", load_tokenizer(tiny_model_dir), cloud)
    with pytest.raises(CloudConfigError, match=rf"401.*\${KEY_ENV}"):
        env.rollout(FixedGenerator({A.question: [ESC, ESC]}), [A], group_size=2)
    assert len(server.requests) == 1


def test_a_query_the_cloud_cannot_answer_lets_the_row_finish_and_leaves_the_group_out(serve, tiny_model_dir, tmp_path):
    from test_query_env import ScriptedExtender

    from envs.query import CLOUD_UNAVAILABLE_TEXT, QueryEnv

    tok = load_tokenizer(tiny_model_dir)
    server = serve({"37 * 46": [("status", 502)] * 10})
    cloud = CachedCloud(
        OpenAICloud(server.base_url, MODEL, api_key_env=KEY_ENV, max_retries=1, backoff_base_s=0.01),
        str(tmp_path / "c.sqlite"),
    )
    env = QueryEnv("arithmetic", tok, cloud, few_shot=False)
    p = Problem("q1", "What is 37 * 46?", "1702", level=6)
    scripts = {"q1": [["Hmm <query>37 * 46</query>", " so \\boxed{1702}<|im_end|>"], ["\\boxed{1702}<|im_end|>"]]}
    (g,) = env.rollout(ScriptedExtender(tok, env, [p], scripts), [p], group_size=2, max_new_tokens=200)
    asked, plain = g.rollouts
    assert asked.cloud_failed and asked.queries == [] and asked.calls == 0  # no answer: not a call, nothing charged
    assert f"<response>{CLOUD_UNAVAILABLE_TEXT}</response>" in asked.sample.text and asked.sample.text.endswith(
        "\\boxed{1702}"
    )
    inserted = tok(f"<response>{CLOUD_UNAVAILABLE_TEXT}</response>", add_special_tokens=False)["input_ids"]
    assert asked.sample.loss_mask.count(0) == len(inserted)  # the inserted text is never trained
    assert not plain.cloud_failed and plain.unaided_correct
    assert not g.trainable and "HTTP 502" in g.cloud_error


COMMON = [
    "task.name=arithmetic",
    "task.num_train=32",
    "rl.gamma_controller=dual",  # dual ascent on the sampled usage; the PID's probe has its own tests
    "task.num_test=6",
    "task.levels=[1+1,1x1]",
    "rl.group_size=4",
    "rl.rollout_prompts=4",
    "rl.batch_prompts=4",
    "rl.max_new_tokens=6",
    "rl.gamma=0.05",
    "train.learning_rate=1e-2",
    "train.wandb=false",
    "train.eval_before=false",
    "train.eval_max_new_tokens=4",
    "train.save_every=0",
]


def _cloud(server, **kw):
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


def test_transient_faults_during_training_are_retried_and_the_run_finishes(serve, tiny_model_dir, tmp_path, caplog):
    faults = [
        ("status", 429, {"Retry-After": "0.05"}),
        ("status", 500),
        ("hang", 1.0),
        ("reset",),
        ("status", 503),
        ("status", 502),
    ]
    server = serve({None: list(faults)})
    out = str(tmp_path / "run")
    args = COMMON + [
        f"model.name_or_path={tiny_model_dir}",
        f"train.output_dir={out}",
        "train.max_steps=2",
        *_cloud(server, **{"cloud.timeout_s": 0.3, "cloud.max_retries": 8, "cloud.concurrency": 2}),
    ]
    assert train.main(args) == 0
    metrics = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["cloud_errors"] == 0 and m["cloud_failed_rollouts"] == 0 for m in metrics)
    assert metrics[-1]["cloud_retries"] >= len(faults)  # every fault was met, and retried
    questions = [r["question"] for r in server.requests]
    assert len(questions) == len(set(questions)) + metrics[-1]["cloud_retries"]  # retries are the only repeats
    assert os.path.exists(os.path.join(out, "eval", "final.json"))
    assert "HTTP 429" in caplog.text and "no reply within cloud.timeout_s" in caplog.text


def test_permanent_faults_during_training_skip_those_groups_and_are_counted(
    serve, tiny_model_dir, tmp_path, monkeypatch, caplog
):
    """Every '+' question fails for good (503 after retries); '*' questions are answered.  The model's first two
    responses per prompt are forced to escalate (a wrapper around the real generator), so failed problems have
    escalations whose reward is unknown."""
    from envs.tasks import load_problems
    from settings import load_config

    cfg = load_config(None, COMMON)
    train_p, test_p = load_problems(cfg.task)
    plus = {p.question for p in train_p + test_p if "+" in p.question}
    server = serve({q: [("status", 503)] * 100 for q in plus})
    gold = {p.question: p.answer for p in train_p}

    class ForcedEscalations(trainer.HFGenerator):
        def generate(self, prompts, n=1, *a, **k):
            out = super().generate(prompts, n, *a, **k)
            for prompt, group in zip(prompts, out):
                q = max((prompt.rfind(q), q) for q in gold if q in prompt)[1]  # the last: not a worked example
                for s, text in zip(group, [ESC, ESC, f"\\boxed{{{gold[q]}}}", "\\boxed{0}"]):
                    s.text = text
            return out

    seen = []  # (groups of each step, groups passed to the update)
    real_update, real_rewards = trainer.policy_update, RouteEnv.reward
    monkeypatch.setattr(trainer, "HFGenerator", ForcedEscalations)
    monkeypatch.setattr(
        RouteEnv, "reward", lambda env, groups, *a: (seen.append((list(groups), [])), real_rewards(env, groups, *a))[1]
    )
    monkeypatch.setattr(
        trainer,
        "policy_update",
        lambda m, o, acc, groups, *a, **k: (seen[-1][1].extend(groups), real_update(m, o, acc, groups, *a, **k))[1],
    )
    out = str(tmp_path / "run")
    args = COMMON + [
        f"model.name_or_path={tiny_model_dir}",
        f"train.output_dir={out}",
        "train.max_steps=3",
        "rl.filtering=false",
        # a failure for good drops the requests of its batch not yet sent; a half-second backoff before the one retry
        # lets every request of the step start first, so only the '+' problems fail however loaded the machine is
        *_cloud(server, **{"cloud.max_retries": 1, "cloud.backoff_base_s": 0.5, "cloud.backoff_max_s": 0.5}),
    ]
    assert train.main(args) == 0

    metrics = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert len(metrics) == 3 == len(seen)
    total_failed = 0
    for m, (groups, updated) in zip(metrics, seen):
        failed = [g for g in groups if "+" in g.problem.question]
        total_failed += len(failed)
        assert m["cloud_errors"] == len(failed) and m["cloud_failed_rollouts"] == 2 * len(failed)
        assert all(g.cloud_error and not g.trainable and all(r.escalated for r in g.rollouts[:2]) for g in failed)
        assert not any(g.cloud_error for g in updated) and len(updated) == m["trained_prompts"] == 4 - len(failed)
        # escalations are never device answers: one of the two non-escalated responses is right, in every group
        assert m["device_acc"] == 0.5 and m["offload_rate"] == 0.5
        known = [x for g in groups if g.trainable for x in g.rewards]  # the failed groups' rewards are not averaged in
        assert m["reward"] == pytest.approx(sum(known) / len(known)) if known else math.isnan(m["reward"])
    assert total_failed > 0
    assert "left out of the update" in caplog.text
    # nothing is cached for the failing questions; each answered question was asked once
    answered = [r["question"] for r in server.requests if r["question"] not in plus]
    assert len(answered) == len(set(answered))
    # the held-out evaluation meets the failing cloud too: it is skipped with a warning, the model is saved
    assert "held-out evaluation 'final' skipped" in caplog.text and not os.path.exists(
        os.path.join(out, "eval", "final.json")
    )
    assert os.path.exists(os.path.join(out, "final", "model.safetensors"))


def test_a_wrong_key_stops_training_with_the_fix(serve, tiny_model_dir, tmp_path):
    server = serve({None: [("status", 401)] * 50})
    args = COMMON + [
        f"model.name_or_path={tiny_model_dir}",
        f"train.output_dir={tmp_path}",
        "train.max_steps=1",
        *_cloud(server),
    ]
    with pytest.raises(CloudConfigError, match=rf"Set the API key in \${KEY_ENV}"):
        train.main(args)


def test_trl_reward_gives_a_failed_problem_zero_advantage(serve, tiny_model_dir, tmp_path):
    from rl.trl_grpo import make_reward_fn
    from settings import RewardConfig

    server = serve({B.question: [("status", 503)] * 20, A.question: [("raw", 200, reply_body("\\boxed{5}"))]})
    cloud = CachedCloud(
        OpenAICloud(server.base_url, MODEL, api_key_env=KEY_ENV, max_retries=1, backoff_base_s=0.01, concurrency=1),
        None,
    )
    env = RouteEnv("arithmetic", None, cloud)
    fn = make_reward_fn(env, [A, B], RewardConfig(alpha_local=1.0, alpha_cloud=0.4), 0.1)
    logged = {}
    out = fn([""] * 4, [ESC, "\\boxed{5}", ESC, "\\boxed{9}"], ["a", "a", "b", "b"], log_metric=logged.__setitem__)
    assert out == pytest.approx([0.3, 1.0, 0.0, 0.0])  # b: the same reward for each completion, so no advantage
    assert logged["cloud_errors"] == 1 and logged["cloud_acc"] == 1.0
