"""Overfitting on purpose, then closing the gap: dropout, weight decay, early stopping.

    python 04_pretrain/overfit.py --data runs/tiny            # 4 runs, a few minutes on a laptop CPU

A model far too big for its data (by default the first 16k train tokens, repeated for many epochs)
memorizes them: its loss on those train windows keeps falling while the val loss turns up. The
same run is repeated with one regularizer at a time, and with all of them:

- dropout      zero a random fraction of activations in training: no unit can rely on another
- weight decay shrink every matrix toward 0 each step (AdamW's decoupled decay), limiting capacity
- early stop   keep the weights from the eval with the lowest val loss (no extra cost at all):
               pretrain.py writes them to best.pt; the `early stop` row loads that file and measures it

Prints, per variant: final train loss (eval mode, on the slice it trains on), final val loss,
the gap between them, the best val loss and its step, and how much of the baseline's final val-loss
excess (final val - best val of the baseline) each technique removes. Saves overfit.png (train and
val curves) and overfit.json under runs/<name>/overfit/.

The bar (`regularization_bar`): early stopping is free, so a regularizer earns its place only by
beating it. The regularized variant with the lowest final val loss is measured on the whole test
split against the baseline's best.pt, with a paired bootstrap interval over windows; the early-stop
row is that threshold, never a contender (it would close 100 % of the excess by construction).

Interview questions it answers:
- How do you tell overfitting from underfitting? (train loss falls and val loss rises = overfit;
  both high = underfit. The gap is the generalization error.)
- Why does modern LLM pretraining use almost no dropout? (one epoch over trillions of tokens never
  repeats data, so there is nothing to memorize; dropout just slows learning. It matters again when
  data is repeated: fine-tuning, small corpora, this experiment.)
- Is weight decay a regularizer in AdamW? (partly: it bounds the weight norm; in LLMs it mostly
  matters through its interaction with the learning rate and normalization layers.)
"""

import dataclasses
import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from common.layout import RunLayout
from common.runs import check_artifact, fresh_output, write_manifest
from common.stats import paired_bootstrap_interval
from common.outcome import make_bar
from common.devices import resolve_device
from checkpoint_io import load_checkpoint  # 03_model
from gpt import GPT  # 03_model

from pretrain_loop import TrainConfig, evaluate, train
from batches import load_shards, load_test_shard
from heldout_loss import window_token_losses
from train_state import BEST, CKPT

WARMUP = 20


@dataclasses.dataclass
class OverfitConfig:
    data: str = option("", "run folder runs/<name> holding tokens/ from 02_tokenizer (required)")
    train_tokens: int = option(16_000, "the small slice of train tokens the big model memorizes", min=1)
    n_layer: int = option(4, "transformer blocks", min=1)
    n_embd: int = option(128, "model width", min=2)
    n_head: int = option(4, "attention heads", min=1)
    block_size: int = option(64, "context length", min=2)
    batch_size: int = option(16, "sequences per step", min=1)
    max_steps: int = option(
        300, "steps per variant (300 x 16 x 64 = ~19 passes over 16k tokens)", min=WARMUP + 1
    )
    eval_interval: int = option(25, "steps between evals of train and val loss", min=1)
    lr: float = option(2e-3, "peak learning rate (cosine to lr/10)", min=0.0)
    dropout: float = option(0.2, "dropout of the dropout variants", min=0.0, max=0.95)
    weight_decay: float = option(
        1.0,
        "weight decay of the decay variants (strong on purpose: AdamW's 0.1 barely shows in 300 steps)",
        min=0.0,
    )
    seed: int = option(1337, "initial weights, dropout and data order", min=0)
    overwrite: bool = option(False, "replace the results already in runs/<name>/overfit")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        train_tokens=2000,
        n_layer=1,
        n_embd=32,
        n_head=2,
        block_size=32,
        batch_size=4,
        max_steps=21,
        eval_interval=3,
    ),
}


def check_overfit_config(c: OverfitConfig):
    if not c.data:
        raise UserError("--data is required: the run folder runs/<name> with tokens/ from 02_tokenizer")
    if c.train_tokens < c.block_size * 4:
        raise UserError(
            f"--train-tokens {c.train_tokens} is too small for block_size {c.block_size}; "
            "use at least 4 windows' worth"
        )
    if c.lr <= 0:
        raise UserError(f"--lr {c.lr} must be > 0")


def variants(c: OverfitConfig) -> dict:
    """name -> TrainConfig overrides. `early stop` is the baseline's best.pt, evaluated again."""
    return {
        "baseline": dict(dropout=0.0, weight_decay=0.0),
        "dropout": dict(dropout=c.dropout, weight_decay=0.0),
        "weight decay": dict(dropout=0.0, weight_decay=c.weight_decay),
        "all three": dict(dropout=c.dropout, weight_decay=c.weight_decay),
    }


def curves(records):
    """(steps, train_eval_loss, val_loss) at the eval steps."""
    evals = [r for r in records if "val_loss" in r]
    return [r["step"] for r in evals], [r["train_eval_loss"] for r in evals], [r["val_loss"] for r in evals]


def summarize(name, steps, tr, va) -> dict:
    """The row of a variant's last eval (its final weights), with its best val loss and step."""
    best = min(range(len(va)), key=va.__getitem__)
    return {
        "variant": name,
        "train": tr[-1],
        "val": va[-1],
        "gap": va[-1] - tr[-1],
        "best_val": va[best],
        "best_step": steps[best],
        "final_step": steps[-1],
    }


def restored_best(cfg: TrainConfig) -> dict:
    """Early stopping's row: the weights pretrain.py kept in best.pt, loaded and measured again on the
    same train slice and val windows. (They equal the best eval's numbers: same weights, same text.)"""
    path, device = Path(cfg.out) / BEST, resolve_device(cfg.device)
    model = GPT.from_checkpoint(path, map_location=device)
    train_data, val_data, _ = load_shards(Path(cfg.data), cfg.block_size, cfg.train_tokens)
    n = cfg.eval_batches * cfg.batch_size
    tr, va = (
        evaluate(model, data, cfg.block_size, n, cfg.batch_size, device) for data in (train_data, val_data)
    )
    step = int(load_checkpoint(path)["step"])
    return {
        "variant": "early stop",
        "train": tr,
        "val": va,
        "gap": va - tr,
        "best_val": va,
        "best_step": step,
        "final_step": step,
        "weights": str(path),
    }


def run(c: OverfitConfig, out: Path) -> list:
    rows, series = [], {}
    for name, override in variants(c).items():
        cfg = TrainConfig(
            data=c.data,
            out=str(out / name.replace(" ", "_")),
            n_layer=c.n_layer,
            n_embd=c.n_embd,
            n_head=c.n_head,
            block_size=c.block_size,
            batch_size=c.batch_size,
            max_steps=c.max_steps,
            eval_interval=c.eval_interval,
            eval_batches=4,
            lr=c.lr,
            min_lr=c.lr / 10,
            warmup_steps=WARMUP,
            train_tokens=c.train_tokens,
            eval_train=True,
            seed=c.seed,
            log_interval=c.eval_interval,
            quiet=True,
            final_eval=False,
            **override,
        )
        print(f"--- {name}: dropout {cfg.dropout}, weight decay {cfg.weight_decay}")
        series[name] = curves(train(cfg)["records"])
        rows.append(summarize(name, *series[name]))
        if name == "baseline":
            rows.append(restored_best(cfg))
    excess = rows[0]["val"] - rows[0]["best_val"]  # how far the baseline drifted past its best
    for r in rows:
        r["val_gain"] = rows[0]["val"] - r["val"]
        # the early-stop row is the baseline's own best weights: it closes 100 % by construction
        r["excess_closed"] = (
            r["val_gain"] / excess if excess > 0 and r["variant"] != "early stop" else float("nan")
        )
    plot(series, out / "overfit.png")
    return rows


def regularization_bar(c: OverfitConfig, out: Path, rows) -> dict:
    """The bar: the best regularized variant (chosen by its own final val loss) against early stopping,
    the free regularizer every run already has. Both are measured again on the whole test split (val
    where there is none): the variant's final weights (ckpt.pt) against the baseline's best.pt, with a
    95 % paired bootstrap interval over windows. The early-stop row is the threshold, not a contender."""
    regularized = [r for r in rows if r["variant"] not in ("baseline", "early stop")]
    chosen = min(regularized, key=lambda r: r["val"])
    device = resolve_device(TrainConfig().device)
    _, val_data, meta = load_shards(Path(c.data), c.block_size, c.train_tokens)
    test = load_test_shard(Path(c.data), meta)
    split, data = ("test", test) if test is not None and len(test) > 2 * c.block_size else ("val", val_data)
    losses = {}
    for name, path in (
        ("chosen", out / chosen["variant"].replace(" ", "_") / CKPT),
        ("early", out / "baseline" / BEST),
    ):
        model = GPT.from_checkpoint(path, map_location=device)
        losses[name] = window_token_losses(model, data, c.block_size, device).mean(axis=1)
    value, base = float(losses["chosen"].mean()), float(losses["early"].mean())
    lo, hi = paired_bootstrap_interval(losses["chosen"], losses["early"])
    bar = make_bar(
        f"{split} loss (nats/token) of the best regularized variant ({chosen['variant']}), final weights",
        value,
        threshold=base,
        direction="lower",
        baseline=base,
        baseline_name="early stopping: the unregularized baseline's best.pt",
        interval=[base + lo, base + hi],
        n=len(losses["chosen"]),
        note=f"{len(losses['chosen'])} windows of {c.block_size} tokens; paired bootstrap over windows",
    )
    headline = (
        f"{chosen['variant']}: {split} loss {value:.3f} [{base + lo:.3f}, {base + hi:.3f}] "
        f"vs early stopping {base:.3f} (baseline final {rows[0]['val']:.3f} on val)"
    )
    return {"headline": headline, "bar": bar}


def plot(series, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, (steps, tr, va)), color in zip(series.items(), ["C0", "C1", "C2", "C3"]):
        ax.plot(steps, tr, "--", color=color, lw=1, label=f"{name} train")
        ax.plot(steps, va, "-", color=color, label=f"{name} val")
    ax.set(
        xlabel="step", ylabel="loss (nats/token)", title="overfitting a small slice: train (dashed) vs val"
    )
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def format_table(rows) -> str:
    head = f"{'variant':<13} {'train':>7} {'val':>7} {'gap':>7} {'best val':>9} {'@step':>6} {'val gain':>9} {'excess closed':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['variant']:<13} {r['train']:7.3f} {r['val']:7.3f} {r['gap']:7.3f} {r['best_val']:9.3f} "
            f"{r['best_step']:6d} {r['val_gain']:+9.3f} "
            + (
                f"{r['excess_closed']:14.0%}"
                if r["excess_closed"] == r["excess_closed"]
                else f"{'(reference)':>14}"
            )
        )
    return "\n".join(lines)


def main(argv=None):
    c, _ = parse_config(OverfitConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    check_overfit_config(c)
    run_dir = Path(c.data)
    check_artifact(RunLayout(run_dir).tokens, made_by=RunLayout(run_dir).made_by("tokenizer"))
    out = run_dir / "overfit"
    with fresh_output(out, c.overwrite) as tmp:  # the old result stays until this one succeeds
        rows = run(c, tmp)
        verdict = regularization_bar(c, tmp, rows)
        print(format_table(rows))
        print(f"{verdict['headline']}: {'PASS' if verdict['bar']['passed'] else 'FAIL'}")
        write_json(tmp / "overfit.json", {"config": dataclasses.asdict(c), "rows": rows, **verdict})
        write_json(tmp / "outcome.json", verdict)  # {"headline", "bar"}: what report.py lays out
        write_manifest(
            tmp,
            stage="04_overfit",
            command=command_line(__file__, argv),
            config=dataclasses.asdict(c),
            inputs=[RunLayout(run_dir).tokens],
        )
    print(f"wrote {out}/overfit.json and overfit.png")


if __name__ == "__main__":
    run_cli(main)
