"""How much the KV cache buys: generation speed with and without it, and the cache size GQA saves.

Without a cache, step t runs the whole model over all t tokens again, so producing n tokens costs
O(n²) token-passes; with the cache each step runs one token through the model and attends to the
stored keys and values: O(n) token-passes. The table shows the gap growing with the length.

    python 03_model/bench_generate.py                      # a small random model on the CPU
    python 03_model/bench_generate.py --lengths 64,256,1024 --n-layer 8 --n-embd 512 --device cuda

Prints a table and saves runs/bench/generate.png (pass --out to change it). Timings are of the
machine it runs on; on a shared CPU they are noisy.
"""
import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "01_data")]
from common import UserError, run_cli, save_figure  # 01_data
from gpt import GPT, GPTConfig  # 03_model (this folder)


@dataclass
class BenchConfig:
    lengths: str = "32,64,128,256"   # new tokens per run
    batch_size: int = 4
    prompt_len: int = 16
    n_layer: int = 4
    n_head: int = 8
    n_kv_head: int = 2
    n_embd: int = 256
    device: str = "cpu"
    threads: int = 0                 # torch CPU threads; 0 = torch's default
    out: str = "runs/bench/generate.png"


def tokens_per_second(model, idx, n_new, use_cache):
    if idx.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(idx, n_new, temperature=0, use_cache=use_cache)
    if idx.is_cuda:
        torch.cuda.synchronize()
    return (out.shape[1] - idx.shape[1]) * idx.shape[0] / (time.perf_counter() - t0)


def kv_cache_mib(cfg: GPTConfig, batch, length, bytes_per_value=2):
    """2 (k and v) · layers · kv heads · head dim · tokens · batch values."""
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * length * batch * bytes_per_value / 2**20


def save_plot(path, lengths, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lengths, [r[1] for r in rows], "o-", label="KV cache")
    ax.plot(lengths, [r[2] for r in rows], "o-", label="recompute everything")
    ax.set(xlabel="new tokens", ylabel="tokens / s", xscale="log", yscale="log",
           title="generation speed with and without the KV cache")
    ax.legend()
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description="Generation tokens/s with and without the KV cache.")
    for name, default in vars(BenchConfig()).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    cfg = BenchConfig(**vars(p.parse_args(argv)))
    try:
        lengths = [int(x) for x in cfg.lengths.split(",")]
    except ValueError:
        raise UserError(f"--lengths {cfg.lengths!r}: expected comma-separated integers, e.g. 32,64,128") from None
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no GPU is visible; use --device cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    mcfg = GPTConfig(vocab_size=512, block_size=cfg.prompt_len + max(lengths), n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, n_embd=cfg.n_embd)
    torch.manual_seed(0)
    model = GPT(mcfg).to(cfg.device).eval()
    idx = torch.randint(0, 512, (cfg.batch_size, cfg.prompt_len), device=cfg.device)
    tokens_per_second(model, idx, 4, True)  # warm-up

    rows = []
    print(f"model: {model.num_params():,} params, {mcfg.n_layer} layers, {mcfg.n_head} query / "
          f"{mcfg.n_kv_head} kv heads; batch {cfg.batch_size}, prompt {cfg.prompt_len}, {cfg.device}")
    print(f"{'new tokens':>10} {'cached tok/s':>13} {'no-cache tok/s':>15} {'speedup':>8} "
          f"{'cache MiB (bf16)':>17} {'as MHA':>8}")
    for n in lengths:
        cached = tokens_per_second(model, idx, n, True)
        full = tokens_per_second(model, idx, n, False)
        total = cfg.prompt_len + n
        mha = kv_cache_mib(GPTConfig(**{**vars(mcfg), "n_kv_head": mcfg.n_head}), cfg.batch_size, total)
        rows.append((n, cached, full))
        print(f"{n:>10} {cached:>13.0f} {full:>15.0f} {cached / full:>7.1f}x "
              f"{kv_cache_mib(mcfg, cfg.batch_size, total):>17.2f} {mha:>8.2f}")
    save_plot(cfg.out, lengths, rows)
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    run_cli(main)
