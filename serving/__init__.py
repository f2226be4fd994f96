"""Serving a trained policy: the device answers, the cloud helps within a live budget (docs/serving.md).

    python serve.py --model outputs/cpu_default/final            # an OpenAI-compatible server on :8000
    from serving.policy import CollaborativePolicy                 # the same path from Python

Modules: ``policy`` (the Python API, the one path every request takes), ``budget`` (the sliding-window budget),
``batcher`` (dynamic batching of concurrent requests), ``app`` (the FastAPI app and its OpenAI schema), ``metrics``
(Prometheus), ``remote`` (a device model behind an OpenAI-compatible completions server).
"""
