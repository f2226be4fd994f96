import math

import pytest
import torch

from rl.gapg import (
    collate,
    gapg_loss,
    group_advantages,
    score_sequences,
    sequence_logprobs,
    truncated_importance_weights,
)


def test_group_advantages_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.25], [0.0, 0.0, 0.2, 0.2]])
    adv = group_advantages(r)
    # prompt 1: mean 0.3125 -> (0.6875, -0.3125, -0.3125, -0.0625) / 3
    assert torch.allclose(adv[0], torch.tensor([0.6875, -0.3125, -0.3125, -0.0625]) / 3)
    # prompt 2: mean 0.1 -> (-0.1, -0.1, 0.1, 0.1) / 3
    assert torch.allclose(adv[1], torch.tensor([-0.1, -0.1, 0.1, 0.1]) / 3)


def test_gapg_loss_and_gradient_match_hand_computation():
    """2 prompts, G=4: loss = -1/P sum_x 1/(G-1) sum_i (r_i - mean r) log p_i, and d loss / d log p_i = -A_i / P."""
    r = torch.tensor([[1.0, 0.0, 0.0, 0.25], [0.0, 0.0, 0.2, 0.2]])
    logp = torch.tensor([-1.0, -2.0, -3.0, -4.0, -0.5, -1.5, -2.5, -3.5], requires_grad=True)
    loss = gapg_loss(logp, group_advantages(r).flatten(), num_prompts=2)
    a1 = [0.6875, -0.3125, -0.3125, -0.0625]
    a2 = [-0.1, -0.1, 0.1, 0.1]
    expected = (
        -(
            sum(a * l for a, l in zip(a1, [-1, -2, -3, -4])) / 3
            + sum(a * l for a, l in zip(a2, [-0.5, -1.5, -2.5, -3.5])) / 3
        )
        / 2
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, -torch.tensor(a1 + a2) / 3 / 2)


def test_group_advantages_rejects_single_response():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(3, 1))


def test_sequence_logprob_sums_only_device_tokens():
    torch.manual_seed(0)
    ids, attn, mask = collate([([5, 6, 7], [8, 9]), ([5, 6], [8, 9, 10])], pad_id=0)
    assert mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    logits = torch.randn(2, 5, 12)
    lp = torch.log_softmax(logits, -1)
    got = sequence_logprobs(logits, ids, mask)
    want0 = lp[0, 2, 8] + lp[0, 3, 9]  # tokens 8 and 9 predicted at positions 2 and 3
    want1 = lp[1, 1, 8] + lp[1, 2, 9] + lp[1, 3, 10]
    assert torch.allclose(got, torch.stack([want0, want1]))


def test_masked_cloud_tokens_get_no_gradient():
    """A sequence [prompt, device, cloud, device]: logits predicting cloud tokens receive exactly zero gradient."""
    torch.manual_seed(0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 0, 0, 1]])  # positions 4,5 are cloud tokens
    logits = torch.randn(1, 7, 10, requires_grad=True)
    sequence_logprobs(logits, ids, mask).sum().backward()
    grad_norm_per_pos = logits.grad[0].abs().sum(-1)
    # position t predicts token t+1: cloud tokens 4,5 are predicted at positions 3,4; prompt tokens at 0
    assert grad_norm_per_pos[3] == 0 and grad_norm_per_pos[4] == 0 and grad_norm_per_pos[0] == 0
    assert grad_norm_per_pos[1] > 0 and grad_norm_per_pos[2] > 0 and grad_norm_per_pos[5] > 0
    assert grad_norm_per_pos[6] == 0  # last position predicts nothing


def test_shared_prefix_scoring_matches_full_sequences_value_and_gradient(tiny_model_dir):
    from conftest import score_with_grads
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = list(range(10, 50))
    seqs = [(head + [60, 61], [70, 71, 72]), (head + [62], [73, 74]), (head + [63, 64, 65], [75])]
    coef = torch.tensor([0.5, -1.0, 0.25])
    lp_full, g_full = score_with_grads(model, seqs, coef, 0)
    lp_shared, g_shared = score_with_grads(model, seqs, coef, len(head))
    assert torch.allclose(lp_full, lp_shared, atol=1e-5)
    for n in g_full:
        assert torch.allclose(g_full[n], g_shared[n], atol=1e-5, rtol=1e-4), n


def test_scoring_only_the_completion_positions_matches_the_full_logits(tiny_model_dir):
    """score_sequences asks the LM head for the positions from the earliest completion on (logits_to_keep); the
    log-probs and gradients equal those of the full logits, prompts of different lengths and a masked token too."""
    from conftest import score_with_grads
    from transformers import AutoModelForCausalLM

    from rl.gapg import collate, scored_positions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = list(range(10, 40))
    seqs = [(head + [60, 61, 62, 63], [70, 71, 72]), (head + [62], [73, 74], [1, 0]), (head + [63, 64], [75, 76, 77])]
    coef = torch.tensor([0.5, -1.0, 0.25])
    ids, attn, mask = collate(seqs, 0)
    assert scored_positions(seqs, ids.shape[1]) == ids.shape[1] - len(head)  # from the shortest prompt's last token
    model.zero_grad()
    reference = sequence_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids, mask)
    (coef * reference).sum().backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    for shared in (0, len(head)):
        lp, grads = score_with_grads(model, seqs, coef, shared)
        assert torch.allclose(lp, reference.detach(), atol=1e-5)
        for n in g_ref:
            assert torch.allclose(grads[n], g_ref[n], atol=1e-5, rtol=1e-4), (shared, n)


def test_a_reward_at_its_group_mean_has_exactly_zero_coefficient():
    """[1, 1, .4, .4, .4, 0, 0, 0] has mean .4; float32 rounding made .4 − mean = −4e-9, so those three responses
    were scored (and counted in the micro-batch shares) though they add nothing.  They are exactly 0 now."""
    from rl.gapg import group_advantages

    coefs = group_advantages(
        torch.tensor([[1.0, 1.0, 0.4, 0.4, 0.4, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    )
    assert coefs[0, 2:5].tolist() == [0.0, 0.0, 0.0]
    assert int((coefs != 0).sum()) == 13
    assert coefs[0, 0].item() == pytest.approx(0.6 / 7) and coefs[1, 0].item() == pytest.approx(0.875 / 7)
    # genuinely small differences are kept: only float rounding of the mean is zeroed
    small = group_advantages(torch.tensor([[0.001, 0.0]]))
    assert small[0, 0].item() == pytest.approx(0.0005)


def test_truncated_importance_weights_hand_computed():
    logp = torch.tensor([-2.0, -3.0, -1.0], requires_grad=True)
    mu = torch.tensor([-2.0, -3.0 + math.log(2.0), -1.0 - math.log(5.0)])  # ratios 1, 1/2, 5
    w = truncated_importance_weights(logp, mu, cap=2.0)
    assert torch.allclose(w, torch.tensor([1.0, 0.5, 2.0]))  # the last is cut to the cap
    assert not w.requires_grad  # a weight on the gradient, not a term of it


def test_policy_update_weights_sequences_sampled_by_a_low_precision_copy(tiny_model_dir):
    """With ``rollout_logprob`` set, the update's loss is Σ w_i · coef_i · log π(y_i) with w = min(π/μ, cap)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from core.problem import Problem
    from envs.rollout import Group, Rollout
    from policies.device import load_tokenizer
    from policies.generation import Sample
    from rl.trainer import policy_update
    from settings import load_config

    tok = load_tokenizer(tiny_model_dir)
    prompt = tok("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    completions = [tok(f"so {i}", add_special_tokens=False)["input_ids"] for i in range(4)]
    rewards = [1.0, 0.0, 1.0, 0.0]

    def loss_with(behaviour, cap):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = load_config(None, ["train.micro_batch_size=4", f"rl.rollout_is_cap={cap}"])
        rolls = [
            Rollout(Sample(prompt["input_ids"], c, "", False, rollout_logprob=b), False, None, False)
            for c, b in zip(completions, behaviour)
        ]
        group = Group(Problem("p", "What is 2 + 3?", "5"), rolls, rewards=rewards)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        return model, policy_update(model, opt, Accelerator(cpu=True), [group], cfg, tok.pad_token_id)

    model, plain = loss_with([None] * 4, cap=2.0)
    with torch.no_grad():
        logp = score_sequences(model, [(prompt["input_ids"], c) for c in completions], tok.pad_token_id, "cpu")
    coefs = group_advantages(torch.tensor([rewards])).flatten()
    assert plain == pytest.approx(float(-(coefs * logp).sum()), rel=1e-5)
    ratios = torch.tensor([0.5, 1.0, 4.0, 1.5])
    _, weighted = loss_with((logp - ratios.log()).tolist(), cap=2.0)
    assert weighted == pytest.approx(float(-(coefs * ratios.clamp(max=2.0) * logp).sum()), rel=1e-4)
    _, uncorrected = loss_with((logp - ratios.log()).tolist(), cap=0.0)  # cap 0: no correction
    assert uncorrected == pytest.approx(plain, rel=1e-6)
