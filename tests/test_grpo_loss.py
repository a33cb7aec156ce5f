"""GRPO loss and advantages against an independent plain-Python implementation and hand-computed values."""

import math

import pytest
import torch

from chexone.training.grpo_loss import combine_rewards, group_advantages, grpo_loss, zero_std_groups

# Two sequences, three positions; the second sequence has two completion tokens.
LOGP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, 0.0]]
OLD = [[-1.1, -0.1, -2.0], [-0.9, -1.0, 0.0]]
REF = [[-1.0, -0.7, -1.5], [-0.5, -1.5, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.5, -0.8]
EPS_LO, EPS_HI, BETA = 0.2, 0.28, 0.04


def per_token_python(i, t):
    """Plain-Python reference of one token's loss."""
    ratio = math.exp(LOGP[i][t] - OLD[i][t])
    a = ADV[i]
    clipped = min(max(ratio, 1 - EPS_LO), 1 + EPS_HI)
    surrogate = -min(ratio * a, clipped * a)
    d = REF[i][t] - LOGP[i][t]
    return surrogate + BETA * (math.exp(d) - d - 1)


def reference(loss_type, max_len=4, items=10.0):
    toks = [[per_token_python(i, t) for t in range(3) if MASK[i][t]] for i in range(2)]
    total = sum(sum(x) for x in toks)
    n = sum(len(x) for x in toks)
    return {
        "grpo": sum(sum(x) / len(x) for x in toks) / 2,
        "bnpo": total / n,
        "dr_grpo": total / (2 * max_len),
        "dapo": total / items,
    }[loss_type]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_aggregations_match_plain_python(loss_type):
    logps = torch.tensor(LOGP, requires_grad=True)
    old, ref = torch.tensor(OLD), torch.tensor(REF, requires_grad=True)
    out = grpo_loss(logps, old, torch.tensor(ADV), torch.tensor(MASK), ref_logps=ref, beta=BETA, epsilon_low=EPS_LO,
                    epsilon_high=EPS_HI, loss_type=loss_type, max_completion_length=4, num_items_in_batch=10.0)
    assert out.loss.item() == pytest.approx(reference(loss_type), rel=1e-6)
    out.loss.backward()
    assert logps.grad is not None and logps.grad.abs().sum() > 0
    assert ref.grad is None  # gradients flow only through the policy
    assert logps.grad[1, 2] == 0  # masked token gets no gradient


def test_clip_fractions_counted_by_hand():
    # ratios: seq0 = e^0.1=1.105 (A>0, inside), e^-0.4=0.670 (A>0: low side but A>0 -> not counted), e^0=1
    #         seq1 = e^0.6=1.822 (A<0: high side but A<0 -> not counted), e^-0.2=0.819 (A<0, inside 0.8..)
    out = grpo_loss(torch.tensor(LOGP), torch.tensor(OLD), torch.tensor(ADV), torch.tensor(MASK),
                    epsilon_low=EPS_LO, epsilon_high=EPS_HI)
    assert out.clip_low == 0.0 and out.clip_high == 0.0
    # Now make clipping bind: A>0 with ratio 1.822 (> 1.28) and A<0 with ratio 0.670 (< 0.8)
    logp = torch.tensor([[-0.3, 0.0, 0.0], [-0.5, 0.0, 0.0]])
    old = torch.tensor([[-0.9, 0.0, 0.0], [-0.1, 0.0, 0.0]])
    out = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), torch.tensor([[1, 0, 0], [1, 0, 0]]),
                    epsilon_low=EPS_LO, epsilon_high=EPS_HI)
    assert out.clip_high == pytest.approx(0.5) and out.clip_low == pytest.approx(0.5)
    # on-policy (old == logp): ratio 1, loss = -mean(A) for grpo
    lp = torch.tensor(LOGP)
    out = grpo_loss(lp, lp.clone(), torch.tensor(ADV), torch.tensor(MASK))
    assert out.loss.item() == pytest.approx(-(1.5 - 0.8) / 2)


def test_beta_needs_reference_and_zero_beta_does_not():
    lp = torch.tensor(LOGP)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(lp, lp, torch.tensor(ADV), torch.tensor(MASK), beta=0.1)
    assert grpo_loss(lp, lp, torch.tensor(ADV), torch.tensor(MASK), beta=0.0).kl == 0.0


def test_group_advantages_by_hand():
    rewards = [1.0, 0.0, 0.5, 0.5,   2.0, 2.0, 2.0, 2.0]
    adv, stats = group_advantages(rewards, 4, scale="group", eps=1e-4)
    mean, std = 0.5, math.sqrt(((0.5 ** 2) * 2) / 3)  # unbiased std of [1, 0, .5, .5]
    assert adv[:4].tolist() == pytest.approx([(r - mean) / (std + 1e-4) for r in rewards[:4]], rel=1e-5)
    assert adv[4:].tolist() == [0.0] * 4  # zero-std group: no signal
    assert stats["frac_reward_zero_std"] == 0.5
    none, _ = group_advantages(rewards, 4, scale="none")
    assert none[:4].tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    batch, _ = group_advantages(rewards, 4, scale="batch")
    bstd = torch.tensor(rewards, dtype=torch.float64).std().item()
    assert batch[:4].tolist() == pytest.approx([(r - 0.5) / (bstd + 1e-4) for r in rewards[:4]], rel=1e-5)


def test_none_rewards_get_zero_advantage_and_are_left_out():
    adv, _ = group_advantages([1.0, None, 0.0, None], 4, scale="none")
    assert adv.tolist() == [0.5, 0.0, -0.5, 0.0]
    adv, stats = group_advantages([None, None], 2)
    assert adv.tolist() == [0.0, 0.0]
    assert zero_std_groups([1.0, 1.0, 0.0, 1.0, None, None], 2) == [True, False, True]


def test_combine_rewards_weights_and_none():
    per = {"format": [1.0, 0.0, 1.0], "vqa": [0.5, None, None], "report": [None, None, None]}
    assert combine_rewards(per, {"format": 1.0, "vqa": 2.0, "report": 1.0}) == [2.0, 0.0, 1.0]
    assert combine_rewards({"vqa": [None]}, {"vqa": 1.0}) == [None]
    # weight 0: logged only, contributes nothing and does not make a sample count as scored
    assert combine_rewards(per, {"format": 0.0, "vqa": 1.0, "report": 1.0}) == [0.5, None, None]
