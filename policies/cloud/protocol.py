"""What a cloud backend returns and raises: ``CloudReply`` (the text and its token counts) and ``CloudError``.

reply = backend.answer_many([problem])[0]   # CloudReply(text=..., prompt_tokens=.., completion_tokens=..)
"""

from __future__ import annotations

from dataclasses import dataclass


class CloudError(RuntimeError):
    """A cloud request that cannot succeed (bad key, wrong URL or model, retries exhausted)."""


class CloudConfigError(CloudError):
    """The cloud refuses every request until the configuration is fixed: HTTP 401/403/404 (the key, its access to the
    model, the URL or the model name).  Training stops on it, where a failure of single requests is only counted."""


@dataclass
class CloudReply:
    text: str
    prompt_tokens: int = 0  # prompt tokens the cloud read (cost accounting)
    completion_tokens: int = 0  # completion tokens the cloud produced (cost accounting)
    cached: bool = False  # served from the cache (disk, or asked before in this process)
