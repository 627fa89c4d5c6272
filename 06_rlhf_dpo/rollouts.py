"""Rollouts: responses sampled from a policy with 03's sampler, laid out for scoring and training.

    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    responses = sample_responses(policy, tok, prompts, n=4, max_new_tokens=24, temperature=1.0, generator=g)
    batch = rollout_batch(prompts * 1, responses, pad_id)     # x, y, mask, ids, lengths

`sample_responses` left-pads the prompts (03's left_pad), runs decoding.generate with its KV cache and
cuts each row after its first <|end|> (or <|endoftext|>); the stop token stays in the response, so the
log-prob of stopping is trained like every other token. A row that reaches max_new_tokens without
stopping is returned as it is (`truncated` counts them: a reward that prefers stopping sees it).
`rollout_batch` then re-lays the prompt + response right-padded, the layout every loss here uses.

A rollout must fit the context: prompt + max_new_tokens > block_size is refused before sampling with a
one-line error, instead of a crash half way through a training run.

Interview questions it answers:
- Why sample rollouts at temperature 1 for RL? (the policy-gradient estimate is for the policy's own
  distribution; sampling from a sharpened one makes log π(y) the log-prob of text π did not produce)
- Why keep the stop token in the response? (the decision to stop is an action; a reward for concise
  answers can only act through its probability)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "05_sft_lora")]
from common.cli import UserError
from decoding import generate, left_pad  # 03_model
from chat_template import BOS, END, decode_answer, lm_inputs  # 05_sft_lora

from preference_data import pad_id_of
from rl_common import pad_responses


def stop_ids(tok) -> list:
    return [tok.special_tokens[END], tok.special_tokens[BOS]]


def check_rollout_fits(prompts, max_new_tokens, block_size, flag="--max-new-tokens"):
    """A UserError when the longest prompt plus max_new_tokens does not fit the model's context."""
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > block_size:
        raise UserError(
            f"a rollout of {longest} prompt + {max_new_tokens} new tokens is longer than the model's "
            f"context ({block_size}); lower {flag} to at most {block_size - longest} or use shorter prompts"
        )


@torch.no_grad()
def sample_responses(
    model, tok, prompts, n=1, max_new_tokens=32, temperature=1.0, generator=None, batch_size=64
) -> list:
    """n responses per prompt, in order (prompt i's are at [i·n, (i+1)·n)): token-id lists that end with
    the first stop token, or after max_new_tokens. temperature 0 = greedy (then n > 1 repeats)."""
    check_rollout_fits(prompts, max_new_tokens, model.cfg.block_size)
    rows = [p for p in prompts for _ in range(n)]
    stops, pad = stop_ids(tok), pad_id_of(tok)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        idx, mask = left_pad(rows[i : i + batch_size], pad_id=pad, device=device)
        gen = generate(
            model,
            idx,
            max_new_tokens,
            temperature=temperature,
            stop_tokens=stops,
            attention_mask=mask,
            pad_id=pad,
            generator=generator,
        )
        for row in gen[:, idx.shape[1] :].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    return out


def truncated(responses, tok) -> int:
    """How many responses never emitted a stop token (they hit max_new_tokens)."""
    stops = set(stop_ids(tok))
    return sum(1 for r in responses if not r or r[-1] not in stops)


def decode_responses(tok, responses) -> list:
    return [decode_answer(tok, r) for r in responses]


def rollout_batch(prompts, responses, pad_id, device=None) -> dict:
    """{"x", "y" (B, L−1): model input and labels (−100 off the response); "mask": y != −100;
    "ids" (B, L), "lengths" (B,): the right-padded sequences, for a reward model's last-token read}."""
    ids, labels, lengths = pad_responses(prompts, responses, pad_id, device)
    x, y = lm_inputs(ids, labels)
    return {"x": x, "y": y, "mask": y != -100, "ids": ids, "lengths": lengths}
