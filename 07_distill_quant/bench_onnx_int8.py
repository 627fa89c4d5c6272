"""Benchmark: ONNX Runtime's INT8 (dynamic quantization of export_onnx.py's graph) beside 07's own INT8.

    python 07_distill_quant/bench_onnx_int8.py --run runs/tiny        # pretrain/best.pt on its test windows
    python 07_distill_quant/bench_onnx_int8.py                         # a random llama-style model (speed only)

Four ways to run the same model, on the same CPU, at batch 1 and 1 thread:

    pytorch fp32       03's GPT in eager mode, 03's KV cache (decoding.KVCache)
    pytorch int8       07's QuantLinear (quant_linear.py, format int8): int8 weights, one scale per output
                       channel, activations float; the reference path dequantizes on every call
    onnxruntime fp32   export_onnx.py's graph with the KV cache as inputs and outputs
    onnxruntime int8   the same graph through onnxruntime.quantization.quantize_dynamic: every MatMul with a
                       constant weight becomes MatMulInteger on int8 weights (per-tensor scale) and uint8
                       activations quantized per call from their min/max (the "dynamic" part); the int32 sum
                       is rescaled to float

and per contender: the loss (nats/token) on --windows test windows of the run (teacher-forced through the
KV cache for the ONNX graphs, which return the last token's logits: one call per position, all windows in
one batch), the change from pytorch fp32 paired over windows with a bootstrap interval, the share of
positions where the top-1 token agrees with pytorch fp32, the largest |logit difference|, the weights' bytes
on disk or in memory, and greedy tokens/s (a --prompt-len prompt, --new-tokens tokens; interleaved rounds,
the best of --repeats). Prints the table, writes bench_onnx_int8.json and .png into --out.

Needs onnx, onnxscript and onnxruntime (requirements-export.txt).

Interview questions it answers:
- What is dynamic quantization? (weights quantized once, offline; activations quantized at run time from
  each tensor's own range, so no calibration data is needed; static quantization fixes the activation
  scales from calibration data and saves that work per call)
- Why can INT8 be slower than fp32 on a tiny model? (the matmuls are too small for int8 kernels to win;
  quantizing and dequantizing activations adds operators; on a large model the weight traffic dominates
  and INT8 reads 4x fewer bytes)
- Why does per-tensor weight scaling lose more than per-channel? (one outlier row sets the step for every
  row; 07's INT8 scales each output channel by its own max)
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain"), str(REPO / "kernels")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json

from onnx_graph import random_model
from onnx_int8 import contenders, measure, run_model_and_windows, speeds


@dataclass
class BenchConfig:
    run: str = option("", "run folder: its pretrain/best.pt on tokens/test.bin; empty = a random demo model")
    out: str = option("runs/bench_onnx_int8", "folder for the ONNX files, the JSON and the plot")
    windows: int = option(16, "test windows for the loss and the logit agreement", min=1)
    prompt_len: int = option(16, "prompt tokens of the speed test", min=1)
    new_tokens: int = option(64, "greedy tokens per speed run", min=1)
    repeats: int = option(5, "interleaved speed rounds; the best is reported", min=1)


def load_model_and_windows(cfg: BenchConfig):
    """(model, windows (n, T+1) int64, what): the run's best.pt and consecutive test windows, or the
    demo model and random tokens (then the loss means nothing; the agreement and the speed still do)."""
    if cfg.run:
        return run_model_and_windows(cfg.run, cfg.windows)
    model = random_model("llama")
    g = torch.Generator().manual_seed(0)
    T = min(64, model.cfg.block_size - 1)
    return model, torch.randint(0, model.cfg.vocab_size, (cfg.windows, T + 1), generator=g), "random tokens"


def plot(rows: dict, path: Path):
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(rows)
    a1.barh(names, [rows[n]["tokens_per_s"] for n in names])
    a1.set(xlabel="greedy tokens/s (B = 1, 1 thread)")
    a2.barh(names, [rows[n]["loss"] for n in names])
    a2.set(xlabel="test loss (nats/token)", xlim=(min(r["loss"] for r in rows.values()) * 0.98, None))
    a1.invert_yaxis()
    a2.invert_yaxis()
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(BenchConfig, argv, doc=__doc__)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("this benchmark needs onnxruntime; pip install -r requirements-export.txt") from None
    torch.set_num_threads(1)
    out = Path(cfg.out)
    model, windows, what = load_model_and_windows(cfg)
    if cfg.prompt_len + cfg.new_tokens > model.cfg.block_size:
        raise UserError(
            f"--prompt-len + --new-tokens exceed the model's context {model.cfg.block_size}; lower them"
        )
    runners = contenders(model, out)
    rows = measure(runners, model.cfg, windows)
    prompt = windows[0, : cfg.prompt_len].tolist()
    for name, s in speeds(runners, model.cfg, prompt, cfg.new_tokens, cfg.repeats).items():
        rows[name].update(s)
    load = os.getloadavg()[0]
    print(
        f"{what}; B = 1, 1 thread, {cfg.new_tokens} greedy tokens, best of {cfg.repeats}; load average {load:.1f}"
    )
    print(f"{'runtime':<38}{'loss':>7}{'change [95 % interval]':>30}{'top-1 agree':>12}{'max|dlogit|':>12}"
          f"{'weights MB':>11}{'tokens/s':>10}{'same tokens':>12}")  # fmt: skip
    for name, r in rows.items():
        lo, hi = r["loss_change_interval"]
        change = f"{r['loss_change']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        print(f"{name:<38}{r['loss']:>7.4f}{change:>30}{r['top1_agree']:>12.3f}{r['max_abs_logit_diff']:>12.2e}"
              f"{r['weight_bytes'] / 1e6:>11.2f}{r['tokens_per_s']:>10.1f}{str(r['greedy_equal']):>12}")  # fmt: skip
    write_json(out / "bench_onnx_int8.json", {"data": what, "load_average": load, "rows": rows})
    plot(rows, out / "bench_onnx_int8.png")
    return rows


if __name__ == "__main__":
    run_cli(main)
