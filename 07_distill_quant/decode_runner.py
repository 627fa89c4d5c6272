"""The serving engine's decode step, written for inference: what a model runner does that 03's forward does not.

    from decode_runner import DecodeRunner, unsupported
    runner = DecodeRunner(model)               # unsupported(model) says why not, or None
    logits = runner.decode(slot_cache, last_tokens, active_rows)   # (B, V): what SlotCache.decode gives
    last = runner.prefill(idx, mask, kv_cache, ends)    # (n, V): 03's forward at each prompt's last token

batching.Engine uses one when the model allows it (`Engine(..., decode_runner=False)` keeps 03's
forward); `python 07_distill_quant/bench_serve.py` times both against 03's padded generate.

03's GPT.forward serves training, evaluation, prefill and decoding with one code path, which is what a
reader should see first. A decode step is a special case it pays for at every token: one new token per
row (T = 1), positions and mask derivable from the cache's bookkeeping, weights that never change. An
inference engine (vLLM's model runner, gpt-fast, llama.cpp) writes that case on its own. At this size
(4 layers, d = 128, batch 8) a step is ~30 small matrix products and ~150 other tensor calls, and each
call costs microseconds of dispatch whatever its size, so the step's time is mostly the number of
calls. What this runner removes, per step:

    03's forward, per step                           here
    wq, wk, wv: 3 products            (per layer)    one product with [Wq; Wk; Wv]        (vLLM's QKVParallelLinear)
    gate, up: 2 products              (per layer)    one product with [Wgate; Wup]        (MergedColumnParallelLinear)
    RoPE on q, then on k: slices,     (per layer)    once on q and k side by side, as one multiply-add
      6 products, a stack                            x·C + swap(x)·S (rope_tables)
    cos, sin from the positions       (per step)     (block_size, hd) tables made once, indexed
    RMSNorm: upcast, square, mean,    (per norm)     torch's fused F.rms_norm (fp32), the same numbers
      rsqrt, multiply, cast, multiply
    ~20 nn.Module calls               (per step)     F.linear / F.embedding on the modules' own weights
    positions: cumsum over the mask   (per step)     a sum of each row's mask
    mask: (B, 1, T, S) built from     (per step)     the cache's mask row, made additive (0 or -inf)
      arange, compare, and, or;                      once instead of inside each layer's SDPA call
      SDPA converts it in every layer
    q, k, v: view + transpose each    (per layer)    one view of q and k: with T = 1, (B, T, n, hd) is (B, n, T, hd)

The arithmetic is the same: each fused product computes the same dot products over the same inputs as
the separate ones, and every other operation is applied element by element as 03 applies it. On this
repository's CPU in fp32 the logits equal 03's forward bit for bit for the pipeline's shapes; a BLAS may
block a product of another width differently and move the last bit (a pruned model's 12-wide heads
did: 2e-7), which tests/test_07_serve.py allows while requiring the same argmax, keys and values.
bench_serve.py's first table has the end-to-end numbers: on the tiny shape, batch 8, one thread,
the engine decodes ~1.35x faster with this step than through 03's forward.

Prefill (`prefill`, Engine.prefill's pass of the prompts that join) runs the same blocks for T tokens a
row, with 03's own positions_and_mask, and computes the LM head only at each prompt's last token, the
one the engine samples from (03 computes all B·T rows of (d x V)). It matters for continuous batching:
new requests join a few at a time, so it runs many small prefill passes (75 for 96 requests, against
static batching's 12), and with decode made cheaper those passes were a third of its time.

The fused matrices are copies, made when the runner is built; a runner whose source weights have been
changed in place since (an optimizer step, load_state_dict) makes them again before its next step
(`stale`: a version counter per copied parameter). A module swapped in after the engine was built (an
adapter attached later) is not seen: attach adapters first, then build the Engine, as serve.py does. A
model with anything the fused step would skip returns a reason from `unsupported` and the engine keeps
03's forward for it: LoRA, adapters, prefix tuning and quantized layers (other module types or hooks),
mixture-of-experts, post-LN blocks and QK-norm.

Interview questions it answers:
- Why is a serving engine faster than Hugging Face's generate at the same batch? (its model runner is
  written for decoding: fused QKV and gate-up projections, precomputed rotary tables, a preallocated
  KV cache written in place, no mask rebuilt per step, CUDA graphs on a GPU; at small batch a decode
  step is bound by per-call overhead and weight reads, not by arithmetic)
- Why fuse the Q, K and V projections? (one (d, (H + 2Hkv)·hd) product reads x once and launches one
  kernel instead of three; the result is the same dot products, so the same numbers)
- What do CUDA graphs add on a GPU? (the step's ~150 kernel launches are recorded once and replayed as
  one: launch overhead, tens of microseconds a step, disappears; the CPU's equivalent here is calling fewer ops)
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "kernels")]
from attention_backends import attention  # kernels
from gpt import MLP, GPT, Attention, Block, LayerNorm, RMSNorm  # 03_model
from decoding import KVCache  # 03_model
from position_encoding import positions_and_mask, rope_cos_sin, sinusoidal_positions  # 03_model

# the module types of a plain 03 GPT: anything else (LoRALinear, QuantLinear, an adapter) changes the math
PLAIN = (GPT, Block, Attention, MLP, LayerNorm, RMSNorm)
PLAIN += (nn.Linear, nn.Embedding, nn.Dropout, nn.ModuleList, nn.Identity)  # torch's, as 03 uses them


def unsupported(model) -> str | None:
    """Why the fused step cannot run this model exactly, or None when it can."""
    cfg = model.cfg
    if cfg.n_experts:
        return "a mixture-of-experts feed-forward"
    if not cfg.pre_norm:
        return "post-LN blocks"
    if cfg.qk_norm:
        return "QK-norm"
    for name, module in model.named_modules():
        if type(module) not in PLAIN:
            return f"{name} is a {type(module).__name__}, not a plain layer (LoRA, adapters, quantized)"
        if module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__:
            return f"{name or 'the model'} has a hook or a replaced forward (adapters, pruning masks)"
        if isinstance(module, Attention) and module.kv_prefix is not None:
            return "prefix tuning's learned keys and values"
    return None


def norm_call(module):
    """x -> module(x) without the module call's overhead, the same numbers: F.layer_norm is what 03's
    LayerNorm calls; for an fp32 RMSNorm torch's fused F.rms_norm, equal to 03's formula bit for bit
    (checked on 3,000 random rows) and a third faster; otherwise the module itself (its fp32 upcast)."""
    w, eps, shape = module.weight, module.eps, (module.weight.shape[-1],)
    if isinstance(module, LayerNorm):
        return lambda x: F.layer_norm(x, shape, w, module.bias, eps)
    if w.dtype == torch.float32:
        return lambda x: F.rms_norm(x, shape, w, eps)
    return module


def rope_tables(cfg, device) -> tuple:
    """(C, S), each (block_size, hd): RoPE as one multiply-add, out = x·C + swap(x)·S, where swap
    exchanges the two coordinates of each pair. With a pair (a, b) at angle θ:
        a' = a·cos θ − b·sin θ = a·C + b·(−sin θ)        b' = a·sin θ + b·cos θ = b·C + a·sin θ
    so C holds cos θ at both coordinates and S holds (−sin θ, +sin θ). Each product and sum is the one
    03's apply_rope computes (x − y is x + (−y) exactly), so the result is equal bit for bit; the
    angles are 03's rope_cos_sin of every position."""
    cos, sin = rope_cos_sin(torch.arange(cfg.block_size, device=device), cfg.head_dim, cfg.rope_theta)
    if cfg.rope_pairs == "half":  # pairs (x_i, x_i+hd/2): C = [cos, cos], S = [−sin, sin]
        return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)
    return torch.stack((cos, cos), -1).flatten(-2), torch.stack((-sin, sin), -1).flatten(-2)


def swap_pairs(x, pairs):
    """The partner of each coordinate: (x_2i+1, x_2i) interleaved, (x_i+hd/2, x_i) half. x (..., hd)."""
    if pairs == "half":
        return x.roll(x.shape[-1] // 2, dims=-1)
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


class DecodeRunner:
    """One decode step over a SlotCache (slot_cache.py) with fused weights; module docstring."""

    def __init__(self, model):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"DecodeRunner cannot run this model exactly: {reason}")
        self.model, cfg = model, model.cfg
        self.H, self.Hkv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.naive = cfg.attn_backend == "torch"  # as 03's Attention: a mask goes to SDPA, or to naive
        self.swiglu = cfg.mlp == "swiglu"
        self.rope = rope_tables(cfg, next(model.parameters()).device) if cfg.pos_emb == "rope" else None
        self.fuse()

    def fuse(self):
        """Per layer: the norms as calls, [Wq; Wk; Wv] ((H + 2Hkv)·hd, d) and [Wgate; Wup] (2h, d) with
        their biases (or None) as copies, and the other matrices as references to the model's own.
        `copied` lists the parameters the copies were made from, for `stale`."""
        self.copied = []

        def stack(*linears):
            parts = [[m.weight for m in linears], [m.bias for m in linears if m.bias is not None]]
            self.copied += parts[0] + parts[1]
            return torch.cat(parts[0]).detach(), torch.cat(parts[1]).detach() if parts[1] else None

        self.layers = []
        for b in self.model.blocks:
            a, f = b.attn, b.ffn
            self.layers.append(
                {
                    "norm1": norm_call(b.norm1),
                    "qkv": stack(a.wq, a.wk, a.wv),
                    "wo": (a.wo.weight, a.wo.bias),
                    "norm2": norm_call(b.norm2),
                    "gate_up": stack(f.gate, f.up) if self.swiglu else None,
                    "down": (f.down.weight, f.down.bias),
                    "ffn": f,
                }
            )
        self.norm_f = norm_call(self.model.norm_f)  # pre-LN: a norm (post-LN's Identity is refused)
        self.versions = [p._version for p in self.copied]

    def stale(self) -> bool:
        """Has a copied parameter changed in place since `fuse` (its version counter moved)? Checked
        before every step, so that a runner never decodes with old weights; a parameter *replaced* by
        another object is not seen: build a new Engine after replacing modules or parameters."""
        return any(p._version != v for p, v in zip(self.copied, self.versions))

    def decode(self, cache, idx, active):
        """SlotCache.decode with the fused step: rows [0, B) with last tokens idx (B, 1); `active` rows
        keep their token at the write column, the others compute padding. Returns logits (B, V)."""
        if self.stale():
            self.fuse()
        cache.make_room()
        B, pos = idx.shape[0], cache.pos
        cache.mask[:B, pos] = False
        cache.mask[active, pos] = True
        keep = cache.mask[:B, : pos + 1]  # (B, S): the columns holding each row's tokens
        positions = (keep.sum(-1, keepdim=True) - 1).clamp(min=0)  # (B, 1): real tokens before this one
        allowed = keep.clone()
        allowed[:, pos] = True  # a padding row sees itself (03's rule: its softmax stays finite)
        rows = KVCache(len(self.layers), cache.max_len)  # a view of rows [0, B): writes land in the slots'
        rows.k, rows.v, rows.pos = [k[:B] for k in cache.kv.k], [v[:B] for v in cache.kv.v], pos
        x = self.blocks(idx, positions, allowed[:, None, None], rows)  # (B, 1, d)
        cache.kv.pos = pos + 1
        return F.linear(self.norm_f(x), self.model.lm_head.weight)[:, -1]  # (B, V)

    def prefill(self, idx, attention_mask, cache, ends):
        """03's GPT.forward(idx, attention_mask, cache) for T new tokens per row after cache.pos cached
        columns (Engine.prefill's pass), with the fused weights; returns only the logits (n, V) at
        each row's position `ends` (n,), the ones the engine samples from, not all B·T of them."""
        if self.stale():
            self.fuse()
        B, T = idx.shape
        positions, allowed = positions_and_mask(B, T, cache.pos, attention_mask, idx.device)  # 03's rule
        x = self.blocks(idx, positions, allowed, cache)  # (B, T, d)
        last = x[torch.arange(B, device=x.device), ends]  # (B, d)
        return F.linear(self.norm_f(last), self.model.lm_head.weight)  # (B, V)

    def blocks(self, idx, positions, allowed, cache):
        """Embeddings and every block for idx (B, T) at `positions` (B, T), with `allowed` (B, 1, T, S)
        bool and a KVCache whose pos columns are cached already; its T new columns are written."""
        model, H, Hkv, hd = self.model, self.H, self.Hkv, self.hd
        B, T = idx.shape
        x = F.embedding(idx, model.tok_emb.weight)  # (B, T, d)
        if not self.naive:  # SDPA turns a bool mask into 0 / -inf in every call: once here
            allowed = torch.zeros_like(allowed, dtype=x.dtype).masked_fill_(~allowed, float("-inf"))
        if model.cfg.pos_emb == "learned":
            x = x + model.pos_emb(positions)
        elif model.cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_positions(positions, model.cfg.n_embd).to(x.dtype)
        if self.rope is not None:
            C, S = (t[positions][:, None] for t in self.rope)  # (B, 1, T, hd)
        for layer, w in enumerate(self.layers):
            qkv = F.linear(w["norm1"](x), *w["qkv"])  # (B, T, (H + 2Hkv)·hd): q, k, v side by side
            qk = qkv[..., : (H + Hkv) * hd].view(B, T, H + Hkv, hd).transpose(1, 2)  # (B, H + Hkv, T, hd)
            if self.rope is not None:  # 03's apply_rope, in fp32 and back (rope_tables)
                qf = qk.float()
                qk = (qf * C + swap_pairs(qf, model.cfg.rope_pairs) * S).to(qk.dtype)
            v = qkv[..., (H + Hkv) * hd :].view(B, T, Hkv, hd).transpose(1, 2)  # (B, Hkv, T, hd)
            keys, values = cache.update(layer, qk[:, H:], v)  # (B, Hkv, pos + T, hd)
            if self.naive:
                y = attention(qk[:, :H], keys, values, causal=False, mask=allowed, backend="torch")
            else:  # what 03's attention_sdpa calls with a mask
                y = F.scaled_dot_product_attention(
                    qk[:, :H], keys, values, attn_mask=allowed, enable_gqa=H != Hkv
                )
            x = x + F.linear(y.transpose(1, 2).reshape(B, T, H * hd), *w["wo"])  # (B, T, d)
            h = w["norm2"](x)
            if self.swiglu:
                gate, up = F.linear(h, *w["gate_up"]).chunk(2, dim=-1)
                x = x + F.linear(F.silu(gate) * up, *w["down"])
            else:
                x = x + w["ffn"](h)
        cache.pos += T
        return x
