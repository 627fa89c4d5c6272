"""What the FlashAttention kernels share: which inputs they accept, their tile shapes and autotuning,
and how a kernel is launched (a fixed tile under the CPU interpreter, autotuned on a GPU).

    from flash_tiles import check_supported, INTERPRET
    check_supported(q, k, v)     # a UserError naming what is supported, before any kernel runs

Read flash_attention.py (the forward kernel and the autograd Function) and flash_attention_bwd.py (the
three backward kernels); this file holds only the plumbing both use.

Interview questions this file answers:
- Why autotune over (BLOCK_M, BLOCK_N, num_warps, num_stages)? (The best tile depends on head dim,
  registers and shared memory; too large spills registers, too small reloads K/V more often.)
- Why compute a (batch, head) offset in int64? (See _bh_offset: int32 wraps past 2³¹ elements.)
"""

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


def _precision(x):
    # fp32 inputs would otherwise run through TF32 tensor cores (10-bit mantissa); half inputs ignore it.
    return "ieee" if x.dtype == torch.float32 else "tf32"
