"""Pre-tokenization: the regex that cuts text into pre-tokens, and the special tokens cut out first.

Every tokenizer of this stage starts here. A regex splits text into "pre-tokens" (words, number
runs, punctuation runs, whitespace); BPE merges never cross a pre-token, so "dog." and "dog!" share
the token "dog". Special tokens (`<|endoftext|>`, the chat roles) are cut out before the regex runs:
never split, never merged, never counted. Training (bpe_merges.py) counts the pre-tokens once each
(`word_counts_of`); encoding (bpe.py) merges each pre-token on its own.

Used by bpe.py and bpe_merges.py (a library; the command is train_tokenizer.py).

Interview questions it answers:
- Why pre-tokenize with a regex? Merges stay inside words, so "dog", "dog." and "dog!" do not each
  become separate tokens; the GPT-4 pattern also caps digit runs at 3, which helps arithmetic.
- Why does `\\s+(?!\\S)` appear in GPT-2's pattern? It leaves the last space of a run of spaces to
  start the next word, so " word" is one pre-token whatever the indentation before it.
- How are special tokens kept whole, and why must user text not be able to produce them? (split on
  them first; bpe.py's `encode_ordinary` treats a literal "<|endoftext|>" in a web page as text)
"""

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


def compile_pattern(pattern: str):
    """The compiled pre-tokenizer regex for "gpt2", "gpt4" or a regex; a bad regex is a UserError."""
    try:
        return regex.compile(PATTERNS.get(pattern, pattern))
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
