"""Benchmark of bpe.py: the readable reference loops against the numpy fast path, and against tiktoken.

What it measures, on one CPU core, English and Chinese (../shared/data/text when present:
tinyshakespeare and 红楼梦; else 01_data's generated corpus):
  - encoding throughput in MB/s, one call on the whole text with an empty cache (every distinct
    pre-token merged once): the per-piece reference loop (bpe_piece with a cache, which is how
    bpe.py encoded before the fast path), the fast path (encode_ordinary: new pieces cut where no
    token can cross, bpe_cuts.py, and the distinct parts merged together in rounds on arrays,
    bpe_fast.py), and a tiktoken.Encoding built from the same ranks (Rust).
    The ids of all three are checked equal.
  - training seconds at each vocabulary size: pre-tokenization (regex + Counter, shared), then the
    merges by the readable incremental trainer (bpe_merges.train_merges) and by the array trainer
    (bpe_fast.train_merges_fast, what BPETokenizer.train uses). The merges are checked equal.
  - (full run) the textbook trainer that recounts every pair after every merge, on a slice, to
    show why the incremental ones exist.
Timing: the machine may be shared, so the sides of each comparison are timed in the same run,
interleaved (reference, fast, tiktoken, reference, ...); encoding keeps the best of `--repeats`,
training (seconds to a minute per run) is timed once per side. Times are CPU seconds of this
process (time.process_time): all three sides run on one core, and on a shared machine wall time
would also count the other users' work.
Goals from the issues: Chinese encoding within 5x of tiktoken, training substantially faster; then
(issue 29) encoding within 2x of tiktoken, cold, with the trained vocabularies and GPT-2's ranks
(../shared/data/tokenizer, when present).

Why Chinese is the hard case: with no spaces, a GPT-style regex makes one pre-token of every run of
characters (~24 bytes), ~70 % of them distinct, so a per-piece cache rarely hits and every piece
goes through the Python merge loop; in training, the first merges (UTF-8 byte pairs inside
characters) touch nearly every word.

Run:
  python 02_tokenizer/bench_bpe.py              # full tables, a few minutes
  python 02_tokenizer/bench_bpe.py --quick      # 300k-character slices, vocab 2048, one repeat
Writes runs/bench_bpe/bench_bpe.{json,png}.

Interview question it answers: why is BPE training O(corpus) per merge when done naively, and what
makes it O(occurrences changed) instead? (the pair -> words index and the lazy-deletion heap)
"""

import gc
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import markdown_table, pyplot, save_figure, write_json

from bpe import MIN_VOCAB_SIZE, BPETokenizer  # same stage
from bpe_merges import train_merges, train_merges_naive  # same stage
from bpe_fast import train_merges_fast  # same stage
from pretokenize import GPT4_PATTERN, SPECIAL_TOKENS, word_counts_of  # same stage

SHARED_TEXT = REPO.parent / "shared" / "data" / "text"
GPT2_FILES = REPO.parent / "shared" / "data" / "tokenizer"


@dataclass
class BenchConfig:
    quick: bool = option(False, "300k-character slices, vocab 2048 only, one repeat")
    vocab_sizes: list = option(
        [2048, 10000], "vocabulary sizes to train (the largest is used to encode)", sep=","
    )
    encode_only: bool = option(False, "time encoding only (the trainers' table is skipped)")
    repeats: int = option(3, "timed repeats of each encoder, interleaved; the best is kept", min=1)
    out: str = option("runs/bench_bpe", "folder for bench_bpe.json and bench_bpe.png")


def generated_corpus(n_chars, seed=0):
    """Documents from 01_data's synthetic world, about n_chars characters in all."""
    import world  # 01_data
    import world_corpus  # 01_data

    w = world.build_world(world.WorldConfig())
    docs = world_corpus.generate_corpus(
        w, seed, n_chars, {"dialog": 0.4, "code": 0.1, "knowledge": 0.2, "stories": 0.3}
    )
    return [d["text"] for d in docs]


def corpora(quick):
    """{name: text}: English and Chinese from ../shared/data/text, or the generated corpus."""
    limit = 300_000 if quick else None
    if (SHARED_TEXT / "hongloumeng.txt").is_file():
        return {
            "English (tinyshakespeare)": (SHARED_TEXT / "tinyshakespeare.txt").read_text(encoding="utf-8")[
                :limit
            ],
            "Chinese (hongloumeng)": (SHARED_TEXT / "hongloumeng.txt").read_text(encoding="utf-8")[:limit],
        }
    print(f"({SHARED_TEXT} not found: timing the generated corpus only)")
    return {"generated (en/zh/code)": "\n".join(generated_corpus(limit or 1_000_000))}


def encode_reference(tok, text):
    """How bpe.py encoded before the fast path: each pre-token through bpe_piece, with a cache."""
    ids, cache = [], {}
    for word in tok._pat.findall(text):
        cached = cache.get(word)
        if cached is None:
            cached = cache[word] = tok.bpe_piece(word.encode("utf-8"))
        ids.extend(cached)
    return ids


def best_of_interleaved(sides, repeats):
    """{name: (best CPU seconds, last result)} for callables timed in turn, round after round.

    Each call starts from the same collector state: the side's previous result freed and a full
    collection run, both untimed. Otherwise a side pays for the garbage collector's passes over
    what the side before it left young (the reference loop's ~100k cached lists, a million-int id
    list): a pass visits every item of every young list. The collector stays on during the call,
    so each side pays for the passes its own allocations cause (timeit turns it off altogether)."""
    best, result = {name: float("inf") for name in sides}, {}
    for _ in range(repeats):
        for name, fn in sides.items():
            result.pop(name, None)
            gc.collect()
            t0 = time.process_time()
            result[name] = fn()
            best[name] = min(best[name], time.process_time() - t0)
    return {name: (best[name], result[name]) for name in sides}


def time_encoding(name, text, tok, repeats):
    enc = tok.to_tiktoken()

    def fast():
        tok._cache.clear()  # every distinct piece merged again, as the others do
        return tok.encode_ordinary(text)

    timed = best_of_interleaved(
        {
            "reference": lambda: encode_reference(tok, text),
            "fast": fast,
            "tiktoken": lambda: enc.encode_ordinary(text),
        },
        repeats,
    )
    ids = {k: v[1] for k, v in timed.items()}
    assert ids["reference"] == ids["fast"] == ids["tiktoken"], f"{name}: the three encoders disagree"
    mb = len(text.encode("utf-8")) / 1e6
    s = {k: v[0] for k, v in timed.items()}
    return {
        "corpus": name,
        "MB": round(mb, 2),
        "vocab": tok.vocab_size,
        "reference_MB_s": round(mb / s["reference"], 2),
        "fast_MB_s": round(mb / s["fast"], 2),
        "tiktoken_MB_s": round(mb / s["tiktoken"], 2),
        "reference_vs_tiktoken_x": round(s["reference"] / s["tiktoken"], 1),
        "fast_vs_tiktoken_x": round(s["fast"] / s["tiktoken"], 2),
        "speedup_x": round(s["reference"] / s["fast"], 1),
    }


def time_training(name, text, vocab_size):
    t0 = time.process_time()
    word_counts = word_counts_of([text], GPT4_PATTERN, SPECIAL_TOKENS)
    pretokenize_s = time.process_time() - t0
    n = vocab_size - 256 - len(SPECIAL_TOKENS)
    timed = best_of_interleaved(
        {
            "reference": lambda: train_merges(word_counts, n),
            "fast": lambda: train_merges_fast(word_counts, n),
        },
        1,
    )
    assert timed["reference"][1] == timed["fast"][1], f"{name}: the two trainers learned different merges"
    ref, fast = timed["reference"][0], timed["fast"][0]
    return {
        "corpus": name,
        "vocab": vocab_size,
        "distinct_words": len(word_counts),
        "pretokenize_s": round(pretokenize_s, 2),
        "reference_merges_s": round(ref, 2),
        "fast_merges_s": round(fast, 2),
        "speedup_x": round(ref / fast, 1),
        "reference_total_s": round(pretokenize_s + ref, 2),
        "fast_total_s": round(pretokenize_s + fast, 2),
    }


def time_naive(text):
    """The textbook trainer against the incremental one: 100 merges on a 100 kB slice."""
    wc = word_counts_of([text[:100_000]], GPT4_PATTERN)
    timed = best_of_interleaved(
        {"incremental": lambda: train_merges(wc, 100), "naive": lambda: train_merges_naive(wc, 100)}, 1
    )
    return {"slice": "100 kB", "merges": 100, **{f"{k}_s": round(v[0], 2) for k, v in timed.items()}}


def main(argv=None):
    cfg, _ = parse_config(BenchConfig, argv, doc=__doc__)
    vocab_sizes = [2048] if cfg.quick else sorted(cfg.vocab_sizes)
    repeats = 1 if cfg.quick else cfg.repeats
    if min(vocab_sizes) < MIN_VOCAB_SIZE:
        raise UserError(f"--vocab-sizes {min(vocab_sizes)} is too small; use at least {MIN_VOCAB_SIZE}")
    texts = corpora(cfg.quick)
    print(
        f"timing on one core; the sides of each comparison interleaved in this run (the machine may be shared); "
        f"encoding: best of {repeats}"
    )
    train_rows, enc_rows = [], []
    for name, text in texts.items():
        for v in [] if cfg.encode_only else vocab_sizes:
            train_rows.append(time_training(name, text, v))
            print(train_rows[-1], flush=True)
        encoders = [BPETokenizer.train([text], v) for v in vocab_sizes]
        if (GPT2_FILES / "gpt2_vocab.json").is_file():  # OpenAI's ranks: the vocabulary tiktoken users have
            encoders.append(
                BPETokenizer.from_gpt2(GPT2_FILES / "gpt2_vocab.json", GPT2_FILES / "gpt2_merges.txt")
            )
        for tok in encoders:
            enc_rows.append(time_encoding(name, text, tok, repeats))
            print(enc_rows[-1], flush=True)
    naive = None if cfg.quick or cfg.encode_only else time_naive(next(iter(texts.values())))

    enc_table = markdown_table(
        enc_rows,
        [
            "corpus",
            "MB",
            "vocab",
            "reference_MB_s",
            "fast_MB_s",
            "tiktoken_MB_s",
            "reference_vs_tiktoken_x",
            "fast_vs_tiktoken_x",
            "speedup_x",
        ],
    )
    train_table = markdown_table(
        train_rows,
        [
            "corpus",
            "vocab",
            "distinct_words",
            "pretokenize_s",
            "reference_merges_s",
            "fast_merges_s",
            "speedup_x",
            "reference_total_s",
            "fast_total_s",
        ],
    )
    print(
        f"\nencoding, one call on the whole text, empty cache (x = CPU seconds / tiktoken's)\n{enc_table}"
        + (
            f"\n\ntraining, CPU seconds (pre-tokenization shared; merges by the readable vs the array trainer)"
            f"\n{train_table}"
            if train_rows
            else ""
        )
    )
    if naive:
        print(f"\nnaive vs incremental trainer: {naive}")
    out = Path(cfg.out)
    write_json(
        out / "bench_bpe.json",
        {
            "config": asdict(cfg),
            "encoding": enc_rows,
            "training": train_rows,
            "naive": naive,
            "note": "CPU seconds; sides interleaved in one run",
        },
    )
    save_plot(enc_rows, train_rows, out / "bench_bpe.png")
    print(f"wrote {out / 'bench_bpe.json'} and {out / 'bench_bpe.png'}")


def save_plot(enc_rows, train_rows, path):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = range(len(enc_rows))
    for k, (key, label) in enumerate(
        [
            ("reference_MB_s", "reference loop (before)"),
            ("fast_MB_s", "fast path (now)"),
            ("tiktoken_MB_s", "tiktoken, same ranks"),
        ]
    ):
        a.bar([i + (k - 1) * 0.27 for i in x], [r[key] for r in enc_rows], 0.27, label=label)
    a.set_xticks(list(x), [r["corpus"] for r in enc_rows], fontsize=8)
    a.set(yscale="log", ylabel="MB/s (log)", title="encoding throughput, empty cache")
    a.set_ylim(top=6 * max(r["tiktoken_MB_s"] for r in enc_rows))  # room for the legend
    a.legend(fontsize=8, ncol=3, loc="upper center")
    labels = [f"{r['corpus'].split()[0]}\nvocab {r['vocab']}" for r in train_rows]
    x = range(len(train_rows))
    b.bar([i - 0.2 for i in x], [r["reference_total_s"] for r in train_rows], 0.4, label="readable trainer")
    b.bar([i + 0.2 for i in x], [r["fast_total_s"] for r in train_rows], 0.4, label="array trainer (now)")
    b.set_xticks(list(x), labels, fontsize=7)
    b.set(ylabel="CPU seconds (incl. pre-tokenization)", title="BPE training time")
    b.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
