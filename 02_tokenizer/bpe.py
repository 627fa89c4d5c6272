"""Byte-level BPE: the tokenizer. Encode exactly like GPT-2 / tiktoken, decode, save, load GPT-2's files.

What it is. Byte Pair Encoding starts from the 256 byte values and repeatedly adds one new token:
the concatenation of the adjacent pair of tokens that occurs most often in the training corpus.
The ordered list of merges *is* the tokenizer. "Byte-level" means the base alphabet is bytes, not
characters, so every string (Chinese, emoji, binary junk) is encodable and there is no [UNK].

The stage in reading order, one file per concept:
  1. pretokenize.py: a regex splits text into pre-tokens; special tokens are cut out first.
  2. bpe_merges.py: learning the merges (the textbook loop, then the incremental trainer);
     bpe_fast.py: the same trainer and encoder on numpy arrays, tested equal;
     bpe_cuts.py: a batch of new text, its pieces cut where no token can cross, then bpe_fast.
  3. this file, `BPETokenizer`: training (`train`, on bpe_fast), then
     encode: per pre-token, repeatedly merge the adjacent pair whose merged bytes have the lowest
     rank (rank = token id), with a cache per pre-token (`bpe_piece`, the readable reference). This
     is tiktoken's rule, so the ids equal a `tiktoken.Encoding` built from our ranks, by
     construction (`to_tiktoken`, checked in tests). Pre-tokens missing from the cache are cut
     where no token can lie across (bpe_cuts.py) and the distinct parts merged all together in
     rounds on arrays (bpe_fast.py): the same ids, 10-13x faster on Chinese, about tiktoken's speed.
     decode: concatenate the tokens' bytes, then UTF-8 decode once with replacement (one token may
     hold half a Chinese character; only the final string is decoded).
     save / load, and OpenAI's GPT-2 files.
  4. tokenizer_eval.py measures bytes/token, token_shards.py writes the ids for pretraining,
     tokenizer_cli.py is the body the three commands share, train_tokenizer.py is BPE's command.

Vocabulary layout: ids 0..255 are the bytes, 256.. the merges in training order, then the special
tokens in the order of SPECIAL_TOKENS (GPT-2 also puts `<|endoftext|>` last, id 50256).

Saved format (`save(dir)` -> dir/tokenizer.json, plain JSON): {"format": "bpe-v1", "pattern": <regex>,
  "vocab": {"<id>": "<hex of its bytes>"}, "special_tokens": {"<|endoftext|>": id, ...},
  "merges": [[left_id, right_id], ...] in order (merge i makes token 256 + i)}
`from_gpt2(vocab.json, merges.txt)` reads OpenAI's GPT-2 files (their byte-to-unicode alphabet).

Use it (a library; the command that trains it on a run is train_tokenizer.py):
    tok = BPETokenizer.load("runs/tiny/tokenizer"); tok.encode("hello"); tok.decode(ids)
    python 02_tokenizer/train_tokenizer.py --data runs/tiny   # -> runs/tiny/tokenizer/ and tokens/

Interview questions it answers:
- Why byte-level? No unknown tokens, 256 base symbols cover every language; the cost is longer
  sequences for non-Latin scripts (see bytes/token for Chinese in the outcome table).
- How does BPE encode a word, and why is it "lowest rank first" and not "longest match"? (bpe_piece)
- How are special tokens kept whole, and why must user text not be able to produce them?
  (split on them before the regex; `encode_ordinary` treats a literal "<|endoftext|>" in a web page
  as plain text, otherwise a document could inject an end-of-text or a fake `<|assistant|>` turn.)
- Why decode bytes once at the end rather than token by token? (a token may end mid-character)
"""

import contextlib
import sys
from itertools import chain, islice, repeat
from pathlib import Path

import regex

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from common.files import read_json, read_text, write_json
from common.layout import RunLayout

from bpe_cuts import cut_table, encode_texts  # same stage
from bpe_fast import encode_pieces, merge_table, train_merges_fast  # same stage
from pretokenize import (  # same stage
    GPT2_PATTERN,
    GPT4_PATTERN,
    PATTERNS,
    SPECIAL_TOKENS,
    compile_pattern,
    special_splitter,
    word_counts_of,
)

SINGLE_BYTES = [bytes([b]) for b in range(256)]
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 1  # every byte, every special token, and one merge


class BPETokenizer:
    """Byte-level BPE tokenizer: `vocab` id -> bytes, `ranks` bytes -> id, `merges` in order."""

    cache_size = 500_000  # pre-tokens whose ids are kept

    def __init__(self, vocab, merges, special_tokens, pattern=GPT4_PATTERN):
        self.vocab = dict(vocab)  # id -> bytes, ordinary tokens only
        self.merges = list(merges)  # [(left_id, right_id)], in training order
        self.special_tokens = dict(special_tokens)  # str -> id
        self.pattern = PATTERNS.get(pattern, pattern)
        self.ranks = {b: i for i, b in self.vocab.items()}
        if len(self.ranks) != len(self.vocab):
            raise UserError("vocab has two ids for the same bytes; each token's bytes must be unique")
        self.byte_ids = [self.ranks.get(bytes([b])) for b in range(256)]
        if None in self.byte_ids:
            raise UserError("vocab lacks some of the 256 single bytes; a byte-level vocab needs all of them")
        self.id_to_special = {i: s for s, i in self.special_tokens.items()}
        self._pat = compile_pattern(self.pattern)
        self._special_re = special_splitter(self.special_tokens)
        self._cache = {}  # pre-token -> its ids
        self._merge_table = None  # for bpe_fast.encode_pieces, built on first use
        self._cut_table = None  # for bpe_cuts.encode_texts, built on first use

    @property
    def vocab_size(self) -> int:
        return max([*self.vocab, *self.special_tokens.values()]) + 1

    @property
    def eot_id(self) -> int:
        return self.special_tokens["<|endoftext|>"]

    # -------- training
    @classmethod
    def train(
        cls,
        texts,
        vocab_size,
        pattern="gpt4",
        special_tokens=SPECIAL_TOKENS,
        progress=None,
        progress_every=500,
    ):
        """Learn `vocab_size - 256 - len(special_tokens)` merges from an iterable of strings
        (with bpe_fast.train_merges_fast: train_merges' merges, on arrays)."""
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 1:
            raise UserError(
                f"vocab size {vocab_size} is too small for BPE: 256 bytes + {len(special_tokens)} "
                f"special tokens + at least one merge; use at least {256 + len(special_tokens) + 1}"
            )
        word_counts = word_counts_of(texts, pattern, special_tokens, progress)
        if not word_counts:
            raise UserError("the training corpus is empty; pass documents with text in them")
        merges = train_merges_fast(word_counts, n_merges, progress, progress_every)
        if len(merges) < n_merges and progress:
            progress(f"corpus ran out of pairs after {len(merges)} merges; vocab is smaller than asked")
        vocab = {i: bytes([i]) for i in range(256)}
        for k, (a, b) in enumerate(merges):
            vocab[256 + k] = vocab[a] + vocab[b]
        specials = {s: 256 + len(merges) + i for i, s in enumerate(special_tokens)}
        return cls(vocab, merges, specials, pattern)

    # -------- encoding
    def bpe_piece(self, piece: bytes) -> list:
        """Merge the bytes of one pre-token: always the adjacent pair whose bytes have the lowest rank
        (leftmost on ties), as tiktoken does. pair_ranks[i] is the rank of parts[i] + parts[i+1]."""
        # >>> exercise: from single bytes, merge the adjacent pair of lowest rank (leftmost on ties) till none
        get, inf = self.ranks.get, float("inf")
        # `[bytes([b]) for b in piece]` and `[get(a + b, inf) for adjacent a, b]`, with map (in C)
        parts = list(map(SINGLE_BYTES.__getitem__, piece))
        pair_ranks = list(map(get, map(bytes.__add__, parts, parts[1:]), repeat(inf)))
        while pair_ranks:
            best = min(pair_ranks)
            if best == inf:
                break
            i = pair_ranks.index(best)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
            del pair_ranks[i]
            if i > 0:  # only the two neighbours of the merged pair change
                pair_ranks[i - 1] = get(parts[i - 1] + parts[i], inf)
            if i < len(pair_ranks):
                pair_ranks[i] = get(parts[i] + parts[i + 1], inf)
        return [self.ranks[p] for p in parts]
        # <<< exercise

    def bpe_pieces(self, pieces) -> list:
        """`bpe_piece` of each piece (bytes): a few one by one, many at once in rounds on arrays
        (bpe_fast.encode_pieces, the same ids; it pays off from about a hundred pieces)."""
        if len(pieces) < 100:
            return list(map(self.bpe_piece, pieces))
        if self._merge_table is None:
            self._merge_table = merge_table(self.ranks)
        return encode_pieces(pieces, self.byte_ids, self._merge_table)

    def encode_ordinary(self, text: str) -> list:
        """Encode text with no special-token handling: a literal "<|endoftext|>" is just text."""
        return self.encode_ordinary_batch([text])[0]

    def encode_ordinary_batch(self, texts) -> list:
        """`encode_ordinary` of each text. Each distinct pre-token is merged once: found in the cache,
        or merged together with all the other pre-tokens of these texts that are not there yet."""
        pieces = [self._pat.findall(t) for t in texts]
        cache = self._cache
        cold = not cache and sum(map(len, pieces)) >= 1000  # all new: no need to list them first
        new = [] if cold else [w for w in dict.fromkeys(chain.from_iterable(pieces)) if w not in cache]
        if cold or len(new) >= 1000:  # mostly new text: every piece merged at once, texts gathered in arrays
            if self._merge_table is None:
                self._merge_table = merge_table(self.ranks)
            if self._cut_table is None:
                self._cut_table = cut_table(self.ranks)
            ids, cacheable = encode_texts(pieces, self.byte_ids, self._merge_table, self._cut_table)
            if len(cache) + len(cacheable) > self.cache_size:  # bounded memory: start over
                cache.clear()
            cache.update(islice(cacheable.items(), self.cache_size))
            return ids
        if len(cache) + len(new) > self.cache_size:  # bounded memory: start over rather than grow
            cache.clear()
            new = list(dict.fromkeys(chain.from_iterable(pieces)))
        cache.update(zip(new, self.bpe_pieces([w.encode("utf-8") for w in new])))
        return [list(chain.from_iterable(map(cache.__getitem__, words))) for words in pieces]

    def encode(self, text: str, allowed_special=()) -> list:
        """Encode text; special tokens named in `allowed_special` ("all" or a set) become their ids.
        One that is not allowed is an error (as in tiktoken): as text or as control, it surprises."""
        if not self._special_re:
            return self.encode_ordinary(text)
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise UserError(
                f"allowed_special names {sorted(unknown)[0]!r}, which is not a special token "
                f"of this tokenizer; choose from {list(self.special_tokens)}"
            )
        ids = []
        for i, chunk in enumerate(self._special_re.split(text)):
            if i % 2 == 0:
                ids.extend(self.encode_ordinary(chunk))
            elif chunk in allowed:
                ids.append(self.special_tokens[chunk])
            else:
                raise UserError(
                    f"text contains the special token {chunk!r}, which allowed_special does not "
                    f"allow; pass allowed_special={{{chunk!r}}} or 'all', or use encode_ordinary"
                )
        return ids

    def encode_iterable(self, chunks, allowed_special=(), buffer_chars=1 << 16):
        """Stream token ids from an iterable of strings (e.g. an open file) without reading it whole.

        Text is buffered and cut only after a newline that has a non-space before it and a letter or
        digit after it ("...end.\\nNext"): neither regex pattern lets a pre-token cross such a point,
        and no special token contains a newline, so the ids equal `encode` on the whole text.
        """
        safe_cut = regex.compile(r"(?<=\S)\n(?=[\p{L}\p{N}])")
        buf = ""
        for chunk in chunks:
            buf += chunk
            if len(buf) < buffer_chars:
                continue
            cut = max((m.end() for m in safe_cut.finditer(buf, len(buf) - buffer_chars)), default=0)
            if cut:
                yield from self.encode(buf[:cut], allowed_special)
                buf = buf[cut:]
        if buf:
            yield from self.encode(buf, allowed_special)

    def tokenize(self, text: str) -> list:  # for showing: each token as text (half a character is �)
        return [self.decode([i]) for i in self.encode_ordinary(text)]

    # -------- decoding
    def decode_bytes(self, ids) -> bytes:
        out = []
        for i in ids:
            b = self.vocab.get(i)
            if b is None:
                s = self.id_to_special.get(i)
                if s is None:
                    raise UserError(
                        f"token id {i} is outside the vocabulary (size {self.vocab_size}); "
                        f"were these ids made by a different tokenizer?"
                    )
                b = s.encode("utf-8")
            out.append(b)
        return b"".join(out)

    def decode(self, ids) -> str:  # bytes decoded once, at the end: a token may hold half a character
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -------- save / load / interop
    def save(self, directory):
        directory = Path(directory)
        write_json(
            directory / "tokenizer.json",
            {
                "format": "bpe-v1",
                "pattern": self.pattern,
                "vocab": {str(i): b.hex() for i, b in sorted(self.vocab.items())},
                "merges": [list(m) for m in self.merges],
                "special_tokens": self.special_tokens,
            },
        )

    @classmethod
    def load(cls, directory):
        """The tokenizer saved in directory/tokenizer.json (errors name the command to rerun)."""

        def build(d):
            vocab = {int(i): bytes.fromhex(h) for i, h in d["vocab"].items()}
            merges = [tuple(m) for m in d["merges"]]
            check_merges_match_vocab(vocab, merges, Path(directory) / "tokenizer.json")
            return cls(vocab, merges, d["special_tokens"], d["pattern"])

        return load_saved(directory, "tokenizer.json", "bpe-v1", "tokenizer", build)

    @classmethod
    def from_gpt2(cls, vocab_json, merges_txt):
        """Load OpenAI's GPT-2 `vocab.json` + `merges.txt`. GPT-2 stores bytes as printable unicode
        characters (bytes_to_unicode) so that the files are plain text; we undo that mapping."""
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        encoder, lines = read_json(vocab_json), read_text(merges_txt).splitlines()
        specials = {s: i for s, i in encoder.items() if s.startswith("<|") and s.endswith("|>")}
        vocab = {i: bytes(byte_decoder[c] for c in s) for s, i in encoder.items() if s not in specials}
        ranks = {b: i for i, b in vocab.items()}
        merges = []
        for line in lines:
            if line.startswith("#version") or not line.strip():
                continue
            parts = line.split(" ")
            try:
                merges.append(tuple(ranks[bytes(byte_decoder[c] for c in s)] for s in parts))
            except KeyError:
                raise UserError(
                    f"{merges_txt}: merge {line!r} uses a token missing from {vocab_json}; "
                    f"the merges file does not match its vocab"
                ) from None
        check_merges_match_vocab(vocab, merges, merges_txt)
        return cls(vocab, merges, specials, GPT2_PATTERN)

    def to_tiktoken(self, name="llm-from-scratch-bpe"):
        """A tiktoken.Encoding with our ranks, pattern and special tokens (offline; nothing downloads)."""
        import tiktoken

        return tiktoken.Encoding(
            name=name, pat_str=self.pattern, mergeable_ranks=self.ranks, special_tokens=self.special_tokens
        )


def load_saved(directory, filename, fmt, folder, build):
    """build(d) for the JSON object d in directory/filename, whose "format" must be `fmt`. A missing,
    corrupt or inconsistent file is a UserError naming the command that makes it (the folder
    manifest's command when there is one, else the command that writes `folder` of the run)."""
    directory = Path(directory)
    path, made_by = directory / filename, RunLayout(directory.parent).made_by(folder)
    with contextlib.suppress(UserError, KeyError):
        made_by = read_json(directory / "manifest.json")["command"]
    d = read_json(path, made_by)
    try:
        if d.get("format") != fmt:
            raise UserError(f"not a {fmt} file")
        return build(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # UserError is a ValueError
        why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        raise UserError(f"{path}: not a usable tokenizer ({why}); rerun `{made_by}`") from None


def check_merges_match_vocab(vocab, merges, where):
    """Merge k must produce token 256 + k, whose bytes are the concatenation of its two parts."""
    for k, (a, b) in enumerate(merges):
        if (
            len(merges) + 256 > len(vocab)
            or a not in vocab
            or b not in vocab
            or vocab.get(256 + k) != vocab[a] + vocab[b]
        ):
            raise UserError(
                f"{where}: merge {k} ({a}, {b}) does not produce vocab id {256 + k}; "
                f"the merges file does not match its vocab"
            )


def bytes_to_unicode():
    """GPT-2's map from the 256 bytes to printable characters: printable Latin-1 bytes map to
    themselves, the rest (controls, space) to chr(256 + n) in byte order. So " " is "Ġ"."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(others)) for b in range(256)}
