"""The query environment: stop/resume at </query>, token-exact masks, call limits, rewards, eval cap, training."""

import json
import os
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from core.problem import Problem
from envs.query import CALL_LIMIT_TEXT, QueryEnv, QueryRollout, device_text, response_text
from envs.rollout import Group
from policies.calculator import answer_query
from policies.cloud import CachedCloud, SimulatedCloud, cloud_messages, query_problem
from policies.device import load_tokenizer
from policies.generation import Continuation, HFGenerator, Sample, completes_stop
from rewards.collaboration import query_reward
from rl.filtering import classify

ESC = "<unknown> I need external assistance </unknown>"


class ScriptedExtender:
    """Stands in for the model (not for the code under test): a row of problem q writes ``scripts[q][r][k]`` as its
    k-th turn, k = the number of <response>s in its context, r = the script whose earlier turns it wrote.  In a turn,
    ``{first}``/``{last}`` stand for the first/last inserted response.  A turn is cut to the row's budget; a turn
    ending in </query> stops there ("stop"), one ending in the EOS token is "eos"."""

    def __init__(self, tok, env, problems, scripts):
        self.tok, self.calls = tok, []
        self.by_prompt = {
            tuple(tok(env.prompt(p), add_special_tokens=False)["input_ids"]): scripts[p.uid] for p in problems
        }

    def extend(self, contexts, max_new_tokens, temperature=1.0, top_p=1.0, stop=None, logits_processor=None):
        self.calls.append([list(c) for c in contexts])
        out, taken = [], {}
        for ctx, budget in zip(contexts, max_new_tokens):
            prompt = next(k for k in self.by_prompt if tuple(ctx[: len(k)]) == k)
            completion = self.tok.decode(ctx[len(prompt) :])
            responses = re.findall(r"<response>(.*?)</response>", completion)
            own = re.sub(r"<response>.*?</response>", "", completion)
            rows = [
                s for s in self.by_prompt[prompt] if len(s) > len(responses) and "".join(s[: len(responses)]) == own
            ]
            j = taken.setdefault((prompt, completion), 0)  # rows with the same past take the matching scripts in order
            taken[(prompt, completion)] += 1
            text = rows[j][len(responses)]
            text = text.replace("{first}", responses[0] if responses else "").replace(
                "{last}", responses[-1] if responses else ""
            )
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) > budget:
                out.append(Continuation(ids[:budget], "length"))
            else:
                out.append(
                    Continuation(
                        ids,
                        "eos" if text.endswith("<|im_end|>") else ("stop" if text.endswith("</query>") else "length"),
                    )
                )
        return out


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _env(tok, cloud=None, **kw):
    return QueryEnv("arithmetic", tok, cloud or CachedCloud(SimulatedCloud(accuracy=1.0), None), few_shot=False, **kw)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


P = Problem("q1", "What is 37 * 46?", "1702", level=6)


def test_multi_call_rollout_is_token_exact_and_masks_only_cloud_tokens(tok):
    env = _env(tok)
    turns = ["Hmm <query>37 * 46</query>", " check <query>1+1</query>", " so \\boxed{1702}<|im_end|>"]
    gen = ScriptedExtender(tok, env, [P], {"q1": [turns]})
    (g,) = env.rollout(gen, [P], group_size=1, max_new_tokens=200)
    r = g.rollouts[0]
    t1, t2, t3 = (_ids(tok, t) for t in turns)
    r1, r2 = _ids(tok, "<response>1702</response>"), _ids(tok, "<response>2</response>")
    assert r.sample.completion_ids == t1 + r1 + t2 + r2 + t3
    assert r.sample.loss_mask == [1] * len(t1) + [0] * len(r1) + [1] * len(t2) + [0] * len(r2) + [1] * len(t3)
    assert r.sample.prompt_ids == _ids(tok, env.prompt(P))
    # stop/resume: three generation rounds, each resumed from exactly the previous context
    prompt = r.sample.prompt_ids
    assert gen.calls == [[prompt], [prompt + t1 + r1], [prompt + t1 + r1 + t2 + r2]]
    assert r.queries == ["37 * 46", "1+1"] and r.calls == 2 and r.refused == 0
    assert r.local_correct and r.correct and not r.unaided_correct and not r.escalated
    assert not r.sample.truncated
    assert g.cloud_correct  # solved with help: D2 material when no unaided rollout is right


def test_cloud_numbers_are_not_the_device_answer(tok):
    env = _env(tok)
    turns = ["<query>37 * 46</query>", " done<|im_end|>"]
    (g,) = env.rollout(ScriptedExtender(tok, env, [P], {"q1": [turns]}), [P], 1, max_new_tokens=100)
    r = g.rollouts[0]
    assert "1702" in r.sample.text and not r.local_correct  # the device never wrote the answer itself
    assert device_text(r.sample.text).strip() == "done"


def test_batched_rounds_and_call_limit(tok):
    """Three rollouts in one batch; max_queries=1: a second <query> gets 'call limit reached', no call."""
    env = _env(tok, max_queries=1)
    scripts = {
        "q1": [
            ["<query>37 * 46</query>", " <query>2*3</query>", " \\boxed{1702}<|im_end|>"],  # one answered, one refused
            ["\\boxed{1702}<|im_end|>"],  # no call
            ["<query>37*46</query>", " \\boxed{1702}<|im_end|>"],  # one call
        ]
    }
    gen = ScriptedExtender(tok, env, [P], scripts)
    (g,) = env.rollout(gen, [P], group_size=3, max_new_tokens=200)
    a, b, c = g.rollouts
    assert [len(x) for x in gen.calls] == [3, 2, 1]  # finished rows leave the batch
    assert a.queries == ["37 * 46"] and a.refused == 1 and a.calls == 1
    assert CALL_LIMIT_TEXT in a.sample.text and a.sample.text.count("<response>") == 2
    limit_ids = _ids(tok, f"<response>{CALL_LIMIT_TEXT}</response>")
    assert a.sample.loss_mask.count(0) == len(_ids(tok, "<response>1702</response>")) + len(limit_ids)
    assert b.calls == 0 and b.unaided_correct and b.sample.loss_mask == [1] * len(b.sample.completion_ids)
    assert c.calls == 1 and c.correct
    assert all(x.correct for x in g.rollouts)


def test_per_problem_call_limits_refuse_queries_and_escalation(tok):
    env = _env(tok, max_queries=2)
    q2 = Problem("q2", "What is 738 * 56?", "41328", level=7)
    scripts = {"q1": [["<query>37 * 46</query>", " \\boxed{1702}<|im_end|>"]], "q2": [[ESC + "<|im_end|>"]]}
    gen = ScriptedExtender(tok, env, [P, q2], scripts)
    g1, g2 = env.rollout(gen, [P, q2], 1, max_new_tokens=200, call_limits=[0, 0])
    r1, r2 = g1.rollouts[0], g2.rollouts[0]
    assert r1.calls == 0 and r1.refused == 1 and CALL_LIMIT_TEXT in r1.sample.text
    assert r2.wanted_escalation and not r2.escalated and r2.calls == 0 and not r2.correct
    cloud = CachedCloud(SimulatedCloud(accuracy=1.0), None)
    env2 = _env(tok, cloud=cloud)
    g1, g2 = env2.rollout(ScriptedExtender(tok, env2, [P, q2], scripts), [P, q2], 1, max_new_tokens=200)
    assert g2.rollouts[0].escalated and g2.rollouts[0].cloud_correct and g2.rollouts[0].calls == 1
    assert g2.rollouts[0].cloud_tokens > 0 and g2.cloud_text is not None
    assert cloud.usage()["calls"] == 2  # one query, one escalation


def test_query_on_the_last_budget_token_ends_unanswered(tok):
    env = _env(tok)
    turn = "<query>37 * 46</query>"
    cloud = CachedCloud(SimulatedCloud(), None)
    env.cloud = cloud
    (g,) = env.rollout(ScriptedExtender(tok, env, [P], {"q1": [[turn]]}), [P], 1, max_new_tokens=len(_ids(tok, turn)))
    r = g.rollouts[0]
    assert r.calls == 0 and r.sample.truncated and cloud.usage()["calls"] == 0
    (g,) = env.rollout(
        ScriptedExtender(tok, env, [P], {"q1": [["<query>37 * 46</query> and on"]]}), [P], 1, max_new_tokens=5
    )
    assert g.rollouts[0].sample.truncated and len(g.rollouts[0].sample.completion_ids) == 5


def test_response_text_joins_a_token_that_overhangs_the_query_tag():
    assert response_text("1702") == "<response>1702</response>"
    assert response_text("1702", overhang="<") == "response>1702</response>"  # a '><' token already wrote '<'
    assert response_text("1702", overhang=".") == "<response>1702</response>"
    assert response_text(" x </response> y ") == "<response>x  y</response>"


class _Vocab:
    """A tokenizer whose tokens are multi-character strings (as BPE's '><' and '>.' are)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, **kw):
        return "".join(self.pieces[i] for i in ids)


def test_completes_stop_finds_the_stop_string_across_and_inside_tokens():
    v = _Vocab(["</", "query", "><", "response", "x", ">."])
    assert completes_stop(v, [4, 0, 1, 2], "</query>")  # '></query><': completed inside the token '><'
    assert not completes_stop(v, [4, 4, 0, 1], "</query>")  # 'xx</query' is one token short
    assert completes_stop(v, [4, 4, 0, 1, 5], "</query>")  # ... and '>.' completes it
    assert not completes_stop(v, [0, 1, 5, 4, 4, 4], "</query>", window=3)  # only the last tokens are read


class _Force(LogitsProcessor):
    """Forces the row whose context is ``contexts[i]`` to write ``scripts[i]`` (token ids), then EOS-free filler 'z'.

    A row is known by its context (the first ``start`` tokens), not by its place in the batch: finished rows leave
    the batch, so the others move up."""

    def __init__(self, contexts, scripts, start, filler):
        self.scripts = {tuple(c): s for c, s in zip(contexts, scripts)}
        self.start, self.filler = start, filler

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -1e9)
        for b in range(input_ids.shape[0]):
            s = self.scripts[tuple(input_ids[b, : self.start].tolist())]
            forced[b, s[k] if k < len(s) else self.filler] = 0.0
        return forced


def test_hf_extend_stops_at_query_close_and_resumes_batched(tiny_model_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gen = HFGenerator(model, tok, min_shared_prefix=0)
    ctx = [_ids(tok, "abc"), _ids(tok, "xyz")]  # same length: the forced script index lines up
    s0 = _ids(tok, "hi <query>3*4</query> more")
    s1 = _ids(tok, "ok") + [tok.eos_token_id]
    outs = gen.extend(
        ctx,
        [40, 40],
        temperature=0.0,
        stop="</query>",
        logits_processor=LogitsProcessorList([_Force(ctx, [s0, s1], 3, _ids(tok, "z")[0])]),
    )
    assert tok.decode(outs[0].ids) == "hi <query>3*4</query>" and outs[0].reason == "stop"
    assert outs[1].ids == s1 and outs[1].reason == "eos"
    outs = gen.extend(
        ctx,
        [5, 40],
        temperature=0.0,
        stop="</query>",
        logits_processor=LogitsProcessorList([_Force(ctx, [s0, s1], 3, _ids(tok, "z")[0])]),
    )
    assert outs[0].ids == s0[:5] and outs[0].reason == "length"


def test_hf_extend_middle_padding_matches_one_row_at_a_time(tiny_model_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():  # livelier weights, so greedy outputs differ from row to row
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    head = _ids(tok, "<|im_start|>system\nCompute the result and give the final answer. " * 2)
    ctxs = [
        head + _ids(tok, s) for s in ["What is 3+4?", "What is 12 * 345?<query>12</query><response>1</response>", "Hi"]
    ]
    shared = HFGenerator(model, tok, batch_size=8, min_shared_prefix=32).extend(ctxs, [10, 7, 12], temperature=0.0)
    single = [
        HFGenerator(model, tok, min_shared_prefix=0).extend([c], [m], temperature=0.0)[0]
        for c, m in zip(ctxs, [10, 7, 12])
    ]
    assert [o.ids for o in shared] == [o.ids for o in single]
    assert len({tuple(o.ids) for o in single}) == 3


def test_query_mode_on_the_real_tiny_model_runs_batched_rounds(tiny_model_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    env = QueryEnv("arithmetic", tok, CachedCloud(SimulatedCloud(), None), max_queries=2)
    probs = [P, Problem("q2", "What is 3 + 4?", "7", level=1)]
    groups = env.rollout(HFGenerator(model, tok), probs, group_size=3, temperature=1.0, max_new_tokens=12)
    for g in groups:
        for r in g.rollouts:
            assert isinstance(r, QueryRollout) and len(r.sample.loss_mask) == len(r.sample.completion_ids)
            assert sum(r.sample.loss_mask) <= 12


# --------------------------------------------------------------------------- cloud


def test_simulated_cloud_answers_queries_honestly_and_caches_them(tmp_path):
    cloud = CachedCloud(SimulatedCloud(accuracy=0.0), str(tmp_path / "c.sqlite"))
    replies = cloud.answer_queries(["37*46", "What is 37 x 46?", "37*46", "tell me a joke"])
    assert [r.text for r in replies[:3]] == ["1702", "1702", "1702"]  # honest even for a cloud that fails problems
    assert "arithmetic" in replies[3].text
    assert cloud.usage()["calls"] == 3 and replies[2].cached
    q = query_problem("37*46")
    assert q.uid == query_problem(" 37*46 ").uid != query_problem("37*47").uid
    assert cloud_messages(q)[0]["content"] != cloud_messages(P)[0]["content"]  # its own system prompt
    assert cloud.backend.cache_key(q) != cloud.backend.cache_key(Problem(q.uid, "37*46", "1702"))
    again = CachedCloud(SimulatedCloud(accuracy=0.0), str(tmp_path / "c.sqlite"))
    assert again.answer_queries(["37*46"])[0].cached and again.usage()["calls"] == 0


@pytest.mark.parametrize(
    "text,want",
    [
        ("37*46", "1702"),
        ("(12 + 3) * 2", "30"),
        ("7 / 2", "3.5"),
        ("2 ** 10", "1024"),
        ("What is 5 - 9?", "-4"),
        ("__import__('os').system('x')", None),
        ("9 ** 9 ** 9", None),
        ("1 / 0", None),
        ("hello", None),
    ],
)
def test_calculator_is_exact_and_safe(text, want):
    assert answer_query(text) == want


# --------------------------------------------------------------------------- reward, filtering, GAPG masks


@pytest.mark.parametrize(
    "correct,esc,cloud_ok,calls,tokens,charge,expected",
    [
        (True, False, False, 0, 0, "all_escalations", 1.0),
        (True, False, False, 2, 10, "all_escalations", 1.0 - 2 * 0.1 - 10 * 0.01),  # helped: α_a minus the calls
        (False, False, False, 1, 4, "all_escalations", -0.1 - 0.04),
        (False, False, False, 1, 4, "correct_escalations", 0.0),  # a failed attempt pays nothing under eq. 11
        (False, True, True, 1, 0, "all_escalations", 0.4 - 0.1),  # <unknown>: α_c, one call
        (True, True, False, 2, 0, "all_escalations", -0.2),  # escalated: the device's own answer does not count
    ],
)
def test_query_reward_accounting(correct, esc, cloud_ok, calls, tokens, charge, expected):
    got = query_reward(correct, esc, cloud_ok, calls, tokens, 1.0, 0.4, gamma=0.1, gamma_tokens=0.01, charge=charge)
    assert got == pytest.approx(expected)


def _qr(correct, queries=0, escalated=False, cloud_correct=False):
    s = Sample([], [], "", False)
    return QueryRollout(s, escalated, None, correct and not escalated, correct, cloud_correct, queries=["q"] * queries)


def test_filtering_in_query_mode_d1_unaided_d2_helped():
    def group(rolls):
        g = Group(P, rolls, cloud_correct=any((r.local_correct and r.queries) or r.cloud_correct for r in rolls))
        g.rewards = [
            query_reward(r.local_correct, r.escalated, r.cloud_correct, r.calls, 0, 1.0, 0.4, 0.1) for r in rolls
        ]
        return g

    assert classify(group([_qr(True), _qr(False), _qr(True, 1), _qr(False, 2)])) == "d1"
    assert classify(group([_qr(False), _qr(False), _qr(True, 1), _qr(False, 1)])) == "d2"  # solved only with help
    assert classify(group([_qr(False), _qr(False), _qr(False, escalated=True, cloud_correct=True), _qr(False)])) == "d2"
    assert classify(group([_qr(False), _qr(False), _qr(False, 1), _qr(False, 2)])) == "drop"  # nobody solves it


def test_gapg_scores_exactly_the_device_tokens_of_a_multi_call_rollout(tiny_model_dir):
    from conftest import score_with_grads

    from rl.gapg import collate, token_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = list(range(10, 50))
    seqs = [
        (head + [60, 61], [70, 71, 72, 73, 74, 75], [1, 1, 0, 0, 1, 1]),  # device, cloud response, device
        (head + [62], [76, 77], [1, 1]),
        (head + [63, 64], [78, 79, 80], None),  # a route-style sample: every completion token trained
    ]
    ids, attn, mask = collate(seqs, pad_id=0)
    assert mask[0, len(head) + 2 :].tolist()[:6] == [1, 1, 0, 0, 1, 1]
    with torch.no_grad():
        lp = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
        want = (lp * mask[:, 1:]).sum(1)
        by_hand = lp[0, len(head) + 1] + lp[0, len(head) + 2] + lp[0, len(head) + 5] + lp[0, len(head) + 6]
    assert torch.allclose(want[0], by_hand)
    coef = torch.tensor([0.5, -1.0, 0.25])
    full, g_full = score_with_grads(model, seqs, coef, 0)
    shared, g_shared = score_with_grads(model, seqs, coef, len(head))
    assert torch.allclose(full, want, atol=1e-5) and torch.allclose(shared, want, atol=1e-5)
    for n in g_full:
        assert torch.allclose(g_full[n], g_shared[n], atol=1e-5, rtol=1e-4), n
    with pytest.raises(ValueError, match="mask entries"):
        collate([([1], [2, 3], [1])], pad_id=0)


# --------------------------------------------------------------------------- evaluation cap, training


def test_eval_caps_calls_in_dataset_order(tok):
    from evaluation.passes import call_cap_limits
    from evaluation.protocol import evaluate_query
    from evaluation.tables import format_table

    assert call_cap_limits([1, 0, 2, 1, 0, 1], cap=2) == [None, None, 1, 0, None, 0]
    probs = [
        Problem(f"p{i}", f"What is {11 * (i + 1)} * {30 + i}?", str(11 * (i + 1) * (30 + i)), level=1 + i % 2)
        for i in range(5)
    ]
    env = _env(tok)
    scripts = {}
    for i, p in enumerate(probs):
        expr = p.question[len("What is ") : -1]
        if i == 1:  # solved alone
            scripts[p.uid] = [[f"\\boxed{{{p.answer}}}<|im_end|>"]]
        elif i == 2:  # two queries, then copies the first answer
            scripts[p.uid] = [[f"<query>{expr}</query>", f" <query>{expr}</query>", " \\boxed{{first}}<|im_end|>"]]
        else:  # one query, then copies its answer ("call limit reached" when refused: wrong)
            scripts[p.uid] = [[f"<query>{expr}</query>", " \\boxed{{last}}<|im_end|>"]]
    gen = ScriptedExtender(tok, env, probs, scripts)
    rows, records = evaluate_query(env, gen, probs, budget=0.4, batch_size=2, progress=False)  # cap = 2 calls
    policy, free, never = rows
    assert [r["method"] for r in rows] == ["policy", "uncapped", "never"]
    assert free["cloud_calls"] == 5 and free["overall_acc"] == 1.0 and free["calls_per_problem"] == 1.0
    assert policy["cloud_calls"] == 2 and policy["wanted_calls_per_problem"] == 1.0
    # p0 gets its call, p1 needs none, p2 crosses the cap: one of its two queries is answered, p3, p4 get none
    assert [r["calls"] for r in records] == [1, 0, 1, 0, 0]
    assert [r["correct"] for r in records] == [True, True, True, False, False]
    assert policy["overall_acc"] == 0.6 and policy["device_acc"] == pytest.approx(1 / 3)
    assert never["cloud_calls"] == 0 and never["overall_acc"] == 0.2
    assert policy["cloud_tokens_per_problem"] > 0
    assert all(r["overall_ci"][0] <= r["overall_acc"] <= r["overall_ci"][1] for r in rows)
    assert [(c["a"], c["b"]) for c in policy["comparisons"]] == [("policy", "uncapped"), ("policy", "never")]
    assert abs(policy["comparisons"][1]["diff"] - 0.4) < 1e-12
    assert "calls/p" in format_table(rows) and "policy - never: +40.0 pts" in format_table(rows)


def test_train_query_mode_end_to_end(tiny_model_dir, tmp_path):
    import train

    out = str(tmp_path / "q")
    args = [
        f"model.name_or_path={tiny_model_dir}",
        "rl.env=query",
        "rl.max_queries=1",
        "task.name=arithmetic",
        "task.num_train=32",
        "rl.gamma_controller=dual",  # dual ascent on the sampled usage; the PID's probe has its own tests
        "task.num_test=6",
        "task.levels=[1+1,2x2]",
        "rl.group_size=4",
        "rl.rollout_prompts=4",
        "rl.batch_prompts=4",
        "rl.max_new_tokens=8",
        "rl.max_prompt_tokens=1024",
        "rl.filtering=false",
        "rl.gamma=0.05",
        "rl.gamma_lr=0.5",
        "train.learning_rate=1e-2",
        "train.wandb=false",
        "train.eval_max_new_tokens=6",
        "train.eval_before=false",
        f"train.output_dir={out}",
        "train.max_steps=2",
        "train.save_every=0",
    ]
    assert train.main(args) == 0
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"calls_per_rollout", "queries_per_rollout", "cloud_tokens_per_rollout", "calls_by_level"} <= set(m)
    a, b = metrics
    assert b["gamma"] == pytest.approx(max(0.0, a["gamma"] + 0.5 * (a["calls_per_rollout_global"] - 0.3)))
    rows = json.load(open(os.path.join(out, "eval", "final.json")))
    assert [r["method"] for r in rows] == ["policy", "uncapped", "never"]
    assert rows[0]["cloud_calls"] <= int(0.3 * 6) and "calls_per_problem" in rows[0]
    assert json.load(open(os.path.join(out, "config.json")))["rl"]["env"] == "query"


def test_eval_cli_query_mode_rows_and_samples(tiny_model_dir, tmp_path, capsys):
    import eval as evalmod

    out = str(tmp_path / "ev")
    argv = [
        "--model",
        tiny_model_dir,
        "rl.env=query",
        "task.levels=[1+1,1x1]",
        "task.num_test=6",
        "train.wandb=false",
        "--max-new-tokens",
        "5",
        "--batch-size",
        "4",
        "--baselines",
        "never,random,cloud",
        "--out",
        out,
    ]
    assert evalmod.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = summary["suites"]["arithmetic"]
    assert summary["env"] == "query"
    assert [r["method"] for r in rows] == ["policy", "policy/uncapped", "policy/never", "cloud"]
    assert all("calls_per_problem" in r for r in rows[:3]) and rows[-1]["cloud_calls"] == 6
    assert "calls/p" in printed and "has no random baseline rows (route mode only)" in printed
    assert (
        summary["row_models"]["policy/never"] == tiny_model_dir
        and f"rows: policy, policy/uncapped, policy/never={tiny_model_dir}; cloud=simulated cloud" in printed
    )
    assert [(c["a"], c["b"]) for c in summary["comparisons"]["arithmetic"]] == [
        ("policy", "policy/uncapped"),
        ("policy", "policy/never"),
    ]
    samples = [json.loads(line) for line in open(os.path.join(out, "arithmetic", "samples.jsonl"))]
    assert len(samples) == 6 and {"calls", "queries", "uncapped", "never"} <= set(samples[0]["policy"])
