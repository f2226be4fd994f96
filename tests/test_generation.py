"""Prefix-shared generation gives the same greedy outputs as plain padded batching."""

import torch
from transformers import AutoModelForCausalLM

from envs.arithmetic import make_problems
from envs.route import RouteEnv
from policies.device import load_tokenizer
from policies.generation import HFGenerator, common_prefix_len


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
