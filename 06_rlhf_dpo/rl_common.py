"""The tensor functions every method of this stage is built from: log-probs, masks, advantages, losses.

Each is a few lines of plain torch with its formula beside it, so a reader can check it by hand on
tensors typed into a REPL; ppo.py, grpo.py and dpo.py are then mostly loops that call them:

    response_log_probs(model, x, y)     log π(y_t | x, y_<t) per response token (+ entropy)   (B, T)
    token_entropy(logits)               H(π(·|s)) = logsumexp(z) − Σ_v p_v z_v                 (...)
    masked_mean / masked_normalize      Σ x·m / Σ m   and   Σ x·m / constant (Dr. GRPO)
    masked_whiten                       (x − mean) / std over the masked elements (PPO's advantages)
    group_normalized_advantages         A_i = (r_i − mean_group(r)) / (std_group(r) + eps)  (GRPO)
    policy_gradient_loss                "no_baseline" −R·log π, "reinforce_with_baseline" −A·log π,
                                        "grpo_clip" −min(ρA, clip(ρ, 1−ε, 1+ε)A)
    k3_kl(log_probs, ref_log_probs)     exp(r) − r − 1, r = log π_ref − log π   (≥ 0, unbiased)
    microbatch_train_step               masked per-token loss → mean over responses / accumulation → backward

    import torch; from rl_common import group_normalized_advantages
    group_normalized_advantages(torch.tensor([1., 0., 0., 0.]), group_size=2)[0]   # [0.7071, -0.7071, 0, 0]

Layout: a batch of responses is right-padded token ids; x, y = chat_template.lm_inputs(ids, labels)
with y = −100 on the prompt and the padding, so `mask = y != −100` marks the response tokens and
`response_log_probs` is 0 elsewhere (05's token_logprobs).

Interview questions it answers:
- Why subtract a baseline from the reward? (E[∇log π · b] = b·∇Σπ = 0, so the gradient stays unbiased
  while its variance drops; GRPO's baseline is the group mean, PPO's is the value function)
- Why clip the probability ratio? (the samples came from π_old; the clipped surrogate stops a token's
  update once π moved more than ε away from π_old in the direction the advantage pushes: a cheap trust
  region, rl_common.clipped_policy_loss)
- Which KL estimator, and why k3? (k1 = −r is unbiased but negative half the time; k3 = e^r − r − 1
  is unbiased too and never negative, with lower variance when π ≈ π_ref; Schulman 2020)
- Divide a response's loss by its length or by a constant? (by the length, a long wrong answer is
  penalized less per token than a short one, so length grows on failures; Dr. GRPO divides by a
  constant, `masked_normalize`)
- Why compute entropy from logsumexp? (softmax then log underflows to log 0 = −inf and 0·(−inf) = nan
  for very unlikely tokens; lse − Σ p·z never takes the log of a probability)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from common.cli import UserError
from chat_template import IGNORE, token_logprobs  # 05_sft_lora

PG_LOSSES = ("no_baseline", "reinforce_with_baseline", "grpo_clip")


# ----------------------------------------------------------------------------- batches of responses


def pad_responses(prompts, responses, pad_id, device=None):
    """Right-padded (input_ids (B, L), labels (B, L), lengths (B,)) for prompt + response token lists.

    labels = −100 on the prompt and the padding, the token elsewhere (05's convention), so
    x, y = lm_inputs(input_ids, labels) scores exactly the response. lengths[i] = len(prompt) +
    len(response): the index after the last real token (a reward model reads position lengths − 1).
    Right padding needs no attention mask: causal attention never looks at later (pad) positions."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    L = max(lengths)
    input_ids = torch.full((len(lengths), L), pad_id, dtype=torch.long)
    labels = torch.full((len(lengths), L), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, : lengths[i]] = torch.tensor(p + r, dtype=torch.long)
        labels[i, len(p) : lengths[i]] = torch.tensor(r, dtype=torch.long)
    return input_ids.to(device), labels.to(device), torch.tensor(lengths, device=device)


# ----------------------------------------------------------------------------- log-probs and entropy


def token_entropy(logits):
    """Entropy in nats of each next-token distribution: logits (..., V) -> (...).

    With p = softmax(z), log p_v = z_v − lse(z), so H = −Σ_v p_v log p_v = lse(z) − Σ_v p_v z_v:
    no log of a tiny probability anywhere (uniform logits give log V)."""
    # >>> exercise: H = logsumexp(z) - sum_v softmax(z)_v z_v over the last dim, in float32
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (logits.softmax(dim=-1) * logits).sum(dim=-1)
    # <<< exercise


def response_log_probs(model, x, y, with_entropy=False) -> dict:
    """Per-token log-probs of the labels under `model`, and optionally the entropy of each step.

    x, y: (B, T) token ids and labels from chat_template.lm_inputs (y = −100 where not scored).
    Returns {"log_probs": (B, T) float32, log π(y_t | x_≤t), 0 where y = −100;
             "entropy": (B, T), H(π(· | x_≤t)) at every position (mask it yourself)}."""
    logits, _ = model(x)  # (B, T, V)
    out = {"log_probs": token_logprobs(logits, y)}
    if with_entropy:
        out["entropy"] = token_entropy(logits)
    return out


# ----------------------------------------------------------------------------- masked reductions


def masked_mean(x, mask, dim=None):
    """Σ x·m / Σ m over `dim` (every element when None); x and mask broadcast, mask bool or 0/1.
    An empty mask gives 0/0 = nan on purpose: a response with no tokens is a bug to see, not hide."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim) / m.sum(dim)


def masked_normalize(x, mask, dim=None, constant=1.0):
    """Σ x·m / constant over `dim` (every element when None): Dr. GRPO's sum divided by a fixed
    number (e.g. the longest allowed response) instead of each response's own length."""
    m = mask.to(x.dtype)
    return ((x * m).sum() if dim is None else (x * m).sum(dim)) / constant


def masked_whiten(x, mask, eps=1e-8):
    """(x − μ) / (σ + eps) with μ, σ² the mean and (population) variance of the masked elements;
    0 where mask is 0. PPO whitens its advantages over all response tokens of the batch."""
    mu = masked_mean(x, mask)
    var = masked_mean((x - mu) ** 2, mask)
    return (x - mu) / (var.sqrt() + eps) * mask.to(x.dtype)


# ----------------------------------------------------------------------------- advantages (GRPO)


def group_normalized_advantages(rewards, group_size, eps=1e-6, normalize_by_std=True):
    """GRPO's advantages: each response's reward compared with the other answers to the same prompt.

    rewards: (N,) with N = n_prompts · G, the G responses to a prompt consecutive.
        A_i = r_i − mean_g(r)                       (normalize_by_std=False: Dr. GRPO)
        A_i = (r_i − mean_g(r)) / (std_g(r) + eps)  (std with Bessel's correction, torch's default)
    A group whose rewards are all equal gets A = 0 (0 / eps): nothing to learn from it, and no nan.
    Returns (advantages (N,), raw rewards (N,), stats: mean/std/max/min reward and the fraction of
    groups with zero spread)."""
    if group_size < 2:
        raise UserError(
            f"group size {group_size}: GRPO compares answers to the same prompt, so it needs "
            "at least 2 per prompt; pass --group-size 2 or more"
        )
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    # >>> exercise: per group of consecutive rewards A = r − mean (÷ (std + eps), std unbiased as torch.std, if normalize_by_std); return A, raw rewards, stats
    raw = rewards.float()
    grouped = raw.view(-1, group_size)  # (n_prompts, G)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)
    advantages = grouped - mean
    if normalize_by_std:
        advantages = advantages / (std + eps)
    stats = {
        "reward_mean": raw.mean().item(),
        "reward_std": raw.std().item() if raw.numel() > 1 else 0.0,
        "reward_max": raw.max().item(),
        "reward_min": raw.min().item(),
        "frac_zero_std_groups": (std.squeeze(1) == 0).float().mean().item(),
    }
    return advantages.reshape(-1), raw, stats
    # <<< exercise


# ----------------------------------------------------------------------------- policy-gradient losses


def no_baseline_loss(rewards, log_probs):
    """REINFORCE: −R · log π(y_t), per token. rewards (B, 1) broadcast over log_probs (B, T)."""
    return -rewards * log_probs


def reinforce_with_baseline_loss(advantages, log_probs):
    """−A · log π(y_t), per token; A = R − baseline, (B, 1) or per token (B, T)."""
    return -advantages * log_probs


def clipped_policy_loss(advantages, log_probs, old_log_probs, clip_eps):
    """PPO's clipped surrogate, per token (PPO and GRPO use the same one):

        ρ_t = π(y_t) / π_old(y_t) = exp(log π − log π_old)
        loss_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)

    For A > 0 the objective stops growing once ρ > 1 + ε; for A < 0 once ρ < 1 − ε: the update
    cannot profit from moving a token's probability further than ε from where the sample came from.
    Returns (loss (B, T), {"clipped": (B, T) bool, where the clipped term was the smaller one, so the
    token gets no gradient; "ratio": ρ})."""
    # >>> exercise: rho = exp(log pi − log pi_old), −min(rho·A, clip(rho, 1±eps)·A), and where the clip won
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    return -torch.minimum(unclipped, clipped), {"clipped": clipped < unclipped, "ratio": ratio}
    # <<< exercise


def policy_gradient_loss(kind, log_probs, rewards=None, advantages=None, old_log_probs=None, clip_eps=0.2):
    """One of PG_LOSSES, per token: (loss (B, T), metadata). rewards/advantages (B, 1) or (B, T)."""
    if kind == "no_baseline":
        return no_baseline_loss(rewards, log_probs), {}
    if kind == "reinforce_with_baseline":
        return reinforce_with_baseline_loss(advantages, log_probs), {}
    if kind == "grpo_clip":
        return clipped_policy_loss(advantages, log_probs, old_log_probs, clip_eps)
    raise ValueError(f"unknown policy-gradient loss {kind!r}; one of {PG_LOSSES}")


def k3_kl(log_probs, ref_log_probs):
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π (Schulman's k3):

        r = log π_ref(y_t) − log π(y_t),   k3 = e^r − r − 1 ≥ 0,   E_π[k3] = KL(π ‖ π_ref)
    0 exactly where the two agree; its gradient pulls log π towards log π_ref."""
    # >>> exercise: k3 = e^r - r - 1 with r = log pi_ref - log pi, per token
    r = ref_log_probs - log_probs
    return torch.exp(r) - r - 1
    # <<< exercise


# ----------------------------------------------------------------------------- one micro-batch


def microbatch_train_step(per_token_loss, mask, grad_accum_steps, normalize_constant=None):
    """Reduce a per-token loss (B, T) over the response tokens, scale it for gradient accumulation and
    call backward. Returns (the loss as it was backpropagated, {"per_sequence_loss": (B,)}).

        per response:  Σ_t loss_t·m_t / Σ_t m_t              (normalize_constant None: GRPO, PPO)
                       Σ_t loss_t·m_t / normalize_constant   (Dr. GRPO)
        backward on:   mean over the B responses / grad_accum_steps
    Dividing by the accumulation steps makes k micro-batches of B sum to the gradient of one batch of k·B."""
    if normalize_constant is None:
        per_sequence = masked_mean(per_token_loss, mask, dim=-1)  # (B,)
    else:
        per_sequence = masked_normalize(per_token_loss, mask, dim=-1, constant=normalize_constant)
    loss = per_sequence.mean() / grad_accum_steps
    loss.backward()
    return loss.detach(), {"per_sequence_loss": per_sequence.detach()}
