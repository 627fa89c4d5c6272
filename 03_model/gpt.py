"""A decoder-only GPT, written to be read top to bottom, with the switches modern LLMs flip.

    config -> norms -> attention -> feed-forward -> block -> GPT (forward, loss) -> counting -> CLI

One `GPTConfig` selects GPT-2 style (learned positions, LayerNorm, GELU, MHA) or Llama style (RoPE,
RMSNorm, SwiGLU, GQA) or anything between, plus post-LN (the 2017 original), QK-norm, a
mixture-of-experts feed-forward (mixture_of_experts.py), z-loss (lm_loss.py) and attention masked at
document boundaries. The class is the network; decoding it is decoding.py's `generate(model, idx)`,
the one sampler of the repository (a preallocated KV cache, greedy / temperature / top-k / top-p,
repetition penalty, stop tokens, a batch of left-padded prompts with an attention mask), with
`generate_beam` beside it. Later stages import them instead of writing their own. Sampling from a checkpoint on the
command line is sample_text.py; memory (KV cache, activations) is model_memory.py; positions
(sinusoidal, RoPE, document boundaries) are position_encoding.py.

    python 03_model/gpt.py --help
    python 03_model/gpt.py --n-layer 12 --n-embd 768 --n-head 12    # parameter count, FLOPs, memory

    from gpt import GPT, GPTConfig, flops_per_token
    model = GPT(GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128))
    logits, loss = model(idx, targets)          # idx, targets: (B, T) int64; -100 in targets = ignore

Interview questions it answers:
- Why pre-LN? (the residual stream is an identity path from input to output, so gradients reach every
  layer unscaled and training works without warmup tricks; post-LN normalizes the sum and needs warmup)
- Why divide attention scores by sqrt(d)? (q·k of two unit-variance d-vectors has variance d; without
  the scale softmax saturates to one-hot and its gradient vanishes)
- How does GQA shrink the KV cache? (Hkv < H key/value heads, each shared by H/Hkv query heads:
  the cache is 2·L·Hkv·hd·T numbers per sequence instead of 2·L·H·hd·T)
- How many FLOPs per token? (6N for forward+backward of the matmuls, plus 12·L·T·d for attention)
"""

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
sys.path[:0] = [str(REPO), str(REPO / "kernels")]
from common.cli import UserError, check_config, option, parse_config, run_cli
from attention_backends import BACKENDS, attention  # kernels
from checkpoint_io import load_checkpoint, check_config_matches  # 03_model (this folder)
from lm_loss import cross_entropy_and_z  # 03_model
from mixture_of_experts import MoE  # 03_model
from model_memory import activation_bytes_per_layer, kv_cache_bytes  # 03_model
from position_encoding import (
    apply_rope,
    document_positions_and_mask,
    positions_and_mask,
    segment_positions_and_mask,  # 03_model
    rope_cos_sin,
    sinusoidal_positions,
)


POS_EMB = ("learned", "sinusoidal", "rope", "none")


@dataclass
class GPTConfig:
    vocab_size: int = option(512, "tokens in the vocabulary", min=1)
    block_size: int = option(256, "the longest sequence (context length) the model accepts", min=1)
    n_layer: int = option(4, "transformer blocks", min=1)
    n_head: int = option(4, "query heads", min=1)
    n_kv_head: int = option(0, "key/value heads: 0 = n_head (MHA), 1 = MQA, between = GQA", min=0)
    n_embd: int = option(128, "model width d", min=1)
    dropout: float = option(0.0, "dropout on embeddings and residual branches", min=0.0, max=0.99)
    bias: bool = option(False, "biases in Linear layers (GPT-2 had them; Llama has none)")
    pos_emb: str = option("rope", "GPT-2: learned; 2017: sinusoidal; Llama: rope", choices=POS_EMB)
    rope_theta: float = option(10000.0, "RoPE base: angle of pair i is p·theta^(-2i/hd)", min=1.0)
    rope_pairs: str = option(
        "interleaved", "RoPE's coordinate pairs (apply_rope)", choices=("interleaved", "half")
    )
    norm: str = option("rmsnorm", "layernorm | rmsnorm", choices=("layernorm", "rmsnorm"))
    norm_eps: float = option(1e-5, "epsilon inside the norm's square root", min=0.0)
    pre_norm: bool = option(
        True, "normalize each sublayer's input (pre-LN); off = post-LN, the 2017 original"
    )
    qk_norm: bool = option(False, "RMSNorm on each head's q and k before the dot product")
    mlp: str = option(
        "swiglu",
        "gelu (exact, erf) | gelu_tanh (GPT-2's tanh approximation, HF gelu_new) | relu | swiglu",
        choices=("gelu", "gelu_tanh", "relu", "swiglu"),
    )
    n_experts: int = option(0, "0 = dense feed-forward; > 0 = mixture of experts", min=0)
    moe_top_k: int = option(2, "experts per token", min=1)
    moe_aux_coef: float = option(0.01, "weight of the load-balancing loss added to the LM loss", min=0.0)
    tie_weights: bool = option(True, "LM head shares the token-embedding matrix")
    attn_backend: str = option(
        "auto", "auto: Triton on CUDA, SDPA on CPU (attention_backends.py)", choices=BACKENDS
    )
    z_loss_coef: float = option(0.0, "+ coef·mean(logsumexp(logits)²), lm_loss.py; PaLM: 1e-4", min=0.0)
    doc_boundary_id: int = option(
        -1,
        "token that opens a document (<|endoftext|>): attention does not cross "
        "it and positions restart there; -1 = off",
        min=-1,
    )
    # Explicit sizes for a model whose heads or MLP neurons were removed (07_distill_quant/prune.py);
    # 0 = the usual n_embd // n_head and 4·n_embd (gelu/relu) or swiglu_hidden(n_embd).
    head_size: int = option(0, "per-head dim: 0 = n_embd // n_head (set by pruning)", min=0)
    mlp_hidden: int = option(
        0, "MLP hidden units: 0 = 4·d (gelu/relu) or 8d/3 (swiglu) (set by pruning)", min=0
    )

    def __post_init__(self):
        check_config(self)  # choices and ranges, as the command line checks them
        self.n_kv_head = self.n_kv_head or self.n_head  # None or 0 = MHA (older configs say None)
        if not self.head_size and self.n_embd % self.n_head:
            raise UserError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "pick n_embd as a multiple of n_head"
            )
        if self.n_head % self.n_kv_head:
            raise UserError(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}; "
                "each key/value head must serve the same number of query heads"
            )
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise UserError(
                f"RoPE rotates coordinate pairs, so the head dim must be even (got {self.head_dim})"
            )
        if self.attn_backend == "triton":  # forced: fail now, not at the first forward pass
            from flash_tiles import SUPPORTED_HEAD_DIMS  # kernels; loads Triton, so only when asked

            if self.head_dim not in SUPPORTED_HEAD_DIMS:
                raise UserError(
                    f"head dim {self.head_dim} (n_embd/n_head) is not supported by the Triton kernel; "
                    f"use one of {SUPPORTED_HEAD_DIMS} or --attn-backend auto"
                )
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
    """Rebuild a GPTConfig from `dataclasses.asdict` output, with a clear error for unknown fields.
    Fields added since the dict was written take their defaults."""
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
        # >>> exercise: x / sqrt(mean(x², last dim) + eps) · weight; mean of squares in fp32, out in x's dtype
        xf = x.float()  # the mean of squares in fp32, even under bf16 autocast
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight
        # <<< exercise


def make_norm(cfg: GPTConfig, dim=None):
    dim = dim or cfg.n_embd
    return RMSNorm(dim, cfg.norm_eps) if cfg.norm == "rmsnorm" else LayerNorm(dim, cfg.norm_eps)


# ----------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head self-attention with H query heads and Hkv key/value heads (MHA, GQA or MQA)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        H, Hkv, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.n_embd, H * hd, bias=cfg.bias)
        self.wk = nn.Linear(cfg.n_embd, Hkv * hd, bias=cfg.bias)
        self.wv = nn.Linear(cfg.n_embd, Hkv * hd, bias=cfg.bias)
        self.wo = nn.Linear(H * hd, cfg.n_embd, bias=cfg.bias)  # the residual projection
        if cfg.qk_norm:  # bounds q·k, so logits cannot blow up (OLMo 2, Qwen 3)
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)
        # Hook for prefix tuning (05_sft_lora/prefix.py): kv_prefix(k, v, allowed) -> (k, v, allowed)
        # with P learned keys/values in front. None (the default) leaves attention exactly as it is.
        self.kv_prefix = None

    def forward(self, x, rope=None, allowed=None, cache=None, layer=0, context=None, causal=True):
        """x (B, T, d) -> (B, T, d). Queries come from x; keys and values from x (self-attention) or from
        `context` (B, S, d) (cross-attention, as in the encoder-decoder Transformer). `allowed`
        (B, 1, T, S) is an explicit mask (padding, KV cache, documents); without it attention is causal or not."""
        B, T, _ = x.shape
        cfg = self.cfg
        src = x if context is None else context
        S = src.shape[1]
        q = self.wq(x).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(src).view(B, S, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)  # (B, Hkv, S, hd)
        v = self.wv(src).view(B, S, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)  # (B, Hkv, S, hd)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope, cfg.rope_pairs), apply_rope(k, *rope, cfg.rope_pairs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, pos+T, hd)
        if self.kv_prefix is not None:  # after the cache: prefixes are not tokens, so never cached
            k, v, allowed = self.kv_prefix(k, v, allowed)  # (B, Hkv, P+S, hd)
        if allowed is None:  # the training path: one fused call over the whole sequence
            y = attention(q, k, v, causal=causal, backend=cfg.attn_backend)
        else:  # the Triton and tiled kernels know only causal-or-not: a mask goes to SDPA (or naive)
            backend = cfg.attn_backend if cfg.attn_backend in ("torch", "sdpa") else "auto"
            y = attention(q, k, v, causal=False, mask=allowed, backend=backend)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, d)


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
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)  # the residual projection

    def forward(self, x):
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        h = self.up(x)
        if self.kind == "gelu_tanh":  # GPT-2's 0.5·h·(1 + tanh(√(2/π)·(h + 0.044715·h³)))
            return self.down(F.gelu(h, approximate="tanh"))
        return self.down(F.gelu(h) if self.kind == "gelu" else F.relu(h))


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
        self.ffn = (
            MoE(cfg.n_embd, cfg.n_experts, cfg.moe_top_k, lambda: MLP(cfg)) if cfg.n_experts else MLP(cfg)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def residual_projections(self):
        """The matrices that write into the residual stream (scaled at init)."""
        ffns = self.ffn.experts if isinstance(self.ffn, MoE) else [self.ffn]
        return [self.attn.wo.weight] + [m.down.weight for m in ffns]

    def feed_forward(self, x):
        out = self.ffn(x)
        return out if isinstance(out, tuple) else (out, None)

    def forward(self, x, rope=None, allowed=None, cache=None, layer=0):
        """Returns (x, MoE auxiliary loss or None). x (B, T, d)."""
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
        self.z_loss = None  # the last forward's mean logsumexp(logits)², for logging (lm_loss.py)
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

    def forward(self, idx, targets=None, attention_mask=None, cache=None, segments=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        attention_mask (B, cache.pos + T), 1 = token, 0 = left padding; cache: a KVCache (generation).
        With cfg.doc_boundary_id >= 0, a whole window (no cache, no padding mask: training and
        evaluation) is split into documents (`document_positions_and_mask`); generation treats each
        row as one document, as its prompts start with <|endoftext|>. segments (B, T): explicit
        segment ids (05's packed examples), each attending only to itself with positions from 0.
        loss = cross-entropy [+ z_loss_coef · z²] [+ moe_aux_coef · load balancing], lm_loss.py.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise UserError(
                f"sequence of {start + T} tokens is longer than block_size={self.cfg.block_size}; "
                "crop the input or use a model with a longer context"
            )
        if segments is not None:
            pos, allowed = segment_positions_and_mask(segments)
        elif self.cfg.doc_boundary_id >= 0 and cache is None and attention_mask is None:
            pos, allowed = document_positions_and_mask(idx, self.cfg.doc_boundary_id)
        else:
            pos, allowed = positions_and_mask(B, T, start, attention_mask, idx.device)
        x = self.tok_emb(idx)  # (B, T, d)
        if self.cfg.pos_emb == "learned":
            x = x + self.pos_emb(pos)
        elif self.cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_positions(pos, self.cfg.n_embd).to(x.dtype)
        rope = None
        if self.cfg.pos_emb == "rope":
            cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta)  # (B or 1, T, hd/2)
            rope = (cos[:, None], sin[:, None])  # (B or 1, 1, T, hd/2)
        x = self.drop(x)
        aux = []
        for layer, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and cache is None:
                # keep only the block's input; recompute its insides during backward
                x, layer_aux = checkpoint(block, x, rope, allowed, use_reentrant=False)
            else:
                x, layer_aux = block(x, rope, allowed, cache, layer)
            aux.append(layer_aux)
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        self.aux_loss = torch.stack(aux).mean() if self.cfg.n_experts else None
        loss = None
        if targets is not None:
            loss, z_loss = cross_entropy_and_z(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
            loss = loss + self.cfg.z_loss_coef * z_loss
            self.z_loss = z_loss.detach()  # detached: an attribute holding the graph would keep it alive
            if self.aux_loss is not None:
                loss = loss + self.cfg.moe_aux_coef * self.aux_loss
        return logits, loss

    @classmethod
    def from_checkpoint(
        cls, path, config: GPTConfig | None = None, map_location="cpu", made_by="", ckpt=None
    ):
        """Build the model a checkpoint describes and load its weights. With `config`, first check the
        saved config equals it (a UserError names every differing field). made_by: the command that
        makes the file, named in the error when it is missing or corrupt; ckpt: the file already loaded."""
        ckpt = ckpt if ckpt is not None else load_checkpoint(path, map_location, made_by=made_by)
        saved = config_from_dict(ckpt["config"], path)
        if config is not None:
            check_config_matches(dataclasses.asdict(saved), dataclasses.asdict(config), path)
        model = cls(saved)
        state = {k.replace("_orig_mod.", ""): v for k, v in ckpt["model"].items()}  # torch.compile prefixes
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # missing or unexpected keys, or shapes that differ
            raise UserError(
                f"{path}: weights do not fit the saved config ({str(e).splitlines()[1].strip()}); "
                "the file was not written from this config"
            ) from None
        return model.to(map_location)


# ----------------------------------------------------------------------------- counting


def matmul_params(cfg: GPTConfig) -> int:
    """Weights a token multiplies through in one forward pass (MoE: only its k experts + the router).
    Norms and biases are left out: they cost O(d) per token, not O(d²)."""
    d, hd, L = cfg.n_embd, cfg.head_dim, cfg.n_layer
    attn = d * cfg.n_head * hd + 2 * d * cfg.n_kv_head * hd + cfg.n_head * hd * d  # wq, wk, wv, wo
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.ffn_hidden
    ffn = cfg.moe_top_k * mlp + d * cfg.n_experts if cfg.n_experts else mlp
    return L * (attn + ffn) + d * cfg.vocab_size  # + the LM head


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


def describe(cfg: GPTConfig) -> str:
    with torch.device("meta"):  # shapes only: any size is instant and takes no memory
        model = GPT(cfg)
    T = cfg.block_size
    act = activation_bytes_per_layer(cfg, 1, T, torch.bfloat16) / 2**20 if not cfg.n_experts else float("nan")
    return "\n".join(
        [
            f"config: {dataclasses.asdict(cfg)}",
            f"parameters:            {model.num_params(False):,} ({model.num_params():,} without embeddings)",
            f"matmul params / token: {matmul_params(cfg):,}",
            f"training FLOPs / token at T={T}: {flops_per_token(cfg):.3e}",
            f"KV cache per sequence at T={T} in bf16: {kv_cache_bytes(cfg, 1, T) / 2**20:.2f} MiB",
            f"saved activations per layer per sequence at T={T} in bf16, flash attention: {act:.2f} MiB"
            + (" (MoE: depends on the routing)" if cfg.n_experts else ""),
        ]
    )


def main(argv=None):
    """Parameter count, FLOPs/token and memory of a config; every GPTConfig field is a flag."""
    cfg, _ = parse_config(GPTConfig, argv, doc=__doc__, presets=PRESETS, default_preset="llama")
    print(describe(cfg))


if __name__ == "__main__":
    run_cli(main)
