"""Decoding: how a language model's next-token distribution becomes text, and the KV cache that makes it fast.

`generate(model, idx, ...)` runs the loop for any model whose forward takes (idx, attention_mask, cache)
and returns (logits, loss), 03's GPT and 05's fine-tuned ones alike; `generate_beam` is beam search for
one prompt. The pieces they use are small functions you can try in a REPL on a hand-made logits tensor:

    left_pad(seqs)               -> a batch of prompts, right-aligned, with an attention mask
    apply_repetition_penalty     -> CTRL's penalty on tokens already present
    top_k_filter, top_p_filter   -> which tokens may be sampled at all
    sample_next                  -> greedy (temperature 0) or a sample from softmax(logits / T)
    beam_search                  -> the most likely continuation that keeping k candidates finds
    KVCache                      -> per-layer keys and values of the tokens seen so far

    import torch; from decoding import top_p_filter
    top_p_filter(torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log(), 0.7)   # keeps the first two

Interview questions it answers:
- Why a KV cache? Without it step t recomputes keys and values of all t previous tokens: O(T²)
  projections for T tokens instead of O(T). Its size is 2 · n_layer · n_kv_head · head_dim · T
  numbers per sequence, which is what GQA/MQA shrink.
- Why left padding for batched generation? Every row then ends at the same position, so the new
  token of every row is appended in the same column; the mask keeps padding out of attention and the
  position ids count only real tokens, so a padded prompt behaves exactly like the prompt alone.
- Top-k vs top-p? top-k keeps a fixed number of tokens however flat or peaked the distribution is;
  top-p keeps the smallest set reaching mass p, so few tokens when the model is sure, many when not.
- What does temperature do? logits / T: T < 1 sharpens towards greedy, T > 1 flattens towards uniform.
- Beam search vs greedy vs sampling? Greedy takes the best next token and can walk into a sequence
  whose later tokens are all unlikely; beam search keeps the k best partial sequences by total
  log-probability, so it finds likelier sequences (width 1 is greedy). It suits tasks with one right
  answer (translation, short answers); for open-ended text the likeliest sequences are bland and
  repetitive, which is why chat models sample.
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from common.devices import decoding_threads
from lm_loss import log_softmax  # 03_model (this folder)


class KVCache:
    """Per-layer key/value buffers, preallocated once for the whole generation: (B, Hkv, max_len, hd).

    `pos` counts the positions already written. Preallocation avoids a torch.cat (a full copy) per token.
    """

    def __init__(self, n_layer, max_len):
        self.max_len = max_len
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.pos = 0

    def update(self, layer, k, v):
        """Write this step's k, v (B, Hkv, T, hd) after the cached ones; return all of them (B, Hkv, pos+T, hd)."""
        # >>> exercise: first call: zeros (B, Hkv, max_len, hd); write k, v at pos:pos+T; return up to pos+T
        if self.k[layer] is None:
            B, Hkv, _, hd = k.shape
            self.k[layer] = k.new_zeros(B, Hkv, self.max_len, hd)
            self.v[layer] = v.new_zeros(B, Hkv, self.max_len, hd)
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        # <<< exercise

    def reorder(self, rows):
        """Keep the cache rows `rows` (N,), in that order, repeats allowed: beam i continues row rows[i]."""
        self.k = [None if k is None else k[rows] for k in self.k]
        self.v = [None if v is None else v[rows] for v in self.v]


def left_pad(seqs, pad_id=0, device=None):
    """A list of token-id lists -> (idx (B, T), attention_mask (B, T) bool), padded on the left so that
    every row's last token is at the same position and generation appends to all rows at once."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool, device=device)
    for i, s in enumerate(seqs):
        if s:
            idx[i, T - len(s) :] = torch.tensor(s, dtype=torch.long, device=device)
            mask[i, T - len(s) :] = True
    return idx, mask


def apply_repetition_penalty(logits, prev, penalty, mask=None):
    """CTRL's penalty for every token already in the row: logit/penalty if positive, logit·penalty if not
    (both lower its probability for penalty > 1). logits (B, V); prev (B, S); mask (B, S) or None."""
    weight = torch.ones_like(prev, dtype=logits.dtype) if mask is None else mask.to(logits.dtype)
    seen = torch.zeros_like(logits).scatter_add_(1, prev, weight) > 0  # (B, V)
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def top_k_filter(logits, k):
    """Keep the k largest logits of each row; the rest become -inf."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus: keep the smallest set of most likely tokens whose probability mass is >= p.
    A token is dropped when the tokens more likely than it already reach p."""
    # >>> exercise: sort descending; drop a token once the mass of the tokens before it is >= p (to -inf)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) sorted
    drop = torch.zeros_like(mass_before, dtype=torch.bool).scatter(1, order, mass_before >= p)
    return logits.masked_fill(drop, float("-inf"))
    # <<< exercise


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token id per row from logits (B, V): greedy at temperature 0, else sample softmax(logits/T)
    after the top-k and top-p filters."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty):
    """A UserError naming the first setting outside its range (each would silently do something odd)."""
    problems = [
        (max_new_tokens < 1, f"max_new_tokens={max_new_tokens} must be >= 1"),
        (temperature < 0, f"temperature={temperature} must be >= 0 (0 = greedy)"),
        (top_k is not None and top_k < 1, f"top_k={top_k} must be >= 1 (or unset)"),
        (top_p is not None and not 0 < top_p <= 1, f"top_p={top_p} must be in (0, 1]"),
        (repetition_penalty <= 0, f"repetition_penalty={repetition_penalty} must be > 0 (1 = off)"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)


def beam_search(next_logits, prompt, max_new_tokens, beam_width, stop_tokens=(), length_penalty=0.0):
    """Beam search: extend the beam_width most likely partial continuations by one token at a time.

    next_logits(tokens (N, t), parents (N,) or None) -> logits (N, V): the next-token logits of N beams
    after appending `tokens` to them, where beam i extends the beam in row parents[i] of the previous
    call (so a KV cache can copy those rows first). prompt (T0,) int64.
    Each step scores every one-token extension of every live beam by its total log-probability
    Σ log p(token | prefix) and keeps the best beam_width; a beam that emits a stop token is finished.
    Finished and surviving beams are ranked by log-probability / (new tokens)^length_penalty
    (0: the likeliest sequence, which favours stopping early; ~1 removes that bias).
    Returns (tokens (1, T0 + n) of the best beam, its total log-probability).
    """
    if max_new_tokens < 1 or beam_width < 1:
        raise UserError(
            f"beam search needs max_new_tokens >= 1 and beam_width >= 1 (got {max_new_tokens}, {beam_width})"
        )
    seqs, scores = prompt.view(1, -1), torch.zeros(1, device=prompt.device)  # (N, t), (N,)
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=prompt.device)
    logits, finished = next_logits(seqs, None), []  # finished: (rank, score, seq)
    rank = lambda score, n: score / n**length_penalty
    for n in range(1, max_new_tokens + 1):
        V = logits.shape[-1]
        candidates = (scores[:, None] + log_softmax(logits.float())).flatten()  # (N·V,)
        scores, flat = candidates.topk(min(beam_width, candidates.numel()))  # best first
        parents, tokens = flat // V, flat % V
        seqs = torch.cat([seqs[parents], tokens[:, None]], dim=1)
        ended = torch.isin(tokens, stop)
        finished += [(rank(s, n), s, q) for s, q in zip(scores[ended].tolist(), seqs[ended])]
        if ended.all() or n == max_new_tokens:
            break
        seqs, scores, parents, tokens = seqs[~ended], scores[~ended], parents[~ended], tokens[~ended]
        logits = next_logits(tokens[:, None], parents)
    finished += [(rank(s, n), s, q) for s, q in zip(scores[~ended].tolist(), seqs[~ended])]
    _, best_score, best = max(finished, key=lambda f: f[0])
    return best[None], best_score


# ----------------------------------------------------------------------------- a model's decoding loops


def check_length(model, prompt_len, max_new_tokens):
    if prompt_len + max_new_tokens > model.cfg.block_size:
        raise UserError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_len + max_new_tokens} is longer than block_size={model.cfg.block_size}; "
            "shorten one of them"
        )


@torch.no_grad()
def generate(
    model,
    idx,
    max_new_tokens,
    temperature=1.0,
    top_k=None,
    top_p=None,
    repetition_penalty=1.0,
    stop_tokens=(),
    attention_mask=None,
    pad_id=0,
    use_cache=True,
    generator=None,
):
    """Continue each prompt row of idx (B, T0); returns (B, T0 + n) with n <= max_new_tokens.

    attention_mask (B, T0): 0 marks left padding (see `left_pad`). temperature 0 = greedy.
    A row that emits a stop token keeps it and is padded with `pad_id` from then on; the loop ends
    when every row has stopped. use_cache=False recomputes the whole sequence at every step
    (the slow reference the KV cache must match exactly).
    """
    B, T0 = idx.shape
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    check_length(model, T0, max_new_tokens)
    was_training = model.training
    model.eval()
    # an explicit mask even without padding: both paths then take the same masked route
    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(idx, dtype=torch.bool)
    cache = KVCache(model.cfg.n_layer, T0 + max_new_tokens) if use_cache else None
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    out, step_input = idx, idx  # with a cache, each step feeds only the new token
    with decoding_threads():  # tiny per-step products: one thread (common/devices.py says why)
        for _ in range(max_new_tokens):
            logits, _ = model(step_input if use_cache else out, attention_mask=mask, cache=cache)
            logits = logits[:, -1].float()  # (B, V)
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, out, repetition_penalty, mask)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            done |= torch.isin(nxt, stop)
            if done.all():
                break
            step_input = nxt[:, None]
    model.train(was_training)
    return out


@torch.no_grad()
def generate_beam(model, idx, max_new_tokens, beam_width=4, stop_tokens=(), length_penalty=0.0):
    """beam_search (above) for a model and one prompt idx (1, T0) -> (tokens (1, T0 + n), their log-probability).
    One KV cache row per beam; a surviving beam copies its parent's row before each step."""
    if idx.shape[0] != 1:
        raise UserError(f"beam search takes one prompt at a time, got a batch of {idx.shape[0]}")
    check_length(model, idx.shape[1], max_new_tokens)
    was_training = model.training
    model.eval()
    cache = KVCache(model.cfg.n_layer, idx.shape[1] + max_new_tokens)

    def next_logits(tokens, parents):  # tokens (N, t)
        if parents is not None:
            cache.reorder(parents)
        return model(tokens, cache=cache)[0][:, -1].float()  # (N, V)

    with decoding_threads():
        result = beam_search(next_logits, idx[0], max_new_tokens, beam_width, stop_tokens, length_penalty)
    model.train(was_training)
    return result
