"""Quantize a trained GPT to INT8 / INT4, save it in a format that loads back as it is, and measure the cost.

    python 07_distill_quant/quantize.py --run runs/tiny            # INT4-g32 GPTQ model.pt + the comparison table
    python 07_distill_quant/quantize.py --run runs/tiny --bits 8 --method rtn --compare ""      # INT8 only
    python 07_distill_quant/quantize.py --run runs/tiny --load runs/tiny/quant/model.pt         # use a saved one

Reads <run>/sft/ when it holds a finished fine-tuned model (a LoRA adapter is merged first), else
<run>/pretrain/best.pt; tokens/ (validation windows for perplexity, training windows for calibration) and
data/tasks/sft_heldout.jsonl (exact match, for a fine-tuned model only). Writes <run>/quant/: model.pt (the
quantized checkpoint, quant_linear.save_quantized), outcome.json, tables.md, quant.png, manifest.json.
The layers, formats and checkpoint live in quant_linear.py, GPTQ in gptq.py, the stored formulas and the Triton
kernel in kernels/quant_matmul.py. This file measures: the outlier table and the outcome table.

## One number
    symmetric    s = max|w| / qmax (qmax = 2^(b-1) - 1)     q = clamp(round(w / s), -qmax, qmax)        ŵ = q·s
    asymmetric   s = (max w - min w) / (2^b - 1)   z = round(-min w / s)   q = clamp(round(w/s) + z, 0, 2^b - 1)
                 ŵ = (q - z)·s    (min and max widened to include 0, so a 0 weight stays exactly 0)
Rounding to nearest moves each weight by at most s/2, and no weight is clipped (s comes from the max). For a
layer y = x·Ŵᵀ that bounds the error of every output exactly:
    |y_n - ŷ_n| = |Σ_k x_k (W_nk - Ŵ_nk)| ≤ Σ_k |x_k| · s(n, k) / 2      (what tests/test_07_quant.py checks)
The symmetric grid wastes one side when a set is skewed (all weights > 0: half the codes unused); the zero point
uses all 2^b levels for [min, max] at the price of one more number per set and a subtraction.

## Who shares a scale: the tensor, an output channel, a group
The largest |w| of a set sets the step for every weight in it, so the typical error, ~s/√12 ∝ max|w| / qmax,
is large relative to a typical |w| when max|w| / mean|w| is large (an outlier).
    per tensor    one s for all N·K weights: one outlier coarsens the grid of the whole matrix;
    per channel   one s per output row n: a large row hurts only itself, and s_n factors out of the dot product
                  (y_n = s_n · Σ_k x_k q_nk): one multiply per output;
    per group     one s per G consecutive inputs k of a row: an outlier *input* feature (the same k in every row,
                  the pattern LLM weights show) is confined to one group per row. INT4 needs it: 15 levels are too
                  few for a whole row. It costs 2 bytes per G weights (G = 128: 0.016 bytes/weight).
`weight_stats` shows max|w| / mean|w| and the error of each granularity for every layer of the model
(`fake_quantize`: quantize-dequantize in fp32, any granularity, the "simulated" quantization of QAT papers).

Interview questions it answers:
- Symmetric or asymmetric, per tensor, channel or group: what does each cost and buy? (sections above)
- Why do outliers hurt per-tensor scales? (the max sets the step for all; see max|w|/mean|w| in the table)
- Why is the INT4 model slower than fp32 on a CPU here? (the CPU path is the readable reference: it dequantizes the
  whole weight on every call; the GPU kernel reads the int bytes and wins because decoding is memory-bound,
  bench_quant_decode.py)
- Which metric to trust for a quantized model? (perplexity moves first and smoothly; exact match on a small
  held-out set is coarse: a 0.5 % perplexity change rarely flips a greedy answer)
"""

import copy
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
import sys
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
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.files import atomic_write_text, markdown_table, pyplot, save_figure, write_json
from common.layout import RunLayout
from common.runs import check_artifact, claim_output, run_lock, staged_dir, write_manifest
from common.devices import resolve_device
from common.outcome import make_bar
from common.stats import paired_bootstrap_interval
from decoding import generate  # 03_model
from bpe import BPETokenizer  # 02_tokenizer
from batches import eval_starts, get_batch, load_shards  # 04_pretrain
from lora import DEFAULT_TARGETS, merge_lora  # 05_sft_lora
from metrics import perplexity  # 05_sft_lora
from finetuned import generate_answers, load_finetuned, score  # 05_sft_lora
from sft_data import read_conversations  # 05_sft_lora
from quant_matmul import check_quant_settings  # kernels

from compress_eval import window_losses  # 07 (here)
from quant_linear import (
    FLOAT_FORMATS,
    QuantSpec,
    format_name,
    load_float_model,
    load_quantized,  # 07 (here)
    model_bytes,
    padded_in_features,
    parse_format,
    quantize_model,
    save_quantized,
    target_layers,
)

DEFAULT_COMPARE = ["fp32", "bf16", "int8", "w8a8", "int4-g128", "int4-g32", "int4-g32-gptq"]
GOALS = {"int8": 1.0, "int4-g32": 5.0}  # issue 14: perplexity change ≤ 1 % (INT8), ≤ 5 % (INT4-g32)


# ----------------------------------------------------------------------------------------------------
# 1. Why the granularity of the scale matters: the model's own weights
# ----------------------------------------------------------------------------------------------------
def fake_quantize(w, bits, per, symmetric=True):
    """Ŵ (N, K): w quantized and dequantized in fp32 with one scale (and zero point) per `per`: "tensor",
    "channel" (a row of W) or an int G (G consecutive inputs of a row; G divides K)."""
    # >>> exercise: group w into sets by `per`, then per set: symmetric s = max|w| / (2^(b-1) - 1); asymmetric: widen [min, max] to hold 0, s = range / (2^b - 1)
    N, K = w.shape
    w = w.float()
    sets = w.reshape(1, N * K) if per == "tensor" else w if per == "channel" else w.reshape(N, K // per, per)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = (sets.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-12)
        w_hat = torch.round(sets / s).clamp(-qmax, qmax) * s
    else:
        lo = sets.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = sets.amax(dim=-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / (2**bits - 1)).clamp(min=1e-12)
        z = torch.round(-lo / s)
        w_hat = ((torch.round(sets / s) + z).clamp(0, 2**bits - 1) - z) * s
    return w_hat.reshape(N, K)
    # <<< exercise


def relative_error(w, w_hat) -> float:
    return float((w_hat - w.float()).norm() / w.float().norm())


STAT_COLUMNS = {
    "int8_tensor": (8, "tensor", True),
    "int8_channel": (8, "channel", True),
    "int4_channel": (4, "channel", True),
    "int4_g32": (4, 32, True),
    "int4_g32_asym": (4, 32, False),
}


@torch.no_grad()
def weight_stats(model, targets) -> list:
    """One row per target layer: max|w| / mean|w| and the relative error ‖Ŵ - W‖ / ‖W‖ per scale granularity."""
    rows = []
    for name in target_layers(model, targets):
        w = model.get_submodule(name).weight.detach().float()
        row = {"layer": name, "shape": list(w.shape), "max_over_mean": float(w.abs().max() / w.abs().mean())}
        for column, (bits, per, symmetric) in STAT_COLUMNS.items():
            fits = isinstance(per, str) or w.shape[1] % per == 0
            row[column] = relative_error(w, fake_quantize(w, bits, per, symmetric)) if fits else None
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# 2. Measuring a variant: bytes, perplexity, exact match, tokens/s
# ----------------------------------------------------------------------------------------------------
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


def goal_lines(rows) -> list:
    by_name = {r["format"]: r for r in rows}
    lines = [
        f"goal {name} perplexity change <= {limit:g}%: {by_name[name]['ppl_change_pct']:+.2f}% -> "
        f"{'met' if by_name[name]['ppl_change_pct'] <= limit else 'NOT met'}"
        for name, limit in GOALS.items()
        if name in by_name and "fp32" in by_name
    ]
    return lines


def plot_outcome(rows, stats, path, title):
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    names = [r["format"] for r in rows]
    axes[0].bar(names, [r["ppl_change_pct"] for r in rows], color="tab:blue")
    for name, limit in GOALS.items():
        axes[0].axhline(limit, ls="--", lw=0.8, color="gray")
        axes[0].text(len(names) - 0.5, limit, f"goal {name}", fontsize=7, ha="right", va="bottom")
    axes[0].set(ylabel="validation perplexity change vs fp32 (%)", title=title)
    axes[1].bar(names, [r["bytes"] / 2**20 for r in rows], color="tab:green")
    axes[1].set(ylabel="MiB of weights (parameters + buffers)", title="model size")
    axes[3].bar(names, [max(r["kl_fp32"], 1e-12) for r in rows], color="tab:red")
    axes[3].set(ylabel="KL(p_fp32 ‖ p) nats/token", yscale="log", title="how far predictions move")
    for ax in (axes[0], axes[1], axes[3]):
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    ratio = [s["max_over_mean"] for s in stats]
    axes[2].scatter(ratio, [s["int8_tensor"] for s in stats], label="INT8, one scale per tensor")
    axes[2].scatter(ratio, [s["int8_channel"] for s in stats], label="INT8, one scale per output channel")
    axes[2].set(
        xlabel="max|w| / mean|w| of the layer",
        ylabel="‖Ŵ - W‖ / ‖W‖",
        yscale="log",
        title="why outliers hurt a per-tensor scale",
    )
    axes[2].legend(fontsize=8)
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------
# 3. Command line
# ----------------------------------------------------------------------------------------------------
@dataclass
class QuantConfig:
    run: str = option("", "run folder runs/<name> with pretrain/ (or sft/), tokens/, tokenizer/")
    ckpt: str = option(
        "",
        "float checkpoint to quantize; empty = <run>/sft when it is a finished run, "
        "else <run>/pretrain/best.pt",
    )
    out: str = option("", "output folder; empty = <run>/quant")
    load: str = option(
        "", "only evaluate this saved quantized checkpoint (perplexity, tokens/s); writes nothing"
    )
    bits: int = option(4, "bits per weight of the saved model: 4 (group-wise) or 8 (per output channel)")
    group_size: int = option(32, "INT4: weights sharing one scale along in_features: 32, 64 or 128")
    symmetric: bool = option(True, "symmetric codes; --no-symmetric: INT4 with fp16 zero points")
    activation_bits: int = option(
        0, "0 = weight-only; 8 = W8A8 (int8 activations, one scale per token; --bits 8)"
    )
    method: str = option(
        "gptq", "how codes are chosen: round to nearest, or GPTQ on calibration data", choices=("rtn", "gptq")
    )
    targets: list = option(DEFAULT_TARGETS, "module-name patterns of the layers to quantize", sep=",")
    pad_groups: bool = option(
        True,
        "zero-pad in_features to a multiple of the group size when it does not "
        "divide (--no-pad-groups: an error)",
    )
    compare: list = option(
        DEFAULT_COMPARE, "formats measured side by side (empty = only the saved one)", sep=","
    )
    calib_windows: int = option(32, "GPTQ: training windows of block_size tokens for the Hessians", min=1)
    damp: float = option(0.01, "GPTQ: fraction of mean(diag H) added to H's diagonal", min=0.0)
    val_windows: int = option(64, "validation windows of block_size tokens for perplexity", min=1)
    eval_limit: int = option(
        100, "held-out conversations answered greedily for exact match (0 = skip)", min=0
    )
    max_new_tokens: int = option(24, "longest generated answer", min=1)
    gen_tokens: int = option(64, "new tokens (batch 1, greedy) timed for tokens/s", min=1)
    seed: int = option(1337, "seed (nothing here is random but ties in generation)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        bits=8,
        method="rtn",
        compare=["fp32", "int8"],
        calib_windows=2,
        val_windows=2,
        eval_limit=2,
        gen_tokens=4,
    ),
}


def check_quant_config(cfg: QuantConfig):
    """(the saved format, the compared formats), or a UserError for a setting that cannot work."""
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder holding pretrain/ and tokens/)")
    check_quant_settings(cfg.bits, cfg.group_size if cfg.bits == 4 else None, cfg.group_size)
    if cfg.activation_bits not in (0, 8):
        raise UserError(f"--activation-bits {cfg.activation_bits}: use 0 (weight-only) or 8 (W8A8)")
    if cfg.activation_bits and cfg.bits != 8:
        raise UserError("--activation-bits 8 (W8A8) needs --bits 8")
    if cfg.bits == 8 and not cfg.symmetric:
        raise UserError("INT8 here is symmetric only; drop --no-symmetric, or use --bits 4 for zero points")
    if not cfg.targets:
        raise UserError("--targets is empty; name the layers to quantize, e.g. wq,wk,wv,wo,up,gate,down")
    spec = parse_format(format_name(cfg.bits, cfg.group_size, cfg.symmetric, cfg.activation_bits, cfg.method))
    return spec, [parse_format(name) for name in dict.fromkeys(cfg.compare)]


def load_source(cfg, run: Path, device):
    """(float model, tokenizer, checkpoint path, folder read, is_chat): --ckpt, else the run's SFT model, else
    its pretrained one. A LoRA SFT run is merged (exact); prefix/adapter PEFT cannot be, so the base is used."""
    tok_dir = RunLayout(run).tokenizer
    check_artifact(tok_dir, made_by=RunLayout(run).made_by("tokenizer"))
    if cfg.ckpt:
        path = Path(cfg.ckpt)
        manifest = check_artifact(path.parent, made_by=f"the stage that wrote {path}")
        return (
            load_float_model(path, device),
            BPETokenizer.load(tok_dir),
            path,
            path.parent,
            manifest.get("stage") == "05_sft_lora",
        )
    sft_dir = RunLayout(run).sft
    if sft_dir.is_dir():
        model, tok, peft = load_finetuned(sft_dir, device)
        if peft is None or isinstance(peft, str):
            if isinstance(peft, str):
                merge_lora(model)
                print(
                    f"{sft_dir}: merged LoRA adapter {peft!r} into the weights (W += (α/r)·B·A) before quantizing"
                )
            return model, tok, sft_dir / ("ckpt.pt" if peft is None else "adapter.pt"), sft_dir, True
        print(
            f"{sft_dir}: a prefix/adapter run cannot be merged into the weights; quantizing the pretrained base"
        )
    pre = RunLayout(run).pretrain
    check_artifact(pre, made_by=RunLayout(run).made_by("pretrain"))
    path = pre / "best.pt" if (pre / "best.pt").is_file() else pre / "ckpt.pt"
    return load_float_model(path, device), BPETokenizer.load(tok_dir), path, pre, False


def eval_data(cfg, run: Path, model, tok, chat: bool, device) -> EvalData:
    T = model.cfg.block_size
    train, val, _ = load_shards(run, T)
    starts = eval_starts(len(train), T, cfg.calib_windows)
    calibration = [get_batch(train, starts[i : i + 16], T, device)[0] for i in range(0, len(starts), 16)]
    heldout = []
    if chat and cfg.eval_limit:
        check_artifact(RunLayout(run).data, made_by=RunLayout(run).made_by("data"))
        heldout = read_conversations(RunLayout(run).tasks / "sft_heldout.jsonl")[: cfg.eval_limit]
    return EvalData(val, calibration, tok, heldout, cfg.val_windows, cfg.max_new_tokens, device)


def machine(device) -> str:
    where = (
        torch.cuda.get_device_name(device)
        if str(device).startswith("cuda")
        else f"CPU, {os.cpu_count()} cores"
    )
    return f"{platform.node()} ({where}), torch {torch.__version__}"


def fmt(value, spec) -> str:
    return "-" if value is None else format(value, spec)


def stats_table(stats) -> str:
    """The outlier table: max|w| / mean|w| and ‖Ŵ - W‖ / ‖W‖ of each granularity, one row per layer."""
    return markdown_table(
        [
            {
                "layer": s["layer"],
                "max/mean": fmt(s["max_over_mean"], ".1f"),
                **{k: fmt(s[k], ".4f") for k in STAT_COLUMNS},
            }
            for s in stats
        ],
        ["layer", "max/mean", *STAT_COLUMNS],
    )


def outcome_table(rows) -> str:
    """One row per format: size, perplexity and its change, exact match, tokens/s, and for GPTQ the mean
    relative output error of its layers on the calibration data vs round-to-nearest's."""
    return markdown_table(
        [
            {
                "format": r["format"],
                "bytes": f"{r['bytes']:,}",
                "x fp32": fmt(r["vs_fp32_bytes"], ".3f"),
                "val ppl": fmt(r["val_ppl"], ".4f"),
                "change": fmt(r["ppl_change_pct"], "+.2f") + "%",
                "KL to fp32": fmt(r["kl_fp32"], ".2e"),
                "exact match": fmt(r.get("exact_match"), ".3f"),
                "answer acc": fmt(r.get("answer_acc"), ".3f"),
                "tok/s": fmt(r["tok_s"], ".0f"),
                "calib out err rtn -> gptq": (
                    f"{r['calib_error_rtn']:.4f} -> {r['calib_error_gptq']:.4f}"
                    if "calib_error_gptq" in r
                    else "-"
                ),
            }
            for r in rows
        ],
        [
            "format",
            "bytes",
            "x fp32",
            "val ppl",
            "change",
            "KL to fp32",
            "exact match",
            "answer acc",
            "tok/s",
            "calib out err rtn -> gptq",
        ],
    )


def evaluate_saved(cfg, device):
    """--load: rebuild a saved quantized model (no re-quantizing), print its perplexity and tokens/s."""
    path = Path(cfg.load)
    check_artifact(path.parent, made_by=RunLayout(cfg.run).made_by("quant"))
    model, q = load_quantized(path, device)
    data = EvalData(
        load_shards(Path(cfg.run), model.cfg.block_size)[1],
        [],
        None,
        [],
        cfg.val_windows,
        cfg.max_new_tokens,
        device,
    )
    row = measure(model, parse_format(q["name"]), data)
    prompt = torch.as_tensor(data.val[:16].astype("int64"), device=device)[None]
    tok_s = tokens_per_second(model, prompt, min(cfg.gen_tokens, model.cfg.block_size - 16))
    print(
        f"{path}: {q['name']}, {len(q['layers'])} quantized layers, {row['bytes']:,} bytes, "
        f"val perplexity {row['val_ppl']:.4f}, {tok_s:.0f} tokens/s ({device})"
    )


# A quantized model is judged as quality at a size: the trivial ways to shrink it (cast to bf16, round
# each weight to the nearest level) are the baselines, so a bar they pass too says nothing.
INT8_MAX_LOSS = math.log(1.01)  # +1 % perplexity = +0.00995 nats/token (issue 14's INT8 goal)


def paired_loss_bar(metric, rows_by, name, ref, threshold, baseline_name, note) -> dict:
    """Mean val loss of `name` minus `ref`'s over the same windows (nats/token), with a paired 95 %
    bootstrap interval over the windows; passes when the whole interval is below threshold."""
    a, b = rows_by[name]["window_loss"], rows_by[ref]["window_loss"]
    diff = sum(a) / len(a) - sum(b) / len(b)
    return make_bar(
        metric,
        diff,
        threshold=threshold,
        direction="lower",
        interval=paired_bootstrap_interval(a, b),
        n=len(a),
        baseline=rows_by[ref]["val_loss"],
        baseline_name=baseline_name,
        note=note,
    )


def quant_bars(rows) -> list:
    """The stage's bars, from the rows that were measured (none without fp32 or window losses):

    int8 at a size     INT8's val loss minus fp32's < ln 1.01 (+1 % perplexity; interval wholly below)
                       AND its bytes < 0.5x fp32's: fp32 (1x) and the bf16 cast (0.5x) fail the size;
    GPTQ vs RTN        each GPTQ format's val loss minus round-to-nearest's at the same bits, groups
                       and bytes < 0 (interval wholly below): the cheap quantizer is the baseline."""
    by = {r["format"]: r for r in rows if "window_loss" in r}
    bars = []
    if "int8" in by and "fp32" in by:
        size = by["int8"]["bytes"] / by["fp32"]["bytes"]
        bar = paired_loss_bar(
            f"INT8 val loss minus fp32's (nats/token, paired over windows) at {size:.2f}x the fp32 bytes",
            by,
            "int8",
            "fp32",
            INT8_MAX_LOSS,
            "fp32",
            f"INT8 keeps the loss within ln 1.01 = {INT8_MAX_LOSS:.4f} nats (1 % perplexity) of fp32 at "
            f"< 0.5x its bytes (bf16's size): {size:.2f}x",
        )
        if size >= 0.5:  # no smaller than the bf16 cast: the size half of the bar fails
            bar = bar | {"passed": False, "note": bar["note"] + " -> too large"}
        bars.append(bar)
    for name in by:
        rtn = name.removesuffix("-gptq")
        if name.endswith("-gptq") and rtn in by:
            bars.append(
                paired_loss_bar(
                    f"{name} val loss minus round-to-nearest {rtn}'s (nats/token, paired over windows)",
                    by,
                    name,
                    rtn,
                    0.0,
                    f"round-to-nearest {rtn}, the same bits and bytes",
                    f"GPTQ beats round-to-nearest at the same size ({by[name]['bytes']:,} bytes)",
                )
            )
    return bars


def outcome_block(rows, saved_format: str) -> dict:
    """{"headline", "bar", "bars"} of outcome.json (common/outcome.py): quant_bars; the stage's bar is
    the first that fails, else the GPTQ one (the comparison with the strongest cheap baseline)."""
    by = {r["format"]: r for r in rows}
    parts = [
        f"{k} {by[k]['ppl_change_pct']:+.2f} % ppl at {by[k]['vs_fp32_bytes']:.2f}x the fp32 bytes"
        for k in ("int8", "int4-g32", "int4-g32-gptq")
        if k in by
    ]
    bars = quant_bars(rows)
    failing = [b for b in bars if not b["passed"]]
    bar = (failing or bars[-1:] or [None])[0]
    return {"headline": "; ".join(parts) or f"saved {saved_format}", "bar": bar, "bars": bars}


def main(argv=None):
    cfg, _ = parse_config(QuantConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    spec, compare = check_quant_config(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.load:
        return evaluate_saved(cfg, device)
    run = Path(cfg.run)
    model, tok, source, source_dir, chat = load_source(cfg, run, device)
    model.eval()
    specs = [s for s in dict.fromkeys([*compare, spec]) if s.bits]  # every shape check before any work
    for s in specs:
        for name in target_layers(model, cfg.targets):
            padded_in_features(name, model.get_submodule(name).in_features, s, cfg.pad_groups)
    out = Path(cfg.out) if cfg.out else RunLayout(run).quant
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)
        data = eval_data(cfg, run, model, tok, chat, device)
        stats = weight_stats(model, cfg.targets)
        print(
            f"{source}: {model_bytes(model):,} bytes; measuring {', '.join(s.name for s in dict.fromkeys([*compare, spec]))}"
            + ("" if chat else " (a pretrained model: perplexity only, no exact match)"),
            flush=True,
        )
        rows, models, metas = compare_formats(model, list(dict.fromkeys([*compare, spec])), cfg, data)
        saved = models[spec.name]
        with staged_dir(out) as tmp:
            save_quantized(
                tmp / "model.pt",
                saved,
                spec,
                metas[spec.name],
                tokenizer=str(Path("..") / "tokenizer"),
                source=str(source),
            )
            reloaded, _ = load_quantized(tmp / "model.pt", device)  # the format must load back as it is
            x = data.calibration[0][:2]
            if not torch.equal(saved(x)[0], reloaded(x)[0]):
                raise RuntimeError("the reloaded quantized model computes other logits than the saved one")
            goals = goal_lines(rows)
            outcome = {
                "source": str(source),
                "chat_model": chat,
                "saved_format": spec.name,
                "rows": rows,
                "goals": goals,
                "weight_stats": stats,
                "layers": metas[spec.name],
                "device": device,
                "machine": machine(device),
                "date": time.strftime("%Y-%m-%d"),
                "exact_match": "measured on the held-out task set"
                if chat
                else "not measured: no finished SFT run, the model is a pretrained one",
            }
            outcome.update(outcome_block(rows, spec.name))
            write_json(tmp / "outcome.json", outcome)
            atomic_write_text(
                tmp / "tables.md",
                f"{stats_table(stats)}\n\n{outcome_table(rows)}\n\n"
                + "".join(f"- {line}\n" for line in goals),
            )
            plot_outcome(rows, stats, tmp / "quant.png", f"{source} (saved: {spec.name})")
            write_manifest(
                tmp,
                stage="07_quantize",
                command=command_line(__file__, argv),
                config=asdict(cfg),
                inputs=[
                    source_dir,
                    RunLayout(run).tokens,
                    RunLayout(run).tokenizer,
                    *([RunLayout(run).data] if chat else []),
                ],
            )
    print(stats_table(stats), outcome_table(rows), sep="\n\n")
    for line in goals:
        print(line)
    print(
        f"reloaded model.pt without re-quantizing: identical logits; wrote {out}/ (model.pt "
        f"{(out / 'model.pt').stat().st_size:,} bytes)"
    )
    return outcome


if __name__ == "__main__":
    run_cli(main)
