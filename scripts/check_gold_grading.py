"""Grade every suite's gold solutions against its own normalised gold answer.

    python -m scripts.check_gold_grading [--data-dir ../shared/data] [--out docs/data/gold_grading.json]
                                         [--suites math500 amc23]

For each row, the "response" is the row's full gold solution when it has one (MATH, MATH-500,
MinervaMath, AGIEval's other.solution), else ``\\boxed{answer}`` (AMC23). It is graded with
``rewards.math_grader.grade`` against the answer the loader normalised (``envs.suites``).
A row that does not grade is a loader or grader bug unless explained in the JSON's notes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from envs.suites import SUITES, load_suite
from rewards.math_grader import grade, is_correct, last_boxed

# Rows that cannot grade, and why (every other row must grade; a new failure is a loader or grader bug).
EXPLAINED = {
    "math_train:number_theory/7115": "the shipped solution ends in an empty \\boxed{} ('there are $\\boxed{}$ "
    "primes'), so nothing can be extracted; the loader takes the gold from envs.suites.GOLD_FIXES ('0': the solution "
    "proves every number between n!+1 and n!+n composite, choice (A) 0).",
    "math_train:number_theory/7117": "the shipped solution ends in an empty \\boxed{} ('so the answer is "
    "$\\boxed{}$'); gold '0' from envs.suites.GOLD_FIXES (the solution proves P+n is never prime, choice (A) 0).",
}


def all_boxed(text: str) -> list[str]:
    """Contents of every \\boxed{...} in ``text``, in order."""
    out, i = [], 0
    while (j := text.find("\\boxed", i)) >= 0:
        b = last_boxed(text[: j + 6] + text[j + 6 :].split("\\boxed", 1)[0])  # this box alone
        if b is not None:
            out.append(b)
        i = j + 6
    return out


def multi_boxed(problems) -> list[dict]:
    """Rows whose gold solution boxes several non-equivalent answers. The harnesses (and this loader) take the
    last one as gold; for "enter all solutions" problems that is only part of the answer."""
    rows = []
    for p in problems:
        sol = p.meta.get("gold_solution") or ""
        if sol.count("\\boxed") < 2:
            continue
        boxes = all_boxed(sol)
        if len(boxes) > 1 and not all(is_correct(boxes[-1], b) for b in boxes[:-1]):
            rows.append({"uid": p.uid, "gold": p.answer, "boxes": boxes})
    return rows


def check_suite(name: str, data_dir: str, limit: int = 0, strict: bool = True) -> dict:
    """``grade`` every row's gold solution against its gold answer. With ``strict``, also grade it with the
    equal-strings shortcuts switched off, so that math-verify / the normalisation must prove the match."""
    problems = load_suite(name, data_dir, limit=limit)
    failures, strict_failures = [], []
    t0 = time.time()
    for p in problems:
        response = p.meta.get("gold_solution") or f"\\boxed{{{p.answer}}}"
        pred, ok = grade(p.answer, response)
        if not ok:
            failures.append(
                {"uid": p.uid, "gold": p.answer, "extracted": pred, "why": EXPLAINED.get(p.uid, "UNEXPLAINED")}
            )
        if strict and not is_correct(p.answer, pred, string_match=False):
            strict_failures.append(
                {"uid": p.uid, "gold": p.answer, "extracted": pred, "why": EXPLAINED.get(p.uid, "UNEXPLAINED")}
            )
    n = len(problems)
    out = {
        "suite": name,
        "file": SUITES[name][0],
        "rows": n,
        "response": "gold solution" if any("gold_solution" in p.meta for p in problems) else "\\boxed{answer}",
        "correct": n - len(failures),
        "pct": round(100.0 * (n - len(failures)) / max(n, 1), 2),
        "failures": failures,
    }
    if strict:
        out["strict_correct"] = n - len(strict_failures)
        out["strict_pct"] = round(100.0 * (n - len(strict_failures)) / max(n, 1), 2)
        out["strict_failures"] = strict_failures
    out["multi_boxed"] = multi_boxed(problems)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--suites", nargs="*", default=list(SUITES), choices=list(SUITES))
    ap.add_argument("--limit", type=int, default=0, help="rows per suite (0 = all)")
    ap.add_argument("--out", default="docs/data/gold_grading.json")
    ap.add_argument(
        "--no-strict", action="store_true", help="skip the pass without the equal-strings shortcut (faster)"
    )
    args = ap.parse_args(argv)

    results = [check_suite(s, args.data_dir, args.limit, strict=not args.no_strict) for s in args.suites]
    print(f"{'suite':<11} {'file':<20} {'rows':>6} {'correct':>8} {'%':>7} {'strict':>7} {'%':>7}  response")
    for r in results:
        sc = f"{r['strict_correct']:>7} {r['strict_pct']:>7.2f}" if "strict_correct" in r else f"{'-':>7} {'-':>7}"
        print(
            f"{r['suite']:<11} {r['file']:<20} {r['rows']:>6} {r['correct']:>8} {r['pct']:>7.2f} {sc}  {r['response']}"
        )
    for r in results:
        for f in r["failures"]:
            print(f"  FAIL {f['uid']}: gold={f['gold']!r} extracted={f['extracted']!r}\n       {f['why']}")
        for f in r.get("strict_failures", []):
            print(f"  STRICT FAIL {f['uid']}: gold={f['gold']!r} extracted={f['extracted']!r}")
    for r in results:
        if r["multi_boxed"]:
            print(
                f"  note: {r['suite']}: {len(r['multi_boxed'])} row(s) box several different answers; "
                "gold = the last box (harness convention), listed under multi_boxed in the JSON"
            )
    unexplained = [
        f["uid"] for r in results for f in r["failures"] + r.get("strict_failures", []) if f["why"] == "UNEXPLAINED"
    ]
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump({"data_dir": args.data_dir, "unexplained": unexplained, "results": results}, fh, indent=1)
        print(f"wrote {args.out}")
    if unexplained:
        print(f"{len(unexplained)} unexplained failing row(s): {unexplained[:10]}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    raise SystemExit(main())
