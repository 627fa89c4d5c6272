"""Compile every attention kernel and autotune config for an NVIDIA GPU, on a machine without one.

The interpreter (TRITON_INTERPRET=1) runs the kernels' logic on a CPU, but it accepts things the real
compiler rejects (dot shapes, constexpr misuse, shared-memory overflow) and says nothing about registers.
Triton ships the whole compiler chain, ptxas included, so a CPU machine can compile for sm_90 (H100) and
read the resource usage of each config: registers per thread, spilled bytes (STACK > 0 means the config
spills registers to local memory and will be slow), and shared memory per program.

    python kernels/compile_check.py                       # bf16, head dims 64 and 128, every config
    python kernels/compile_check.py --dtype float32 --head-dims 128 --kernels fwd

Interview question: what limits the tile size of a flash-attention kernel? (Registers for the fp32
accumulators and the resident Q/K/V tiles, and shared memory for the pipelined K/V loads.)
"""

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # real compilation, even on a CPU machine (flash_attention keeps it)

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import flash_attention as fa  # noqa: E402  (kernels, this folder)
import flash_attention_bwd as fa_bwd  # noqa: E402
import flash_tiles as tiles  # noqa: E402

TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
KERNELS = {  # name -> (kernel, autotune configs, the pointer arguments that hold the input dtype)
    "fwd": (fa._attn_fwd, tiles.FWD_CONFIGS, ("Q", "K", "V", "O")),
    "dkdv": (fa_bwd._attn_bwd_dkdv, tiles.DKDV_CONFIGS, ("Q", "K", "V", "DO", "DK", "DV")),
    "dq": (fa_bwd._attn_bwd_dq, tiles.DQ_CONFIGS, ("Q", "K", "V", "DO", "DQ")),
}


def signature(kernel, typed_ptrs, dtype, constexprs):
    """Triton's argument types: the input-dtype pointers, fp32 pointers (LSE, delta), fp32 scales, i32 ints."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in typed_ptrs:
            sig[name] = "*" + TRITON_TYPES[dtype]
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def resource_usage(cubin):
    """'REG:n STACK:n ...' from cuobjdump (shipped with Triton) for one compiled kernel."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    fields = dict(
        tok.split(":", 1) for line in out.splitlines() if "REG:" in line for tok in line.split() if ":" in tok
    )
    return int(fields.get("REG", -1)), int(fields.get("STACK", -1))


def compile_config(kernel, typed_ptrs, dtype, head_dim, causal, group, config, arch):
    constexprs = dict(
        GROUP=group,
        HEAD_DIM=head_dim,
        CAUSAL=causal,
        PRECISION="ieee" if dtype == "float32" else "tf32",
        **config.kwargs,
    )
    src = ASTSource(kernel, signature(kernel, typed_ptrs, dtype, constexprs), constexprs)
    t0 = time.perf_counter()
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
    )
    return compiled, time.perf_counter() - t0


@dataclass
class CompileConfig:
    kernels: list[str] = option(list(KERNELS), "kernels to compile: fwd, dkdv, dq", sep=",")
    head_dims: list[int] = option([64, 128], "head dims (32, 64, 128)", sep=",")
    dtype: str = option("bfloat16", "input dtype", choices=tuple(TRITON_TYPES))
    arch: int = option(90, "compute capability x10 (90 = H100/H200)", min=50)
    group: int = option(2, "GQA group size compiled (query heads per K/V head)", min=1)


def main(argv=None):
    """Compile the attention kernels for a GPU target and report registers, spills and shared memory."""
    cfg, _ = parse_config(CompileConfig, argv, doc=__doc__)
    if not set(cfg.kernels) <= set(KERNELS) or not set(cfg.head_dims) <= set(tiles.SUPPORTED_HEAD_DIMS):
        raise UserError(
            f"--kernels {cfg.kernels} / --head-dims {cfg.head_dims}: choose from "
            f"{', '.join(KERNELS)} / {', '.join(map(str, tiles.SUPPORTED_HEAD_DIMS))}"
        )
    smem_limit = 227 * 1024  # per block on sm_90; configs above it fail to launch (autotune skips them)
    print(
        f"{'kernel':<6} {'D':>4} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} | {'regs':>4} {'spill B':>7} "
        f"{'smem KB':>7} {'compile s':>9}  (sm_{cfg.arch}, {cfg.dtype}, causal, GQA group {cfg.group})"
    )
    n_bad = 0
    for name in cfg.kernels:
        kernel, configs, typed_ptrs = KERNELS[name]
        for head_dim in cfg.head_dims:
            for config in configs:
                kw = config.kwargs
                head = (
                    f"{name:<6} {head_dim:>4} {kw['BLOCK_M']:>4} {kw['BLOCK_N']:>4} {config.num_warps:>5} "
                    f"{config.num_stages:>6} |"
                )
                try:
                    compiled, seconds = compile_config(
                        kernel, typed_ptrs, cfg.dtype, head_dim, True, cfg.group, config, cfg.arch
                    )
                except Exception as e:  # a config the compiler rejects: report it, keep going
                    print(f"{head} FAILED: {str(e).splitlines()[0][:80]}")
                    n_bad += 1
                    continue
                regs, spill = resource_usage(compiled.asm["cubin"])
                smem = compiled.metadata.shared
                note = "  <- spills" if spill > 0 else ""
                note += "  <- too much shared memory" if smem > smem_limit else ""
                print(f"{head} {regs:>4} {spill:>7} {smem / 1024:>7.1f} {seconds:>9.1f}{note}", flush=True)
    if n_bad:
        raise UserError(
            f"{n_bad} kernel config(s) failed to compile (listed above); fix them or drop them "
            "from the autotune lists in flash_attention.py"
        )


if __name__ == "__main__":
    run_cli(main)
