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


def test_the_readme_tables_copied_from_a_report_match_it():
    """A README table between `<!-- the table from docs/X.md's "Section" -->` and `<!-- end of table -->` is a copy
    of that report's section: every row of it must be in the report as it stands, so a rerun that changes the report
    without the README fails here."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(
        r"<!-- the table from (docs/[\w.]+)'s \"([^\"]+)\" -->\n(.*?)<!-- end of table -->", readme, re.S
    )
    assert blocks, "the README's results tables carry their source markers"
    stale = []
    for report, section, table in blocks:
        text = open(os.path.join(ROOT, report), encoding="utf-8").read()
        body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
        stale += [(report, line) for line in table.splitlines() if line.startswith("|") and line not in body]
    assert stale == []
