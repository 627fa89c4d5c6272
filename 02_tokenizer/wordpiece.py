"""WordPiece (BERT's tokenizer): merges chosen by likelihood gain, encoding by greedy longest match.

What differs from BPE (bpe.py):
- Symbols are characters, not bytes. A word is split into its first character and continuation
  pieces written with a `##` prefix: "hugs" -> h ##u ##g ##s. A character never seen in training
  makes the whole word `[UNK]` (byte-level BPE never needs an unknown token).
- Which pair to merge: BPE takes the most frequent pair. WordPiece takes the pair with the highest
      score(a, b) = count(ab) / (count(a) * count(b))
  which is the gain in corpus log-likelihood of a unigram model when a and b become one symbol
  (log p(ab) - log p(a) - log p(b), up to constants). It prefers pairs whose parts rarely occur
  apart ("##q ##u"), not merely frequent pairs ("e ##s"), so it keeps rare words more intact.
- Encoding does not replay merges: for each word, take the longest vocabulary piece that starts the
  word, then the longest `##` piece that continues it, and so on (greedy longest-match-first, as in
  BERT). If some position has no match, the whole word is `[UNK]`.
- Pre-tokenization as in BERT: split on whitespace and punctuation, and every CJK character is its
  own word. Decoding joins words with single spaces, so whitespace is not kept exactly.

What this version leaves out: lower-casing and accent stripping (BERT-uncased), the 200-character
word limit's exact value, and BERT's vocab.txt format (the vocabulary is saved as JSON; only BPE is
used by later stages).

Run (writes runs/tiny/wordpiece/: wordpiece.json, outcome.json, bytes_per_token.png, manifest.json):
  python 02_tokenizer/wordpiece.py --data runs/tiny --vocab-size 2048

Interview questions it answers:
- BPE vs WordPiece: frequency vs likelihood-gain merge score; replayed merges vs longest match.
- Why does BERT's vocab have `##` pieces, and why does it need `[UNK]` while GPT-2 does not?
"""

import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import regex

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import write_json

from bpe import load_saved  # same stage
from bpe_merges import merge_ids  # same stage
from tokenizer_cli import add_run_flags, read_data, train_and_report  # same stage

# A CJK character alone, a run of letters/digits (not CJK), or one punctuation/symbol character.
BERT_PRETOKENIZE = regex.compile(r"\p{Han}|(?:(?!\p{Han})[\p{L}\p{N}\p{M}])+|[^\s\p{L}\p{N}\p{M}]")
SPECIALS = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class WordPieceConfig:
    vocab_size: int = option(
        2048,
        "special tokens + every symbol of the corpus + merges (the corpus "
        "sets the real minimum, checked before training)",
        min=len(SPECIALS) + 1,
    )
    max_word_chars: int = option(100, "longer words (URLs, base64) become [UNK], not 100 pieces", min=1)
    # The score favours pairs of rare symbols: a number seen once ("5", "##57939") scores higher than
    # "t ##h". Real trainers therefore ignore rare pairs; without this, a small corpus spends the
    # vocabulary on one-off numbers and names (runs/tiny, vocab 2048: 1.28 bytes/token at 1, 2.06 at 10, 3.63 at 100).
    min_pair_count: int = option(100, "pairs seen fewer times are never merged", min=1)


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(vocab_size=400)}


def pretokenize(text):
    return BERT_PRETOKENIZE.findall(text)


def word_symbols(word):
    """ "hugs" -> ["h", "##u", "##g", "##s"]."""
    return [word[0]] + ["##" + c for c in word[1:]]


def merged_symbol(a, b):
    return a + b[2:]  # "h" + "##u" -> "hu"; "##u" + "##g" -> "##ug"


def train_wordpiece(word_counts, vocab_size, specials=SPECIALS, min_pair_count=1, progress=None):
    """Return the vocabulary (list of symbols): specials, the alphabet, then merges in order.

    Pair counts, symbol counts and the pair -> words index are updated incrementally as in
    bpe_merges.train_merges. The best pair is found by a scan over all pairs each merge (the score of
    every pair containing a or b changes after a merge, so a heap would need many updates).
    """
    words = [word_symbols(w) for w in word_counts]
    freqs = list(word_counts.values())
    sym_counts, pair_counts, where = Counter(), Counter(), {}
    for wi, (w, n) in enumerate(zip(words, freqs)):
        for s in w:
            sym_counts[s] += n
        for p in zip(w, w[1:]):
            pair_counts[p] += n
            where.setdefault(p, set()).add(wi)
    minimum = len(specials) + len(sym_counts)
    if vocab_size < minimum:
        raise UserError(
            f"vocab size {vocab_size} is below WordPiece's minimum for this corpus: {len(specials)} "
            f"special tokens + {len(sym_counts)} symbols (characters, ##characters) = {minimum}; "
            f"use --vocab-size {minimum} or more"
        )
    vocab = list(specials) + sorted(sym_counts)
    known = set(vocab)
    while len(vocab) < vocab_size and pair_counts:
        # score = count(ab) / (count(a) count(b)) among pairs seen min_pair_count times;
        # ties go to the greater (a, b) strings.
        a, b = max(
            pair_counts,
            key=lambda p: (
                pair_counts[p] >= min_pair_count,
                pair_counts[p] / (sym_counts[p[0]] * sym_counts[p[1]]),
                p,
            ),
        )
        if pair_counts[a, b] < min_pair_count:
            break
        new = merged_symbol(a, b)
        changed = set()
        for wi in where.pop((a, b)):
            old, n = words[wi], freqs[wi]
            out = merge_ids(old, (a, b), new)  # bpe's merge works on any symbols, strings too
            for s in old:
                sym_counts[s] -= n
            for s in out:
                sym_counts[s] += n
            for p in zip(old, old[1:]):
                pair_counts[p] -= n
                if p != (a, b):
                    where[p].discard(wi)
            for p in zip(out, out[1:]):
                pair_counts[p] += n
                where.setdefault(p, set()).add(wi)
            changed.update(zip(old, old[1:]))
            words[wi] = out
        for p in changed:
            if pair_counts[p] <= 0:
                del pair_counts[p]
                where.pop(p, None)
        if new not in known:  # "h"+"##ug" and "hu"+"##g" can make the same string
            vocab.append(new)
            known.add(new)
        if progress and len(vocab) % 500 == 0:
            progress(f"vocab {len(vocab)}/{vocab_size}: {new!r}")
    return vocab


class WordPieceTokenizer:
    def __init__(self, vocab, max_word_chars=100):
        self.vocab = list(vocab)
        self.ids = {s: i for i, s in enumerate(self.vocab)}
        self.unk_id = self.ids["[UNK]"]
        self.max_word_chars = max_word_chars
        self.max_piece_chars = max(len(s) for s in self.vocab)
        self._cache = {}

    @property
    def vocab_size(self):
        return len(self.vocab)

    @classmethod
    def train(cls, texts, vocab_size, min_pair_count=100, progress=None, max_word_chars=100):
        if vocab_size < len(SPECIALS) + 1:
            raise UserError(
                f"vocab size {vocab_size} is too small; WordPiece needs at least {len(SPECIALS) + 1}"
            )
        counts = Counter()
        for text in texts:
            counts.update(pretokenize(text))
        if not counts:
            raise UserError("the training corpus is empty; pass documents with text in them")
        vocab = train_wordpiece(counts, vocab_size, min_pair_count=min_pair_count, progress=progress)
        return cls(vocab, max_word_chars)

    def save(self, directory):
        write_json(
            Path(directory) / "wordpiece.json",
            {"format": "wordpiece-v1", "vocab": self.vocab, "max_word_chars": self.max_word_chars},
        )

    @classmethod
    def load(cls, directory):
        """The tokenizer saved in directory/wordpiece.json (errors name the command to rerun)."""

        def build(d):
            vocab = d["vocab"]
            if (
                not all(isinstance(p, str) and p for p in vocab)
                or "[UNK]" not in vocab
                or len(set(vocab)) != len(vocab)
            ):
                raise UserError("the vocab must be distinct non-empty strings, [UNK] among them")
            return cls(vocab, int(d["max_word_chars"]))

        return load_saved(directory, "wordpiece.json", "wordpiece-v1", "wordpiece", build)

    def tokenize_word(self, word):
        """Greedy longest-match-first: the longest piece at each position, `##` after the first."""
        # >>> exercise: greedy longest match first; pieces after the first carry '##'; no match anywhere -> ['[UNK]']
        if len(word) > self.max_word_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            for end in range(min(len(word), start + self.max_piece_chars), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    break
            else:
                return ["[UNK]"]  # no piece matches here: the whole word is unknown, as in BERT
            pieces.append(piece)
            start = end
        return pieces
        # <<< exercise

    def tokenize(self, text):
        return [p for w in pretokenize(text) for p in self.tokenize_word(w)]

    def encode(self, text):
        ids = []
        for w in pretokenize(text):
            cached = self._cache.get(w)
            if cached is None:
                cached = self._cache[w] = [self.ids[p] for p in self.tokenize_word(w)]
            ids.extend(cached)
        return ids

    def decode(self, ids):
        out = ""
        for i in ids:
            if not 0 <= i < len(self.vocab):
                raise UserError(f"token id {i} is outside the vocabulary (size {len(self.vocab)})")
            s = self.vocab[i]
            out += s[2:] if s.startswith("##") else (" " + s if out else s)
        return out


def main(argv=None):
    cfg, args = parse_config(
        WordPieceConfig, argv, doc=__doc__, extra=add_run_flags, presets=PRESETS, default_preset="tiny"
    )
    run = Path(args.data)
    train_docs, val_docs = read_data(run)
    train_and_report(
        "WordPiece",
        lambda texts, progress: WordPieceTokenizer.train(
            texts, cfg.vocab_size, cfg.min_pair_count, progress, cfg.max_word_chars
        ),
        lambda tok, folder: tok.save(folder),
        out=run / "wordpiece",
        docs={"train": train_docs, "val": val_docs},
        config=asdict(cfg),
        command=command_line(__file__, argv),
        overwrite=args.overwrite,
        compare_with_bpe=True,
    )


if __name__ == "__main__":
    run_cli(main)
