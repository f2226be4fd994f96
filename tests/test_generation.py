"""The rollout decode loop: the same tokens as HF ``generate``, exact sampling, fixed lengths, the bf16 copy."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from envs.arithmetic import make_problems
from envs.route import RouteEnv
from policies.device import load_tokenizer
from policies.generation import HFGenerator, common_prefix_len, eos_ids, sample_tokens, to_sample


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5], [6]]) == 0


def test_shared_prefix_matches_padded_greedy(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    env = RouteEnv("arithmetic", tok, cloud=None)
    probs = make_problems(9, seed=1, levels=["1+1", "2x2", "3x2"])  # three prompt lengths
    prompts = [env.prompt(p) for p in probs]
    shared = HFGenerator(model, tok, batch_size=4, min_shared_prefix=32).generate(
        prompts, n=2, temperature=0.0, max_new_tokens=12
    )
    padded = HFGenerator(model, tok, batch_size=4, min_shared_prefix=0).generate(
        prompts, n=2, temperature=0.0, max_new_tokens=12
    )
    assert [[s.completion_ids for s in g] for g in shared] == [[s.completion_ids for s in g] for g in padded]
    assert [g[0].prompt_ids for g in shared] == [g[0].prompt_ids for g in padded]
    assert all(len(g) == 2 for g in shared)


def test_sampling_is_seeded(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    env = RouteEnv("arithmetic", tok, cloud=None)
    prompts = [env.prompt(p) for p in make_problems(4, seed=2)]
    gen = HFGenerator(model, tok)
    torch.manual_seed(3)
    a = gen.generate(prompts, n=3, temperature=1.0, max_new_tokens=8)
    torch.manual_seed(3)
    b = gen.generate(prompts, n=3, temperature=1.0, max_new_tokens=8)
    assert [[s.text for s in g] for g in a] == [[s.text for s in g] for g in b]
    assert len({s.text for g in a for s in g}) > 1


def _lively(model, scale=0.3, seed=0):
    """Random weights strong enough that greedy outputs differ from row to row and step to step."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def test_greedy_rows_equal_hf_generate_one_prompt_at_a_time(tiny_model_dir):
    """Our decode loop (shared head, middle padding, prefill once per prompt, finished rows leaving the batch)
    gives each prompt the tokens HF ``generate`` gives it alone, unpadded."""
    tok = load_tokenizer(tiny_model_dir)
    model = _lively(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    env = RouteEnv("arithmetic", tok, cloud=None)
    prompts = [env.prompt(p) for p in make_problems(6, seed=4, levels=["1+1", "3x2", "4+4"])]
    ours = HFGenerator(model, tok, batch_size=4, min_shared_prefix=8).generate(
        prompts, n=2, temperature=0.0, max_new_tokens=10
    )
    eos = eos_ids(model, tok)
    for prompt, group in zip(prompts, ours):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        ref = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = to_sample(tok, ids[0].tolist(), ref[0, ids.shape[1] :].tolist(), eos)
        assert [s.completion_ids for s in group] == [expected.completion_ids] * 2
        assert group[0].truncated == expected.truncated
    assert len({tuple(g[0].completion_ids) for g in ours}) > 1


def test_sample_tokens_draws_from_softmax_and_respects_top_p():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]]).repeat(40000, 1)
    counts = torch.bincount(sample_tokens(logits, temperature=1.0), minlength=5).float() / 40000
    expected = torch.softmax(logits[0], -1)
    assert counts[4] == 0  # a token of probability 0 is never drawn
    assert torch.allclose(counts, expected, atol=0.01)  # 4 standard errors at most 0.01 here
    hot = torch.bincount(sample_tokens(logits, temperature=2.0), minlength=5).float() / 40000
    assert torch.allclose(hot, torch.softmax(logits[0] / 2.0, -1), atol=0.01)
    nucleus = torch.bincount(sample_tokens(logits, temperature=1.0, top_p=0.7), minlength=5).float() / 40000
    assert nucleus[2:].sum() == 0  # p = .64, .24: the first two tokens reach 0.7
    assert abs(nucleus[0] - expected[0] / expected[:2].sum()) < 0.01
    assert sample_tokens(logits[:3], temperature=0.0).tolist() == [0, 0, 0]


def test_sample_tokens_reaches_tail_tokens_a_float32_cdf_drops(monkeypatch):
    """Over a 49k vocabulary a float32 cumulative sum near 1 moves in steps of 6e-8, so a token whose probability
    is below half a step adds nothing to it and can never be drawn; the float64 CDF gives every token its interval."""
    torch.manual_seed(0)
    logits = torch.randn(49152) * 3
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = probs.cumsum(dim=-1)
    cdf32 = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    unreachable = torch.nonzero(cdf32[1:] == cdf32[:-1]).squeeze(1) + 1  # an empty step of the float32 CDF
    assert len(unreachable) > 1000  # thousands of tokens, about 9000 here
    tokens = unreachable[-5:]  # the deepest in the CDF, where its steps are coarsest
    middle = (cdf[tokens - 1] + probs[tokens] / 2) / cdf[-1]  # u at the middle of each token's float64 interval

    def rand(shape, *, device=None, dtype=torch.float32):  # the uniform draw, placed by hand
        return middle.to(dtype).reshape(shape)

    monkeypatch.setattr(torch, "rand", rand)
    assert sample_tokens(logits.repeat(5, 1), temperature=1.0).tolist() == tokens.tolist()


def test_min_new_tokens_forces_length_and_stops_on_eos_after(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.eos_token_id] = 50.0
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)  # a model that always wants EOS
    prompts = ["What is 1+1?", "What is 12*3?"]
    eager = HFGenerator(model, tok).generate(prompts, n=2, temperature=1.0, max_new_tokens=9)
    assert all(len(s.completion_ids) == 1 and not s.truncated for g in eager for s in g)
    forced = HFGenerator(model, tok, min_new_tokens=5).generate(prompts, n=2, temperature=1.0, max_new_tokens=9)
    assert all(len(s.completion_ids) == 6 and s.completion_ids[-1] == tok.eos_token_id for g in forced for s in g)


def test_bf16_rollout_copy_follows_the_policy_weights(tiny_model_dir):
    """``dtype=bfloat16`` samples from a bf16 copy that is refreshed whenever the policy's weights change."""
    tok = load_tokenizer(tiny_model_dir)
    model = _lively(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    prompts = ["What is 1+1?", "What is 12*3?", "What is 7-2?"]
    gen = HFGenerator(model, tok, dtype="bfloat16")

    def reference():
        low = copy.deepcopy(model)
        for p in low.parameters():
            p.data = p.data.to(torch.bfloat16)
        return HFGenerator(low, tok).generate(prompts, temperature=0.0, max_new_tokens=8)

    first = gen.generate(prompts, temperature=0.0, max_new_tokens=8)
    assert [g[0].completion_ids for g in first] == [g[0].completion_ids for g in reference()]
    assert next(model.parameters()).dtype == torch.float32  # the policy itself is untouched
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # an in-place update, as the trainer's optimizer makes
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 0.5
    opt.step()
    second = gen.generate(prompts, temperature=0.0, max_new_tokens=8)
    assert [g[0].completion_ids for g in second] == [g[0].completion_ids for g in reference()]
    assert [g[0].completion_ids for g in second] != [g[0].completion_ids for g in first]
    with pytest.raises(ValueError, match="rollout dtype"):
        HFGenerator(model, tok, dtype="int8")
