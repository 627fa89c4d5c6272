"""Attention four ways, from the definition to FlashAttention-2, and the one function model code calls.

    1. attention_naive          softmax(Q Kᵀ · scale + mask) V, the (T, S) matrix in memory. The ground truth.
    2. attention_tiled_forward  the FlashAttention-2 algorithm in plain PyTorch: loop over Q tiles, stream
       attention_tiled_backward K/V tiles, online softmax, save only O and the log-sum-exp (LSE); the
                                backward recomputes P from the LSE tile by tile. Slow, but readable.
    3. flash_attention          (flash_attention.py) the same algorithm as Triton GPU kernels.
    4. SDPA                     PyTorch's fused scaled_dot_product_attention (C++/CUDA kernels).

    import sys; sys.path.insert(0, "kernels")
    from attention_backends import attention
    y = attention(q, k, v, causal=True)   # q (B, H, T, D); k, v (B, Hkv, S, D); H % Hkv == 0 (GQA/MQA)

Which one runs, with backend="auto" (the model's default), and why:
    CUDA, no mask, a shape the kernel takes  -> 3, our Triton kernel (what this folder teaches; measured
                                                against SDPA by bench_attention.py)
    CUDA otherwise (a mask, head dim 48 ...) -> 4, SDPA
    CPU                                      -> 4, SDPA: its CPU kernel is the same blocked online softmax
                                                in C++; it never builds the (T, S) score matrix or a mask
    1 and 2 never run by default: 1 allocates B·H·T·S scores and probabilities plus a fresh (T, S) mask on
    every call and keeps the probabilities for the backward (at context 256 that made a CPU training
    step 1.45x slower than nanoGPT's model, which calls SDPA); 2 is Python loops. They stay as the
    readable definitions every fast path is tested against. 3 and 2 know only "causal or not"; a
    `mask` (padding, a KV cache, document boundaries) goes to SDPA or to 1.

`python kernels/attention_backends.py` checks 2 and 3 against 1 on small shapes (the interpreter runs 3 on a CPU);
`python kernels/bench_attention.py` times 3 against PyTorch's SDPA on a GPU;
`python kernels/compile_check.py` compiles 3 for an H100 on any machine and reports registers and spills.

The online softmax, for one query row and key tiles j = 1, 2, ...:
    m⁽ʲ⁾ = max(m⁽ʲ⁻¹⁾, max sⱼ)                         running maximum (numerical safety)
    l⁽ʲ⁾ = l⁽ʲ⁻¹⁾ · exp(m⁽ʲ⁻¹⁾ - m⁽ʲ⁾) + Σ exp(sⱼ - m⁽ʲ⁾)  running denominator, rescaled to the new max
    o⁽ʲ⁾ = o⁽ʲ⁻¹⁾ · exp(m⁽ʲ⁻¹⁾ - m⁽ʲ⁾) + exp(sⱼ - m⁽ʲ⁾) Vⱼ   unnormalized output, rescaled the same way
    o = o⁽ᴺ⁾ / l⁽ᴺ⁾,  lse = m⁽ᴺ⁾ + log l⁽ᴺ⁾                   so that P = exp(s - lse) exactly
FlashAttention-2's changes over v1: divide by l once at the end (not every tile), keep the Q tile as the
outer loop (each program owns rows, no cross-program reduction in the forward), save only the LSE.

Interview questions this file answers:
- Derive the online softmax; why is the result exact and not an approximation?
- Memory: naive attention stores B·H·T·S probabilities for the backward; flash stores B·H·T LSE floats.
- What does the backward recompute and what does it need? (P from Q, K and the LSE; delta = rowsum(dO∘O).)
- How does GQA change the backward? (dK, dV of a shared head are summed over the query heads that read it.)
- Causal masking when T < S (a KV cache): query i sees keys j ≤ i + S - T (bottom-right aligned).
"""

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli

BACKENDS = ("auto", "triton", "torch", "tiled", "sdpa")  # "torch" is the naive reference (1)


# ----------------------------------------------------------------------------------------------------
# 1. Naive: the definition
# ----------------------------------------------------------------------------------------------------
def causal_mask(T, S, device):
    """(T, S) bool, True where query i may see key j: j <= i + S - T (bottom-right aligned, so with a
    KV cache the T new queries sit after the S - T cached keys)."""
    # >>> exercise: (T, S) bool, True where j <= i + S - T (bottom-right aligned for a KV cache)
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
    # <<< exercise


def attention_naive(q, k, v, causal=True, scale=None, mask=None):
    """softmax(Q Kᵀ · scale + M) V, materializing the (T, S) score matrix. The ground truth.

    M is 0 where a query may see a key and -inf elsewhere: the causal rule and/or `mask`, a bool tensor
    broadcastable to (B, H, T, S), True = may attend (padding, a KV cache, document boundaries).
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if H != Hkv:  # GQA/MQA: with g = H/Hkv, query heads g·j ... g·j+g-1 share key/value head j
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    # >>> exercise: softmax(Q Kᵀ · scale, -inf where causal rule or mask forbids) V; scale 1/√D; fp32 math
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 math for half inputs
    att = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * scale  # (B, H, T, S)
    keep = causal_mask(T, S, q.device) if causal else None
    if mask is not None:
        keep = mask if keep is None else keep & mask
    if keep is not None:
        att = att.masked_fill(~keep, float("-inf"))
    att = att.softmax(dim=-1)
    return (att @ v.to(acc)).to(q.dtype)  # (B, H, T, D)
    # <<< exercise


# ----------------------------------------------------------------------------------------------------
# 2. Tiled reference: FlashAttention-2 in PyTorch, one tile at a time
# ----------------------------------------------------------------------------------------------------
def _kv_head_index(H, Hkv, device):
    """Query head h reads K/V head h // (H / Hkv): GQA by indexing the shared head."""
    return torch.arange(H, device=device) // (H // Hkv)


def _tile_mask(i0, i1, j0, j1, T, S, device):
    """(i1-i0, j1-j0) bool, True where query i may see key j under the causal rule j <= i + S - T."""
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    return cols <= rows + (S - T)


def attention_tiled_forward(q, k, v, causal=True, scale=None, block_m=32, block_n=32):
    """o (B, H, T, D) in q's dtype and lse (B, H, T) in the accumulation dtype (natural log)."""
    B, H, T, D = q.shape
    S = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    acc_dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 (fp64 for gradcheck)
    kv = _kv_head_index(H, k.shape[1], q.device)
    k, v = k[:, kv].to(acc_dtype), v[:, kv].to(acc_dtype)  # (B, H, S, D); the kernel indexes instead
    o = torch.empty(B, H, T, D, dtype=acc_dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=acc_dtype, device=q.device)
    # >>> exercise: online softmax per Q tile: m'=max(m, rowmax s); l, acc *= exp(m-m'); o = acc/l; lse = m+log l; skip only K tiles past the diagonal
    for i0 in range(0, T, block_m):  # outer loop: Q tiles (one GPU program each)
        i1 = min(i0 + block_m, T)
        qi = q[:, :, i0:i1].to(acc_dtype)  # (B, H, bm, D)
        m = torch.full((B, H, i1 - i0), float("-inf"), dtype=acc_dtype, device=q.device)
        l = torch.zeros(B, H, i1 - i0, dtype=acc_dtype, device=q.device)
        acc = torch.zeros(B, H, i1 - i0, D, dtype=acc_dtype, device=q.device)
        for j0 in range(0, S, block_n):  # inner loop: stream K/V tiles
            if causal and j0 > i1 - 1 + S - T:
                break  # this and later tiles are fully masked
            j1 = min(j0 + block_n, S)
            s = (qi @ k[:, :, j0:j1].transpose(-2, -1)) * scale  # (B, H, bm, bn)
            if causal:
                s = s.masked_fill(~_tile_mask(i0, i1, j0, j1, T, S, q.device), float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))  # finite: the first tile holds key 0
            p = torch.exp(s - m_new[..., None])  # (B, H, bm, bn)
            alpha = torch.exp(m - m_new)  # how much the old max overstated
            l = l * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ v[:, :, j0:j1]  # (B, H, bm, D)
            m = m_new
        o[:, :, i0:i1] = acc / l[..., None]  # normalize once, at the end
        lse[:, :, i0:i1] = m + torch.log(l)
    return o.to(q.dtype), lse
    # <<< exercise


def attention_tiled_backward(q, k, v, o, lse, do, causal=True, scale=None, block_m=32, block_n=32):
    """dq, dk, dv from the saved O and LSE, recomputing P = exp(s - lse) one (Q tile, K tile) pair at a time.

    Per tile:  dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP - delta),  dQ += dS K · scale,  dK += dSᵀ Q · scale
    with delta = rowsum(dO ∘ O) = rowsum(P ∘ dP) (the softmax Jacobian's correction term).
    Here one loop nest fills all three; the Triton version splits dQ into its own kernel (see there why).
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    kv = _kv_head_index(H, Hkv, q.device)
    qf, dof = q.to(acc_dtype), do.to(acc_dtype)
    kf, vf = k[:, kv].to(acc_dtype), v[:, kv].to(acc_dtype)  # (B, H, S, D)
    # >>> exercise: P = exp(s - lse); dV += PᵀdO; dS = P∘(dP - rowsum(dO∘O)); dQ, dK from dS; sum GQA groups
    delta = (dof * o.to(acc_dtype)).sum(dim=-1)  # (B, H, T)
    dq = torch.zeros(B, H, T, D, dtype=acc_dtype, device=q.device)
    dk = torch.zeros(B, H, S, D, dtype=acc_dtype, device=q.device)  # per query head; summed per group below
    dv = torch.zeros(B, H, S, D, dtype=acc_dtype, device=q.device)
    for j0 in range(0, S, block_n):  # outer loop: K/V tiles (the dK/dV kernel)
        j1 = min(j0 + block_n, S)
        kj, vj = kf[:, :, j0:j1], vf[:, :, j0:j1]  # (B, H, bn, D)
        first = max(0, j0 - (S - T)) // block_m * block_m if causal else 0  # earlier Q tiles see none of kj
        for i0 in range(first, T, block_m):
            i1 = min(i0 + block_m, T)
            qi, doi = qf[:, :, i0:i1], dof[:, :, i0:i1]  # (B, H, bm, D)
            s = (qi @ kj.transpose(-2, -1)) * scale  # (B, H, bm, bn)
            p = torch.exp(s - lse[:, :, i0:i1, None].to(acc_dtype))
            if causal:
                p = p.masked_fill(~_tile_mask(i0, i1, j0, j1, T, S, q.device), 0.0)
            dv[:, :, j0:j1] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)  # (B, H, bm, bn)
            ds = p * (dp - delta[:, :, i0:i1, None])
            dq[:, :, i0:i1] += (ds @ kj) * scale
            dk[:, :, j0:j1] += (ds.transpose(-2, -1) @ qi) * scale
    group = H // Hkv
    dk = dk.view(B, Hkv, group, S, D).sum(dim=2)  # (B, Hkv, S, D)
    dv = dv.view(B, Hkv, group, S, D).sum(dim=2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    # <<< exercise


class TiledAttentionFunction(torch.autograd.Function):
    """The tiled reference as an autograd op, so the hand-written backward is what gradients use."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_m, block_n):
        o, lse = attention_tiled_forward(q, k, v, causal, scale, block_m, block_n)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (causal, scale, block_m, block_n)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_tiled_backward(q, k, v, o, lse, do, *ctx.args)
        return dq, dk, dv, None, None, None, None


def attention_tiled(q, k, v, causal=True, scale=None, block_m=32, block_n=32):
    """Differentiable tiled attention (forward and backward both in plain PyTorch loops)."""
    return TiledAttentionFunction.apply(q, k, v, causal, scale, block_m, block_n)


# ----------------------------------------------------------------------------------------------------
# The dispatch model code calls
# ----------------------------------------------------------------------------------------------------
def triton_supports(q, k, v, causal):
    """True when the Triton kernel can run these tensors on a GPU (what "auto" asks before using it)."""
    return (
        q.is_cuda
        and q.dim() == 4
        and q.shape[-1] in (32, 64, 128)
        and q.dtype == k.dtype == v.dtype
        and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and q.shape[1] % k.shape[1] == 0
        and not (causal and q.shape[2] > k.shape[2])
    )


def attention_sdpa(q, k, v, causal=True, scale=None, mask=None):
    """PyTorch's fused kernel with our conventions: causal is bottom-right aligned (SDPA's is_causal is
    top-left, which differs when T < S), a bool mask is combined with it, GQA without copying K/V."""
    T, S = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if mask is None and (not causal or T == S):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    keep = causal_mask(T, S, q.device) if causal else None
    if mask is not None:
        keep = mask if keep is None else keep & mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale, enable_gqa=gqa)


def attention(q, k, v, causal=True, scale=None, backend="auto", mask=None):
    """softmax(Q Kᵀ · scale + M) V; q (B, H, T, D), k/v (B, Hkv, S, D) -> (B, H, T, D), q's dtype.

    M: the causal rule (query i sees keys j <= i + S - T) and/or `mask`, bool, broadcastable to
    (B, H, T, S), True = may attend. A row must see at least one key (a fully masked row has no softmax).
    backend: "auto" = the fastest correct one here (module docstring: Triton on CUDA, SDPA otherwise);
    "triton" = force the kernel (a UserError if the shape is unsupported; on a CPU it runs in Triton's
    interpreter, which importing flash_attention switches on when there is no GPU); "sdpa" = PyTorch's
    fused kernel; "torch" = the naive reference; "tiled" = the tiled PyTorch reference.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if q.shape[1] % k.shape[1]:
        raise UserError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if causal and q.shape[2] > k.shape[2]:  # the first rows would see no key at all
        raise UserError(
            f"causal attention with {q.shape[2]} queries needs at least as many keys; got {k.shape[2]}"
        )
    if backend == "auto":
        backend = "triton" if mask is None and triton_supports(q, k, v, causal) else "sdpa"
    if mask is not None and backend in ("triton", "tiled"):
        raise UserError(
            f"the {backend} attention knows only causal or not, not an explicit mask; "
            "use backend auto, sdpa or torch"
        )
    if backend == "triton":
        from flash_attention import flash_attention  # imported on use: the CPU path never loads Triton

        return flash_attention(q, k, v, causal, scale)
    if backend == "tiled":
        return attention_tiled(q, k, v, causal, scale)
    if backend == "sdpa":
        return attention_sdpa(q, k, v, causal, scale, mask)
    return attention_naive(q, k, v, causal, scale, mask)


# ----------------------------------------------------------------------------------------------------
# Check: every version against the naive one (the tests do this more thoroughly)
# ----------------------------------------------------------------------------------------------------
def max_errors(fn, q, k, v, causal):
    """Largest |difference| to the naive reference in o, dq, dk, dv (naive computed in float32)."""
    do = torch.randn(q.shape, dtype=torch.float32, device=q.device)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    o_ref = attention_naive(*ref_in, causal)
    grads_ref = torch.autograd.grad(o_ref, ref_in, do)
    test_in = [t.detach().requires_grad_() for t in (q, k, v)]
    o = fn(*test_in, causal)
    grads = torch.autograd.grad(o, test_in, do.to(o.dtype))
    return [(a.float() - b).abs().max().item() for a, b in zip((o, *grads), (o_ref, *grads_ref))]


@dataclass
class CheckConfig:
    batch: int = option(1, "batch size", min=1)
    heads: int = option(4, "query heads", min=1)
    kv_heads: int = option(2, "key/value heads (a divisor of --heads)", min=1)
    seq: int = option(72, "sequence length; keep it small on a CPU: the interpreter is slow", min=1)
    head_dim: int = option(64, "head dim", choices=(32, 64, 128))
    dtype: str = option("float32", "input dtype", choices=("float32", "float16", "bfloat16"))


def main(argv=None):
    cfg, _ = parse_config(CheckConfig, argv, doc=__doc__)
    if cfg.heads % cfg.kv_heads:
        raise UserError(f"--heads ({cfg.heads}) must be a multiple of --kv-heads ({cfg.kv_heads})")
    from flash_attention import flash_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(0)
    q = torch.randn(cfg.batch, cfg.heads, cfg.seq, cfg.head_dim, device=device, dtype=dtype)
    k = torch.randn(cfg.batch, cfg.kv_heads, cfg.seq, cfg.head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    print(
        f"{'version':<8} {'causal':<6} {'|o|':>9} {'|dq|':>9} {'|dk|':>9} {'|dv|':>9} {'time s':>7}  "
        f"(max abs error vs naive, {cfg.dtype}, {device})"
    )
    for name, fn in [("tiled", attention_tiled), ("sdpa", attention_sdpa), ("triton", flash_attention)]:
        for causal in (False, True):
            t0 = time.perf_counter()
            errs = max_errors(fn, q, k, v, causal)  # an unsupported dtype raises a one-line UserError
            print(
                f"{name:<8} {str(causal):<6} "
                + " ".join(f"{e:9.2e}" for e in errs)
                + f" {time.perf_counter() - t0:7.2f}"
            )


if __name__ == "__main__":
    run_cli(main)
