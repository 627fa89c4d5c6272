"""Weight-only INT8 / INT4 quantization and a fused dequantize + matmul in Triton, with the PyTorch reference.

    from quant_matmul import quantize, quant_matmul
    qw = quantize(linear.weight, bits=4, group_size=128)      # or bits=8 (per output channel)
    y = quant_matmul(x, qw, linear.bias)                       # x (..., K) -> y (..., N), x's dtype

What is stored, for a weight W (N, K) = (out_features, in_features):
    INT8, symmetric, one scale per output channel n:
        scale[n] = max_k |W[n, k]| / 127            q = clamp(round(W / scale), -127, 127)   int8 (N, K)
    INT4, group-wise: each row split into groups of G = 32, 64 or 128 consecutive k, one scale per group:
        symmetric:   scale = max|w| / 7              q = clamp(round(w / scale), -7, 7)
        asymmetric:  scale = (max - min) / (2⁴ - 1)  zero = round(-min / scale)
                     q = clamp(round(w / scale) + zero, 0, 15)          (min ≤ 0 ≤ max: 0 stays exact)
        two 4-bit values per byte along k: byte j of a row = q[2j] (low nibble) | q[2j+1] << 4,
        uint8 (N, K/2); a signed value is stored as its two's-complement nibble.
    scales and zero points in fp16: (N,) for INT8, (N, K/G) for INT4.
Dequantized: Ŵ = (q - zero) · scale (zero = 0 when symmetric). Rounding to nearest moves each weight by at
most scale/2; that is the whole error of round-to-nearest, and what the tests check.

The layer computes y = x · Ŵᵀ. Three ways here, each checked against the one before:
    1. quant_matmul_reference   dequantize W to fp32, then one matmul: the definition, readable, any device.
    2. _qmm_decode (Triton)     M ≤ 16 (token-by-token generation): a GEMV-style kernel. Each program owns
                                BLOCK_N output features for all M tokens and streams its rows of W once; the
                                only cost that matters is reading W, and W is 2× (INT8) or ~3.9× (INT4-g128)
                                smaller than bf16.
    3. _qmm_gemm (Triton)       M > 16 (prefill, batched decoding): a tiled GEMM. Both kernels read weight
                                tiles from memory as int bytes and dequantize them in registers.
`quant_matmul` picks the kernel on CUDA and the reference elsewhere; a case the kernel does not take falls back
to the reference with a one-time warning (never wrong numbers).

Why it is faster at decode: at M = 1 a bf16 matmul does 2 FLOPs per weight it reads (2 bytes), so it runs at
memory speed; an H100 does ~1000 TFLOP/s but reads only ~3.35 TB/s. Bytes per weight set the time:
bf16 2, INT8 1 (+ 2/K for the scale), INT4-g128 0.5 + 2/128 (+ 2/128 for asymmetric zeros).
At large M the matmul becomes compute-bound and the dequantize work is overhead: the goal there is parity.

Interview questions this file answers:
- Symmetric vs asymmetric quantization: when does the zero point help? (Skewed groups, e.g. after ReLU or
  for weights whose mean is far from 0; it costs one more fp16 per group and a subtraction.)
- Why group-wise scales for INT4? (16 levels are too few for a whole row: one outlier sets the scale for
  4096 weights; a group of 128 confines it.)
- Why does a per-channel scale come out of the matmul (y[m, n] = scale[n] · Σₖ x[m, k] q[n, k]) while a
  group scale does not? (It is constant along k, the summed dimension; a group scale changes along k.)
- Why is weight-only quantization a decode optimization, and why does it not help (much) at large batch?
"""

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, run_cli

if not torch.cuda.is_available():  # must be set before the kernels are decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)  # INT4 group sizes (INT8 uses one scale per output channel)
QMAX = {4: 7, 8: 127}  # symmetric: q ∈ [-qmax, qmax]; the code -2^(b-1) is left unused
FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal fp16: the floor of a stored scale
DECODE_MAX_M = 16  # M ≤ 16 rows take the decode kernel (one MMA tile of tokens)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------------
# 1. Quantize and dequantize: the formulas, in plain PyTorch
# ----------------------------------------------------------------------------------------------------
def check_quant_settings(bits, group_size, in_features):
    """Raise UserError for settings the formats here do not have (message: what is wrong; what to do)."""
    if bits not in BITS:
        raise UserError(f"bits must be 4 or 8, got {bits}; use 8 (per-channel INT8) or 4 (group-wise INT4)")
    if bits == 8 and group_size is not None:
        raise UserError(
            f"INT8 here has one scale per output channel, not groups (got group size {group_size}); "
            "pass group_size=None, or use bits=4 for group-wise scales"
        )
    if bits == 4:
        if group_size not in GROUP_SIZES:
            raise UserError(
                f"INT4 group size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}"
            )
        if in_features % group_size:
            fits = [g for g in GROUP_SIZES if in_features % g == 0]
            raise UserError(
                f"group size {group_size} does not divide in_features {in_features}; use "
                + (f"group size {' or '.join(map(str, fits))}" if fits else "INT8 (bits=8)")
            )


def symmetric_scale(w, bits):
    """scale = max|w| / qmax over the last dim, stored in fp16: w (..., G) -> (...,).

    Floored at the smallest normal fp16 so an all-zero group gets a usable scale (its q are all 0)."""
    return (w.float().abs().amax(dim=-1) / QMAX[bits]).clamp(min=FP16_TINY).to(torch.float16)


def asymmetric_scale_zero(w, bits):
    """(scale, zero) over the last dim, both fp16: scale = (max - min) / (2^b - 1), zero = round(-min / scale).

    The range is widened to include 0 (min ≤ 0 ≤ max), so zero is an integer in [0, 2^b - 1] and the weight 0
    (padding, pruned weights) is represented exactly."""
    # >>> exercise: widen [min, max] to hold 0; scale = (max - min) / (2^b - 1), zero = round(-min / scale); both fp16
    w = w.float()
    lo, hi = w.amin(dim=-1).clamp(max=0), w.amax(dim=-1).clamp(min=0)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=FP16_TINY).to(torch.float16)
    zero = torch.round(-lo / scale.float()).clamp(0, 2**bits - 1).to(torch.float16)
    return scale, zero
    # <<< exercise


def quantize_symmetric(w, scale, bits):
    """q = clamp(round(w / scale), -qmax, qmax), int8; scale broadcasts over w's last dim (w (..., G), scale (...,))."""
    q = torch.round(w.float() / scale.float()[..., None])
    return q.clamp(-QMAX[bits], QMAX[bits]).to(torch.int8)


def quantize_asymmetric(w, scale, zero, bits):
    """q = clamp(round(w / scale) + zero, 0, 2^b - 1), uint8; the scale and zero of the stored (fp16) values."""
    q = torch.round(w.float() / scale.float()[..., None]) + zero.float()[..., None]
    return q.clamp(0, 2**bits - 1).to(torch.uint8)


def pack_int4(q, signed):
    """(..., K) integers -> (..., K/2) uint8: byte j = q[2j] & 0xF | (q[2j+1] & 0xF) << 4.

    signed: values in [-8, 7], stored as two's-complement nibbles (-1 -> 0xF, -8 -> 0x8);
    unsigned: values in [0, 15]."""
    lo_limit, hi_limit = (-8, 7) if signed else (0, 15)
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even number of values in the last dim, got {q.shape[-1]}")
    if q.numel() and (q.min() < lo_limit or q.max() > hi_limit):
        raise ValueError(
            f"int4 values must lie in [{lo_limit}, {hi_limit}] ({'signed' if signed else 'unsigned'}); "
            f"got [{q.min().item()}, {q.max().item()}]"
        )
    # >>> exercise: byte j = (q[2j] & 0xF) | (q[2j+1] & 0xF) << 4, as uint8
    nibbles = q.to(torch.int16) & 0xF  # two's complement of a negative value, low 4 bits
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)
    # <<< exercise


def unpack_int4(packed, signed):
    """(..., K/2) uint8 -> (..., K) int8, the inverse of pack_int4."""
    # >>> exercise: low nibble first, then high; signed: nibble 8..15 -> -8..-1 (x ^ 8) - 8; int8 (..., 2·K/2)
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, p >> 4
    if signed:  # nibble 0..7 -> 0..7, 8..15 -> -8..-1
        lo, hi = (lo ^ 8) - 8, (hi ^ 8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1]).to(torch.int8)
    # <<< exercise


@dataclass
class QuantizedWeight:
    """A quantized (N, K) weight: what a QuantLinear stores and what the kernels read."""

    qweight: torch.Tensor  # int8 (N, K) for INT8; uint8 (N, K/2), two int4 per byte, for INT4
    scales: torch.Tensor  # fp16: (N,) for INT8, (N, K/G) for INT4
    zeros: torch.Tensor | None  # fp16 (N, K/G) integer zero points (asymmetric INT4), else None
    bits: int
    group_size: int | None  # None: one scale per output channel (INT8)
    in_features: int

    def __post_init__(self):
        """Refuse a malformed weight here, so neither the kernel nor the reference can misread one."""
        N, K, G = self.qweight.shape[0], self.in_features, self.group_size
        if self.bits == 8:
            expect = (torch.int8, (N, K), (N,), None)
        elif self.bits == 4 and G in GROUP_SIZES and K % G == 0:
            expect = (torch.uint8, (N, K // 2), (N, K // G), None if self.zeros is None else (N, K // G))
        else:
            raise ValueError(f"no format with bits={self.bits}, group_size={G}, in_features={K}")
        got = (
            self.qweight.dtype,
            tuple(self.qweight.shape),
            tuple(self.scales.shape),
            None if self.zeros is None else tuple(self.zeros.shape),
        )
        if got != expect or (self.bits == 8 and self.zeros is not None):
            raise ValueError(
                f"INT{self.bits} weight (codes dtype, codes, scales, zeros shapes) should be {expect}, "
                f"got {got}"
            )

    @property
    def out_features(self):
        return self.qweight.shape[0]

    @property
    def symmetric(self):
        return self.zeros is None

    def nbytes(self):
        """Bytes a matmul reads for the weight: codes + scales (+ zero points)."""
        return sum(
            t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros) if t is not None
        )

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)
        return QuantizedWeight(
            move(self.qweight),
            move(self.scales),
            move(self.zeros),
            self.bits,
            self.group_size,
            self.in_features,
        )


def quantize_int8(w):
    """INT8 symmetric, one scale per output channel (row of W)."""
    scale = symmetric_scale(w, 8)  # (N,)
    return QuantizedWeight(quantize_symmetric(w, scale, 8), scale, None, 8, None, w.shape[1])


def quantize_int4(w, group_size=128, symmetric=True):
    """INT4 group-wise: each row in groups of `group_size` along K, packed two values per byte."""
    N, K = w.shape
    groups = w.reshape(N, K // group_size, group_size)  # (N, K/G, G)
    if symmetric:
        scale = symmetric_scale(groups, 4)  # (N, K/G)
        q, zero = quantize_symmetric(groups, scale, 4), None
    else:
        scale, zero = asymmetric_scale_zero(groups, 4)
        q = quantize_asymmetric(groups, scale, zero, 4)
    return QuantizedWeight(pack_int4(q.reshape(N, K), signed=symmetric), scale, zero, 4, group_size, K)


def quantize(w, bits=4, group_size=128, symmetric=True):
    """Quantize a (N, K) float weight: bits=8 -> INT8 per channel (group_size must be None, symmetric only);
    bits=4 -> INT4 with groups of group_size, symmetric or with zero points."""
    if w.dim() != 2:
        raise ValueError(f"expected a (out_features, in_features) weight, got shape {tuple(w.shape)}")
    check_quant_settings(bits, group_size, w.shape[1])
    if bits == 8:
        if not symmetric:
            raise UserError(
                "INT8 here is symmetric only; pass symmetric=True (or use bits=4 for zero points)"
            )
        return quantize_int8(w)
    return quantize_int4(w, group_size, symmetric)


def unpacked_codes(qw):
    """The integer codes q as int8 (N, K), unpacked (INT4) or as stored (INT8)."""
    return qw.qweight if qw.bits == 8 else unpack_int4(qw.qweight, signed=qw.symmetric)


def dequantize(qw):
    """Ŵ = (q - zero) · scale as fp32 (N, K); exact (an integer of ≤ 8 bits times an fp16 fits in fp32)."""
    q = unpacked_codes(qw).float()
    if qw.bits == 8:
        return q * qw.scales.float()[:, None]
    N, K = q.shape
    groups = q.reshape(N, K // qw.group_size, qw.group_size)
    if qw.zeros is not None:
        groups = groups - qw.zeros.float()[..., None]
    return (groups * qw.scales.float()[..., None]).reshape(N, K)


# ----------------------------------------------------------------------------------------------------
# 2. The reference matmul
# ----------------------------------------------------------------------------------------------------
def quant_matmul_reference(x, qw, bias=None):
    """y = x · Ŵᵀ (+ bias), in fp32 (fp64 for fp64 x), returned in x's dtype: the definition the kernels meet."""
    acc = torch.promote_types(x.dtype, torch.float32)
    y = x.to(acc) @ dequantize(qw).to(acc).T  # (..., K) @ (K, N) -> (..., N)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# 3. Triton kernels: dequantize in registers, multiply on the tensor cores
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _group_values(T, rows, k0, N, n_groups, stride_tn, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Scale (or zero) per weight pair of the tile's bytes, (BLOCK_N, BLOCK_K/2) fp32, from one load per group.

    A tile spans BLOCK_K / GROUP whole groups (or sits inside one): load those few fp16 values, contiguous,
    and repeat each over its GROUP/2 bytes in registers, rather than issue a load per byte."""
    if BLOCK_K >= GROUP:
        g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        t = tl.load(
            T + rows[:, None] * stride_tn + g[None, :],
            mask=(rows < N)[:, None] & (g < n_groups)[None, :],
            other=0.0,
        ).to(tl.float32)  # (BLOCK_N, groups in tile)
        t = tl.reshape(
            tl.broadcast_to(t[:, :, None], (t.shape[0], BLOCK_K // GROUP, GROUP // 2)),
            (t.shape[0], BLOCK_K // 2),
        )
    else:  # the whole tile lies in group k0 // GROUP
        t = tl.load(T + rows * stride_tn + k0 // GROUP, mask=rows < N, other=0.0).to(tl.float32)  # (BLOCK_N,)
        t = tl.broadcast_to(t[:, None], (t.shape[0], BLOCK_K // 2))
    return t


@triton.jit
def _dequant_tile(
    W,
    S,
    Z,
    rows,
    k0,
    N,
    K,
    KW,
    stride_wn,
    stride_sn,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    ASYM: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The weight tile W[rows, k0:k0+BLOCK_K] as (BLOCK_N, BLOCK_K) values ready for tl.dot. KW: bytes per row.

    INT8: the integer codes themselves (their per-row scale is applied once to the accumulator, after the
    loop). INT4: (q - zero) · scale in fp32, since a group scale changes along k and cannot wait."""
    row_ok = (rows < N)[:, None]
    if BITS == 8:
        cols = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(
            W + rows[:, None] * stride_wn + cols[None, :], mask=row_ok & (cols < KW)[None, :], other=0
        )
    else:  # INT4: read BLOCK_K/2 bytes per row; byte j holds k = 2j in its low nibble, k = 2j + 1 in its high one
        j = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(W + rows[:, None] * stride_wn + j[None, :], mask=row_ok & (j < KW)[None, :], other=0)
        lo = (packed & 0xF).to(tl.int32)  # (BLOCK_N, BLOCK_K/2)
        hi = (packed >> 4).to(tl.int32)  # uint8: a logical shift, no sign bits come in
        if not ASYM:
            lo = (lo ^ 8) - 8  # two's-complement nibble: 8..15 -> -8..-1
            hi = (hi ^ 8) - 8
        w_lo = lo.to(tl.float32)
        w_hi = hi.to(tl.float32)
        # k = 2j and 2j + 1 share a group (G is even): one scale (and zero) serves both nibbles of a byte
        if ASYM:
            zero = _group_values(Z, rows, k0, N, K // GROUP, stride_sn, GROUP, BLOCK_K)
            w_lo -= zero
            w_hi -= zero
        scale = _group_values(S, rows, k0, N, K // GROUP, stride_sn, GROUP, BLOCK_K)
        w = tl.interleave(w_lo * scale, w_hi * scale)  # back in k order: (BLOCK_N, BLOCK_K)
    return w


@triton.jit
def _epilogue(
    acc, S, B, rows, stride_sn, N, BITS: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS_AXIS: tl.constexpr
):
    """acc (fp32) · per-channel scale (INT8) + bias, both indexed by output feature `rows` along ROWS_AXIS."""
    if BITS == 8:
        scale = tl.load(S + rows * stride_sn, mask=rows < N, other=0.0).to(tl.float32)
        acc = acc * (scale[:, None] if ROWS_AXIS == 0 else scale[None, :])
    if HAS_BIAS:
        bias = tl.load(B + rows, mask=rows < N, other=0.0).to(tl.float32)
        acc = acc + (bias[:, None] if ROWS_AXIS == 0 else bias[None, :])
    return acc


@triton.jit
def _qmm_decode(
    X,
    W,
    S,
    Z,
    B,
    Y,
    M,
    N,
    K,
    KW,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_sn,
    stride_ym,
    M_BUCKET,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    ASYM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """M ≤ 16. One program: output features [pid·BLOCK_N, +BLOCK_N) for every token; reads its W rows once.

    Computed transposed, yᵀ = Ŵ xᵀ: the MMA's smallest tile is 16 on every side, so the weight rows fill
    the tile's long side and the ≤ 16 tokens (padded with masked zeros) its short side. No split over K:
    a split needs a second pass (zeroed fp32 buffer, atomics, a cast), two more launches that cost about
    as long as reading a 4096² INT4 weight; BLOCK_N = 16-32 already gives N/BLOCK_N ≥ 128 programs."""
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # output features n
    toks = tl.arange(0, 16).to(tl.int64)  # tokens m
    acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)  # yᵀ tile
    for k0 in range(0, K, BLOCK_K):
        w = _dequant_tile(W, S, Z, rows, k0, N, K, KW, stride_wn, stride_sn, BITS, GROUP, ASYM, BLOCK_K)
        cols = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(
            X + toks[None, :] * stride_xm + cols[:, None] * stride_xk,
            mask=(toks < M)[None, :] & (cols < K)[:, None],
            other=0.0,
        )  # xᵀ (BLOCK_K, 16)
        acc = tl.dot(w.to(xt.dtype), xt, acc, input_precision=PRECISION)  # (BLOCK_N, 16), fp32
    acc = _epilogue(acc, S, B, rows, stride_sn, N, BITS, HAS_BIAS, 0)
    tl.store(
        Y + toks[None, :] * stride_ym + rows[:, None],
        acc.to(Y.dtype.element_ty),
        mask=(rows < N)[:, None] & (toks < M)[None, :],
    )


@triton.jit
def _qmm_gemm(
    X,
    W,
    S,
    Z,
    B,
    Y,
    M,
    N,
    K,
    KW,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_sn,
    stride_ym,
    M_BUCKET,
    BITS: tl.constexpr,
    GROUP: tl.constexpr,
    ASYM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """M > 16. One program: the (BLOCK_M, BLOCK_N) tile of y; loops over K, dequantizing each W tile."""
    # Grouped launch order: GROUP_M consecutive programs share one column of W tiles, so a W tile is read
    # from HBM once and then from L2 by the programs of the other M tiles in its group.
    pid = tl.program_id(0)
    n_tiles_m, n_tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = (pid // (GROUP_M * n_tiles_n)) * GROUP_M
    group_rows = min(n_tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_tiles_n)) % group_rows
    pid_n = (pid % (GROUP_M * n_tiles_n)) // group_rows
    toks = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # tokens m
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # output features n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            X + toks[:, None] * stride_xm + cols[None, :] * stride_xk,
            mask=(toks < M)[:, None] & (cols < K)[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_K)
        w = _dequant_tile(W, S, Z, rows, k0, N, K, KW, stride_wn, stride_sn, BITS, GROUP, ASYM, BLOCK_K)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
    acc = _epilogue(acc, S, B, rows, stride_sn, N, BITS, HAS_BIAS, 1)
    tl.store(
        Y + toks[:, None] * stride_ym + rows[None, :],
        acc.to(Y.dtype.element_ty),
        mask=(toks < M)[:, None] & (rows < N)[None, :],
    )


# Autotune candidates for an H100-class GPU. Decode: (BLOCK_N, BLOCK_K, warps, stages). Narrow BLOCK_N keeps
# ≥ 128 programs at N = 4096 (one per SM); a wide BLOCK_K and 3-5 stages keep enough bytes in flight per SM
# (Little's law: ~3 TB/s × ~1 µs ≈ 3 MB across the GPU). Wider BLOCK_N at M = 16: each program re-reads x
# (16 × BLOCK_K) from L2 for BLOCK_N weight rows, so narrow tiles spend more on x than on W. Tiles of 8192+
# weights get 8 warps: with 4, the fp32 dequantized INT4 tile needs ~250 registers a thread (compile report).
DECODE_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for n, k, w, s in [
        (16, 256, 4, 4),
        (16, 512, 8, 3),
        (32, 256, 4, 4),
        (32, 512, 8, 3),
        (32, 128, 4, 5),
        (64, 256, 8, 3),
        (64, 128, 4, 4),
        (128, 128, 8, 3),
    ]
]
# GEMM: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), the usual fp16 GEMM tiles; small BLOCK_M for M = 32-64.
GEMM_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for m, n, k, w, s in [
        (32, 128, 128, 4, 4),
        (64, 128, 64, 4, 4),
        (64, 128, 128, 4, 3),
        (64, 256, 64, 8, 3),
        (128, 128, 64, 8, 3),
        (128, 256, 64, 8, 3),
        (128, 64, 64, 4, 4),
        (128, 128, 128, 8, 2),
    ]
]
# One fixed tile per kernel under the interpreter (tuning there would only burn CPU). The decode tile's
# BLOCK_K = 256 holds several groups and overhangs K = 96, 192, 384; the GEMM tile's BLOCK_K = 64 lies inside
# a group of 64 or 128 and overhangs K = 96.
INTERPRET_CONFIGS = {
    "decode": dict(BLOCK_N=16, BLOCK_K=256),
    "gemm": dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, GROUP_M=2),
}
# Tuned per (M bucket, N, K, format); M is bucketed to a power of two so each new batch size does not re-tune.
TUNE_KEY = ["M_BUCKET", "N", "K", "BITS", "GROUP", "ASYM", "HAS_BIAS"]
KERNELS = {"decode": _qmm_decode, "gemm": _qmm_gemm}
TUNED = {
    "decode": _qmm_decode if INTERPRET else triton.autotune(DECODE_CONFIGS, key=TUNE_KEY)(_qmm_decode),
    "gemm": _qmm_gemm if INTERPRET else triton.autotune(GEMM_CONFIGS, key=TUNE_KEY)(_qmm_gemm),
}


def m_bucket(M):
    """The autotuner's view of M: 1, 2, 4, 8, 16 (decode), 32 ... 1024 (GEMM; larger M all alike)."""
    return min(triton.next_power_of_2(M), 1024)


def check_shapes(x, qw, bias):
    if x.shape[-1] != qw.in_features:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects {qw.in_features}")
    if bias is not None and bias.shape != (qw.out_features,):
        raise ValueError(f"bias must have shape ({qw.out_features},), got {tuple(bias.shape)}")


def _grid(path, M, N, cfg):
    if path == "decode":
        return (triton.cdiv(N, cfg["BLOCK_N"]),)
    return (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)


def triton_quant_matmul(x, qw, bias=None, path=None, config=None):
    """y = x · Ŵᵀ (+ bias) with the Triton kernels; x (..., K) fp16/bf16/fp32 on CUDA (or CPU with
    TRITON_INTERPRET=1). path: None = decode for M ≤ 16, else GEMM. config: a fixed tile (dict of the
    kernel's BLOCK_* constants, plus num_warps / num_stages) instead of the autotuned one."""
    check_shapes(x, qw, bias)
    K, N = qw.in_features, qw.out_features
    x2 = x.reshape(-1, K)  # a view when it can be: the kernel reads any strides
    M = x2.shape[0]
    path = path or ("decode" if M <= DECODE_MAX_M else "gemm")
    if path == "decode" and M > DECODE_MAX_M:
        raise ValueError(f"the decode kernel takes at most {DECODE_MAX_M} rows, got {M}; use path='gemm'")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return y.reshape(*x.shape[:-1], N)
    args = (
        x2,
        qw.qweight,
        qw.scales,
        qw.zeros,
        bias,
        y,
        M,
        N,
        K,
        qw.qweight.shape[1],
        x2.stride(0),
        x2.stride(1),
        qw.qweight.stride(0),
        qw.scales.stride(0),
        y.stride(0),
        m_bucket(M),
    )
    consts = dict(
        BITS=qw.bits,
        GROUP=qw.group_size or K,
        ASYM=qw.zeros is not None,
        HAS_BIAS=bias is not None,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
    )  # fp32 would otherwise run as TF32
    if config is None and INTERPRET:
        config = INTERPRET_CONFIGS[path]
    if config is None:
        TUNED[path][lambda meta: _grid(path, M, N, meta)](*args, **consts)
    else:
        KERNELS[path][_grid(path, M, N, config)](*args, **consts, **config)
    return y.reshape(*x.shape[:-1], N)


# ----------------------------------------------------------------------------------------------------
# 4. The one function layers call
# ----------------------------------------------------------------------------------------------------
def kernel_unsupported(x, qw, bias=None):
    """Why the Triton kernel cannot take these inputs ('' when it can)."""
    if x.dtype not in KERNEL_DTYPES:
        return f"activations in {x.dtype} (the kernel takes float16, bfloat16, float32)"
    if INTERPRET and x.dtype == torch.bfloat16:
        return "bfloat16 in the Triton interpreter (numpy has no bfloat16)"
    if not (x.is_cuda or INTERPRET):
        return "tensors not on a CUDA device"
    tensors = [t for t in (x, qw.qweight, qw.scales, qw.zeros, bias) if t is not None]
    if len({t.device for t in tensors}) > 1:
        return "activations, weights and bias on different devices"
    if not all(t.is_contiguous() for t in tensors[1:]):
        return "a non-contiguous quantized weight, scale or bias"
    return ""


_warned = set()


def quant_matmul(x, qw, bias=None, backend="auto"):
    """y = x · dequant(W)ᵀ (+ bias); x (..., K) -> (..., N) in x's dtype.

    backend: "auto" = the Triton kernel for CUDA tensors, the reference elsewhere; "triton" = the kernel (also
    on a CPU under TRITON_INTERPRET=1); "torch" = the reference. Inputs the kernel cannot take run the
    reference instead, with a warning the first time each reason occurs: slower, never wrong."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, triton or torch")
    check_shapes(x, qw, bias)
    if backend == "auto":
        backend = "triton" if x.is_cuda else "torch"
    if backend == "triton":
        reason = kernel_unsupported(x, qw, bias)
        if not reason:
            return triton_quant_matmul(x, qw, bias)
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(
                f"quant_matmul: the Triton kernel does not take {reason}; using the PyTorch reference",
                stacklevel=2,
            )
    return quant_matmul_reference(x, qw, bias)


def weight_bytes_per_element(bits, group_size, symmetric=True, in_features=4096):
    """Bytes read per weight: codes + fp16 scales (+ fp16 zeros), e.g. INT4-g128 = 0.5 + 2/128."""
    per_group = 2 * (1 if symmetric else 2)
    return bits / 8 + per_group / (group_size or in_features)


def main(argv=None):
    """A quick look: quantization error and kernel vs reference on one small layer."""
    if argv:
        raise UserError(
            f"unexpected arguments {' '.join(argv)}; run `python kernels/quant_matmul.py` with none"
        )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16
    w = torch.randn(96, 256, device=device)
    for name, qw in [
        ("int8", quantize(w, 8, None)),
        ("int4-g32", quantize(w, 4, 32)),
        ("int4-g128-asym", quantize(w, 4, 128, symmetric=False)),
    ]:
        x = torch.randn(5, 256, device=device, dtype=dtype)
        err_w = (dequantize(qw) - w).abs().max().item()
        y, ref = triton_quant_matmul(x, qw), quant_matmul_reference(x, qw)
        print(
            f"{name:<15} max|Ŵ - W| {err_w:.4f}  max|kernel - reference| {(y - ref).abs().max().item():.2e}  "
            f"{weight_bytes_per_element(qw.bits, qw.group_size, qw.symmetric, 256):.3f} bytes/weight"
            f"{' (interpreter)' if INTERPRET else ''}"
        )


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
