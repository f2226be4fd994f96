"""The ablation's advantage estimators (rl/advantages.py) against hand computations, and in the update."""

import pytest
import torch

from rl.advantages import advantage_coefficients, length_normalisers


def test_grpo_help_names_trl_loss_type_and_its_real_default():
    import dataclasses

    from trl import GRPOConfig

    from settings import RLConfig

    help_text = next(f for f in dataclasses.fields(RLConfig) if f.name == "advantage").metadata["help"]
    trl_default = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type").default
    assert trl_default != "grpo"  # TRL 1.16: dapo
    assert "TRL's default:" not in help_text and "loss_type='grpo'" in help_text
    assert f"loss_type defaults to '{trl_default}'" in help_text


def test_gapg_grpo_and_dr_grpo_coefficients_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.4, 0.4], [0.4, 0.4, 0.4, 0.4]])
    # group 0: mean 0.45, centred [.55, -.45, -.05, -.05]; sample std sqrt((.3025+.2025+.0025+.0025)/3) = .41231
    centred = torch.tensor([0.55, -0.45, -0.05, -0.05])
    gapg = advantage_coefficients(r, "gapg")
    assert torch.allclose(gapg[0], centred / 3) and torch.equal(gapg[1], torch.zeros(4))
    dr = advantage_coefficients(r, "dr_grpo")
    assert torch.allclose(dr[0], centred / 4) and torch.equal(dr[1], torch.zeros(4))
    grpo = advantage_coefficients(r, "grpo")
    assert torch.allclose(grpo[0], centred / (0.412311 + 1e-4) / 4, atol=1e-6)
    assert torch.equal(grpo[1], torch.zeros(4))  # equal rewards: std 0, and no signal rather than 0/0


def test_grpo_weighs_a_near_tie_as_much_as_a_decisive_group():
    """Std normalisation: one escalation worth 0.3 among G local failures gets the same push as a clear win."""
    near_tie = torch.tensor([[0.3, 0.0, 0.0, 0.0]])
    decisive = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    g = advantage_coefficients(near_tie, "grpo")[0, 0] / advantage_coefficients(decisive, "grpo")[0, 0]
    assert g == pytest.approx(1.0, abs=1e-3)
    p = advantage_coefficients(near_tie, "gapg")[0, 0] / advantage_coefficients(decisive, "gapg")[0, 0]
    assert p == pytest.approx(0.3)


def test_length_normalisers():
    assert length_normalisers("gapg", [3, 7], 64).tolist() == [1.0, 1.0]
    assert length_normalisers("grpo", [3, 7, 0], 64).tolist() == [3.0, 7.0, 1.0]  # an empty response: no 0/0
    assert length_normalisers("dr_grpo", [3, 7], 64).tolist() == [64.0, 64.0]
    with pytest.raises(ValueError, match="use one of"):
        advantage_coefficients(torch.zeros(1, 2), "ppo")


@pytest.mark.parametrize("estimator", ["gapg", "grpo", "dr_grpo"])
def test_the_update_uses_the_chosen_estimator(tiny_model_dir, estimator):
    """policy_update's loss is −1/P Σ c_i log π(y_i) / n_i with the estimator's c and n."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from core.problem import Problem
    from envs.rollout import Group, Rollout
    from policies.device import load_tokenizer
    from policies.generation import Sample
    from rl.gapg import score_sequences
    from rl.trainer import policy_update
    from settings import load_config

    tok = load_tokenizer(tiny_model_dir)
    prompt = tok("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    completions = [tok(t, add_special_tokens=False)["input_ids"] for t in ["so 5", "it is 6", "5", "maybe 7 or 8"]]
    rewards = [1.0, 0.0, 1.0, 0.3]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logp = score_sequences(model, [(prompt["input_ids"], c) for c in completions], tok.pad_token_id, "cpu")
    cfg = load_config(None, ["train.micro_batch_size=4", f"rl.advantage={estimator}", "rl.max_new_tokens=16"])
    rolls = [Rollout(Sample(prompt["input_ids"], c, "", False), False, None, False) for c in completions]
    group = Group(Problem("p", "What is 2 + 3?", "5"), rolls, rewards=rewards)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = policy_update(model, opt, Accelerator(cpu=True), [group], cfg, tok.pad_token_id)
    c = advantage_coefficients(torch.tensor([rewards]), estimator)[0]
    n = length_normalisers(estimator, [len(x) for x in completions], 16)
    assert loss == pytest.approx(float(-(c * logp / n).sum()), rel=1e-5)
    if estimator != "gapg":  # and it differs from GAPG's
        gapg = advantage_coefficients(torch.tensor([rewards]), "gapg")[0]
        assert abs(loss - float(-(gapg * logp).sum())) > 1e-3
