"""Pre-tokenization: the regex that cuts text into pre-tokens, and the special tokens cut out first.

Every tokenizer of this stage starts here. A regex splits text into "pre-tokens" (words, number
runs, punctuation runs, whitespace); BPE merges never cross a pre-token, so "dog." and "dog!" share
the token "dog". Special tokens (`<|endoftext|>`, the chat roles) are cut out before the regex runs:
never split, never merged, never counted. Training (bpe_merges.py) counts the pre-tokens once each
(`word_counts_of`); encoding (bpe.py) merges each pre-token on its own.
The `regex` module runs the patterns (it has \\p{L}, Unicode letters); for GPT-2's and GPT-4's
patterns on text with no character beyond U+FFFF, `PreTokenizer` runs the same pattern in the
standard library's `re` with those classes spelled out, twice as fast and tested equal: the regex
was half of a cold encode (bench_bpe.py).

Used by bpe.py and bpe_merges.py (a library; the command is train_tokenizer.py).

Interview questions it answers:
- Why pre-tokenize with a regex? Merges stay inside words, so "dog", "dog." and "dog!" do not each
  become separate tokens; the GPT-4 pattern also caps digit runs at 3, which helps arithmetic.
- Why does `\\s+(?!\\S)` appear in GPT-2's pattern? It leaves the last space of a run of spaces to
  start the next word, so " word" is one pre-token whatever the indentation before it.
- How are special tokens kept whole, and why must user text not be able to produce them? (split on
  them first; bpe.py's `encode_ordinary` treats a literal "<|endoftext|>" in a web page as text)
- How can two regex engines be trusted to cut the same pieces? (derive one's character classes
  from the other by asking it about every character, then test both on every kind of character)
"""

import functools
import re
import sys
from collections import Counter
from pathlib import Path

import regex

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError

# GPT-2's pattern: contractions, letter runs, digit runs, punctuation runs, each with an optional
# leading space; `\s+(?!\S)` leaves the last space of a whitespace run to start the next word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's (cl100k): case-insensitive contractions, digits in groups of at most 3, newlines apart.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# `<|endoftext|>` separates documents; the chat-role tokens are used by the SFT chat template (05).
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


# The same two patterns for the standard library's `re`, which has no \p{..}: {L}, {N}, {S} are spelled
# out as the characters below U+10000 that the `regex` module puts in \p{L}, \p{N}, \s, and {s}, {d}, ...
# as those it matches case-insensitively (`bmp_classes`), so on text without characters beyond U+FFFF
# the pieces are the same, found ~2.2x faster (`re` runs these classes as bitmaps): tinyshakespeare
# 33 ms instead of 75, 红楼梦 19 instead of 44 (tiktoken encodes them whole in 70 and 140 ms).
GPT2_BMP = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"""
GPT4_BMP = (
    r"""'(?:{s}|{d}|{m}|{t}|{l}{l}|{v}{e}|{r}{e})|[^\r\n{L}{N}]?+[{L}]+|[{N}]{{1,3}}| ?[^{S}{L}{N}]++[\r\n]*"""
    r"""|[{S}]*[\r\n]|[{S}]+(?![^{S}])|[{S}]+"""
)
BMP_PATTERNS = {GPT2_PATTERN: GPT2_BMP, GPT4_PATTERN: GPT4_BMP}
BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")  # emoji and rarer: the `regex` module's turn


@functools.cache
def bmp_classes() -> dict:
    r"""{"L": class body, "N": ..., "S": ..., "s": "[sSſ]", ...}: the characters below U+10000 that the
    `regex` module matches with \p{L}, \p{N}, \s, and with (?i:s), (?i:d), ... (found by asking it)."""
    every = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x10000)]))  # no lone surrogates

    def spelled(chars):  # "a-zA-Z..." from the sorted characters, runs as ranges
        points, out = [ord(c) for c in chars], []
        for cp in points:
            if out and cp == out[-1][1] + 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
        return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in out)

    classes = {
        k: spelled(regex.findall(p, every)) for k, p in (("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s"))
    }
    return classes | {c: f"[{spelled(regex.findall(f'(?i:{c})', every))}]" for c in "sdmtlver"}


class PreTokenizer:
    """`findall` of a pre-tokenizer regex: the `regex` module's, or for GPT-2's and GPT-4's patterns on
    text with no character beyond U+FFFF, the standard library's with the same classes (BMP_PATTERNS):
    the same pieces, in about half the time. Tested equal on every kind of character."""

    def __init__(self, pattern: str):
        self.pattern = PATTERNS.get(pattern, pattern)
        self.full = regex.compile(self.pattern)
        template = BMP_PATTERNS.get(self.pattern)
        self.bmp = re.compile(template.format(**bmp_classes())) if template else None

    def findall(self, text: str) -> list:
        if self.bmp is not None and (text.isascii() or not BEYOND_BMP.search(text)):
            return self.bmp.findall(text)
        return self.full.findall(text)


def compile_pattern(pattern: str) -> PreTokenizer:
    """The pre-tokenizer for "gpt2", "gpt4" or a regex; a bad regex is a UserError."""
    try:
        return PreTokenizer(pattern)
    except regex.error as e:
        raise UserError(
            f"--pattern {pattern!r} is not a valid regex ({str(e).splitlines()[0]}); "
            "fix it, or use gpt2 or gpt4"
        ) from None


def special_splitter(special_tokens):
    """A regex that finds special tokens, longest first: alternation takes the first alternative that
    matches, not the longest, so with "<|a|>" and "<|a|><|b|>" the longer one must be tried first."""
    if not special_tokens:
        return None
    return regex.compile(
        "(" + "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)) + ")"
    )


def word_counts_of(texts, pattern, special_tokens=(), progress=None) -> Counter:
    """Count every distinct pre-token (as UTF-8 bytes) in the corpus. Special tokens are cut out
    first and never counted, so no merge can span a document boundary."""
    pat = compile_pattern(pattern)
    splitter = special_splitter(special_tokens)
    counts = Counter()
    for i, text in enumerate(texts):
        chunks = splitter.split(text)[::2] if splitter else [text]  # odd items are the specials
        for chunk in chunks:
            counts.update(pat.findall(chunk))
        if progress and (i + 1) % 2000 == 0:
            progress(f"pre-tokenized {i + 1} documents, {len(counts)} distinct pre-tokens")
    return Counter({w.encode("utf-8"): n for w, n in counts.items()})
