"""JSON-lines files: resumable work files (read, append with a torn-line repair, meta check) and fresh outputs;
directories written whole or not at all (``replaced_dir``); a checkpoint's training run config (``find_run_config``,
read by serving and by eval.py for a model's own prompt)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager


def read_jsonl(path: str | None, key: str = "uid") -> dict[str, dict]:
    """Rows of a work file keyed by ``row[key]``; a line torn by a crash is skipped (that item is simply redone)."""
    rows = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    rows[row[key]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    return rows


def append_jsonl(path: str | None, rows: list[dict]) -> None:
    if not path or not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torn = False
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:  # a run killed mid-write left a line without its newline
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        if torn:  # end the torn line, so the first new row gets a line of its own (read_jsonl skips the torn one)
            f.write("\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str, rows: list[dict]) -> None:
    """``rows`` as a fresh JSON-lines file (outputs rebuilt on every run, not resumable work files)."""
    if os.path.exists(path):
        os.remove(path)
    append_jsonl(path, rows)


def find_run_config(model_path: str) -> str | None:
    """The training run's resolved config (a ``config.json`` with the ``rl`` and ``model`` sections) in the
    checkpoint's folder or up to three folders above it (``<out>/final``, ``<out>/checkpoints/step-N``)."""
    here = os.path.abspath(os.path.expanduser(model_path))
    for _ in range(4):
        path = os.path.join(here, "config.json")
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and "rl" in data and "model" in data:
                return path
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    return None


class WorkFileMismatch(ValueError):
    """A resumable work file was made with other settings than the run that would resume it."""


def check_meta(path: str | None, meta: dict) -> None:
    """A work file belongs to one (model, template, decoding) setting; refuse to resume it under another
    (``WorkFileMismatch``, naming the settings that differ)."""
    if not path:
        return
    mpath = path + ".meta.json"
    if os.path.exists(mpath):
        with open(mpath) as f:
            old = json.load(f)
        if old != meta:
            diff = {k: (old.get(k), meta.get(k)) for k in set(old) | set(meta) if old.get(k) != meta.get(k)}
            raise WorkFileMismatch(
                f"{path} was made with different settings {diff} (old, new): start it over or write elsewhere"
            )
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(mpath, "w") as f:
            json.dump(meta, f)


@contextmanager
def replaced_dir(path: str):
    """Write a directory whole or not at all (a saved model: ``final/``): the body writes into ``<path>.partial``,
    which takes the place of ``path`` only when the body returns. A crash (a full disk, a kill) leaves ``path`` as
    it was, so a half-written model never passes for a finished one; the stray ``.partial`` is cleared next time.

        with replaced_dir("outputs/run/final") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    """
    path = os.path.normpath(path)
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
