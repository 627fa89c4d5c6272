"""Benchmark of bpe.py: training time by vocabulary size and corpus size, encoding speed vs tiktoken.

What it measures, on one CPU core (pure Python, no multiprocessing):
  - training seconds for vocab 500 / 2k / 10k, split into pre-tokenization (regex + Counter) and
    merges (the incremental trainer), on the generated corpus (01_data/world.py, 1 MB and 10 MB)
    and on ../shared/data/text when present;
  - encoding throughput in MB/s of our encoder (empty cache, so every distinct pre-token is merged
    once) beside a tiktoken.Encoding built from the same ranks (Rust), and the ratio.
Goals from the issue: vocab 500 on 1 MB English < 1 s; vocab 10k on 10 MB < 60 s; encoding within
5x of tiktoken. Chinese is the hard case for both: with no spaces, a GPT-style regex makes one
pre-token of every clause, so there are ~10x more distinct pre-tokens, each long; the first merges
(pairs of UTF-8 lead bytes) touch nearly all of them, and encoding finds few cache hits. The naive trainer (recount everything after every merge) is timed on a small slice
to show why the incremental one exists.

Run:
  python 02_tokenizer/bench_bpe.py                 # full table, about 3-5 minutes
  python 02_tokenizer/bench_bpe.py --quick         # 1 MB corpora, vocab 500 and 2k only
Writes runs/bench_bpe/bench_bpe.{json,png}.

Interview question it answers: why is BPE training O(corpus) per merge when done naively, and what
makes it O(words touched) instead? (the pair -> words index and the lazy-deletion heap in bpe.py)
"""
import argparse
import sys
import time
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "01_data")]
from common import run_cli, write_json, save_figure  # 01_data

from bpe import (GPT4_PATTERN, SPECIAL_TOKENS, BPETokenizer, format_table, train_merges, train_merges_naive,
                 word_counts_of)  # same stage

SHARED_TEXT = REPO.parent / "shared" / "data" / "text"


def generated_corpus(n_chars, seed=0):
    """Documents from 01_data's synthetic world, about n_chars characters in all."""
    import world  # 01_data
    w = world.build_world(world.WorldConfig())
    docs = world.generate_corpus(w, seed, n_chars, {"dialog": .4, "code": .1, "knowledge": .2, "stories": .3})
    return [d["text"] for d in docs]


def corpora(quick):
    """name -> list of documents."""
    out = {}
    try:
        out["generated 1MB"] = generated_corpus(1_000_000)
        if not quick:
            out["generated 10MB"] = generated_corpus(10_000_000, seed=1)
    except (ImportError, AttributeError, TypeError) as e:
        print(f"(01_data/world.py not usable here: {e}; skipping the generated corpus)")
    if SHARED_TEXT.is_dir():
        out["tinyshakespeare (en)"] = [(SHARED_TEXT / "tinyshakespeare.txt").read_text(encoding="utf-8")]
        if not quick:
            out["shared/text all (en+zh)"] = [p.read_text(encoding="utf-8") for p in sorted(SHARED_TEXT.glob("*.txt"))]
    return out


def time_training(docs, vocab_size):
    t0 = time.perf_counter()
    word_counts = word_counts_of(docs, GPT4_PATTERN, SPECIAL_TOKENS)
    t1 = time.perf_counter()
    merges = train_merges(word_counts, vocab_size - 256 - len(SPECIAL_TOKENS))
    t2 = time.perf_counter()
    return {"pretokenize_s": round(t1 - t0, 2), "merges_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "n_merges": len(merges), "distinct_words": len(word_counts)}


def time_encoding(docs, vocab_size):
    tok = BPETokenizer.train(docs, vocab_size)
    enc = tok.to_tiktoken()
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    tok._cache.clear()
    t0 = time.perf_counter()
    ours = [tok.encode_ordinary(d) for d in docs]
    t1 = time.perf_counter()
    theirs = [enc.encode_ordinary(d) for d in docs]
    t2 = time.perf_counter()
    assert ours == theirs, "our ids differ from tiktoken's with the same ranks"
    return {"ours_MB_s": round(mb / (t1 - t0), 2), "tiktoken_MB_s": round(mb / (t2 - t1), 2),
            "slowdown_x": round((t1 - t0) / (t2 - t1), 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 MB corpora and vocab 500/2k only")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_bpe"))
    args = ap.parse_args(argv)
    vocab_sizes = [500, 2000] if args.quick else [500, 2000, 10000]
    train_rows, enc_rows = [], []
    for name, docs in corpora(args.quick).items():
        mb = round(sum(len(d.encode("utf-8")) for d in docs) / 1e6, 2)
        for v in vocab_sizes:
            row = {"corpus": name, "MB": mb, "vocab": v, **time_training(docs, v)}
            print(row, flush=True)
            train_rows.append(row)
        enc = {"corpus": name, "MB": mb, "vocab": vocab_sizes[-1], **time_encoding(docs, vocab_sizes[-1])}
        print(enc, flush=True)
        enc_rows.append(enc)

    # The naive reference on a small slice, to show the gap the incremental trainer closes.
    some = next(iter(corpora(quick=True).values()), None)
    naive = None
    if some:
        wc = word_counts_of(["".join(some)[:200_000]], GPT4_PATTERN)
        t0 = time.perf_counter()
        train_merges(wc, 200)
        t1 = time.perf_counter()
        train_merges_naive(wc, 200)
        t2 = time.perf_counter()
        naive = {"slice": "200 kB", "merges": 200, "incremental_s": round(t1 - t0, 2), "naive_s": round(t2 - t1, 2)}

    train_table = format_table(train_rows, ["corpus", "MB", "vocab", "distinct_words", "pretokenize_s", "merges_s", "total_s"])
    enc_table = format_table(enc_rows, ["corpus", "MB", "vocab", "ours_MB_s", "tiktoken_MB_s", "slowdown_x"])
    print(f"\ntraining (one core, pure Python)\n{train_table}\n\nencoding (empty cache)\n{enc_table}")
    if naive:
        print(f"\nnaive vs incremental trainer: {naive}")
    out = Path(args.out)
    write_json(out / "bench_bpe.json", {"training": train_rows, "encoding": enc_rows, "naive": naive})
    save_plot(train_rows, enc_rows, out / "bench_bpe.png")
    print(f"wrote {out / 'bench_bpe.json'} and {out / 'bench_bpe.png'}")


def save_plot(train_rows, enc_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["corpus"] for r in train_rows):
        rows = [r for r in train_rows if r["corpus"] == name]
        a.plot([r["vocab"] for r in rows], [r["total_s"] for r in rows], "o-", label=name)
    a.set(xscale="log", xlabel="vocab size", ylabel="training seconds", title="BPE training time")
    a.legend(fontsize=8)
    names = [r["corpus"] for r in enc_rows]
    x = range(len(names))
    b.bar([i - 0.2 for i in x], [r["ours_MB_s"] for r in enc_rows], 0.4, label="ours (Python)")
    b.bar([i + 0.2 for i in x], [r["tiktoken_MB_s"] for r in enc_rows], 0.4, label="tiktoken (same ranks)")
    b.set_xticks(list(x), names, rotation=15, fontsize=8)
    b.set(ylabel="MB/s", title="encoding throughput")
    b.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
