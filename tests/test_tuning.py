"""Task tuning (rl.trainer=sft): cloud augmentation, the three filters, the data mix, and SFT through train.py."""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch

from core.problem import Problem
from envs.arithmetic import make_problems
from envs.augment import augment, parse_pairs
from envs.filters import AnswerVerifier, Candidate, filter_pairs, length_ratio, rouge_l
from envs.format import format_ok
from envs.prompts import ESCALATION
from envs.simulation import TASK_SIMULATOR
from policies.cloud import CLOUD_AUGMENT_SYSTEM, CachedCloud, CloudReply, SimulatedCloud, cloud_messages, request_key
from rl.sft import Example, build_mix, reference_response, unknown_pool
from settings import ConfigError, load_config

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_test.yaml")


def sft_cfg(**kw):
    return load_config(None, ["rl.trainer=sft"] + [f"sft.{k}={v}" for k, v in kw.items()]).sft


def cand(x, y, sx="What is 37 * 46?", sy="37 * 46 = 1702. \\boxed{1702}"):
    return Candidate(sx, sy, x, y)


# ---- format compliance ----------------------------------------------------------------------------


def test_format_ok_answers_and_escalations():
    assert format_ok("3 + 4 = 7. \\boxed{7}", "arithmetic")
    assert format_ok(ESCALATION, "arithmetic")
    assert format_ok("Step 1: hard. " + ESCALATION, "math")
    assert not format_ok("3 + 4 = 7", "arithmetic")  # no \boxed{}
    assert not format_ok("\\boxed{7", "arithmetic")  # unclosed
    assert not format_ok("\\boxed{7} <unknown> I need", "arithmetic")  # a tag that is not a final escalation
    assert not format_ok("<unknown> a </unknown> <unknown> b </unknown>", "arithmetic")  # two tags
    assert format_ok("<think> x </think>\n<answer> 1 + 2 </answer>", "countdown")
    assert not format_ok("\\boxed{3}", "countdown")


# ---- parsing the cloud's reply --------------------------------------------------------------------


def test_parse_pairs_tolerates_llm_formatting():
    reply = (
        "Sure! Here are the pairs:\n\n"
        "1. **Input:** What is 12 * 31?\n**Response:** 12 * 31 = 372. \\boxed{372}\n\n"
        "2. Input: [What is 45 * 22?]\nResponse: [45 * 22 = 990. \\boxed{990}]\n"
        "Input: Find x if 2x = 6.\nResponse: Step 1: divide by 2.\nStep 2: x = 3. \\boxed{3}\n"
        "Input: a question with no response\n"
    )
    pairs = parse_pairs(reply)
    assert pairs == [
        ("What is 12 * 31?", "12 * 31 = 372. \\boxed{372}"),
        ("What is 45 * 22?", "45 * 22 = 990. \\boxed{990}"),
        ("Find x if 2x = 6.", "Step 1: divide by 2.\nStep 2: x = 3. \\boxed{3}"),  # a multi-line solution stays whole
    ]
    assert parse_pairs(reply, k=2) == pairs[:2]
    assert parse_pairs("I cannot help with that.") == []


# ---- the three filters on hand-made pairs ---------------------------------------------------------


def test_token_diversity_filter_drops_near_copies():
    cfg = sft_cfg(rouge_l_max=0.7)
    copy = cand("What is 37 * 46?", "37 * 46 = 1702. \\boxed{1702}")  # ROUGE-L 1.0
    one_operand = cand("What is 37 * 45?", "37 * 45 = 1665. \\boxed{1665}")  # 3 of 4 words: 0.75
    fresh = cand("What is 82 * 19?", "82 * 19 = 1558. \\boxed{1558}")  # 2 of 4 words: 0.5
    assert rouge_l("What is 37 * 46?", copy.x) == pytest.approx(1.0)
    assert rouge_l("What is 37 * 46?", one_operand.x) == pytest.approx(0.75)
    kept, stats = filter_pairs([copy, one_operand, fresh], cfg)
    assert kept == [fresh] and stats["removed"]["diversity"] == 2
    kept, _ = filter_pairs([copy, one_operand, fresh], sft_cfg(rouge_l_max=0.8))  # the threshold decides
    assert kept == [one_operand, fresh]


def test_length_ratio_filter_checks_input_and_response():
    cfg = sft_cfg(rouge_l_max=1.0, length_ratio_min=0.5, length_ratio_max=2.0)
    ok = cand("Compute 82 * 19 please", "82 * 19 = 1558. \\boxed{1558}")
    long_x = cand(
        "What is the product of 82 and 19 when both are multiplied together?", "82 * 19 = 1558. \\boxed{1558}"
    )
    short_y = cand("What is 82 * 19?", "\\boxed{1558}")  # 1 word against 5
    assert length_ratio("What is 37 * 46?", long_x.x) == pytest.approx(13 / 5)
    kept, stats = filter_pairs([ok, long_x, short_y], cfg)
    assert kept == [ok]
    assert stats["removed"] == {"semantic": 0, "diversity": 0, "length": 2}
    assert [c.removed_by for c in (ok, long_x, short_y)] == [None, "length", "length"]


def test_semantic_filter_verifies_answers_per_task():
    cfg = sft_cfg(rouge_l_max=1.0)
    right, wrong = (
        cand("What is 82 * 19?", "82 * 19 = 1558. \\boxed{1558}"),
        cand("What is 82 * 19?", "82 * 19 = 1568. \\boxed{1568}"),
    )
    kept, stats = filter_pairs([right, wrong], cfg, check_answers=AnswerVerifier("arithmetic"))
    assert kept == [right] and stats["removed"]["semantic"] == 1 and stats["semantic_checks"] == ["answer"]
    kept, _ = filter_pairs([right, wrong], cfg)  # no check configured: nothing to verify against
    assert kept == [right, wrong]

    q = "Using the numbers [3, 5, 7, 2], create an equation that equals 17."
    valid = Candidate(q, "", q, "<think> 3 + 7 = 10 </think>\n<answer> (3 + 7) + 5 + 2 </answer>")
    reuses = Candidate(q, "", q, "<answer> 5 * 3 + 2 + (7 - 7) </answer>")  # 17, but 7 twice
    plain = Candidate(q, "", q, "<answer> 3 + 5 + 7 + 2 </answer>")  # 17, each number once
    wrong = Candidate(q, "", q, "<answer> 3 * 5 * 7 * 2 </answer>")  # 210
    assert AnswerVerifier("countdown")([valid, reuses, plain, wrong]) == [True, False, True, False]

    class Solver:  # the cloud's independent solution of a synthetic MATH problem
        def answer_many(self, problems):
            texts = ["Step 1: ... \\boxed{\\frac{1}{2}}" if "half" in p.question else "no idea" for p in problems]
            return [CloudReply(t) for t in texts]

    agree = Candidate("", "", "What is half of one?", "Step 1: 1/2. \\boxed{0.5}")
    disagree = Candidate("", "", "What is half of three?", "\\boxed{1.5}")
    unsolved = Candidate("", "", "Something else", "\\boxed{2}")
    assert AnswerVerifier("math", Solver())([agree, disagree, unsolved]) == [True, False, False]
    assert AnswerVerifier("math", None)([agree]) == [False]  # nothing to verify against


def test_semantic_filter_nli_needs_entailment_both_ways():
    cfg = sft_cfg(rouge_l_max=1.0, scf_threshold=0.6)
    y = "82 * 19 = 1558. \\boxed{1558}"
    a, b, c = cand("What is 82 * 19?", y), cand("What is 11 * 12?", y), cand("Name a colour here.", y)
    # premise -> hypothesis scores: a entails both ways; b only from the original to the synthetic; c neither way
    scores = {
        ("What is 37 * 46?", a.x): 0.9,
        (a.x, "What is 37 * 46?"): 0.8,
        ("What is 37 * 46?", b.x): 0.9,
        (b.x, "What is 37 * 46?"): 0.3,
    }
    calls = []

    def nli(premises, hyps):
        calls.append(len(premises))
        return [scores.get((p, h), 0.1) for p, h in zip(premises, hyps)]

    kept, stats = filter_pairs([a, b, c], cfg, nli=nli)
    assert kept == [a] and stats["removed"]["semantic"] == 2 and calls == [3, 3] and stats["semantic_checks"] == ["nli"]


def _nli_classifier(path: str, entail_index: int) -> str:
    """A local NLI classifier directory (a tiny random BERT, its own WordPiece vocabulary) whose classifier head
    always says the class at index 2 with probability e⁵/(2 + e⁵); ``config.id2label`` names that class
    'ENTAILMENT' when ``entail_index`` is 2, 'CONTRADICTION' otherwise."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    words = "what is a the colour name here 37 46 82 19 11 12 * + ?".split()
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    names = ["NEUTRAL", "CONTRADICTION", "CONTRADICTION"]
    names[entail_index] = "ENTAILMENT"
    size = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    labels = dict(num_labels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    cfg = BertConfig(vocab_size=5 + len(words), **size, **labels)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    model.save_pretrained(path)
    BertTokenizerFast(os.path.join(path, "vocab.txt")).save_pretrained(path)
    return path


def test_semantic_filter_with_a_local_nli_model_reads_its_entailment_class(tmp_path):
    """sft.nli_model's real path: a classifier directory loaded by transformers (NLIScorer); P(entailment) comes
    from the class that config.id2label names, wherever it sits."""
    from envs.filters import NLIScorer

    cfg = sft_cfg(rouge_l_max=1.0, scf_threshold=0.5)
    y = "82 * 19 = 1558. \\boxed{1558}"
    pairs = [cand("What is 82 * 19?", y), cand("What is 11 * 12?", y)]
    likely = NLIScorer(_nli_classifier(str(tmp_path / "entail-at-2"), entail_index=2))
    assert likely(["What is 37 * 46?"], ["What is 82 * 19?"])[0] == pytest.approx(1 / (1 + 2 * math.exp(-5)))
    kept, stats = filter_pairs(pairs, cfg, nli=likely)
    assert kept == pairs and stats["semantic_checks"] == ["nli"]
    unlikely = NLIScorer(_nli_classifier(str(tmp_path / "entail-at-0"), entail_index=0))
    kept, stats = filter_pairs(pairs, cfg, nli=unlikely)
    assert kept == [] and stats["removed"]["semantic"] == 2
    with pytest.raises(OSError, match="sft.nli_model="):
        NLIScorer(str(tmp_path / "missing"))


def test_augmentation_by_an_openai_compatible_cloud_on_loopback(tmp_path):
    """The augmenting cloud's real path (cloud.backend=openai): the augmentation prompt goes over HTTP with the
    example in it, the reply's pairs come back as candidates, and a rerun is served from the cache."""
    from test_cloud_http import MODEL, ScriptedServer

    from policies.cloud import OpenAICloud

    def reply(prompt: str) -> str:
        return (
            "1. Input: What is 41 * 17?\nResponse: 41 * 17 = 697. \\boxed{697}\n\n"
            "2. Input: What is 12 * 11?\nResponse: 12 * 11 = 132. \\boxed{132}\n"
            "3. Input: What is 9 * 9?\nResponse: 81"
        )

    server = ScriptedServer(reply=reply)
    try:
        cloud = CachedCloud(OpenAICloud(server.base_url, MODEL, max_retries=0), str(tmp_path / "cache.sqlite"))
        example = (
            Problem(uid="a:1", question="What is 37 * 46?", answer="1702", level=4),
            "37 * 46 = 1702. \\boxed{1702}",
        )
        cands, stats = augment(cloud, [example], "arithmetic", k=2)
        assert [(c.x, c.y) for c in cands] == [
            ("What is 41 * 17?", "41 * 17 = 697. \\boxed{697}"),
            ("What is 12 * 11?", "12 * 11 = 132. \\boxed{132}"),
        ]  # at most k = 2 of the three pairs
        assert all(c.source_x == "What is 37 * 46?" and c.level == 4 for c in cands)
        sent = server.requests[0]["body"]["messages"][-1]["content"]
        assert "What is 37 * 46?" in sent and "37 * 46 = 1702" in sent and len(server.requests) == 1
        again, _ = augment(cloud, [example], "arithmetic", k=2)
        assert [(c.x, c.y) for c in again] == [(c.x, c.y) for c in cands] and len(server.requests) == 1
    finally:
        server.close()


def test_filter_stats_count_each_filter_in_order():
    cfg = sft_cfg(rouge_l_max=0.7)
    cands = [
        cand("What is 37 * 46?", "37 * 46 = 1700. \\boxed{1700}"),  # wrong AND a copy: counted once, under semantic
        cand("What is 37 * 46?", "37 * 46 = 1702. \\boxed{1702}"),  # a copy
        cand("What is 82 * 19?", "\\boxed{1558}"),  # response too short
        cand("What is 82 * 19?", "82 * 19 = 1558. \\boxed{1558}"),  # kept
    ]
    kept, stats = filter_pairs(cands, cfg, check_answers=AnswerVerifier("arithmetic"))
    assert stats["removed"] == {"semantic": 1, "diversity": 1, "length": 1} and stats["kept"] == 1 == len(kept)
    assert stats["failed_alone"] == {"semantic": 1, "diversity": 2, "length": 1}
    assert sum(stats["removed"].values()) == stats["candidates"] - stats["kept"]


def test_nli_scorer_reads_the_entailment_class(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from envs.filters import NLIScorer

    conf = LlamaConfig.from_pretrained(tiny_model_dir)
    conf.id2label, conf.label2id = (
        {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
        {"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2},
    )
    model = LlamaForSequenceClassification(conf)
    model.save_pretrained(tmp_path / "nli")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "nli")
    nli = NLIScorer(str(tmp_path / "nli"))
    assert nli.entail == 2
    probs = nli(["What is 1 + 2?", "a"], ["What is 2 + 1?", "b c"])
    assert len(probs) == 2 and all(0.0 < p < 1.0 for p in probs)
    conf.id2label, conf.label2id = {0: "A", 1: "B", 2: "C"}, {"A": 0, "B": 1, "C": 2}
    LlamaForSequenceClassification(conf).save_pretrained(tmp_path / "nli")
    with pytest.raises(ValueError, match="entailment"):
        NLIScorer(str(tmp_path / "nli"))


# ---- augmentation through the cloud interface, cached ---------------------------------------------


def _real(n=6, levels=("2x1", "2+2")):
    return [(p, reference_response(p)) for p in make_problems(n, 0, list(levels))]


def test_simulated_augmentation_is_generated_cached_and_as_wrong_as_the_cloud(tmp_path):
    real = _real()
    sim = SimulatedCloud(accuracy=0.6, seed=7, simulator=TASK_SIMULATOR)
    cloud = CachedCloud(sim, str(tmp_path / "cache.sqlite"))
    cands, stats = augment(cloud, real, "arithmetic", k=5)
    assert (
        len(cands) == 30
        and stats["requests"] == 6
        and stats["cloud_calls"] == 6
        and stats["replies_with_fewer_than_k"] == 0
    )
    assert "no LLM" in stats["written_by"]
    by_src = {p.uid: p for p, _ in real}
    for c in cands:  # same level: same operation and digit counts as the source problem
        src = by_src[c.source_uid]
        a, op, b = c.x[len("What is ") : -1].split()
        assert (len(a), op, len(b)) == (
            len(str(src.meta["a"])),
            "+" if src.meta["op"] == "+" else "*",
            len(str(src.meta["b"])),
        )
        assert c.level == src.level and format_ok(c.y, "arithmetic")
    right = AnswerVerifier("arithmetic")(cands)
    assert 0 < right.count(False) < len(cands)  # a 60%-accurate cloud gets some wrong, and the verifier sees which

    again = CachedCloud(
        SimulatedCloud(accuracy=0.6, seed=7, simulator=TASK_SIMULATOR), str(tmp_path / "cache.sqlite")
    )  # a resumed run
    cands2, stats2 = augment(again, real, "arithmetic", k=5)
    assert stats2["cloud_calls"] == 0 and stats2["cache_hits"] == 6
    assert [(c.x, c.y) for c in cands2] == [(c.x, c.y) for c in cands]


class ScriptedLLM:
    """A stand-in for a real LLM backend (hf/openai): keyed by the messages, records what it was sent."""

    name = "scripted"

    def __init__(self):
        self.sent = []

    def cache_key(self, problem):
        return request_key({"name": "scripted"}, cloud_messages(problem), {"temperature": 0.0})

    def answer_many(self, problems, on_reply=None):
        out = []
        for p in problems:
            self.sent.append(cloud_messages(p))
            out.append(
                CloudReply(
                    "Input: What is 61 * 7?\nResponse: 61 * 7 = 427. \\boxed{427}\n"
                    "Input: What is 14 * 3?\nResponse: 14 * 3 = 42. \\boxed{42}",
                    50,
                    30,
                )
            )
        return out


def test_augmentation_prompt_reaches_an_llm_backend_once(tmp_path):
    real = _real(2, ("2x1",))
    llm = ScriptedLLM()
    cands, stats = augment(CachedCloud(llm, str(tmp_path / "c.sqlite")), real, "arithmetic", k=3)
    system, user = llm.sent[0]
    assert system == {"role": "system", "content": CLOUD_AUGMENT_SYSTEM}
    assert "Generate 3 Input and Response pairs semantically similar" in user["content"]
    assert f"Input: {real[0][0].question}\nResponse: {real[0][1]}" in user["content"]  # the example itself
    assert "\\boxed{}" in user["content"]  # the device's answer format is asked for
    assert len(cands) == 4 and stats["replies_with_fewer_than_k"] == 2 and stats["written_by"] == "LLM (scripted)"
    augment(CachedCloud(llm, str(tmp_path / "c.sqlite")), real, "arithmetic", k=3)
    assert len(llm.sent) == 2  # the second run was answered from the cache


def test_hf_backend_augments_through_the_same_path(tiny_model_dir, tmp_path):
    """A local transformers model as the cloud: the request is generated and cached (a random model writes no pairs)."""
    from policies.cloud import HFCloud

    cloud = CachedCloud(HFCloud(tiny_model_dir, max_new_tokens=8), str(tmp_path / "c.sqlite"))
    _, stats = augment(cloud, _real(2, ("1+1",)), "arithmetic", k=2)
    assert stats["cloud_calls"] == 2 and stats["empty_replies"] + stats["replies_with_fewer_than_k"] >= 1
    assert len(cloud) == 2


# ---- the mix ----------------------------------------------------------------------------------------


def test_mix_has_the_configured_unknown_share_and_counts():
    answers = [Example(f"q{i}", "r", "real", f"r{i}") for i in range(30)] + [
        Example(f"s{i}", "r", "synthetic", f"s{i}") for i in range(50)
    ]
    pool = [Problem(f"u{i}", f"hard {i}", "1", level=7) for i in range(40)]
    examples, counts = build_mix(answers, pool, 0.2, seed=0)
    assert (counts["real"], counts["synthetic"], counts["unknown"], counts["total"]) == (30, 50, 20, 100)
    assert counts["unknown_share"] == pytest.approx(0.2)
    unk = [e for e in examples if e.kind == "unknown"]
    assert all(e.response == ESCALATION and e.uid.startswith("u") for e in unk)
    assert len({e.uid for e in unk}) == 20
    assert build_mix(answers, pool, 0.0, seed=0)[1]["unknown"] == 0
    assert [e.uid for e in build_mix(answers, pool, 0.2, seed=0)[0]] == [e.uid for e in examples]  # seeded


def test_mix_warns_when_the_probe_found_too_few_failures(caplog):
    answers = [Example(f"q{i}", "r", "real", f"r{i}") for i in range(40)]
    with caplog.at_level(logging.WARNING):
        _, counts = build_mix(answers, [Problem("u", "hard", "1")], 0.5, seed=0)
    assert counts["unknown"] == 1 and counts["unknown_wanted"] == 40 and "sft.probe_problems" in caplog.text


def test_unknown_pool_takes_failures_of_hard_levels():
    probs = [Problem(f"p{i}", "q", "1", level=1 + i // 4) for i in range(8)]  # level 1: p0-p3, level 2: p4-p7
    rows = {p.uid: {"level": p.level, "solved": s} for p, s in zip(probs, [1, 1, 1, 0, 0, 0, 0, 1])}
    assert [p.uid for p in unknown_pool(probs, rows, 1.0)] == ["p3", "p4", "p5", "p6"]
    assert [p.uid for p in unknown_pool(probs, rows, 0.25)] == ["p4", "p5", "p6"]  # level 1 is solved 75% of the time


def test_reference_responses_are_correct_and_well_formed():
    from envs.countdown import make_problems as countdown_problems
    from envs.tasks import grade_response

    for p in make_problems(14, 3) + countdown_problems(5, 3):
        y = reference_response(p)
        assert grade_response(p, y)[1] and format_ok(y, "countdown" if "numbers" in p.meta else "arithmetic")
    math = Problem("m", "1+1?", "2", meta={"gold_solution": "One plus one is $\\boxed{2}$."})
    assert reference_response(math) == "One plus one is $\\boxed{2}$."
    assert reference_response(Problem("m", "1+1?", "3", meta={"gold_solution": "\\boxed{2}"})) is None


# ---- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("sft.unknown_share=1.0", "sft.unknown_share"),
        ("sft.length_ratio_min=3", "sft.length_ratio_min"),
        ("sft.rouge_l_max=0", "sft.rouge_l_max"),
        ("rl.env=query", "rl.env=route"),
    ],
)
def test_bad_sft_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, ["rl.trainer=sft", override])


def test_gguf_file_on_a_checkpoint_dir_is_a_clear_error(tiny_model_dir):
    from policies.device import resolve_model_path

    with pytest.raises(FileNotFoundError, match="model.gguf_file=null"):
        resolve_model_path(tiny_model_dir, "SmolLM2-135M-Instruct.Q4_1.gguf")


# ---- SFT ----------------------------------------------------------------------------------------------


def test_sft_trains_on_the_response_only_under_the_rl_prompt(tiny_model_dir, tmp_path):
    from trl import SFTTrainer

    from envs.route import RouteEnv
    from policies.device import load_tokenizer
    from rl.sft import sft_config, to_dataset

    cfg = load_config(
        TINY,
        [f"model.name_or_path={tiny_model_dir}", "rl.trainer=sft", f"train.output_dir={tmp_path}", "sft.batch_size=2"],
    )
    tok = load_tokenizer(tiny_model_dir)
    from transformers import AutoModelForCausalLM

    ex = [
        Example("What is 2 + 3?", "2 + 3 = 5. \\boxed{5}", "real", "a"),
        Example("What is 91 * 7?", ESCALATION, "unknown", "b"),
    ]
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=sft_config(cfg),
        train_dataset=to_dataset(ex, "arithmetic", 6),
        processing_class=tok,
    )
    env = RouteEnv("arithmetic", tok, None)
    for e, row in zip(ex, trainer.train_dataset):
        ids, labels = row["input_ids"], row["labels"]
        start = next(i for i, l in enumerate(labels) if l != -100)
        assert tok.decode(ids[:start]) == env.prompt(Problem("x", e.question, ""))  # exactly the RL prompt, no loss
        assert tok.decode(ids[start:]) == e.response + "<|im_end|>\n"  # the loss covers the response and its end token
        assert labels[start:] == ids[start:]


@pytest.mark.slow
def test_train_py_sft_mode_tunes_saves_and_reports(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import train

    out = str(tmp_path / "sft")
    args = [
        "--config",
        TINY,
        f"model.name_or_path={tiny_model_dir}",
        "rl.trainer=sft",
        f"train.output_dir={out}",
        "model.lora=true",
        "model.lora_r=4",
        "model.lora_alpha=8",
        "task.levels=[2x1,1+1]",
        "task.num_train=40",
        "sft.num_real=8",
        "sft.augment_k=3",
        "sft.probe_problems=12",
        "sft.unknown_share=0.25",
        "sft.batch_size=4",
        "rl.max_new_tokens=24",
        "train.max_steps=2",
        "train.learning_rate=1e-2",
        "train.micro_batch_size=2",
        "train.save_every=2",
        "train.eval_before=true",
        "cloud.accuracy=0.7",
    ]
    assert train.main(args) == 0
    stats = json.load(open(os.path.join(out, "sft_data", "stats.json")))
    f, m = stats["filters"], stats["mix"]
    assert stats["augment"]["pairs_parsed"] == 24 == f["candidates"]
    assert sum(f["removed"].values()) == f["candidates"] - f["kept"]
    assert f["removed"]["semantic"] > 0  # the 70%-accurate simulated cloud wrote some wrong answers
    mix = [json.loads(l) for l in open(os.path.join(out, "sft_data", "mix.jsonl"))]
    assert (m["real"], m["synthetic"]) == (8, f["kept"]) and len(mix) == m["total"]
    assert m["unknown"] == min(round(m["unknown_wanted"]), stats["probe"]["unknown_pool"]) > 0
    assert all(r["response"] == ESCALATION for r in mix if r["kind"] == "unknown")
    cands = [json.loads(l) for l in open(os.path.join(out, "sft_data", "candidates.jsonl"))]
    assert sum(c["removed_by"] is None for c in cands) == f["kept"]
    losses = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in losses] == [1, 2] and all("loss" in r for r in losses)
    # final/ is a merged plain model that differs from the start; eval before and after with format compliance
    final = os.path.join(out, "final")
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in k for k in merged.state_dict())
    init, tuned = (
        load_file(os.path.join(tiny_model_dir, "model.safetensors")),
        load_file(os.path.join(final, "model.safetensors")),
    )
    assert any(not torch.equal(init[k], tuned[k]) for k in init)
    for tag in ("before", "final"):
        rows = json.load(open(os.path.join(out, "eval", f"{tag}.json")))
        assert [r["method"] for r in rows] == ["policy", "policy_never", "policy_random"] and 0.0 <= rows[0][
            "format_rate"
        ] <= 1.0
    # RL starts from the tuned checkpoint
    rl_out = str(tmp_path / "rl")
    assert (
        train.main(["--config", TINY, f"model.name_or_path={final}", f"train.output_dir={rl_out}", "train.max_steps=1"])
        == 0
    )
    assert os.path.exists(os.path.join(rl_out, "final", "model.safetensors"))


def test_format_compliance_script(tiny_model_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "format_compliance", os.path.join(os.path.dirname(__file__), "..", "scripts", "format_compliance.py")
    )
    fc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fc)
    rows = [  # an answer right, an answer wrong, a well-formed escalation, an unformatted reply
        {"format_ok": True, "answer": "7", "escalated": False, "correct": True},
        {"format_ok": True, "answer": "8", "escalated": False, "correct": False},
        {"format_ok": True, "answer": None, "escalated": True, "correct": False},
        {"format_ok": False, "answer": None, "escalated": False, "correct": False},
    ]
    m = fc.measure(rows)
    assert (m["format_rate"], m["answer_rate"], m["escalation_rate"], m["device_acc_all"]) == (0.75, 0.5, 0.25, 0.25)
    assert m["device_acc_answered"] == pytest.approx(1 / 3)
    out = tmp_path / "fmt.json"
    assert fc.main(["--config", TINY, "--models", f"tiny={tiny_model_dir}", "--limit", "3", "--out", str(out)]) == 0
    got = json.load(open(out))
    assert [(r["model"], r["prompt"], r["n"]) for r in got["rows"]] == [
        ("tiny", "few-shot", 3),
        ("tiny", "zero-shot", 3),
    ]
