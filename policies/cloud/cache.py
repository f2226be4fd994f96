"""The persistent answer cache: ``CachedCloud`` wraps any backend with an SQLite file.

    cloud = CachedCloud(SimulatedCloud(), "outputs/run/cloud_cache.sqlite")
    cloud.answer_many(problems)   # at most one real call per (model, messages, sampling), ever

The file is in WAL mode, one row per answer, committed as each answer arrives, safe for several processes;
rows are keyed by ``backend.cache_key(problem)``: a sha256 over the backend's identity (model, seed...), the chat
messages and the sampling parameters.  Training, evaluation and sweeps that point at the same file never pay twice
for the same request.  A ``.jsonl`` cache (the old format, keyed by problem uid) is still read; its answers move
into the ``.sqlite`` file beside it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time

from core.problem import Problem
from policies.cloud.protocol import CloudBackend, CloudError, CloudReply
from policies.cloud.requests import query_problem

log = logging.getLogger(__name__)


def _cache_paths(path: str | None) -> tuple[str | None, str | None]:
    """(sqlite file, legacy JSON-lines file or None) for a configured cache path."""
    if not path:
        return None, None
    if path.endswith(".jsonl"):
        return path[: -len(".jsonl")] + ".sqlite", path
    stem = path[: -len(".sqlite")] if path.endswith(".sqlite") else path
    legacy = stem + ".jsonl"
    return path, legacy if os.path.exists(legacy) else None


_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, backend TEXT NOT NULL, model TEXT, uid TEXT, text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, created_at REAL
)"""


def _set_wal(db: sqlite3.Connection, wait_s: float = 60.0) -> str:
    """Switch the file to WAL.  Two processes opening a new file at once (DDP ranks) can get SQLITE_BUSY here
    without sqlite's busy handler ever waiting, so the switch is retried until ``wait_s`` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class CachedCloud:
    """Any backend plus an SQLite answer cache keyed by ``backend.cache_key(problem)``.

    ``answer_many(problems) -> list[CloudReply]``, as a backend answers (``cached`` marks the replies that cost
    nothing); ``usage()`` counts this process's real calls, cache hits and tokens; ``len(cloud)`` is the
    number of answers in the cache file.  A ``.jsonl`` path (the old format, keyed by problem uid)
    is still read; new answers go to the ``.sqlite`` file beside it.
    """

    def __init__(self, backend: CloudBackend, path: str | None):
        self.backend = backend
        self.path, self.legacy_path = _cache_paths(path)
        self.cache: dict[str, dict] = {}  # key -> row, for the answers this process has seen
        self._legacy: dict[str, dict] = {}
        self._usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            # autocommit (isolation_level=None): every INSERT is its own committed transaction
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            mode = _set_wal(self._db)
            if str(mode).lower() != "wal":
                log.warning(
                    "cloud cache %s: WAL journal unavailable (%s); concurrent writers will wait on each other",
                    self.path,
                    mode,
                )
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        if self.legacy_path and os.path.exists(self.legacy_path):
            self._read_legacy(self.legacy_path)

    def _read_legacy(self, path: str):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                    self._legacy[row["uid"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-write: that answer is simply asked again
        if self._legacy:
            log.info(
                "cloud cache: read %d answers from the legacy file %s; new answers go to %s",
                len(self._legacy),
                path,
                self.path,
            )

    def usage(self) -> dict:
        """Real backend calls this process made, cache hits, and the tokens of those real calls."""
        out = dict(self._usage)
        for extra in ("requests", "retries"):  # HTTP backends: requests sent, retries among them
            if hasattr(self.backend, extra):
                out[extra] = getattr(self.backend, extra)
        return out

    def __bool__(self) -> bool:  # a cloud with an empty cache is still a cloud
        return True

    def __len__(self) -> int:
        if self._db is None:
            return len(self.cache)
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def _lookup(self, wanted: dict[str, Problem]):
        """Fill ``self.cache`` for the keys in ``wanted`` that the file (or the legacy file) holds."""
        todo = [k for k in wanted if k not in self.cache]
        if self._db is not None and todo:
            with self._lock:
                for s in range(0, len(todo), 500):
                    chunk = todo[s : s + 500]
                    rows = self._db.execute(
                        "SELECT key, text, prompt_tokens, completion_tokens FROM answers "
                        f"WHERE key IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                    for key, text, pt, ct in rows:
                        self.cache[key] = {"text": text, "prompt_tokens": pt, "completion_tokens": ct}
        if self._legacy:
            migrated = []
            for k in todo:
                row = self._legacy.get(wanted[k].uid)
                if k not in self.cache and row is not None and row.get("backend") == self.backend.name:
                    reply = CloudReply(row["text"], 0, int(row.get("tokens", 0) or 0))
                    self.cache[k] = {
                        "text": reply.text,
                        "prompt_tokens": 0,
                        "completion_tokens": reply.completion_tokens,
                    }
                    migrated.append((k, wanted[k], reply))
            self._write(migrated)

    def _write(self, items: list[tuple[str, Problem, CloudReply]]):
        if self._db is None or not items:
            return
        model = getattr(self.backend, "model_path", None) or getattr(self.backend, "model", None)  # hf / openai
        model = model if isinstance(model, str) else None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (k, self.backend.name, model, p.uid, r.text, r.prompt_tokens, r.completion_tokens, time.time())
                        for k, p, r in items
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _record(self, items: list[tuple[str, Problem, CloudReply]]):
        """Answers that just came from the backend: count them, keep them, commit them (one transaction)."""
        with self._lock:
            for key, _, reply in items:
                self.cache[key] = {
                    "text": reply.text,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                }
                self._usage["calls"] += 1
                self._usage["prompt_tokens"] += reply.prompt_tokens
                self._usage["completion_tokens"] += reply.completion_tokens
            self._write(items)

    def answer_many(self, problems: list[Problem]) -> list[CloudReply]:
        """The reply to each problem: from the cache, else asked of the backend (each distinct request once, each
        answer committed as it arrives)."""
        if not problems:
            return []
        t0 = time.time()
        keys = [self.backend.cache_key(p) for p in problems]
        wanted = dict(zip(keys, problems))
        self._lookup(wanted)
        missing = [(k, p) for k, p in wanted.items() if k not in self.cache]  # each request once, in order
        fresh: set[str] = set()
        # this call's own counts for its log line (the process totals move under concurrent callers)
        mine = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_hits": 0}

        def count(items):
            for _, _, r in items:
                mine["calls"] += 1
                mine["prompt_tokens"] += r.prompt_tokens
                mine["completion_tokens"] += r.completion_tokens

        if missing:

            def store(i: int, reply: CloudReply):  # an answer arrived: committed before the next one is awaited
                k, p = missing[i]
                if k not in fresh:
                    fresh.add(k)
                    self._record([(k, p, reply)])
                    count([(k, p, reply)])

            batch = [p for _, p in missing]
            try:
                out = self.backend.answer_many(batch, on_reply=store)  # protocol.py: CloudBackend
                if len(out) != len(batch):
                    raise CloudError(
                        f"cloud backend {self.backend.name} returned {len(out)} answers for {len(batch)} problems"
                    )
                rest = [(k, p, r) for (k, p), r in zip(missing, out) if k not in fresh]
                fresh.update(k for k, _, _ in rest)
                self._record(rest)  # a backend that answers all at once: one transaction
                count(rest)
            except BaseException:
                self._log_batch(len(problems), mine, t0, failed=True)
                raise
        out, first_seen = [], set()
        for k in keys:
            row = self.cache[k]
            new = k in fresh and k not in first_seen
            if new:
                first_seen.add(k)
            else:
                self._usage["cache_hits"] += 1
                mine["cache_hits"] += 1
            out.append(CloudReply(row["text"], row["prompt_tokens"], row["completion_tokens"], cached=not new))
        self._log_batch(len(problems), mine, t0)
        return out

    def _log_batch(self, asked: int, mine: dict, t0: float, failed: bool = False):
        """One line per ``answer_many``, its own counts (``mine``) then the process's totals: debug (a run's
        evaluations and eval.py summarise the cloud once, ``usage()``); a failed batch is a warning."""
        u = self._usage
        log.log(
            logging.WARNING if failed else logging.DEBUG,
            "cloud %s: %d asked%s, %d new answers in %.1fs (+%d prompt / +%d completion tokens), %d from the cache; "
            "this process so far: %d calls, %d cache hits, %d prompt + %d completion tokens (%s)",
            self.backend.name,
            asked,
            " (FAILED, answers received so far are kept)" if failed else "",
            mine["calls"],
            time.time() - t0,
            mine["prompt_tokens"],
            mine["completion_tokens"],
            mine["cache_hits"],
            u["calls"],
            u["cache_hits"],
            u["prompt_tokens"],
            u["completion_tokens"],
            f"cache {self.path}" if self.path else "no cache file",
        )

    def lookup(self, problems: list[Problem]) -> list[CloudReply | None]:
        """The cached reply of each problem, or None; never calls the backend.  After a ``CloudError`` the
        environments take what did arrive (answers are committed as they come) and mark only the rest as failed."""
        keys = [self.backend.cache_key(p) for p in problems]
        self._lookup(dict(zip(keys, problems)))
        out = []
        for k in keys:
            row = self.cache.get(k)
            out.append(
                None
                if row is None
                else CloudReply(row["text"], row["prompt_tokens"], row["completion_tokens"], cached=True)
            )
        return out

    def answer(self, problem: Problem) -> CloudReply:
        return self.answer_many([problem])[0]

    def answer_queries(self, texts: list[str]) -> list[CloudReply]:
        """Replies to free-text ``<query>`` questions (query mode), cached like any problem."""
        return self.answer_many([query_problem(t) for t in texts])

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
        if hasattr(self.backend, "close"):
            self.backend.close()
