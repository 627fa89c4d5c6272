"""Measuring a tokenizer: bytes per token on each kind of text, beside GPT-2's, as a table and a plot.

    bytes/token = UTF-8 bytes of the documents / tokens they encode to      (higher = shorter sequences)

It is measured per group of documents (English prose, Chinese, code, all), because one number hides
what matters: a tokenizer trained mostly on English gives Chinese few bytes per token (GPT-2: 1.37
on 红楼梦, where a character is 3 bytes, against ~4 on English prose), so the same model sees a
third as much Chinese text per context window. GPT-2's tokenizer (tiktoken, built offline from ../shared/data/tokenizer when
present) is the reference row. tokenizer_cli.py (the body of the three commands) prints the table, saves it in outcome.json and
draws bytes_per_token.png for each of the three tokenizers.

Interview questions it answers:
- What is bytes/token and why does it matter? It is the compression rate: a context of T tokens sees
  T * bytes/token bytes of text, and the training cost per byte of text falls as it rises.
- Why is a vocabulary's bytes/token on Chinese a fairness question? (same price per token, fewer
  characters per token: users of some languages pay more and get shorter contexts)
"""

import functools
import sys
from collections import Counter
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.files import pyplot, save_figure

from bpe import BPETokenizer  # same stage

GROUPS = ["english", "chinese", "code", "all"]
COLUMNS = ["tokenizer", "vocab_size", "train_s", *GROUPS]
GPT2_FILES = REPO.parent / "shared" / "data" / "tokenizer"


def doc_group(doc) -> str:
    """The outcome-table column a document belongs to: code, Chinese, or English prose."""
    if doc.get("domain") == "code":
        return "code"
    return {"en": "english", "zh": "chinese"}.get(doc.get("lang"), "other")


def bytes_per_token(encode, docs) -> dict:
    """UTF-8 bytes per token, per group and over all docs: {"english": 3.9, ..., "all": 3.5}."""
    n_bytes, n_tokens = Counter(), Counter()
    for doc in docs:
        for g in (doc_group(doc), "all"):
            n_bytes[g] += len(doc["text"].encode("utf-8"))
            n_tokens[g] += len(encode(doc["text"]))
    return {g: round(n_bytes[g] / n_tokens[g], 3) for g in n_bytes if n_tokens[g]}


@functools.cache
def gpt2_tiktoken(files=GPT2_FILES):
    """tiktoken's GPT-2 Encoding built offline from OpenAI's vocab.json + merges.txt, or None."""
    if not (files / "gpt2_vocab.json").is_file():
        return None
    return BPETokenizer.from_gpt2(files / "gpt2_vocab.json", files / "gpt2_merges.txt").to_tiktoken("gpt2")


def measured_row(name, vocab_size, train_s, encode, docs) -> dict:
    """One row of the table: a tokenizer's bytes/token on `docs`, per group."""
    return {"tokenizer": name, "vocab_size": vocab_size, "train_s": train_s, **bytes_per_token(encode, docs)}


def plot_bytes_per_token(rows, path, title="bytes per token on val (higher = shorter sequences)"):
    """Grouped bars: one group per kind of text, one bar per tokenizer."""
    plt = pyplot()
    groups = [g for g in GROUPS if any(g in r for r in rows)]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(rows))
    for k, row in enumerate(rows):
        xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [row.get(g, 0) for g in groups], width, label=f"{row['tokenizer']} ({row['vocab_size']})")
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylabel="bytes / token", title=title)
    ax.legend(fontsize=8)
    save_figure(fig, path)
