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
import os
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError

if not torch.cuda.is_available():  # must be set before the kernels are decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x · log2 e), and exp2 is the hardware instruction
LOG2E_K = tl.constexpr(LOG2E)  # kernels may read module globals only when they are constexpr
LN2_K = tl.constexpr(0.6931471805599453)  # ln(2): converts the log2-domain LSE back to a natural log

# One fixed tile shape per kernel under the interpreter (autotuning there would only burn CPU time).
# The M and N sizes differ on purpose so the tests exercise tiles that straddle the causal diagonal.
INTERPRET_CONFIGS = {
    "fwd": dict(BLOCK_M=32, BLOCK_N=16),
    "dkdv": dict(BLOCK_M=16, BLOCK_N=32),
    "dq": dict(BLOCK_M=32, BLOCK_N=16),
}


def check_supported(q, k, v):
    """Raise a UserError (a ValueError, naming what is supported) when the kernel cannot take these tensors."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise UserError(
            f"expected q (B, H, T, D) and k, v (B, Hkv, S, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    D = q.shape[-1]
    if D not in SUPPORTED_HEAD_DIMS:
        raise UserError(
            f"head dim {D} is not supported by the Triton kernel; use one of "
            f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))} (or backend='torch')"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise UserError(
            f"q, k, v must share one dtype among float32, float16, bfloat16; got "
            f"{q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.shape != v.shape or k.shape[-1] != D or k.shape[0] != q.shape[0]:
        raise UserError(f"k and v must both be (B, Hkv, S, {D}); got {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise UserError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if (
        INTERPRET and q.dtype == torch.bfloat16
    ):  # numpy has no bfloat16; the interpreter's tl.dot returns junk
        raise UserError(
            "the Triton interpreter (CPU) cannot run bfloat16; use float16 or float32 there, or a GPU"
        )
    if not (q.is_cuda or INTERPRET):
        raise UserError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")


def _configs(pairs):
    """Autotune candidates for an H100-class GPU: (BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


# Bigger Q tiles reuse each K/V load more; 8 warps feed 128-row tiles; 3-4 stages hide the load latency.
FWD_CONFIGS = _configs(
    [
        (128, 64, 8, 3),
        (128, 64, 4, 3),
        (128, 128, 8, 3),
        (128, 32, 4, 4),
        (64, 64, 4, 3),
        (64, 32, 4, 4),
        (128, 64, 8, 4),
    ]
)
# The backward holds more live tiles (dK/dV kernel: k, v, dk, dv; dQ kernel: q, do, dq), so its tiles are
# smaller. Each list holds configs that compile for sm_90 without register spills at head dim 64 and at
# 128 (ptxas resource usage from kernels/compile_check.py; some spill at 128); autotune picks the fastest.
DKDV_CONFIGS = _configs(
    [(32, 64, 8, 3), (64, 64, 8, 3), (32, 128, 8, 2), (16, 128, 8, 3), (64, 64, 4, 3), (32, 32, 4, 4)]
)
DQ_CONFIGS = _configs(
    [(32, 64, 4, 3), (64, 64, 8, 2), (64, 64, 4, 3), (64, 128, 8, 3), (128, 64, 8, 2), (32, 32, 4, 4)]
)
TUNE_KEY = ["T", "S", "HEAD_DIM", "CAUSAL", "GROUP"]


def _autotuned(kernel, configs):
    return kernel if INTERPRET else triton.autotune(configs=configs, key=TUNE_KEY)(kernel)


@triton.jit
def _bh_offset(b, h, stride_b, stride_h):
    """Element offset of (batch b, head h) = b·stride_b + h·stride_h, computed in int64.

    Program ids and strides arrive as int32, and in int32 the product wraps around (to a negative
    offset, a read far outside the tensor) once a tensor holds more than 2³¹ elements, e.g. batch 8 ×
    32 heads × 64k tokens × head dim 128. Offsets inside one (b, h) slice (row·stride_t + d) stay int32:
    they pass 2³¹ only beyond 2³¹/(H·D) tokens per sequence (524k at a width of 4096)."""
    return b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


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


# ----------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _attn_bwd_preprocess(
    O,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    stride_db,
    stride_dh,
    stride_dt,
    stride_dd,
    H,
    T,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs_m < T)[:, None]
    o = tl.load(
        O
        + _bh_offset(b, h, stride_ob, stride_oh)
        + offs_m[:, None] * stride_ot
        + offs_d[None, :] * stride_od,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        DO
        + _bh_offset(b, h, stride_db, stride_dh)
        + offs_m[:, None] * stride_dt
        + offs_d[None, :] * stride_dd,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    tl.store(
        DELTA + bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T
    )  # delta = rowsum(dO ∘ O)


@triton.jit
def _attn_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    qk_scale,
    sm_scale,
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
    stride_db,
    stride_dh,
    stride_dt,
    stride_dd,
    stride_gb,
    stride_gh,
    stride_gs,
    stride_gd,  # dK and dV (allocated alike)
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
    """One program: one tile of BLOCK_N keys of one K/V head; loops over its query heads and Q tiles."""
    start_n = tl.program_id(0) * BLOCK_N
    bh_kv = tl.program_id(1)
    H_kv = H // GROUP
    b, h_kv = bh_kv // H_kv, bh_kv % H_kv
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < S
    k = tl.load(
        K
        + _bh_offset(b, h_kv, stride_kb, stride_kh)
        + offs_n[:, None] * stride_ks
        + offs_d[None, :] * stride_kd,
        mask=col_ok[:, None],
        other=0.0,
    )  # (BLOCK_N, D)
    v = tl.load(
        V
        + _bh_offset(b, h_kv, stride_vb, stride_vh)
        + offs_n[:, None] * stride_vs
        + offs_d[None, :] * stride_vd,
        mask=col_ok[:, None],
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    # Causal: queries before start_n - (S - T) see none of these keys; start at the Q tile holding that row.
    lo = (tl.maximum(start_n - (S - T), 0) // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for g in range(GROUP):  # GQA: dK, dV of a shared head = sum over the query heads that read it
        h = h_kv * GROUP + g
        q_base = Q + _bh_offset(b, h, stride_qb, stride_qh) + offs_d[None, :] * stride_qd
        do_base = DO + _bh_offset(b, h, stride_db, stride_dh) + offs_d[None, :] * stride_dd
        row_base = (b * H + h).to(tl.int64) * T  # LSE and delta of head h
        for start_m in range(lo, T, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < T
            q = tl.load(q_base + rows[:, None] * stride_qt, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
            do = tl.load(do_base + rows[:, None] * stride_dt, mask=row_ok[:, None], other=0.0)
            lse2 = tl.load(LSE + row_base + rows, mask=row_ok, other=0.0) * LOG2E_K
            delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            keep = row_ok[:, None] & col_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= rows[:, None] + S - T)
            p = tl.where(keep, tl.math.exp2(s - lse2[:, None]), 0.0)  # P recomputed from the saved LSE
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)  # dV += Pᵀ dO
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # dP = dO Vᵀ
            ds = p * (dp - delta[:, None])  # dS = P∘(dP - delta)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)  # dK += dSᵀ Q
    dk = dk * sm_scale  # s = scale · QKᵀ, so the scale is applied once here instead of per tile
    g_off = (
        _bh_offset(b, h_kv, stride_gb, stride_gh) + offs_n[:, None] * stride_gs + offs_d[None, :] * stride_gd
    )
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _attn_bwd_dq(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    qk_scale,
    sm_scale,
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
    stride_db,
    stride_dh,
    stride_dt,
    stride_dd,
    stride_gb,
    stride_gh,
    stride_gt,
    stride_gd,  # dQ
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
    """One program: one tile of BLOCK_M queries of one head; loops over the K/V tiles it can see."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    h_kv = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(
        Q
        + _bh_offset(b, h, stride_qb, stride_qh)
        + offs_m[:, None] * stride_qt
        + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DO
        + _bh_offset(b, h, stride_db, stride_dh)
        + offs_m[:, None] * stride_dt
        + offs_d[None, :] * stride_dd,
        mask=row_ok[:, None],
        other=0.0,
    )
    lse2 = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0) * LOG2E_K
    delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    k_base = K + _bh_offset(b, h_kv, stride_kb, stride_kh) + offs_d[None, :] * stride_kd
    v_base = V + _bh_offset(b, h_kv, stride_vb, stride_vh) + offs_d[None, :] * stride_vd
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = tl.minimum(S, start_m + BLOCK_M + S - T) if CAUSAL else S  # same tile skipping as the forward
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < S
        k = tl.load(k_base + cols[:, None] * stride_ks, mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vs, mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        keep = row_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + S - T)
        p = tl.where(keep, tl.math.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)  # dQ += dS K
    g_off = _bh_offset(b, h, stride_gb, stride_gh) + offs_m[:, None] * stride_gt + offs_d[None, :] * stride_gd
    tl.store(DQ + g_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


_attn_fwd_tuned = _autotuned(_attn_fwd, FWD_CONFIGS)
_attn_bwd_dkdv_tuned = _autotuned(_attn_bwd_dkdv, DKDV_CONFIGS)
_attn_bwd_dq_tuned = _autotuned(_attn_bwd_dq, DQ_CONFIGS)


# ----------------------------------------------------------------------------------------------------
# Launchers and the autograd Function
# ----------------------------------------------------------------------------------------------------
_TILED_DIM = {"fwd": "BLOCK_M", "dkdv": "BLOCK_N", "dq": "BLOCK_M"}  # which tile the grid's axis 0 walks


def _launch(kernel, name, grid_dim0, n_programs, *args, **constexprs):
    """Run a kernel: the autotuned one picks BLOCK_M/BLOCK_N itself; the interpreter gets fixed tiles."""
    if INTERPRET:
        cfg = INTERPRET_CONFIGS[name]
        kernel[(triton.cdiv(grid_dim0, cfg[_TILED_DIM[name]]), n_programs)](*args, **constexprs, **cfg)
    else:
        kernel[lambda meta: (triton.cdiv(grid_dim0, meta[_TILED_DIM[name]]), n_programs)](*args, **constexprs)


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


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


def flash_attention_backward(q, k, v, o, lse, do, causal, scale):
    """dq, dk, dv (each shaped and typed like its input), recomputed tile by tile from the LSE."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    delta = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    _attn_bwd_preprocess[(triton.cdiv(T, 64), B * H)](
        o, do, delta, *_strides(o), *_strides(do), H, T, HEAD_DIM=D, BLOCK_M=64
    )
    dq = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, Hkv, S, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, Hkv, S, D), dtype=v.dtype, device=v.device)
    common = dict(GROUP=H // Hkv, HEAD_DIM=D, CAUSAL=causal, PRECISION=_precision(q))
    _launch(
        _attn_bwd_dkdv_tuned,
        "dkdv",
        S,
        B * Hkv,
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        scale * LOG2E,
        scale,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dk),
        H,
        T,
        S,
        **common,
    )
    _launch(
        _attn_bwd_dq_tuned,
        "dq",
        T,
        B * H,
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        scale * LOG2E,
        scale,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(do),
        *_strides(dq),
        H,
        T,
        S,
        **common,
    )
    return dq, dk, dv


def _precision(x):
    # fp32 inputs would otherwise run through TF32 tensor cores (10-bit mantissa); half inputs ignore it.
    return "ieee" if x.dtype == torch.float32 else "tf32"


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
