"""The gold reward of a policy, and best-of-n against a proxy: the pieces of the over-optimization lab.

    gold = policy_rewards(policy, reference, rm, tok, prompts, groups, answers, samples=4)
    gold["gold"]          # per prompt: the mean gold reward of its sampled answers
    gold["gold_mean"], gold["proxy_mean"], gold["kl"]   # means; KL(π ‖ π_ref) in nats per response
    best_of_n(proxy, gold_scores, n=8)   # E[gold of the answer the proxy ranks first among n samples]
    bon_kl(8)                            # log 8 − 7/8 = 1.204 nats

The world knows the truth, so there are two rewards (Gao, Schulman and Hilton 2022, *Scaling Laws for
Reward Model Overoptimization*):

- **gold** r*(x, y): the rule judge (rule_judge.gold_score) - the share of the three things the rules ask
  for that the answer does: it states the question's fact, it is polite, it is concise (0, 1/3, 2/3, 1);
- **proxy** r_φ(x, y): the reward model (reward_model.py), trained on a few hundred preference pairs.

A policy is a distribution, so its gold reward is E_{y ~ π}[r*(x, y)], estimated from `samples` answers
per prompt at temperature 1 - the distribution PPO optimizes and the KL is measured on. Both rewards are
always recorded separately: an optimizer sees only the proxy, and is judged only by the gold.

Best-of-n: draw n answers from π_SFT, keep the one the proxy scores highest. Its distribution's KL from
π_SFT is (Gao et al., section 2; exact when the answers never tie, as for a continuous distribution,
an upper bound when they can: Beirami et al. 2024)

    KL_bon(n) = log n − (n − 1) / n

From N ≥ n samples per prompt the expected reward of best-of-n has an unbiased estimator: sort the N
answers by proxy score; the one of rank i (0-based, ascending) is the best of a random n-subset exactly
when the subset holds it and n − 1 of the i below it, with probability C(i, n − 1) / C(N, n):

    E[r*(best of n)] = Σ_i C(i, n − 1) / C(N, n) · r*_i

so one set of N samples gives the whole curve n = 1 .. N without resampling.

Interview questions it answers:
- What is reward over-optimization? (Goodhart's law for RLHF: the policy climbs the proxy reward model
  where it is wrong; the proxy keeps rising while the true reward peaks and falls, and more KL from the
  SFT model buys more proxy, not more truth)
- Why plot against √KL? (Gao et al. found gold ≈ d(α − β d) in d = √KL for best-of-n: a parabola in √KL)
- What is the KL of best-of-n? (log n − (n − 1)/n: it grows only like log n, so best-of-n is a cheap,
  KL-efficient optimizer, and the natural yardstick for RL)
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from alignment_bars import group_by_prompt, user_question
from rule_judge import gold_score
from preference_data import pad_id_of
from reward_scoring import reward_of_responses
from rl_common import response_log_probs
from rollouts import decode_responses, rollout_batch, sample_responses


def prompt_groups(pairs, limit=0) -> tuple:
    """(prompts as chat turns, their pair groups): each question once, in file order, with every pair that
    states a rule for it (the gold judge applies them all); the first `limit` questions (0 = all)."""
    groups = list(group_by_prompt(pairs).values())
    groups = groups[:limit] if limit else groups
    return [g[0]["prompt"] for g in groups], groups


def gold_scores(texts, groups, answers) -> list:
    """rule_judge.gold_score of each response; groups[i]: the pairs of response i's prompt."""
    return [
        gold_score(t, g[0], answers.get(user_question(g[0]["prompt"])))
        for t, g in zip(texts, groups, strict=True)
    ]


def bon_kl(n: int) -> float:
    """KL(π_bon ‖ π) = log n − (n − 1)/n nats: 0 for n = 1, then growing like log n."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(proxy, values, n: int) -> float:
    """Mean over prompts of E[values of the answer with the highest proxy score among n of the N samples].

    proxy, values: (prompts, N) arrays (values: the gold, or the proxy itself). The unbiased estimator of
    the module docstring; n = 1 gives the plain mean, n = N the value at each prompt's proxy argmax."""
    proxy, values = np.asarray(proxy, dtype=float), np.asarray(values, dtype=float)
    N = proxy.shape[1]
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {N} (the samples per prompt)")
    order = np.argsort(proxy, axis=1, kind="stable")  # ascending: rank i has i answers below it
    ranked = np.take_along_axis(values, order, axis=1)
    weights = np.array([math.comb(i, n - 1) for i in range(N)], dtype=float) / math.comb(N, n)
    return float((ranked @ weights).mean())


@torch.no_grad()
def sampled_answers(policy, tok, prompts, samples, max_new_tokens, generator) -> list:
    """`samples` answers per prompt at temperature 1, prompt i's at [i·samples, (i+1)·samples)."""
    return sample_responses(policy, tok, prompts, samples, max_new_tokens, 1.0, generator)


@torch.no_grad()
def response_kl(policy, reference, tok, prompts, responses, batch_size=64) -> torch.Tensor:
    """Σ_t log π(y_t) − log π_ref(y_t) per response (N,): the single-sample estimate of KL(π ‖ π_ref)
    when y ~ π (its mean over samples is the KL in nats per response)."""
    device = next(policy.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        b = rollout_batch(prompts[i : i + batch_size], responses[i : i + batch_size], pad_id_of(tok), device)
        lp = response_log_probs(policy, b["x"], b["y"])["log_probs"]
        ref = response_log_probs(reference, b["x"], b["y"])["log_probs"]
        out.append(((lp - ref) * b["mask"]).sum(1).cpu())
    return torch.cat(out)


@torch.no_grad()
def policy_rewards(
    policy, reference, rm, tok, prompts, groups, answers, samples=4, max_new_tokens=24, seed=0
) -> dict:
    """Gold and proxy reward of a policy, and its KL from the reference, on `prompts` (token-id lists).

    groups[i]: prompt i's preference pairs (the rules the gold judge applies), answers: {question: fact};
    rm None: no proxy score ("proxy_mean" None).
    Returns {"gold": per-prompt share of accepted samples (list), "gold_mean", "proxy_mean",
    "kl" (nats per response, ≥ 0 in expectation; 0 for the reference itself), "samples"}."""
    device = next(policy.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    responses = sampled_answers(policy, tok, prompts, samples, max_new_tokens, g)
    rows = [p for p in prompts for _ in range(samples)]
    texts = decode_responses(tok, responses)
    scores = gold_scores(texts, [grp for grp in groups for _ in range(samples)], answers)
    gold = [sum(scores[i * samples : (i + 1) * samples]) / samples for i in range(len(prompts))]
    proxy = reward_of_responses(rm, rows, responses, pad_id_of(tok), device) if rm is not None else None
    kl = response_kl(policy, reference, tok, rows, responses)
    return {
        "gold": gold,
        "gold_mean": sum(gold) / len(gold),
        "proxy_mean": proxy.mean().item() if proxy is not None else None,
        "kl": kl.mean().item(),
        "samples": samples,
    }
