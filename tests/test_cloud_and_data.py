import json

from core.problem import Problem
from envs.tasks import read_math_jsonl
from policies.cloud import CachedCloud, CloudReply, HFCloud, SimulatedCloud
from rewards.math_grader import grade


class CountingCloud(SimulatedCloud):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.asked = []

    def answer_many(self, problems, on_reply=None):
        self.asked += [p.uid for p in problems]
        return super().answer_many(problems, on_reply)


def test_simulated_cloud_accuracy_per_level_and_seeded():
    probs = [Problem(f"p{i}", "q", str(i), level=1 + i % 2) for i in range(2000)]
    cloud = SimulatedCloud(accuracy=0.9, accuracy_per_level={2: 0.2}, seed=7)
    texts = [r.text for r in cloud.answer_many(probs)]
    ok1 = [grade(p.answer, t)[1] for p, t in zip(probs, texts) if p.level == 1]
    ok2 = [grade(p.answer, t)[1] for p, t in zip(probs, texts) if p.level == 2]
    assert 0.86 < sum(ok1) / len(ok1) < 0.94
    assert 0.16 < sum(ok2) / len(ok2) < 0.24
    assert [r.text for r in SimulatedCloud(0.9, {2: 0.2}, seed=7).answer_many(probs[:50])] == texts[:50]


def test_cache_asks_once_and_survives_restart(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    probs = [Problem(f"p{i}", "q", str(i)) for i in range(5)]
    backend = CountingCloud()
    cloud = CachedCloud(backend, path)
    first = cloud.answer_many(probs[:3] + probs[:2])
    assert backend.asked == ["p0", "p1", "p2"] and cloud.usage()["calls"] == 3 and len(cloud) == 3
    assert [r.cached for r in first] == [False, False, False, True, True]
    assert all(r.completion_tokens > 0 for r in first)
    backend2 = CountingCloud()
    again = CachedCloud(backend2, path)
    assert [r.text for r in again.answer_many(probs)[:3]] == [r.text for r in first[:3]]
    assert backend2.asked == ["p3", "p4"]  # nothing already answered is asked again
    u = again.usage()
    assert (u["calls"], u["cache_hits"]) == (2, 3) and len(again) == 5


def test_answer_many_gives_cloud_replies_from_the_backend_and_the_cache_alike(tmp_path):
    """A backend, the cache asking it, and the cache answering from its file all return the same CloudReply."""
    probs = [Problem(f"p{i}", "q", str(i), level=1 + i % 2) for i in range(4)]
    path = str(tmp_path / "c.sqlite")
    direct = SimulatedCloud(seed=3).answer_many(probs)
    asked = CachedCloud(SimulatedCloud(seed=3), path).answer_many(probs)  # through the backend
    backend = CountingCloud(seed=3)
    stored = CachedCloud(backend, path).answer_many(probs)  # from the file
    assert backend.asked == []
    fields = [(r.text, r.prompt_tokens, r.completion_tokens) for r in direct]
    for replies in (direct, asked, stored):
        assert all(isinstance(r, CloudReply) for r in replies)
        assert [(r.text, r.prompt_tokens, r.completion_tokens) for r in replies] == fields
    assert not any(r.cached for r in direct + asked) and all(r.cached for r in stored)
    assert CachedCloud(SimulatedCloud(seed=3), path).answer(probs[1]) == stored[1]


def test_legacy_jsonl_cache_is_still_read(tmp_path):
    path = str(tmp_path / "cloud_cache.jsonl")
    probs = [Problem(f"p{i}", "q", str(i)) for i in range(3)]
    with open(path, "w") as f:
        f.write(json.dumps({"uid": "p0", "backend": "simulated", "text": "legacy \\boxed{0}", "tokens": 2}) + "\n")
        f.write('{"uid": "torn')  # a crash mid-write leaves a torn line
    backend = CountingCloud()
    cloud = CachedCloud(backend, path)
    texts = [r.text for r in cloud.answer_many(probs)]
    assert texts[0] == "legacy \\boxed{0}" and backend.asked == ["p1", "p2"]
    assert cloud.path == str(tmp_path / "cloud_cache.sqlite") and len(cloud) == 3  # migrated beside it
    again = CachedCloud(CountingCloud(), str(tmp_path / "cloud_cache.sqlite"))
    assert [r.text for r in again.answer_many(probs)] == texts


def test_cache_key_covers_backend_identity_and_sampling():
    p = Problem("p0", "What is 2 + 2?", "4")
    assert SimulatedCloud(seed=1).cache_key(p) != SimulatedCloud(seed=2).cache_key(p)
    assert SimulatedCloud(seed=1).cache_key(p) == SimulatedCloud(seed=1).cache_key(p)
    assert HFCloud("m", 64).cache_key(p) != HFCloud("m", 128).cache_key(p)
    assert HFCloud("m", 64).cache_key(p) == HFCloud("m", 64).cache_key(Problem("other-uid", "What is 2 + 2?", "4"))
    assert HFCloud("m", 64).cache_key(p) != HFCloud("m2", 64).cache_key(p)


def test_math_loaders_normalise_fields(tmp_path):
    f = tmp_path / "s.jsonl"
    rows = [
        {"problem": "1+1?", "solution": "It is \\boxed{2}.", "level": "Level 3", "id": "a"},
        {"question": "2+2?", "answer": 4, "id": 9},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    probs = read_math_jsonl(str(f))
    assert [(p.question, p.answer, p.level) for p in probs] == [("1+1?", "2", 3), ("2+2?", "4", 0)]
    f.write_text("{not json\n")
    try:
        read_math_jsonl(str(f))
        raise AssertionError("expected a ValueError")
    except ValueError as e:
        assert ":1" in str(e)


def test_shipped_math500_loads():
    import os

    path = "../shared/data/math500.jsonl"
    if not os.path.exists(path):
        import pytest

        pytest.skip("shared data not beside the checkout")
    probs = read_math_jsonl(path)
    assert len(probs) == 500 and all(p.answer for p in probs)


def test_two_processes_share_one_sqlite_cache(tmp_path):
    """Two processes (as DDP ranks do) answer overlapping problems into the same file at the same time."""
    import subprocess
    import sys

    path = str(tmp_path / "shared.sqlite")
    code = (
        "import sys; from core.problem import Problem; from policies.cloud import CachedCloud, SimulatedCloud\n"
        "lo = int(sys.argv[2]); c = CachedCloud(SimulatedCloud(), sys.argv[1])\n"
        "for i in range(lo, lo + 300): c.answer_many([Problem(f'p{i}', 'q', str(i))])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, path, str(lo)]) for lo in (0, 150)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    backend = CountingCloud()
    cloud = CachedCloud(backend, path)
    assert len(cloud) == 450
    cloud.answer_many([Problem(f"p{i}", "q", str(i)) for i in range(450)])
    assert backend.asked == []
