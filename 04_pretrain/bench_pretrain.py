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
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "01_data"), str(REPO / "03_model")]
from common import run_cli, write_json, save_figure  # 01_data
from gpt import GPT, GPTConfig, flops_per_token  # 03_model
import gpt as gpt_module  # 03_model

from optimizers import AdamW, clip_grad_norm, param_groups
from pretrain import PEAK_FLOPS, PRESETS


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
    row = {"name": name, "device": device, "params_M": raw.num_params(non_embedding=False) / 1e6,
           "batch": batch, "block": cfg.block_size, "ms_per_step": sec * 1e3, "tokens_per_s": tok_s, "mfu": mfu}
    print(f"{name:<34} {row['params_M']:7.1f}M {batch:4d}x{cfg.block_size:<5d} {row['ms_per_step']:9.1f} "
          f"{tok_s:12,.0f} " + (f"{mfu:6.1%}" if mfu else "     -"), flush=True)
    del model, raw, opt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def cpu_rows(args) -> list:
    p = PRESETS["tiny"]
    vocab = args.vocab
    if args.data:
        vocab = json.loads((Path(args.data) / "tokens" / "meta.json").read_text())["vocab_size"]
    cfg = GPTConfig(vocab_size=vocab, block_size=p["block_size"], n_layer=p["n_layer"], n_head=p["n_head"],
                    n_embd=p["n_embd"], attn_backend="auto", **gpt_module.PRESETS["llama"])
    return [bench_row(f"cpu tiny preset fp32 eager", cfg, p["batch_size"], args.cpu_steps, 2, "cpu",
                      torch.float32, False, args.peak_flops_cpu)]


def gpu_rows(args) -> list:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = args.peak_flops or next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)
    rows = []
    for compile_, backend in ((False, "sdpa"), (False, "triton"), (True, "sdpa"), (True, "triton")):
        cfg = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                        attn_backend=backend, **gpt_module.PRESETS["gpt2"])
        label = f"gpt2-124M bf16 {'compiled' if compile_ else 'eager'} {backend}"
        try:
            rows.append(bench_row(label, cfg, 12, args.steps, 10 if compile_ else 3, "cuda", torch.bfloat16,
                                  compile_, peak))
        except Exception as e:  # one failing variant (e.g. no Triton) must not hide the others
            print(f"{label:<34} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return rows


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    ax.barh([r["name"] for r in rows], [r["tokens_per_s"] for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["tokens_per_s"], i, f" {r['tokens_per_s']:,.0f}" + (f" ({r['mfu']:.0%} MFU)" if r["mfu"] else ""),
                va="center", fontsize=8)
    ax.set(xlabel="training tokens/s (higher is better)", title="pretraining throughput")
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="", help="runs/<name>: take the CPU row's vocab size from its tokens/")
    p.add_argument("--vocab", type=int, default=2048, help="CPU row's vocab size when --data is not given")
    p.add_argument("--steps", type=int, default=20, help="timed GPU steps per row")
    p.add_argument("--cpu-steps", type=int, default=10, help="timed CPU steps")
    p.add_argument("--peak-flops", type=float, default=0.0, help="GPU peak FLOP/s; 0 = from the GPU name")
    p.add_argument("--peak-flops-cpu", type=float, default=0.0, help="CPU peak FLOP/s for an MFU column (0 = none)")
    p.add_argument("--out", default="runs/bench_pretrain")
    args = p.parse_args(argv)
    print(f"{'variant':<34} {'params':>8} {'batch':>10} {'ms/step':>9} {'tokens/s':>12} {'MFU':>6}")
    rows = cpu_rows(args)
    if torch.cuda.is_available():
        rows += gpu_rows(args)
    else:
        print("no CUDA device: skipping the GPU rows (GPT-2 124M bf16, eager/compiled x Triton/SDPA)")
    out = Path(args.out)
    write_json(out / "bench_pretrain.json", {"rows": rows, "torch": torch.__version__,
                                             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})
    plot(rows, out / "bench_pretrain.png")
    print(f"wrote {out}/bench_pretrain.json and bench_pretrain.png")


if __name__ == "__main__":
    run_cli(main)
