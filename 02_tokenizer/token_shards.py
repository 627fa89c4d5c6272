"""Token shards for pretraining: every document of a split encoded, `<|endoftext|>` after each, one flat file.

What 04_pretrain reads from runs/<name>/tokens/:
  train.bin, val.bin,  all token ids of the split, end to end, as a flat array of uint16 (vocabulary
  test.bin             up to 65,536) or uint32, in the machine's byte order; no header (test.bin when
                       01 made a test split: 04 evaluates on it once, at the end, never to choose)
  meta.json            {"vocab_size", "dtype", "eot_id", "tokenizer_dir": "tokenizer",
                        "n_tokens": {"train": N, "val": N, "test": N}   ids in each file, separators included,
                        "n_bytes":  {"train": B, "val": B}}  UTF-8 bytes of the documents encoded,
                                                             separators excluded (they are not text)
  manifest.json        written last (common/runs.py): the folder is complete and current.

Why n_bytes: a loss per token depends on the tokenizer (a tokenizer with longer tokens has fewer,
harder tokens), so runs with different tokenizers cannot be compared by it. Per byte they can:
    bits per byte = (mean loss in nats per token) * n_tokens / (n_bytes * ln 2)

Run: written by `python 02_tokenizer/train_tokenizer.py --data runs/<name>`, after training.

Interview questions it answers:
- Why store token ids as a flat uint16 file? Two bytes per token, no parsing, and `np.memmap` reads
  any training window in O(1) without loading the corpus; uint16 holds ids up to 65,535 (GPT-2's
  50,257 fit; a 100k vocabulary needs uint32).
- Why a separator token between documents? Training windows cross document boundaries; the
  separator tells the model that what follows is unrelated (and gives it a token to end text with).
- What is bits per byte, and why report it beside the loss? (above: it does not depend on the tokenizer)
"""

import sys
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.files import atomic_path, write_json


def shard_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_token_shard(path, texts, encode_batch, eot_id, dtype, batch=1000):
    """Encode the texts (a batch at a time: their new pre-tokens are merged together), put eot_id
    after each, write all ids as one flat array. Returns (tokens written, UTF-8 bytes of the texts)."""
    parts, n_bytes = [], 0
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        for ids in encode_batch(chunk):
            parts.append(np.asarray(ids + [eot_id], dtype=dtype))
        n_bytes += sum(len(t.encode("utf-8")) for t in chunk)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype)
    with atomic_path(path) as tmp:
        ids.tofile(tmp)
    return len(ids), n_bytes


def write_token_shards(out_dir, splits, tok, progress=print) -> dict:
    """tokens/{split}.bin for each split of {"train": docs, "val": docs}, and meta.json. Returns meta."""
    out_dir = Path(out_dir)
    dtype = shard_dtype(tok.vocab_size)
    n_tokens, n_bytes = {}, {}
    for split, docs in splits.items():
        progress(f"encoding {split} ({len(docs)} documents)")
        n_tokens[split], n_bytes[split] = write_token_shard(
            out_dir / f"{split}.bin", [d["text"] for d in docs], tok.encode_ordinary_batch, tok.eot_id, dtype
        )
    meta = {
        "vocab_size": tok.vocab_size,
        "dtype": dtype,
        "eot_id": tok.eot_id,
        "n_tokens": n_tokens,
        "n_bytes": n_bytes,
        "tokenizer_dir": "tokenizer",
    }
    write_json(out_dir / "meta.json", meta)
    return meta
