"""The serving engine's decode step, written for inference: what a model runner does that 03's forward does not.

    from decode_runner import DecodeRunner, unsupported
    runner = DecodeRunner(model)               # unsupported(model) says why not, or None
    logits = runner.decode(slot_cache, last_tokens, active_rows)   # (B, V): what SlotCache.decode gives

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
    RoPE on q, then on k              (per layer)    once on q and k side by side (one view of the fused output)
    cos, sin from the positions       (per step)     a (block_size, hd/2) table made once, indexed
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
Measured on the tiny model, batch 8, one thread: ~1.0 ms a step against ~1.9 ms through 03's forward
(bench_serve.py's first table has the end-to-end numbers).

The fused matrices are copies, made when the runner is built; a runner whose source weights have been
changed in place since (an optimizer step, load_state_dict) makes them again before its next step
(`stale`: a version counter per copied parameter). A
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
from position_encoding import apply_rope, rope_cos_sin, sinusoidal_positions  # 03_model

# the module types of a plain 03 GPT: anything else (LoRALinear, QuantLinear, an adapter) changes the math
PLAIN = (GPT, Block, Attention, MLP, nn.Linear, nn.Embedding, nn.Dropout, nn.ModuleList, nn.Identity)
PLAIN += (LayerNorm, RMSNorm)


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


class DecodeRunner:
    """One decode step over a SlotCache (slot_cache.py) with fused weights; module docstring."""

    def __init__(self, model):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"DecodeRunner cannot run this model exactly: {reason}")
        self.model, cfg = model, model.cfg
        self.H, self.Hkv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.backend = (
            cfg.attn_backend if cfg.attn_backend in ("torch", "sdpa") else "auto"
        )  # as 03's Attention
        self.swiglu = cfg.mlp == "swiglu"
        if cfg.pos_emb == "rope":  # the angles of every position, by 03's formula: the same floats
            p = next(model.parameters())
            all_positions = torch.arange(cfg.block_size, device=p.device)
            self.cos, self.sin = rope_cos_sin(all_positions, self.hd, cfg.rope_theta)  # (block_size, hd/2)
        self.fuse()

    def sources(self) -> list:
        """The parameters the fused matrices copy, in a fixed order."""
        out = []
        for block in self.model.blocks:
            a, f = block.attn, block.ffn
            out += [a.wq.weight, a.wk.weight, a.wv.weight]
            out += [a.wq.bias, a.wk.bias, a.wv.bias] if a.wq.bias is not None else []
            if self.swiglu:
                out += [f.gate.weight, f.up.weight] + (
                    [f.gate.bias, f.up.bias] if f.up.bias is not None else []
                )
        return out

    def fuse(self):
        """[Wq; Wk; Wv] ((H + 2Hkv)·hd, d) and [Wgate; Wup] (2h, d) per layer, and their biases (or None)."""

        def stack(*linears):
            w = torch.cat([m.weight for m in linears]).detach()
            b = torch.cat([m.bias for m in linears]).detach() if linears[0].bias is not None else None
            return w, b

        self.qkv = [stack(b.attn.wq, b.attn.wk, b.attn.wv) for b in self.model.blocks]
        self.gate_up = [stack(b.ffn.gate, b.ffn.up) if self.swiglu else None for b in self.model.blocks]
        self.copied = self.sources()
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
        model, H, Hkv, hd = self.model, self.H, self.Hkv, self.hd
        cache.make_room()
        B, pos = idx.shape[0], cache.pos
        cache.mask[:B, pos] = False
        cache.mask[active, pos] = True
        keep = cache.mask[:B, : pos + 1]  # (B, S): the columns holding each row's tokens
        positions = (keep.sum(-1, keepdim=True) - 1).clamp(min=0)  # (B, 1): real tokens before this one
        allowed = keep.clone()
        allowed[:, pos] = True  # a padding row sees itself (03's rule: its softmax stays finite)
        x = model.tok_emb(idx)  # (B, 1, d)
        if self.backend != "torch":  # SDPA turns a bool mask into 0 / -inf in every call: once here
            allowed = torch.zeros_like(allowed, dtype=x.dtype).masked_fill_(~allowed, float("-inf"))
        allowed = allowed[:, None, None]  # (B, 1, 1, S)
        if model.cfg.pos_emb == "learned":
            x = x + model.pos_emb(positions)
        elif model.cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_positions(positions, model.cfg.n_embd).to(x.dtype)
        rope = model.cfg.pos_emb == "rope"
        if rope:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, 1, hd/2)
        for layer, block in enumerate(model.blocks):
            w, b = self.qkv[layer]
            qkv = F.linear(block.norm1(x), w, b)  # (B, 1, (H + 2Hkv)·hd): q, k, v side by side
            qk = qkv[..., : (H + Hkv) * hd].view(B, H + Hkv, 1, hd)  # T = 1: (B, T, n, hd) is (B, n, T, hd)
            if rope:
                qk = apply_rope(qk, cos, sin, model.cfg.rope_pairs)
            k_cache, v_cache = cache.kv.k[layer], cache.kv.v[layer]  # (slots, Hkv, L, hd)
            k_cache[:B, :, pos : pos + 1] = qk[:, H:]
            v_cache[:B, :, pos : pos + 1] = qkv[..., (H + Hkv) * hd :].view(B, Hkv, 1, hd)
            keys, values = k_cache[:B, :, : pos + 1], v_cache[:B, :, : pos + 1]  # (B, Hkv, S, hd)
            y = attention(qk[:, :H], keys, values, causal=False, mask=allowed, backend=self.backend)
            x = x + block.attn.wo(y.transpose(1, 2).reshape(B, 1, H * hd))  # (B, 1, H·hd)
            h = block.norm2(x)
            if self.swiglu:
                gate, up = F.linear(h, *self.gate_up[layer]).chunk(2, dim=-1)
                x = x + block.ffn.down(F.silu(gate) * up)
            else:
                x = x + block.ffn(h)
        cache.kv.pos = pos + 1
        return model.lm_head(model.norm_f(x))[:, -1]  # (B, V)
