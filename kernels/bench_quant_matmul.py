"""Benchmark: our INT8 / INT4 Triton matmuls (kernels/quant_matmul.py) vs bf16 torch.matmul, on a GPU.

    python kernels/bench_quant_matmul.py                        # K = N = 4096 and 8192, M = 1 ... 256
    python kernels/bench_quant_matmul.py --sizes 8192 --ms 1 16 --formats int4-g128 int4-g128-asym
    python kernels/bench_quant_matmul.py --compile-arch 90      # no GPU needed: compile for an H100, print
                                                                # registers and spills of every autotune config

For each square weight (N = K), each M and each format, it checks the kernel against the reference once,
then times y = x · Wᵀ (triton.testing.do_bench, median; the L2 cache is flushed before every call, so W
comes from HBM as it does when a model's layers take turns) and prints:
    µs            the median time
    GB/s          effective weight traffic: bytes of the stored weight (codes + scales + zeros) / time
    % peak        that, over the GPU's peak memory bandwidth (--peak-gbs, or looked up from the GPU name)
    × bf16        bf16 time / our time, the speed-up a decoding model would see on this layer
and saves bench_quant_matmul.json and .png under --out.

Goals (issue 14, on an H100): INT4 ≥ 3.2× and INT8 ≥ 1.8× bf16 at M = 1-16 (bf16 reads an 8192² weight in
about 60 µs there, 2.25 of the 3.35 TB/s peak), and no worse than 0.8× bf16 at M = 256. The ceilings: a
perfect kernel at bf16's bandwidth would reach 2/(1 + 2/K) ≈ 2.0× (INT8) and 2/(0.5 + 2/128) ≈ 3.9× (INT4-g128).

End-to-end decode tokens/s of a GPT-2-sized model with QuantLinear belongs to 07_distill_quant (kernels/ may
not import a later stage); .ci/gpu runs every bench_*.py it finds, so a 07 benchmark joins the report there.

Interview questions it answers:
- What is the roofline of a decode matmul? (Bytes of W / bandwidth; FLOPs are ~free at M ≤ 16.)
- Why does the INT4 speed-up fall short of 4×? (Scales and zeros add bytes; the unpack and dequantize
  instructions compete with loads; fewer bytes per program make latency harder to hide.)
- Why does the advantage vanish at large M? (The matmul turns compute-bound; dequantizing is extra work.)
"""

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json

FORMATS = ["int8"] + [f"int4-g{g}{a}" for g in (32, 64, 128) for a in ("", "-asym")]
GOALS = {"int8": 1.8, "int4": 3.2}  # × bf16 at M ≤ 16; and ≥ 0.8× at M = 256 for both
LARGE_M_GOAL = 0.8
PEAK_GBS = {
    "H100 NVL": 3900,
    "H100 PCIe": 2000,
    "H100": 3350,
    "H200": 4800,
    "GH200": 4000,  # first match wins
    "A100-SXM4-80GB": 2039,
    "A100 80GB PCIe": 1935,
    "A100": 1555,
    "L40S": 864,
    "L4": 300,
    "RTX 4090": 1008,
    "RTX 3090": 936,
    "A10G": 600,
}


@dataclass
class BenchConfig:
    sizes: list = option([4096, 8192], "square weights N = K to time (multiples of 128)")
    ms: list = option([1, 2, 4, 8, 16, 64, 256], "rows of x (tokens); ≤ 16 takes the decode kernel")
    formats: list = option(["int8", "int4-g128", "int4-g32"], "formats to time, from: " + ", ".join(FORMATS))
    dtype: str = option("bfloat16", "activation dtype", choices=["bfloat16", "float16"])
    warmup_ms: int = option(25, "do_bench warm-up per measurement, ms", min=1)
    rep_ms: int = option(100, "do_bench repetitions per measurement, ms", min=1)
    peak_gbs: float = option(
        0.0, "GPU peak memory bandwidth in GB/s; 0 = look it up from the GPU name", min=0
    )
    out: str = option("runs/bench_quant_matmul", "folder for bench_quant_matmul.json and .png")
    compile_arch: int = option(
        0,
        "compile every kernel config for sm_<arch> (90 = H100) and print registers "
        "and spills instead of timing; needs no GPU (0 = off)",
        min=0,
    )


def check_config(cfg):
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad:
        raise UserError(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    bad_sizes = [n for n in cfg.sizes if n < 128 or n % 128]
    if bad_sizes:
        raise UserError(
            f"--sizes {bad_sizes[0]} is not a multiple of 128 (every INT4 group size must divide K); "
            "use e.g. 4096"
        )
    if min(cfg.ms) < 1:
        raise UserError(f"--ms {min(cfg.ms)}: M must be at least 1")


def parse_format(name):
    """'int4-g128-asym' -> (bits=4, group_size=128, symmetric=False); 'int8' -> (8, None, True)."""
    if name == "int8":
        return 8, None, True
    parts = name.split("-")
    return 4, int(parts[1][1:]), len(parts) == 2


# ----------------------------------------------------------------------------------------------------
# Timing on a GPU
# ----------------------------------------------------------------------------------------------------
def peak_bandwidth_gbs(cfg):
    if cfg.peak_gbs:
        return cfg.peak_gbs
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBS.items() if k in name), 0.0)


def time_us(fn, cfg):
    from triton.testing import do_bench

    return do_bench(fn, warmup=cfg.warmup_ms, rep=cfg.rep_ms, return_mode="median") * 1e3


def max_rel_error(qm, x, qw):
    """max |kernel - reference| / max |reference| (a fast wrong kernel must not make the table)."""
    ref = qm.quant_matmul_reference(x, qw).float()
    return ((qm.quant_matmul(x, qw).float() - ref).abs().max() / ref.abs().max()).item()


def bench_size(qm, size, cfg, peak):
    """Rows for one N = K: bf16 and each format at every M."""
    dtype = getattr(torch, cfg.dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(size, size, device="cuda", generator=g) * 0.02
    w_half = w.to(dtype)
    quantized = {f: qm.quantize(w, *parse_format(f)) for f in cfg.formats}
    del w
    rows = []
    for M in cfg.ms:
        x = torch.randn(M, size, device="cuda", dtype=dtype, generator=g)
        t_ref = time_us(lambda: torch.matmul(x, w_half.T), cfg)
        ref_bytes = w_half.numel() * w_half.element_size()
        rows.append(
            dict(
                size=size,
                M=M,
                format=cfg.dtype,
                us=t_ref,
                weight_bytes=ref_bytes,
                gbs=ref_bytes / t_ref / 1e3,
                peak_frac=ref_bytes / t_ref / 1e3 / peak if peak else None,
                vs_bf16=1.0,
                max_rel_err=0.0,
            )
        )
        for name, qw in quantized.items():
            err = max_rel_error(qm, x, qw)
            t = time_us(lambda: qm.quant_matmul(x, qw), cfg)
            nbytes = qw.nbytes()
            rows.append(
                dict(
                    size=size,
                    M=M,
                    format=name,
                    us=t,
                    weight_bytes=nbytes,
                    gbs=nbytes / t / 1e3,
                    peak_frac=nbytes / t / 1e3 / peak if peak else None,
                    vs_bf16=t_ref / t,
                    max_rel_err=err,
                )
            )
        print_rows(rows[-1 - len(quantized) :])
    return rows


def print_header(cfg):
    cells = "".join(f" | {f:>14} {'GB/s':>6} {'%pk':>4} {'×bf16':>6}" for f in cfg.formats)
    print(f"{'N=K':>5} {'M':>4} | {cfg.dtype + ' µs':>14} {'GB/s':>6} {'%pk':>4}{cells}")


def print_rows(rows):
    pct = lambda r: f"{100 * r['peak_frac']:4.0f}" if r["peak_frac"] else "   -"
    ref, ours = rows[0], rows[1:]
    cells = "".join(f" | {r['us']:14.1f} {r['gbs']:6.0f} {pct(r)} {r['vs_bf16']:5.2f}x" for r in ours)
    print(
        f"{ref['size']:>5} {ref['M']:>4} | {ref['us']:14.1f} {ref['gbs']:6.0f} {pct(ref)}{cells}", flush=True
    )


def summarize_goals(rows, device):
    """One line per format: worst and best × bf16 at M ≤ 16, and at M = 256, against the issue's goals."""
    lines = []
    for name in dict.fromkeys(r["format"] for r in rows if r["format"].startswith("int")):
        goal = GOALS["int8" if name == "int8" else "int4"]
        for label, pick, target in (
            ("M <= 16", lambda M: M <= 16, goal),
            ("M = 256", lambda M: M == 256, LARGE_M_GOAL),
        ):
            ratios = [r["vs_bf16"] for r in rows if r["format"] == name and pick(r["M"])]
            if ratios:
                verdict = "met" if min(ratios) >= target else "NOT met"
                lines.append(
                    f"goal {name} >= {target}x bf16 at {label}: worst {min(ratios):.2f}x, "
                    f"best {max(ratios):.2f}x -> {verdict}"
                )
    if "H100" not in device:
        lines.append(f"(the goals are for an H100; this is {device})")
    for line in lines:
        print(line)
    return lines


def save_plot(rows, cfg, path):
    """Per size: × bf16 against M (goal lines dashed), and the fraction of peak bandwidth reached."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(cfg.sizes), figsize=(5.5 * len(cfg.sizes), 7), squeeze=False)
    for j, size in enumerate(cfg.sizes):
        for name in [cfg.dtype] + cfg.formats:
            pts = sorted(
                (r["M"], r["vs_bf16"], r["peak_frac"] or 0)
                for r in rows
                if r["size"] == size and r["format"] == name
            )
            ms, ratio, frac = zip(*pts)
            axes[0][j].plot(ms, ratio, marker="o", label=name)
            axes[1][j].plot(ms, [100 * f for f in frac], marker="o", label=name)
        for goal in sorted(set(GOALS.values()) | {LARGE_M_GOAL}):
            axes[0][j].axhline(goal, ls="--", lw=0.8, color="gray")
        axes[0][j].set(
            title=f"N = K = {size}: speed-up over {cfg.dtype}", ylabel=f"× {cfg.dtype} (higher is better)"
        )
        axes[1][j].set(title="weight bytes / time", ylabel="% of peak bandwidth", xlabel="M (tokens)")
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------
# Compiling for a GPU that is not here
# ----------------------------------------------------------------------------------------------------
def compile_report(cfg):
    """Compile every autotune config of both kernels for sm_<arch> and print registers / spills / shared memory.

    Uses the same route as kernels/compile_check.py (Triton's compiler and ptxas run on the CPU). Arguments
    get the specializations a real launch gives them: contiguous x (stride 1 along K), 16-divisible sizes."""
    os.environ["TRITON_INTERPRET"] = "0"  # before quant_matmul is imported: real kernels, not the interpreter
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from compile_check import resource_usage  # kernels/
    import quant_matmul as qm

    if qm.INTERPRET:
        raise UserError(
            "quant_matmul was already imported for the interpreter; run --compile-arch in a fresh "
            "process without TRITON_INTERPRET=1"
        )
    act = {"bfloat16": "bf16", "float16": "fp16"}[cfg.dtype]
    smem_limit = 227 * 1024
    print(
        f"{'kernel':<6} {'format':<15} {'tile (M/N/K)':>13} {'warps':>5} {'stages':>6} | {'regs':>4} "
        f"{'spill B':>7} {'smem KB':>7}  (sm_{cfg.compile_arch}, {cfg.dtype})"
    )
    n_bad = 0
    for path, configs in (("decode", qm.DECODE_CONFIGS), ("gemm", qm.GEMM_CONFIGS)):
        kernel = qm.KERNELS[path]
        for name in cfg.formats:
            bits, group, symmetric = parse_format(name)
            for config in configs:
                consts = dict(
                    BITS=bits,
                    GROUP=group or 4096,
                    ASYM=not symmetric,
                    HAS_BIAS=False,
                    PRECISION="tf32",
                    stride_xk=1,
                    B=None,
                    **config.kwargs,
                )
                if symmetric:
                    consts["Z"] = None
                ptr = {"X": act, "Y": act, "W": "i8" if bits == 8 else "u8", "S": "fp16", "Z": "fp16"}
                sig = {
                    a: "constexpr" if a in consts else ("*" + ptr[a] if a in ptr else "i32")
                    for a in kernel.arg_names
                }
                aligned = ["X", "Y", "W", "S", "Z", "N", "K", "KW", "stride_xm", "stride_wn", "stride_ym"]
                attrs = {
                    (kernel.arg_names.index(a),): [["tt.divisibility", 16]]
                    for a in aligned
                    if a not in consts
                }
                kw = config.kwargs
                tile = f"{kw.get('BLOCK_M', 16)}/{kw['BLOCK_N']}/{kw['BLOCK_K']}"
                head = f"{path:<6} {name:<15} {tile:>13} {config.num_warps:>5} {config.num_stages:>6} |"
                try:
                    compiled = triton.compile(
                        ASTSource(kernel, sig, consts, attrs),
                        target=GPUTarget("cuda", cfg.compile_arch, 32),
                        options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
                    )
                except Exception as e:  # a config the compiler rejects: report it, keep going
                    print(f"{head} FAILED: {str(e).splitlines()[0][:80]}")
                    n_bad += 1
                    continue
                regs, spill = resource_usage(compiled.asm["cubin"])
                smem = compiled.metadata.shared
                note = ("  <- spills" if spill > 0 else "") + (
                    "  <- too much shared memory" if smem > smem_limit else ""
                )
                print(f"{head} {regs:>4} {spill:>7} {smem / 1024:>7.1f}{note}", flush=True)
    if n_bad:
        raise UserError(f"{n_bad} config(s) failed to compile for sm_{cfg.compile_arch}; see the lines above")


# ----------------------------------------------------------------------------------------------------
def main(argv=None):
    cfg, _ = parse_config(BenchConfig, argv, doc=__doc__)
    check_config(cfg)
    if cfg.compile_arch:
        return compile_report(cfg)
    if not torch.cuda.is_available():
        print(
            "bench_quant_matmul.py needs a CUDA GPU (none found here); nothing was measured "
            "(--compile-arch 90 compiles the kernels for an H100 without one)."
        )
        return
    import triton
    import quant_matmul as qm  # kernels/; imported here so the no-GPU path never loads Triton's kernels

    device = torch.cuda.get_device_name()
    peak = peak_bandwidth_gbs(cfg)
    print(
        f"{device} | torch {torch.__version__} | triton {triton.__version__} | CUDA {torch.version.cuda} | "
        f"peak {peak:.0f} GB/s{' (unknown GPU: pass --peak-gbs)' if not peak else ''} | {cfg.dtype} x, "
        f"median µs of y = x·Wᵀ with L2 flushed; first calls autotune"
    )
    print_header(cfg)
    rows = [r for size in cfg.sizes for r in bench_size(qm, size, cfg, peak)]
    goals = summarize_goals(rows, device)
    out = Path(cfg.out)
    write_json(
        out / "bench_quant_matmul.json",
        {
            "config": asdict(cfg),
            "device": device,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "peak_gbs": peak,
            "goals": goals,
            "rows": rows,
        },
    )
    save_plot(rows, cfg, out / "bench_quant_matmul.png")
    print(f"wrote {out / 'bench_quant_matmul.json'} and {out / 'bench_quant_matmul.png'}")


if __name__ == "__main__":
    run_cli(main)
