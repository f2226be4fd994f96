"""Serve a trained policy behind an OpenAI-compatible API: the device answers, the cloud helps within a live budget.

    python serve.py --model outputs/cpu_default/final                      # http://127.0.0.1:8000/v1
    python serve.py --model outputs/cpu_query/final --budget 0.5 --port 8001
    CLOUDROUTE_API_KEY=secret python serve.py --model outputs/cpu_default/final   # bearer auth on /v1/*
    python serve.py --model outputs/cpu_default/final --device-url http://127.0.0.1:8080/v1   # device on a vLLM server
    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "cpu_default", "messages": [{"role": "user", "content": "What is 37 * 46?"}]}'

This file is the command: its options and the checks that refuse a bad one (exit 2).  The server is serving/app.py
(FastAPI + uvicorn); every request goes through serving/policy.py's ``CollaborativePolicy``, the same class a notebook
uses (docs/serving.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from core.config import stray_arguments_error
from serving import app as serving_app

HELP = f"{__doc__}\n{serving_app.__doc__}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default=None,
        help="the trained checkpoint (a run's final/ or checkpoints/step-N/), or any model dir / hub id / package:...; "
        "its run's config.json (beside final/) gives the training template, task and mode",
    )
    ap.add_argument(
        "--config",
        default=None,
        help="training YAML to take the template, mode and cloud from instead of the run's config.json; "
        "section.key=value overrides may follow the options (e.g. cloud.accuracy=0.9)",
    )
    ap.add_argument("--cloud", default=None, help="cloud backend (sets cloud.backend): simulated, hf, openai")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="live cloud budget over the last --budget-window requests: route mode, the share of requests that may "
        "reach the cloud (in [0, 1]); query mode, cloud calls per request (>= 0). Default: the run's rl.budget; "
        "-1: no budget",
    )
    ap.add_argument(
        "--calibration",
        default=None,
        help="route mode: a JSONL of questions (a problem/question field, or bare strings); the policy then escalates "
        "when its escalation score exceeds the threshold that sends --budget of these questions to the cloud, so one "
        "trained policy serves any budget",
    )
    ap.add_argument("--budget-window", type=int, default=100, help="requests in the budget's sliding window")
    ap.add_argument(
        "--cloud-cache",
        default="",
        help="SQLite file of the cloud's answers (each question is paid for once); default: cloud.cache_file, else "
        "~/.cache/cloudroute/serve_cloud_cache.sqlite; 'none': no file",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on")
    ap.add_argument("--max-batch", type=int, default=32, help="most requests in one device batch")
    ap.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="how long a device batch waits for more requests after its first (milliseconds)",
    )
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="device tokens per answer when a request gives no max_tokens "
        "(default: the run's train.eval_max_new_tokens)",
    )
    ap.add_argument("--max-tokens-limit", type=int, default=1024, help="the largest max_tokens a request may ask for")
    ap.add_argument(
        "--api-key-env",
        default="CLOUDROUTE_API_KEY",
        help="environment variable with the bearer key /v1/* requires; auth is off while it is unset or empty",
    )
    ap.add_argument("--name", default=None, help="the model name clients send (default: the run's folder name)")
    ap.add_argument(
        "--device-url",
        default=None,
        help="an OpenAI-compatible server (/v1/completions) that serves the device model; --model then gives only "
        "its tokenizer and the run's config",
    )
    ap.add_argument("--device-model", default=None, help="--device-url: the model name that server serves")
    ap.add_argument(
        "--cloud-timeout",
        type=float,
        default=30.0,
        help="serving deadline of a cloud call in seconds: past it the device answers (escalation suppressed, "
        "labelled device-cloud-error) while the call finishes in the background into the cache; 0: none",
    )
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args, overrides = ap.parse_known_args(argv)
    error = stray_arguments_error(overrides, example="cloud.accuracy=0.9")
    if error:
        print(error, file=sys.stderr)
        return 2
    if args.model is None and args.config is None:
        print("error: no model: pass the trained checkpoint, e.g. --model outputs/cpu_default/final", file=sys.stderr)
        return 2
    bad = [
        f"--{k.replace('_', '-')}={v} (give at least 1)"
        for k, v in (("port", args.port), ("max_batch", args.max_batch), ("budget_window", args.budget_window))
        if v < 1
    ]
    if not args.cloud_timeout >= 0:
        bad.append(f"--cloud-timeout={args.cloud_timeout} (give 0 or more seconds)")
    if args.batch_wait_ms < 0:
        bad.append(f"--batch-wait-ms={args.batch_wait_ms} (give 0 or more)")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        bad.append(f"--max-new-tokens={args.max_new_tokens} (give at least 1)")
    if bad:
        print(f"error: {'; '.join(bad)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from policies.device import ModelNotFoundError
    from serving.policy import CollaborativePolicy, PolicyLoadError

    try:
        policy = CollaborativePolicy.load(
            args.model,
            config=args.config,
            overrides=overrides,
            cloud_backend=args.cloud,
            budget=args.budget,
            budget_window=args.budget_window,
            cloud_cache=None if args.cloud_cache.lower() == "none" else args.cloud_cache,
            max_new_tokens=args.max_new_tokens,
            batch_size=max(args.max_batch, 1),
            name=args.name,
            device_url=args.device_url,
            device_model=args.device_model,
            cloud_timeout_s=args.cloud_timeout or None,
            calibration=args.calibration,
        )
    except (PolicyLoadError, ModelNotFoundError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opts = serving_app.ServeOptions(
        api_key_env=args.api_key_env,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_tokens_limit=args.max_tokens_limit,
    )
    auth = f"on (bearer key from ${args.api_key_env})" if os.environ.get(args.api_key_env or "") else "off"
    budget = policy.budget.state() if policy.budget is not None else None
    logging.getLogger("serve").info(
        "serving %r (%s mode, template %s) at http://%s:%d/v1; cloud %s; budget %s; auth %s",
        policy.name,
        policy.mode,
        policy.env.template,
        args.host,
        args.port,
        policy.info()["cloud"],
        "none" if budget is None else f"{budget['budget']:g} ({budget['cap']} calls per {budget['window']} requests)",
        auth,
    )
    uvicorn.run(serving_app.create_app(policy, opts), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cli(argv=None) -> int:
    """``cloudroute-serve``: ``main``."""
    return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
