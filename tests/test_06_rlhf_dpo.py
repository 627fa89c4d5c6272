"""06_rlhf_dpo: every formula on a hand-computed example, the ground-truth judge, a few-step DPO run and a
few-step GRPO run on tiny models built here, and one-line errors for bad input.

The numbers in the hand-computed tests are worked out in the comments beside them, so a failing test
says which formula broke. The tiny runs use a BPE tokenizer and a GPT of ~40k parameters made here
(no pipeline): they check that the training loops move the quantity they optimize, with fixed seeds.
"""
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bpe import BPETokenizer
from chat_template import encode_chat, encode_prompt, lm_inputs
from checkpoint_io import save_checkpoint
from common import UserError, write_jsonl, write_manifest
from gpt import GPT, GPTConfig

import dpo
import grpo
import policy_io
import ppo
import preference_data
import reward_model
import rule_judge
from rl_common import (clipped_policy_loss, group_normalized_advantages, k3_kl, masked_mean, masked_normalize,
                       masked_whiten, microbatch_train_step, no_baseline_loss, pad_responses, policy_gradient_loss,
                       reinforce_with_baseline_loss, response_log_probs, token_entropy)

REPO = Path(__file__).resolve().parents[1]


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# ----------------------------------------------------------------------------------------------
# hand-computed formulas

def test_bradley_terry_loss_by_hand():
    # −log σ(2 − 0) = log(1 + e^−2) = 0.126928;  −log σ(0 − 1) = log(1 + e) = 1.313262;  mean 0.720095
    assert close(reward_model.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])), 0.720095)
    assert close(reward_model.bradley_terry_loss(torch.tensor([3.0]), torch.tensor([3.0])), math.log(2))
    # only the difference matters: adding a constant to both rewards changes nothing
    assert close(reward_model.bradley_terry_loss(torch.tensor([102.0]), torch.tensor([100.0])), 0.126928)


def test_gae_on_a_four_step_trajectory_with_a_terminal_reward():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8]])
    mask = torch.ones(1, 4)
    # γ = 0.9, λ = 0.8, γλ = 0.72
    # δ3 = 1 − 0.8 = 0.2 (no V after the end); δ2 = 0.9·0.8 − 0.7 = 0.02; δ1 = 0.9·0.7 − 0.6 = 0.03; δ0 = 0.9·0.6 − 0.5 = 0.04
    # A3 = 0.2; A2 = 0.02 + 0.72·0.2 = 0.164; A1 = 0.03 + 0.72·0.164 = 0.14808; A0 = 0.04 + 0.72·0.14808 = 0.1466176
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert close(adv, [[0.1466176, 0.14808, 0.164, 0.2]])
    assert close(ret, [[0.6466176, 0.74808, 0.864, 1.0]])                   # R = A + V
    # λ = 1: the Monte-Carlo return γ^(3−t)·1 minus V_t
    adv1, _ = ppo.gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert close(adv1, [[0.729 - 0.5, 0.81 - 0.6, 0.9 - 0.7, 1.0 - 0.8]])
    # the same trajectory after 2 prompt positions and before 3 padding positions in a wider row: same numbers there, 0 elsewhere
    wide_r, wide_v, wide_m = torch.zeros(1, 9), torch.full((1, 9), 7.0), torch.zeros(1, 9)
    wide_r[0, 2:6], wide_v[0, 2:6], wide_m[0, 2:6] = rewards[0], values[0], 1
    wide_adv, _ = ppo.gae(wide_r, wide_v, wide_m, gamma=0.9, lam=0.8)
    assert close(wide_adv[0, 2:6], adv[0]) and wide_adv[0, :2].abs().sum() == 0 and wide_adv[0, 6:].abs().sum() == 0


def test_token_rewards_put_the_score_on_the_last_response_token():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    lp, ref = torch.full((2, 5), -1.0), torch.full((2, 5), -1.5)            # log π − log π_ref = 0.5 per token
    r, log_ratio = ppo.token_rewards(torch.tensor([2.0, -1.0]), lp, ref, mask, kl_coef=0.1)
    assert close(r, [[0, -0.05, -0.05, 2 - 0.05, 0], [0, 0, -1 - 0.05, 0, 0]])
    assert close(log_ratio.sum(1), [1.5, 0.5])


@pytest.mark.parametrize("adv, ratio, loss, clipped", [
    (1.0, 1.1, -1.1, False),    # inside [0.8, 1.2]: the plain ratio·A
    (1.0, 1.5, -1.2, True),     # A > 0, ratio above 1 + ε: capped at 1.2·A, no gradient
    (1.0, 0.5, -0.5, False),    # A > 0, ratio below 1 − ε: min picks the unclipped 0.5 (a mistake is still corrected)
    (-1.0, 0.9, 0.9, False),    # inside, negative advantage
    (-1.0, 0.5, 0.8, True),     # A < 0, ratio below 1 − ε: min(−0.5, −0.8) = −0.8, capped
    (-1.0, 1.5, 1.5, False),    # A < 0, ratio above 1 + ε: min(−1.5, −1.2) = −1.5, unclipped
])
def test_ppo_clipped_objective_inside_and_outside_the_range(adv, ratio, loss, clipped):
    old = torch.tensor([[math.log(0.4)]])
    new = (old + math.log(ratio)).requires_grad_(True)
    got, meta = clipped_policy_loss(torch.tensor([[adv]]), new, old, clip_eps=0.2)
    assert close(got, [[loss]]) and bool(meta["clipped"]) == clipped and close(meta["ratio"], [[ratio]])
    got.sum().backward()
    # d(−ρA)/d log π = −ρA where unclipped; exactly 0 where the clipped term is taken
    assert close(new.grad, [[0.0 if clipped else -ratio * adv]])


def test_policy_gradient_losses_by_name():
    lp = torch.tensor([[-1.0, -2.0]])
    assert close(no_baseline_loss(torch.tensor([[3.0]]), lp), [[3.0, 6.0]])                         # −R·log π
    assert close(reinforce_with_baseline_loss(torch.tensor([[-0.5]]), lp), [[-0.5, -1.0]])          # −A·log π
    for kind in ("no_baseline", "reinforce_with_baseline", "grpo_clip"):
        loss, _ = policy_gradient_loss(kind, lp, rewards=torch.tensor([[3.0]]), advantages=torch.tensor([[-0.5]]),
                                       old_log_probs=lp, clip_eps=0.2)
        assert loss.shape == (1, 2)
    assert close(policy_gradient_loss("grpo_clip", lp, advantages=torch.tensor([[2.0]]), old_log_probs=lp)[0], [[-2.0, -2.0]])


def test_dpo_ipo_simpo_losses_on_given_log_probs():
    pc, pr, rc, rr = torch.tensor([-5.0]), torch.tensor([-9.0]), torch.tensor([-6.0]), torch.tensor([-8.0])
    # h = (−5 + 6) − (−9 + 8) = 2; DPO: −log σ(0.1·2) = log(1 + e^−0.2) = 0.598139; rewards ±0.1
    loss, chosen, rejected = dpo.preference_loss("dpo", 0.1, pc, pr, rc, rr)
    assert close(loss, [0.598139]) and close(chosen, [0.1]) and close(rejected, [-0.1])
    # IPO: (h − 1/(2β))² = (2 − 5)² = 9
    assert close(dpo.preference_loss("ipo", 0.1, pc, pr, rc, rr)[0], [9.0])
    # SimPO on per-token means: chosen −5 over 5 tokens = −1, rejected −9 over 3 = −3;
    # −log σ(2·(−1) − 2·(−3) − 1) = −log σ(3) = log(1 + e^−3) = 0.048587
    assert close(dpo.preference_loss("simpo", 2.0, torch.tensor([-1.0]), torch.tensor([-3.0]), gamma=1.0)[0], [0.048587])
    # policy = reference: every DPO loss is log 2, whatever the log-probs
    same = dpo.preference_loss("dpo", 0.5, torch.tensor([-3.0, -40.0]), torch.tensor([-7.0, -2.0]),
                               torch.tensor([-3.0, -40.0]), torch.tensor([-7.0, -2.0]))[0]
    assert close(same, [math.log(2)] * 2)


def test_group_normalized_advantages_including_equal_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.25, std (Bessel) sqrt((0.75² + 3·0.25²)/3) = 0.5 -> (1 − 0.25)/0.5 = 1.5, (0 − 0.25)/0.5 = −0.5
    # group 2: all equal -> 0 / (0 + eps) = 0, not nan
    adv, raw, stats = group_normalized_advantages(rewards, group_size=4, eps=1e-6)
    assert close(adv, [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], tol=1e-4) and torch.isfinite(adv).all()
    assert torch.equal(raw, rewards) and stats["frac_zero_std_groups"] == 0.5 and stats["reward_mean"] == 1.125
    adv_mean_only, _, _ = group_normalized_advantages(rewards, group_size=4, normalize_by_std=False)
    assert close(adv_mean_only, [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    with pytest.raises(UserError, match="at least 2"):
        group_normalized_advantages(rewards, group_size=1)


def test_k3_kl_is_zero_for_equal_policies_and_positive_otherwise():
    lp = torch.log(torch.tensor([0.5, 0.1, 0.9]))
    assert torch.equal(k3_kl(lp, lp), torch.zeros(3))
    # r = log 0.25 − log 0.5 = −log 2: e^r − r − 1 = 0.5 + log 2 − 1 = 0.193147
    assert close(k3_kl(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))), [0.193147])
    other = torch.log(torch.tensor([0.2, 0.3, 0.6]))
    assert (k3_kl(lp, other) > 0).all() and (k3_kl(other, lp) > 0).all()


def test_masked_mean_and_normalize_with_and_without_dim():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert close(masked_mean(x, m), 3.0)                         # (1 + 2 + 6) / 3
    assert close(masked_mean(x, m, dim=1), [1.5, 6.0])
    assert close(masked_mean(x, m, dim=0), [1.0, 2.0, 6.0])
    assert close(masked_normalize(x, m, constant=2.0), 4.5)      # 9 / 2
    assert close(masked_normalize(x, m, dim=1, constant=2.0), [1.5, 3.0])
    assert close(masked_normalize(x, m, dim=0), [1.0, 2.0, 6.0])
    w = masked_whiten(x, m)                                      # masked values 1, 2, 6: mean 3, std sqrt(14/3)
    assert close(w[m], (torch.tensor([1.0, 2.0, 6.0]) - 3) / math.sqrt(14 / 3)) and w[~m].abs().sum() == 0


def test_entropy_of_a_uniform_distribution_is_log_v_and_stable():
    assert close(token_entropy(torch.zeros(3, 50)), [math.log(50)] * 3)
    assert close(token_entropy(torch.full((1, 7), 1e4)), [math.log(7)], tol=1e-3)   # shift-invariant, no overflow
    assert close(token_entropy(torch.tensor([[0.0, -1e30, -1e30]])), [0.0])           # one sure token, no nan
    logits = torch.randn(4, 11)
    p = logits.softmax(-1)
    assert close(token_entropy(logits), -(p * p.log()).sum(-1))


def test_microbatch_train_step_masks_averages_and_divides_by_accumulation():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    per_token = lambda: torch.stack([w[0] * torch.tensor([1.0, 2.0, 3.0]), w[1] * torch.tensor([4.0, 5.0, 6.0])])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    # per response: 1·(1 + 2)/2 = 1.5 and 2·(5 + 6)/2 = 11; mean 6.25; / 2 accumulation steps = 3.125
    loss, meta = microbatch_train_step(per_token(), mask, grad_accum_steps=2)
    assert close(loss, 3.125) and close(meta["per_sequence_loss"], [1.5, 11.0])
    assert close(w.grad, [1.5 / 2 / 2, 5.5 / 2 / 2])             # ∂/∂w0 = (3/2)/2/2, ∂/∂w1 = (11/2)/2/2
    w.grad = None
    loss, _ = microbatch_train_step(per_token(), mask, grad_accum_steps=1, normalize_constant=4.0)   # Dr. GRPO: Σ / 4
    assert close(loss, (3 / 4 + 22 / 4) / 2)
