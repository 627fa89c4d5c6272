"""Where a token is: sinusoidal positions, rotary embeddings (RoPE) in both pairings, document boundaries.

Attention itself is blind to order (a permutation of the tokens permutes its output), so a model must
be told positions. gpt.py offers four answers (GPTConfig.pos_emb): a learned table (GPT-2), the
2017 sinusoids added to the embeddings, RoPE (rotate q and k by a position-dependent angle, so that
q·k depends only on the distance; Llama) or nothing at all (NoPE: the causal mask alone leaks some
order). This file holds the functions behind them, and the two that give each token its position id
and the keys it may see: with left padding and a KV cache (`positions_and_mask`), and in a
training window that holds several documents (`document_positions_and_mask`).

    from position_encoding import rope_cos_sin, apply_rope
    cos, sin = rope_cos_sin(torch.arange(T)[None], head_dim)          # (1, T, hd/2) each
    q = apply_rope(q, cos[:, None], sin[:, None])                      # q (B, H, T, hd)

Interview questions it answers:
- What does RoPE do? (rotates coordinate pair i of q and k by p·θ_i; a rotation by p and one by p'
  compose to p' - p in q·k, so attention scores depend on relative position only)
- Interleaved vs half-split RoPE, and why converting Llama weights permutes q_proj/k_proj? (`apply_rope`)
- Should attention cross document boundaries in a packed pretraining window? (`document_positions_and_mask`)
"""

import torch


def sinusoidal_positions(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """The 2017 table, computed for the given positions (any shape) -> (..., dim), fp32:
    PE[p, 2i] = sin(p / 10000^(2i/d)),  PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    inv_freq = 10000.0 ** (
        -torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim
    )  # (ceil(d/2),)
    angles = pos.float()[..., None] * inv_freq  # (..., ceil(d/2))
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # sin, cos interleaved
    return pe[..., :dim]


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta=10000.0):
    """cos and sin of the RoPE angles p·θ_i with θ_i = theta^(-2i/hd): each (..., hd/2), fp32.
    Computed from the position ids on every call (cheap), so they stay fp32 even in a bf16 model."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim)
    angles = pos.float()[..., None] * inv_freq  # (..., hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin, pairs="interleaved"):
    """Rotate coordinate pair i of each head vector by the angle p·θ_i: (a, b) -> (a·cos - b·sin, a·sin + b·cos).

    Which two coordinates form pair i is a convention, and checkpoints differ:
        interleaved  (x_2i, x_2i+1)    RoFormer, GPT-J; Meta's Llama code (pairs as complex numbers); ours
        half         (x_i, x_i+hd/2)   GPT-NeoX; Hugging Face Llama, Mistral, Qwen ("rotate_half")
    They are one model up to a fixed reordering of each head's q and k coordinates: q·k is unchanged
    when q and k are permuted alike, so converting a checkpoint permutes the rows of wq and wk
    (`permute_rope_weights`) and nothing else. Weights loaded under the wrong convention run without
    an error and give another, untrained-looking model: check which one a checkpoint uses.
    x (B, H, T, hd); cos/sin (B or 1, 1, T, hd/2).
    """
    # >>> exercise: (a, b) -> (a·cos - b·sin, a·sin + b·cos); pairs (x_2i, x_2i+1), or (x_i, x_i+hd/2) if 'half'
    xf = x.float()
    if pairs == "half":
        a, b = xf.chunk(2, dim=-1)  # (B, H, T, hd/2) each
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)
    a, b = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)  # (B, H, T, hd/2, 2)
    return out.flatten(-2).to(x.dtype)
    # <<< exercise


def permute_rope_weights(state: dict, cfg, to: str) -> dict:
    """A state dict for the other RoPE convention (`to` = "half" or "interleaved"): within each head,
    coordinate order [0, 2, 4, ..., 1, 3, 5, ...] is interleaved -> half (its inverse the other way).
    Applies to the rows of wq and wk (and their biases) and to the QK-norm weights."""
    hd = cfg.head_dim
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])  # half slot j <- interleaved perm[j]
    if to == "interleaved":
        perm = perm.argsort()
    out = dict(state)
    for name, w in state.items():
        if name.endswith(("attn.wq.weight", "attn.wq.bias", "attn.wk.weight", "attn.wk.bias")):
            heads = w.shape[0] // hd  # (heads·hd, ...) rows
            out[name] = w.reshape(heads, hd, *w.shape[1:])[:, perm].reshape(w.shape)
        elif name.endswith(("attn.q_norm.weight", "attn.k_norm.weight")):
            out[name] = w[perm]
    return out


def positions_and_mask(B, T, start, attention_mask, device):
    """Position ids (B or 1, T) and the mask `allowed` (B, 1, T, start+T) of T new tokens after `start`
    cached ones, or None for plain causal (`start` 0, no padding).

    With left padding the positions count real tokens only, so a padded prompt is seen exactly as
    the same prompt alone: position = (number of real tokens up to here) - 1.
    """
    if attention_mask is not None:
        keep = attention_mask.bool()  # (B, S)
        pos = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, T)
    else:
        if start == 0:
            return torch.arange(T, device=device)[None], None
        keep = torch.ones(B, start + T, dtype=torch.bool, device=device)
        pos = torch.arange(start, start + T, device=device)[None]  # (1, T)
    S = start + T
    q_abs = torch.arange(start, S, device=device)[:, None]  # (T, 1)
    k_abs = torch.arange(S, device=device)[None, :]  # (1, S)
    allowed = (k_abs <= q_abs) & keep[:, None, :]  # (B, T, S)
    # a padding query sees no real key; letting it see itself keeps its softmax finite (its
    # output is never used, since no real token attends to a padding key)
    allowed = allowed | (k_abs == q_abs)
    return pos, allowed[:, None]  # (B, 1, T, S)


def document_positions_and_mask(idx, boundary_id):
    """Position ids (B, T) and mask `allowed` (B, 1, T, T) for windows that hold several documents.

    A pretraining window cut from the token stream `... doc1 <|endoftext|> doc2 ...` would let doc2's
    tokens attend to doc1, which is unrelated text, and at inference a prompt never has such a past.
    Here the window is split into documents, each opened by a `boundary_id` token (<|endoftext|> acts
    as the next document's BOS, exactly as sample_text.py starts a prompt) or by the window's start:
        allowed[b, t, s] = start[t] <= s <= t          block-diagonal causal
        pos[b, t]        = t - start[t]                positions restart at 0 in each document
    Why restart: so each document gets the positions it has at inference, where a prompt begins at 0
    (learned and sinusoidal positions would otherwise see a document at offsets it never has then);
    with RoPE, which sees only relative distances, the restart changes nothing. The effect of the
    mask on loss is measured by pretraining with it on and off (04_pretrain).
    """
    return segment_positions_and_mask((idx == boundary_id).cumsum(dim=1))


def segment_positions_and_mask(segment):
    """The same for explicit segment ids (B, T), non-decreasing along each row (05's packed rows):
    allowed[b, t, s] = segment[b, s] == segment[b, t] and s <= t      block-diagonal causal
    pos[b, t]        = t - (first index of t's segment)"""
    B, T = segment.shape
    t = torch.arange(T, device=segment.device)
    first = torch.ones_like(segment, dtype=torch.bool)
    first[:, 1:] = segment[:, 1:] != segment[:, :-1]
    start = torch.where(first, t, 0).cummax(dim=1).values  # (B, T): first token of t's segment
    allowed = (segment[:, :, None] == segment[:, None, :]) & (
        t[None, None, :] <= t[None, :, None]
    )  # (B, T, T)
    return t - start, allowed[:, None]
