"""A device model behind an OpenAI-compatible completions server (vLLM, llama.cpp, TGI), with ``HFGenerator``'s
``extend``: serve.py is then a thin routing proxy in front of it.

    python serve.py --model outputs/cpu_default/final --device-url http://127.0.0.1:8080/v1 --device-model final
    gen = RemoteGenerator("http://127.0.0.1:8080/v1", "final", tokenizer)

``--model`` still names the checkpoint: its tokenizer writes the training prompt (chat template included) and its
run's config.json gives the template and mode.  Each context is sent as a raw prompt to ``/completions`` (so the
device reads exactly the training prompt, and a query-mode context goes on after ``<response>...</response>``), all
rows at once over a pool of connections (the server batches them).  A row stops at ``stop`` (``</query>``; vLLM's
``include_stop_str_in_output`` keeps it, ``stop_reason`` says so otherwise), at the server's end of sequence, or at its
token budget.  The reply's text is re-tokenised here, so token counts are the server's when it reports them.  The
key, when the server wants one, is read from ``$CLOUDROUTE_DEVICE_API_KEY`` and never logged.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx

from policies.generation import Continuation


class RemoteGenerator:
    """``extend(contexts, max_new_tokens, temperature, top_p, stop)`` over HTTP; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer,
        timeout_s: float = 300.0,
        concurrency: int = 32,
        api_key_env: str = "CLOUDROUTE_DEVICE_API_KEY",
    ):
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.tokenizer, self.concurrency = model, tokenizer, max(1, int(concurrency))
        key = os.environ.get(api_key_env, "") or "EMPTY"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency),
            headers={"Authorization": f"Bearer {key}"},
        )

    def _one(self, context, budget: int, temperature: float, top_p: float, stop: str | None, logit_bias: dict):
        if budget <= 0:
            return Continuation([], "length")
        body = {
            "model": self.model,
            "prompt": self.tokenizer.decode(context, skip_special_tokens=False),
            "max_tokens": budget,
            "temperature": temperature,
            "top_p": top_p,
        }
        if stop:
            body.update(stop=[stop], include_stop_str_in_output=True)
        if logit_bias:
            body["logit_bias"] = {str(k): v for k, v in logit_bias.items()}
        r = self._client.post(self.url, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"device server {self.url} answered HTTP {r.status_code}: {r.text[:300]}")
        data = r.json()
        choice = data["choices"][0]
        text = choice.get("text") or ""
        reason = "length" if choice.get("finish_reason") == "length" else "eos"
        if stop and (stop in text or choice.get("stop_reason") == stop):
            text = text.split(stop, 1)[0] + stop
            reason = "stop"
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Continuation(ids, reason)

    def extend(self, contexts, max_new_tokens, temperature=1.0, top_p=1.0, stop=None, logits_processor=None):
        logit_bias = {}
        for p in logits_processor or []:  # a token ban (serving/policy.py: BanTokens) travels as logit_bias
            if not hasattr(p, "logit_bias"):
                raise ValueError("a remote device model takes no logits_processor, only token bans (logit_bias)")
            logit_bias.update(p.logit_bias)
        budgets = [max_new_tokens] * len(contexts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if not contexts:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(contexts))) as pool:
            return list(
                pool.map(
                    lambda cb: self._one(cb[0], cb[1], temperature, top_p, stop, logit_bias), zip(contexts, budgets)
                )
            )

    def close(self):
        self._client.close()
