"""FlashAttention-2's backward in Triton: the preprocess kernel (delta), the dK/dV kernel and the dQ kernel,
recomputing P = exp(s - lse) tile by tile from the LSE the forward saved, never storing the (T, S) matrix.

    from flash_attention_bwd import flash_attention_backward
    dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal=True, scale=D ** -0.5)
    (flash_attention.FlashAttentionFunction calls it; the math is in flash_attention.py's docstring and
    in attention_backends.attention_tiled_backward, its plain-PyTorch twin)

Interview questions this file answers:
- Why two kernels (dK/dV and dQ) that each recompute P, instead of one? (One kernel per K/V tile would
  need atomic adds into dQ from every K/V tile; recomputing P costs less than those atomics.)
- Why is delta = rowsum(dO∘O) the same as rowsum(P∘dP)? (O = PV, so dO·O = Σⱼ Pᵢⱼ (dO·Vⱼ).)
- How does a GQA group's dK/dV get summed without atomics? (The program owning a K/V tile loops over
  the query heads of its group.)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

# flash_tiles first: without CUDA it switches on Triton's interpreter before any kernel is decorated
from flash_tiles import (  # noqa: E402  (kernels, this folder)
    DKDV_CONFIGS,
    DQ_CONFIGS,
    LOG2E,
    LOG2E_K,
    _autotuned,
    _bh_offset,
    _launch,
    _precision,
    _strides,
)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


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


_attn_bwd_dkdv_tuned = _autotuned(_attn_bwd_dkdv, DKDV_CONFIGS)
_attn_bwd_dq_tuned = _autotuned(_attn_bwd_dq, DQ_CONFIGS)


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
