"""Benchmark: end-to-end decode speed of a GPT-2-sized model with QuantLinear (INT8 / INT4) vs bf16, on a GPU.

    python 07_distill_quant/bench_quant_decode.py                     # GPU: gpt2 (124M) and gpt2-xl (1.5B)
    python 07_distill_quant/bench_quant_decode.py --sizes gpt2 --batches 1 --formats int4-g128
    python 07_distill_quant/bench_quant_decode.py --device cpu        # a tiny CPU comparison of the reference path

For each size (random weights: speed does not depend on their values), format and batch size: a prompt of
--prompt-len tokens, then --new-tokens greedy tokens with 03's decoding.generate (KV cache). The quantized models are
the bf16 model with every linear layer, the LM head included, swapped for a QuantLinear (quantize.py, round to
nearest), which calls kernels/quant_matmul.py's Triton kernels. Printed and saved (bench_quant_decode.json for
.ci/gpu's report, .png) per row:
    ms/token       wall-clock time per generated token (median of --repeats runs; the first runs autotune)
    tok/s          batch × new tokens / time
    × bf16         bf16 time / this time
    GPU ms/token   the summed duration of the GPU kernels per token (torch.profiler): the time a decode
                   step would take with the CPU's launch overhead gone (CUDA graphs, torch.compile)
    weight MiB     bytes of the model's weights, what a decode step reads once per token

What to expect. A decode step reads every weight once and does 2 FLOPs per weight per sequence, so on a GPU the
kernels are memory-bound and their time scales with weight bytes: INT4-g128 reads ~3.9× fewer than bf16.
But in PyTorch's eager mode each of the ~10 small kernels per layer also costs the CPU ~5-40 µs to launch, and
for models of GPT-2 size reading the weights takes less time than that: gpt2's 250 MB of bf16 weights take
~75 µs at 3.35 TB/s, against a few ms of launches per token. The wall-clock column then measures Python and
launches (a Triton launch costs more CPU than a cuBLAS one, so the quantized model can even be slower); the GPU
column shows what the kernels save. kernels/bench_quant_matmul.py times the matmuls alone.
On a CPU (--device cpu) QuantLinear runs the readable reference, which dequantizes each weight on every call:
slower than float, and it says nothing about GPU speed. Without --device cpu and without a GPU it prints one
line and exits 0.

Interview questions it answers:
- Why is LLM decoding memory-bound? (each token multiplies every weight once: ~2 FLOPs per 2 bytes of bf16
  weight, far below a GPU's ~300 FLOPs/byte balance point)
- Why may weight-only quantization not speed up a small model end to end? (launch overhead, not weight
  traffic, sets its decode time; CUDA graphs or compilation remove it first)
- Why quantize the LM head here but not in quantize.py? (for speed it is 31% of gpt2's weights; for accuracy
  it shares its matrix with the embedding and its logits are sensitive, so quantize.py leaves it float)
"""

import copy
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "05_sft_lora")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import markdown_table, pyplot, save_figure, write_json
from common.devices import resolve_device
from decoding import generate  # 03_model
from gpt import PRESETS, GPT, GPTConfig  # 03_model
from lora import DEFAULT_TARGETS  # 05_sft_lora

from quant_linear import model_bytes, parse_format, quantize_model  # 07_distill_quant (this folder)

SIZES = {  # GPT-2's published shapes (n_layer, n_head, n_embd, vocab); tiny is for the CPU comparison
    "tiny": (4, 4, 128, 512),
    "gpt2": (12, 12, 768, 50257),
    "gpt2-medium": (24, 16, 1024, 50257),
    "gpt2-large": (36, 20, 1280, 50257),
    "gpt2-xl": (48, 25, 1600, 50257),
}


@dataclass
class BenchConfig:
    sizes: list = option(
        [], "models from " + ", ".join(SIZES) + " (empty = gpt2,gpt2-xl on a GPU, tiny on a CPU)", sep=","
    )
    formats: list = option(
        ["int8", "int4-g128", "int4-g32"], "quantized formats (quantize.py names)", sep=","
    )
    batches: list = option([1, 16], "sequences decoded together", sep=",")
    prompt_len: int = option(32, "prompt tokens", min=1)
    new_tokens: int = option(64, "generated tokens per run", min=1)
    repeats: int = option(3, "timed runs per row (the median is kept), after one warm-up run", min=1)
    lm_head: bool = option(True, "quantize the LM head too (31% of gpt2's weights)")
    device: str = option("auto", "auto (a GPU if there is one, else print one line and exit), cuda, or cpu")
    out: str = option("runs/bench_quant_decode", "folder for bench_quant_decode.json and .png")


def check_bench_config(cfg):
    unknown = [s for s in cfg.sizes if s not in SIZES]
    if unknown:
        raise UserError(f"--sizes: unknown {unknown[0]!r}; choose from {', '.join(SIZES)}")
    for name in cfg.formats:
        if parse_format(name).bits == 0:
            raise UserError(f"--formats {name}: list integer formats; the float baseline is always measured")
    if not cfg.batches or min(cfg.batches) < 1:
        raise UserError("--batches: give batch sizes of at least 1, e.g. 1,16")


def make_model(size, block_size, dtype, device):
    n_layer, n_head, n_embd, vocab = SIZES[size]
    cfg = GPTConfig(
        vocab_size=vocab,
        block_size=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        **PRESETS["gpt2"],
    )
    with torch.device(device):  # initialize on the GPU: a 1.5B model in seconds
        model = GPT(cfg)
    return model.to(dtype).eval()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def ms_per_token(model, prompt, n_new, repeats, device):
    """Median wall-clock ms per generated token over `repeats` runs (after one warm-up run)."""
    generate(model, prompt, n_new, temperature=0)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        generate(model, prompt, n_new, temperature=0)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times) / n_new


@torch.no_grad()
def gpu_ms_per_token(model, prompt, n_new):
    """Summed GPU kernel time per generated token of one run (torch.profiler), or None if it cannot be read."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            generate(model, prompt, n_new, temperature=0)
            torch.cuda.synchronize()
        total_us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())
    except Exception as e:  # a profiler that cannot run here (no CUPTI): the wall-clock numbers still stand
        print(f"(GPU kernel time not measured: {type(e).__name__}: {str(e)[:80]})")
        return None
    return total_us / 1e3 / n_new if total_us else None


def bench_size(size, cfg, dtype, device):
    """Rows for one model size: the float baseline and every format, at every batch size."""
    model = make_model(size, cfg.prompt_len + cfg.new_tokens, dtype, device)
    targets = DEFAULT_TARGETS + (["lm_head"] if cfg.lm_head else [])
    variants = {str(dtype).removeprefix("torch."): model}
    for name in cfg.formats:
        variants[name] = copy.deepcopy(model)
        quantize_model(variants[name], parse_format(name), targets)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in cfg.batches:
        prompt = torch.randint(0, model.cfg.vocab_size, (batch, cfg.prompt_len), generator=g).to(device)
        base_ms = None
        for name, m in variants.items():
            ms = ms_per_token(m, prompt, cfg.new_tokens, cfg.repeats, device)
            base_ms = base_ms or ms
            gpu_ms = gpu_ms_per_token(m, prompt, cfg.new_tokens) if device.startswith("cuda") else None
            rows.append(
                dict(
                    model=size,
                    params_m=round(model.num_params(non_embedding=False) / 1e6, 1),
                    format=name,
                    batch=batch,
                    ms_per_token=ms,
                    tok_s=batch * 1e3 / ms,
                    vs_float=base_ms / ms,
                    gpu_ms_per_token=gpu_ms,
                    weight_mib=model_bytes(m) / 2**20,
                )
            )
            print(f"  {size} {name} batch {batch}: {ms:.3f} ms/token", flush=True)
    return rows


def bench_table(rows, float_name) -> str:
    f = lambda v, spec: "-" if v is None else format(v, spec)
    return markdown_table(
        [
            {
                "model": r["model"],
                "params M": r["params_m"],
                "format": r["format"],
                "batch": r["batch"],
                "ms/token": f(r["ms_per_token"], ".3f"),
                "tok/s": f(r["tok_s"], ".0f"),
                f"x {float_name}": f(r["vs_float"], ".2f"),
                "GPU ms/token": f(r["gpu_ms_per_token"], ".3f"),
                "weight MiB": f(r["weight_mib"], ".2f"),
            }
            for r in rows
        ],
        [
            "model",
            "params M",
            "format",
            "batch",
            "ms/token",
            "tok/s",
            f"x {float_name}",
            "GPU ms/token",
            "weight MiB",
        ],
    )


def summary_lines(rows, float_name):
    """One line per (model, batch, format): × float by wall clock and by GPU kernel time."""
    lines = []
    for r in rows:
        if r["format"] == float_name:
            continue
        base = next(
            b
            for b in rows
            if b["model"] == r["model"] and b["batch"] == r["batch"] and b["format"] == float_name
        )
        gpu = (
            f", GPU kernel time {base['gpu_ms_per_token'] / r['gpu_ms_per_token']:.2f}x"
            if r["gpu_ms_per_token"] and base["gpu_ms_per_token"]
            else ""
        )
        lines.append(
            f"{r['model']} batch {r['batch']} {r['format']}: wall clock {r['vs_float']:.2f}x {float_name}{gpu}"
        )
    return lines


def save_plot(rows, path, float_name):
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, size in zip(axes[0], models):
        names = list(dict.fromkeys(r["format"] for r in rows if r["model"] == size))
        batches = list(dict.fromkeys(r["batch"] for r in rows if r["model"] == size))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            tok_s = [
                next(
                    r["tok_s"] for r in rows if r["model"] == size and r["batch"] == b and r["format"] == name
                )
                for b in batches
            ]
            ax.bar(
                [j + (i - (len(names) - 1) / 2) * width for j in range(len(batches))],
                tok_s,
                width,
                label=name,
            )
        ax.set(
            xticks=range(len(batches)),
            xticklabels=[f"batch {b}" for b in batches],
            ylabel="tokens / s",
            title=f"{size}: decode speed vs {float_name} (wall clock)",
        )
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(BenchConfig, argv, doc=__doc__)
    check_bench_config(cfg)
    if cfg.device == "auto" and not torch.cuda.is_available():
        print(
            "bench_quant_decode.py: no CUDA GPU here, nothing was measured (--device cpu runs a tiny CPU "
            "comparison of the reference path)"
        )
        return
    device = resolve_device(cfg.device)
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32  # the Triton interpreter cannot do bf16
    sizes = cfg.sizes or (["gpt2", "gpt2-xl"] if on_gpu else ["tiny"])
    float_name = str(dtype).removeprefix("torch.")
    where = (
        torch.cuda.get_device_name(device)
        if on_gpu
        else "CPU: QuantLinear runs the dequantize-then-matmul "
        "reference, not the kernel; says nothing of GPU speed"
    )
    print(
        f"{where} | torch {torch.__version__} | prompt {cfg.prompt_len}, {cfg.new_tokens} new tokens, greedy, "
        f"median of {cfg.repeats}" + ("; the warm-up run autotunes" if on_gpu else "")
    )
    rows = [r for size in sizes for r in bench_size(size, cfg, dtype, device)]
    print(bench_table(rows, float_name))
    lines = summary_lines(rows, float_name)
    for line in lines:
        print(line)
    out = Path(cfg.out)
    write_json(
        out / "bench_quant_decode.json",
        {"config": asdict(cfg), "device": where, "torch": torch.__version__, "goals": lines, "rows": rows},
    )
    save_plot(rows, out / "bench_quant_decode.png", float_name)
    print(f"wrote {out / 'bench_quant_decode.json'} and {out / 'bench_quant_decode.png'}")


if __name__ == "__main__":
    run_cli(main)
