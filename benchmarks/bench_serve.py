"""Serving throughput: requests/s and p50/p99 latency of serve.py's server, with dynamic batching and one at a time;
and (``--phase fault``) what the server does for its clients while its cloud is killed, restarted and frozen.

    python -m benchmarks.bench_serve                         # SmolLM2-135M (cpu_default), 1, 8 and 32 clients
    python -m benchmarks.bench_serve --concurrency 1,8 --requests-per-client 2 --steps 3 --json out.json
    python -m benchmarks.bench_serve --phase fault --model /tmp/tiny --config configs/tiny_test.yaml   # see run_fault

The server is the real one (serving/app.py in a background uvicorn, HTTP on loopback, the simulated cloud without a
cache file, the route mode's budget), its device the config's model, untrained unless ``--model`` names a
checkpoint.  For each number of concurrent clients C, C clients send ``--requests-per-client`` requests each, one
after the other, the questions drawn from the task's held-out set (greedy, ``--max-new-tokens``).  Two servers answer
the same requests: ``batched`` (``--max-batch``, ``--batch-wait-ms``) and ``one-at-a-time`` (max batch 1: each request
is generated alone, as a plain loop would).  Each row is ``--steps`` repetitions after ``--warmup``: requests/s as
mean ± std over the repetitions, latency percentiles over every request of them.  The speed-up is batched over
one-at-a-time requests/s at the same C.

The fault phase (``run_fault``) serves a real OpenAI-compatible cloud in its own process on loopback
(benchmarks/loopback_cloud.py) to ``--fault-clients`` concurrent ``openai`` clients sending ``--fault-requests``
requests in all.  Every ``--escalate-every``-th question is marked ``(esc)`` and the device is scripted
(``ScriptedDevice``, a logits processor) to escalate on it (and, with the tag banned in the second pass, to answer
``\\boxed{0}``), the others to answer ``\\boxed{7}``: the untrained SmolLM2 almost never escalates, and a random
tiny model writes no answer; the device still runs every forward pass of those tokens.  The requests go through four
quarters: the cloud up; SIGKILLed; started again; frozen with SIGSTOP (SIGCONT at the end).  Reported: requests lost
(no 200), replies without an answer (no ``\\boxed{}`` answer, or the bare tag), the most cloud answers in any window of
``--budget-window`` consecutive requests against the budget's cap, and the p50/p99 latency of device-only requests
sent and answered while the cloud is frozen against those of the quarters when it is up.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch
from transformers import LogitsProcessor

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


ESC = "<unknown> I need external assistance </unknown>"


class ScriptedDevice(LogitsProcessor):
    """Forces the device's response by the mark in the question: ``(esc)`` escalates (its second choice, when the
    tag's first token is banned: ``\\boxed{0}``), anything else answers ``\\boxed{7}``.  Each next token of an
    alternative the response still follows gets a finite logit (0, -1, ...; best first), every other token -inf."""

    def __init__(self, tok):
        self.tok, self.eos = tok, tok.eos_token_id
        self.header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.targets = {
            True: [tok(t, add_special_tokens=False)["input_ids"] for t in (ESC, "\\boxed{0}")],
            False: [tok("\\boxed{7}", add_special_tokens=False)["input_ids"]],
        }
        self.marks: dict[tuple, bool] = {}

    def __call__(self, input_ids, scores):
        h = len(self.header)
        for b, row in enumerate(input_ids.tolist()):
            start = max(i + h for i in range(len(row) - h + 1) if row[i : i + h] == self.header)
            key = tuple(row[:start])
            if key not in self.marks:
                self.marks[key] = "(esc)" in self.tok.decode(row[:start])
            done = row[start:]
            best = scores[b].clone()
            scores[b] = float("-inf")
            for rank, target in enumerate(self.targets[self.marks[key]]):
                if target[: len(done)] == done:
                    nxt = target[len(done)] if len(done) < len(target) else self.eos
                    scores[b, nxt] = max(float(scores[b, nxt]), -float(rank))
            if not bool(torch.isfinite(scores[b]).any()):
                scores[b] = best
        return scores


async def _fault_load(url, model, questions, clients, cloud, deadline_s):
    """``clients`` openai clients take the questions in order; the quarters of the questions sent switch the cloud
    (up, killed, started again, frozen).  Returns one record per request."""
    import openai

    n, records, sent = len(questions), [], [0]
    phase = ["up"]
    quarter = [n // 4, n // 2, 3 * n // 4]
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    t_start = time.perf_counter()
    switch = asyncio.Lock()

    async def advance(k: int):
        async with switch:  # the cloud's state follows the number of requests sent
            if k == quarter[0] and phase[0] == "up":
                cloud.kill()
                phase[0] = "killed"
            elif k == quarter[1] and phase[0] == "killed":
                await asyncio.to_thread(cloud.start)
                phase[0] = "restarted"
            elif k == quarter[2] and phase[0] == "restarted":
                cloud.freeze()
                phase[0] = "frozen"

    async def worker():
        while sent[0] < n and time.perf_counter() - t_start < deadline_s:
            k = sent[0]
            sent[0] += 1
            await advance(k)
            q, at_send = questions[k], phase[0]
            t0 = time.perf_counter()
            rec = {"k": k, "escalates": "(esc)" in q, "phase": at_send, "status": None}
            try:
                r = await client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": q}]
                )
                body = r.parse()
                x = body.model_extra["cloudroute"]
                rec.update(
                    status=r.status_code,
                    answered_by=x["answered_by"],
                    answer=x["answer"],
                    request_index=x["request_index"],
                    content=body.choices[0].message.content,
                )
            except Exception as e:  # noqa: BLE001 -- a lost request: counted, with its cause
                rec.update(status=getattr(e, "status_code", None) or type(e).__name__)
            rec.update(latency_s=time.perf_counter() - t0, phase_done=phase[0])
            records.append(rec)

    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        cloud.thaw()
        await client.close()
    return records, time.perf_counter() - t_start


def run_fault(args, overrides) -> dict:
    """The fault phase (see the module docstring)."""
    from benchmarks.loopback_cloud import LoopbackCloud
    from envs.tasks import load_problems
    from serving.app import BackgroundServer, ServeOptions, create_app
    from serving.policy import CollaborativePolicy
    from settings import load_config

    cfg = load_config(args.config, list(overrides))
    _, test = load_problems(cfg.task)
    n = args.fault_requests
    questions = [
        f"{test[k % len(test)].question} {'(esc)' if k % args.escalate_every == 0 else '(ok)'} #{k}" for k in range(n)
    ]
    cloud = LoopbackCloud(delay_s=args.cloud_delay_s).start()
    try:
        policy = CollaborativePolicy.load(
            args.model or cfg.model.name_or_path,
            config=args.config,
            overrides=list(overrides)
            + [
                "cloud.backend=openai",
                f"cloud.base_url={cloud.url}",
                "cloud.model=loopback",
                "cloud.api_key_env=CLOUDROUTE_LOOPBACK_KEY",
                f"cloud.timeout_s={args.cloud_timeout}",
                "cloud.max_retries=1",
                "cloud.backoff_base_s=0.1",
                "cloud.backoff_max_s=0.5",
            ],
            budget=args.budget,
            budget_window=args.budget_window,
            cloud_cache=None,
            max_new_tokens=args.max_new_tokens,
            batch_size=max(args.max_batch, 1),
            name="bench",
            cloud_timeout_s=args.cloud_timeout,
        )
        policy.logits_processor = [ScriptedDevice(policy.tokenizer)]
        opts = ServeOptions(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
        with BackgroundServer(create_app(policy, opts)) as server:
            records, wall = asyncio.run(
                _fault_load(server.url, "bench", questions, args.fault_clients, cloud, args.fault_max_s)
            )
            import httpx

            health = httpx.get(server.url + "/health").json()
    finally:
        cloud.close()
    ok = [r for r in records if r["status"] == 200]
    lost = len(questions) - len(ok)
    no_answer = [r for r in ok if r["answer"] is None or "<unknown>" in (r["content"] or "")]
    cloud_at = {r["request_index"]: int(r["answered_by"] == "cloud") for r in ok}
    order = [cloud_at.get(i, 0) for i in range(max(cloud_at, default=-1) + 1)]
    w = args.budget_window
    worst = max((sum(order[i : i + w]) for i in range(max(1, len(order) - w + 1))), default=0)

    def device_only(phases):
        return [r["latency_s"] for r in ok if not r["escalates"] and r["phase"] in phases and r["phase_done"] in phases]

    normal, frozen = device_only(("up", "restarted")), device_only(("frozen",))
    by_phase = {}
    for r in ok:
        d = by_phase.setdefault(r["phase"], {})
        d[r["answered_by"]] = d.get(r["answered_by"], 0) + 1
    result = {
        "requests": len(questions),
        "sent": len(records),
        "wall_s": wall,
        "lost": lost,
        "lost_causes": sorted({str(r["status"]) for r in records if r["status"] != 200}),
        "without_answer": len(no_answer),
        "max_cloud_in_window": worst,
        "budget_cap": policy.budget.cap if policy.budget is not None else None,
        "budget_window": w,
        "device_only_normal": {"n": len(normal), "p50_s": percentile(normal, 50), "p99_s": percentile(normal, 99)},
        "device_only_frozen": {"n": len(frozen), "p50_s": percentile(frozen, 50), "p99_s": percentile(frozen, 99)},
        "answered_by_per_phase": by_phase,
        "health_at_end": health.get("cloud_state"),
    }
    result["frozen_over_normal_p50"] = result["device_only_frozen"]["p50_s"] / result["device_only_normal"]["p50_s"]
    result["frozen_over_normal_p99"] = result["device_only_frozen"]["p99_s"] / result["device_only_normal"]["p99_s"]
    policy.close_cloud()
    return result


def print_fault(r: dict) -> None:
    print(
        f"fault phase: {r['requests']} requests ({r['sent']} sent) in {r['wall_s']:.1f} s; lost {r['lost']} "
        f"{r['lost_causes'] or ''}; without an answer {r['without_answer']}; most cloud answers in a window of "
        f"{r['budget_window']}: {r['max_cloud_in_window']} (cap {r['budget_cap']})"
    )
    for name in ("normal", "frozen"):
        d = r[f"device_only_{name}"]
        print(f"device-only latency, cloud {name}: n={d['n']} p50 {d['p50_s']:.2f} s, p99 {d['p99_s']:.2f} s")
    print(
        f"frozen / normal: p50 {r['frozen_over_normal_p50']:.2f}x, p99 {r['frozen_over_normal_p99']:.2f}x; "
        f"answered_by per quarter: {r['answered_by_per_phase']}"
    )


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
    ap.add_argument("--phase", default="throughput", choices=["throughput", "fault"], help="which benchmark to run")
    ap.add_argument("--fault-requests", type=int, default=192, help="fault phase: requests in all")
    ap.add_argument("--fault-clients", type=int, default=32, help="fault phase: concurrent openai clients")
    ap.add_argument("--fault-max-s", type=float, default=300.0, help="fault phase: stop sending after this long")
    ap.add_argument("--escalate-every", type=int, default=3, help="fault phase: every k-th question escalates")
    ap.add_argument("--cloud-timeout", type=float, default=2.0, help="fault phase: serve.py's --cloud-timeout")
    ap.add_argument("--cloud-delay-s", type=float, default=0.05, help="fault phase: the loopback cloud's latency")
    ap.add_argument("--budget", type=float, default=0.3, help="fault phase: the live budget")
    ap.add_argument("--budget-window", type=int, default=20, help="fault phase: the budget's window in requests")
    args, overrides = ap.parse_known_args(argv)
    threads = setup_torch(args)
    if args.phase == "fault":
        result = run_fault(args, overrides)
        print_fault(result)
        result.update(command=command_line(), device=device_name(), threads=threads, model=args.model)
        write_json(args.json, result)
        return result
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
