"""The numbers of an evaluation: the test-time cap, RouteLLM's APGR/CPT, and bootstrap intervals over problems.

    cap_set = capped(wanted, math.floor(budget * n))              # the first requests in dataset order
    curve = accuracy_curve(order, device_ok, cloud_ok)            # accuracy after k cloud calls, k = 0..N
    apgr_cpt(curve, weak=acc_never, strong=acc_cloud)             # {"apgr", "cpt50", "cpt80"}
    bootstrap_ci(correct)                                         # 95% interval of accuracy
    bootstrap_ci(correct_a, correct_b)                            # 95% interval of the paired difference

RouteLLM (Ong et al., *RouteLLM: Learning to Route LLMs with Preference Data*, 2024): PGR(c) = (acc(c) − acc(weak)) /
(acc(strong) − acc(weak)), APGR = ∫₀¹ PGR(c) dc, CPT(x) = the smallest cloud share c with PGR(c) ≥ x.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_N, BOOTSTRAP_SEED = 2000, 0  # resamples of the problems for every confidence interval (bootstrap_ci)


def capped(order: list[int], cap: int) -> list[int]:
    """The test-time budget cap: the first ``cap`` requests in the given order (dataset order for every method)."""
    return list(order)[:cap]


def accuracy_curve(order: list[int], device_ok: list[bool], cloud_ok: dict[int, bool]) -> np.ndarray:
    """acc after k cloud calls, k = 0..N, sending ``order`` first; flat once the method wants no more calls."""
    n = len(device_ok)
    acc = np.empty(n + 1)
    correct = float(sum(device_ok))
    acc[0] = correct
    for k in range(1, n + 1):
        if k <= len(order):
            i = order[k - 1]
            correct += float(cloud_ok[i]) - float(device_ok[i])
        acc[k] = correct
    return acc / max(n, 1)


def apgr_cpt(curve: np.ndarray, weak: float, strong: float) -> dict:
    """RouteLLM's APGR (area under PGR over cost in [0,1], trapezoid) and CPT(50%), CPT(80%) as cloud shares."""
    if strong - weak <= 1e-12:
        return {"apgr": None, "cpt50": None, "cpt80": None}
    pgr = (curve - weak) / (strong - weak)
    cost = np.linspace(0.0, 1.0, len(curve))
    out = {"apgr": float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(cost))) if len(curve) > 1 else None}
    for x in (50, 80):
        hit = np.nonzero(pgr >= x / 100 - 1e-12)[0]
        out[f"cpt{x}"] = float(cost[hit[0]]) if len(hit) else None
    return out


def bootstrap_ci(correct_a, correct_b=None, n: int = 2000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """A percentile-bootstrap confidence interval over problems (Efron & Tibshirani, *An Introduction to the
    Bootstrap*, 1993, ch. 13): draw the problems ``n`` times with replacement, compute the statistic on each
    resample, and take its ``(1-level)/2`` and ``(1+level)/2`` quantiles.

    With ``correct_a`` alone the statistic is accuracy (the mean of the per-problem 0/1 correctness).  With
    ``correct_b`` (the same problems, in the same order) it is the **paired** difference ``acc(a) - acc(b)``: both
    rows are evaluated on the same resampled problems, so what the problems share (some are easy for everyone)
    cancels and only the rows' disagreements make the interval wide.  Identical rows give exactly ``[0, 0]``.

    Seeded: the same ``seed`` and number of problems draw the same resamples, so every row and every pair of a
    suite is judged on one set of resamples.  Returns ``[lo, hi]``, or None when there are no problems."""
    a = np.asarray(correct_a, dtype=np.float64)
    if correct_b is not None:
        b = np.asarray(correct_b, dtype=np.float64)
        if b.shape != a.shape:
            raise ValueError(f"bootstrap_ci: paired rows need the same problems ({a.shape[0]} vs {b.shape[0]})")
        a = a - b  # the mean of per-problem differences is the difference of accuracies, on every resample
    m = a.shape[0]
    if m == 0:
        return None
    rng = np.random.default_rng(seed)
    stats = np.empty(n)
    chunk = max(1, 2_000_000 // m)  # resamples drawn per block: bounded memory on large suites, same draws either way
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        stats[start : start + k] = a[rng.integers(0, m, size=(k, m))].mean(axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def compare_rows(
    correct: dict[str, list], policies: list[str], n: int = 2000, seed: int = 0, level: float = 0.95
) -> list[dict]:
    """Paired bootstrap comparisons of overall accuracy (``bootstrap_ci`` with two rows): each policy row against
    every later policy row and every other row.  ``correct`` maps a row's method to its per-problem correctness.
    ``significant``: the interval excludes 0 (the difference is beyond the noise of this many problems)."""
    out = []
    for i, a in enumerate(policies):
        for b in [p for p in policies[i + 1 :]] + [m for m in correct if m not in policies]:
            ca, cb = correct[a], correct[b]
            diff = (sum(ca) - sum(cb)) / max(len(ca), 1)
            ci = bootstrap_ci(ca, cb, n, seed, level)
            out.append({"a": a, "b": b, "diff": diff, "ci": ci, "significant": bool(ci and (ci[0] > 0 or ci[1] < 0))})
    return out


def row_correct(n: int, device, sent, cloud) -> list[bool]:
    """A row's per-problem correctness: the cloud's answer where it was sent, the device's elsewhere."""
    return [bool(cloud[i]["correct"]) if i in sent else bool(device[i]["correct"]) for i in range(n)]
