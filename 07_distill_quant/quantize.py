"""Quantize a trained GPT to INT8 / INT4, save it in a format that loads back as it is, and measure the cost.

    python 07_distill_quant/quantize.py --run runs/tiny            # INT4-g32 GPTQ model.pt + the comparison table
    python 07_distill_quant/quantize.py --run runs/tiny --bits 8 --method rtn --compare ""      # INT8 only
    python 07_distill_quant/quantize.py --run runs/tiny --load runs/tiny/quant/model.pt         # use a saved one

Reads <run>/sft/ when it holds a finished fine-tuned model (a LoRA adapter is merged first), else
<run>/pretrain/best.pt; tokens/ (validation windows for perplexity, training windows for calibration) and
data/tasks/sft_heldout.jsonl (exact match, for a fine-tuned model only). Writes <run>/quant/: model.pt (the
quantized checkpoint, quant_linear.save_quantized), outcome.json, tables.md, quant.png, manifest.json.
The layers, formats and checkpoint live in quant_linear.py, GPTQ in gptq.py, the stored formulas and the Triton
kernel in kernels/quant_matmul.py. This file is the command: it builds every format, prints the tables and
sets the bars.

How a weight becomes a few bits, and why who shares a scale matters: quant_granularity.py (with the
outlier table this command prints). How each format is measured: quant_measure.py.

Interview questions it answers:
- Symmetric or asymmetric, per tensor, channel or group? Why do outliers hurt per-tensor scales?
  (quant_granularity.py; the outlier table shows max|w|/mean|w| beside each granularity's error)
- Why is the INT4 model slower than fp32 on a CPU here? (the CPU path is the readable reference: it dequantizes the
  whole weight on every call; the GPU kernel reads the int bytes and wins because decoding is memory-bound,
  bench_quant_decode.py)
- Which metric to trust for a quantized model? (perplexity moves first and smoothly; exact match on a small
  held-out set is coarse: a 0.5 % perplexity change rarely flips a greedy answer)
"""

import os
import platform
import time
from dataclasses import asdict, dataclass
import sys
from pathlib import Path

import torch

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
from bpe import BPETokenizer  # 02_tokenizer
from batches import eval_starts, get_batch, load_shards  # 04_pretrain
from lora import DEFAULT_TARGETS, merged_plain_model  # 05_sft_lora
from finetuned import load_finetuned  # 05_sft_lora
from sft_data import read_conversations  # 05_sft_lora
from quant_matmul import check_quant_settings  # kernels

from quant_granularity import STAT_COLUMNS, weight_stats  # 07 (here)
from quant_measure import INT8_MAX_LOSS, EvalData, compare_formats, measure, tokens_per_second  # 07 (here)
from quant_linear import (
    format_name,
    load_float_model,
    load_quantized,  # 07 (here)
    model_bytes,
    padded_in_features,
    parse_format,
    save_quantized,
    target_layers,
)

DEFAULT_COMPARE = ["fp32", "bf16", "int8", "w8a8", "int4-g128", "int4-g32", "int4-g32-gptq"]
GOALS = {"int8": 1.0, "int4-g32": 5.0}  # issue 14: perplexity change ≤ 1 % (INT8), ≤ 5 % (INT4-g32)


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
                model = merged_plain_model(model)
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
