"""The reward model as a library: the model (GPT body + scalar head), saving and loading it, and
scoring preference pairs and responses with it (or with the length rule, the cheap baseline).

reward_model.py is the command that trains one; dpo.py, ppo.py, rlaif.py and rl_compare.py score
with these functions and never import a command.

    rm = load_reward_model("runs/tiny/rm/rm.pt", tok)
    r_w, r_l = pair_rewards(rm, encoded_pairs, pad_id, "cpu")         # (B,), (B,)
    tie_scores(r_w.tolist(), r_l.tolist())                            # 1 / 0.5 / 0 per pair

Interview question it answers:
- Why is the reward read at the last token? (the model is causal: only the last position has seen the
  whole prompt and response)
"""

import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain"), str(REPO / "05_sft_lora")]
from common.cli import (
    UserError,
)
from common.stats import wilson_interval
from checkpoint_io import load_checkpoint, save_checkpoint  # 03_model
from gpt import GPT, config_from_dict  # 03_model

from policy_io import checkpoint_tokenizer, tokenizer_differences
from preference_data import encode_pairs, read_preference_pairs
from rl_common import pad_responses
from rollouts import rollout_batch


class RewardModel(nn.Module):
    """GPT body + scalar head. `values(ids)` (B, T): the head at every position (PPO's value model uses
    this); `forward(ids, lengths)` (B,): the reward, read at position lengths − 1."""

    def __init__(self, gpt: GPT):
        super().__init__()
        gpt.lm_head = nn.Identity()  # the body now returns h_L (B, T, d) instead of logits
        self.body = gpt
        self.head = nn.Linear(gpt.cfg.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # r = 0 for every input at the start: the first loss is log 2
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self):
        return self.body.cfg

    def values(self, ids):
        h, _ = self.body(ids)  # (B, T, d)
        return self.head(h).squeeze(-1).float()  # (B, T)

    def forward(self, ids, lengths):
        return self.values(ids)[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B,)


def save_reward_model(path, rm: RewardModel, tokenizer_dir, **extra):
    save_checkpoint(
        path,
        asdict(rm.cfg),
        rm.state_dict(),
        kind="reward_model",
        tokenizer=os.path.relpath(Path(tokenizer_dir).resolve(), Path(path).parent.resolve()),
        **extra,
    )


def load_reward_model(path, tok=None, device="cpu") -> RewardModel:
    """The reward model saved at `path`; with `tok`, refuse one trained with another tokenizer."""
    path = Path(path)
    ckpt = load_checkpoint(path, device)
    if ckpt.get("kind") != "reward_model":
        raise UserError(
            f"{path}: not a reward model (no scalar head); make one with 06_rlhf_dpo/reward_model.py"
        )
    rm = RewardModel(GPT(config_from_dict(ckpt["config"], path)))
    try:
        rm.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(
            f"{path}: weights do not fit the saved config ({str(e).splitlines()[1].strip()})"
        ) from None
    if tok is not None:
        diffs = tokenizer_differences(tok, checkpoint_tokenizer(path, ckpt))
        if diffs:
            raise UserError(
                f"{path}: the reward model's tokenizer differs from the policy's ({', '.join(diffs)}); "
                "train the reward model from the same run's SFT model"
            )
    return rm.to(device).eval()


def pair_rewards(rm, encoded, pad_id, device):
    """(r_chosen (B,), r_rejected (B,)) for a list of encoded pairs, in one forward pass of 2B rows."""
    prompts = [e["prompt_ids"] for e in encoded] * 2
    responses = [e["chosen_ids"] for e in encoded] + [e["rejected_ids"] for e in encoded]
    ids, _, lengths = pad_responses(prompts, responses, pad_id, device)
    r = rm(ids, lengths)
    return r[: len(encoded)], r[len(encoded) :]


def tie_scores(better, worse) -> list:
    """Per pair 1 when better > worse, 1/2 on a tie (no preference is not a wrong preference), else 0."""
    return [1.0 if b > w else 0.5 if b == w else 0.0 for b, w in zip(better, worse)]


@torch.no_grad()
def pair_scores(rm, encoded, pad_id, device, batch_size=64) -> tuple:
    """(scores, margins): per pair 1 / 1/2 / 0 as r_chosen >, =, < r_rejected, and r_chosen - r_rejected."""
    was = rm.training
    rm.eval()
    scores, margins = [], []
    for i in range(0, len(encoded), batch_size):
        rc, rr = pair_rewards(rm, encoded[i : i + batch_size], pad_id, device)
        scores += tie_scores(rc.tolist(), rr.tolist())
        margins += (rc - rr).tolist()
    rm.train(was)
    return scores, margins


def length_rule_scores(encoded) -> list:
    """The cheapest judge there is: prefer the shorter response (in tokens), ties 1/2."""
    return tie_scores([-len(e["chosen_ids"]) for e in encoded], [-len(e["rejected_ids"]) for e in encoded])


def summarize_scores(scores, encoded) -> dict:
    """{"accuracy", "interval" (Wilson 95 %), "n", "per_rule": {rule: {"accuracy", "interval", "n"}}}."""

    def one(xs):
        return {
            "accuracy": sum(xs) / len(xs),
            "interval": list(wilson_interval(sum(xs), len(xs))),
            "n": len(xs),
        }

    rules = sorted({e["rule"] for e in encoded})
    per_rule = {r: one([x for x, e in zip(scores, encoded) if e["rule"] == r]) for r in rules}
    return {**one(scores), "per_rule": per_rule}


def pairwise_accuracy(rm, encoded, pad_id, device, batch_size=64) -> dict:
    """summarize_scores of the reward model's pair scores (ties 1/2), plus "margin": mean r_w - r_l."""
    scores, margins = pair_scores(rm, encoded, pad_id, device, batch_size)
    return {**summarize_scores(scores, encoded), "margin": sum(margins) / len(margins)}


def load_pairs(tok, path, block_size, label):
    """Encoded pairs of a preference file, with what was skipped printed."""
    pairs, identical = read_preference_pairs(path)
    encoded, too_long = encode_pairs(tok, pairs, block_size)
    print(
        f"{label} {path}: {len(encoded)} pairs; skipped {identical} with chosen identical to rejected, "
        f"{too_long} longer than the context ({block_size})"
    )
    if not encoded:
        raise UserError(
            f"{path}: every pair is longer than the context ({block_size} tokens); use shorter pairs"
        )
    return encoded


@torch.no_grad()
def reward_of_responses(rm, prompts, responses, pad_id, device, batch_size=64) -> torch.Tensor:
    """r_φ(x, y) for token-id prompts and responses: (N,)."""
    scores = []
    for i in range(0, len(prompts), batch_size):
        b = rollout_batch(prompts[i : i + batch_size], responses[i : i + batch_size], pad_id, device)
        scores.append(rm(b["ids"], b["lengths"]).float().cpu())
    return torch.cat(scores)
