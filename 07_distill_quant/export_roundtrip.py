"""Export the run's pretrained model and load it back in other runtimes: is it still the same model?

    python 07_distill_quant/export_roundtrip.py --run runs/tiny          # ~1 minute on 2 CPU cores
    python 07_distill_quant/export_roundtrip.py --run runs/tiny --tolerance 1e-5 --prompts 16

export.py writes the Hugging Face files (config.json + model.safetensors + tokenizer.json; the library
is hf_format.py) and export_onnx.py the ONNX graph with its KV cache (onnx_graph.py); their tests check
random toy models. This stage runs both on the run's own pretrain/best.pt and measures the round trip,
on the run's test split:

    transformers   export.py's folder loaded by transformers (LlamaForCausalLM or GPT2LMHeadModel):
                   max |Δ logit| against 03's GPT on --windows test windows, every position and vocab
                   entry; greedy tokens equal on --prompts prompts; tokenizer.json's ids equal 02's
    onnxruntime    export_onnx.py's graph, teacher-forced through its cache: the same max |Δ logit|
                   and greedy tokens; and bench_onnx_int8.py's comparison (onnx_int8.py): INT8 by dynamic
                   quantization against fp32 (test-loss change, paired over windows, with its 95 %
                   bootstrap interval) and greedy tokens/s of each, interleaved, best of --repeats

The bar: max |Δ logit| of the transformers load below --tolerance (1e-4: float32 summation order
differs between two implementations by ~1e-6; a wrong epsilon, GELU variant or RoPE pairing is
~1e-3 or more). Beside it, the baseline the tolerance must reject: the same weights rounded to fp16
(and bf16) before export, loaded the same way; its Δ is far above the tolerance, so a lossy export
fails this bar. Further bars: the ONNX graph's Δ under the same tolerance, and ONNX INT8's test-loss
change under issue 14's INT8 goal (+1 % perplexity = log 1.01 nats/token), as 07's quantize.py.

Without transformers or onnxruntime (optional: requirements-export.txt) that part says so and is
recorded as skipped: the stage neither passes nor fails on a package that is not there.

Interview questions it answers:
- How do you know an exported model is the model you trained? (compare logits on real inputs, every
  position, against a tolerance that a known-lossy export fails; greedy tokens alone can agree while
  logits drift)
- What tolerance is right for float32 across two runtimes? (a few 1e-6 relative: summation order and
  fused kernels differ; 1e-4 absolute on logits of size ~10 leaves room for that and none for fp16)
- What does ONNX Runtime's dynamic INT8 cost? (a small loss change, measured with its interval; its
  speed on a tiny model can be below fp32: the matmuls are too small for int8 kernels to win)
"""

import copy
import importlib.util
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import markdown_table, write_json
from common.layout import RunLayout
from common.outcome import make_bar
from common.runs import check_artifact, fresh_output, write_manifest
from bpe import BPETokenizer  # 02_tokenizer
from checkpoint_io import save_checkpoint  # 03_model

from hf_format import export_hf
from onnx_graph import eager_greedy, onnx_greedy
from onnx_int8 import contenders, eager_logits, measure, run_model_and_windows, speeds
from quant_measure import INT8_MAX_LOSS

HF_PACKAGES = ("transformers",)
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass
class RoundTripConfig:
    run: str = option("", "run folder runs/<name>: reads pretrain/best.pt, tokenizer/, tokens/test.bin")
    out: str = option("", "output folder; empty = <run>/export")
    tolerance: float = option(1e-4, "largest |Δ logit| an exact export may show", min=0.0)
    windows: int = option(16, "test windows for the logits and the INT8 loss", min=1)
    prompts: int = option(8, "prompts (starts of test windows) whose greedy tokens must be equal", min=1)
    prompt_len: int = option(16, "tokens per prompt", min=1)
    new_tokens: int = option(32, "greedy tokens per prompt (and per speed run)", min=1)
    repeats: int = option(3, "interleaved speed rounds; the best is reported", min=1)
    overwrite: bool = option(False, "replace the result already in the output folder")


PRESETS = {"tiny": {}, "micro": dict(windows=2, prompts=2, prompt_len=4, new_tokens=4, repeats=1)}


def missing(packages) -> list:
    """The packages of `packages` that are not installed (the optional part is skipped without them)."""
    return [p for p in packages if importlib.util.find_spec(p) is None]


# ----------------------------------------------------------------------------- transformers


def full_forward_greedy(forward, prompt: list, n: int) -> list:
    """n greedy tokens, one full forward per token: `forward(ids (1, T)) -> logits (1, T, V)`."""
    idx = torch.tensor([prompt])
    for _ in range(n):
        idx = torch.cat([idx, forward(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt) :].tolist()


def load_export(folder: Path):
    """transformers' own load of export.py's folder: the class config.json names, in eval mode."""
    import transformers

    arch = (Path(folder) / "config.json").read_text()
    name = "LlamaForCausalLM" if "LlamaForCausalLM" in arch else "GPT2LMHeadModel"
    return getattr(transformers, name).from_pretrained(folder).eval()


def rounded_copy(model, dtype):
    """The model with every weight rounded to `dtype` and back to float32: a lossy export's weights."""
    lossy = copy.deepcopy(model)
    with torch.no_grad():
        for p in lossy.parameters():
            p.copy_(p.to(dtype).float())
    return lossy


@torch.no_grad()
def hf_round_trip(model, ckpt: Path, tok_dir: Path, windows, prompts, cfg, tmp: Path) -> dict:
    """Export, load with transformers, compare logits and greedy tokens; the fp16/bf16 baselines."""
    info = export_hf(ckpt, tmp / "hf")
    hf = load_export(tmp / "hf")
    ours = eager_logits(model, windows)
    diff = float((hf(windows[:, :-1]).logits.float() - ours).abs().max())
    equal = sum(
        eager_greedy(model, p, cfg.new_tokens)
        == full_forward_greedy(lambda i: hf(i).logits, p, cfg.new_tokens)
        for p in prompts
    )
    lossy = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        rounded = rounded_copy(model, dtype)
        save_checkpoint(tmp / f"{name}.pt", asdict(model.cfg), rounded.state_dict())
        export_hf(tmp / f"{name}.pt", tmp / f"hf_{name}")
        lossy[name] = float((load_export(tmp / f"hf_{name}")(windows[:, :-1]).logits - ours).abs().max())
        shutil.rmtree(tmp / f"hf_{name}")  # measured: only the exact export stays in the folder
        (tmp / f"{name}.pt").unlink()
    return {
        "architecture": info["architecture"],
        "max_abs_logit_diff": diff,
        "logits_compared": ours.numel(),
        "greedy_equal": int(equal),
        "prompts": len(prompts),
        "tokenizer_equal": tokenizer_agreement(tmp / "hf" / "tokenizer.json", tok_dir, windows),
        "lossy_max_abs_logit_diff": lossy,
    }


def tokenizer_agreement(path: Path, tok_dir: Path, windows) -> dict:
    """How many of the windows' texts the exported tokenizer.json (the `tokenizers` library) encodes to
    02's ids; None when there is no tokenizer.json or no library."""
    if not path.is_file() or missing(("tokenizers",)):
        return None
    import tokenizers

    ours, theirs = BPETokenizer.load(tok_dir), tokenizers.Tokenizer.from_file(str(path))
    texts = [ours.decode(w.tolist()) for w in windows]
    same = sum(
        theirs.encode(t, add_special_tokens=False).ids == ours.encode(t, allowed_special="all") for t in texts
    )
    return {"equal": int(same), "texts": len(texts)}


# ----------------------------------------------------------------------------- onnxruntime


def onnx_round_trip(model, windows, prompts, cfg, tmp: Path) -> dict:
    """bench_onnx_int8.py's four runtimes on the run's windows, plus greedy tokens of the fp32 graph."""
    torch.set_num_threads(1)  # as the benchmark: B = 1, one thread, so the ratio is the runtimes'
    runners = contenders(model, tmp / "onnx")
    rows = measure(runners, model.cfg, windows)
    for name, s in speeds(runners, model.cfg, prompts[0], cfg.new_tokens, cfg.repeats).items():
        rows[name].update(s)
    session = runners["onnxruntime fp32"][1]
    equal = sum(
        eager_greedy(model, p, cfg.new_tokens) == onnx_greedy(session, model.cfg, p, cfg.new_tokens)
        for p in prompts
    )
    return {
        "rows": rows,
        "greedy_equal": int(equal),
        "prompts": len(prompts),
        "load_average": os.getloadavg()[0],
    }


# ----------------------------------------------------------------------------- the bars


def logit_bar(what: str, diff: float, tol: float, lossy: float, n: int, note: str) -> dict:
    """max |Δ logit| in units of the tolerance (the card prints three decimals: 1.0e-05 would read 0.000),
    passing below 1; the fp16-rounded export's Δ in the same units is the baseline it must reject."""
    return make_bar(
        f"max |Δ logit| / tolerance {tol:g}, 03's GPT vs {what}",
        diff / tol,
        threshold=1.0,
        direction="lower",
        baseline=None if lossy is None else lossy / tol,
        baseline_name="the same weights rounded to fp16 before export (a lossy export the bar must reject)",
        n=n,
        note=f"max |Δ logit| {diff:.1e}{'' if lossy is None else f', fp16-rounded {lossy:.1e}'}; {note}",
    )


def int8_bar(rows: dict) -> dict:
    r, ref = rows["onnxruntime int8 (quantize_dynamic)"], rows["pytorch int8 (07 QuantLinear)"]
    return make_bar(
        "ONNX Runtime INT8 (dynamic) test-loss change vs fp32 (nats/token)",
        r["loss_change"],
        threshold=INT8_MAX_LOSS,
        direction="lower",
        baseline=ref["loss_change"],
        baseline_name="07's own INT8 (per-channel QuantLinear)",
        interval=r["loss_change_interval"],
        note="paired bootstrap over test windows; goal +1 % perplexity (issue 14); "
        f"tokens/s x{r['tokens_per_s'] / rows['onnxruntime fp32']['tokens_per_s']:.2f} of ONNX fp32, "
        f"x{r['tokens_per_s'] / rows['pytorch fp32']['tokens_per_s']:.2f} of PyTorch eager fp32",
    )


def bars_of(hf, onnx, cfg) -> list:
    bars = []
    fp16 = hf["lossy_max_abs_logit_diff"]["fp16"] if hf else None
    if hf:
        note = f"greedy tokens equal on {hf['greedy_equal']}/{hf['prompts']} prompts; bf16-rounded: {hf['lossy_max_abs_logit_diff']['bf16']:.2e}"
        bars.append(
            logit_bar(
                "transformers' load of the export",
                hf["max_abs_logit_diff"],
                cfg.tolerance,
                fp16,
                hf["logits_compared"],
                note,
            )
        )
    if onnx:
        r = onnx["rows"]["onnxruntime fp32"]
        note = f"teacher-forced through the KV cache; greedy tokens equal on {onnx['greedy_equal']}/{onnx['prompts']} prompts"
        bars.append(
            logit_bar(
                "the ONNX graph in onnxruntime", r["max_abs_logit_diff"], cfg.tolerance, fp16, None, note
            )
        )
        bars.append(int8_bar(onnx["rows"]))
    return bars


def table(onnx) -> str:
    rows = [
        {
            "runtime": name,
            "test loss": f"{r['loss']:.4f}",
            "change [95 % interval]": f"{r['loss_change']:+.4f} [{r['loss_change_interval'][0]:+.4f}, {r['loss_change_interval'][1]:+.4f}]",
            "top-1 agree": f"{r['top1_agree']:.3f}",
            "max |Δ logit|": f"{r['max_abs_logit_diff']:.2e}",
            "weights MB": f"{r['weight_bytes'] / 1e6:.2f}",
            "tokens/s": f"{r['tokens_per_s']:.0f}",
            "same greedy tokens": str(r["greedy_equal"]),
        }
        for name, r in onnx["rows"].items()
    ]
    return markdown_table(rows, list(rows[0]))


# ----------------------------------------------------------------------------- the stage


def round_trip(cfg: RoundTripConfig, argv=None) -> dict:
    """Export, reload, compare (module docstring); writes <out>/outcome.json and returns it."""
    if not cfg.run:
        raise UserError("pass --run runs/<name> (a run with pretrain/, tokenizer/ and tokens/)")
    layout = RunLayout(cfg.run)
    for folder in ("tokenizer", "tokens", "pretrain"):
        check_artifact(layout.folder(folder), made_by=layout.made_by(folder))
    out = Path(cfg.out) if cfg.out else layout.root / "export"
    with fresh_output(out, cfg.overwrite) as tmp:
        outcome = round_trip_into(tmp, cfg, argv)
    print(outcome.get("table", ""))
    print(outcome["headline"])
    return outcome


def round_trip_into(tmp: Path, cfg: RoundTripConfig, argv) -> dict:
    t0, layout = time.time(), RunLayout(cfg.run)
    model, windows, what = run_model_and_windows(cfg.run, cfg.windows)
    if cfg.prompt_len + cfg.new_tokens > model.cfg.block_size:
        raise UserError(f"--prompt-len + --new-tokens = {cfg.prompt_len + cfg.new_tokens} exceeds the model's "
                        f"context {model.cfg.block_size}; lower them")  # fmt: skip
    prompts = [windows[i % len(windows), : cfg.prompt_len].tolist() for i in range(cfg.prompts)]
    ckpt = layout.pretrain / ("best.pt" if (layout.pretrain / "best.pt").is_file() else "ckpt.pt")
    skipped = {}
    hf = onnx = None
    if missing(HF_PACKAGES):
        skipped["transformers"] = f"{', '.join(missing(HF_PACKAGES))} not installed"
    else:
        hf = hf_round_trip(model, ckpt, layout.tokenizer, windows, prompts, cfg, tmp)
    if missing(ONNX_PACKAGES):
        skipped["onnxruntime"] = f"{', '.join(missing(ONNX_PACKAGES))} not installed"
    else:
        onnx = onnx_round_trip(model, windows, prompts, cfg, tmp)
    bars = bars_of(hf, onnx, cfg)
    skip_text = "; ".join(
        f"{k} skipped ({v}; pip install -r requirements-export.txt)" for k, v in skipped.items()
    )
    parts = []
    if hf:
        parts.append(f"transformers: max |Δ logit| {hf['max_abs_logit_diff']:.1e} (fp16-rounded export "
                     f"{hf['lossy_max_abs_logit_diff']['fp16']:.1e}), greedy equal {hf['greedy_equal']}/{hf['prompts']}")  # fmt: skip
    if onnx:
        r = onnx["rows"]
        parts.append(f"onnxruntime: {r['onnxruntime fp32']['max_abs_logit_diff']:.1e}, greedy equal {onnx['greedy_equal']}/{onnx['prompts']}; "
                     f"INT8 loss {r['onnxruntime int8 (quantize_dynamic)']['loss_change']:+.4f}, tokens/s "
                     f"x{r['onnxruntime int8 (quantize_dynamic)']['tokens_per_s'] / r['onnxruntime fp32']['tokens_per_s']:.2f} of ONNX fp32")  # fmt: skip
    headline = "; ".join(parts + ([skip_text] if skip_text else [])) if parts else f"skipped: {skip_text}"
    outcome = {
        "data": what,
        "checkpoint": str(ckpt),
        "tolerance": cfg.tolerance,
        "transformers": hf,
        "onnx": onnx,
        "skipped": skipped,
        "seconds": time.time() - t0,
        "headline": headline,
        "bar": bars[0] if bars else None,
        "bars": bars,
    }
    if not bars:
        outcome["table_only"] = f"skipped: {skip_text}"
    if onnx:
        outcome["table"] = table(onnx)
        (tmp / "table.md").write_text(outcome["table"] + "\n")
    write_json(tmp / "outcome.json", outcome)
    write_manifest(
        tmp,
        stage="07_distill_quant",
        command=command_line(__file__, argv),
        config=asdict(cfg),
        inputs=[layout.pretrain, layout.tokenizer, layout.tokens],
    )
    return outcome


def main(argv=None):
    cfg, _ = parse_config(RoundTripConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    round_trip(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
