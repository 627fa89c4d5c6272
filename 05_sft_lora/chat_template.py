"""The chat template: how a conversation becomes one token sequence, and which tokens are trained.

One function renders messages (`render_chat`) and one builds the training example from them
(`encode_chat`); 05, 06, 07 and the chat tools all use these two, so training and generation can
never disagree about the format. The role markers are 02_tokenizer's special tokens, each one id:

    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Where does Noin Marora live?"},
                {"role": "assistant", "content": "Noin Marora lives in Calinwi."},
                {"role": "user", "content": "And her job?"},
                {"role": "assistant", "content": "Noin Marora is a doctor."}]
    render_chat(messages) ==
        "<|endoftext|><|system|>Answer briefly.<|end|><|user|>Where does Noin Marora live?<|end|>"
        "<|assistant|>Noin Marora lives in Calinwi.<|end|><|user|>And her job?<|end|>"
        "<|assistant|>Noin Marora is a doctor.<|end|>"
    render_chat(messages[:4], add_generation_prompt=True)    # what generation starts from
        == "...<|user|>And her job?<|end|><|assistant|>"

Choices, and why:
- `<|endoftext|>` first: in pretraining every document followed one (02 writes it between
  documents), so the base model reads the chat as a fresh document, not the tail of another.
- No newlines around the markers: each marker is one special id, so it needs no separator, and every
  extra token would be one more thing to learn and to spend context on.
- The content is encoded with `encode_ordinary`: a user typing "<|assistant|>" gets the text, not
  the control token (otherwise a prompt could forge a turn).

Training example (`encode_chat`): input_ids, labels and loss_mask have one entry per token, aligned
(labels[t] is the token at t, or -100 where it is not trained); the model predicts position t+1
from positions <= t, so the loss is `cross_entropy(logits[:, :-1], labels[:, 1:])`, which
`lm_inputs` lays out for GPT.forward. loss_mask is 1 on every assistant content token *and* on the
`<|end|>` closing each assistant turn (so the model learns to stop), 0 on everything else: the
system prompt, the user turns and the role markers, which the model is given, not asked to produce.

Log-probabilities of responses (`masked_logprob_sum` / `_mean`) are what 06 needs: DPO compares
log p(chosen | prompt) with log p(rejected | prompt), a reward model or a verifier scores a response.

Interview questions it answers:
- Why mask the prompt out of the SFT loss? (the model should learn to answer, not to imitate users;
  training on prompts also spends capacity on text that is given at inference anyway)
- Why must the end-of-turn token be in the loss? (otherwise nothing teaches the model to stop, and
  generation runs on into a made-up next user turn)
- Why one template function for training and inference? (a one-token difference, e.g. a newline
  after the role marker, is a distribution shift the model was never trained on)
- Sum or mean of token log-probs for a response? (the sum is log p(response); DPO uses it; the mean
  removes the length bias when comparing responses of different lengths)
"""

import sys
from pathlib import Path

import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError

ROLES = ("system", "user", "assistant")
BOS, END = "<|endoftext|>", "<|end|>"
ROLE_TOKEN = {role: f"<|{role}|>" for role in ROLES}
IGNORE = -100  # the label GPT.forward's cross-entropy skips


def check_messages(messages, where="conversation"):
    """Raise a UserError unless `messages` is a list of {role, content} turns with known roles that
    ends with an assistant turn (the turn that is trained or scored). `where`: 'file.jsonl:12'."""
    if not isinstance(messages, list) or not messages:
        raise UserError(
            f"{where}: 'messages' must be a non-empty list of {{role, content}} turns; "
            'write "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]'
        )
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise UserError(
                f"{where}: turn {i} must be an object with string 'role' and 'content'; "
                'write it as {"role": "user", "content": "..."}'
            )
        if m["role"] not in ROLES:
            raise UserError(f"{where}: turn {i} has role {m['role']!r}; use one of {', '.join(ROLES)}")
    if messages[-1]["role"] != "assistant":
        raise UserError(
            f"{where}: the conversation ends with a {messages[-1]['role']} turn; it must end "
            "with the assistant turn to train on (drop the trailing turn or add the answer)"
        )


def render_chat(messages, add_generation_prompt=False) -> str:
    """The conversation as text (module docstring). add_generation_prompt: append `<|assistant|>`,
    the point where the model starts answering."""
    text = BOS + "".join(f"{ROLE_TOKEN[m['role']]}{m['content']}{END}" for m in messages)
    return text + ROLE_TOKEN["assistant"] if add_generation_prompt else text


def special_ids(tok) -> dict:
    """{'<|endoftext|>': id, '<|system|>': id, ...} for the template's markers; a UserError if the
    tokenizer lacks one (it was trained without 02's chat tokens)."""
    needed = [BOS, END, *ROLE_TOKEN.values()]
    missing = [s for s in needed if s not in tok.special_tokens]
    if missing:
        raise UserError(
            f"the tokenizer has no {', '.join(missing)} token(s); retrain it with "
            "02_tokenizer/train_tokenizer.py, which adds the chat-role tokens"
        )
    return {s: tok.special_tokens[s] for s in needed}


def encode_chat(tok, messages):
    """(input_ids, labels, loss_mask): three lists of equal length, the tokens of `render_chat(messages)`.

    loss_mask[t] = 1 for the content and the closing <|end|> of every assistant turn, else 0;
    labels[t] = input_ids[t] where loss_mask[t] else -100."""
    # >>> exercise: ids = <|endoftext|> then per turn [role marker, content ids, <|end|>]; mask 1 on assistant content and its <|end|>; labels = ids where mask else -100
    sid = special_ids(tok)
    ids, mask = [sid[BOS]], [0]
    for m in messages:
        content = tok.encode_ordinary(m["content"])
        trained = int(m["role"] == "assistant")
        ids += [sid[ROLE_TOKEN[m["role"]]], *content, sid[END]]
        mask += [0] + [trained] * (len(content) + 1)
    labels = [t if keep else IGNORE for t, keep in zip(ids, mask)]
    return ids, labels, mask
    # <<< exercise


def encode_prompt(tok, messages) -> list:
    """Token ids of the conversation so far plus `<|assistant|>`: what generation continues.
    Given a full conversation (ending with the assistant's answer), the answer is left out."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    ids, _, _ = encode_chat(tok, messages)
    return ids + [special_ids(tok)[ROLE_TOKEN["assistant"]]]


def decode_answer(tok, ids) -> str:
    """Text of generated ids up to (not including) the first <|end|> or <|endoftext|>."""
    stops = {tok.special_tokens[END], tok.special_tokens[BOS]}
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return tok.decode(ids[:cut])


# ----------------------------------------------------------------------------- tensors and log-probs


def lm_inputs(input_ids, labels):
    """(x, y) for GPT.forward from aligned (B, T) input_ids and labels: x = ids[:, :-1], y = labels[:, 1:]
    (the logit at t scores the token at t+1)."""
    return input_ids[:, :-1], labels[:, 1:]


def token_logprobs(logits, targets):
    """log p(target_t | tokens < t) for every position: logits (B, T, V), targets (B, T) with -100
    where ignored -> (B, T) float32, 0 at ignored positions."""
    # >>> exercise: log_softmax over the vocabulary, gather the target's log-prob, zero it where the target is -100
    keep = targets != IGNORE
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (B, T)
    return picked * keep
    # <<< exercise


def masked_logprob_sum(logits, targets):
    """Σ_t log p(y_t | y_<t) over the trained positions of each row: (B,). For a response this is
    log p(response | prompt), the quantity DPO compares."""
    return token_logprobs(logits, targets).sum(-1)


def masked_logprob_mean(logits, targets):
    """The per-token mean of the same sum, (B,): length-normalized, for comparing responses of
    different lengths (SimPO, ranking)."""
    n = (targets != IGNORE).sum(-1).clamp(min=1)
    return masked_logprob_sum(logits, targets) / n
