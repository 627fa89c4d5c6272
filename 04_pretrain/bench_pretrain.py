"""Training throughput: tokens/s and MFU of one full optimizer step, on the CPU and (if present) a GPU.

    python 04_pretrain/bench_pretrain.py                  # CPU tiny preset; GPU rows when CUDA exists
    python 04_pretrain/bench_pretrain.py --steps 30 --out runs/bench

Each row times forward + backward + clip + our AdamW step on random tokens (data loading excluded:
on the memmap it costs microseconds), after warm-up steps that absorb compilation and autotuning.

- CPU: the `tiny` preset of pretrain.py, fp32 eager (what the 3-minute run uses).
- GPU: GPT-2 124M (vocab 50304, 12 x 768, context 1024), batch 12 x 1024, bf16 autocast:
  eager vs torch.compile, each with our Triton FlashAttention (kernels/attention_backends.py) and with
  PyTorch's SDPA. Reference point: nanoGPT reports ~444k tokens/s (~38 % MFU) compiled on an H100
  for this shape; the goal here is >= 45 % MFU.

MFU = tokens/s x FLOPs per token (03_model flops_per_token: 6N + attention) / peak FLOP/s
(989e12 for H100 bf16 dense; --peak-flops to override). Prints a table, saves bench_pretrain.png
and bench_pretrain.json.

Interview questions it answers:
- What limits MFU for a 124M model? (small matmuls, kernel-launch overhead of many small ops, the
  optimizer's per-tensor loop, attention's memory traffic; compile fuses the elementwise ops and
  removes launch overhead, flash attention removes the T x T score matrix)
"""

import dataclasses
import sys
import time
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import command_line, option, parse_config, run_cli
from common.files import pyplot, read_json, save_figure, write_json
from common.layout import RunLayout
from common.runs import check_artifact, run_lock, write_manifest
from gpt import GPT, GPTConfig, flops_per_token  # 03_model
import gpt as gpt_module  # 03_model

from optimizers import AdamW, clip_grad_norm, param_groups
from pretrain_config import TrainConfig, peak_flops


@dataclasses.dataclass
class BenchConfig:
    data: str = option("", "runs/<name>: take the CPU row's vocab size from its tokens/ (optional)")
    vocab: int = option(2048, "the CPU row's vocab size when --data is not given", min=2)
    steps: int = option(20, "timed GPU steps per row", min=1)
    cpu_steps: int = option(10, "timed CPU steps", min=1)
    peak_flops: float = option(0.0, "GPU peak FLOP/s for MFU (0 = from the GPU name)", min=0.0)
    peak_flops_cpu: float = option(0.0, "CPU peak FLOP/s for an MFU column (0 = none)", min=0.0)
    out: str = option("runs/bench_pretrain", "output folder; each run replaces its table and plot")


def time_steps(model, opt, batch, block, vocab, steps, warmup, device, dtype) -> float:
    """Seconds per optimizer step, averaged over `steps` after `warmup` untimed steps."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, vocab, (batch, block + 1), generator=gen).to(device)
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
    params = list(model.parameters())

    def one_step():
        with autocast:
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def bench_row(name, cfg: GPTConfig, batch, steps, warmup, device, dtype, compile_, peak) -> dict:
    torch.manual_seed(0)
    raw = GPT(cfg).to(device)
    model = torch.compile(raw) if compile_ else raw
    opt = AdamW(param_groups(raw, 0.1), lr=1e-4, betas=(0.9, 0.95), foreach=device.startswith("cuda"))
    sec = time_steps(model, opt, batch, cfg.block_size, cfg.vocab_size, steps, warmup, device, dtype)
    tok_s = batch * cfg.block_size / sec
    mfu = tok_s * flops_per_token(cfg) / peak if peak else None
    row = {
        "name": name,
        "device": device,
        "params_M": raw.num_params(non_embedding=False) / 1e6,
        "batch": batch,
        "block": cfg.block_size,
        "ms_per_step": sec * 1e3,
        "tokens_per_s": tok_s,
        "mfu": mfu,
    }
    print(
        f"{name:<34} {row['params_M']:7.1f}M {batch:4d}x{cfg.block_size:<5d} {row['ms_per_step']:9.1f} "
        f"{tok_s:12,.0f} " + (f"{mfu:6.1%}" if mfu else "     -"),
        flush=True,
    )
    del model, raw, opt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def cpu_rows(c: BenchConfig) -> list:
    """The tiny run's shape (pretrain_config.TrainConfig defaults), fp32 eager."""
    t = TrainConfig()
    vocab = c.vocab
    if c.data:
        tokens = RunLayout(c.data).tokens
        check_artifact(tokens, made_by=RunLayout(c.data).made_by("tokenizer"))
        vocab = read_json(tokens / "meta.json")["vocab_size"]
    cfg = GPTConfig(
        vocab_size=vocab,
        block_size=t.block_size,
        n_layer=t.n_layer,
        n_head=t.n_head,
        n_embd=t.n_embd,
        attn_backend="auto",
        **gpt_module.PRESETS[t.arch],
    )
    return [
        bench_row(
            "cpu tiny preset fp32 eager",
            cfg,
            t.batch_size,
            c.cpu_steps,
            2,
            "cpu",
            torch.float32,
            False,
            c.peak_flops_cpu,
        )
    ]


def gpu_rows(c: BenchConfig) -> list:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops("cuda:0", c.peak_flops)
    rows = []
    for compile_, backend in ((False, "sdpa"), (False, "triton"), (True, "sdpa"), (True, "triton")):
        cfg = GPTConfig(
            vocab_size=50304,
            block_size=1024,
            n_layer=12,
            n_head=12,
            n_embd=768,
            attn_backend=backend,
            **gpt_module.PRESETS["gpt2"],
        )
        label = f"gpt2-124M bf16 {'compiled' if compile_ else 'eager'} {backend}"
        try:
            rows.append(
                bench_row(
                    label, cfg, 12, c.steps, 10 if compile_ else 3, "cuda", torch.bfloat16, compile_, peak
                )
            )
        except Exception as e:  # one failing variant (e.g. no Triton) must not hide the others
            print(f"{label:<34} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return rows


def plot(rows, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    ax.barh([r["name"] for r in rows], [r["tokens_per_s"] for r in rows])
    for i, r in enumerate(rows):
        ax.text(
            r["tokens_per_s"],
            i,
            f" {r['tokens_per_s']:,.0f}" + (f" ({r['mfu']:.0%} MFU)" if r["mfu"] else ""),
            va="center",
            fontsize=8,
        )
    ax.set(xlabel="training tokens/s (higher is better)", title="pretraining throughput")
    save_figure(fig, path)


def main(argv=None):
    c, _ = parse_config(BenchConfig, argv, doc=__doc__)
    out = Path(c.out)
    with run_lock(out):
        print(f"{'variant':<34} {'params':>8} {'batch':>10} {'ms/step':>9} {'tokens/s':>12} {'MFU':>6}")
        rows = cpu_rows(c)
        if torch.cuda.is_available():
            rows += gpu_rows(c)
        else:
            print("no CUDA device: skipping the GPU rows (GPT-2 124M bf16, eager/compiled x Triton/SDPA)")
        write_json(
            out / "bench_pretrain.json",
            {
                "rows": rows,
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
        )
        plot(rows, out / "bench_pretrain.png")
        write_manifest(
            out,
            stage="04_bench_pretrain",
            command=command_line(__file__, argv),
            config=dataclasses.asdict(c),
            inputs=[RunLayout(c.data).tokens] if c.data else [],
        )
    print(f"wrote {out}/bench_pretrain.json and bench_pretrain.png")


if __name__ == "__main__":
    run_cli(main)
