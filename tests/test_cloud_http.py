"""The OpenAI-compatible cloud backend against a real HTTP server on 127.0.0.1 with scripted faults.

The server (stdlib ``ThreadingHTTPServer`` in a thread) implements ``POST /v1/chat/completions``;
each test scripts what every request gets: 429 with Retry-After, 5xx, a reply that hangs past the
client's timeout, malformed JSON, a connection reset, 401/400/404.  The server records every
request (arrival time, question, Authorization header) so the tests assert on what really
went over the wire.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.problem import Problem
from policies.cloud import CachedCloud, CloudError, OpenAICloud, make_cloud, parse_retry_after

SECRET = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "CLOUDROUTE_TEST_API_KEY"
MODEL = "scripted-model"


def ok_body(question: str, reply=None) -> dict:
    answer = reply(question) if reply else f"The answer to {question!r} is \\boxed{{{len(question)}}}."
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10 + len(question), "completion_tokens": 7, "total_tokens": 17 + len(question)},
    }


class ScriptedServer:
    """Actions, per question (``script[question]``, a list consumed in order) or for any question
    (``script[None]``); once a list is used up every request is answered normally.

    ("status", code, headers)  -- that status with a small JSON error body
    ("hang", seconds)          -- say nothing for that long, then answer normally
    ("raw", code, bytes)       -- that body verbatim (malformed JSON, no choices...)
    ("reset",)                 -- close the socket with a TCP RST, no response at all
    ("delay", seconds)         -- wait, then answer normally
    ("delay_then", seconds, action) -- wait, then do action

    ``reply(question) -> str``, when given, writes the content of the normal answers (a judge's score, ...).
    """

    def __init__(self, script: dict | None = None, reply=None):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.reply = reply
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep the test output quiet
                pass

            def do_POST(self):
                t = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                with server.lock:
                    server.requests.append(
                        {"t": t, "question": question, "auth": self.headers.get("Authorization"), "body": body}
                    )
                    queue = server.script.get(question) or server.script.get(None) or []
                    action = queue.pop(0) if queue else ("ok",)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self.working = True
                try:
                    self.act(action, question)
                finally:
                    self.done()

            def done(self):  # the request's work is over (called before the reply goes out)
                if self.working:
                    self.working = False
                    with server.lock:
                        server.in_flight -= 1

            def act(self, action, question):
                kind = action[0]
                if kind == "delay_then":
                    time.sleep(action[1])
                    return self.act(action[2], question)
                if kind in ("hang", "delay"):
                    time.sleep(action[1])
                    kind = "ok"
                if kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if kind == "ok":
                    code, headers, payload = 200, {}, json.dumps(ok_body(question, server.reply)).encode()
                elif kind == "status":
                    code, headers = action[1], action[2] if len(action) > 2 else {}
                    payload = json.dumps({"error": {"message": f"scripted {code}", "type": "test"}}).encode()
                else:  # raw
                    code, headers, payload = action[1], {}, action[2]
                self.done()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout) and closed the connection

            def handle(self):
                try:
                    super().handle()
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def times(self, question=None):
        return [r["t"] for r in self.requests if question is None or r["question"] == question]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _retry_logs(caplog):
    """Retries log at debug level (shown by --verbose); these tests read them."""
    caplog.set_level(logging.DEBUG, logger="policies.cloud")


@pytest.fixture
def serve():
    servers = []

    def start(script=None) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def client(server, **kw) -> OpenAICloud:
    opts = dict(
        api_key_env=KEY_ENV,
        timeout_s=2.0,
        max_retries=4,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        concurrency=4,
        max_new_tokens=32,
    )
    opts.update(kw)
    return OpenAICloud(server.base_url, MODEL, **opts)


def probs(*questions) -> list[Problem]:
    return [Problem(f"u{i}", q, "0") for i, q in enumerate(questions)]


def assert_no_secret(tmp_path, caplog):
    assert SECRET not in caplog.text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key written to {f}"


def test_success_usage_and_key_sent_only_as_header(serve, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = serve()
    cloud = CachedCloud(client(server), str(tmp_path / "c.sqlite"))
    replies = cloud.answer_many(probs("a?", "bb?", "a?"))  # the duplicate is asked once
    assert len(server.requests) == 2
    assert [r.cached for r in replies] == [False, False, True]
    assert replies[0].text == ok_body("a?")["choices"][0]["message"]["content"]
    assert (replies[0].prompt_tokens, replies[0].completion_tokens) == (12, 7)
    u = cloud.usage()
    assert (u["calls"], u["cache_hits"], u["prompt_tokens"], u["completion_tokens"], u["retries"]) == (2, 1, 25, 14, 0)
    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)
    body = server.requests[0]["body"]
    assert body["model"] == MODEL and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["messages"][0]["role"] == "system"
    assert len(cloud) == 2
    cloud.close()
    assert_no_secret(tmp_path, caplog)


def test_429_retry_after_is_honoured(serve, tmp_path, caplog):
    server = serve({None: [("status", 429, {"Retry-After": "0.25"})]})
    backend = client(server)
    cloud = CachedCloud(backend, str(tmp_path / "c.sqlite"))
    assert "boxed" in cloud.answer(probs("q?")[0]).text
    t = server.times()
    assert len(t) == 2 and backend.retries == 1
    assert t[1] - t[0] >= 0.24  # the backoff alone would be ~0.01 s
    assert "HTTP 429" in caplog.text and "Retry-After" in caplog.text
    assert_no_secret(tmp_path, caplog)


def test_500s_then_success_exactly_three_requests(serve, tmp_path):
    server = serve({None: [("status", 500), ("status", 502)]})
    backend = client(server)
    cloud = CachedCloud(backend, str(tmp_path / "c.sqlite"))
    assert "boxed" in cloud.answer(probs("q?")[0]).text
    assert len(server.requests) == 3 and backend.retries == 2 and cloud.usage()["calls"] == 1
    gaps = [b - a for a, b in zip(server.times(), server.times()[1:])]
    assert all(g < 1.0 for g in gaps)  # tiny exponential backoff


def test_hang_past_timeout_is_retried(serve, tmp_path, caplog):
    server = serve({None: [("hang", 1.5)]})
    backend = client(server, timeout_s=0.3)
    cloud = CachedCloud(backend, str(tmp_path / "c.sqlite"))
    t0 = time.monotonic()
    assert "boxed" in cloud.answer(probs("q?")[0]).text
    t = server.times()
    assert len(t) == 2 and backend.retries == 1
    assert 0.29 <= t[1] - t[0] < 1.4  # retried when the timeout fired, not when the server woke up
    assert time.monotonic() - t0 < 1.4
    assert "no reply within cloud.timeout_s=0.3s" in caplog.text


def test_malformed_json_and_missing_choices_are_retried(serve, tmp_path, caplog):
    server = serve(
        {None: [("raw", 200, b'{"choices": [{"message": '), ("raw", 200, b'{"choices": []}'), ("raw", 200, b"<html>")]}
    )
    backend = client(server)
    cloud = CachedCloud(backend, str(tmp_path / "c.sqlite"))
    assert "boxed" in cloud.answer(probs("q?")[0]).text
    assert len(server.requests) == 4 and backend.retries == 3
    assert "malformed JSON" in caplog.text and "no choices[0].message.content" in caplog.text


def test_connection_reset_is_retried(serve, tmp_path, caplog):
    server = serve({None: [("reset",), ("reset",)]})
    backend = client(server)
    cloud = CachedCloud(backend, str(tmp_path / "c.sqlite"))
    assert "boxed" in cloud.answer(probs("q?")[0]).text
    assert len(server.requests) == 3 and backend.retries == 2
    assert "connection error" in caplog.text


def test_connection_refused_exhausts_retries(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    backend = OpenAICloud(f"http://127.0.0.1:{port}/v1", MODEL, api_key_env=KEY_ENV, max_retries=2, backoff_base_s=0.01)
    with pytest.raises(CloudError, match=r"failed after 3 attempts.*connection error"):
        CachedCloud(backend, str(tmp_path / "c.sqlite")).answer(probs("q?")[0])
    assert backend.requests == 3


def test_a_refused_connection_gives_up_sooner_than_a_429(serve, tmp_path):
    """Nothing listening: 1 + REFUSED_RETRIES attempts however many retries are allowed; a 429 uses them all."""
    from policies.cloud import REFUSED_RETRIES

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    down = OpenAICloud(f"http://127.0.0.1:{port}/v1", MODEL, api_key_env=KEY_ENV, max_retries=8, backoff_base_s=0.01)
    with pytest.raises(CloudError, match=rf"failed after {1 + REFUSED_RETRIES} attempts.*connection error"):
        CachedCloud(down, str(tmp_path / "a.sqlite")).answer(probs("q?")[0])
    assert down.requests == 1 + REFUSED_RETRIES
    busy = client(serve({None: [("status", 429)] * 20}), max_retries=8)
    with pytest.raises(CloudError, match="failed after 9 attempts"):
        CachedCloud(busy, str(tmp_path / "b.sqlite")).answer(probs("q?")[0])
    assert busy.requests == 9


def test_the_deadline_bounds_a_request_with_its_retries(serve, tmp_path):
    server = serve({None: [("status", 503, {"Retry-After": "0.4"})] * 20})
    backend = client(server, max_retries=20, deadline_s=1.0)
    t = time.monotonic()
    with pytest.raises(CloudError, match=r"next retry would pass cloud.deadline_s=1s"):
        CachedCloud(backend, str(tmp_path / "c.sqlite")).answer(probs("q?")[0])
    assert time.monotonic() - t < 1.0 and 2 <= len(server.requests) <= 3  # 0.4 s waits: it stops before 1 s


def test_401_fails_at_once_with_a_clear_message_and_no_key(serve, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = serve({None: [("status", 401)] * 10})
    backend = client(server)
    cloud = CachedCloud(backend, str(tmp_path / "c.sqlite"))
    with pytest.raises(CloudError) as e:
        cloud.answer(probs("q?")[0])
    msg = str(e.value)
    assert len(server.requests) == 1 and backend.retries == 0
    assert "401" in msg and f"${KEY_ENV}" in msg and server.base_url in msg and SECRET not in msg
    assert len(cloud) == 0
    assert_no_secret(tmp_path, caplog)


@pytest.mark.parametrize("code,hint", [(400, "cloud.model"), (404, "cloud.base_url"), (403, "no access")])
def test_other_client_errors_are_not_retried(serve, tmp_path, code, hint):
    server = serve({None: [("status", code)] * 10})
    with pytest.raises(CloudError, match=f"HTTP {code}") as e:
        CachedCloud(client(server), str(tmp_path / "c.sqlite")).answer(probs("q?")[0])
    assert len(server.requests) == 1 and hint in str(e.value)


def test_exhausted_retries_name_attempts_and_last_cause(serve, tmp_path):
    server = serve({None: [("status", 503)] * 10})
    with pytest.raises(CloudError, match=r"failed after 3 attempts \(cloud.max_retries=2\); last cause: HTTP 503"):
        CachedCloud(client(server, max_retries=2), str(tmp_path / "c.sqlite")).answer(probs("q?")[0])
    assert len(server.requests) == 3


def test_answers_received_before_a_permanent_failure_are_kept(serve, tmp_path, caplog):
    path = str(tmp_path / "c.sqlite")
    questions = ["q0?", "q1?", "q2?", "bad?", "q4?"]
    server = serve({"bad?": [("delay_then", 0.3, ("status", 400))]})
    cloud = CachedCloud(client(server, concurrency=4), path)
    with pytest.raises(CloudError, match="HTTP 400"):
        cloud.answer_many(probs(*questions))
    asked = sorted(r["question"] for r in server.requests)
    assert asked == sorted(questions)  # q4 was sent when a slot freed, before "bad?" failed
    with sqlite3.connect(path) as db:  # committed, as another process sees them
        stored = {row[0] for row in db.execute("SELECT uid FROM answers")}
    assert stored == {"u0", "u1", "u2", "u4"}
    # a new process on the same file (the server now answers "bad?") pays only for "bad?"
    again = CachedCloud(client(server), path)
    texts = [r.text for r in again.answer_many(probs(*questions))]
    assert len(server.requests) == 6 and server.requests[-1]["question"] == "bad?"
    assert again.usage()["calls"] == 1 and again.usage()["cache_hits"] == 4
    assert all("boxed" in t for t in texts) and len(again) == 5
    assert_no_secret(tmp_path, caplog)


def test_a_permanent_failure_drops_requests_not_yet_sent(serve, tmp_path):
    server = serve({"q1?": [("status", 401)]})
    cloud = CachedCloud(client(server, concurrency=1), str(tmp_path / "c.sqlite"))
    with pytest.raises(CloudError, match="401"):
        cloud.answer_many(probs("q0?", "q1?", "q2?", "q3?"))
    assert [r["question"] for r in server.requests] == ["q0?", "q1?"]
    assert len(cloud) == 1


def test_concurrency_is_bounded(serve, tmp_path):
    server = serve({None: [("delay", 0.15)] * 6})
    cloud = CachedCloud(client(server, concurrency=2), str(tmp_path / "c.sqlite"))
    cloud.answer_many(probs(*[f"q{i}?" for i in range(6)]))
    assert len(server.requests) == 6 and server.max_in_flight == 2


def test_make_cloud_from_config_and_key_is_base_url_independent(serve, tmp_path, caplog):
    from settings import load_config, to_dict

    server = serve()
    cfg = load_config(
        None,
        [
            "cloud.backend=openai",
            f"cloud.base_url={server.base_url}",
            f"cloud.model={MODEL}",
            f"cloud.api_key_env={KEY_ENV}",
            "cloud.backoff_base_s=0.01",
        ],
    )
    assert SECRET not in json.dumps(to_dict(cfg))
    cloud = make_cloud(cfg.cloud, str(tmp_path / "cloud_cache.sqlite"))
    assert isinstance(cloud.backend, OpenAICloud)
    p = probs("q?")[0]
    other = OpenAICloud("http://10.0.0.1:9/v1", MODEL, api_key_env=KEY_ENV, max_new_tokens=cfg.cloud.max_new_tokens)
    assert cloud.backend.cache_key(p) == other.cache_key(p)
    hotter = OpenAICloud(
        server.base_url, MODEL, api_key_env=KEY_ENV, temperature=0.7, max_new_tokens=cfg.cloud.max_new_tokens
    )
    assert cloud.backend.cache_key(p) != hotter.cache_key(p)
    assert SECRET not in repr(cloud.backend)
    cloud.answer(p)
    assert_no_secret(tmp_path, caplog)


def test_placeholder_key_when_env_var_unset(serve, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.delenv(KEY_ENV)
    server = serve()
    CachedCloud(client(server), None).answer(probs("q?")[0])
    assert server.requests[0]["auth"] == "Bearer EMPTY"
    assert f"${KEY_ENV} is not set" in caplog.text


def test_parse_retry_after():
    import email.utils

    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after(later) <= 31


def test_a_refused_connection_says_to_start_the_server_not_to_raise_the_retries(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    backend = OpenAICloud(f"http://127.0.0.1:{port}/v1", MODEL, api_key_env=KEY_ENV, max_retries=2, backoff_base_s=0.01)
    with pytest.raises(CloudError) as e:
        CachedCloud(backend, str(tmp_path / "c.sqlite")).answer(probs("q?")[0])
    assert "Nothing is listening at" in str(e.value) and "cloud.base_url" in str(e.value)
    assert "raise cloud.max_retries" not in str(e.value)
