"""Streaming the device's work as it is generated: ``reasoning_content`` deltas, then the answer as ``content``.

    curl -sN localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "cpu_default", "stream": true, "messages": [{"role": "user", "content": "What is 37 * 46?"}]}'

A streamed request (``stream: true``) gets its chunks while the device writes: each device token, as soon as it is
sampled (``HFGenerator.extend``'s ``on_token``), goes out as a ``delta.reasoning_content`` piece, the field vLLM's
reasoning parsers and DeepSeek's API use for a model's thinking, which clients such as the ``openai`` package pass
through (``chunk.choices[0].delta.reasoning_content``).  The device's work is its first response as it wrote it: in
query mode with its ``<query>`` and the cloud's ``<response>`` inserted; when it escalates, its ``<unknown>`` tag.
Once the reply is settled (the device's answer, the cloud's, or the device's own with the escalation suppressed),
it goes out as ``delta.content`` pieces: the ``content`` pieces joined are exactly the ``message.content`` of the
same request without streaming.

``DeviceStream`` turns the growing token list of one request into text deltas (re-decoding the whole list, so a
character split over tokens goes out whole, once complete); ``StreamingGenerator`` wraps the device generator for
one batch of ``Draft`` rows and routes each sampled token to its row's stream.
"""

from __future__ import annotations

import inspect
import threading

INCOMPLETE = "\ufffd"  # what a tokenizer decodes a partial UTF-8 character to: wait for the next token


class DeviceStream:
    """The device's text of one request as deltas: ``update(ids)`` with the response's tokens so far calls
    ``emit(delta)`` with the text they add (from the generator's thread: ``emit`` must be thread-safe)."""

    def __init__(self, tokenizer, emit):
        self.tokenizer, self.emit = tokenizer, emit
        self.shown = ""
        self._lock = threading.Lock()

    def update(self, ids: list[int]) -> None:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        with self._lock:
            if text.endswith(INCOMPLETE) or not text.startswith(self.shown):
                return  # a partial character (or a re-tokenisation that changed the past): wait for more
            delta, self.shown = text[len(self.shown) :], text
        if delta:
            self.emit(delta)


def takes_on_token(generator) -> bool:
    """Does ``generator.extend`` stream its tokens (an ``on_token`` argument)?"""
    try:
        return "on_token" in inspect.signature(generator.extend).parameters
    except (TypeError, ValueError):
        return False


class StreamingGenerator:
    """``generator`` for one group of ``Draft`` rows whose requests may carry a ``DeviceStream``: each ``extend``
    call (envs/query.py's ``run_query_turns`` continues the rows not done yet, in order) routes its tokens to the
    streams of those rows."""

    def __init__(self, generator, rows):
        self.generator, self.rows = generator, rows

    def extend(self, contexts, *args, **kwargs):
        active = [r for r in self.rows if not r.done]
        if len(active) != len(contexts) or any(
            len(c) != len(r.prompt_ids) + len(r.ids) for c, r in zip(contexts, active)
        ):
            return self.generator.extend(contexts, *args, **kwargs)  # not the rows we know: no streaming
        streams = [getattr(r.request, "stream", None) for r in active]
        pending: list[list[int]] = [[] for _ in contexts]

        def on_token(i: int, token: int) -> None:
            if streams[i] is not None:
                pending[i].append(token)
                streams[i].update(active[i].ids + pending[i])

        return self.generator.extend(contexts, *args, on_token=on_token, **kwargs)
