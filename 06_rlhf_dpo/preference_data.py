"""Preference pairs: read and check them, tokenize them with 05's chat template, batch them, score them.

A pair is one prompt and two responses, `chosen` better than `rejected` for a stated reason (`rule`):

    {"prompt": [{"role": "user", "content": "Where does Noin Marora live?"}],
     "chosen": "Noin Marora lives in Calinwi.", "rejected": "Ugh, stop bothering me with this.",
     "rule": "helpful_vs_rude"}                         (01_data's preference_{train,heldout}.jsonl)

`prompt` may also be a plain string (one user turn). Anthropic's HH-RLHF transcripts ("\\n\\nHuman: ...
\\n\\nAssistant: ...", chosen and rejected sharing everything up to the last assistant turn) are read by
`read_hh_pairs` into the same form.

Tokens: prompt_ids = encode_prompt(tok, prompt) (ends with <|assistant|>), response_ids =
encode_ordinary(text) + <|end|>: exactly encode_chat(prompt + [assistant turn]), so a reward model or
DPO scores the same tokens SFT trained on, the closing <|end|> included (a response that does not stop
is a different, worse response). A pair longer than the context is skipped and counted, never cut.

A batch of B pairs is one forward pass over 2B rows, the chosen responses first:
`sequence_log_probs` gives log π(y | x) = Σ_t log π(y_t | x, y_<t) (05's masked_logprob_sum) and its
per-token mean (masked_logprob_mean, SimPO's length-normalized score) for each row.

Interview questions it answers:
- What makes a preference pair unusable? (chosen = rejected: no signal, and DPO's loss is then constant
  log 2 with zero gradient; a missing field; a pair longer than the model's context)
- Why score the end-of-turn token too? (stopping is part of the response: without it a response that
  rambles on and one that stops would share a log-prob)
"""

import re
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from common.cli import UserError
from common.files import read_jsonl, read_text
from chat_template import (
    END,
    check_messages,
    encode_prompt,
    lm_inputs,
    masked_logprob_mean,
    masked_logprob_sum,
)  # 05_sft_lora

from rl_common import pad_responses

FIELDS = ("prompt", "chosen", "rejected")


def pad_id_of(tok) -> int:
    """The id padding uses (05's choice: <|pad|> when the tokenizer has one, else <|endoftext|>)."""
    return tok.special_tokens.get("<|pad|>", tok.eot_id)


# ----------------------------------------------------------------------------- reading


def prompt_messages(prompt, where) -> list:
    """A pair's prompt as chat turns ending with a user turn; a UserError naming `where` otherwise."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise UserError(
            f"{where}: 'prompt' must be a string or a non-empty list of {{role, content}} turns; "
            'write "prompt": "the question" or "prompt": [{"role": "user", "content": "the question"}]'
        )
    check_messages([*prompt, {"role": "assistant", "content": ""}], where)
    if prompt[-1]["role"] != "user":
        raise UserError(
            f"{where}: the prompt ends with a {prompt[-1]['role']} turn; it must end with the user "
            "turn that chosen and rejected answer"
        )
    return prompt


def read_preference_pairs(path):
    """(pairs, n_identical): the pairs of a JSONL file, each {"prompt": turns, "chosen", "rejected", "rule"}.

    A record without prompt/chosen/rejected is a UserError naming the file and line; a pair whose two
    responses are identical carries no preference, so it is skipped and counted."""
    records = read_jsonl(path, required=FIELDS, types={"chosen": str, "rejected": str})
    line_numbers = [n for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    pairs, identical = [], 0
    for rec, n in zip(records, line_numbers):
        where = f"{path}:{n}"
        if rec["chosen"].strip() == rec["rejected"].strip():
            identical += 1
            continue
        pairs.append(
            {
                "prompt": prompt_messages(rec["prompt"], where),
                "chosen": rec["chosen"],
                "rejected": rec["rejected"],
                "rule": str(rec.get("rule", "unspecified")),
            }
        )
    if not pairs:
        raise UserError(
            f"{path}: no usable pair ({identical} had chosen identical to rejected); "
            "each line needs two different responses"
        )
    return pairs, identical


HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_messages(transcript: str) -> list:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    parts = HH_TURN.split(transcript)  # ['', 'Human', 'a', 'Assistant', 'b', ...]
    return [
        {"role": "user" if who == "Human" else "assistant", "content": text.strip()}
        for who, text in zip(parts[1::2], parts[2::2])
    ]


def read_hh_pairs(path, limit=0):
    """(pairs, n_skipped) from an HH-RLHF JSONL file ({"chosen": transcript, "rejected": transcript}):
    the prompt is every turn before the last assistant turn, which must be the same in both transcripts;
    pairs where it differs, or whose last replies are equal, are skipped."""
    pairs, skipped = [], 0
    for rec in read_jsonl(path, required=("chosen", "rejected"), types={"chosen": str, "rejected": str}):
        c, r = hh_messages(rec["chosen"]), hh_messages(rec["rejected"])
        if (
            not c
            or not r
            or c[-1]["role"] != "assistant"
            or r[-1]["role"] != "assistant"
            or c[:-1] != r[:-1]
            or not c[:-1]
            or c[-2]["role"] != "user"
            or c[-1]["content"] == r[-1]["content"]
        ):
            skipped += 1
            continue
        pairs.append(
            {
                "prompt": c[:-1],
                "chosen": c[-1]["content"],
                "rejected": r[-1]["content"],
                "rule": "hh_harmless",
            }
        )
        if limit and len(pairs) >= limit:
            break
    return pairs, skipped


# ----------------------------------------------------------------------------- tokens and batches


def encode_response(tok, prompt, text):
    """(prompt_ids, response_ids) for a response to `prompt`: together exactly encode_chat's tokens."""
    return encode_prompt(tok, prompt), tok.encode_ordinary(text) + [tok.special_tokens[END]]


def encode_pairs(tok, pairs, block_size, shorten_prompt=False):
    """(encoded, n_too_long): each pair as {"prompt_ids", "chosen_ids", "rejected_ids", "rule"}.

    A pair whose prompt + longer response exceeds the context is skipped and counted; with
    shorten_prompt, the prompt is first cut to its last user turn (long HH conversations)."""
    out, too_long = [], 0
    for p in pairs:
        prompt_ids, chosen = encode_response(tok, p["prompt"], p["chosen"])
        if shorten_prompt and len(prompt_ids) + len(chosen) > block_size:
            prompt_ids = encode_prompt(tok, p["prompt"][-1:])
        rejected = tok.encode_ordinary(p["rejected"]) + [tok.special_tokens[END]]
        if len(prompt_ids) + max(len(chosen), len(rejected)) > block_size:
            too_long += 1
            continue
        out.append(
            {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected, "rule": p["rule"]}
        )
    return out, too_long


def pair_batch(encoded, pad_id, device=None):
    """x, y (2B, L) for B encoded pairs, chosen rows first, and lengths (2B,) (see rl_common.pad_responses)."""
    prompts = [e["prompt_ids"] for e in encoded] * 2
    responses = [e["chosen_ids"] for e in encoded] + [e["rejected_ids"] for e in encoded]
    ids, labels, lengths = pad_responses(prompts, responses, pad_id, device)
    x, y = lm_inputs(ids, labels)
    return x, y, ids, lengths


def sequence_log_probs(model, x, y):
    """(Σ_t log π(y_t | ·), mean_t log π(y_t | ·)) over each row's response tokens: two (R,) tensors."""
    logits, _ = model(x)
    return masked_logprob_sum(logits, y), masked_logprob_mean(logits, y)


@torch.no_grad()
def cached_log_probs(model, encoded, pad_id, batch_size=64, device=None) -> dict:
    """{"chosen_sum", "rejected_sum", "chosen_mean", "rejected_mean"}: (N,) tensors for every pair,
    computed once (DPO's reference log-probs never change, so they are not recomputed each step)."""
    parts = {k: [] for k in ("chosen_sum", "rejected_sum", "chosen_mean", "rejected_mean")}
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        x, y, _, _ = pair_batch(chunk, pad_id, device)
        s, m = sequence_log_probs(model, x, y)
        B = len(chunk)
        for key, t in (
            ("chosen_sum", s[:B]),
            ("rejected_sum", s[B:]),
            ("chosen_mean", m[:B]),
            ("rejected_mean", m[B:]),
        ):
            parts[key].append(t.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}
