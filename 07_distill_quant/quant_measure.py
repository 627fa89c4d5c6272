"""Measuring a quantized variant: bytes, perplexity, KL to fp32, held-out exact match, tokens/s.

    from quant_measure import EvalData, compare_formats
    rows, models, metas = compare_formats(float_model, specs, cfg, data)    # one row per format

quantize.py builds `data` from the run and prints `rows` as its outcome table
(`python 07_distill_quant/quantize.py --run runs/tiny`). Every format is measured on the same
validation windows of 04 (their per-window losses are what the bars' paired intervals resample),
and tokens/s is the best of several passes over all the models, interleaved, so a busy spell of a
shared machine hits every format alike.

Interview question it answers:
- Which metric to trust for a quantized model? (perplexity moves first and smoothly; exact match on a small
  held-out set is coarse: a 0.5 % perplexity change rarely flips a greedy answer; the KL to the fp32
  model is >= 0 and 0 only for identical predictions, so it ranks formats steadily)
"""

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(REPO),
    str(REPO / "02_tokenizer"),
    str(REPO / "03_model"),
    str(REPO / "04_pretrain"),
    str(REPO / "05_sft_lora"),
    str(REPO / "kernels"),
]
from bpe import BPETokenizer  # 02_tokenizer
from decoding import generate  # 03_model
from batches import eval_starts, get_batch  # 04_pretrain
from metrics import perplexity  # 05_sft_lora
from finetuned import generate_answers, score  # 05_sft_lora

from compress_eval import window_losses  # 07 (here)
from quant_linear import FLOAT_FORMATS, QuantSpec, model_bytes, quantize_model  # 07 (here)

INT8_MAX_LOSS = math.log(1.01)  # +1 % perplexity = +0.00995 nats/token (issue 14's INT8 goal; quantize.py's
# INT8 bar and export_roundtrip.py's ONNX INT8 bar)


@dataclass
class EvalData:
    val: object  # validation token shard (04's memmap)
    calibration: list  # GPTQ: (B, T) token batches from the training shard
    tok: BPETokenizer
    heldout: list  # conversations for exact match; [] = not measured
    windows: int
    max_new_tokens: int
    device: str


def build_variant(float_model, spec: QuantSpec, cfg, data: EvalData):
    """(model, layer metas, seconds): a copy of the float model cast or quantized to `spec`."""
    t0 = time.perf_counter()
    model = copy.deepcopy(float_model)
    if spec.bits == 0:
        return model.to(FLOAT_FORMATS[spec.name]).eval(), {}, time.perf_counter() - t0
    layers = quantize_model(
        model, spec, cfg.targets, cfg.pad_groups, data.calibration if spec.method == "gptq" else (), cfg.damp
    )
    return model.eval(), layers, time.perf_counter() - t0


@torch.no_grad()
def measure(model, spec: QuantSpec, data: EvalData) -> dict:
    """Size, validation perplexity on 04's fixed windows, and (for a chat model) held-out exact match."""
    T = model.cfg.block_size
    per_window = window_losses(model, data.val, data.windows, data.device)  # 04's fixed windows, (windows,)
    loss, n = float(per_window.mean()), data.windows * T  # windows of T tokens each: the token mean
    row = {
        "format": spec.name,
        "bytes": model_bytes(model),
        "val_ppl": perplexity(loss * n, n),
        "val_loss": loss,
        "window_loss": per_window.tolist(),  # the unit the bars' paired intervals resample
    }
    if data.heldout:
        answers = generate_answers(
            model, data.tok, [r["messages"] for r in data.heldout], data.max_new_tokens, data.device
        )
        row.update({k: v for k, v in score(answers, data.heldout).items() if k != "n"})
    return row


@torch.no_grad()
def tokens_per_second(model, prompt, n_new) -> float:
    """Greedy generation with 03's KV cache: new tokens per wall-clock second (batch of len(prompt))."""
    if prompt.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    generate(model, prompt, n_new, temperature=0)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return prompt.shape[0] * n_new / (time.perf_counter() - t0)


@torch.no_grad()
def kl_to_reference(model, x, ref_logp) -> float:
    """Mean over positions of KL(p_fp32 ‖ p_model) = Σ_v p_ref(v) (log p_ref(v) - log p(v)), nats per token.
    A perplexity change sums signed per-token changes that partly cancel (on a small model it can even come
    out negative by chance); the KL is ≥ 0 and 0 only for identical predictions, so it ranks formats steadily.
    Between nearly identical distributions (int8) the true KL is ~1e-6 and float32 rounding of the sum is
    ~1e-8 with either sign, so the sum is taken in float64 and what rounding leaves below 0 is clamped to 0."""
    logp = F.log_softmax(model(x)[0].double(), dim=-1)
    per_position = F.kl_div(logp, ref_logp.double(), log_target=True, reduction="none").sum(-1)
    return float(per_position.clamp(min=0).mean())


def compare_formats(float_model, specs, cfg, data: EvalData, rounds=3):
    """(rows, models, layer metas) for each format; tokens/s is the best of `rounds` passes over all the models,
    interleaved, so a busy spell of a shared machine hits every format alike."""
    rows, models, metas = [], {}, {}
    T = float_model.cfg.block_size
    x = get_batch(data.val, eval_starts(len(data.val), T, min(data.windows, 16)), T, data.device)[0]
    with torch.no_grad():
        ref_logp = F.log_softmax(float_model(x)[0].double(), dim=-1)  # (B, T, V) of the fp32 model
    for spec in specs:
        model, layers, seconds = build_variant(float_model, spec, cfg, data)
        row = {
            **measure(model, spec, data),
            "kl_fp32": kl_to_reference(model, x, ref_logp),
            "quantize_s": seconds,
        }
        if layers and "calib_error_gptq" in next(iter(layers.values())):
            for key in ("calib_error_rtn", "calib_error_gptq"):
                row[key] = sum(m[key] for m in layers.values()) / len(layers)
        rows.append(row)
        models[spec.name], metas[spec.name] = model, layers
        print(
            f"{spec.name:>14}: perplexity {row['val_ppl']:.4f}, KL to fp32 {row['kl_fp32']:.2e}"
            + (f", exact match {row['exact_match']:.3f}" if "exact_match" in row else ""),
            flush=True,
        )
    prompt = torch.as_tensor(data.val[:16].astype("int64"), device=data.device)[None]
    n_new = min(cfg.gen_tokens, T - prompt.shape[1])
    for _ in range(rounds):
        for row in rows:
            row["tok_s"] = max(row.get("tok_s", 0.0), tokens_per_second(models[row["format"]], prompt, n_new))
    base = next((r for r in rows if r["format"] == "fp32"), rows[0])
    for row in rows:
        row["vs_fp32_bytes"] = row["bytes"] / base["bytes"]
        row["ppl_change_pct"] = 100 * (row["val_ppl"] / base["val_ppl"] - 1)
    return rows, models, metas
