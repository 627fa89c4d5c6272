"""Unigram language-model tokenizer (SentencePiece-style): start big, prune by likelihood loss.

What it is. A Unigram LM gives every piece x a probability p(x) and scores a segmentation
x1..xk of a string by  log p(x1) + ... + log p(xk).  Encoding picks the best segmentation with
Viterbi (dynamic programming over end positions). Training runs the other way from BPE/WordPiece:
  1. seed: a large vocabulary of frequent substrings (scored by frequency x length) plus every
     character of the corpus;
  2. EM: E-step, segment every word with Viterbi under the current p and count the pieces used
     (hard EM: the best segmentation only, not the sum over all of them); M-step, p(x) = count / total;
  3. prune: for each piece, the loss of removing it is  count(x) * (log p(x) - log p(best split
     of x without x)),  the drop in corpus log-likelihood when its uses fall back to the next best
     segmentation. Drop the `prune_fraction` with the smallest loss (single characters are kept so
     that every seen character stays encodable), re-run EM, repeat until the vocabulary has the
     target size.
Whitespace is part of the pieces: every space-separated word gets a leading `▁` ("▁the"), so
decode is "".join(pieces).replace("▁", " "). Runs of whitespace (newlines, code indentation)
collapse to one space, as with SentencePiece's default normalization: decoding is lossy there, and
bytes/token looks better than byte-level BPE's partly because whitespace costs no tokens. No regex pre-tokenization is needed, so Chinese (no
spaces) works as is: a whole clause is one "word" and Viterbi finds the multi-character pieces.

What this version leaves out: the full forward-backward E-step (expected counts over all
segmentations), subword regularization (sampling segmentations), byte fallback (an unseen character
becomes <unk>), and SentencePiece's suffix-array seeding (we count substrings up to `max_piece_chars`).

Run (writes runs/tiny/unigram/: unigram.json, outcome.json, bytes_per_token.png, manifest.json):
  python 02_tokenizer/unigram.py --data runs/tiny --vocab-size 2048

Interview questions it answers:
- Unigram vs BPE: prune a large vocabulary by likelihood vs grow a small one by merges; a
  probabilistic model gives n-best segmentations (subword regularization), BPE gives one.
- What is `▁` in SentencePiece / T5 / LLaMA-1 vocabularies, and why can it tokenize Chinese
  without a word segmenter?
"""

import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import write_json

from bpe import load_saved  # same stage
from tokenizer_cli import add_run_flags, read_data, train_and_report  # same stage

SPACE = "▁"
UNK = "<unk>"


@dataclass
class UnigramConfig:
    vocab_size: int = option(
        2048,
        "pieces + <unk>; every character of the corpus is kept, so the corpus "
        "sets the real minimum (checked before training)",
        min=2,
    )
    max_piece_chars: int = option(8, "longest substring considered as a piece", min=1)
    seed_multiplier: int = option(8, "seed vocabulary = this many times the target size", min=1)
    prune_fraction: float = option(
        0.25, "share of (non-character) pieces dropped per pruning round", min=0.01, max=0.99
    )
    em_iterations: int = option(2, "EM iterations after each pruning round", min=1)


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(vocab_size=400)}


def words_of(text):
    """SentencePiece's view of text: split on whitespace, mark each word's start with ▁."""
    return [SPACE + w for w in text.split()]


def viterbi(word, logp, max_len):
    """Best segmentation of `word` under piece log-probs `logp`: (pieces, score), or (None, -inf).

    best[j] = max over pieces x = word[i:j] of best[i] + logp[x]; shapes: best has len(word)+1 entries.
    """
    # >>> exercise: best[j] = max over i of best[i] + logp[word[i:j]] (pieces up to max_len); follow back-pointers
    n = len(word)
    best = [0.0] + [-math.inf] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_len), j):
            lp = logp.get(word[i:j])
            if lp is not None and best[i] + lp > best[j]:
                best[j], back[j] = best[i] + lp, i
    if best[n] == -math.inf:
        return None, -math.inf
    pieces, j = [], n
    while j > 0:
        pieces.append(word[back[j] : j])
        j = back[j]
    return pieces[::-1], best[n]
    # <<< exercise


def seed_pieces(word_counts, cfg, target):
    """All characters, plus the most frequent substrings (score = frequency x length)."""
    chars, subs = Counter(), Counter()
    for w, n in word_counts.items():
        for c in w:
            chars[c] += n
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + cfg.max_piece_chars) + 1):
                subs[w[i:j]] += n
    top = sorted(subs, key=lambda s: (-subs[s] * len(s), s))[: target * cfg.seed_multiplier]
    return {**chars, **{s: subs[s] for s in top}}, set(chars)


def em_step(word_counts, logp, max_len):
    """Hard EM: segment every word with Viterbi, count pieces, renormalize. Returns (logp, counts, loss)."""
    counts, loss = Counter(), 0.0
    for w, n in word_counts.items():
        pieces, score = viterbi(w, logp, max_len)
        for p in pieces:
            counts[p] += n
        loss -= n * score
    total = sum(counts.values())
    return {p: math.log(c / total) for p, c in counts.items()}, counts, loss


def prune(logp, counts, chars, keep, max_len):
    """Keep the `keep` pieces whose removal would cost the most log-likelihood (plus all chars)."""
    losses = {}
    for p, lp in list(logp.items()):
        if p in chars:
            continue
        del logp[p]
        _, alt = viterbi(p, logp, max_len)  # the best way to write this piece without it
        logp[p] = lp
        losses[p] = counts[p] * (lp - alt)
    ranked = sorted(losses, key=lambda p: (-losses[p], p))[: max(0, keep - len(chars))]
    kept = {p: logp[p] for p in ranked}
    kept.update({c: logp.get(c, min(logp.values())) for c in chars})
    return kept


def train_unigram(word_counts, vocab_size, cfg=UnigramConfig(), progress=None):
    """Return {piece: log p} with at most vocab_size - 1 pieces (the last id is <unk>)."""
    target = vocab_size - 1
    n_chars = len({c for w in word_counts for c in w})
    if target < n_chars:
        raise UserError(
            f"vocab size {vocab_size} is below Unigram's minimum for this corpus: {n_chars} "
            f"characters (all are kept) + <unk> = {n_chars + 1}; use --vocab-size {n_chars + 1} or more"
        )
    seed, chars = seed_pieces(word_counts, cfg, target)
    total = sum(seed.values())
    logp = {p: math.log(c / total) for p, c in seed.items()}
    while True:
        for _ in range(cfg.em_iterations):
            logp, counts, loss = em_step(word_counts, logp, cfg.max_piece_chars)
            logp.update({c: logp.get(c, math.log(0.5 / total)) for c in chars})  # unused chars stay
        if progress:
            progress(f"vocab {len(logp)} pieces, loss {loss / sum(word_counts.values()):.3f} nats/word")
        if len(logp) <= target:
            return logp
        keep = max(target, int(len(logp) * (1 - cfg.prune_fraction)))
        logp = prune(logp, counts, chars, keep, cfg.max_piece_chars)
        if len(logp) <= len(chars):  # only characters left: nothing more to prune
            return logp


class UnigramTokenizer:
    def __init__(self, logp, max_piece_chars=8):
        self.pieces = sorted(logp, key=lambda p: (-logp[p], p)) + [UNK]
        self.ids = {p: i for i, p in enumerate(self.pieces)}
        self.logp = dict(logp)
        self.unk_id = self.ids[UNK]
        self.max_len = max_piece_chars
        self._cache = {}

    @property
    def vocab_size(self):
        return len(self.pieces)

    @classmethod
    def train(cls, texts, vocab_size, cfg=UnigramConfig(), progress=None):
        if vocab_size < 2:
            raise UserError(
                f"vocab size {vocab_size} is too small; Unigram needs at least 2 (a piece and <unk>)"
            )
        counts = Counter()
        for text in texts:
            counts.update(words_of(text))
        if not counts:
            raise UserError("the training corpus is empty; pass documents with text in them")
        return cls(train_unigram(counts, vocab_size, cfg, progress), cfg.max_piece_chars)

    def save(self, directory):
        write_json(
            Path(directory) / "unigram.json",
            {"format": "unigram-v1", "max_piece_chars": self.max_len, "log_probs": self.logp},
        )

    @classmethod
    def load(cls, directory):
        """The tokenizer saved in directory/unigram.json (errors name the command to rerun)."""

        def build(d):
            logp = {str(p): float(lp) for p, lp in d["log_probs"].items()}
            if not logp or "" in logp or not all(lp <= 0 for lp in logp.values()):
                raise UserError("log_probs must map non-empty pieces to log-probabilities <= 0")
            return cls(logp, int(d["max_piece_chars"]))

        return load_saved(directory, "unigram.json", "unigram-v1", "unigram", build)

    def tokenize_word(self, word):
        pieces = self._cache.get(word)
        if pieces is None:
            # An unseen character has no piece; give it a tiny probability and emit <unk> for it.
            logp = self.logp
            if any(c not in logp for c in word):
                logp = {**logp, **{c: -1e9 for c in word if c not in logp}}
            pieces, _ = viterbi(word, logp, self.max_len)
            pieces = [p if p in self.ids else UNK for p in pieces]
            self._cache[word] = pieces
        return pieces

    def tokenize(self, text):
        return [p for w in words_of(text) for p in self.tokenize_word(w)]

    def encode(self, text):
        return [self.ids[p] for p in self.tokenize(text)]

    def decode(self, ids):
        for i in ids:
            if not 0 <= i < len(self.pieces):
                raise UserError(f"token id {i} is outside the vocabulary (size {len(self.pieces)})")
        return "".join(self.pieces[i] for i in ids).replace(SPACE, " ").lstrip(" ")


def main(argv=None):
    cfg, args = parse_config(
        UnigramConfig, argv, doc=__doc__, extra=add_run_flags, presets=PRESETS, default_preset="tiny"
    )
    run = Path(args.data)
    train_docs, val_docs = read_data(run)
    train_and_report(
        "Unigram",
        lambda texts, progress: UnigramTokenizer.train(texts, cfg.vocab_size, cfg, progress),
        lambda tok, folder: tok.save(folder),
        out=run / "unigram",
        docs={"train": train_docs, "val": val_docs},
        config=asdict(cfg),
        command=command_line(__file__, argv),
        overwrite=args.overwrite,
        compare_with_bpe=True,
    )


if __name__ == "__main__":
    run_cli(main)
