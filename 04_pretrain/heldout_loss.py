"""The pretraining headline: the chosen checkpoint's loss on the whole val and test splits, against the
strongest cheap baseline (a Kneser-Ney n-gram on the same shards), with a paired bootstrap interval.

    python 04_pretrain/heldout_loss.py --data runs/tiny          # best.pt; prints the bar and the table

pretrain.py calls `heldout_outcome` at the end of a run and puts its headline and bar in outcome.json.
`window_token_losses` is the one held-out loss every stage uses: pretraining's periodic evals, SFT's
forgetting and 07's compressed models (`corpus_loss`, fixed evenly spaced windows), 07's intervals.

What is measured, and why this way:
- The checkpoint is best.pt (the lowest loss of the run's periodic val evaluations: what every later
  stage loads). Those evaluations see a fixed sample of val windows, and picking the minimum of
  several of them is optimistic, so the headline is measured again here on the *whole* val split and
  on the test split, which nothing in the run has looked at (02 writes tokens/test.bin).
- The split is cut into consecutive non-overlapping windows of block_size + 1 tokens, as in training
  (at most EVAL_MAX_TOKENS tokens: every token of the tiny split); the loss is the mean over every
  predicted token.
- Baseline: interpolated Kneser-Ney n-grams (ngram_lm.py) of orders NGRAM_ORDERS (2 to 16: on the
  generated world's templated text the test loss still falls from order 8 to 16), counted on the
  training shard; the order is chosen by its val loss and reported on test. The n-gram sees up to
  n-1 tokens of history at every position, also across the window start where the transformer sees
  none, so it is the stronger side of the comparison where they differ.
- The bar: the transformer's test loss below the chosen n-gram's. Its interval is the n-gram's loss
  plus a 95 % paired bootstrap interval of the per-window difference (model minus n-gram, windows
  resampled): both models are scored on the same windows, so a window's difficulty cancels out. The
  bar passes only when that whole interval lies below the n-gram's loss.

Interview questions it answers:
- Why report the test split once, at the end? (everything chosen by val -- the checkpoint, the
  n-gram order, hyperparameters -- is biased toward val; the test loss is the unbiased number)
- Why is "N nats below unigram" a weak bar? (a bigram count model clears it with no training; the
  question is whether the transformer beats the best count model on text it has not seen)
- Why a paired bootstrap over windows and not over tokens? (tokens of one window are not independent;
  resampling whole windows keeps their dependence, and pairing removes the shared difficulty)
"""

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, option, parse_config, run_cli
from common.layout import RunLayout
from common.runs import check_artifact
from common.stats import paired_bootstrap_interval
from common.outcome import make_bar
from gpt import GPT  # 03_model

from batches import bits_per_byte, eval_starts, get_batch, load_shards, load_test_shard, unigram_loss
from ngram_lm import KneserNey

EVAL_MAX_TOKENS = 2_000_000  # per split: the whole tiny split; a sample of the start of a huge one
NGRAM_ORDERS = (2, 3, 4, 6, 8, 12, 16)  # on templated text the loss keeps falling past 8
NGRAM_TRAIN_TOKENS = 5_000_000  # the n-grams count at most this prefix of the training shard (keys of
# all 16 orders are held at once: 16 x 8 bytes per token, 640 MB at 5M tokens)


def window_starts(n_tokens: int, block_size: int) -> np.ndarray:
    """Starts of consecutive non-overlapping windows of block_size + 1 tokens (inputs and targets)."""
    n = min(n_tokens, EVAL_MAX_TOKENS)
    return np.arange(0, max(n - block_size, 0), block_size, dtype=np.int64)


@torch.no_grad()
def window_token_losses(
    model, data, block_size: int, device: str, starts=None, batch: int = 32, autocast=contextlib.nullcontext()
) -> np.ndarray:
    """(n_windows, block_size): -ln p(target) of every target token of the windows at `starts`
    (default: the whole split in consecutive windows, `window_starts`), the model in eval mode.

    The one held-out loss of the repository: the headline here, pretraining's periodic evals,
    `corpus_loss` (05's forgetting, 07's compressed models) and 07's per-window intervals all read it.
    Pure cross-entropy in fp32, whatever the model adds to its training loss (z-loss, MoE balancing).
    """
    starts = window_starts(len(data), block_size) if starts is None else starts
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(starts), batch):
        x, y = get_batch(data, starts[i : i + batch], block_size, device)
        with autocast:
            logits, _ = model(x)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        out.append(nll.view(len(x), block_size).double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, block_size))


def corpus_loss(model, tokens, block_size: int, n_windows: int, device: str, batch: int = 16) -> float:
    """Mean loss (nats/token) over `n_windows` fixed, evenly spaced windows of `tokens`
    (batches.eval_starts): the same text at every call, so two models or two moments compare."""
    starts = eval_starts(len(tokens), block_size, n_windows)
    return float(window_token_losses(model, tokens, block_size, device, starts, batch).mean())


def ngram_window_losses(nll: np.ndarray, starts: np.ndarray, block_size: int) -> np.ndarray:
    """The same (n_windows, block_size) layout from an n-gram's per-token nll (nll[j-1] is token j's)."""
    return np.stack([nll[s : s + block_size] for s in starts]) if len(starts) else np.zeros((0, block_size))


def heldout_outcome(run: Path, ckpt: Path, device: str = "cpu", orders=NGRAM_ORDERS) -> dict:
    """{"headline", "bar", "heldout": {...}} for the checkpoint `ckpt` of the run folder `run`."""
    model = GPT.from_checkpoint(ckpt, map_location=device)
    block = model.cfg.block_size
    train, val, meta = load_shards(run, block)
    test = load_test_shard(run, meta)
    vocab = meta["vocab_size"]
    splits = {"val": val, **({"test": test} if test is not None and len(test) > block + 1 else {})}
    bar_split = "test" if "test" in splits else "val"
    counted = np.asarray(train[:NGRAM_TRAIN_TOKENS])
    model_w, ngram_w, ngram = {}, {}, {}
    for name, data in splits.items():
        model_w[name] = window_token_losses(model, data, block, device)
    for k in orders:
        lm = KneserNey.fit(counted, k, vocab)
        ngram[k] = {}
        for name, data in splits.items():
            starts = window_starts(len(data), block)
            nll = lm.token_nll(np.asarray(data[: int(starts[-1]) + block + 1]))
            ngram_w.setdefault(k, {})[name] = ngram_window_losses(nll, starts, block)
            ngram[k][f"{name}_loss"] = float(ngram_w[k][name].mean())
    best_k = min(orders, key=lambda k: ngram[k]["val_loss"])  # chosen on val, reported on test
    m = model_w[bar_split].mean(axis=1)  # per-window mean losses
    b = ngram_w[best_k][bar_split].mean(axis=1)
    lo, hi = paired_bootstrap_interval(m, b)
    value, base = float(m.mean()), float(b.mean())
    unigram = unigram_loss(train, splits[bar_split], vocab)
    name = f"interpolated Kneser-Ney {best_k}-gram on the training shard (order chosen on val)"
    if len(train) > NGRAM_TRAIN_TOKENS:
        name += f", counted on its first {NGRAM_TRAIN_TOKENS:,} tokens"
    bar = make_bar(
        f"{bar_split} loss (nats/token), best.pt",
        value,
        threshold=base,
        direction="lower",
        baseline=base,
        baseline_name=name,
        interval=[base + lo, base + hi],
        n=len(m),
        note=(
            f"{len(m)} windows of {block} tokens ({m.size * block:,} tokens), the whole {bar_split} split; "
            "interval: the n-gram's loss + a paired bootstrap interval of the per-window difference"
            + ("" if bar_split == "test" else "; no tokens/test.bin (rerun 02_tokenizer) so val stands in")
        ),
    )
    heldout = {
        "checkpoint": Path(ckpt).name,
        "block_size": block,
        **{f"{s}_loss": float(model_w[s].mean()) for s in splits},
        **{f"{s}_windows": len(model_w[s]) for s in splits},
        **{f"{s}_bpb": bits_per_byte(float(model_w[s].mean()), meta, s) for s in splits},
        "unigram_loss": unigram,
        "ngram": {str(k): v for k, v in ngram.items()},
        "ngram_order": best_k,
        "split": bar_split,
    }
    headline = (
        f"{bar_split} loss {value:.3f} nats/token [{bar['interval'][0]:.3f}, {bar['interval'][1]:.3f}] "
        f"over {len(m)} windows vs Kneser-Ney {best_k}-gram {base:.3f} and unigram {unigram:.3f}"
        + (f"; val {heldout['val_loss']:.3f}" if bar_split == "test" else "")
    )
    return {"headline": headline, "bar": bar, "heldout": heldout}


def format_heldout(res: dict) -> str:
    h, b = res["heldout"], res["bar"]
    lines = ["| model | " + " | ".join(f"{s} loss" for s in ("val", "test") if f"{s}_loss" in h) + " |"]
    lines.append("|---|" + "---|" * (len(lines[0].split("|")) - 3))
    cells = lambda d: " | ".join(f"{d[f'{s}_loss']:.4f}" for s in ("val", "test") if f"{s}_loss" in h)
    lines.append(f"| transformer ({h['checkpoint']}) | {cells(h)} |")
    for k, v in h["ngram"].items():
        lines.append(
            f"| Kneser-Ney {k}-gram{' (chosen)' if int(k) == h['ngram_order'] else ''} | {cells(v)} |"
        )
    lo, hi = b["interval"]
    lines.append(
        f"bar: {b['metric']} {b['value']:.4f} [{lo:.4f}, {hi:.4f}] < {b['threshold']:.4f}: "
        f"{'PASS' if b['passed'] else 'FAIL'}"
    )
    return "\n".join(lines)


@dataclass
class HeldoutConfig:
    data: str = option("", "run folder runs/<name> with tokens/ and pretrain/ (required)")
    ckpt: str = option("", "checkpoint to evaluate; empty = <data>/pretrain/best.pt")
    device: str = option("cpu", "torch device for the transformer")


def main(argv=None):
    cfg, _ = parse_config(HeldoutConfig, argv, doc=__doc__)
    if not cfg.data:
        raise UserError("--data is required; give the run folder, e.g. --data runs/tiny")
    run = Path(cfg.data)
    ckpt = Path(cfg.ckpt) if cfg.ckpt else RunLayout(run).pretrain / "best.pt"
    check_artifact(ckpt.parent, made_by=RunLayout(run).made_by("pretrain"))
    res = heldout_outcome(run, ckpt, cfg.device)
    print(format_heldout(res))
    print(res["headline"])


if __name__ == "__main__":
    run_cli(main)
