"""The OpenAI-compatible HTTP server (FastAPI): ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics``.

    app = create_app(CollaborativePolicy.load("outputs/cpu_default/final"), ServeOptions(max_batch=32))
    uvicorn.run(app, port=8000)                      # serve.py does this

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    r = client.chat.completions.create(model="cpu_default", messages=[{"role": "user", "content": "What is 3 + 4?"}])
    r.choices[0].message.content, r.model_extra["cloudroute"]["answered_by"]

Each request: the last user message is the question (the training prompt replaces any system message or earlier
turns: the device answers in the form it was trained on); it joins the dynamic batch of the device model
(serving/batcher.py), then ``CollaborativePolicy.finish`` asks the cloud when the device escalated and the budget
allows, outside the device's batch.  The reply is OpenAI's ``chat.completion`` with two additions: the field
``cloudroute`` (``answered_by``: device, cloud, device-over-budget or device-cloud-error; the extracted ``answer``,
cloud calls, queries, calls refused for the budget, the cloud error, the request's place in the budget's order) and
the header ``X-Cloudroute-Answered-By``; ``usage`` holds the device's and the cloud's tokens apart
(``device_prompt_tokens``, ``device_completion_tokens``, ``cloud_prompt_tokens``, ``cloud_completion_tokens``) and
their sums in OpenAI's fields.

``stream: true`` answers in server-sent events in OpenAI's ``chat.completion.chunk`` format, ending with
``data: [DONE]`` (with ``stream_options.include_usage``, a last chunk carries ``usage``): the device's tokens as
``delta.reasoning_content`` as it writes them, then the reply (the device's or the cloud's) as ``delta.content``
(serving/streaming.py).  Only the end of the device's response says whether it is the answer or an escalation, so
who answered comes in the last chunk's ``cloudroute``, not in a header; an error once the stream has started comes
as an ``error`` event (the ``openai`` client raises it).

Auth: with ``ServeOptions.api_key_env`` naming a set environment variable, ``/v1/*`` needs ``Authorization: Bearer
<that key>`` (``/health`` and ``/metrics`` stay open); the key is never logged.  Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed request (the message names the field and
the fix), 401 for a missing or wrong key, 404 for an unknown model, 400 ``context_length_exceeded`` for a question
longer than the device's context less the generation's room (before it joins a batch), 500 if the device model fails
on this request alone (a failing batch is split until the request that fails is found: its batch-mates are answered).
A 500 carries no exception text, only a request id (``X-Request-Id``) under which the server's log has the details.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.batcher import Batcher
from serving.metrics import ServerMetrics
from serving.policy import Answer, CollaborativePolicy, PromptTooLong
from serving.streaming import DeviceStream

log = logging.getLogger(__name__)

ANSWERED_BY_HEADER = "X-Cloudroute-Answered-By"
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass
class ServeOptions:
    """The server's own options (serve.py's flags)."""

    api_key_env: str | None = None  # environment variable holding the bearer key; unset/empty variable = no auth
    max_batch: int = 32  # requests per device batch
    batch_wait_ms: float = 10.0  # how long a batch waits for more requests after its first
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None, headers=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = dict(headers or {})


def internal_error_message(request_id: str) -> str:
    """The 500's message: no exception text (it can hold allocator or library internals), the request id to find
    the details in the server's log."""
    return (
        f"the server failed to answer this request (request id {request_id}); its log has the details under that id. "
        "Other requests are not affected: retry, or report the id"
    )


def error_response(status: int, message: str, type_: str, param=None, code=None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# --------------------------------------------------------------------------- the OpenAI request schema


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completions request that the server uses; other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None


# OpenAI options this server cannot honour: a request that sets one gets a 400 naming it, not silence
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
)


def unsupported_options(body: ChatRequest) -> list[str]:
    """The options of ``UNSUPPORTED`` that ``body`` sets to something other than their default (unset, null,
    false, 0, empty, ``response_format`` of type text)."""
    extra = body.model_extra or {}
    out = []
    for name in UNSUPPORTED:
        v = extra.get(name)
        if v in (None, False, 0, [], {}, "none") or (name == "response_format" and v == {"type": "text"}):
            continue
        out.append(name)
    return out


def stops_of(body: ChatRequest) -> list[str]:
    """``stop`` as a list (at most 4 non-empty strings, as OpenAI allows)."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or not all(stops):
        raise ApiError(400, "stop: give at most 4 non-empty strings", param="stop")
    return stops


def parse_chat_request(raw: bytes) -> ChatRequest:
    """The request body as a ``ChatRequest``; its JSON or schema errors as FastAPI's (answered as a 400)."""
    try:
        return ChatRequest.model_validate_json(raw or b"")
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def question_of(messages: list[ChatMessage]) -> str:
    """The text of the last user message (a string, or the text parts of a content list)."""
    user = [m for m in messages if m.role == "user"]
    if not user:
        raise ApiError(
            400, "messages has no user message: send the question as {'role': 'user', 'content': ...}", param="messages"
        )
    content = user[-1].content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(t, str) for t in parts):
            raise ApiError(
                400,
                "the last user message has a content part that is not text: this server answers text questions only "
                "(send content as a string or as [{'type': 'text', 'text': ...}])",
                param="messages",
            )
        content = "\n".join(parts)
    if not isinstance(content, str) or not content.strip():
        raise ApiError(400, "the last user message is empty: put the question in its content", param="messages")
    return content


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line from pydantic's errors, and the field it names."""
    errs = exc.errors()
    if not errs:
        return "the request is malformed", None
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    where = ".".join(loc) or "body"
    if e.get("type") == "json_invalid":
        return (
            f"the request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))}): send a JSON object "
            "with model and messages",
            None,
        )
    if e.get("type") == "missing":
        return f"{where} is missing: a chat completion request needs model and messages", where
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return f"{where}: {e.get('msg')}{more}", where


# --------------------------------------------------------------------------- responses


def usage_of(a: Answer) -> dict:
    prompt = a.device_prompt_tokens + a.cloud_prompt_tokens
    completion = a.device_completion_tokens + a.cloud_completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "device_prompt_tokens": a.device_prompt_tokens,
        "device_completion_tokens": a.device_completion_tokens,
        "cloud_prompt_tokens": a.cloud_prompt_tokens,
        "cloud_completion_tokens": a.cloud_completion_tokens,
    }


def public_cloud_error(a: Answer) -> str | None:
    """What a client learns of a cloud failure: that it happened, not the backend's message (its URL, its
    internals); the server's log has the message, under the request id."""
    if a.cloud_error is None:
        return None
    what = {
        "timeout": "the cloud did not answer within the serving deadline (--cloud-timeout)",
        "busy": "too many questions were already waiting for the cloud",
    }.get(a.cloud_error_kind or "", "the cloud could not answer")
    return f"{what}; the device answered instead (the server's log has the cause)"


def extra_of(a: Answer, mode: str) -> dict:
    return {
        "answered_by": a.answered_by,
        "answer": a.answer,
        "mode": mode,
        "escalated": a.escalated,
        "cloud_calls": a.cloud_calls,
        "queries": a.queries,
        "refused_calls": a.refused_calls,
        "cloud_error": public_cloud_error(a),
        "device_text": a.device_text,
        "request_index": a.request_index,
        "escalation_suppressed": a.escalation_suppressed,
    }


def completion_body(a: Answer, model: str, mode: str, cid: str, created: int) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": a.finish_reason}
        ],
        "usage": usage_of(a),
        "cloudroute": extra_of(a, mode),
    }


_PIECES = re.compile(r"\s*\S+|\s+")


def sse_chunk(cid: str, created: int, model: str, delta: dict, finish=None, **extra) -> str:
    """One ``chat.completion.chunk`` as a server-sent event line."""
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


def stream_chunks(a: Answer, model: str, mode: str, cid: str, created: int, include_usage: bool):
    """The SSE lines that end a streamed answer: its text as ``content`` piece by piece, the finish (with
    ``cloudroute``: who answered), usage, ``[DONE]``."""
    for piece in _PIECES.findall(a.text):
        yield sse_chunk(cid, created, model, {"content": piece})
    yield sse_chunk(cid, created, model, {}, a.finish_reason, cloudroute=extra_of(a, mode))
    if include_usage:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage_of(a),
        }
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------- the app


def create_app(policy: CollaborativePolicy, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app serving ``policy`` (see the module docstring).  The device batcher starts with the app's
    lifespan and stops with it."""
    opts = options or ServeOptions()
    metrics = ServerMetrics(policy.budget)
    state = {}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(
            policy.draft_many, opts.max_batch, opts.batch_wait_ms, on_batch=metrics.batch_size.observe
        )
        try:
            yield
        finally:
            state.pop("batcher").close()

    app = FastAPI(title="cloudroute", description=__doc__, lifespan=lifespan)
    app.state.policy, app.state.metrics, app.state.options = policy, metrics, opts

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        metrics.error(exc.status)
        headers = {**exc.headers, **({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})}
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug: the client gets no exception text, the log gets it all
        rid = f"err-{uuid.uuid4().hex}"
        log.error("request %s to %s failed", rid, request.url.path, exc_info=exc)
        metrics.error(500)
        return error_response(500, internal_error_message(rid), "server_error", headers={REQUEST_ID_HEADER: rid})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        metrics.error(400)
        message, param = validation_message(exc)
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        metrics.error(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = (
                f"{request.url.path} is not served here: use /v1/chat/completions, /v1/models, /health or /metrics"
            )
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path} is not allowed: /v1/chat/completions takes POST"
        return error_response(exc.status_code, message, "invalid_request_error")

    def check_auth(request: Request) -> None:
        if not opts.api_key_env:
            return
        key = os.environ.get(opts.api_key_env, "")
        if not key:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key the server "
                f"reads from ${opts.api_key_env}",
                code="invalid_api_key",
            )

    @app.get("/health")
    async def health():
        cloud = policy.cloud_state()
        return {"status": "ok" if cloud["state"] == "ready" else "degraded", **policy.info(), "cloud_state": cloud}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {
            "object": "list",
            "data": [{"id": policy.name, "object": "model", "created": 0, "owned_by": "cloudroute"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        # auth first, on the event loop (no thread to wait for), before the body is even read: without the key, a
        # client learns nothing about its request
        check_auth(request)
        body = parse_chat_request(await request.body())
        if body.model != policy.name:
            raise ApiError(
                404,
                f"model {body.model!r} is not served here; this server serves {policy.name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        bad = unsupported_options(body)
        if bad:
            raise ApiError(
                400,
                f"{', '.join(bad)}: not supported by this server (it answers math questions with text; no tools, "
                "structured output, log-probabilities or penalties); leave them out",
                param=bad[0],
                code="unsupported_parameter",
            )
        stops = stops_of(body)
        if (body.n or 1) != 1:
            raise ApiError(400, f"n={body.n}: this server returns one choice per request; send n=1", param="n")
        question = question_of(body.messages)
        max_new = body.max_completion_tokens or body.max_tokens or policy.max_new_tokens
        if max_new > opts.max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens={max_new} is over this server's limit of {opts.max_tokens_limit}: ask for fewer tokens "
                "(or start serve.py with a larger --max-tokens-limit)",
                param="max_tokens",
            )
        temperature = 0.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        try:  # tokenising a long question takes a while: off the event loop
            req = await run_in_threadpool(policy.request, question, max_new, temperature, top_p)
        except PromptTooLong as e:
            raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                stream_events(req, stops, cid, created, include_usage, t0),
                media_type="text/event-stream",
                headers={REQUEST_ID_HEADER: cid},
            )
        answer = await answer_request(req, stops, cid, t0)
        headers = {ANSWERED_BY_HEADER: answer.answered_by, REQUEST_ID_HEADER: cid}
        return JSONResponse(completion_body(answer, policy.name, policy.mode, cid, created), headers=headers)

    async def answer_request(req, stops: list[str], cid: str, t0: float) -> Answer:
        """The device's draft (batched), the cloud when it escalates (at most the serving deadline), the second
        pass when the cloud did not answer; ``stop`` applied; counted in the metrics.  Closes ``req``."""
        try:
            try:
                draft = await asyncio.wrap_future(state["batcher"].submit(req))
            except Exception:  # noqa: BLE001 -- the device model failed on this request alone (the batcher bisects)
                log.exception("request %s: the device model failed", cid)
                raise ApiError(
                    500, internal_error_message(cid), "server_error", headers={REQUEST_ID_HEADER: cid}
                ) from None
            answer = policy.settle(draft)
            if answer.awaiting_cloud:  # on the cloud's own threads; this request waits at most the deadline
                future = policy.ask_cloud(answer)
                waiter = asyncio.wrap_future(future)  # its outcome, past the deadline, is resolve's to read
                waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
                await asyncio.wait({waiter}, timeout=policy.cloud.timeout_s)
                policy.resolve(answer, future)
            if answer.needs_own_answer:  # the second, greedy pass: the device answers with the escalation banned
                try:
                    again = await asyncio.wrap_future(state["batcher"].submit(policy.suppressed(req)))
                except Exception:  # noqa: BLE001 -- the first response, less its tag, is still an answer
                    log.exception("request %s: the device's second pass failed", cid)
                    again = None
                policy.apply_suppressed(answer, again)
        finally:
            policy.close(req)
        policy.cut_at_stop(answer, stops)
        if answer.cloud_error is not None:
            log.warning("request %s: the cloud failed, the device answered: %s", cid, answer.cloud_error)
        metrics.observe(answer, time.perf_counter() - t0)
        return answer

    async def stream_events(req, stops, cid: str, created: int, include_usage: bool, t0: float):
        """The SSE lines of a streamed request (serving/streaming.py): the device's tokens as ``reasoning_content``
        while it writes, then the reply as ``content``.  An error after the first line is an ``error`` event."""
        loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
        req.stream = DeviceStream(policy.tokenizer, lambda d: loop.call_soon_threadsafe(pieces.put_nowait, d))
        task = asyncio.ensure_future(answer_request(req, stops, cid, t0))
        task.add_done_callback(lambda _: pieces.put_nowait(None))  # after every piece the device thread queued
        try:
            yield sse_chunk(cid, created, policy.name, {"role": "assistant", "content": ""})
            while (piece := await pieces.get()) is not None:
                yield sse_chunk(cid, created, policy.name, {"reasoning_content": piece})
            try:
                answer = task.result()
            except ApiError as e:
                body = {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}
                yield f"data: {json.dumps(body)}\n\n"
                return
            for line in stream_chunks(answer, policy.name, policy.mode, cid, created, include_usage):
                yield line
        finally:
            if not task.done():  # the client left: a request not yet in a batch is dropped from it
                task.cancel()

    return app


class BackgroundServer:
    """uvicorn serving ``app`` in a background thread (a notebook, the tests, benchmarks/bench_serve.py):

    with BackgroundServer(create_app(policy)) as server:      # port 0: a free port
        OpenAI(base_url=server.url + "/v1", api_key="unused")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see its log above)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()
