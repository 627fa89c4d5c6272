"""Benchmark: our Triton FlashAttention-2 vs PyTorch SDPA (flash backend) vs naive attention, on a GPU.

    python kernels/bench_attention.py                      # the full sweep (a few minutes on an H100)
    python kernels/bench_attention.py --seqs 1024,4096 --head-dims 128 --modes causal

For each head dim (64, 128), mask (causal, full) and sequence length (512 … 16k), bf16, batch 4 and
H = 2048 / D heads (a model width of 2048), it checks our output against SDPA once, then times
forward, backward and forward+backward and prints time and TFLOP/s per implementation, our speed-up
over SDPA, and saves `bench.json` and `bench.png` under --out (default runs/bench_attention).

FLOPs counted (the FlashAttention papers' convention; causal counts half):
    forward  = 4·B·H·T·S·D    (two matmuls, QKᵀ and PV, 2 FLOPs per multiply-add)
    backward = 2.5 × forward  (five matmuls: recomputed QKᵀ, dV, dP, dQ, dK)
Goal on an H100 (from the issue): forward ≥ 1.2× SDPA and backward ≥ 1.0× SDPA at T ≥ 4k.

Interview questions: how do you count attention FLOPs, and why does the backward cost 2.5× the forward?
Why is naive attention memory-bound (and out of memory at 16k) while flash attention is compute-bound?
"""

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json


@dataclass
class BenchConfig:
    batch: int = option(4, "sequences per call", min=1)
    model_width: int = option(2048, "heads = model_width // head_dim", min=32)
    head_dims: list[int] = option([64, 128], "head dims to sweep (32, 64 or 128)", sep=",")
    seqs: list[int] = option([512, 1024, 2048, 4096, 8192, 16384], "sequence lengths", sep=",")
    modes: list[str] = option(["causal", "full"], "masks to sweep: causal, full", sep=",")
    dtype: str = option("bfloat16", "input dtype", choices=("bfloat16", "float16"))
    naive_max_gib: float = option(24.0, "skip naive when its (T, S) matrices would exceed this", min=0.0)
    warmup_ms: int = option(25, "triton.testing.do_bench warm-up per timing", min=1)
    rep_ms: int = option(100, "triton.testing.do_bench repetition time per timing", min=1)
    out: str = option(str(REPO / "runs" / "bench_attention"), "folder for bench.json and bench.png")


def check_bench_config(cfg: BenchConfig):
    """The list flags' allowed values (parse_config checks single values only)."""
    if not set(cfg.head_dims) <= {32, 64, 128} or not cfg.head_dims:
        raise UserError(f"--head-dims {cfg.head_dims}: the kernel takes 32, 64 and 128")
    if not set(cfg.modes) <= {"causal", "full"} or not cfg.modes:
        raise UserError(f"--modes {cfg.modes}: choose causal and/or full")
    if not cfg.seqs or min(cfg.seqs) < 1:
        raise UserError(f"--seqs {cfg.seqs}: give positive sequence lengths")


def attention_flops(B, H, T, D, causal, pass_name):
    """FLOPs of one forward / backward / forward+backward pass (see the docstring for the convention)."""
    fwd = 4 * B * H * T * T * D * (0.5 if causal else 1.0)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[pass_name]


def implementations():
    """name -> function(q, k, v, causal) returning o; imported here so a CPU run never loads Triton."""
    from flash_attention import flash_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa_flash(q, k, v, causal):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def naive(q, k, v, causal):  # the textbook version in the input dtype (attention_naive upcasts to fp32)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, T, T)
        if causal:
            mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool, device=q.device).tril()
            att = att.masked_fill(~mask, float("-inf"))
        return att.softmax(dim=-1) @ v

    return {"ours": flash_attention, "sdpa_flash": sdpa_flash, "naive": naive}


def time_passes(fn, q, k, v, causal, cfg):
    """Milliseconds (median, triton.testing.do_bench) of forward, backward and forward+backward."""
    from triton.testing import do_bench

    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    do = torch.randn_like(q)

    def forward():
        return fn(*inputs, causal)

    def forward_backward():
        torch.autograd.grad(forward(), inputs, do)

    o = forward()  # the graph the backward-only timing replays
    ms = {
        "fwd": do_bench(forward, warmup=cfg.warmup_ms, rep=cfg.rep_ms),
        "bwd": do_bench(
            lambda: torch.autograd.grad(o, inputs, do, retain_graph=True),  # noqa: F821 (o is deleted after)
            warmup=cfg.warmup_ms,
            rep=cfg.rep_ms,
        ),
        "fwd+bwd": do_bench(forward_backward, warmup=cfg.warmup_ms, rep=cfg.rep_ms),
    }
    del o
    return ms


def check_against_sdpa(impls, q, k, v, causal):
    """Largest |difference| of our output and gradients to SDPA's (so a fast wrong kernel is caught)."""
    do = torch.randn_like(q)
    results = []
    for name in ("ours", "sdpa_flash"):
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        o = impls[name](*inputs, causal)
        results.append([o, *torch.autograd.grad(o, inputs, do)])
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(*results))


def run_sweep(cfg):
    impls = implementations()
    dtype = getattr(torch, cfg.dtype)
    rows = []
    print(
        f"{'D':>4} {'mode':<6} {'seq':>6} {'pass':<8} | {'ours ms':>8} {'TF/s':>7} | {'sdpa ms':>8} "
        f"{'TF/s':>7} | {'naive ms':>8} {'TF/s':>7} | {'ours/sdpa':>9} {'err':>8}"
    )
    for D in cfg.head_dims:
        H = cfg.model_width // D
        for mode in cfg.modes:
            causal = mode == "causal"
            for T in cfg.seqs:
                g = torch.Generator(device="cuda").manual_seed(0)
                q, k, v = (
                    torch.randn(cfg.batch, H, T, D, device="cuda", dtype=dtype, generator=g) for _ in range(3)
                )
                err = check_against_sdpa(impls, q, k, v, causal)
                naive_gib = 5 * cfg.batch * H * T * T * q.element_size() / 2**30  # scores, probs, grads, mask
                for name, fn in impls.items():
                    if name == "naive" and naive_gib > cfg.naive_max_gib:
                        ms = {p: float("nan") for p in ("fwd", "bwd", "fwd+bwd")}
                    else:
                        ms = time_passes(fn, q, k, v, causal, cfg)
                    for pass_name, t in ms.items():
                        tflops = attention_flops(cfg.batch, H, T, D, causal, pass_name) / (t * 1e-3) / 1e12
                        rows.append(
                            dict(
                                impl=name,
                                head_dim=D,
                                heads=H,
                                mode=mode,
                                seq=T,
                                pass_=pass_name,
                                ms=t,
                                tflops=tflops,
                                max_err_vs_sdpa=err,
                            )
                        )
                print_rows([r for r in rows if r["head_dim"] == D and r["mode"] == mode and r["seq"] == T])
                del q, k, v
                torch.cuda.empty_cache()
    return rows


def print_rows(rows):
    """One line per (shape, pass): ms and TFLOP/s of each implementation and our speed-up over SDPA."""
    by = {(r["impl"], r["pass_"]): r for r in rows}
    for pass_name in ("fwd", "bwd", "fwd+bwd"):
        o, s, n = by[("ours", pass_name)], by[("sdpa_flash", pass_name)], by[("naive", pass_name)]
        print(
            f"{o['head_dim']:>4} {o['mode']:<6} {o['seq']:>6} {pass_name:<8} | {o['ms']:8.3f} {o['tflops']:7.1f} | "
            f"{s['ms']:8.3f} {s['tflops']:7.1f} | {n['ms']:8.3f} {n['tflops']:7.1f} | "
            f"{s['ms'] / o['ms']:8.2f}x {o['max_err_vs_sdpa']:8.1e}",
            flush=True,
        )


def summarize_goal(rows):
    """The issue's goal: at seq >= 4k, forward >= 1.2x SDPA and backward >= 1.0x SDPA."""
    by = {(r["impl"], r["head_dim"], r["mode"], r["seq"], r["pass_"]): r["ms"] for r in rows}
    for pass_name, goal in (("fwd", 1.2), ("bwd", 1.0)):
        ratios = [
            by[("sdpa_flash", D, m, T, p)] / by[("ours", D, m, T, p)]
            for (impl, D, m, T, p) in by
            if impl == "ours" and p == pass_name and T >= 4096
        ]
        if ratios:
            print(
                f"goal {pass_name} >= {goal}x SDPA at seq >= 4k: worst {min(ratios):.2f}x, "
                f"best {max(ratios):.2f}x -> {'met' if min(ratios) >= goal else 'NOT met'}"
            )


def save_plot(rows, path):
    """TFLOP/s against sequence length: one row of panels per (head dim, mask), one column per pass."""
    plt = pyplot()
    groups = sorted({(r["head_dim"], r["mode"]) for r in rows})
    passes = ("fwd", "bwd", "fwd+bwd")
    fig, axes = plt.subplots(len(groups), 3, figsize=(13, 3.2 * len(groups)), squeeze=False)
    for i, (D, mode) in enumerate(groups):
        for j, pass_name in enumerate(passes):
            ax = axes[i][j]
            for impl in ("ours", "sdpa_flash", "naive"):
                pts = sorted(
                    (r["seq"], r["tflops"])
                    for r in rows
                    if r["impl"] == impl
                    and r["head_dim"] == D
                    and r["mode"] == mode
                    and r["pass_"] == pass_name
                    and not math.isnan(r["tflops"])
                )
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=impl)
            ax.set_xscale("log", base=2)
            ax.set_title(f"D={D} {mode} {pass_name}", fontsize=9)
            ax.set_xlabel("sequence length")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(BenchConfig, argv, doc=__doc__)
    check_bench_config(cfg)
    if not torch.cuda.is_available():
        print("bench_attention.py needs a CUDA GPU (none found here); nothing was measured.")
        return
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | batch {cfg.batch}, {cfg.dtype}, "
        f"heads = {cfg.model_width} / D | err = max |ours - SDPA| over o, dq, dk, dv"
    )
    rows = run_sweep(cfg)
    summarize_goal(rows)
    out = Path(cfg.out)
    write_json(
        out / "bench.json", {"config": asdict(cfg), "device": torch.cuda.get_device_name(), "rows": rows}
    )
    save_plot(rows, out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


if __name__ == "__main__":
    run_cli(main)
