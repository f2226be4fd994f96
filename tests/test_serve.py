"""Serving (serve.py, serving/): the OpenAI-compatible server driven by the real ``openai`` client on loopback.

The device is the tiny random model of conftest.py.  Where a test needs the device to escalate or to query, a logits
processor (``Scripted``) makes it write a fixed response for questions tagged ``(esc)`` / ``(ok)`` / ``(query)``:
generation, the training prompt, parsing, budget, cloud and HTTP paths are the real ones.  The cloud is the simulated
backend; ``FaultyCloud`` injects failures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from envs.query import QueryEnv
from envs.route import RouteEnv
from policies.cloud import CachedCloud, CloudConfigError, CloudError, SimulatedCloud
from policies.device import load_tokenizer
from policies.generation import HFGenerator
from serving.app import ANSWERED_BY_HEADER, BackgroundServer, ServeOptions, create_app
from serving.batcher import Batcher
from serving.budget import SlidingBudget
from serving.cloud import CloudBusy, CloudTimeout, ServingCloud
from serving.policy import CollaborativePolicy, PolicyLoadError, find_run_config, served_problem

ESC = "<unknown> I need external assistance </unknown>"
KEY = "sk-test-a1b2c3d4e5f6g7h8"


# --------------------------------------------------------------------------- the scripted device and faulty cloud


class Scripted(LogitsProcessor):
    """Forces the device's response for tagged questions (behaviour injection; untagged questions run free):
    ``(esc)`` escalates (its second choice, when the tag is banned: \\boxed{8}), ``(ok)`` answers \\boxed{7},
    ``(query)`` asks ``<query>3*4</query>`` and, once the response is in its context, answers \\boxed{12}.  A turn is
    a list of alternatives, best first: each next token of an alternative that the response still follows gets a
    finite logit (0, -1, ...), every other token -inf, so a banned token leaves the next alternative."""

    TURNS = {
        "(esc)": [[ESC, "8 \\boxed{8}"]],
        "(ok)": [["7 \\boxed{7}"]],
        "(query)": [["<query>3*4</query>"], [" so \\boxed{12}"]],
    }

    def __init__(self, tok):
        self.tok, self.eos = tok, tok.eos_token_id
        self.header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.tags: dict[tuple, str | None] = {}

    def _tag(self, head: list[int]) -> str | None:
        key = tuple(head)
        if key not in self.tags:
            text = self.tok.decode(head)
            self.tags[key] = next((t for t in self.TURNS if t in text), None)
        return self.tags[key]

    def __call__(self, input_ids, scores):
        for b, row in enumerate(input_ids.tolist()):
            h = len(self.header)
            start = max(i + h for i in range(len(row) - h + 1) if row[i : i + h] == self.header)
            tag = self._tag(row[:start])
            if tag is None:
                continue
            done = self.tok.decode(row[start:])
            turns = self.TURNS[tag]
            k = done.count("</response>")
            segment = done.rsplit("</response>", 1)[-1] if k else done
            seg = self.tok(segment, add_special_tokens=False)["input_ids"] if segment else []
            best = scores[b].clone()
            scores[b] = float("-inf")
            for rank, alt in enumerate(turns[min(k, len(turns) - 1)]):
                target = self.tok(alt, add_special_tokens=False)["input_ids"]
                if target[: len(seg)] == seg:
                    nxt = target[len(seg)] if len(seg) < len(target) else self.eos
                    scores[b, nxt] = max(float(scores[b, nxt]), -float(rank))
            if not bool(torch.isfinite(scores[b]).any()):  # off every script (a banned token): run free
                scores[b] = best
        return scores


class FaultyCloud:
    """A cloud backend that fails: ``CloudError`` (retries exhausted) or ``CloudConfigError`` (a wrong key)."""

    name = "faulty"

    def __init__(self, error=CloudError):
        self.error, self.asked = error, 0

    def cache_key(self, problem):
        return f"faulty:{problem.uid}"

    def answer_many(self, problems, on_reply=None):
        self.asked += len(problems)
        raise self.error("cloud request failed after 6 attempts; last cause: HTTP 503")


class FrozenCloud:
    """A cloud that hangs (a SIGSTOPped server) until ``release`` is set, then answers as the simulated one."""

    name = "frozen"

    def __init__(self):
        self.release, self.asked = threading.Event(), []

    def cache_key(self, problem):
        return f"frozen:{problem.uid}"

    def answer_many(self, problems, on_reply=None):
        self.asked += [p.question for p in problems]
        self.release.wait(60)
        return SimulatedCloud(accuracy=1.0).answer_many(problems)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def make_policy(model, tok, mode="route", cloud=None, budget=None, window=10, scripted=True, max_new_tokens=64, **kw):
    cloud = cloud or CachedCloud(SimulatedCloud(accuracy=1.0), None)
    env_cls = QueryEnv if mode == "query" else RouteEnv
    env = env_cls("arithmetic", tok, cloud, few_shot=False)
    return CollaborativePolicy(
        env,
        HFGenerator(model, tok, min_shared_prefix=0),
        cloud,
        SlidingBudget(budget, window) if budget is not None else None,
        max_new_tokens=max_new_tokens,
        name="tiny",
        logits_processor=LogitsProcessorList([Scripted(tok)]) if scripted else None,
        **kw,
    )


class Server(BackgroundServer):
    def client(self, key="unused", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)


def ask(client, question, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}], **kw)


def extra(r):
    return r.model_extra["cloudroute"]


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


# --------------------------------------------------------------------------- answers


def test_device_answers_with_the_training_prompt_over_the_openai_client(model, tok):
    policy = make_policy(model, tok, scripted=False, max_new_tokens=12)
    question = "What is 17 + 25?"
    prompt = policy.env.prompt(served_problem(question))
    assert "17 + 25" in prompt and prompt.startswith("<|im_start|>system")  # the training template, not the raw text
    want = HFGenerator(model, tok, min_shared_prefix=0).generate([prompt], temperature=0.0, max_new_tokens=12)[0][0]
    with Server(create_app(policy)) as s:
        client = s.client()
        assert [m.id for m in client.models.list().data] == ["tiny"]
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": question}]
        )
        r = raw.parse()
        assert raw.headers[ANSWERED_BY_HEADER] == extra(r)["answered_by"]
    assert r.choices[0].message.content == want.text
    assert r.model == "tiny" and r.object == "chat.completion"
    u = r.usage.model_dump()
    assert u["device_prompt_tokens"] == len(want.prompt_ids) and u["device_completion_tokens"] == len(
        want.completion_ids
    )
    assert u["cloud_prompt_tokens"] == u["cloud_completion_tokens"] == 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert r.choices[0].finish_reason == ("length" if want.truncated else "stop")
    if "<unknown>" not in want.text:  # a random model could end in the tag; then the cloud answers
        assert extra(r)["answered_by"] == "device" and extra(r)["cloud_calls"] == 0


def test_escalation_goes_to_the_cloud_once_and_is_cached(model, tok, tmp_path):
    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), str(tmp_path / "cache.sqlite"))
    policy = make_policy(model, tok, cloud=cloud)
    with Server(create_app(policy)) as s:
        client = s.client()
        local = ask(client, "What is 3 + 4? (ok)")
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "What is 37 * 46? (esc)"}]
        )
        first, again = raw.parse(), ask(client, "What is 37 * 46? (esc)")
    assert extra(local)["answered_by"] == "device" and extra(local)["answer"] == "7"
    assert (
        local.choices[0].message.content == "7 \\boxed{7}" and local.usage.model_dump()["cloud_completion_tokens"] == 0
    )
    reply = SimulatedCloud(accuracy=1.0).answer_many([served_problem("What is 37 * 46? (esc)")])[0]
    assert raw.headers[ANSWERED_BY_HEADER] == "cloud" == extra(first)["answered_by"]
    assert first.choices[0].message.content == reply.text and extra(first)["answer"] == "1702"
    assert extra(first)["escalated"] and extra(first)["device_text"] == ESC and extra(first)["cloud_calls"] == 1
    u = first.usage.model_dump()
    assert (u["cloud_prompt_tokens"], u["cloud_completion_tokens"]) == (reply.prompt_tokens, reply.completion_tokens)
    assert u["device_completion_tokens"] == len(tok(ESC, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert again.choices[0].message.content == reply.text
    assert cloud.usage()["calls"] == 1 and cloud.usage()["cache_hits"] == 1 and len(cloud) == 1


def test_python_api_is_the_same_path_and_keeps_the_budget(model, tok):
    policy = make_policy(model, tok, budget=0.3, window=10)
    answers = policy.ask_many([f"What is {i} + 1? (esc)" for i in range(10)] + ["What is 3 + 4? (ok)"])
    assert [a.answered_by for a in answers] == ["cloud"] * 3 + ["device-over-budget"] * 7 + ["device"]
    assert answers[0].answer == "1" and answers[5].refused_calls == 1
    # over budget, the device answers itself (the tag banned in a second greedy pass), labelled as such
    assert answers[5].text == "8 \\boxed{8}" and answers[5].answer == "8" and answers[5].device_text == ESC
    assert answers[5].escalation_suppressed and not answers[0].escalation_suppressed
    assert policy.budget.state()["window_calls"] == 2  # the last 10 arrivals (1..10) hold two of the three calls


# --------------------------------------------------------------------------- budget


@pytest.mark.slow
def test_budget_holds_under_200_concurrent_requests(model, tok):
    window, budget, n = 20, 0.3, 200
    policy = make_policy(model, tok, budget=budget, window=window)
    cap = policy.budget.cap
    with Server(create_app(policy, ServeOptions(max_batch=32, batch_wait_ms=20))) as s:

        async def storm():
            client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=300)
            qs = [f"What is {i} * 3? {'(esc)' if i % 5 else '(ok)'}" for i in range(n)]
            return await asyncio.gather(*(ask_async(client, q) for q in qs))

        async def ask_async(client, q):
            return await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}])

        replies = asyncio.run(storm())
        metrics = httpx.get(s.url + "/metrics").text
    by_index = {extra(r)["request_index"]: extra(r) for r in replies}
    assert sorted(by_index) == list(range(n))  # every request answered, each once
    cloud = [int(by_index[i]["answered_by"] == "cloud") for i in range(n)]
    worst = max(sum(cloud[i : i + window]) for i in range(n - window + 1))
    assert worst <= cap == 6  # never over budget in any window of consecutive arrivals
    # a full window blocks a refusal, and every request lies in one of n / (2 window - 1) disjoint stretches
    assert sum(cloud) >= cap * (n // (2 * window - 1))
    refused = [x for x in by_index.values() if x["answered_by"] == "device-over-budget"]
    assert refused and all(x["escalated"] and x["refused_calls"] == 1 for x in refused)
    assert all(x["answered_by"] == "device" for x in by_index.values() if not x["escalated"])
    assert metric(metrics, "cloudroute_requests_total", '{answered_by="cloud"}') == sum(cloud)
    assert metric(metrics, "cloudroute_budget_window_cap") == cap
    batches = metric(metrics, "cloudroute_device_batch_size_count")
    # batched, not one by one; the requests over budget ran a second (suppressed-escalation) pass
    assert metric(metrics, "cloudroute_device_batch_size_sum") == n + len(refused) and batches < n / 4
    assert all(x["escalation_suppressed"] for x in refused)


def test_sliding_budget_never_exceeds_its_cap_in_any_window():
    rng = random.Random(0)
    for budget, window in [(0.3, 10), (0.25, 8), (1.5, 4), (0.0, 5)]:
        b = SlidingBudget(budget, window)
        seqs = [b.open() for _ in range(120)]
        calls = [0] * 120
        for _ in range(600):  # calls asked in random order, some refunded (failed)
            s = rng.choice(seqs)
            if b.try_call(s):
                calls[s] += 1
                if rng.random() < 0.1:
                    b.refund(s)
                    calls[s] -= 1
        assert max(sum(calls[i : i + window]) for i in range(120 - window + 1)) <= b.cap
        assert sum(calls) >= (b.cap * 120) // (2 * window) and b.state()["granted"] == sum(calls)
    with pytest.raises(ValueError, match="budget"):
        SlidingBudget(float("nan"))


def test_batcher_batches_concurrent_items_and_fails_only_the_failing_item():
    seen = []

    def fn(items):
        seen.append(list(items))
        if "boom" in items:
            raise RuntimeError("device failed")
        return [x.upper() for x in items]

    b = Batcher(fn, max_batch=4, wait_ms=100)
    futs = [b.submit(x) for x in "abcdef"]
    assert [f.result(10) for f in futs] == list("ABCDEF")
    assert [len(s) for s in seen] == [4, 2]
    seen.clear()
    bad = [b.submit(x) for x in ("p", "boom", "q", "r")]
    with pytest.raises(RuntimeError, match="device failed"):
        bad[1].result(10)
    assert [f.result(10) for f in (bad[0], bad[2], bad[3])] == ["P", "Q", "R"]  # its batch-mates are answered
    assert seen == [["p", "boom", "q", "r"], ["p", "boom"], ["p"], ["boom"], ["q", "r"]]  # bisected, not one by one
    assert b.submit("y").result(10) == "Y"  # the worker lives on
    b.close()


# --------------------------------------------------------------------------- query mode


def test_query_mode_asks_the_cloud_mid_generation_within_the_budget(model, tok):
    policy = make_policy(model, tok, mode="query", budget=0.5, window=2)
    with Server(create_app(policy)) as s:
        client = s.client()
        helped = ask(client, "What is 3*4 plus nothing? (query)")
        refused = ask(client, "What is 3*4 again? (query)")  # one call per 2 requests: this one is refused
    h, r = extra(helped), extra(refused)
    assert h["answered_by"] == "device" and h["mode"] == "query" and h["cloud_calls"] == 1
    assert h["queries"] == ["3*4"] and h["answer"] == "12"
    assert helped.choices[0].message.content == "<query>3*4</query><response>12</response> so \\boxed{12}"
    u = helped.usage.model_dump()
    assert (
        u["cloud_completion_tokens"] == 1
        and u["device_completion_tokens"]
        == len(tok("<query>3*4</query> so \\boxed{12}", add_special_tokens=False)["input_ids"]) + 1
    )  # the inserted response is not the device's; + EOS
    assert r["answered_by"] == "device-over-budget" and r["cloud_calls"] == 0 and r["refused_calls"] == 1
    assert "<response>call limit reached</response>" in refused.choices[0].message.content


def test_query_mode_cloud_failure_returns_the_device_answer(model, tok):
    policy = make_policy(model, tok, mode="query", cloud=CachedCloud(FaultyCloud(), None), budget=1.0)
    a = policy.ask("What is 3*4? (query)")
    assert a.answered_by == "device-cloud-error" and "HTTP 503" in a.cloud_error
    assert "<response>cloud unavailable</response>" in a.text and a.answer == "12" and a.cloud_calls == 0
    assert policy.budget.state()["granted"] == 0  # the failed call was given back


# --------------------------------------------------------------------------- streaming


def test_streaming_sends_openai_chunks_that_join_to_the_answer(model, tok):
    policy = make_policy(model, tok, max_new_tokens=10)  # untagged questions run free
    with Server(create_app(policy)) as s:
        client = s.client()
        whole = ask(client, "What is 8 - 5?")
        chunks = list(ask(client, "What is 8 - 5?", stream=True, stream_options={"include_usage": True}))
        with httpx.stream(
            "POST",
            s.url + "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "What is 7 + 7? (ok)"}], "stream": True},
        ) as raw:
            lines = [line for line in raw.iter_lines() if line]
            header = raw.headers.get(ANSWERED_BY_HEADER)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len([c for c in chunks if c.choices]) > 2
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens and not chunks[-1].choices
    assert header is None and lines[-1] == "data: [DONE]"  # who answered is known at the end: the last chunk says
    events = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "7 \\boxed{7}"
    assert events[-1]["cloudroute"]["answered_by"] == "device"
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content", "") for e in events)
    assert reasoning == "7 \\boxed{7}"  # the device's work, then the same text as its answer


class Slow(LogitsProcessor):
    """A device that takes ``seconds`` per token (to see tokens arrive while it writes)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, input_ids, scores):
        time.sleep(self.seconds)
        return scores


def test_streaming_sends_the_device_work_token_by_token_then_the_answer(model, tok):
    """stream=True: the device's tokens arrive as reasoning_content while it writes (vLLM's and DeepSeek's field),
    then the reply (the cloud's, or the device's own when the cloud may not answer) as content."""
    policy = make_policy(model, tok, budget=0.5, window=2)  # one cloud call per two requests
    policy.logits_processor.append(Slow(0.03))
    question = "What is 37 * 46? (esc)"
    reply = SimulatedCloud(accuracy=1.0).answer_many([served_problem(question)])[0].text
    with Server(create_app(policy)) as s:
        client = s.client(timeout=60)
        runs = []
        for q in (question, "What is 6 * 8? (esc)"):  # the first goes to the cloud, the second is over budget
            t0, seen = time.perf_counter(), []
            for c in ask(client, q, stream=True, stream_options={"include_usage": True}):
                seen.append((time.perf_counter() - t0, c))
            runs.append(seen)
        whole = ask(client, question)  # the window has room again: the non-streamed reply to compare
    for seen, content, answered_by in ((runs[0], reply, "cloud"), (runs[1], "8 \\boxed{8}", "device-over-budget")):
        chunks = [c for _, c in seen]
        thinking = [(t, c.choices[0].delta.model_extra.get("reasoning_content")) for t, c in seen if c.choices]
        thinking = [(t, piece) for t, piece in thinking if piece]
        assert "".join(piece for _, piece in thinking) == ESC  # the device's own response, tag and all
        assert len(thinking) >= 20  # token by token (a character-level tokenizer: ~30 tokens), not at once
        assert thinking[-1][0] - thinking[0][0] >= 0.5  # ... while the device writes (0.03 s a token)
        first_content = next(t for t, c in seen if c.choices and c.choices[0].delta.content)
        assert first_content >= thinking[-1][0]  # the answer comes after the device's work
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        assert final.model_extra["cloudroute"]["answered_by"] == answered_by
        assert chunks[-1].usage is not None and not chunks[-1].choices
    assert whole.choices[0].message.content == reply and extra(whole)["answered_by"] == "cloud"


def test_a_stream_whose_device_fails_ends_with_an_error_event(model, tok):
    policy = make_policy(model, tok)
    policy.generator = PoisonedGenerator(model, tok, min_shared_prefix=0)
    with Server(create_app(policy)) as s:
        with pytest.raises(openai.APIError) as failed:
            list(ask(s.client(), "What is 2 + 2? (ok) (boom)", stream=True))
        ok = list(ask(s.client(), "What is 2 + 2? (ok)", stream=True))
    assert "request id" in failed.value.message and "alloc_cpu" not in failed.value.message
    assert "".join(c.choices[0].delta.content or "" for c in ok if c.choices) == "7 \\boxed{7}"


# --------------------------------------------------------------------------- auth, faults, bad requests


def test_bearer_auth_from_an_environment_variable(model, tok, monkeypatch, caplog):
    monkeypatch.setenv("TEST_SERVE_KEY", KEY)
    policy = make_policy(model, tok)
    caplog.set_level(logging.DEBUG)
    with Server(create_app(policy, ServeOptions(api_key_env="TEST_SERVE_KEY"))) as s:
        with pytest.raises(openai.AuthenticationError) as no_key:
            ask(s.client(key="wrong-key"), "What is 1 + 1? (ok)")
        missing = httpx.post(s.url + "/v1/chat/completions", json={"model": "tiny", "messages": []})
        malformed = httpx.post(
            s.url + "/v1/chat/completions",
            content=b'{"model": "tiny", "messages": [',
            headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"},
        )
        ok = ask(s.client(key=KEY), "What is 1 + 1? (ok)")
        health = httpx.get(s.url + "/health")
        models = httpx.get(s.url + "/v1/models")
    assert no_key.value.status_code == 401 and "TEST_SERVE_KEY" in no_key.value.body["message"]
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"  # auth comes first
    assert models.status_code == 401
    assert malformed.status_code == 401 and "JSON" not in malformed.text  # no parse details without the key
    assert extra(ok)["answered_by"] == "device" and health.status_code == 200
    assert KEY not in caplog.text and KEY not in missing.text and KEY not in no_key.value.message


@pytest.mark.parametrize("error", [CloudError, CloudConfigError])
def test_a_failing_cloud_returns_the_device_answer_marked(model, tok, error):
    faulty = FaultyCloud(error)
    policy = make_policy(model, tok, cloud=CachedCloud(faulty, None), budget=0.5, window=4)
    with Server(create_app(policy)) as s:
        raw = s.client().chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "What is 9 * 9? (esc)"}]
        )
        r = raw.parse()
        metrics = httpx.get(s.url + "/metrics").text
    assert raw.status_code == 200 and raw.headers[ANSWERED_BY_HEADER] == "device-cloud-error"
    # an answer every time: the device's own (the tag banned in a second pass), never the bare tag
    assert r.choices[0].message.content == "8 \\boxed{8}" and extra(r)["answer"] == "8"
    assert extra(r)["escalation_suppressed"] and extra(r)["device_text"] == ESC
    assert extra(r)["cloud_calls"] == 0 and faulty.asked == 1
    assert extra(r)["cloud_error"] and "HTTP 503" not in raw.text  # the cause stays in the server's log
    assert policy.budget.state()["granted"] == 0
    assert metric(metrics, "cloudroute_cloud_errors_total") == 1
    assert metric(metrics, "cloudroute_requests_total", '{answered_by="device-cloud-error"}') == 1


def test_bad_requests_get_a_4xx_in_openai_error_shape(model, tok):
    policy = make_policy(model, tok)
    good = {"model": "tiny", "messages": [{"role": "user", "content": "What is 1 + 1? (ok)"}]}
    cases = [
        ("not json", 400, "not valid JSON"),
        ({"model": "tiny"}, 400, "messages is missing"),
        ({**good, "messages": []}, 400, "messages"),
        ({**good, "messages": [{"role": "system", "content": "hi"}]}, 400, "no user message"),
        ({**good, "messages": [{"role": "user", "content": "  "}]}, 400, "empty"),
        ({**good, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
        ({**good, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "text"),
        ({**good, "temperature": 5}, 400, "temperature"),
        ({**good, "n": 2}, 400, "n=2"),
        ({**good, "max_tokens": 0}, 400, "max_tokens"),
        ({**good, "max_tokens": 5000}, 400, "--max-tokens-limit"),
        ({**good, "model": "gpt-4"}, 404, "serves 'tiny'"),
    ]
    with Server(create_app(policy, ServeOptions(max_tokens_limit=256))) as s:
        for body, status, words in cases:
            kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {}
            r = httpx.post(s.url + "/v1/chat/completions", **(kw or {"json": body}))
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and words in err["message"], (body, err)
        with pytest.raises(openai.BadRequestError, match="temperature"):
            ask(s.client(), "What is 2 + 2?", temperature=3)
        assert httpx.get(s.url + "/v1/nothing").json()["error"]["message"].startswith("/v1/nothing is not served")
        assert httpx.get(s.url + "/v1/chat/completions").status_code == 405
        parts = httpx.post(
            s.url + "/v1/chat/completions",
            json={**good, "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 1 + 1? (ok)"}]}]},
        )
        metrics = httpx.get(s.url + "/metrics").text
    assert parts.status_code == 200 and parts.json()["cloudroute"]["answer"] == "7"
    assert metric(metrics, "cloudroute_request_errors_total", '{status="400"}') == 12  # 11 cases + the client's


# --------------------------------------------------------------------------- isolation


class PoisonedGenerator(HFGenerator):
    """A device whose batch fails, with allocator internals in the message, when any row holds ``(boom)``."""

    def extend(self, contexts, *a, **kw):
        if any("(boom)" in self.tokenizer.decode(c) for c in contexts):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory")
        return super().extend(contexts, *a, **kw)


def test_a_question_longer_than_the_context_gets_a_400_before_joining_a_batch(model, tok):
    policy = make_policy(model, tok)
    assert policy.context_tokens == 2048  # the tiny model's max_position_embeddings
    long_question = "What is " + "1 + " * 700 + "1? (ok)"  # a character-level tokenizer: ~2,800 tokens
    with Server(create_app(policy)) as s:
        r = httpx.post(
            s.url + "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": long_question}], "max_tokens": 48},
        )
        ok = ask(s.client(), "What is 1 + 1? (ok)")
        metrics = httpx.get(s.url + "/metrics").text
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "2048" in r.json()["error"]["message"] and str(2048 - 48) in r.json()["error"]["message"]
    assert extra(ok)["answered_by"] == "device"
    assert metric(metrics, "cloudroute_device_batch_size_sum") == 1  # the long one never reached the device
    assert policy.budget is None or policy.budget.state()["window_calls"] == 0
    with pytest.raises(ValueError, match="2048"):  # the Python API refuses it the same way
        policy.ask(long_question)


def test_one_failing_request_never_fails_its_batch_mates_nor_leaks_internals(model, tok, caplog):
    policy = make_policy(model, tok)
    policy.generator = PoisonedGenerator(model, tok, min_shared_prefix=0)
    questions = ["What is 1 + 1? (ok)", "What is 2 + 2? (ok) (boom)", "What is 3 + 3? (ok)", "What is 4 + 4? (ok)"]
    caplog.set_level(logging.INFO)
    with Server(create_app(policy, ServeOptions(max_batch=8, batch_wait_ms=300))) as s:

        def post(q):
            return httpx.post(
                s.url + "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": q}]}
            )

        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(post, questions))
    assert [r.status_code for r in replies] == [200, 500, 200, 200]
    assert all(r.json()["cloudroute"]["answer"] == "7" for r in replies if r.status_code == 200)
    bad = replies[1]
    rid = bad.headers.get("x-request-id")
    assert (
        "alloc_cpu" not in bad.text and "RuntimeError" not in bad.text and rid and rid in bad.json()["error"]["message"]
    )
    assert bad.json()["error"]["type"] == "server_error"
    assert rid in caplog.text and "alloc_cpu" in caplog.text  # the details are in the log, under the id


# --------------------------------------------------------------------------- loading a trained run, the command


def _fake_run(tmp_path, tiny_model_dir, *overrides):
    """A run folder as train.py leaves it: config.json and final/ (the tiny model)."""
    import shutil

    from settings import load_config, save_config

    out = tmp_path / "run"
    cfg = load_config(
        "configs/tiny_test.yaml", [f"model.name_or_path={tiny_model_dir}", f"train.output_dir={out}", *overrides]
    )
    save_config(cfg)
    shutil.copytree(tiny_model_dir, out / "final")
    return out


def test_load_takes_template_and_mode_from_the_run_config(tmp_path, tiny_model_dir):
    out = _fake_run(tmp_path, tiny_model_dir, "rl.env=query", "rl.budget=0.7", "rl.max_queries=3")
    assert find_run_config(str(out / "final")) == str(out / "config.json")
    policy = CollaborativePolicy.load(str(out / "final"), cloud_cache=str(tmp_path / "c.sqlite"))
    assert policy.mode == "query" and policy.env.template == "arithmetic" and policy.name == "run"
    assert policy.budget.budget == 0.7 and policy.max_queries == 3 and policy.max_new_tokens == 8
    prompt = policy.env.prompt(served_problem("What is 2 + 2?"))
    assert "<query>" in prompt  # the query-mode training prompt
    a = policy.ask("What is 2 + 2?")
    assert a.answered_by in ("device", "cloud", "device-over-budget") and a.device_completion_tokens <= 8
    with pytest.raises(PolicyLoadError, match=r"in \[0, 1\]"):
        CollaborativePolicy.load(str(out / "final"), overrides=["rl.env=route"], budget=2.0, cloud_cache=None)


def test_serve_command_refuses_bad_options(tmp_path, capsys):
    import serve

    assert serve.main([]) == 2 and "--model" in capsys.readouterr().err
    assert serve.main(["--model", str(tmp_path / "missing"), "--config", "configs/tiny_test.yaml"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert serve.main(["--model", "x", "--max-batch", "0"]) == 2 and "--max-batch=0" in capsys.readouterr().err
    assert serve.main(["--model", "x", "--cloud-timeout", "-1"]) == 2 and "--cloud-timeout" in capsys.readouterr().err
    assert serve.main(["--model", "x", "stray"]) == 2 and "stray" in capsys.readouterr().err


def test_concurrent_requests_share_device_batches(model, tok):
    policy = make_policy(model, tok)
    sizes = []
    with Server(create_app(policy, ServeOptions(max_batch=8, batch_wait_ms=200))) as s:
        s_app = s.server.config.app
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: ask(s.client(), f"What is {i} + 2? (ok)"), range(8)))
        metrics = httpx.get(s.url + "/metrics").text
        sizes = (
            metric(metrics, "cloudroute_device_batch_size_count"),
            metric(metrics, "cloudroute_device_batch_size_sum"),
        )
    assert s_app is not None and all(extra(r)["answered_by"] == "device" for r in replies)
    assert sizes[1] == 8 and sizes[0] <= 3  # 8 requests in a 200 ms window: a few batches, not eight


def test_remote_device_proxy_gives_the_local_answers(model, tok):
    """--device-url: the device behind an OpenAI-compatible /v1/completions server (here a small one on the same tiny
    model, scripted the same way) gives the same replies as the in-process device, in both modes."""
    from fastapi import FastAPI

    from serving.remote import RemoteGenerator

    device_app, seen = FastAPI(), []
    gen = HFGenerator(model, tok, min_shared_prefix=0)
    script = LogitsProcessorList([Scripted(tok)])

    @device_app.post("/v1/completions")
    def completions(body: dict):
        seen.append(body)
        ids = tok(body["prompt"], add_special_tokens=False)["input_ids"]
        stop = (body.get("stop") or [None])[0]
        o = gen.extend([ids], body["max_tokens"], temperature=0.0, stop=stop, logits_processor=script)[0]
        finish = "length" if o.reason == "length" else "stop"
        return {"choices": [{"text": tok.decode(o.ids, skip_special_tokens=True), "finish_reason": finish}]}

    with BackgroundServer(device_app) as device:
        for mode, questions in (
            ("route", ["What is 3 + 4? (ok)", "What is 37 * 46? (esc)"]),
            ("query", ["3*4 (query)"]),
        ):
            local = make_policy(model, tok, mode=mode)
            remote = make_policy(model, tok, mode=mode)
            remote.generator, remote.logits_processor = RemoteGenerator(device.url + "/v1", "tiny", tok), None
            want, got = local.ask_many(questions), remote.ask_many(questions)
            assert [(a.text, a.answered_by, a.answer) for a in got] == [(a.text, a.answered_by, a.answer) for a in want]
    route_env = make_policy(model, tok).env
    prompts = {b["prompt"] for b in seen}  # the rows of a batch are sent concurrently: in any order
    assert route_env.prompt(served_problem("What is 3 + 4? (ok)")) in prompts  # the training prompt, as text
    assert any(b.get("stop") == ["</query>"] for b in seen) and {b["model"] for b in seen} == {"tiny"}


# --------------------------------------------------------------------------- the cloud off the request path


def test_a_frozen_cloud_stalls_nothing_and_every_escalation_gets_the_device_answer(model, tok, monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEY", KEY)
    frozen = FrozenCloud()
    policy = make_policy(
        model, tok, cloud=CachedCloud(frozen, None), cloud_timeout_s=6.0, cloud_workers=2, cloud_max_pending=8
    )
    shared = "What is 5 * 5? (esc)"
    questions = [f"What is {i} * 7? (esc)" for i in range(3)] + [shared] * 6
    with Server(create_app(policy, ServeOptions(api_key_env="TEST_SERVE_KEY", batch_wait_ms=50))) as s:
        client = s.client(key=KEY, timeout=20)
        with ThreadPoolExecutor(len(questions)) as pool:
            t0 = time.perf_counter()
            pending = [pool.submit(ask, client, q) for q in questions]
            time.sleep(1.0)  # the escalations now wait on the frozen cloud (2 calls running, 2 queued)
            t = time.perf_counter()
            models = client.models.list()
            models_s = time.perf_counter() - t
            local = ask(client, "What is 3 + 4? (ok)")
            local_s = time.perf_counter() - t
            replies = [f.result() for f in pending]
            escalated_s = time.perf_counter() - t0
            health = httpx.get(s.url + "/health").json()  # past the deadline, the calls still hang
        frozen.release.set()  # the cloud comes back: the calls in flight finish, their answers land in the cache
        deadline = time.monotonic() + 10
        while httpx.get(s.url + "/health").json()["cloud_state"]["state"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        again = ask(client, shared)
        metrics = httpx.get(s.url + "/metrics").text
    # auth, /v1/models and a device-only request never wait for the cloud: well inside the 6 s serving deadline that
    # waiting on it would cost (bounds wide enough for a loaded 2-core machine; speed itself is bench_serve's)
    assert [m.id for m in models.data] == ["tiny"] and models_s < 4.0
    assert extra(local)["answered_by"] == "device" and local_s < 4.0
    assert health["status"] == "degraded" and health["cloud_state"]["state"] == "degraded"
    assert health["cloud_state"]["in_flight"] == 4
    assert 6.0 <= escalated_s < 20  # the serving deadline, not the backend's minutes
    for r in replies:  # an answer every time, labelled
        x = extra(r)
        assert x["answered_by"] == "device-cloud-error" and x["escalation_suppressed"], x
        assert r.choices[0].message.content == "8 \\boxed{8}" and "deadline" in x["cloud_error"]
    assert sorted(frozen.asked) == sorted(set(questions))  # one call per question: the 6 copies shared one
    assert extra(again)["answered_by"] == "cloud" and frozen.asked.count(shared) == 1  # the late answer, not paid twice
    assert metric(metrics, "cloudroute_requests_total", '{answered_by="device-cloud-error"}') == len(questions)


def test_serving_cloud_refuses_past_its_queue_and_coalesces():
    frozen = FrozenCloud()
    cloud = ServingCloud(CachedCloud(frozen, None), workers=1, max_pending=2, timeout_s=0.2)
    a, b = served_problem("What is 1 + 1?"), served_problem("What is 2 + 2?")
    futs = cloud.submit([a, b, a]) + cloud.submit([served_problem("What is 3 + 3?")])
    assert futs[0] is futs[2] and cloud.state()["coalesced"] == 1
    with pytest.raises(CloudBusy):
        futs[3].result(1)
    with pytest.raises(CloudTimeout, match="0.2s"):
        cloud.answer_many([a])
    assert cloud.timed_out() and cloud.state()["state"] == "degraded"
    frozen.release.set()
    assert futs[0].result(5).text and futs[1].result(5).text
    assert cloud.answer_many([a, b])[0].cached and cloud.state()["state"] == "ready"
    assert frozen.asked == ["What is 1 + 1?", "What is 2 + 2?"]
    cloud.close()


def test_cloud_log_lines_count_their_own_call_under_concurrency(caplog):
    """A slow call's log line counts its own answers, not those other threads received meanwhile."""

    class SlowForOne(FrozenCloud):
        def answer_many(self, problems, on_reply=None):
            if problems[0].question == "What is 1 + 1?":
                return super().answer_many(problems)
            return SimulatedCloud(accuracy=1.0).answer_many(problems)

    slow_cloud = SlowForOne()
    cached = CachedCloud(slow_cloud, None)
    caplog.set_level(logging.DEBUG, logger="policies.cloud.cache")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(cached.answer_many, [served_problem("What is 1 + 1?")])
        while not slow_cloud.asked:
            time.sleep(0.01)
        cached.answer_many([served_problem(f"What is {i} + 2?") for i in range(8)])  # while the slow one waits
        slow_cloud.release.set()
        slow.result(10)
    lines = [r.getMessage() for r in caplog.records if " asked" in r.getMessage()]
    counts = [tuple(map(int, re.search(r"(\d+) asked.*?, (\d+) new answers", line).groups())) for line in lines]
    assert sorted(counts) == [(1, 1), (8, 8)], lines


# --------------------------------------------------------------------------- the OpenAI surface


def test_stop_and_max_tokens_are_honoured_and_unsupported_options_refused(model, tok):
    policy = make_policy(model, tok)
    good = {"model": "tiny", "messages": [{"role": "user", "content": "What is 6 + 1? (ok)"}]}
    with Server(create_app(policy)) as s:
        client = s.client()
        stopped = ask(client, "What is 6 + 1? (ok)", stop=[" \\", "zz"])
        short = ask(client, "What is 6 + 1? (ok)", max_tokens=3)
        refused = {
            name: httpx.post(s.url + "/v1/chat/completions", json={**good, name: value})
            for name, value in [
                ("tools", [{"type": "function", "function": {"name": "f"}}]),
                ("response_format", {"type": "json_object"}),
                ("logprobs", True),
                ("logit_bias", {"5": 10}),
            ]
        }
        accepted = httpx.post(
            s.url + "/v1/chat/completions",
            json={**good, "logprobs": False, "response_format": {"type": "text"}, "user": "u1"},
        )
        too_many = httpx.post(s.url + "/v1/chat/completions", json={**good, "stop": ["a", "b", "c", "d", "e"]})
    assert stopped.choices[0].message.content == "7" and stopped.choices[0].finish_reason == "stop"
    assert short.choices[0].message.content == "7 \\boxed" and short.choices[0].finish_reason == "length"
    assert short.usage.model_dump()["device_completion_tokens"] == 3
    assert extra(short)["answer"] is None  # cut off before its \\boxed{}: the 7 it was writing is not its answer
    for name, r in refused.items():
        assert r.status_code == 400 and name in r.json()["error"]["message"], (name, r.text)
        assert r.json()["error"]["param"] == name and r.json()["error"]["code"] == "unsupported_parameter"
    assert accepted.status_code == 200 and too_many.status_code == 400
