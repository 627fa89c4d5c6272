"""Compare the fine-tuning methods on one base model: what each buys (held-out accuracy) and what it
costs (parameters, file size, time, memory, forgetting). The table this stage exists for.

    python 05_sft_lora/compare.py --run runs/tiny                        # 6 methods at their usual lr
    python 05_sft_lora/compare.py --run runs/tiny --lr-factors 1,3       # each at 2 learning rates
    python 05_sft_lora/compare.py --run runs/tiny --methods full,prefix --lr-factors 1 --jobs 2
    python 05_sft_lora/compare.py --run runs/tiny --resume               # after a kill: keeps finished runs

Each method (full fine-tuning, LoRA r = 4/8/16, prefix tuning, bottleneck adapters) trains once per
learning rate of a small sweep (its usual rate times `--lr-factors`), each run an `sft.py` process
with the same seed, data and step budget. The rate is chosen per method on a **validation split of
the training subjects** (`--val-frac` of them, never trained on, answered greedily: answer accuracy,
then exact match), never on the held-out subjects the table reports. For the chosen run:

- held-out answer accuracy and exact match, each with a 95 % Wilson interval;
- the bar (non-inferiority, margin 0.05): the method's held-out answer accuracy minus full
  fine-tuning's, paired over the questions, 95 % bootstrap interval wholly above -0.05; and, as
  before, exact match minus the strongest cheap baseline (sft_baselines.sft_bar) wholly above 0;
- trainable parameters while training, numbers stored, and the saved file's size;
- forgetting on the pretraining **test** split (04's heldout_loss.window_token_losses, every
  window): Δ = mean loss after - before, 95 % paired bootstrap over windows. "LoRA learns less and
  forgets less" (Biderman et al. 2024) is checked at matched accuracy: per method the least-forgetting
  sweep run whose validation accuracy is within 0.05 of full fine-tuning's, against full's chosen run.

Writes runs/<name>/sft_compare/: split/ (the train and validation files), one sft.py folder per
run (runs/<method>@<lr>/), compare.json, compare.png, outcome.json, manifest.json; prints the tables.
It is built in `.sft_compare.sweep/` beside it and swapped in when complete, so the last good table
stays until then; a killed comparison continues with `--resume`: finished runs are kept, the run it
was in continues from its saved state (sft.py --resume), bit-exactly.

Peak memory on a CPU: each run is a fresh process and reports how much its peak resident set size
(`getrusage` ru_maxrss) grew during training; tracemalloc cannot see torch's C++ allocations. The
growth is coarse, so the exact training-state size (weights + gradients + AdamW's two moments of the
trainable part) is given beside it. On a GPU use torch.cuda.max_memory_allocated instead.

Interview questions it answers:
- Which PEFT method would you pick and why? (LoRA: about the accuracy of full fine-tuning at a few
  percent of the parameters, no inference cost after merging, kilobyte adapters per task)
- Does a larger LoRA rank help? (up to a point: the update a task needs is usually low-rank)
- Why sweep the learning rate per method? (PEFT methods want rates 10-30x full fine-tuning's; one
  shared rate compares a tuned method with a mistuned one)
- Why choose on a validation split of the training half? (choosing on the reported set makes its
  number the maximum of several noisy ones: optimistic by construction)
- Does LoRA forget less? (compare at matched accuracy, not at one learning rate: a higher rate makes
  any method learn more and forget more; the forgetting table below)
"""

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.devices import resolve_device
from common.files import markdown_table, read_json, read_jsonl, write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import claim_output, run_lock, swap_in, write_manifest
from checkpoint_io import config_differences, load_checkpoint  # 03_model
from gpt import GPT  # 03_model
from batches import load_shards, load_test_shard  # 04_pretrain
from heldout_loss import window_token_losses  # 04_pretrain

from finetuned import generate_answers, load_finetuned, run_sft, score
from sft_data import read_conversations, split_validation
from compare_outcome import (
    COLUMNS,
    FORGET_COLUMNS,
    SWEEP_COLUMNS,
    baseline_bars,
    correctness,
    matched_forgetting,
    method_rows,
    noninferiority_bar,
    outcome_block,
    plot,
    sweep_rows,
    val_key,
)

METHODS = {  # name -> (sft.py flags, the usual learning rate the sweep multiplies)
    "full": (["--method", "full"], 3e-4),
    "lora_r4": (["--method", "lora", "--lora-r", "4"], 3e-3),
    "lora_r8": (["--method", "lora", "--lora-r", "8"], 3e-3),
    "lora_r16": (["--method", "lora", "--lora-r", "16"], 3e-3),
    "prefix": (["--method", "prefix"], 2e-2),  # chosen on validation by a x0.5,1,2 sweep (sft.DEFAULT_LR)
    "adapter": (["--method", "adapter"], 3e-3),
    "full_mix": (["--method", "full", "--mix-pretrain", "0.25"], 3e-4),  # not in the default list:
    "lora_r8_mix": (["--method", "lora", "--lora-r", "8", "--mix-pretrain", "0.25"], 3e-3),  # the remedy
}
DEFAULT_METHODS = ["full", "lora_r4", "lora_r8", "lora_r16", "prefix", "adapter"]


@dataclass
class CompareConfig:
    run: str = option("", "run folder runs/<name> with pretrain/, tokenizer/, data/")
    out: str = option("", "output folder; empty = <run>/sft_compare")
    methods: list = option(DEFAULT_METHODS, f"methods to run, in order, from {','.join(METHODS)}", sep=",")
    lr_factors: list = option(
        [1.0],
        "the sweep: each method's usual lr times these (1 = its usual rate only, the tiny run's "
        "15-minute budget; 1,3 or 0.3,1,3 for a sweep)",
        sep=",",
    )
    steps: int = option(120, "optimizer steps per run (the same budget for all)", min=1)
    seed: int = option(1337, "the same seed for every run")
    val_frac: float = option(0.15, "share of training subjects held back to choose the lr", min=0.01, max=0.5)
    eval_limit: int = option(0, "held-out conversations answered greedily (0 = all)", min=0)
    max_new_tokens: int = option(32, "longest generated answer", min=1)
    test_windows: int = option(0, "pretraining test windows for forgetting (0 = the whole split)", min=0)
    jobs: int = option(1, "sft.py runs at once (each in its own process)", min=1)
    sft_args: str = option("", "extra flags passed to every sft.py run, e.g. '--batch-size 8'")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the comparison already in the output folder")
    resume: bool = option(
        False,
        "continue a killed comparison: its finished sft.py runs are kept, the one it was in continues "
        "from its saved state (sft.py --resume), the rest run",
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        methods=["lora_r4"],
        lr_factors=[1.0],
        steps=4,
        eval_limit=4,
        max_new_tokens=8,
        test_windows=4,
        sft_args="--batch-size 4 --warmup-steps 1 --eval-interval 2 --forget-windows 2 --shots 0",
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
    if not cfg.lr_factors or any(f <= 0 for f in cfg.lr_factors):
        raise UserError(f"--lr-factors {cfg.lr_factors}: give one or more numbers > 0, e.g. 0.3,1,3")


def sweep(cfg) -> list:
    """[(key, method, lr)]: every method at every learning rate of the sweep, in order."""
    return [
        (f"{m}@{METHODS[m][1] * f:.2g}", m, float(f"{METHODS[m][1] * f:.2g}"))
        for m in cfg.methods
        for f in cfg.lr_factors
    ]


def write_split(cfg, folder: Path) -> tuple:
    """(train file, validation records): the training file's subjects split once (sft_data's rule), so
    every run trains on the same part and the sweep is chosen on the same validation subjects."""
    records = read_conversations(task_file(cfg.run, "", "sft_train.jsonl"))
    train, val = split_validation([{"record": r} for r in records], cfg.val_frac, cfg.seed)
    if not train or not val:
        raise UserError(f"--val-frac {cfg.val_frac} leaves no training or no validation subjects")
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", [e["record"] for e in train])
    write_jsonl(folder / "val.jsonl", [e["record"] for e in val])
    return folder / "train.jsonl", [e["record"] for e in val]


# Settings that do not change what the comparison computes: a resumed one may differ in them.
RUN_CONTROL = ("resume", "overwrite", "jobs")


def sweep_folder(out: Path, cfg) -> Path:
    """The folder the sweep is built in, beside <out>: `.<name>.sweep/` (split/, runs/<key>/ one sft.py
    run each, sweep.json the settings). A fresh comparison starts it empty; --resume keeps it, refusing
    one made with other settings. It is not a `.tmp` folder: the lock step of the next run leaves it."""
    import shutil

    work = out.parent / f".{out.name}.sweep"
    settings = {k: v for k, v in asdict(cfg).items() if k not in RUN_CONTROL}
    if not cfg.resume:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_json(work / "sweep.json", settings)
        return work
    if not (work / "sweep.json").is_file():
        raise UserError(
            f"--resume: no interrupted comparison of {out} to continue; start one without --resume"
        )
    diffs = config_differences(read_json(work / "sweep.json"), settings)
    if diffs:
        raise UserError(
            f"--resume: the interrupted comparison of {out} used other settings ({'; '.join(diffs)}); "
            "pass the same flags, or start again without --resume"
        )
    return work


def run_method(cfg, method, lr, train_file, out, eval_base, log=None) -> dict:
    """One sft.py run in a fresh process; returns its outcome.json. With `log`, its output goes there.
    A run already finished (a killed comparison's, kept by --resume) is not run again; one that was
    killed midway continues from its saved state (sft.py --resume)."""
    if (out / "manifest.json").is_file():
        print(f"--- {method} lr {lr:g}: finished before the interruption, kept", flush=True)
        return read_json(out / "outcome.json")
    resume = (out.parent / f".{out.name}.resume.pt").is_file()  # sft.py's RunState file
    args = [
        *("--run", cfg.run, "--out", str(out), "--train-file", str(train_file)),
        *METHODS[method][0],
        *("--lr", f"{lr:g}", "--steps", str(cfg.steps), "--seed", str(cfg.seed)),
        *("--eval-limit", str(cfg.eval_limit), "--max-new-tokens", str(cfg.max_new_tokens)),
        *("--device", cfg.device, "--eval-base" if eval_base else "--no-eval-base"),
        *cfg.sft_args.split(),
        *(["--resume"] if resume else []),
    ]
    print(f"--- {method} lr {lr:g}: sft.py {' '.join(args)}", flush=True)
    run_sft(args, log, what=f"{method} at lr {lr:g}")
    return read_json(out / "outcome.json")


def stored_params(path: Path) -> int:
    """Numbers in a saved file (tied tensors once): what a user downloads per task."""
    state = load_checkpoint(path)["model"]
    return sum(v.numel() for v in {v.data_ptr(): v for v in state.values() if v.is_floating_point()}.values())


@torch.no_grad()
def evaluate_run(folder: Path, val_records, held_records, test, cfg, device) -> dict:
    """What compare adds to an sft.py run: validation-split scores (they choose the lr), per-question
    held-out answer accuracy and exact match (for paired intervals), and the per-window loss on the
    pretraining test split (forgetting)."""
    model, tok, _ = load_finetuned(folder, device)
    model.eval()
    val_answers = generate_answers(
        model, tok, [r["messages"] for r in val_records], cfg.max_new_tokens, device
    )
    preds = read_jsonl(folder / "predictions.jsonl", ("reference", "tuned"))
    return {
        "val": score(val_answers, val_records),
        **correctness([p["tuned"] for p in preds], held_records),
        "test_window_loss": window_token_losses(model, test, model.cfg.block_size, device).mean(1).tolist(),
    }


def compare(cfg, argv=None) -> dict:
    """Run the sweep, evaluate it, write <out>/ (module docstring); returns compare.json's content."""
    check_compare_config(cfg)
    run = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else run / "sft_compare"
    grid = sweep(cfg)
    with run_lock(out):
        claim_output(out, cfg.overwrite or cfg.resume, remove=False)
        work = sweep_folder(out, cfg)  # kept across a kill; swapped in as <out> when complete
        train_file = work / "split" / "train.jsonl"
        if not train_file.is_file():
            write_split(cfg, work / "split")
        (work / "runs").mkdir(exist_ok=True)
        log = lambda key: work / "runs" / f"{key}.log" if cfg.jobs > 1 else None
        with ThreadPoolExecutor(cfg.jobs) as pool:
            futures = {
                key: pool.submit(run_method, cfg, m, lr, train_file, work / "runs" / key, i == 0, log(key))
                for i, (key, m, lr) in enumerate(grid)
            }
            for f in futures.values():
                f.result()
        result, tables = summarize(cfg, work)
        write_manifest(
            work,
            stage="05_sft_lora",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=[
                RunLayout(run).pretrain,
                RunLayout(run).tokenizer,
                RunLayout(run).data,
                RunLayout(run).tokens,
            ],
        )
        swap_in(work, out)
    print("## each method at the learning rate its validation split chose\n\n" + tables["methods"])
    print("\n## the sweep (chosen on validation answer accuracy, training subjects)\n\n" + tables["sweep"])
    if tables["forgetting"]:
        print(f"\n## forgetting at matched accuracy (pretraining {result['forgetting_split']} split)\n")
        print(tables["forgetting"])
    print(f"wrote {out}/ (compare.json, compare.png, one sft run per method and lr)")
    return result


def summarize(cfg, folder: Path) -> tuple:
    """(compare.json's content, printed tables) from the finished sft.py runs in folder/runs/: evaluate
    each run, choose each method's lr on the validation split, compute the bars; writes compare.json,
    outcome.json and compare.png into `folder`."""
    run, device, grid = Path(cfg.run), resolve_device(cfg.device), sweep(cfg)
    runs = lambda key: folder / "runs" / key
    outcomes = {key: read_json(runs(key) / "outcome.json") for key, _, _ in grid}
    val_records = read_conversations(folder / "split" / "val.jsonl")
    held_records = read_conversations(task_file(cfg.run, "", "sft_heldout.jsonl"))
    held_records = held_records[: cfg.eval_limit] if cfg.eval_limit else held_records
    first = runs(grid[0][0])  # the run that also answered with the base model and the baselines
    base = GPT.from_checkpoint(first / outcomes[grid[0][0]]["base_checkpoint"], map_location=device)
    T = base.cfg.block_size
    _, val_shard, meta = load_shards(run, T)
    test, split = load_test_shard(run, meta), "test"
    if test is None:  # a run from before 02 wrote a test split: compare.json says which split
        test, split = val_shard, "val"
        print(f"{run}/tokens has no test.bin: forgetting is measured on the val split")
    test = test[: cfg.test_windows * T + 1] if cfg.test_windows else test
    base_windows = window_token_losses(base, test, T, device).mean(1)
    evals = {key: evaluate_run(runs(key), val_records, held_records, test, cfg, device) for key, _, _ in grid}
    chosen = {
        m: max((k for k, mm, _ in grid if mm == m), key=lambda k: val_key(evals[k])) for m in cfg.methods
    }
    bars = baseline_bars({m: runs(k) for m, k in chosen.items()}, first)
    if "full" in chosen:
        bars |= {
            f"{m} vs full": noninferiority_bar(m, evals[k], evals[chosen["full"]])
            for m, k in chosen.items()
            if m != "full"
        }
    base_preds = read_jsonl(first / "predictions.jsonl", ("reference", "base, zero-shot"))
    base_correct = correctness([p["base, zero-shot"] for p in base_preds], held_records)
    for k in chosen.values():  # every chosen run carries the base's scores (report.py reads them there)
        outcomes[k]["heldout_base"] = outcomes[grid[0][0]]["heldout_base"]
    files = {key: stored_params(runs(key) / outcomes[key]["file"]) for key in chosen.values()}
    rows = method_rows(chosen, outcomes, evals, bars, base_windows, files, base_correct)
    srows = sweep_rows(grid, evals, chosen, base_windows)
    frows, fsummary = matched_forgetting(grid, evals, chosen, base_windows)
    tables = {
        "methods": markdown_table(rows, [c for c in COLUMNS if any(c in r for r in rows)]),
        "sweep": markdown_table(srows, SWEEP_COLUMNS),
        "forgetting": markdown_table(frows, FORGET_COLUMNS) if frows else "",
    }
    result = {
        "rows": rows,
        "sweep": srows,
        "forgetting": frows,
        "forgetting_summary": fsummary,
        "forgetting_split": split,
        "base_forgetting_loss": float(np.mean(base_windows)),
        "chosen": chosen,
        "bars": bars,
        "outcomes": {m: outcomes[k] for m, k in chosen.items()},  # the chosen run per method
        "runs": outcomes,  # every run of the sweep
        "evals": evals,
        "config": asdict(cfg),
    }
    write_json(folder / "compare.json", result)
    write_json(folder / "outcome.json", outcome_block(chosen, evals, bars))
    plot(chosen, grid, evals, base_windows, folder / "compare.png")
    return result, tables


def main(argv=None):
    cfg, _ = parse_config(CompareConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    compare(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
