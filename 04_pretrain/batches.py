"""Token shards on disk -> training batches: what pretrain.py reads, and in which order.

    train, val, meta = load_shards(Path("runs/tiny"), block_size=128)
    starts = batch_starts(len(train), 128, batch_size=16, seed=1337, step=0)
    x, y = get_batch(train, starts, 128, "cpu")           # (16, 128) int64 each; y is x shifted by one

02_tokenizer writes `runs/<name>/tokens/`: train.bin and val.bin are flat arrays of token ids
(uint16 when the vocabulary fits, else uint32; documents joined with `<|endoftext|>`), meta.json
says the dtype, vocab size, token counts and (when 02 records it) the UTF-8 bytes behind them, and
manifest.json fingerprints all three. The shards are memory-mapped: a 10B-token shard costs no RAM
until a window is read, and a window read is one slice.

Data order: the global batch of step s is `batch_size` windows whose start offsets come from a
generator seeded with (seed, s) only. Nothing depends on an iterator's hidden position, so a
resumed run, or the same run on another number of processes, sees exactly the same tokens at every
step. Rank r takes its rows of that batch (`rank_rows`).

Interview questions it answers:
- Why random windows instead of epochs over documents? (at pretraining scale a token is seen about
  once; random offsets need no shuffling pass, no padding, and make the order a pure function)
- How do you compare the loss of models with different tokenizers? (bits per byte: nats per token
  x tokens / bytes / ln 2 is the cost of the text itself, whatever the text was cut into)
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from common.files import read_json
from common.layout import RunLayout
from common.runs import check_artifact

SCAN_TOKENS = 20_000_000  # the id check and the unigram baseline read at most this prefix of a shard


def load_shards(run: Path, block_size: int, train_tokens: int = 0):
    """(train, val, meta): memmaps of `run/tokens/{train,val}.bin` after checking that they are usable.

    Refuses, with the command that remakes them, shards that are missing, incomplete, damaged or
    stale (check_artifact, up the chain to data/), a meta.json that is corrupt or lacks a field, a
    shard cut off mid-token, ids the vocabulary does not have, and a split too short for one window.
    train_tokens > 0 keeps only the first N train tokens (overfit.py).
    """
    tok = RunLayout(run).tokens
    remake = RunLayout(run).made_by("tokenizer")
    check_artifact(tok, made_by=remake)  # present, complete, intact, current
    meta = read_json(tok / "meta.json", made_by=remake)
    vocab, dtype = meta.get("vocab_size"), meta.get("dtype")
    if not isinstance(vocab, int) or vocab < 2 or dtype not in ("uint16", "uint32"):
        raise UserError(
            f"{tok / 'meta.json'}: needs an integer vocab_size and dtype uint16 or uint32 "
            f"(has {vocab!r}, {dtype!r}); rerun `{remake}`"
        )
    shards = {
        split: open_shard(
            tok / f"{split}.bin", np.dtype(dtype), vocab, meta.get("n_tokens", {}).get(split), remake
        )
        for split in ("train", "val")
    }
    train = shards["train"][:train_tokens] if train_tokens else shards["train"]
    for split, arr in (("train", train), ("val", shards["val"])):
        if len(arr) < block_size + 2:
            raise UserError(
                f"the {split} split has {len(arr)} tokens, fewer than block_size + 2 = "
                f"{block_size + 2}; lower --block-size or give it more data"
            )
    return train, shards["val"], meta


def load_test_shard(run: Path, meta: dict):
    """The test shard (tokens/test.bin) as a checked memmap, or None when 02 wrote none (an older run,
    or data with no test split). Pretraining reads it once, after training: it chooses nothing."""
    path = RunLayout(run).tokens / "test.bin"
    if not path.is_file():
        return None
    remake = RunLayout(run).made_by("tokens")
    expected = meta.get("n_tokens", {}).get("test")
    return open_shard(path, np.dtype(meta["dtype"]), meta["vocab_size"], expected, remake)


def open_shard(path: Path, dtype: np.dtype, vocab: int, expected, remake: str) -> np.ndarray:
    """One shard as a read-only memmap, checked against meta.json's token count and vocab size."""
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise UserError(
            f"{path}: {size} bytes is not a whole number of {dtype.name} tokens (empty or "
            f"cut off); rerun `{remake}`"
        )
    arr = np.memmap(path, dtype=dtype, mode="r")
    if expected is not None and len(arr) != expected:
        raise UserError(
            f"{path}: {len(arr)} tokens but meta.json says {expected}; the shards and "
            f"meta.json come from different runs: rerun `{remake}`"
        )
    top = int(arr[:SCAN_TOKENS].max())  # a prefix: shards can be GBs
    if top >= vocab:
        raise UserError(
            f"{path}: token id {top} >= vocab_size {vocab} in meta.json; the shard was "
            f"made by a different tokenizer: rerun `{remake}`"
        )
    return arr


def batch_starts(n_tokens: int, block_size: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The start offsets of step `step`'s global batch: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - block_size - 1, size=batch_size, endpoint=True)


def rank_rows(starts, micro: int, rank: int, world: int, micro_batch: int):
    """Rank `rank`'s rows of micro-step `micro`: global rows are laid out [micro][rank][row]."""
    i = (micro * world + rank) * micro_batch
    return starts[i : i + micro_batch]


def eval_starts(n_tokens: int, block_size: int, n_windows: int) -> np.ndarray:
    """`n_windows` fixed, evenly spaced window starts: every eval measures the same text."""
    return np.linspace(0, n_tokens - block_size - 1, n_windows).astype(np.int64)


def get_batch(data, starts, block_size, device):
    """x, y: (len(starts), block_size) int64; y is x shifted left by one token."""
    rows = np.stack([data[s : s + block_size + 1] for s in starts]).astype(np.int64)
    xy = torch.from_numpy(rows).to(device)
    return xy[:, :-1], xy[:, 1:]


def unigram_loss(train, val, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of val under the train shard's token frequencies (add-one smoothed).

    The loss of a model that ignores context entirely: a trained LM must beat it clearly.
    (Over at most SCAN_TOKENS of each shard, plenty to estimate a unigram distribution.)
    """
    # >>> exercise: add-one-smoothed token frequencies of train; mean -log p(token) over val (nats/token)
    counts = np.bincount(np.asarray(train[:SCAN_TOKENS]), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val[:SCAN_TOKENS])].mean())
    # <<< exercise


def bits_per_byte(loss: float, meta: dict, split: str = "val"):
    """A loss in nats/token as bits per UTF-8 byte of text, or None when meta.json has no byte count.

        bpb = loss x (tokens / bytes) / ln 2

    A tokenizer with longer tokens has a higher loss per token but fewer tokens per byte; bpb
    cancels that, so runs with different tokenizers compare. The `<|endoftext|>` separators carry
    no bytes, but predicting them is part of the cost of the text, so they stay in the token count.
    """
    n_bytes = meta.get("n_bytes", {}).get(split)
    n_tokens = meta.get("n_tokens", {}).get(split)
    if not n_bytes or not n_tokens or not math.isfinite(loss):
        return None
    # >>> exercise: nats/token · tokens/bytes / ln 2
    return loss * n_tokens / n_bytes / math.log(2)
    # <<< exercise
