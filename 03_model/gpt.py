"""A decoder-only GPT, written to be read top to bottom, with the switches modern LLMs flip.

    config -> norms -> positions -> attention -> feed-forward (MLP / MoE) -> block -> GPT
    -> GPT.generate -> FLOPs counting -> CLI

One `GPTConfig` selects GPT-2 style (learned positions, LayerNorm, GELU, MHA) or Llama style (RoPE,
RMSNorm, SwiGLU, GQA) or anything between, plus post-LN (the 2017 original), QK-norm and a
mixture-of-experts feed-forward. `GPT.generate` is the one sampler of the repository: a
preallocated KV cache, greedy / temperature / top-k / top-p, repetition penalty, stop tokens, and a
batch of left-padded prompts with an attention mask. Later stages import it instead of writing their
own. Its small pieces (the cache, the filters, left padding) are functions in decoding.py.

    python 03_model/gpt.py --help
    python 03_model/gpt.py --n-layer 12 --n-embd 768 --n-head 12    # parameter count and FLOPs/token
    python 03_model/gpt.py --ckpt runs/tiny/pretrain/ckpt.pt --prompt "Once upon a time"

    from gpt import GPT, GPTConfig, flops_per_token
    model = GPT(GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128))
    logits, loss = model(idx, targets)          # idx, targets: (B, T) int64; -100 in targets = ignore

Interview questions it answers:
- Why pre-LN? (the residual stream is an identity path from input to output, so gradients reach every
  layer unscaled and training works without warmup tricks; post-LN normalizes the sum and needs warmup)
- Why divide attention scores by sqrt(d)? (q·k of two unit-variance d-vectors has variance d; without
  the scale softmax saturates to one-hot and its gradient vanishes)
- What does RoPE do? (rotates each (q, k) coordinate pair by an angle proportional to the position,
  so q·k depends only on the relative distance)
- How does GQA shrink the KV cache? (Hkv < H key/value heads, each shared by H/Hkv query heads:
  the cache is 2·L·Hkv·hd·T numbers per sequence instead of 2·L·H·hd·T)
- What does top-p keep? (the smallest set of most likely tokens whose probability mass reaches p)
- How many FLOPs per token? (6N for forward+backward of the matmuls, plus 12·L·T·d for attention)
- What does a MoE router's auxiliary loss do? (pushes the fraction of tokens sent to each expert
  towards uniform, so no expert starves and none is overloaded)
"""
import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "01_data"), str(REPO / "02_tokenizer"), str(REPO / "kernels")]
from common import UserError, run_cli  # 01_data
from attention_backends import BACKENDS, attention  # kernels
from checkpoint_io import load_checkpoint, check_config_matches  # 03_model (this folder)
from decoding import KVCache, apply_repetition_penalty, check_sampling_args, left_pad, sample_next  # 03_model

CHOICES = {
    "pos_emb": ("learned", "sinusoidal", "rope", "none"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "relu", "swiglu"),
    "attn_backend": BACKENDS,
}


@dataclass
class GPTConfig:
    vocab_size: int = 512
    block_size: int = 256          # the longest sequence (context length) the model accepts
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None   # None = n_head (MHA); 1 = MQA; between = GQA
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False             # biases in Linear layers (GPT-2 had them; Llama has none)
    pos_emb: str = "rope"          # learned (GPT-2) | sinusoidal (2017) | rope (Llama) | none
    rope_theta: float = 10000.0
    norm: str = "rmsnorm"          # layernorm | rmsnorm
    norm_eps: float = 1e-5
    pre_norm: bool = True          # False = post-LN, as in the original Transformer
    qk_norm: bool = False          # RMSNorm on each head's q and k before the dot product
    mlp: str = "swiglu"            # gelu | relu | swiglu
    n_experts: int = 0             # 0 = dense feed-forward; > 0 = mixture of experts
    moe_top_k: int = 2
    moe_aux_coef: float = 0.01     # weight of the load-balancing loss added to the LM loss
    tie_weights: bool = True       # LM head shares the token-embedding matrix
    attn_backend: str = "auto"     # kernels/attention_backends.py: auto (Triton on CUDA) | triton | torch | tiled | sdpa
    # Explicit sizes for a model whose heads or MLP neurons were removed (07_distill_quant/prune.py):
    # None = the usual n_embd // n_head and 4·n_embd (gelu/relu) or swiglu_hidden(n_embd).
    head_size: int | None = None
    mlp_hidden: int | None = None

    def __post_init__(self):
        for field, allowed in CHOICES.items():
            if getattr(self, field) not in allowed:
                raise UserError(f"{field}={getattr(self, field)!r} is not supported; choose one of {', '.join(allowed)}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_size is None and self.n_embd % self.n_head:
            raise UserError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                            "pick n_embd as a multiple of n_head")
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}; "
                            "each key/value head must serve the same number of query heads")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise UserError(f"RoPE rotates coordinate pairs, so the head dim must be even (got {self.head_dim})")
        if self.attn_backend == "triton":  # forced: fail now, not at the first forward pass
            from flash_attention import SUPPORTED_HEAD_DIMS  # kernels; loads Triton, so only when asked
            if self.head_dim not in SUPPORTED_HEAD_DIMS:
                raise UserError(f"head dim {self.head_dim} (n_embd/n_head) is not supported by the Triton kernel; "
                                f"use one of {SUPPORTED_HEAD_DIMS} or --attn-backend auto")
        if self.n_experts and not 1 <= self.moe_top_k <= self.n_experts:
            raise UserError(f"moe_top_k={self.moe_top_k} must be between 1 and n_experts={self.n_experts}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return swiglu_hidden(self.n_embd) if self.mlp == "swiglu" else 4 * self.n_embd


PRESETS = {  # two ends of the design space; any field can still be overridden
    "gpt2": dict(pos_emb="learned", norm="layernorm", mlp="gelu", bias=True),
    "llama": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False),
}


def config_from_dict(d: dict, source="config") -> GPTConfig:
    """Rebuild a GPTConfig from `dataclasses.asdict` output, with a clear error for unknown fields."""
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"{source}: unknown config field(s) {unknown}; was it written by another version?")
    return GPTConfig(**d)


# ----------------------------------------------------------------------------- norms

class LayerNorm(nn.Module):
    """y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias over the last (feature) dimension,
    var the biased variance mean((x - mean(x))²)."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):  # torch's fused kernel computes exactly the formula above (checked in the tests)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) * weight. No mean subtraction and no bias: cheaper, works as well."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()  # the mean of squares in fp32, even under bf16 autocast
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(cfg: GPTConfig, dim=None):
    dim = dim or cfg.n_embd
    return RMSNorm(dim, cfg.norm_eps) if cfg.norm == "rmsnorm" else LayerNorm(dim, cfg.norm_eps)


# ----------------------------------------------------------------------------- positions

def sinusoidal_positions(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """The 2017 table, computed for the given positions (any shape) -> (..., dim), fp32:
    PE[p, 2i] = sin(p / 10000^(2i/d)),  PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)  # (ceil(d/2),)
    angles = pos.float()[..., None] * inv_freq                                      # (..., ceil(d/2))
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)              # sin, cos interleaved
    return pe[..., :dim]


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta=10000.0):
    """cos and sin of the RoPE angles p·θ_i with θ_i = theta^(-2i/hd): each (..., hd/2), fp32.
    Computed from the position ids on every call (cheap), so they stay fp32 even in a bf16 model."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim)
    angles = pos.float()[..., None] * inv_freq                                      # (..., hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each pair (x_2i, x_2i+1) by angle p·θ_i:
    (x_2i, x_2i+1) -> (x_2i·cos - x_2i+1·sin, x_2i·sin + x_2i+1·cos).  x (B, H, T, hd); cos/sin (B, 1, T, hd/2)."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)          # (B, H, T, hd/2, 2)
    return out.flatten(-2).to(x.dtype)


# ----------------------------------------------------------------------------- attention

def masked_attention(q, k, v, allowed):
    """softmax(QKᵀ/sqrt(hd) masked) V with an explicit boolean mask `allowed` (B, 1, T, S).

    The KV-cache and padding paths use this plain math: the flash kernel only knows "causal or not",
    and here the mask depends on per-row padding and on the cache offset.
    """
    H, Hkv = q.shape[1], k.shape[1]
    if H != Hkv:  # GQA: with g = H/Hkv, query heads g·j ... g·j+g-1 share key/value head j
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    att = (q.float() @ k.float().transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, T, S)
    att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return (att @ v.float()).to(q.dtype)                                          # (B, H, T, hd)


class Attention(nn.Module):
    """Multi-head self-attention with H query heads and Hkv key/value heads (MHA, GQA or MQA)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        H, Hkv, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.n_embd, H * hd, bias=cfg.bias)
        self.wk = nn.Linear(cfg.n_embd, Hkv * hd, bias=cfg.bias)
        self.wv = nn.Linear(cfg.n_embd, Hkv * hd, bias=cfg.bias)
        self.wo = nn.Linear(H * hd, cfg.n_embd, bias=cfg.bias)   # the residual projection
        if cfg.qk_norm:  # bounds q·k, so logits cannot blow up (OLMo 2, Qwen 3)
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)
        # Hook for prefix tuning (05_sft_lora/prefix.py): kv_prefix(k, v, allowed) -> (k, v, allowed)
        # with P learned keys/values in front. None (the default) leaves attention exactly as it is.
        self.kv_prefix = None

    def forward(self, x, rope=None, allowed=None, cache=None, layer=0, context=None, causal=True):
        """x (B, T, d) -> (B, T, d). Queries come from x; keys and values from x (self-attention) or from
        `context` (B, S, d) (cross-attention, as in the encoder-decoder Transformer). `allowed`
        (B, 1, T, S) is an explicit mask (padding, KV cache); without it attention is causal or not."""
        B, T, _ = x.shape
        cfg = self.cfg
        src = x if context is None else context
        S = src.shape[1]
        q = self.wq(x).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)       # (B, H, T, hd)
        k = self.wk(src).view(B, S, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)  # (B, Hkv, S, hd)
        v = self.wv(src).view(B, S, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)  # (B, Hkv, S, hd)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)                                      # (B, Hkv, pos+T, hd)
        if self.kv_prefix is not None:  # after the cache: prefixes are not tokens, so never cached
            k, v, allowed = self.kv_prefix(k, v, allowed)                         # (B, Hkv, P+S, hd)
        if allowed is None:  # the training path: one fused call over the whole sequence
            y = attention(q, k, v, causal=causal, backend=cfg.attn_backend)
        else:
            y = masked_attention(q, k, v, allowed)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))                      # (B, T, d)


# ----------------------------------------------------------------------------- feed-forward

def swiglu_hidden(d: int, multiple=32) -> int:
    """SwiGLU has three matrices instead of two, so its hidden size is 2/3 of the usual 4d to keep the
    parameter count: 3·d·h = 2·d·4d  =>  h = 8d/3, rounded up to a multiple of 32 for efficient matmuls."""
    return multiple * math.ceil(int(8 * d / 3) / multiple)


class MLP(nn.Module):
    """gelu/relu: down(act(up(x))), hidden 4d.   swiglu: down(silu(gate(x)) * up(x)), hidden 8d/3."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = cfg.ffn_hidden
        self.up = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.gate = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)   # the residual projection

    def forward(self, x):
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        act = F.gelu if self.kind == "gelu" else F.relu
        return self.down(act(self.up(x)))


def load_balancing_loss(probs, top_idx, n_experts):
    """Switch-Transformer auxiliary loss: n_experts · Σ_i f_i · P_i.

    f_i = fraction of routing slots (tokens × k) that go to expert i (counted, no gradient);
    P_i = mean router probability of expert i (differentiable). Both are 1/E at a uniform load,
    where the loss is 1, its minimum when the router is balanced.  probs (N, E), top_idx (N, k).
    """
    f = torch.bincount(top_idx.flatten(), minlength=n_experts).float() / top_idx.numel()   # (E,)
    P = probs.float().mean(dim=0)                                                           # (E,)
    return n_experts * (f * P).sum()


class MoE(nn.Module):
    """Mixture of experts: a router picks k of E MLPs per token; their outputs are mixed by the router's
    renormalized probabilities. Capacity-free: every token reaches its k experts, none is dropped.
    Each expert only runs on the tokens routed to it, so compute per token is k experts, not E."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.top_k = cfg.moe_top_k
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))

    def forward(self, x):
        """Returns (output like x, auxiliary load-balancing loss)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                              # (N, d)
        probs = self.router(x).float().softmax(dim=-1)                           # (N, E)
        top_p, top_idx = probs.topk(self.top_k, dim=-1)                          # (N, k)
        weights = (top_p / top_p.sum(dim=-1, keepdim=True)).to(x.dtype)          # (N, k)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            # run it even on zero tokens: every parameter then stays in the autograd graph, which DDP
            # requires (an unused parameter would leave its gradient all-reduce waiting)
            token, slot = (top_idx == e).nonzero(as_tuple=True)                  # tokens routed to e
            out.index_add_(0, token, weights[token, slot, None] * expert(x[token]))
        return out.view(shape), load_balancing_loss(probs, top_idx, len(self.experts))


# ----------------------------------------------------------------------------- block

class Block(nn.Module):
    """pre-LN:  x = x + attn(norm(x));  x = x + ffn(norm(x))
    post-LN: x = norm(x + attn(x));  x = norm(x + ffn(x))    (the 2017 original)"""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.ffn = MoE(cfg) if cfg.n_experts else MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def residual_projections(self):
        """The matrices that write into the residual stream (scaled at init)."""
        ffns = self.ffn.experts if isinstance(self.ffn, MoE) else [self.ffn]
        return [self.attn.wo.weight] + [m.down.weight for m in ffns]

    def feed_forward(self, x):
        out = self.ffn(x)
        return out if isinstance(out, tuple) else (out, x.new_zeros(()))

    def forward(self, x, rope=None, allowed=None, cache=None, layer=0):
        """Returns (x, MoE auxiliary loss or 0). x (B, T, d)."""
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), rope, allowed, cache, layer))
            h, aux = self.feed_forward(self.norm2(x))
            return x + self.drop(h), aux
        x = self.norm1(x + self.drop(self.attn(x, rope, allowed, cache, layer)))
        h, aux = self.feed_forward(x)
        return self.norm2(x + self.drop(h)), aux


# ----------------------------------------------------------------------------- the model

class GPT(nn.Module):
    """token embedding (+ positions) -> n_layer blocks -> final norm -> LM head -> logits."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_emb == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        # sinusoidal positions and RoPE angles are functions of the position, not parameters
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # post-LN blocks already end with a norm; pre-LN leaves the residual stream unnormalized
        self.norm_f = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:  # one (V, d) matrix both reads tokens in and scores them out
            self.lm_head.weight = self.tok_emb.weight
        self.grad_checkpointing = False
        self.aux_loss = None  # the last forward's MoE load-balancing loss, for logging
        self.reset_parameters()

    def reset_parameters(self):
        """normal(0, 0.02) everywhere; projections into the residual stream normal(0, 0.02/sqrt(2·n_layer)).

        Why not Xavier (var = 2/(fan_in+fan_out), keeps the variance of activations and gradients for a
        linear/tanh layer) or Kaiming (var = 2/fan_in, compensates ReLU zeroing half the units)? Both
        reason about one layer. In a residual network each block *adds* to the stream, so after
        n_layer blocks (two additions each) the stream's variance grows by 2·n_layer terms; scaling the
        last matrix of each branch by 1/sqrt(2·n_layer) keeps it O(1) at init (GPT-2). 0.02 is close to
        Xavier's 1/sqrt(d) for d ≈ 768-2500 and is kept fixed across sizes, as GPT-2 did.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for block in self.blocks:
            for w in block.residual_projections():
                nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))

    def num_params(self, non_embedding=True) -> int:
        """Parameter count (tied weights once). non_embedding drops token and position embeddings
        (Kaplan et al.'s N; with tied weights that also drops the LM head, which shares the matrix)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.cfg.pos_emb == "learned":
                n -= self.pos_emb.weight.numel()
        return n

    def positions_and_mask(self, B, T, start, attention_mask, device):
        """Position ids (B or 1, T) and the boolean mask `allowed` (B, 1, T, start+T), or None for plain causal.

        With left padding the positions count real tokens only, so a padded prompt is seen exactly as
        the same prompt alone: position = (number of real tokens up to here) - 1.
        """
        if attention_mask is not None:
            keep = attention_mask.bool()                                            # (B, S)
            pos = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, start:]              # (B, T)
        else:
            if start == 0:
                return torch.arange(T, device=device)[None], None
            keep = torch.ones(B, start + T, dtype=torch.bool, device=device)
            pos = torch.arange(start, start + T, device=device)[None]               # (1, T)
        S = start + T
        q_abs = torch.arange(start, S, device=device)[:, None]                     # (T, 1)
        k_abs = torch.arange(S, device=device)[None, :]                            # (1, S)
        allowed = (k_abs <= q_abs) & keep[:, None, :]                               # (B, T, S)
        # a padding query sees no real key; letting it see itself keeps its softmax finite (its
        # output is never used, since no real token attends to a padding key)
        allowed = allowed | (k_abs == q_abs)
        return pos, allowed[:, None]                                                # (B, 1, T, S)

    def forward(self, idx, targets=None, attention_mask=None, cache=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        attention_mask (B, cache.pos + T), 1 = token, 0 = left padding; cache: a KVCache (generation).
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise UserError(f"sequence of {start + T} tokens is longer than block_size={self.cfg.block_size}; "
                            "crop the input or use a model with a longer context")
        pos, allowed = self.positions_and_mask(B, T, start, attention_mask, idx.device)
        x = self.tok_emb(idx)                                                       # (B, T, d)
        if self.cfg.pos_emb == "learned":
            x = x + self.pos_emb(pos)
        elif self.cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_positions(pos, self.cfg.n_embd).to(x.dtype)
        rope = None
        if self.cfg.pos_emb == "rope":
            cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta)       # (B or 1, T, hd/2)
            rope = (cos[:, None], sin[:, None])                                         # (B or 1, 1, T, hd/2)
        x = self.drop(x)
        aux_total = x.new_zeros((), dtype=torch.float32)
        for layer, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and cache is None:
                # keep only the block's input; recompute its insides during backward
                x, aux = checkpoint(block, x, rope, allowed, use_reentrant=False)
            else:
                x, aux = block(x, rope, allowed, cache, layer)
            aux_total = aux_total + aux
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.norm_f(x))                                       # (B, T, V)
        self.aux_loss = aux_total / self.cfg.n_layer if self.cfg.n_experts else None
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
            if self.aux_loss is not None:
                loss = loss + self.cfg.moe_aux_coef * self.aux_loss
        return logits, loss

    @classmethod
    def from_checkpoint(cls, path, config: GPTConfig | None = None, map_location="cpu") -> "GPT":
        """Build the model a checkpoint describes and load its weights. With `config`, first check the
        saved config equals it (a UserError names every differing field)."""
        ckpt = load_checkpoint(path, map_location)
        if config is not None:
            check_config_matches(ckpt["config"], dataclasses.asdict(config), path)
        model = cls(config_from_dict(ckpt["config"], path))
        state = {k.replace("_orig_mod.", ""): v for k, v in ckpt["model"].items()}  # torch.compile prefixes
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # missing or unexpected keys, or shapes that differ
            raise UserError(f"{path}: weights do not fit the saved config ({str(e).splitlines()[1].strip()}); "
                            "the file was not written from this config") from None
        return model.to(map_location)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                 stop_tokens=(), attention_mask=None, pad_id=0, use_cache=True, generator=None):
        """Continue each prompt row of idx (B, T0); returns (B, T0 + n) with n <= max_new_tokens.

        attention_mask (B, T0): 0 marks left padding (see `left_pad`). temperature 0 = greedy.
        A row that emits a stop token keeps it and is padded with `pad_id` from then on; the loop ends
        when every row has stopped. use_cache=False recomputes the whole sequence at every step
        (the slow reference the KV cache must match exactly).
        """
        B, T0 = idx.shape
        check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        if T0 + max_new_tokens > self.cfg.block_size:
            raise UserError(f"prompt ({T0} tokens) + max_new_tokens ({max_new_tokens}) = {T0 + max_new_tokens} "
                            f"is longer than block_size={self.cfg.block_size}; shorten one of them")
        was_training = self.training
        self.eval()
        mask = attention_mask.bool() if attention_mask is not None else None
        cache = KVCache(self.cfg.n_layer, T0 + max_new_tokens) if use_cache else None
        stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        out, step_input = idx, idx  # with a cache, each step feeds only the new token
        for _ in range(max_new_tokens):
            logits, _ = self(step_input if use_cache else out, attention_mask=mask, cache=cache)
            logits = logits[:, -1].float()                                          # (B, V)
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, out, repetition_penalty, mask)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)         # (B,)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            done |= torch.isin(nxt, stop)
            if done.all():
                break
            step_input = nxt[:, None]
        self.train(was_training)
        return out


# ----------------------------------------------------------------------------- counting

def matmul_params(cfg: GPTConfig) -> int:
    """Weights a token multiplies through in one forward pass (MoE: only its k experts + the router).
    Norms and biases are left out: they cost O(d) per token, not O(d²)."""
    d, hd, L = cfg.n_embd, cfg.head_dim, cfg.n_layer
    attn = d * cfg.n_head * hd + 2 * d * cfg.n_kv_head * hd + cfg.n_head * hd * d   # wq, wk, wv, wo
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.ffn_hidden
    ffn = cfg.moe_top_k * mlp + d * cfg.n_experts if cfg.n_experts else mlp
    return L * (attn + ffn) + d * cfg.vocab_size                                    # + the LM head


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token = 6·N + 12·L·T·d  (Kaplan et al. 2020; PaLM appendix B).

    6·N: each weight does one multiply-add (2 FLOPs) per token forward, and backward costs twice the
    forward (gradients for inputs and for weights). 12·L·T·d: per layer, QKᵀ and softmax·V each cost
    2·T·d FLOPs per token forward; ×3 for backward. It counts the full T×T square, as PaLM's MFU does,
    although a causal mask makes half of it unneeded.
    """
    T = seq_len or cfg.block_size
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layer * T * cfg.n_embd


# ----------------------------------------------------------------------------- command line

def load_tokenizer(ckpt_path: Path, tokenizer_dir):
    """The tokenizer named by --tokenizer, else by the checkpoint's "tokenizer" entry, else the run's
    tokenizer/ folder beside pretrain/ (runs/<name>/pretrain/ckpt.pt -> runs/<name>/tokenizer)."""
    from bpe import BPETokenizer  # 02_tokenizer; imported here so the model itself never needs it
    candidates = [Path(tokenizer_dir)] if tokenizer_dir else []
    if not tokenizer_dir:
        saved = load_checkpoint(ckpt_path).get("tokenizer")
        if isinstance(saved, str):
            candidates += [Path(saved), ckpt_path.parent / saved, ckpt_path.parent.parent / saved]
        candidates.append(ckpt_path.parent.parent / "tokenizer")
    for d in candidates:
        if (d / "tokenizer.json").is_file():
            return BPETokenizer.load(d)
    raise UserError(f"no tokenizer found (looked in {', '.join(map(str, candidates))}); "
                    "pass --tokenizer runs/<name>/tokenizer")


def config_from_args(args) -> GPTConfig:
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return GPTConfig(**{**PRESETS[args.preset], **overrides})


def describe(cfg: GPTConfig) -> str:
    model = GPT(cfg)
    n_total, n_body = model.num_params(non_embedding=False), model.num_params()
    kv_bytes = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * cfg.block_size * 2
    return "\n".join([
        f"config: {dataclasses.asdict(cfg)}",
        f"parameters:            {n_total:,} ({n_body:,} without embeddings)",
        f"matmul params / token: {matmul_params(cfg):,}",
        f"training FLOPs / token at T={cfg.block_size}: {flops_per_token(cfg):.3e}",
        f"KV cache per sequence at T={cfg.block_size} in bf16: {kv_bytes / 2**20:.2f} MiB",
    ])


def parse_bool(s: str) -> bool:
    if s.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return s.lower() in ("true", "1")


def main(argv=None):
    p = argparse.ArgumentParser(description="Sample from a GPT checkpoint, or (without --ckpt) print the "
                                "parameter count and FLOPs/token of a config.")
    p.add_argument("--ckpt", help="checkpoint to sample from (e.g. runs/tiny/pretrain/ckpt.pt)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one the checkpoint names)")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for a batch (left-padded)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default="llama", help="base config without --ckpt")
    for f in dataclasses.fields(GPTConfig):  # every config field can be set: --n-layer 12 --pos-emb learned
        kind = {bool: parse_bool, float: float, str: str}.get(f.type, int)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       choices=CHOICES.get(f.name), help=f"config field (default {f.default})")
    args = p.parse_args(argv)

    if not args.ckpt:
        print(describe(config_from_args(args)))
        return
    ckpt_path = Path(args.ckpt)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda but no GPU is visible; use --device cpu")
    model = GPT.from_checkpoint(ckpt_path, map_location=args.device)
    tok = load_tokenizer(ckpt_path, args.tokenizer)
    if tok.vocab_size > model.cfg.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model only {model.cfg.vocab_size}; "
                        "pass the tokenizer the model was trained with")
    prompts = args.prompt or ["Once upon a time"]
    # each prompt starts after <|endoftext|>, as every document did in the pretraining stream
    idx, mask = left_pad([[tok.eot_id] + tok.encode(s) for s in prompts],
                         pad_id=tok.special_tokens.get("<|pad|>", tok.eot_id), device=args.device)
    if idx.shape[1] >= model.cfg.block_size:
        raise UserError(f"the longest prompt is {idx.shape[1]} tokens but the model's context is "
                        f"{model.cfg.block_size}; shorten it")
    max_new = min(args.max_new_tokens, model.cfg.block_size - idx.shape[1])
    out = model.generate(idx, max_new, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         repetition_penalty=args.repetition_penalty, stop_tokens=[tok.eot_id],
                         attention_mask=mask, pad_id=tok.eot_id,
                         generator=torch.Generator(device=args.device).manual_seed(args.seed))
    for prompt, row in zip(prompts, out[:, idx.shape[1]:].tolist()):
        if tok.eot_id in row:
            row = row[:row.index(tok.eot_id)]
        print(f"--- {prompt!r}\n{prompt}{tok.decode(row)}")


if __name__ == "__main__":
    run_cli(main)
