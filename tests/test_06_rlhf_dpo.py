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
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bpe import BPETokenizer
from chat_template import encode_prompt
from common.cli import UserError, run_cli
from common.files import write_jsonl
from common.runs import write_manifest
from forked_cli import run_forked
from resume_check import check_resume_is_bit_exact, kill_at_save
from gpt import GPT, GPTConfig
from world import WorldConfig, build_world

import dpo
import arithmetic_task
import fact_task
import grpo
import overoptimization
import policy_io
import ppo
import preference_data
import reward_model
import reward_scoring
import rl_compare
import rlaif
import rollouts
import rule_judge
from rl_common import (
    clipped_policy_loss,
    group_normalized_advantages,
    k3_kl,
    masked_mean,
    masked_normalize,
    masked_whiten,
    microbatch_train_step,
    no_baseline_loss,
    policy_gradient_loss,
    reinforce_with_baseline_loss,
    token_entropy,
)

REPO = Path(__file__).resolve().parents[1]


def close(a, b, tol=1e-5):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol
    )


# ----------------------------------------------------------------------------------------------
# hand-computed formulas


def test_bradley_terry_loss_by_hand():
    # −log σ(2 − 0) = log(1 + e^−2) = 0.126928;  −log σ(0 − 1) = log(1 + e) = 1.313262;  mean 0.720095
    assert close(
        reward_model.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])), 0.720095
    )
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
    assert close(ret, [[0.6466176, 0.74808, 0.864, 1.0]])  # R = A + V
    # λ = 1: the Monte-Carlo return γ^(3−t)·1 minus V_t
    adv1, _ = ppo.gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert close(adv1, [[0.729 - 0.5, 0.81 - 0.6, 0.9 - 0.7, 1.0 - 0.8]])
    # the same trajectory after 2 prompt positions and before 3 padding positions in a wider row: same numbers there, 0 elsewhere
    wide_r, wide_v, wide_m = torch.zeros(1, 9), torch.full((1, 9), 7.0), torch.zeros(1, 9)
    wide_r[0, 2:6], wide_v[0, 2:6], wide_m[0, 2:6] = rewards[0], values[0], 1
    wide_adv, _ = ppo.gae(wide_r, wide_v, wide_m, gamma=0.9, lam=0.8)
    assert (
        close(wide_adv[0, 2:6], adv[0])
        and wide_adv[0, :2].abs().sum() == 0
        and wide_adv[0, 6:].abs().sum() == 0
    )


def test_token_rewards_put_the_score_on_the_last_response_token():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    lp, ref = torch.full((2, 5), -1.0), torch.full((2, 5), -1.5)  # log π − log π_ref = 0.5 per token
    r, log_ratio = ppo.token_rewards(torch.tensor([2.0, -1.0]), lp, ref, mask, kl_coef=0.1)
    assert close(r, [[0, -0.05, -0.05, 2 - 0.05, 0], [0, 0, -1 - 0.05, 0, 0]])
    assert close(log_ratio.sum(1), [1.5, 0.5])


@pytest.mark.parametrize(
    "adv, ratio, loss, clipped",
    [
        (1.0, 1.1, -1.1, False),  # inside [0.8, 1.2]: the plain ratio·A
        (1.0, 1.5, -1.2, True),  # A > 0, ratio above 1 + ε: capped at 1.2·A, no gradient
        (
            1.0,
            0.5,
            -0.5,
            False,
        ),  # A > 0, ratio below 1 − ε: min picks the unclipped 0.5 (a mistake is still corrected)
        (-1.0, 0.9, 0.9, False),  # inside, negative advantage
        (-1.0, 0.5, 0.8, True),  # A < 0, ratio below 1 − ε: min(−0.5, −0.8) = −0.8, capped
        (-1.0, 1.5, 1.5, False),  # A < 0, ratio above 1 + ε: min(−1.5, −1.2) = −1.5, unclipped
    ],
)
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
    assert close(no_baseline_loss(torch.tensor([[3.0]]), lp), [[3.0, 6.0]])  # −R·log π
    assert close(reinforce_with_baseline_loss(torch.tensor([[-0.5]]), lp), [[-0.5, -1.0]])  # −A·log π
    for kind in ("no_baseline", "reinforce_with_baseline", "grpo_clip"):
        loss, _ = policy_gradient_loss(
            kind,
            lp,
            rewards=torch.tensor([[3.0]]),
            advantages=torch.tensor([[-0.5]]),
            old_log_probs=lp,
            clip_eps=0.2,
        )
        assert loss.shape == (1, 2)
    assert close(
        policy_gradient_loss("grpo_clip", lp, advantages=torch.tensor([[2.0]]), old_log_probs=lp)[0],
        [[-2.0, -2.0]],
    )


def test_dpo_ipo_simpo_losses_on_given_log_probs():
    pc, pr, rc, rr = torch.tensor([-5.0]), torch.tensor([-9.0]), torch.tensor([-6.0]), torch.tensor([-8.0])
    # h = (−5 + 6) − (−9 + 8) = 2; DPO: −log σ(0.1·2) = log(1 + e^−0.2) = 0.598139; rewards ±0.1
    loss, chosen, rejected = dpo.preference_loss("dpo", 0.1, pc, pr, rc, rr)
    assert close(loss, [0.598139]) and close(chosen, [0.1]) and close(rejected, [-0.1])
    # IPO: (h − 1/(2β))² = (2 − 5)² = 9
    assert close(dpo.preference_loss("ipo", 0.1, pc, pr, rc, rr)[0], [9.0])
    # SimPO on per-token means: chosen −5 over 5 tokens = −1, rejected −9 over 3 = −3;
    # −log σ(2·(−1) − 2·(−3) − 1) = −log σ(3) = log(1 + e^−3) = 0.048587
    assert close(
        dpo.preference_loss("simpo", 2.0, torch.tensor([-1.0]), torch.tensor([-3.0]), gamma=1.0)[0],
        [0.048587],
    )
    # policy = reference: every DPO loss is log 2, whatever the log-probs
    same = dpo.preference_loss(
        "dpo",
        0.5,
        torch.tensor([-3.0, -40.0]),
        torch.tensor([-7.0, -2.0]),
        torch.tensor([-3.0, -40.0]),
        torch.tensor([-7.0, -2.0]),
    )[0]
    assert close(same, [math.log(2)] * 2)


def test_group_normalized_advantages_including_equal_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.25, std (Bessel) sqrt((0.75² + 3·0.25²)/3) = 0.5 -> (1 − 0.25)/0.5 = 1.5, (0 − 0.25)/0.5 = −0.5
    # group 2: all equal -> 0 / (0 + eps) = 0, not nan
    adv, raw, stats = group_normalized_advantages(rewards, group_size=4, eps=1e-6)
    assert close(adv, [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], tol=1e-4) and torch.isfinite(adv).all()
    assert (
        torch.equal(raw, rewards) and stats["frac_zero_std_groups"] == 0.5 and stats["reward_mean"] == 1.125
    )
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
    assert close(masked_mean(x, m), 3.0)  # (1 + 2 + 6) / 3
    assert close(masked_mean(x, m, dim=1), [1.5, 6.0])
    assert close(masked_mean(x, m, dim=0), [1.0, 2.0, 6.0])
    assert close(masked_normalize(x, m, constant=2.0), 4.5)  # 9 / 2
    assert close(masked_normalize(x, m, dim=1, constant=2.0), [1.5, 3.0])
    assert close(masked_normalize(x, m, dim=0), [1.0, 2.0, 6.0])
    w = masked_whiten(x, m)  # masked values 1, 2, 6: mean 3, std sqrt(14/3)
    assert close(w[m], (torch.tensor([1.0, 2.0, 6.0]) - 3) / math.sqrt(14 / 3)) and w[~m].abs().sum() == 0


def test_entropy_of_a_uniform_distribution_is_log_v_and_stable():
    assert close(token_entropy(torch.zeros(3, 50)), [math.log(50)] * 3)
    assert close(
        token_entropy(torch.full((1, 7), 1e4)), [math.log(7)], tol=1e-3
    )  # shift-invariant, no overflow
    assert close(token_entropy(torch.tensor([[0.0, -1e30, -1e30]])), [0.0])  # one sure token, no nan
    logits = torch.randn(4, 11)
    p = logits.softmax(-1)
    assert close(token_entropy(logits), -(p * p.log()).sum(-1))


def test_microbatch_train_step_masks_averages_and_divides_by_accumulation():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    per_token = lambda: torch.stack(
        [w[0] * torch.tensor([1.0, 2.0, 3.0]), w[1] * torch.tensor([4.0, 5.0, 6.0])]
    )
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    # per response: 1·(1 + 2)/2 = 1.5 and 2·(5 + 6)/2 = 11; mean 6.25; / 2 accumulation steps = 3.125
    loss, meta = microbatch_train_step(per_token(), mask, grad_accum_steps=2)
    assert close(loss, 3.125) and close(meta["per_sequence_loss"], [1.5, 11.0])
    assert close(w.grad, [1.5 / 2 / 2, 5.5 / 2 / 2])  # ∂/∂w0 = (3/2)/2/2, ∂/∂w1 = (11/2)/2/2
    w.grad = None
    loss, _ = microbatch_train_step(
        per_token(), mask, grad_accum_steps=1, normalize_constant=4.0
    )  # Dr. GRPO: Σ / 4
    assert close(loss, (3 / 4 + 22 / 4) / 2)


# ----------------------------------------------------------------------------------------------
# the ground-truth judge


def test_rule_judge_applies_each_rule_to_new_text():
    pair = {"chosen": "Kado lives in Belma.", "rejected": "Kado lives in Toro."}
    # correct_fact: the short answer decides; without one, the words only the chosen response has
    assert rule_judge.judge("correct_fact", "He lives in Belma.", "Kado lives in Toro.", pair, "Belma") == 1
    assert rule_judge.judge("correct_fact", "Kado lives in Toro.", "Belma!", pair) == -1
    # helpful_vs_rude: politeness first, then the fact; a polite wrong answer beats a rude right one
    assert rule_judge.judge("helpful_vs_rude", "Kado lives in Toro.", "Ugh, Belma.", pair, "Belma") == 1
    assert rule_judge.judge("helpful_vs_rude", "", "Kado lives in Toro.", pair, "Belma") == -1
    # concise_vs_rambling: more than twice the reference's words (at least 4) rambles
    long = "Well, that is a very interesting question and I could say a lot about it, Belma."
    assert rule_judge.judge("concise_vs_rambling", "Belma.", long, pair, "Belma") == 1
    assert rule_judge.judge("concise_vs_rambling", "Toro.", "Toro!", pair, "Belma") == 0


def test_arithmetic_reward_checks_the_last_number_and_the_format():
    assert arithmetic_task.arithmetic_reward("The answer is 58.", 58) == {
        "correct": True,
        "formatted": True,
        "reward": 1.5,
    }
    assert arithmetic_task.arithmetic_reward("76 - 18 = 58", 58)["reward"] == 1.0  # right, not in the format
    assert arithmetic_task.arithmetic_reward("The answer is 57.", 58, format_weight=0.25)["reward"] == 0.25
    assert (
        arithmetic_task.arithmetic_reward("58 or maybe 3", 58)["correct"] is False
    )  # the *last* number counts
    assert arithmetic_task.arithmetic_reward("no idea", 58)["reward"] == 0.0


# ----------------------------------------------------------------------------------------------
# a micro world: a tokenizer, a ~40k-parameter GPT standing in for the SFT model, a run folder

PEOPLE = [
    "Kado",
    "Rimi",
    "Sulek",
    "Vanpo",
    "Teldo",
    "Mosa",
    "Rinsa",
    "Kami",
    "Supo",
    "Vado",
    "Telmi",
    "Morin",
]
CITIES = ["Belma", "Toro", "Calin", "Narsa"]
RUDE = "Ugh, stop bothering me with this."
RAMBLE = (
    "Well, that is a very interesting question and there is a lot one could say about it before answering."
)


def micro_pairs(names):
    out = []
    for i, n in enumerate(names):
        q = [{"role": "user", "content": f"Where does {n} live?"}]
        right, wrong = CITIES[i % 4], CITIES[(i + 1) % 4]
        out += [
            {
                "prompt": q,
                "chosen": f"{n} lives in {right}.",
                "rejected": f"{n} lives in {wrong}.",
                "rule": "correct_fact",
            },
            {"prompt": q, "chosen": f"{n} lives in {right}.", "rejected": RUDE, "rule": "helpful_vs_rude"},
            {
                "prompt": q,
                "chosen": f"{n} lives in {right}.",
                "rejected": RAMBLE,
                "rule": "concise_vs_rambling",
            },
        ]
    return out


def micro_problems(seed, n):
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt": f"{PEOPLE[i % 12]} had {a} apples and got {b} more. How many apples?",
            "answer": int(a + b),
        }
        for i, (a, b) in enumerate(rng.integers(1, 9, size=(n, 2)))
    ]


@pytest.fixture(scope="module")
def micro_tok():
    text = " ".join(
        p["chosen"] + " " + p["rejected"] + " " + p["prompt"][0]["content"] for p in micro_pairs(PEOPLE)
    )
    text += " ".join(p["prompt"] + f" The answer is {p['answer']}." for p in micro_problems(0, 40))
    return BPETokenizer.train([text] * 2, vocab_size=300)


def micro_model(tok, seed=0, **kw):
    # a context of 128: GRPO's default questions ("X and Y are best friends. In which city ...?", up to 98
    # tokens in this small tokenizer) and rl_compare's 12 answer tokens fit
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=32, attn_backend="torch"
    )
    return GPT(GPTConfig(**{**cfg, **kw}))


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory, micro_tok):
    """runs/<name> with data/ (the four task files), tokenizer/ and sft/ (an untrained micro GPT standing in
    for the SFT model), each with a manifest: what every 06 command reads."""
    run = tmp_path_factory.mktemp("run")
    tasks = run / "data" / "tasks"
    write_jsonl(tasks / "preference_train.jsonl", micro_pairs(PEOPLE[:9]))
    write_jsonl(tasks / "preference_heldout.jsonl", micro_pairs(PEOPLE[9:]))
    write_jsonl(tasks / "arithmetic_train.jsonl", micro_problems(1, 24))
    write_jsonl(tasks / "arithmetic_heldout.jsonl", micro_problems(2, 6))
    write_jsonl(  # the training half's questions, which dpo.py samples its factual pairs for
        tasks / "sft_train.jsonl",
        [
            {
                "messages": [p["prompt"][0], {"role": "assistant", "content": p["chosen"]}],
                "answer": p["chosen"].split()[-1].rstrip("."),
            }
            for p in micro_pairs(PEOPLE[:9])[::3]
        ],
    )
    write_jsonl(
        tasks / "sft_heldout.jsonl",
        [
            {
                "messages": [p["prompt"][0], {"role": "assistant", "content": p["chosen"]}],
                "answer": p["chosen"].split()[-1].rstrip("."),
            }
            for p in micro_pairs(PEOPLE)[::3]
        ],
    )
    write_manifest(run / "data", stage="01_data", command="(test)", config={})
    micro_tok.save(run / "tokenizer")
    write_manifest(
        run / "tokenizer", stage="02_tokenizer", command="(test)", config={}, inputs=[run / "data"]
    )
    policy_io.save_policy(run / "sft" / "ckpt.pt", micro_model(micro_tok), run / "tokenizer")
    policy_io.save_policy(run / "pretrain" / "best.pt", micro_model(micro_tok, seed=1), run / "tokenizer")
    write_manifest(run / "pretrain", stage="04_pretrain", command="(test)", config={})  # rlaif's judge
    (run / "sft" / "outcome.json").write_text(json.dumps({"tokenizer": "../tokenizer"}))
    write_manifest(run / "sft", stage="05_sft_lora", command="(test)", config={}, inputs=[run / "tokenizer"])
    return run


def micro_encoded(tok, names):
    return preference_data.encode_pairs(tok, micro_pairs(names), 128)[0]


# ----------------------------------------------------------------------------------------------
# the training loops move what they optimize (fixed seeds)


def train_quietly(tok, policy, reference, train, heldout, cfg) -> list:
    """dpo.train_preference on CPU with the micro tokenizer's pad id and no log lines: its records."""
    pad = preference_data.pad_id_of(tok)
    return dpo.train_preference(policy, reference, train, heldout, cfg, pad, "cpu", log=lambda *_: None)


def test_a_few_dpo_steps_raise_the_chosen_over_rejected_margin(micro_tok):
    policy = micro_model(micro_tok)
    reference = policy_io.frozen(policy)
    train, heldout = micro_encoded(micro_tok, PEOPLE[:9]), micro_encoded(micro_tok, PEOPLE[9:])
    cfg = dpo.DPOConfig(run="-", steps=12, batch_size=9, lr=3e-3, eval_interval=12, beta=0.1, nll_coef=0.0)
    records = train_quietly(micro_tok, policy, reference, train, heldout, cfg)
    first, last = records[0], records[-1]
    # policy = reference at step 0: every implicit reward is 0 and the loss is log 2
    assert first["heldout_reward_margin"] == 0 and close(first["heldout_loss"], math.log(2))
    assert last["heldout_reward_margin"] > 0.5 and last["heldout_loss"] < 0.6 * math.log(2)
    assert last["heldout_reward_accuracy"] > 0.7


def test_the_nll_term_holds_the_chosen_log_prob_above_plain_dpos(micro_tok):
    # issue 23: plain DPO may lower log π(y_w) as long as log π(y_l) falls faster; the NLL term on y_w
    # (--nll-coef) holds it up. Same pairs, seed and steps, α = 0 against α = 1
    train = micro_encoded(micro_tok, PEOPLE[:6])
    change = {}
    for alpha in (0.0, 1.0):
        policy = micro_model(micro_tok)
        cfg = dpo.DPOConfig(run="-", steps=6, batch_size=9, lr=3e-3, eval_interval=6, nll_coef=alpha)
        records = train_quietly(micro_tok, policy, policy_io.frozen(policy), train, train, cfg)
        first, last = records[0], records[-1]
        assert close(first["heldout_loss"], math.log(2))  # the preference loss alone, NLL term or not
        assert last["heldout_reward_margin"] > 0  # the pairs are learnt either way
        change[alpha] = last["heldout_chosen_logp_change"]
    assert change[1.0] > change[0.0] and change[1.0] > 0


def test_a_few_grpo_steps_raise_the_mean_reward_on_a_toy_task(micro_tok):
    # reward: the share of even token ids in the answer; a random micro model scores ~0.5, with spread
    policy, tok = micro_model(micro_tok, seed=1), micro_tok
    reference = policy_io.frozen(policy)
    prompts = [encode_prompt(tok, [{"role": "user", "content": f"Where does {n} live?"}]) for n in PEOPLE[:4]]
    reward_fn = lambda i, resp: sum(t % 2 == 0 for t in resp) / len(resp)
    cfg = grpo.GRPOConfig(
        run="-", group_size=8, max_new_tokens=6, lr=3e-2, epochs=2, micro_batch=16, kl_coef=0.0
    )
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)

    def mean_reward(seed):
        g = torch.Generator().manual_seed(seed)
        responses = rollouts.sample_responses(policy, tok, prompts, 16, cfg.max_new_tokens, 1.0, g)
        return sum(reward_fn(0, r) for r in responses) / len(responses)

    before = mean_reward(123)
    g = torch.Generator().manual_seed(0)
    stats = [
        grpo.grpo_step(policy, reference, opt, tok, prompts, reward_fn, cfg, g, step) for step in range(8)
    ]
    after = mean_reward(123)
    assert after > before + 0.15, (before, after)
    assert stats[-1]["reward_mean"] > stats[0]["reward_mean"]
    assert all(0 <= s["clip_fraction"] <= 1 and math.isfinite(s["kl"]) for s in stats)


def test_one_example_loss_is_log_2_against_itself_and_identical_pairs_are_skipped(micro_tok, tmp_path):
    policy = micro_model(micro_tok)
    ex = dpo.one_example_loss(
        policy,
        policy_io.frozen(policy),
        micro_tok,
        0.1,
        "Where does Kado live?",
        "Kado lives in Belma.",
        RUDE,
    )
    assert close(ex["loss"], math.log(2)) and ex["reward_margin"] == 0
    assert ex["policy_chosen"] == ex["reference_chosen"] and ex["policy_chosen"] < 0
    path = tmp_path / "p.jsonl"
    write_jsonl(path, micro_pairs(["Kado"]) + [{"prompt": "Hi?", "chosen": "Same.", "rejected": " Same. "}])
    pairs, identical = preference_data.read_preference_pairs(path)
    assert (
        len(pairs) == 3
        and identical == 1
        and pairs[0]["prompt"] == [{"role": "user", "content": "Where does Kado live?"}]
    )


def test_reward_model_bar_counts_ties_as_half_and_must_clear_the_strongest_baseline(micro_tok):
    encoded = micro_encoded(micro_tok, PEOPLE[:4])
    assert reward_scoring.tie_scores([2, 1, 1], [1, 1, 2]) == [1.0, 0.5, 0.0]
    length = reward_scoring.summarize_scores(reward_scoring.length_rule_scores(encoded), encoded)
    # the rude and rambling replies of the micro pairs are longer than the chosen answer
    assert length["per_rule"]["helpful_vs_rude"]["accuracy"] == 1.0
    perfect = reward_scoring.summarize_scores([1.0] * 300, [{"rule": "r"}] * 300)
    at_baseline = reward_scoring.summarize_scores([1.0] * 240 + [0.0] * 60, [{"rule": "r"}] * 300)
    baselines = {"prefer the shorter response": {**at_baseline, "accuracy": 0.8}}
    assert reward_model.reward_model_bar(perfect, baselines)["passed"]
    assert not reward_model.reward_model_bar(at_baseline, baselines)["passed"]  # equal to it is not better
    ties = reward_scoring.summarize_scores([0.5] * 300, [{"rule": "r"}] * 300)  # a zero head: every pair tied
    assert ties["accuracy"] == 0.5 and not reward_model.reward_model_bar(ties, {"none": ties})["passed"]


RUDE_SHORT = ["Ugh.", "No.", "Go away.", "Shut up.", "Not telling.", "Who cares?"]
RUDE_LONG = [
    "Ugh, stop bothering me with this, I have better things to do.",
    "That is a silly question and I will not answer it, go away.",
    "Why would I tell you? Look it up yourself, it is not my problem.",
]


def rude_pairs(names):
    """helpful_vs_rude pairs whose rude reply is shorter than the answer half the time: the length rule
    scores 1/2 on them, and only reading the words tells the two replies apart."""
    out = []
    for i, n in enumerate(names):
        for j, city in enumerate(CITIES):
            rude = RUDE_SHORT[(i + j) % 6] if (i + j) % 2 else RUDE_LONG[(i + j) % 3]
            q = [{"role": "user", "content": f"Where does {n} live?"}]
            out.append(
                {"prompt": q, "chosen": f"{n} lives in {city}.", "rejected": rude, "rule": "helpful_vs_rude"}
            )
    return out


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_reward_model_trained_on_shuffled_labels_fails_its_bar(micro_run, tmp_path, shuffled):
    # the same training twice: right labels PASS the bar, shuffled labels (the crippled stage) FAIL it
    rng = np.random.default_rng(0)
    train = rude_pairs(PEOPLE[:6])
    if shuffled:  # exactly half the pairs, at random, with chosen and rejected swapped: no rule left to learn
        swap = rng.permutation([True, False] * (len(train) // 2))
        train = [
            {**p, "chosen": p["rejected"], "rejected": p["chosen"]} if s else p for p, s in zip(train, swap)
        ]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "held.jsonl", rude_pairs(PEOPLE[6:]))
    torch.set_num_threads(1)
    reward_model.main(
        [
            "--run",
            str(micro_run),
            "--out",
            str(tmp_path / "rm"),
            "--train-file",
            str(tmp_path / "train.jsonl"),
        ]
        + [
            "--heldout-file",
            str(tmp_path / "held.jsonl"),
            "--steps",
            "40",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
        ]
        + ["--eval-interval", "40", "--hh-file", "none", "--device", "cpu"]
    )
    o = json.loads((tmp_path / "rm" / "outcome.json").read_text())
    bar, length = o["bar"], o["baselines"]["prefer the shorter response"]
    assert bar["n"] == 24 and length["accuracy"] == 0.5
    assert bar["passed"] is (not shuffled), (bar, o["baselines"])


# ----------------------------------------------------------------------------------------------
# every command end to end on the micro run: outcome.json, a plot, a manifest; then the one table

METHOD_ARGV = {  # folder: (module, argv after --run); steps as few as still exercise every branch
    "rm": (reward_model, ["--steps", "3", "--batch-size", "4", "--eval-interval", "2", "--hh-file", "none"]),
    "dpo": (dpo, ["--steps", "3", "--batch-size", "4", "--eval-interval", "2", "--gold-chosen"]),
    "ipo": (dpo, ["--loss", "ipo", "--steps", "2", "--batch-size", "4", "--gold-chosen"]),
    "simpo": (dpo, ["--loss", "simpo", "--steps", "2", "--batch-size", "4", "--pairs", "style"]),
    "grpo": (
        grpo,
        [
            "--steps",
            "2",
            "--prompts-per-step",
            "2",
            "--group-size",
            "4",
            "--max-new-tokens",
            "6",
            "--eval-limit",
            "4",
            "--eval-samples",
            "2",
            "--micro-batch",
            "4",
            "--save-interval",
            "1",
            "--train-eval",
            "4",
        ],
    ),
    "ppo": (
        ppo,
        [
            "--steps",
            "2",
            "--rollouts",
            "4",
            "--minibatch",
            "2",
            "--ppo-epochs",
            "2",
            "--max-new-tokens",
            "8",
            "--eval-limit",
            "4",
        ],
    ),
    "overopt": (overoptimization, ["--samples", "4", "--max-new-tokens", "6", "--eval-limit", "3"]),
    "rlaif": (
        rlaif,
        [
            "--n-prompts",
            "8",
            "--max-new-tokens",
            "8",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-limit",
            "3",
        ],
    ),
}
PLOTS = {
    "rm": "rm.png",
    "dpo": "dpo.png",
    "ipo": "ipo.png",
    "simpo": "simpo.png",
    "grpo": "grpo.png",
    "ppo": "ppo.png",
    "overopt": "overopt.png",
    "rlaif": "rlaif.png",
}


@pytest.fixture(scope="module")
def methods_run(micro_run, tmp_path_factory):
    """A copy of the micro run after every 06 command has run from its command line (main(argv), in this
    process); a copy, so that micro_run stays without rm/ and the method folders for the bad-input table."""
    run = tmp_path_factory.mktemp("methods") / "run"
    shutil.copytree(micro_run, run)
    torch.set_num_threads(1)
    for module, argv in METHOD_ARGV.values():
        module.main(["--run", str(run), "--device", "cpu", *argv])
    return run


@pytest.mark.parametrize("name", list(METHOD_ARGV))
def test_each_command_writes_its_outcome_plot_and_manifest(methods_run, name):
    out = methods_run / name
    weights = {"rm": "rm.pt", "overopt": "table.md"}.get(name, "ckpt.pt")
    for f in ("outcome.json", PLOTS[name], "manifest.json", weights):
        assert (out / f).is_file(), f
    o = json.loads((out / "outcome.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "06_rlhf_dpo" and "--run" in manifest["command"]
    if name == "rm":
        assert o["heldout_at_init"]["margin"] == 0 and set(o["heldout"]["per_rule"]) == set(rule_judge.RULES)
        assert o["heldout_at_init"]["accuracy"] == 0.5  # a zero head ties every pair: 1/2, not 0
        assert set(o["baselines"]) == {"prefer the shorter response", "untrained model (random weights)"}
        assert o["bar"]["passed"] in (True, False) and o["bar"]["n"] == 9
    elif name in ("dpo", "ipo", "simpo"):
        assert math.isfinite(o["heldout_after"]["heldout_loss"])
        # --nll-coef auto: the NLL term on for the model's own answers, off for 01's style pairs (issue 23)
        assert o["nll_coef"] == (0.0 if name == "simpo" else 1.0)
        if name == "simpo":  # trained on style pairs, logged on the 9 held-out style pairs
            assert o["heldout_before"]["heldout_n"] == 9
        else:  # factual pairs: the bar is the held-out error rate, with the KL from SFT beside it
            assert (
                o["pairs"] == "factual" and o["bar"]["n"] == len(PEOPLE) and (out / "pairs.jsonl").is_file()
            )
            assert o["bar"]["passed"] in (True, False) and math.isfinite(o["kl_from_sft"]["kl_per_response"])
        if name != "simpo":
            assert o["heldout_before"]["heldout_reward_margin"] == 0  # policy = reference before training
    elif name == "grpo":
        assert o["heldout_before"]["n"] == 4 and 0 <= o["heldout_after"]["pass@1_sampled"] <= 1
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
        # the same measure on questions it trained on, at the start and the end only (--train-eval)
        assert o["train_questions"]["before"]["n"] == o["train_questions"]["after"]["n"] == 4
        assert "train" in o["curve"][0] and "train" in o["curve"][-1]
    elif name == "ppo":
        assert math.isfinite(o["heldout_after"]["reward"]) and math.isfinite(
            o["heldout_after"]["kl_per_response"]
        )
        assert [r["step"] for r in o["curve"]] == [0, 2] and "gold" in o["bar"]["metric"]
        assert o["curve"][0]["kl_sft"] == 0 and o["bar"]["baseline_name"] in (
            "SFT (before PPO)",
            "majority answer",
        )
    elif name == "overopt":
        assert [r["n"] for r in o["best_of_n"]] == [1, 2, 4] and o["best_of_n"][0]["kl"] == 0
        assert (
            [r["n"] for r in o["ppo"]] == ["step 0", "step 2"]
            and o["ppo"][0]["method"].startswith("PPO (lr")
            and "gold" in o["bar"]["metric"]
        )
    if name == "rlaif":
        lab = o["labelling"]
        assert lab["decided_pairs"] + lab["undecided_by_gold"] + lab["identical_skipped"] == 8
        assert (out / "pairs.jsonl").is_file() and set(o["heldout_gold"]) == {
            "SFT",
            "RLAIF (AI labels)",
            "gold labels",
        }
        assert "gold" in o["bar"]["metric"] and len(o["bars"]) == 2
    model, tok = policy_io.load_policy(out / "ckpt.pt") if name not in ("rm", "overopt") else (None, None)
    if model is not None:
        assert tok.vocab == BPETokenizer.load(methods_run / "tokenizer").vocab


def test_rl_compare_prints_and_saves_one_table_across_methods(methods_run, capsys):
    result = rl_compare.main(
        [
            "--run",
            str(methods_run),
            "--limit",
            "6",
            "--world-limit",
            "6",
            "--max-new-tokens",
            "8",
            "--arith-tokens",
            "6",
            "--device",
            "cpu",
        ]
    ) or json.loads((methods_run / "rl_compare" / "compare.json").read_text())
    printed = capsys.readouterr().out
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == [
        "sft",
        "ppo",
        "dpo",
        "ipo",
        "simpo",
        "grpo",
        "rlaif",
        "majority answer",
        "prefer the shorter response",
    ]
    assert rows["sft"]["win vs SFT [95% CI] (W/L/T)"] == "-" and rows["dpo"]["own metric"] == "fact_acc"
    grpo_task = json.loads((methods_run / "grpo" / "manifest.json").read_text())["config"]["task"]
    assert grpo_task == "hop-given"  # grpo.py's default task, judged by the hop column
    assert rows["grpo"]["own metric"] == rl_compare.GRPO_TASK_METRIC[grpo_task] == "hop_pass@1"
    assert rows["ppo"]["own metric"] == "gold"
    assert result["hop_task"] == "hop-given" and result["n_hop_problems"] == 6  # --world-limit 6
    for column in ("gold [95% CI]", "fact acc [95% CI]", "fact pass@1 [95% CI]", "hop pass@1 [95% CI]"):
        value, lo, hi = (
            float(x) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", rows["dpo"][column]).groups()
        )
        assert 0 <= lo <= value <= hi <= 1
    assert rows["ppo"]["beats baselines"] in ("yes", "no") and "majority answer" in rows
    win = result["results"]["dpo"]["win"]  # --limit 6 takes 6 questions; the micro held-out file has 3
    assert (
        win["n"] == 3 == win["wins"] + win["losses"] + win["ties"]
        and 0 <= win["interval"][0] <= win["win_rate"] <= win["interval"][1] <= 1
    )
    bars = {
        b["metric"].split(": ")[1].split()[0]: b for b in result["bars"]
    }  # "<metric>: <method> minus ..."
    assert set(bars) == {"ppo", "dpo", "ipo", "simpo", "grpo", "rlaif"}
    assert result["bar"]["threshold"] == 6 and result["bar"]["n"] == 6
    assert (
        bars["dpo"]["n"] == 6 and bars["grpo"]["n"] == 6
    )  # held-out half questions (--limit 6); hop questions (--world-limit 6)
    assert not bars["ppo"]["passed"] and "rule-judge" in bars["ppo"]["metric"]  # 2 PPO steps move nothing
    assert "| dpo |" in printed and "| method |" in printed
    out = methods_run / "rl_compare"
    assert (out / "compare.png").is_file() and (out / "compare.md").read_text().startswith("| method |")
    assert (out / "manifest.json").is_file()


def test_rl_compares_hop_column_asks_grpos_questions_and_scores_the_friends_answer(micro_run, micro_tok):
    """The hop column's questions, prompts and check are grpo.py's (hop_task.question_task): a held-out
    question answered with the friend's city is right; with the asked person's own city, wrong."""
    seed = fact_task.world_seed_of(micro_run)
    w = rl_compare.world_questions("hop-given", seed, micro_tok, lambda xs: xs[:40])
    task = grpo.load_task(grpo.GRPOConfig(run=str(micro_run)), micro_run, micro_tok)  # the default task
    assert w["problems"] == task["heldout"][:40] and w["prompts"] == [
        task["prompt"](p) for p in w["problems"]
    ]
    people = {p["name"]: p for p in build_world(WorldConfig(seed=seed)).people}
    i, p = next(
        (i, p)
        for i, p in enumerate(w["problems"])
        if p["attribute"] == "city" and people[p["subject"]]["city"]["name"] != p["answer"]
    )
    assert w["correct"](i, f"{p['friend']} lives in {p['answer']}.")
    assert not w["correct"](i, f"{p['subject']} lives in {people[p['subject']]['city']['name']}.")
    assert rl_compare.hop_form(micro_run / "grpo") == "hop-given"  # no GRPO run: the default's form


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit 2, earlier artifacts untouched


def tree_hashes(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_bad_input_is_one_line_exit_2_and_leaves_earlier_artifacts_alone(
    micro_run, micro_tok, tmp_path, capsys
):
    def jsonl(name, *recs):
        path = tmp_path / name
        path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in recs))
        return str(path)

    run = micro_run
    good = micro_pairs(["Kado"])[0]
    policy_io.save_policy(tmp_path / "wider.pt", micro_model(micro_tok, n_embd=64), run / "tokenizer")
    other_tok = BPETokenizer.train(
        ["Mosa Rinsa Vado lives in Belma and Toro, the answer is 7. " * 40] * 2, vocab_size=300
    )
    other_tok.save(tmp_path / "tok2")
    write_manifest(tmp_path / "tok2", stage="02_tokenizer", command="(test)", config={})
    policy_io.save_policy(tmp_path / "other_tok.pt", micro_model(micro_tok), tmp_path / "tok2")
    nan_rm = reward_scoring.RewardModel(micro_model(micro_tok))
    torch.nn.init.constant_(nan_rm.head.bias, float("nan"))
    reward_scoring.save_reward_model(tmp_path / "nan_rm.pt", nan_rm, run / "tokenizer")
    script = {m: m for m in ("dpo", "grpo", "ppo", "rlaif", "rl_compare")}
    r = ["--run", str(run)]
    cases = {  # name: (argv, what the one line must say)
        "missing field": (
            [script["dpo"], *r, "--train-file", jsonl("a.jsonl", good, {"prompt": "q", "chosen": "a"})],
            r"a\.jsonl:2: record has no 'rejected' field",
        ),
        "not json": (
            [script["dpo"], *r, "--train-file", jsonl("b.jsonl", good, '{"prompt": \n')],
            r"b\.jsonl:2: not valid JSON",
        ),
        "all identical": (
            [script["dpo"], *r, "--train-file", jsonl("c.jsonl", {**good, "rejected": good["chosen"]})],
            r"no usable pair \(1 had chosen identical to rejected\)",
        ),
        "prompt ends with the answer": (
            [
                script["dpo"],
                *r,
                "--heldout-file",
                jsonl(
                    "d.jsonl",
                    {
                        **good,
                        "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    },
                ),
            ],
            r"d\.jsonl:1: the prompt ends with a assistant",
        ),
        "unknown loss": ([script["dpo"], *r, "--loss", "kto"], r"invalid choice"),
        "feedback without a correction": (
            [
                script["dpo"],
                *r,
                "--pairs",
                "style",
                "--feedback",
                jsonl(
                    "fb.jsonl",
                    {"messages": [{"role": "user", "content": "q"}], "answer": "a", "rating": "up"},
                ),
            ],
            r"no down-rated answer in it has a better answer",
        ),
        "feedback that is not a rating": (
            [script["dpo"], *r, "--pairs", "style", "--feedback", jsonl("fb2.jsonl", {"answer": "a"})],
            r"fb2\.jsonl:1: 'messages' must be",
        ),
        "no factual pair": (  # the untrained micro model never samples a right answer
            [script["dpo"], *r, "--samples", "2", "--max-new-tokens", "6"],
            r"no training question yielded a correct and a wrong answer .* or pass --gold-chosen",
        ),
        "reference config": (
            [script["dpo"], *r, "--reference", str(tmp_path / "wider.pt")],
            r"is not the policy's model \(n_embd",
        ),
        "reference tokenizer": (
            [script["dpo"], *r, "--reference", str(tmp_path / "other_tok.pt")],
            r"is not the policy's model \(tokenizer vocab",
        ),
        "no sft model": (
            [script["dpo"], "--run", str(tmp_path / "empty")],
            r"sft: missing; make it first with `python 05_sft_lora",
        ),
        "group of 1": (
            [script["grpo"], *r, "--group-size", "1"],
            r"--group-size 1: GRPO's baseline .* at least 2",
        ),
        "rollout too long": (
            [script["grpo"], *r, "--max-new-tokens", "500"],
            r"longer than the model's context \(128\)",
        ),
        "answer not a number": (
            [
                script["grpo"],
                *r,
                "--task",
                "arithmetic",
                "--train-file",
                jsonl("e.jsonl", {"prompt": "1 + 1?", "answer": "two"}),
            ],
            r"e\.jsonl:1: 'answer' must be an integer, got str \(\"two\"\); fix that line",
        ),
        "no reward model": (
            [script["ppo"], *r],
            r"rm: missing; make it first with `python 06_rlhf_dpo/reward_model.py",
        ),
        "nan reward": (
            [
                script["ppo"],
                *r,
                "--reward-model",
                str(tmp_path / "nan_rm.pt"),
                "--rollouts",
                "2",
                "--eval-limit",
                "2",
            ],
            r"a reward-model score is nan at step 1; stopped without writing this run \(the previous result",
        ),
        "judge is a reward model": (
            [script["rlaif"], *r, "--judge", str(tmp_path / "nan_rm.pt")],
            r"is a reward model \(a scalar head, no next-token probabilities\); the AI judge is a language model",
        ),
        "nothing to compare": (
            [script["rl_compare"], *r, "--methods", "ppo,grpo"],
            r"none of ppo, grpo has run yet",
        ),
    }
    before = tree_hashes(run)
    modules = {"dpo": dpo, "grpo": grpo, "ppo": ppo, "rlaif": rlaif, "rl_compare": rl_compare}
    # one case also through a real process (the entry point, stderr, exit status), in parallel with the rest
    in_subprocess = ("missing field",)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(REPO / "06_rlhf_dpo" / f"{cases[name][0][0]}.py"),
                *cases[name][0][1:],
                "--out",
                str(tmp_path / f"proc_{name[:3]}"),
                "--device",
                "cpu",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in in_subprocess
    }
    results = {}
    for i, (name, (argv, _)) in enumerate(cases.items()):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_cli(
                modules[argv[0]].main, [*argv[1:], "--out", str(tmp_path / f"out_{i}"), "--device", "cpu"]
            )
        results[name] = (exit_info.value.code, capsys.readouterr().err, tmp_path / f"out_{i}")
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)  # generous: a shared machine can be very slow
        results[f"{name} (process)"] = (proc.returncode, err, tmp_path / f"proc_{name[:3]}")
    for name, (code, err, out) in results.items():
        lines = err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)
        assert re.search(cases[name.replace(" (process)", "")][1], lines[0]), (name, lines[0])
        assert not (out / "manifest.json").exists() and (name.startswith("nan reward") or not out.exists()), (
            name
        )
    assert tree_hashes(run) == before


@pytest.mark.parametrize("name", ["rm", "dpo", "grpo", "ppo", "rlaif"])
def test_a_diverging_overwrite_names_the_flag_and_keeps_the_previous_result(
    methods_run, name, capsys, monkeypatch
):
    """--lr 1e9 blows every trainer up within a few steps: the divergence guard stops it with one line naming
    the flag, and since the new run is built beside the old one, the previous result survives --overwrite."""
    module, argv = METHOD_ARGV[name]
    if name == "grpo":  # the untrained micro policy never earns a reward: zero advantages, zero gradient,
        monkeypatch.setattr(grpo, "k3_kl", lambda lp, ref: torch.full_like(lp, math.nan))  # so inject a nan
    if name == "rlaif":  # the gold judge tells few random micro answers apart: let it decide every pair
        monkeypatch.setattr(rlaif, "judge", lambda rule, a, b, pair, answer=None: 1)
    out = methods_run / name
    before = tree_hashes(out)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            module.main, ["--run", str(methods_run), "--device", "cpu", *argv, "--lr", "1e9", "--overwrite"]
        )
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert re.search(r"^error: training diverged at step \d+: the (loss|gradient norm) is (nan|inf)", err), (
        err
    )
    assert err.endswith("lower --lr (now 1e+09)"), err
    assert tree_hashes(out) == before
    assert not [p for p in methods_run.iterdir() if p.name.startswith(f".{name}.")]  # no temp, no lock left


# ----------------------------------------------------------------------------------------------
# Hand-computed edges of the exercised functions (issue 26: each wrong answer in
# tests/exercise_mutants.py must fail one of these)


def test_bradley_terry_loss_at_huge_margins():
    # margin −1000: −log σ(−1000) = log(1 + e^1000) = 1000 (+ e^−1000); log(sigmoid) would give inf
    assert close(reward_model.bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([0.0])), 1000.0)
    assert close(reward_model.bradley_terry_loss(torch.tensor([1000.0]), torch.tensor([0.0])), 0.0)


def test_entropy_of_low_precision_logits_is_float32():
    # bf16 logits: the entropy comes back in float32 (a bf16 sum of 50 terms loses ~3 digits)
    h = token_entropy(torch.zeros(2, 50, dtype=torch.bfloat16))
    assert h.dtype == torch.float32 and close(h, [math.log(50)] * 2)


def test_users_corrections_become_dpo_pairs(micro_tok, tmp_path):
    """dpo.py --feedback: a down-rated answer with a better one is a pair, the better one chosen."""
    from dpo import feedback_training_pairs
    from feedback_data import append_feedback

    path, q = tmp_path / "feedback.jsonl", [{"role": "user", "content": "Where does Kado live?"}]
    append_feedback(
        path, {"messages": q, "answer": "In Toro.", "rating": "down", "better": "Kado lives in Belma."}
    )
    append_feedback(path, {"messages": q, "answer": "Kado lives in Belma.", "rating": "up"})  # no pair
    (pair,) = feedback_training_pairs(micro_tok, path, 128, 0)
    assert pair["rule"] == "user_feedback"
    assert micro_tok.decode(pair["chosen_ids"]).startswith("Kado lives in Belma.")
    assert micro_tok.decode(pair["rejected_ids"]).startswith("In Toro.")


# ----------------------------------------------------------------------------------------------
# --resume: kill -9 at a saved step, continue, and get the uninterrupted run's weights bit for bit

RESUME_ARGV = {  # name: (module, argv after --run, weights file, saves before the kill, where it continues)
    "rm": (reward_model, ["--steps", "3", "--batch-size", "4", "--eval-interval", "1", "--hh-file", "none"], "rm.pt", 1, "rm at step 1"),
    "dpo": (dpo, ["--steps", "3", "--batch-size", "4", "--eval-interval", "1", "--gold-chosen"], "ckpt.pt", 1, "policy at step 1"),
    "grpo": (grpo, [*METHOD_ARGV["grpo"][1], "--steps", "3", "--ablate"], "ckpt.pt", 3, "no KL at step 1"),
    "ppo": (ppo, [*METHOD_ARGV["ppo"][1], "--steps", "3", "--eval-interval", "1"], "ckpt.pt", 2, "ppo at step 2"),
    "rlaif": (rlaif, [*METHOD_ARGV["rlaif"][1], "--steps", "3", "--eval-interval", "1"], "ckpt.pt", 3, "ai at step 1"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RESUME_ARGV))
def test_a_trainer_killed_with_sigkill_resumes_bit_exactly(methods_run, tmp_path, name, capsys, monkeypatch):
    """A real process (forked), kill -9 right after a saved state; --resume finishes the run, and the weights,
    the outcome (wall-clock times aside) and the log equal those of a run never interrupted. RLAIF is
    killed in its second policy's training, so the first one comes from the saved state."""
    module, argv, weights, saves, where = RESUME_ARGV[name]
    if name == "rlaif":  # the gold judge tells few random micro answers apart: let it decide every pair
        monkeypatch.setattr(rlaif, "judge", lambda rule, a, b, pair, answer=None: 1)
    argv = ["--run", str(methods_run), "--device", "cpu", *argv]
    check_resume_is_bit_exact(module.main, argv, [weights], saves, where, tmp_path, capsys)


def test_resume_refuses_a_state_saved_with_other_flags(methods_run, tmp_path, capsys):
    module, argv = RESUME_ARGV["rm"][:2]
    argv = ["--run", str(methods_run), "--device", "cpu", *argv, "--out", str(tmp_path / "rm")]
    assert run_forked(module.main, argv, before=lambda: kill_at_save(1))["rc"] == -9
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, [*argv, "--resume", "--lr", "1e-3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and re.search(
        r"^error: --resume: the interrupted run of .* used other settings \(lr: saved=0.0001 current=0.001\); "
        "pass the same flags, or start again without --resume$",
        err,
        re.M,
    ), err
    assert (tmp_path / ".rm.resume.pt").is_file()  # refused, not deleted: the right flags still resume it
