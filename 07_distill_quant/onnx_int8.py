"""ONNX Runtime's INT8 (dynamic quantization of onnx_graph.py's graph) beside 07's own INT8, measured on
the same windows: the library of bench_onnx_int8.py (the benchmark) and export_roundtrip.py (the
`export` stage).

    runners = contenders(model, Path("runs/tiny/onnx"))   # pytorch fp32/int8, onnxruntime fp32/int8
    rows = measure(runners, model.cfg, windows)            # loss, change vs fp32 [interval], top-1, max |Δ|
    speeds(runners, model.cfg, prompt, 64, repeats=5)      # greedy tokens/s, interleaved, best of 5

Dynamic quantization (`onnxruntime.quantization.quantize_dynamic`): every MatMul with a constant weight
becomes MatMulInteger on int8 weights (one scale per tensor) and uint8 activations quantized per call
from their own min/max; the int32 sum is rescaled to float. 07's INT8 (quant_linear.py) keeps one
scale per output channel and float activations.
"""

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain"), str(REPO / "kernels")]
from common.cli import UserError
from common.layout import RunLayout
from common.runs import check_artifact
from common.stats import paired_bootstrap_interval
from gpt import GPT  # 03_model
from batches import load_shards, load_test_shard  # 04_pretrain

from onnx_graph import eager_greedy, empty_cache, export_onnx, onnx_greedy, onnx_session
from quant_linear import model_bytes, parse_format, quantize_model


def run_model_and_windows(run, n_windows: int):
    """(model, windows (n, T+1) int64, what): the run's pretrain/best.pt and its first n_windows
    consecutive windows of the test split."""
    layout = RunLayout(run)
    check_artifact(layout.pretrain, made_by=layout.made_by("pretrain"))
    ckpt = layout.pretrain / ("best.pt" if (layout.pretrain / "best.pt").is_file() else "ckpt.pt")
    model = GPT.from_checkpoint(ckpt).eval()
    T = model.cfg.block_size
    _, _, meta = load_shards(Path(run), T)
    test = load_test_shard(Path(run), meta)
    if test is None or len(test) < T + 1:
        raise UserError(f"{run}/tokens has no usable test.bin; rerun `{layout.made_by('tokens')}`")
    starts = np.arange(0, len(test) - T - 1, T)[:n_windows]
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
