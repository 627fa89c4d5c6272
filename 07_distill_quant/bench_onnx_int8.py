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

import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain"), str(REPO / "kernels")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from common.layout import RunLayout
from common.runs import check_artifact
from common.stats import paired_bootstrap_interval
from gpt import GPT  # 03_model
from batches import load_shards, load_test_shard  # 04_pretrain

from export_onnx import (
    OnnxConfig,
    demo_model,
    eager_greedy,
    empty_cache,
    export_onnx,
    onnx_greedy,
    onnx_session,
)
from quant_linear import model_bytes, parse_format, quantize_model


@dataclass
class BenchConfig:
    run: str = option("", "run folder: its pretrain/best.pt on tokens/test.bin; empty = a random demo model")
    out: str = option("runs/bench_onnx_int8", "folder for the ONNX files, the JSON and the plot")
    windows: int = option(16, "test windows for the loss and the logit agreement", min=1)
    prompt_len: int = option(16, "prompt tokens of the speed test", min=1)
    new_tokens: int = option(64, "greedy tokens per speed run", min=1)
    repeats: int = option(5, "interleaved speed rounds; the best is reported", min=1)


def load_model_and_windows(cfg: BenchConfig):
    """(model, windows (n, T+1) int64): the run's best.pt and consecutive test windows, or the demo
    model and random tokens (then the loss means nothing; the agreement and the speed still do)."""
    if not cfg.run:
        model = demo_model(OnnxConfig(preset_model="llama"))
        g = torch.Generator().manual_seed(0)
        T = min(64, model.cfg.block_size - 1)
        return (
            model,
            torch.randint(0, model.cfg.vocab_size, (cfg.windows, T + 1), generator=g),
            "random tokens",
        )
    layout = RunLayout(cfg.run)
    check_artifact(layout.pretrain, made_by=layout.made_by("pretrain"))
    ckpt = layout.pretrain / ("best.pt" if (layout.pretrain / "best.pt").is_file() else "ckpt.pt")
    model = GPT.from_checkpoint(ckpt).eval()
    T = model.cfg.block_size
    _, _, meta = load_shards(Path(cfg.run), T)
    test = load_test_shard(Path(cfg.run), meta)
    if test is None or len(test) < T + 1:
        raise UserError(f"{cfg.run}/tokens has no usable test.bin; rerun `{layout.made_by('tokens')}`")
    starts = np.arange(0, len(test) - T - 1, T)[: cfg.windows]
    windows = torch.from_numpy(np.stack([np.asarray(test[s : s + T + 1], dtype=np.int64) for s in starts]))
    return model, windows, f"{len(starts)} test windows of {T} tokens"


@torch.no_grad()
def eager_logits(model, windows) -> torch.Tensor:
    """(n, T, V) logits of every position of every window, one forward."""
    return model(windows[:, :-1])[0].float()


def onnx_logits(session, cfg, windows) -> torch.Tensor:
    """(n, T, V) the same through the graph: one call per position, all windows as one batch, the KV
    cache fed back each time (the graph returns only the newest token's logits)."""
    k, v = (t.numpy() for t in empty_cache(cfg, batch=len(windows)))
    out = []
    for t in range(windows.shape[1] - 1):
        logits, k, v = session.run(None, {"idx": windows[:, t : t + 1].numpy(), "past_k": k, "past_v": v})
        out.append(torch.from_numpy(logits))
    return torch.stack(out, dim=1)


def window_losses(logits, windows) -> np.ndarray:
    """Mean nats/token per window."""
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="none")
    return nll.view(len(windows), -1).mean(1).double().numpy()


def onnx_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))  # + its external .data


def contenders(model, out: Path) -> dict:
    """name -> (kind, runner): the four ways, built once."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path = export_onnx(model, out / "model.onnx")
    int8_path = out / "model_int8.onnx"
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    q8 = copy.deepcopy(model)
    quantize_model(q8, parse_format("int8"))
    return {
        "pytorch fp32": ("eager", model.eval(), model_bytes(model)),
        "pytorch int8 (07 QuantLinear)": ("eager", q8.eval(), model_bytes(q8)),
        "onnxruntime fp32": ("onnx", onnx_session(fp32_path), onnx_bytes(fp32_path)),
        "onnxruntime int8 (quantize_dynamic)": ("onnx", onnx_session(int8_path), onnx_bytes(int8_path)),
    }


def measure(runners: dict, cfg_model, windows) -> dict:
    """Loss, change from pytorch fp32 with its interval, top-1 agreement and max |logit diff| per runner."""
    logits = {
        name: eager_logits(r, windows) if kind == "eager" else onnx_logits(r, cfg_model, windows)
        for name, (kind, r, _) in runners.items()
    }
    ref = logits["pytorch fp32"]
    ref_loss = window_losses(ref, windows)
    rows = {}
    for name, lg in logits.items():
        loss = window_losses(lg, windows)
        rows[name] = {
            "loss": float(loss.mean()),
            "loss_change": float((loss - ref_loss).mean()),
            "loss_change_interval": list(paired_bootstrap_interval(loss, ref_loss)),
            "top1_agree": float((lg.argmax(-1) == ref.argmax(-1)).float().mean()),
            "max_abs_logit_diff": float((lg - ref).abs().max()),
            "weight_bytes": runners[name][2],
        }
    return rows


def speeds(runners: dict, cfg_model, prompt: list, n_new: int, repeats: int) -> dict:
    """Greedy tokens/s of each runner, best of `repeats` interleaved rounds; and whether each runner's
    tokens equal pytorch fp32's."""
    times, tokens = {n: [] for n in runners}, {}
    for _ in range(repeats):  # interleaved: a load spike hits every contender
        for name, (kind, r, _) in runners.items():
            t0 = time.perf_counter()
            tokens[name] = (
                eager_greedy(r, prompt, n_new)
                if kind == "eager"
                else onnx_greedy(r, cfg_model, prompt, n_new)
            )
            times[name].append(time.perf_counter() - t0)
    ref = tokens["pytorch fp32"]
    return {n: {"tokens_per_s": n_new / min(ts), "greedy_equal": tokens[n] == ref} for n, ts in times.items()}


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
