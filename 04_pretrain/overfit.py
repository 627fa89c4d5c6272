"""Overfitting on purpose, then closing the gap: dropout, weight decay, early stopping.

    python 04_pretrain/overfit.py --data runs/tiny            # 4 runs, a few minutes on a laptop CPU

A model far too big for its data (by default the first 16k train tokens, repeated for many epochs)
memorizes them: its loss on those train windows keeps falling while the val loss turns up. The
same run is repeated with one regularizer at a time, and with all of them:

- dropout      zero a random fraction of activations in training: no unit can rely on another
- weight decay shrink every matrix toward 0 each step (AdamW's decoupled decay), limiting capacity
- early stop   keep the weights from the eval with the lowest val loss (no extra cost at all)

Prints, per variant: final train loss (eval mode, on the slice it trains on), final val loss,
the gap between them, the best val loss and its step, and how much of the baseline's final val-loss
excess (final val - best val of the baseline) each technique removes. Saves overfit.png (train and
val curves) and overfit.json under runs/<name>/overfit/.

Interview questions it answers:
- How do you tell overfitting from underfitting? (train loss falls and val loss rises = overfit;
  both high = underfit. The gap is the generalization error.)
- Why does modern LLM pretraining use almost no dropout? (one epoch over trillions of tokens never
  repeats data, so there is nothing to memorize; dropout just slows learning. It matters again when
  data is repeated: fine-tuning, small corpora, this experiment.)
- Is weight decay a regularizer in AdamW? (partly: it bounds the weight norm; in LLMs it mostly
  matters through its interaction with the learning rate and normalization layers.)
"""
import argparse
import dataclasses
import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "01_data")]
from common import UserError, run_cli, write_json, save_figure  # 01_data

from pretrain import TrainConfig, train


@dataclasses.dataclass
class OverfitConfig:
    data: str = ""
    train_tokens: int = 16_000   # the small slice the big model memorizes
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    block_size: int = 64
    batch_size: int = 16
    max_steps: int = 300             # 300 x 16 x 64 tokens = ~19 passes over the 16k-token slice
    eval_interval: int = 25
    lr: float = 2e-3
    dropout: float = 0.2
    weight_decay: float = 1.0    # strong on purpose: AdamW's default 0.1 barely shows in 300 steps
    seed: int = 1337


def variants(c: OverfitConfig) -> dict:
    """name -> TrainConfig overrides. `early stop` is the baseline's run read at its best eval."""
    return {"baseline": dict(dropout=0.0, weight_decay=0.0),
            "dropout": dict(dropout=c.dropout, weight_decay=0.0),
            "weight decay": dict(dropout=0.0, weight_decay=c.weight_decay),
            "all three": dict(dropout=c.dropout, weight_decay=c.weight_decay)}


def curves(records):
    """(steps, train_eval_loss, val_loss) at the eval steps."""
    evals = [r for r in records if "val_loss" in r]
    return [r["step"] for r in evals], [r["train_eval_loss"] for r in evals], [r["val_loss"] for r in evals]


def summarize(name, steps, tr, va, early_stop=False) -> dict:
    best = min(range(len(va)), key=va.__getitem__)
    i = best if early_stop else len(va) - 1     # early stopping keeps the best eval's weights
    return {"variant": name, "train": tr[i], "val": va[i], "gap": va[i] - tr[i],
            "best_val": va[best], "best_step": steps[best], "final_step": steps[i]}


def run(c: OverfitConfig, out: Path) -> list:
    rows, series = [], {}
    for name, override in variants(c).items():
        cfg = TrainConfig(data=c.data, out=str(out / name.replace(" ", "_")), n_layer=c.n_layer,
                          n_embd=c.n_embd, n_head=c.n_head, block_size=c.block_size,
                          batch_size=c.batch_size, max_steps=c.max_steps, eval_interval=c.eval_interval,
                          eval_batches=4, lr=c.lr, min_lr=c.lr / 10, warmup_steps=20,
                          train_tokens=c.train_tokens, eval_train=True, seed=c.seed,
                          log_interval=c.eval_interval, quiet=True, **override)
        print(f"--- {name}: dropout {cfg.dropout}, weight decay {cfg.weight_decay}")
        series[name] = curves(train(cfg)["records"])
        rows.append(summarize(name, *series[name]))
        if name == "baseline":
            rows.append(summarize("early stop", *series[name], early_stop=True))
    excess = rows[0]["val"] - rows[0]["best_val"]   # how far the baseline drifted past its best
    for r in rows:
        r["val_gain"] = rows[0]["val"] - r["val"]
        r["excess_closed"] = r["val_gain"] / excess if excess > 0 else float("nan")
    plot(series, out / "overfit.png")
    return rows


def plot(series, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, (steps, tr, va)), color in zip(series.items(), ["C0", "C1", "C2", "C3"]):
        ax.plot(steps, tr, "--", color=color, lw=1, label=f"{name} train")
        ax.plot(steps, va, "-", color=color, label=f"{name} val")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="overfitting a small slice: train (dashed) vs val")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def format_table(rows) -> str:
    head = f"{'variant':<13} {'train':>7} {'val':>7} {'gap':>7} {'best val':>9} {'@step':>6} {'val gain':>9} {'excess closed':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<13} {r['train']:7.3f} {r['val']:7.3f} {r['gap']:7.3f} {r['best_val']:9.3f} "
                     f"{r['best_step']:6d} {r['val_gain']:+9.3f} {r['excess_closed']:14.0%}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(OverfitConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       required=f.name == "data")
    c = OverfitConfig(**vars(p.parse_args(argv)))
    if c.train_tokens < c.block_size * 4:
        raise UserError(f"--train-tokens {c.train_tokens} is too small for block_size {c.block_size}; "
                        "use at least 4 windows' worth")
    out = Path(c.data) / "overfit"
    rows = run(c, out)
    print(format_table(rows))
    write_json(out / "overfit.json", {"config": dataclasses.asdict(c), "rows": rows})
    print(f"wrote {out}/overfit.json and overfit.png")


if __name__ == "__main__":
    run_cli(main)
