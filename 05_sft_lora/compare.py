"""Compare the fine-tuning methods on one base model: what each buys (held-out accuracy) and costs
(parameters, time, memory, forgetting, file size). The table this stage exists for.

    python 05_sft_lora/compare.py --run runs/tiny
    python 05_sft_lora/compare.py --run runs/tiny --methods full,lora_r8 --steps 50

Runs `sft.py` once per method, each in its own process with the same seed, data and step budget:
base model (the template only, no training), full fine-tuning, LoRA r = 8 (α = 16), prefix tuning,
bottleneck adapters by default; `--methods` adds LoRA r = 4 and 16 (rank barely matters at this
scale), the pretraining mix and LoRA at full fine-tuning's learning rate. Writes runs/<name>/sft_compare/: one sft.py run folder per
method, compare.json, compare.png (bars), manifest.json; prints the table as markdown.

Peak memory on a CPU: each method runs in a fresh process and reports how much its peak resident
set size (`getrusage` ru_maxrss) grew during training: activations, gradients and optimizer state,
on top of the loaded model and data. tracemalloc would not see it: it tracks Python's allocator,
not the tensor memory torch allocates in C++. The growth is coarse (the allocator reuses freed
pages, and glibc keeps them), so the table also gives the exact bytes of the training state:
weights + gradients + AdamW's two moments for the trainable part. On a GPU use
torch.cuda.max_memory_allocated instead.

Interview questions it answers:
- Which PEFT method would you pick and why? (LoRA: about the accuracy of full fine-tuning at ~1%
  trainable parameters, no inference cost after merging, kilobyte adapters per task)
- Does a larger LoRA rank help? (up to a point: the update a task needs is usually low-rank;
  compare r = 4, 8, 16 here)
- Does PEFT forget less? (at the same learning rate, yes: fewer parameters move, and the embeddings
  and most directions of each weight matrix cannot; at LoRA's usual 10x larger rate it can forget
  more: compare the forgetting column of lora_r8 and lora_r8_lr3e-4 beside full)
"""

import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import markdown_table, pyplot, read_json, read_jsonl, save_figure, write_json
from common.layout import RunLayout
from common.runs import claim_output, run_lock, staged_dir, write_manifest
from common.outcome import make_bar

from sft_baselines import sft_bar

METHODS = {  # name -> sft.py flags
    "full": ["--method", "full"],
    "lora_r4": ["--method", "lora", "--lora-r", "4"],
    "lora_r8": ["--method", "lora", "--lora-r", "8"],
    "lora_r16": ["--method", "lora", "--lora-r", "16"],
    "prefix": ["--method", "prefix"],
    "adapter": ["--method", "adapter"],
    "full_mix": ["--method", "full", "--mix-pretrain", "0.25"],  # not in the default list: the
    "lora_r8_mix": ["--method", "lora", "--lora-r", "8", "--mix-pretrain", "0.25"],  # forgetting remedy,
    "lora_r8_lr3e-4": [
        "--method",
        "lora",
        "--lora-r",
        "8",
        "--lr",
        "3e-4",
    ],  # and LoRA at full's learning rate
}
DEFAULT_METHODS = [
    "full",
    "lora_r8",
    "prefix",
    "adapter",
]  # lora_r4 / lora_r16 by --methods: rank barely matters here


@dataclass
class CompareConfig:
    run: str = option("", "run folder runs/<name> with pretrain/, tokenizer/, data/")
    out: str = option("", "output folder; empty = <run>/sft_compare")
    methods: list = option(DEFAULT_METHODS, f"methods to run, in order, from {','.join(METHODS)}", sep=",")
    steps: int = option(120, "optimizer steps per method (the same budget for all)", min=1)
    seed: int = option(1337, "the same seed for every method")
    eval_limit: int = option(200, "held-out conversations answered greedily (0 = all)", min=0)
    sft_args: str = option("", "extra flags passed to every sft.py run, e.g. '--batch-size 8'")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the comparison already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        methods=["lora_r4"],
        steps=4,
        eval_limit=4,
        sft_args="--batch-size 4 --warmup-steps 1 --eval-interval 2 --max-new-tokens 8 --forget-windows 2",
    ),
}


def check_compare_config(cfg):
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 04_pretrain wrote pretrain/ into)")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise UserError(
            f"--methods {','.join(cfg.methods) or '(none)'}: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {', '.join(METHODS)}"
        )


def run_method(cfg, name, out, eval_base) -> dict:
    """One sft.py run in a fresh process; returns its outcome.json."""
    cmd = [
        sys.executable,
        str(REPO / "05_sft_lora" / "sft.py"),
        "--run",
        cfg.run,
        "--out",
        str(out),
        *METHODS[name],
        "--steps",
        str(cfg.steps),
        "--seed",
        str(cfg.seed),
        "--eval-limit",
        str(cfg.eval_limit),
        "--device",
        cfg.device,
        "--eval-base" if eval_base else "--no-eval-base",
        *cfg.sft_args.split(),
    ]
    print(f"--- {name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise UserError(f"sft.py for {name} failed: {last.removeprefix('error: ')}")
    return read_json(out / "outcome.json")


def method_bars(folders: dict) -> dict:
    """{method: bar}: each method's held-out exact match minus the strongest baseline's, paired over the
    questions (sft_baselines.sft_bar); the baselines' answers are the first run's (it answered with them)."""
    preds = {m: read_jsonl(Path(f) / "predictions.jsonl", ("reference", "tuned")) for m, f in folders.items()}
    first = next(iter(preds.values()))
    names = [k for k in first[0] if k not in ("question", "reference", "tuned")]
    held = [{"messages": [{"role": "assistant", "content": p["reference"]}]} for p in first]
    baselines = {n: [p[n] for p in first] for n in names}
    return {m: sft_bar([p["tuned"] for p in ps], baselines, held, m)[0] for m, ps in preds.items()}


def table_rows(outcomes: dict, bars: dict = None) -> list:
    """One row per method plus the base model's (from the first run, which answered with it too)."""
    first = next(iter(outcomes.values()))
    pct = lambda c: f"{c['trainable']:,} ({c['percent']:.2f}%)"
    rows = [
        {
            "method": "base (template only)",
            "trainable params": "0",
            "exact match": f"{first['heldout_base']['exact_match']:.3f}",
            "token F1": f"{first['heldout_base']['token_f1']:.3f}",
            "answer acc": f"{first['heldout_base'].get('answer_acc', float('nan')):.3f}",
            "forgetting": "0",
        }
    ]
    for name, o in outcomes.items():
        t = o["heldout_tuned"]
        rows.append(
            {
                "method": name,
                "trainable params": pct(o["params"]),
                "wall s": f"{o['train_s']:.0f}",
                "CPU s": f"{o['train_cpu_s']:.0f}",
                "RSS growth MB": f"{o['train_rss_growth_mb']:.0f}",
                "train state MB": f"{o['train_state_mb']:.1f}",
                "exact match": f"{t['exact_match']:.3f}",
                "token F1": f"{t['token_f1']:.3f}",
                "answer acc": f"{t.get('answer_acc', float('nan')):.3f}",
                "forgetting": f"{o['corpus_val_loss']['change']:+.3f}",
                "file KiB": f"{o['file_kib']:.0f}",
            }
        )
        b = (bars or {}).get(name)
        if b:
            rows[-1]["EM minus best baseline [95% CI]"] = (
                f"{b['value']:+.3f} [{b['interval'][0]:+.3f}, {b['interval'][1]:+.3f}] vs {b['baseline_name']}"
            )
            rows[-1]["beats baselines"] = "yes" if b["passed"] else "no"
    return rows


COLUMNS = [
    "method",
    "trainable params",
    "wall s",
    "CPU s",
    "RSS growth MB",
    "train state MB",
    "exact match",
    "token F1",
    "answer acc",
    "forgetting",
    "file KiB",
    "EM minus best baseline [95% CI]",
    "beats baselines",
]


def plot(outcomes, path):
    plt = pyplot()
    names = ["base"] + list(outcomes)
    first = next(iter(outcomes.values()))
    evals = [first["heldout_base"]] + [o["heldout_tuned"] for o in outcomes.values()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    xs, width = np.arange(len(names)), 0.27
    for i, key in enumerate(("exact_match", "token_f1", "answer_acc")):
        ax1.bar(xs + (i - 1) * width, [e.get(key, 0) for e in evals], width, label=key)
    ax1.set(
        xticks=xs,
        xticklabels=names,
        ylim=(0, 1),
        ylabel="share of held-out questions",
        title="held-out subjects, greedy answers",
    )
    ax1.legend()
    ax2.bar(xs[1:], [o["corpus_val_loss"]["change"] for o in outcomes.values()], color="tab:red")
    ax2.axhline(0, c="gray", lw=0.8)
    ax2.set(
        xticks=xs[1:],
        xticklabels=names[1:],
        ylabel="Δ pretraining val loss (nats/token)",
        title="forgetting (higher = more forgotten)",
    )
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)


def outcome_block(outs: dict) -> dict:
    """{"headline", "bar"} of outcome.json (common/outcome.py): every method's held-out exact match
    above the base model's; the bar's value is the worst method's."""
    base = next(iter(outs.values()))["heldout_base"]
    beats = {m: v["heldout_tuned"]["exact_match"] > base["exact_match"] for m, v in outs.items()}
    best = max(outs, key=lambda m: outs[m]["heldout_tuned"]["exact_match"])
    headline = (
        f"best {best}: exact match {outs[best]['heldout_tuned']['exact_match']:.3f} (base "
        f"{base['exact_match']:.3f}); {sum(beats.values())} of {len(beats)} methods beat the base"
    )
    bar = make_bar(
        "held-out exact match of the worst method",
        min(v["heldout_tuned"]["exact_match"] for v in outs.values()),
        threshold=base["exact_match"],
        direction="higher",
        baseline=base["exact_match"],
        baseline_name="the base model with the chat template",
        note="every method's exact match above the base model's",
    )
    return {"headline": headline, "bar": bar}


def main(argv=None):
    cfg, _ = parse_config(CompareConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    check_compare_config(cfg)
    run = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else run / "sft_compare"
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)
        with staged_dir(out) as tmp:
            outcomes = {m: run_method(cfg, m, tmp / m, eval_base=i == 0) for i, m in enumerate(cfg.methods)}
            bars = method_bars({m: tmp / m for m in outcomes})
            rows = table_rows(outcomes, bars)
            table = markdown_table(rows, COLUMNS)
            write_json(
                tmp / "compare.json",
                {"rows": rows, "bars": bars, "outcomes": outcomes, "config": asdict(cfg)},
            )
            block = outcome_block(outcomes)
            if bars:  # every method must beat the strongest baseline: the weakest method's bar decides
                block["bar"] = min(bars.values(), key=lambda b: b["interval"][0])
                block["bars"] = list(bars.values())
            write_json(tmp / "outcome.json", block)
            plot(outcomes, tmp / "compare.png")
            write_manifest(
                tmp,
                stage="05_sft_lora",
                command=command_line(__file__, argv),
                config=asdict(cfg),
                inputs=[RunLayout(run).pretrain, RunLayout(run).tokenizer, RunLayout(run).data],
            )
    print(table)
    print(f"wrote {out}/ (compare.json, compare.png, one sft run per method)")


if __name__ == "__main__":
    run_cli(main)
