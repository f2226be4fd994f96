"""The repository stands on its own: its docs cite docs/method.md, not a file outside it, and every link resolves."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(*patterns):
    return [f for p in patterns for f in glob.glob(os.path.join(ROOT, p), recursive=True) if "/outputs/" not in f]


def test_no_text_sends_the_reader_outside_the_repository():
    offenders = []
    for f in _files("README.md", "docs/*.md", "configs/*.yaml", "*.py", "*/**/*.py"):
        if f.startswith(os.path.join(ROOT, "tests")):
            continue
        text = open(f, encoding="utf-8").read()
        for pat in (r"shared/SPEC", r"\bSPEC §", r"shared/seeds", r"the issue (asked|measured|wants)"):
            if re.search(pat, text):
                offenders.append((os.path.relpath(f, ROOT), pat))
    assert offenders == []


def test_every_relative_link_of_the_docs_resolves():
    broken = []
    for f in _files("README.md", "docs/*.md"):
        for m in re.finditer(r"\]\(([^)#\s]+)(#[^)]*)?\)", open(f, encoding="utf-8").read()):
            target = m.group(1)
            if not target.startswith(("http://", "https://", "mailto:")):
                if not os.path.exists(os.path.join(os.path.dirname(f), target)):
                    broken.append((os.path.relpath(f, ROOT), target))
    assert broken == []


def test_docs_holds_pages_and_its_data_folder_the_generated_files():
    stray = [f for f in os.listdir(os.path.join(ROOT, "docs")) if not (f.endswith(".md") or f == "data")]
    assert stray == []
    assert os.path.exists(os.path.join(ROOT, "docs", "method.md"))
