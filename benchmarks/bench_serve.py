"""Serving throughput: requests/s and p50/p99 latency of serve.py's server, with dynamic batching and one at a time.

    python -m benchmarks.bench_serve                         # SmolLM2-135M (cpu_default), 1, 8 and 32 clients
    python -m benchmarks.bench_serve --concurrency 1,8 --requests-per-client 2 --steps 3 --json out.json

The server is the real one (serving/app.py in a background uvicorn, HTTP on loopback, the simulated cloud without a
cache file, the route mode's budget), its device the config's model, untrained unless ``--model`` names a
checkpoint.  For each number of concurrent clients C, C clients send ``--requests-per-client`` requests each, one
after the other, the questions drawn from the task's held-out set (greedy, ``--max-new-tokens``).  Two servers answer
the same requests: ``batched`` (``--max-batch``, ``--batch-wait-ms``) and ``one-at-a-time`` (max batch 1: each request
is generated alone, as a plain loop would).  Each row is ``--steps`` repetitions after ``--warmup``: requests/s as
mean ± std over the repetitions, latency percentiles over every request of them.  The speed-up is batched over
one-at-a-time requests/s at the same C.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.common import DEFAULT_CONFIG, command_line, device_name, mean_std, setup_torch, table, write_json


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _load(url: str, model: str, questions: list[str], clients: int, per_client: int, max_tokens: int):
    """C clients, each sending its requests one after the other; returns (wall seconds, latencies, answered_by)."""
    import httpx

    latencies, who = [], []
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=clients + 4)) as http:

        async def client(c: int):
            for k in range(per_client):
                q = questions[(c * per_client + k) % len(questions)]
                t0 = time.perf_counter()
                r = await http.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens},
                )
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                who.append(r.json()["cloudroute"]["answered_by"])

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        return time.perf_counter() - t0, latencies, who


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/cpu_default.yaml)")
    ap.add_argument("--model", default=None, help="device model or checkpoint (default: the config's)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent clients")
    ap.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends, one by one")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="max_tokens of every request")
    ap.add_argument("--max-batch", type=int, default=32, help="the batched server's --max-batch")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0, help="the batched server's --batch-wait-ms")
    ap.add_argument("--steps", type=int, default=2, help="measured repetitions of each row")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up repetitions (one client, one request each)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args, overrides = ap.parse_known_args(argv)
    threads = setup_torch(args)
    levels = [int(c) for c in args.concurrency.split(",") if c]

    from envs.tasks import load_problems
    from serving.app import BackgroundServer, ServeOptions, create_app
    from serving.policy import CollaborativePolicy
    from settings import load_config

    cfg = load_config(args.config, list(overrides))
    policy = CollaborativePolicy.load(
        args.model or cfg.model.name_or_path,
        config=args.config,
        overrides=list(overrides) + ["cloud.backend=simulated"],
        cloud_cache=None,
        max_new_tokens=args.max_new_tokens,
        batch_size=max(args.max_batch, 1),
        name="bench",
    )
    _, test = load_problems(cfg.task)
    questions = [p.question for p in test]
    modes = {
        "batched": ServeOptions(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms),
        "one-at-a-time": ServeOptions(max_batch=1, batch_wait_ms=0),
    }
    rows, results = [], {"levels": {}}
    for name, opts in modes.items():
        with BackgroundServer(create_app(policy, opts)) as server:
            for _ in range(args.warmup):
                asyncio.run(_load(server.url, "bench", questions, 1, 1, args.max_new_tokens))
            for c in levels:
                reps, lat, who = [], [], []
                for _ in range(args.steps):
                    wall, ls, w = asyncio.run(
                        _load(server.url, "bench", questions, c, args.requests_per_client, args.max_new_tokens)
                    )
                    reps.append(len(ls) / wall)
                    lat += ls
                    who += w
                rps, rps_sd = mean_std(reps)
                rec = {
                    "requests_per_s": rps,
                    "requests_per_s_std": rps_sd,
                    "reps_requests_per_s": reps,
                    "p50_s": percentile(lat, 50),
                    "p99_s": percentile(lat, 99),
                    "min_s": min(lat),
                    "max_s": max(lat),
                    "requests": len(lat),
                    "answered_by": {k: who.count(k) for k in sorted(set(who))},
                }
                results["levels"].setdefault(str(c), {})[name] = rec
    for c in levels:
        b, one = results["levels"][str(c)]["batched"], results["levels"][str(c)]["one-at-a-time"]
        speedup = b["requests_per_s"] / one["requests_per_s"]
        results["levels"][str(c)]["speedup"] = speedup
        for name, r in (("batched", b), ("one-at-a-time", one)):
            rows.append(
                [
                    c,
                    name,
                    f"{r['requests_per_s']:.2f} ± {r['requests_per_s_std']:.2f}",
                    f"{r['p50_s']:.2f}",
                    f"{r['p99_s']:.2f}",
                    f"{r['min_s']:.2f}-{r['max_s']:.2f}",
                    r["requests"],
                    f"{speedup:.2f}x" if name == "batched" else "",
                ]
            )
    title = (
        f"serve.py throughput: {policy.name} device {args.model or cfg.model.name_or_path}, {args.max_new_tokens} "
        f"max tokens, {args.requests_per_client} requests per client, {args.steps} reps; {device_name()}"
    )
    print(
        table(
            [
                "clients",
                "server",
                "requests/s (mean ± std)",
                "p50 s",
                "p99 s",
                "latency range s",
                "requests",
                "speed-up",
            ],
            rows,
            title,
        )
    )
    for c in levels:
        print(f"batching speed-up at {c} clients: {results['levels'][str(c)]['speedup']:.2f}x")
    results.update(
        command=command_line(),
        device=device_name(),
        threads=threads,
        model=args.model or cfg.model.name_or_path,
        max_new_tokens=args.max_new_tokens,
        requests_per_client=args.requests_per_client,
        steps=args.steps,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
    )
    write_json(args.json, results)
    policy.close_cloud()
    return results


if __name__ == "__main__":
    main()
