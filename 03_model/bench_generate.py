"""How much the KV cache buys: generation speed with and without it, and the cache size GQA saves.

Without a cache, step t runs the whole model over all t tokens again, so producing n tokens costs
O(n²) token-passes; with the cache each step runs one token through the model and attends to the
stored keys and values: O(n) token-passes. The table shows the gap growing with the length.

    python 03_model/bench_generate.py                      # a small random model on the CPU
    python 03_model/bench_generate.py --lengths 64,256,1024 --n-layer 8 --n-embd 512 --device cuda

Prints a table and saves runs/bench/generate.png and generate.json (pass --out to change them).
Timings are of the machine it runs on; on a shared CPU they are noisy.
"""

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from common.devices import resolve_device, set_threads
from decoding import generate
from gpt import GPT, GPTConfig  # 03_model
from model_memory import kv_cache_bytes  # 03_model


@dataclass
class BenchConfig:
    lengths: list[int] = option([32, 64, 128, 256], "new tokens per run, comma-separated", sep=",")
    batch_size: int = option(4, "prompts generated together", min=1)
    prompt_len: int = option(16, "tokens per prompt", min=1)
    n_layer: int = option(4, "model layers", min=1)
    n_head: int = option(8, "query heads", min=1)
    n_kv_head: int = option(2, "key/value heads (GQA); a divisor of --n-head", min=1)
    n_embd: int = option(256, "model width", min=1)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int = option(0, "torch CPU threads; 0 = torch's default", min=0)
    out: str = option("runs/bench/generate.png", "plot path; the table goes beside it as .json")


def tokens_per_second(model, idx, n_new, use_cache):
    if idx.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(model, idx, n_new, temperature=0, use_cache=use_cache)
    if idx.is_cuda:
        torch.cuda.synchronize()
    return (out.shape[1] - idx.shape[1]) * idx.shape[0] / (time.perf_counter() - t0)


def save_plot(path, rows):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["new_tokens"] for r in rows], [r["cached_tok_s"] for r in rows], "o-", label="KV cache")
    ax.plot(
        [r["new_tokens"] for r in rows],
        [r["no_cache_tok_s"] for r in rows],
        "o-",
        label="recompute everything",
    )
    ax.set(
        xlabel="new tokens",
        ylabel="tokens / s",
        xscale="log",
        yscale="log",
        title="generation speed with and without the KV cache",
    )
    ax.legend()
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(BenchConfig, argv, doc=__doc__)
    if not cfg.lengths or min(cfg.lengths) < 1:
        raise UserError(f"--lengths {cfg.lengths}: give one or more positive token counts, e.g. 32,64,128")
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)  # pins decoding too (common/devices.py)
    mcfg = GPTConfig(
        vocab_size=512,
        block_size=cfg.prompt_len + max(cfg.lengths),
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_kv_head=cfg.n_kv_head,
        n_embd=cfg.n_embd,
    )  # UserError if they misfit
    mha = GPTConfig(**{**asdict(mcfg), "n_kv_head": mcfg.n_head})
    torch.manual_seed(0)
    model = GPT(mcfg).to(device).eval()
    idx = torch.randint(0, 512, (cfg.batch_size, cfg.prompt_len), device=device)
    tokens_per_second(model, idx, 4, True)  # warm-up

    rows = []
    print(
        f"model: {model.num_params():,} params, {mcfg.n_layer} layers, {mcfg.n_head} query / "
        f"{mcfg.n_kv_head} kv heads; batch {cfg.batch_size}, prompt {cfg.prompt_len}, {device}"
    )
    print(
        f"{'new tokens':>10} {'cached tok/s':>13} {'no-cache tok/s':>15} {'speedup':>8} "
        f"{'cache MiB (bf16)':>17} {'as MHA':>8}"
    )
    for n in cfg.lengths:
        cached = tokens_per_second(model, idx, n, True)
        full = tokens_per_second(model, idx, n, False)
        total = cfg.prompt_len + n
        rows.append(
            {
                "new_tokens": n,
                "cached_tok_s": cached,
                "no_cache_tok_s": full,
                "cache_mib_bf16": kv_cache_bytes(mcfg, cfg.batch_size, total) / 2**20,
                "cache_mib_bf16_mha": kv_cache_bytes(mha, cfg.batch_size, total) / 2**20,
            }
        )
        r = rows[-1]
        print(
            f"{n:>10} {cached:>13.0f} {full:>15.0f} {cached / full:>7.1f}x "
            f"{r['cache_mib_bf16']:>17.2f} {r['cache_mib_bf16_mha']:>8.2f}"
        )
    out = Path(cfg.out)
    write_json(out.with_suffix(".json"), {"config": asdict(cfg), "device": device, "rows": rows})
    save_plot(out, rows)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    run_cli(main)
