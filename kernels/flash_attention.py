"""FlashAttention-2 in Triton: the forward kernel, the three backward kernels, and the autograd Function.

The algorithm is the one `attention_backends.py` spells out in plain PyTorch (`attention_tiled_forward` /
`attention_tiled_backward`); read that first, then this file side by side with it.

    from flash_attention import flash_attention
    o = flash_attention(q, k, v, causal=True)   # q (B, H, T, D); k, v (B, Hkv, S, D); H % Hkv == 0

Forward, one program per (Q tile of BLOCK_M rows, batch·head):
    stream K/V tiles j, keep a running max m, running sum l and an unnormalized output acc in registers:
        s = q kⱼᵀ · scale                       m' = max(m, rowmax(s))
        p = exp(s - m')                          l  = l·exp(m - m') + rowsum(p)
        acc = acc·exp(m - m') + p vⱼ             m  = m'
    then o = acc / l and lse = m + log(l) (saved for the backward; 4 bytes per row instead of T·S).
Backward, recomputing P = exp(s - lse) tile by tile, never storing the (T, S) matrix:
    delta = rowsum(dO ∘ O)                       (preprocess kernel; equals rowsum(P ∘ dP))
    dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP - delta),  dQ = dS K · scale,  dK = dSᵀ Q · scale
    dK/dV kernel: a program owns one K/V tile and loops over Q tiles (and over the query heads of its
    GQA group), so dK and dV are summed in registers with no atomics. The dQ kernel owns one Q tile and
    loops over K/V tiles. Two kernels recompute P twice, which costs less than atomic adds into dQ.

The backward kernels are in flash_attention_bwd.py; what both share (supported inputs, tile configs,
autotuning, launching) is in flash_tiles.py.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU): slow,
but the same code, which is how the tests check it on a laptop.

Interview questions this file answers:
- Why is flash attention faster when it does *more* FLOPs in the backward? (It is memory-bound:
  the T×S matrix never travels to HBM; recomputing it from Q, K and the saved LSE is cheaper.)
- What does the online softmax keep per row, and why can the rescale factor exp(m - m') fix past tiles?
- What exactly is saved for the backward? (O and the LSE, one float per row.)
- Why is delta = rowsum(dO∘O) the same as rowsum(P∘dP)? (O = PV, so dO·O = Σⱼ Pᵢⱼ (dO·Vⱼ) = Σⱼ Pᵢⱼ dPᵢⱼ.)
"""

import math
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError

# flash_tiles first: without CUDA it switches on Triton's interpreter before any kernel is decorated
from flash_tiles import (  # noqa: E402  (kernels, this folder)
    FWD_CONFIGS,
    LN2_K,
    LOG2E,
    _autotuned,
    _bh_offset,
    _launch,
    _precision,
    _strides,
    check_supported,
)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from flash_attention_bwd import flash_attention_backward  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_tiles(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    offs_m,
    qk_scale,
    lo,
    hi,
    T,
    S,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online softmax over the K/V tiles [lo, hi): returns the updated (acc, l_i, m_i).

    MASKED=False is the fast path for tiles every row of the Q tile fully sees (no bounds checks, no mask);
    MASKED=True handles the tiles on the causal diagonal and the ragged tail of the keys.
    """
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            col_ok = cols < S  # ragged tail of the keys
            k = tl.load(k_base + cols[:, None] * stride_ks, mask=col_ok[:, None], other=0.0)  # (BLOCK_N, D)
            v = tl.load(v_base + cols[:, None] * stride_vs, mask=col_ok[:, None], other=0.0)
        else:
            k = tl.load(k_base + cols[:, None] * stride_ks)
            v = tl.load(v_base + cols[:, None] * stride_vs)
        # scale·log2(e) folded into one multiply, so exp(x·scale) becomes exp2(x·qk_scale)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N) fp32
        if MASKED:
            keep = col_ok[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + S - T)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every row sees key 0 in the first tile
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescales what earlier tiles added
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    O,
    LSE,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    H,
    T,
    S,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    h_kv = h // GROUP  # GQA: the query heads of one group read the same K/V head; no copy is made
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T  # ragged tail of the queries

    q = tl.load(
        Q
        + _bh_offset(b, h, stride_qb, stride_qh)
        + offs_m[:, None] * stride_qt
        + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None],
        other=0.0,
    )  # (BLOCK_M, D), stays in registers
    k_base = K + _bh_offset(b, h_kv, stride_kb, stride_kh) + offs_d[None, :] * stride_kd
    v_base = V + _bh_offset(b, h_kv, stride_vb, stride_vh) + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)  # fp32 accumulator whatever the input
    # Causal, bottom-right aligned: query i sees keys j <= i + S - T. Keys up to start_m + S - T are seen
    # by every row of this Q tile (no mask needed); K tiles past the last row's diagonal are fully masked,
    # so the loop stops there (about half the work skipped).
    if CAUSAL:
        n_full = tl.minimum((start_m + S - T + 1) // BLOCK_N, S // BLOCK_N) * BLOCK_N
        hi = tl.minimum(S, start_m + BLOCK_M + S - T)
    else:
        n_full = (S // BLOCK_N) * BLOCK_N
        hi = S
    acc, l_i, m_i = _attn_fwd_tiles(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        qk_scale,
        0,
        n_full,
        T,
        S,
        False,
        CAUSAL,
        PRECISION,
        BLOCK_N,
    )
    acc, l_i, m_i = _attn_fwd_tiles(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        offs_m,
        qk_scale,
        n_full,
        hi,
        T,
        S,
        True,
        CAUSAL,
        PRECISION,
        BLOCK_N,
    )

    o = acc / l_i[:, None]
    tl.store(
        O
        + _bh_offset(b, h, stride_ob, stride_oh)
        + offs_m[:, None] * stride_ot
        + offs_d[None, :] * stride_od,
        o.to(O.dtype.element_ty),
        mask=row_ok[:, None],
    )
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, (m_i + tl.math.log2(l_i)) * LN2_K, mask=row_ok)


_attn_fwd_tuned = _autotuned(_attn_fwd, FWD_CONFIGS)


# ----------------------------------------------------------------------------------------------------
# The launcher and the autograd Function
# ----------------------------------------------------------------------------------------------------
def flash_attention_forward(q, k, v, causal, scale):
    """o (B, H, T, D) in q's dtype and lse (B, H, T) fp32 (natural log).

    o is stored as (B, T, H, D) and returned as a (B, H, T, D) view, as FlashAttention and SDPA do: the
    model's merge of heads, o.transpose(1, 2).reshape(B, T, H·D), is then a view, not a copy."""
    B, H, T, D = q.shape
    S = k.shape[2]
    o = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    _launch(
        _attn_fwd_tuned,
        "fwd",
        T,
        B * H,
        q,
        k,
        v,
        o,
        lse,
        scale * LOG2E,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(o),
        H,
        T,
        S,
        GROUP=H // k.shape[1],
        HEAD_DIM=D,
        CAUSAL=causal,
        PRECISION=_precision(q),
    )
    return o, lse


class FlashAttentionFunction(torch.autograd.Function):
    """Forward saves q, k, v, o and the LSE (not the T×S probabilities); backward recomputes them."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        o, lse = flash_attention_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(q, k, v, causal=True, scale=None):
    """softmax(Q Kᵀ · scale [+ causal mask]) V with the Triton kernels. q (B, H, T, D); k, v (B, Hkv, S, D)."""
    check_supported(q, k, v)
    if causal and q.shape[2] > k.shape[2]:
        raise UserError(
            f"causal attention with {q.shape[2]} queries needs at least as many keys; got {k.shape[2]}"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return FlashAttentionFunction.apply(q, k, v, causal, scale)
