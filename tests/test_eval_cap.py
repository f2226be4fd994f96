"""The test-time budget cap and the baselines computed from one set of device outputs."""

from core.problem import Problem
from envs.route import RouteEnv
from evaluation.protocol import evaluate_route
from evaluation.tables import format_table
from policies.cloud import CachedCloud, SimulatedCloud
from policies.generation import Sample

ESC = "<unknown> I need external assistance </unknown>"


class ScriptedGenerator:
    """Returns fixed device outputs (the test double stands in for the model, not for the code under test)."""

    def __init__(self, outputs):
        self.outputs = outputs

    def generate(self, prompts, n=1, **kw):
        return [[Sample([], [], self.outputs[p], False)] for p in prompts]


class PlainTok:
    chat_template = None


def test_budget_cap_sends_escalations_in_order_and_device_answers_the_rest():
    probs = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1), level=1 + i % 2) for i in range(10)]
    env = RouteEnv("arithmetic", PlainTok(), CachedCloud(SimulatedCloud(accuracy=1.0), None), few_shot=False)
    outputs = {}
    for i, p in enumerate(probs):
        # problems 0..5 escalate; 6..9 answer, 6 and 7 correctly
        text = ESC if i < 6 else (f"\\boxed{{{i + 1}}}" if i < 8 else "\\boxed{0}")
        outputs[env.prompt(p)] = text
    rows, records = evaluate_route(env, ScriptedGenerator(outputs), probs, budget=0.3, batch_size=4, progress=False)
    # the rows beside the policy's are this policy never escalating / escalating at random, not the base model
    assert [r["method"] for r in rows] == ["policy", "policy_never", "policy_random"]
    policy, never, rand = rows
    assert policy["cloud_calls"] == 3  # floor(0.3 * 10)
    assert [r["sent_to_cloud"] for r in records[:6]] == [True, True, True, False, False, False]
    # cloud right on 0,1,2; device right on 6,7; escalations 3,4,5 beyond the cap are graded as device answers (wrong)
    assert policy["overall_acc"] == 0.5 and policy["device_acc"] == 2 / 7
    assert policy["wanted_offload_rate"] == 0.6
    assert never["overall_acc"] == 0.2 and never["offload_rate"] == 0.0
    assert rand["cloud_calls"] == 3
    table = format_table(rows).splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["policy", "policy_never", "policy_random"]
    assert len({line.index("%") for line in table[2:5]}) == 1  # the columns line up


def test_cost_curve_apgr_and_cpt_by_hand():
    from evaluation.metrics import accuracy_curve, apgr_cpt

    # 4 problems: device right on 0 and 3, cloud right everywhere; the method sends 1 then 2 and wants no more
    curve = accuracy_curve([1, 2], [True, False, False, True], {0: True, 1: True, 2: True, 3: True})
    assert curve.tolist() == [0.5, 0.75, 1.0, 1.0, 1.0]
    m = apgr_cpt(curve, weak=0.5, strong=1.0)
    # PGR = [0, .5, 1, 1, 1]; trapezoid over cost steps of .25 -> .0625 + .1875 + .25 + .25
    assert abs(m["apgr"] - 0.75) < 1e-12 and m["cpt50"] == 0.25 and m["cpt80"] == 0.5
    # a cloud no better than the device: PGR undefined, reported as None rather than a division by zero
    assert apgr_cpt(curve, weak=0.9, strong=0.9)["apgr"] is None


def test_all_rows_share_one_cap_and_cloud_row_pays_for_everything():
    from evaluation.protocol import suite_rows

    probs = [Problem(f"q{i}", f"What is {i} + 2?", str(i + 2), level=1) for i in range(10)]
    dev = [
        {"uid": p.uid, "output": "x", "escalated": i % 2 == 0, "answer": None, "correct": i >= 7}
        for i, p in enumerate(probs)
    ]
    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), None)
    scores = [1.0 - i / 10 for i in range(10)]  # the router thinks the first problems are the hardest
    rows, records = suite_rows(
        probs, {"policy": dev}, dev, cloud, 0.2, seed=3, router_scores=scores, router_threshold=0.55
    )
    by = {r["method"]: r for r in rows}
    assert list(by) == ["policy", "never", "random", "router", "cloud"]
    for m in ("policy", "random", "router"):
        assert by[m]["cloud_calls"] == 2  # floor(0.2 * 10) for every capped method
    assert [i for i, r in enumerate(records) if r["policy"]["sent_to_cloud"]] == [0, 2]  # escalations, in dataset order
    assert [i for i, r in enumerate(records) if r["router"]["sent_to_cloud"]] == [0, 1]  # 5 over threshold, capped to 2
    assert by["cloud"]["overall_acc"] == 1.0 and by["cloud"]["cloud_calls"] == 10
    assert by["never"]["overall_acc"] == 0.3 and by["policy"]["overall_acc"] == 0.5
    assert by["cloud"]["cloud_tokens"] > by["policy"]["cloud_tokens"] > 0
    assert by["router"]["apgr"] > by["never"]["apgr"] == 0.0


class FlakyGenerator(ScriptedGenerator):
    """Fault injection: dies on the given call, like a run killed mid-evaluation."""

    def __init__(self, outputs, die_on_call=None):
        super().__init__(outputs)
        self.calls, self.die_on_call, self.seen = 0, die_on_call, []

    def generate(self, prompts, n=1, **kw):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt("killed")
        self.seen += prompts
        return super().generate(prompts, n, **kw)


def test_killed_evaluation_resumes_without_regenerating(tmp_path):
    import pytest

    from evaluation.passes import run_device

    probs = [Problem(f"r{i}", f"What is {i} + 3?", str(i + 3), level=1) for i in range(10)]
    env = RouteEnv("arithmetic", PlainTok(), CachedCloud(SimulatedCloud(accuracy=1.0), None), few_shot=False)
    outputs = {env.prompt(p): (f"\\boxed{{{i + 3}}}" if i % 3 else ESC) for i, p in enumerate(probs)}
    path = str(tmp_path / "suite" / "policy.device.jsonl")
    first = FlakyGenerator(outputs, die_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_device(env, first, probs, batch_size=4, path=path, progress=False)
    assert len(open(path).read().splitlines()) == 8  # two batches landed before the kill
    second = FlakyGenerator(outputs)
    resumed = run_device(env, second, probs, batch_size=4, path=path, progress=False)
    assert second.seen == [env.prompt(p) for p in probs[8:]]  # only the unfinished problems are generated again
    clean = run_device(env, FlakyGenerator(outputs), probs, batch_size=4, progress=False)
    assert [(r["uid"], r["correct"], r["escalated"]) for r in resumed] == [
        (r["uid"], r["correct"], r["escalated"]) for r in clean
    ]


def test_apgr_measures_every_row_against_the_one_weak_model():
    """RouteLLM's PGR uses one weak model (the base device model answering everything) for every row.

    10 problems, a cloud right on all of them (strong = 1.0).  The base model is right on 0..2 (weak = 0.3).  The
    policy is right on 0..4 on its own and escalates 5, 6, 7 (all within the 30% cap): 0.8 overall.  By hand, its
    cost curve is .5, .6, .7 then .8 for k = 3..10 calls; the trapezoid area over cost steps of .1 is
    (.55 + .65 + .75 + 7 × .8) / 10 = .755, so APGR = (.755 − .3) / (1 − .3) = .65.  Measured against the policy's own
    device accuracy (.5), it was (.755 − .5) / .5 = .51, below random offloading of the weaker base model."""
    from evaluation.protocol import suite_rows

    probs = [Problem(f"w{i}", f"What is {i} + 4?", str(i + 4), level=1) for i in range(10)]
    base = [{"output": "x", "escalated": False, "answer": None, "correct": i < 3} for i in range(10)]
    policy = [{"output": "x", "escalated": i in (5, 6, 7), "answer": None, "correct": i < 5} for i in range(10)]
    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), None)
    rows, _ = suite_rows(probs, {"policy": policy}, base, cloud, 0.3, seed=0, baselines=("never", "random", "cloud"))
    by = {r["method"]: r for r in rows}
    assert abs(by["policy"]["overall_acc"] - 0.8) < 1e-12 and by["never"]["overall_acc"] == 0.3
    assert abs(by["policy"]["apgr"] - 0.65) < 1e-9
    assert by["never"]["apgr"] == 0.0
    # random offloading of the base model (0.5 overall at the cap) ranks below the policy (it was above before)
    assert by["random"]["overall_acc"] < by["policy"]["overall_acc"] and by["random"]["apgr"] < by["policy"]["apgr"]
    # CPT(50%): half the .7 gap is an accuracy of .65; the policy's curve reaches .7 at k = 2 calls, a cost of .2
    assert by["policy"]["cpt50"] == 0.2


def test_bootstrap_ci_by_hand():
    from evaluation.metrics import bootstrap_ci

    # every problem right (or every one wrong): every resample has the same accuracy, a zero-width interval at it
    assert bootstrap_ci([True] * 20) == [1.0, 1.0] and bootstrap_ci([0] * 20) == [0.0, 0.0]
    assert bootstrap_ci([]) is None
    # a paired difference of identical rows is 0 on every resample, whatever the rows are
    row = [i % 3 == 0 for i in range(70)]
    assert bootstrap_ci(row, row) == [0.0, 0.0]
    # 70 problems, the rows differ on one: the difference (1/70) is within noise
    other = list(row)
    other[1] = True
    lo, hi = bootstrap_ci(other, row)
    assert lo <= 0.0 <= hi and lo <= 1 / 70 <= hi
    # 70 problems, a right on 50, b on 20 of them: a clear difference, the interval excludes 0
    a, b = [i < 50 for i in range(70)], [i < 20 for i in range(70)]
    lo, hi = bootstrap_ci(a, b)
    assert 0.0 < lo < 30 / 70 < hi
    # seeded: the same draws every time; another seed, (slightly) other bounds; a wider level, a wider interval
    assert bootstrap_ci(a) == bootstrap_ci(a) and bootstrap_ci(a, b) == bootstrap_ci(a, b, seed=0)
    assert bootstrap_ci(a, n=200, seed=1) != bootstrap_ci(a, n=200, seed=2)
    lo95, hi95 = bootstrap_ci(a)
    lo99, hi99 = bootstrap_ci(a, level=0.99)
    assert lo99 <= lo95 < 50 / 70 < hi95 <= hi99
    # a single accuracy's interval is about ± 1.96 standard errors (p = 5/7, n = 70: se = 0.054)
    assert abs((hi95 - lo95) / 2 - 1.96 * (50 / 70 * 20 / 70 / 70) ** 0.5) < 0.02
    import pytest

    with pytest.raises(ValueError, match="same problems"):
        bootstrap_ci([1, 0], [1])


def test_rows_carry_their_ci_and_policy_rows_their_paired_comparisons():
    from evaluation.protocol import suite_rows

    probs = [Problem(f"c{i}", f"What is {i} + 5?", str(i + 5), level=1) for i in range(40)]
    base = [{"output": "x", "escalated": False, "answer": None, "correct": i < 10} for i in range(40)]
    policy = [{"output": "x", "escalated": i in (30, 31, 32, 33), "answer": None, "correct": i < 20} for i in range(40)]
    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), None)
    rows, _ = suite_rows(probs, {"a": policy, "b": base}, base, cloud, 0.1, baselines=("never", "random", "cloud"))
    by = {r["method"]: r for r in rows}
    for r in rows:
        lo, hi = r["overall_ci"]
        assert lo <= r["overall_acc"] <= hi
    assert by["cloud"]["overall_ci"] == [1.0, 1.0]
    comps = by["a"]["comparisons"]
    assert [c["b"] for c in comps] == ["b", "never", "random", "cloud"]  # later policies, then every baseline
    assert [c["b"] for c in by["b"]["comparisons"]] == ["never", "random", "cloud"]
    assert "comparisons" not in by["never"]
    vs_never = comps[1]
    assert abs(vs_never["diff"] - (24 / 40 - 10 / 40)) < 1e-12 and vs_never["significant"] and vs_never["ci"][0] > 0
    same = by["b"]["comparisons"][0]  # b answers exactly as the base model: never's twin
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0] and not same["significant"]
    text = format_table(rows)
    assert (
        f"a - never: +{100 * vs_never['diff']:.1f} pts [+{100 * vs_never['ci'][0]:.1f}, " in text
        and "(beyond noise)" in text
    )
    assert "b - never: +0.0 pts [+0.0, +0.0] (within noise)" in text


def test_in_training_evaluation_rows_carry_ci_and_compare_the_policy_with_its_own_never():
    probs = [Problem(f"t{i}", f"What is {i} + 1?", str(i + 1), level=1) for i in range(10)]
    env = RouteEnv("arithmetic", PlainTok(), CachedCloud(SimulatedCloud(accuracy=1.0), None), few_shot=False)
    outputs = {env.prompt(p): (ESC if i < 3 else f"\\boxed{{{i + 1}}}") for i, p in enumerate(probs)}
    rows, _ = evaluate_route(env, ScriptedGenerator(outputs), probs, budget=0.3, batch_size=4, progress=False)
    assert [r["method"] for r in rows] == ["policy", "policy_never", "policy_random"]
    assert all(r["overall_ci"][0] <= r["overall_acc"] <= r["overall_ci"][1] for r in rows)
    assert [(c["a"], c["b"]) for c in rows[0]["comparisons"]] == [
        ("policy", "policy_never"),
        ("policy", "policy_random"),
    ]
    assert "policy - policy_never: +30.0 pts" in format_table(rows)
