"""Speculative decoding, the algorithm: a small draft model proposes k tokens, the target checks them
in one forward, and a rejection rule keeps the output exactly the target's distribution.

    tokens, stats = speculative_generate(teacher, draft, prompt_ids, max_new_tokens=64, k=4)

One round, with the target (the teacher, p) and the draft (a distilled student, q):
1. the draft samples d_1..d_k one at a time (its own KV cache): d_i ~ q_i = q(· | x, d_<i);
2. the target runs ONE forward over the k drafted positions (plus the one token it has not seen),
   which gives p_1..p_{k+1} with p_i = p(· | x, d_<i), using 03's KV cache;
3. d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)), left to right; at the first rejection
   the token is resampled from the residual norm(max(0, p_i - q_i)) and the round ends; if all k
   are accepted, one more token comes free from p_{k+1};
4. both caches roll back to the accepted prefix: `cache.pos = n` (positions past it are simply
   overwritten by the next update, so rollback costs nothing).

Why the output is exactly the teacher's distribution (Leviathan et al. 2023; Chen et al. 2023): a
token t comes out of step 3 either as an accepted draft, probability q(t)·min(1, p(t)/q(t)) =
min(q(t), p(t)), or after a rejection, probability (1 - Σ_u min(p(u), q(u))) · max(0, p(t) - q(t)) /
Σ_u max(0, p(u) - q(u)); the two normalizers are equal, so the sum is min(p, q) + max(0, p - q) = p(t).
Greedy decoding is the case of one-hot p and q: a draft is kept iff it is the teacher's argmax, the
correction is the teacher's argmax, so the tokens are exactly the teacher's greedy tokens.

speculative.py (the command) times it against the teacher alone with distill.py's students as drafts.

Interview questions it answers:
- Why does speculative decoding speed anything up if the teacher still runs? (decoding one token is
  memory-bound: reading all weights for one position; verifying k positions costs about the same
  one read, so each teacher forward yields up to k+1 tokens instead of 1)
- Does it change the output? (no: the accept/resample rule makes every token exactly teacher-distributed;
  greedy gives the teacher's exact tokens, up to float ties between batched and one-at-a-time forwards)
- What makes a good draft? (high acceptance = q close to p, which is what distillation optimizes,
  and a low cost c; a draft from another tokenizer cannot be used at all)
- How does the KV cache handle rejected tokens? (their keys and values were written past the accepted
  prefix; moving the write position back is the whole rollback)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError
from common.devices import decoding_threads
from decoding import KVCache, top_k_filter, top_p_filter  # 03_model
from gpt import GPT  # 03_model


def token_probs(logits, temperature=0.0, top_k=None, top_p=None):
    """Next-token distributions (N, V) as 03's sampler defines them: one-hot at the argmax for
    temperature 0, else softmax(logits / T) after the top-k / top-p filters (decoding.py)."""
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits.softmax(-1)


def accept_drafts(p, q, drafts, generator=None):
    """The rejection-sampling rule: (number of drafts accepted m, the token that follows them).

    p (k+1, V): the target's distributions at the k drafted positions and the one after;
    q (k, V): the draft's distributions the drafts were sampled from; drafts: k token ids."""
    # >>> exercise: accept d_i w.p. min(1, p_i(d_i)/q_i(d_i)); at a rejection resample from norm(max(0, p_i - q_i))
    for i, d in enumerate(drafts):
        u = torch.rand((), generator=generator, device=p.device)
        if u < p[i, d] / q[i, d]:  # accept with probability min(1, p/q)
            continue
        residual = (p[i] - q[i]).clamp(min=0)  # where the target wants more than the draft gave
        if residual.sum() <= 0:  # p == q up to rounding: p itself is the residual
            residual = p[i]
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))
    # <<< exercise


@torch.no_grad()
@decoding_threads()  # draft and verify forwards are tiny: one thread (common/devices.py says why)
def speculative_generate(
    target: GPT,
    draft: GPT,
    prompt,
    max_new_tokens: int,
    k: int,
    temperature=0.0,
    top_k=None,
    top_p=None,
    generator=None,
    stop_tokens=(),
):
    """Continue `prompt` (a list of ids) by up to max_new_tokens tokens distributed exactly as the
    target's own sampling would; returns (new token ids, {"rounds", "drafted", "accepted"})."""
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise UserError(
            f"the draft's vocabulary ({draft.cfg.vocab_size}) is not the target's "
            f"({target.cfg.vocab_size}); a draft must propose the target's token ids"
        )
    total = len(prompt) + max_new_tokens
    if total > min(target.cfg.block_size, draft.cfg.block_size):
        raise UserError(
            f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) is longer than the "
            f"context ({min(target.cfg.block_size, draft.cfg.block_size)}); shorten one of them"
        )
    device = next(target.parameters()).device
    target.eval()
    draft.eval()
    t_cache, d_cache = KVCache(target.cfg.n_layer, total), KVCache(draft.cfg.n_layer, total)
    tokens, stats = list(prompt), {"rounds": 0, "drafted": 0, "accepted": 0}
    as_input = lambda ids: torch.tensor(ids, dtype=torch.long, device=device)[None]
    while len(tokens) < total:
        n = len(tokens)
        k_round = min(k, total - n - 1)  # never draft past what is still wanted
        drafts, q = [], []
        for _ in range(k_round):  # each draft forward feeds what its cache lacks
            logits, _ = draft(as_input((tokens + drafts)[d_cache.pos :]), cache=d_cache)
            q.append(token_probs(logits[:, -1], temperature, top_k, top_p)[0])
            drafts.append(int(torch.multinomial(q[-1], 1, generator=generator)))
        logits, _ = target(as_input((tokens + drafts)[t_cache.pos :]), cache=t_cache)  # one forward
        p = token_probs(logits[0, -(k_round + 1) :], temperature, top_k, top_p)  # (k_round+1, V)
        m, nxt = accept_drafts(p, torch.stack(q) if q else p[:0], drafts, generator)
        tokens += drafts[:m] + [nxt]
        t_cache.pos = n + m  # roll back: keep the keys/values of tokens[:n+m]
        d_cache.pos = min(d_cache.pos, n + m)
        stats["rounds"] += 1
        stats["drafted"] += k_round
        stats["accepted"] += m
        hit = next((i for i, t in enumerate(tokens[n:]) if t in stop_tokens), None)
        if hit is not None:
            del tokens[n + hit + 1 :]
            break
    return tokens[len(prompt) : total], stats


def expected_speedup(accept_rate: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al.'s estimate: tokens per round (1 - a^(k+1)) / (1 - a) over the round's cost
    k·c + 1 in teacher forwards (c = draft forward time / teacher forward time)."""
    # >>> exercise: expected tokens per round (1 - a^(k+1)) / (1 - a) over the round's cost k·c + 1
    a = min(accept_rate, 1 - 1e-9)
    return (1 - a ** (k + 1)) / ((1 - a) * (k * cost_ratio + 1))
    # <<< exercise
