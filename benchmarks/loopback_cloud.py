"""A stand-in cloud for fault benchmarks: an OpenAI-compatible ``/v1/chat/completions`` server on loopback, in its own
process, so a benchmark can SIGKILL it, start it again, or freeze it with SIGSTOP.

    python -m benchmarks.loopback_cloud --port 8600 --delay-s 0.05      # prints "ready <url>" once it listens

It answers every question with the calculator's value of its arithmetic (policies/calculator.py) as ``\\boxed{}``,
after ``--delay-s`` (a cloud's latency), with token counts in ``usage``.  Standard library only (threads, one per
connection); ``LoopbackCloud`` starts, kills, freezes and restarts it from a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply_body(question: str, model: str) -> dict:
    from policies.calculator import answer_query

    value = answer_query(question) or "0"
    text = f"Computing it exactly: \\boxed{{{value}}}"
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": len(question.split()), "completion_tokens": 6, "total_tokens": 6},
    }


def serve(port: int, delay_s: float, model: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            content = (body.get("messages") or [{}])[-1].get("content") or ""
            time.sleep(delay_s)
            payload = json.dumps(reply_body(content, body.get("model") or model)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda *a: None  # a client that gave up (its timeout) closed the connection: not news
    print(f"ready http://127.0.0.1:{port}/v1", flush=True)
    httpd.serve_forever(poll_interval=0.05)


class LoopbackCloud:
    """The server above as a child process on a fixed port: ``start``, ``kill`` (SIGKILL), ``freeze`` (SIGSTOP),
    ``thaw`` (SIGCONT), ``close``."""

    def __init__(self, delay_s: float = 0.05, port: int = 0):
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port, self.delay_s, self.proc = port, delay_s, None
        self.url = f"http://127.0.0.1:{port}/v1"

    def start(self, timeout_s: float = 30.0) -> LoopbackCloud:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.loopback_cloud",
            "--port",
            str(self.port),
            "--delay-s",
            str(self.delay_s),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + timeout_s
        line = self.proc.stdout.readline()  # "ready ..." once it listens
        if not line.startswith("ready") or time.monotonic() > deadline:
            self.close()
            raise RuntimeError(f"the loopback cloud did not start on port {self.port}: {line!r}")
        return self

    def signal(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> LoopbackCloud:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    ap.add_argument("--delay-s", type=float, default=0.05, help="seconds before each answer")
    ap.add_argument("--model", default="loopback", help="the model name it reports")
    args = ap.parse_args(argv)
    serve(args.port, args.delay_s, args.model)


if __name__ == "__main__":
    main()
