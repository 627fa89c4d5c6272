"""Encoding a batch of new text: cut each pre-token where no token can cross, merge only the distinct parts.

Why it exists. BPE merges inside a pre-token ("piece") and never across two. Inside a piece a merge
joins two adjacent tokens whose bytes, end to end, are a token of the vocabulary. So if no token of
the vocabulary can lie across the boundary between two characters of a piece, no merge ever
crosses it: the piece's ids are its left part's ids followed by its right part's, each part merged
as if alone. (The lowest-rank-first rule picks, on each side, the pair that side would pick alone:
the leftmost pair of lowest rank overall is the leftmost of lowest rank on its own side.)
Cut at every such boundary, 红楼梦's 96k distinct pieces (2.3 MB) become sub-pieces that are mostly
single characters, ~15k of them distinct (~60 kB) with a trained 2k vocabulary, 57k with 10k, 6k
with GPT-2's ranks: the merging (bpe_fast.encode_joined, 57 % of a cold encode before) nearly
disappears. English gains little (most letter pairs are inside some token) and loses little: the
test is a few array passes over the characters.

When can a token lie across the boundary between characters A and B? Its bytes then contain the
end of A's UTF-8 bytes and the start of B's, meeting at a character boundary of the token (a byte
that is not a continuation byte 0x80-0xBF). `cut_table` lists, for every token and every such
boundary j inside it, the bytes s from the token's previous character boundary (or its start) to j
and p from j to the next one (or its end): a boundary (A, B) of the text can be crossed only if A
ends with some s and B starts with its p. Nearly always s and p are whole characters: then (A, B)
is a pair of code points, tested exactly in a grid. When one side is half a character (GPT-2 has
b" \\xe7", a space and the first byte of many Chinese characters) the whole one is flagged: no cut
after it (AFTER) / before it (BEFORE). When both are halves (GPT-2 has four), each such (s, p) gets
a bit in two tables over code points, and (A, B) is tested exactly. Flags only keep pieces longer;
they never change an id.

`encode_texts` encodes a batch of texts this way, for bpe.py's `encode_ordinary_batch`: the pieces'
sub-pieces (`sub_piece_starts`), the distinct ones (`distinct_sub_pieces`), merged in rounds on
arrays (bpe_fast.encode_joined), then each text's ids by gathers. Where cutting gains little
(English: 1.2 sub-pieces per piece) it finds the distinct pieces with a dict and merges those. A library; the
command that times it is bench_bpe.py (tests: tests/test_02_tokenizer.py, against the per-piece loop).

Interview questions it answers:
- When do two strings' BPE ids simply concatenate? (when no vocabulary token can span the seam)
- How do you deduplicate a million short strings without a million Python objects? (pack up to
  three code points in one int64: a table indexed by code point for one, a sort for two or three)
"""

import functools
import gc
from contextlib import contextmanager
from itertools import chain
from typing import NamedTuple

import numpy as np

from bpe_fast import encode_joined, ranges, utf8_joined  # same stage

AFTER, BEFORE = 1, 2  # flag bits of a code point, see cut_table
N_CODE_POINTS = 0x110000
BITS = 21  # bits of a code point (< 0x110000 < 2^21): three fit in one int64


@functools.cache
def code_point_tables():
    """(length, low): the UTF-8 length (1 to 4) of every code point 0..0x10FFFF, and low[m - 1], its
    low 6m bits: the payload of its last m bytes when those are continuation bytes (10xxxxxx)."""
    cp = np.arange(N_CODE_POINTS, dtype=np.int32)
    length = (1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000)).astype(np.int8)
    return length, [cp & ((1 << 6 * m) - 1) for m in (1, 2, 3)]


def ending_with(s: bytes):
    """Bool mask over code points: the characters whose UTF-8 ends with `s`, the last bytes of a
    character without its first (1 to 3 continuation bytes); no character for anything else."""
    m = len(s)
    if not (1 <= m <= 3 and all(0x80 <= b < 0xC0 for b in s)):
        return np.zeros(N_CODE_POINTS, bool)
    length, low = code_point_tables()
    payload = 0
    for b in s:
        payload = payload << 6 | (b & 0x3F)
    return (length > m) & (low[m - 1] == payload)


def starting_with(p: bytes):
    """Bool mask over code points: the characters whose UTF-8 starts with `p`, the first bytes of a
    character without its last (a lead byte 110xxxxx / 1110xxxx / 11110xxx, then fewer continuation
    bytes than it announces): a range of code points; no character for anything else."""
    mask = np.zeros(N_CODE_POINTS, bool)
    n = 2 if 0xC0 <= p[0] < 0xE0 else 3 if 0xE0 <= p[0] < 0xF0 else 4 if 0xF0 <= p[0] < 0xF8 else 0
    if n > len(p) and all(0x80 <= b < 0xC0 for b in p[1:]):
        payload = p[0] & (0x7F >> n)  # the lead byte's bits: 5, 4 or 3 of them
        for b in p[1:]:
            payload = payload << 6 | (b & 0x3F)
        rest = 6 * (n - len(p))  # bits still to come
        mask[payload << rest : (payload + 1) << rest] = True
        mask &= code_point_tables()[0] == n  # an overlong start (b"\xe0\x80") begins no character
    return mask


def one_character(fragment: bytes):
    """The code point if `fragment` is exactly one whole UTF-8 character, else None."""
    try:
        s = fragment.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return ord(s) if len(s) == 1 else None


class CutTable(NamedTuple):
    """Where tokens can lie across a character boundary (built by cut_table, read by sub_piece_starts)."""

    flags: np.ndarray  # uint8 per code point: AFTER / BEFORE, a boundary after / before it may be crossed
    row: np.ndarray  # int32/64 per code point: its row in `grid` (0: it begins no listed pair)
    col: np.ndarray  # int32/64 per code point: its column (0: it ends no listed pair)
    grid: np.ndarray  # bool, row[A] + col[B]: (A, B) is a listed pair; None when too large
    pairs: np.ndarray  # sorted int64 A << 21 | B of the listed pairs (searched when grid is None)
    ends: np.ndarray  # bit k of ends[A]: A ends with the k-th half character s; None when no halves
    begins: np.ndarray  # bit k of begins[B]: B starts with the k-th half character p


GRID_MAX = 1 << 26  # the pair grid is dense up to this many entries (64 MB); then searched
SUBS_PER_PIECE = 2  # encode_texts cuts pieces when that makes at least this many sub-pieces per piece,
SAMPLE = 1000  # ... judged on the first this many pieces
HALVES_MAX = 64  # pairs of half characters tested exactly, one bit each (then flagged)


def cut_table(ranks: dict) -> CutTable:
    """Every way a token of `ranks` lies across a character boundary (see the top of the file): pairs
    of whole characters (A, B) that meet inside a token, in a dense grid over the characters that
    begin / end some pair; a whole character next to half of one: flagged AFTER / BEFORE; half a
    character on both sides (s, p): one bit each in `ends` / `begins` (at most 64 of them; more
    are flagged, on the side with fewer characters)."""
    flags = np.zeros(N_CODE_POINTS, np.uint8)
    pairs, halves = set(), set()
    for token in ranks:
        starts = [j for j, b in enumerate(token) if not 0x80 <= b < 0xC0] + [
            len(token)
        ]  # character boundaries
        edges = sorted({0, *starts})
        for prev, j, nxt in zip(edges, edges[1:], edges[2:]):  # every boundary strictly inside the token
            s, p = token[prev:j], token[j:nxt]
            a, b = one_character(s), one_character(p)
            if a is not None and b is not None:
                pairs.add(a << BITS | b)
            elif a is not None:
                flags[a] |= AFTER  # only A's own boundary can be crossed: keep every boundary after A
            elif b is not None:
                flags[b] |= BEFORE
            else:
                halves.add((s, p))
    ends = begins = None
    halves = sorted(halves)  # half a character on both sides (a few in GPT-2: b"\x88" + b"\xe8")
    if halves[:HALVES_MAX]:  # one bit each
        bits = np.min_scalar_type((1 << len(halves[:HALVES_MAX])) - 1)  # uint8 for up to 8 pairs, ...
        ends, begins = np.zeros((2, N_CODE_POINTS), bits)
        for k, (s, p) in enumerate(halves[:HALVES_MAX]):
            ends[ending_with(s)] |= bits.type(1 << k)
            begins[starting_with(p)] |= bits.type(1 << k)
    for s, p in halves[HALVES_MAX:]:  # too many to test exactly: flag the smaller set of characters
        end, begin = ending_with(s), starting_with(p)
        if end.sum() <= begin.sum():
            flags[end] |= AFTER
        else:
            flags[begin] |= BEFORE
    pairs = np.array(sorted(pairs), np.int64)
    a, b = pairs >> BITS, pairs & ((1 << BITS) - 1)
    row, col = np.zeros((2, N_CODE_POINTS), np.int64)
    row[a], col[b] = 1, 1
    width = int(col.sum()) + 1
    row, col = np.cumsum(row) * row * width, np.cumsum(col) * col  # numbered 1, 2, ... ; 0 for the others
    grid = None
    if (row.max(initial=0) + width) <= GRID_MAX:
        grid = np.zeros(row.max(initial=0) + width, bool)
        grid[row[a] + col[b]] = True
        row, col = row.astype(np.int32), col.astype(np.int32)  # < GRID_MAX: half the memory per boundary
    return CutTable(flags, row, col, grid, pairs, ends, begins)


def sub_piece_starts(chars, piece_chars, cuts: CutTable):
    """Bool per character of the pieces laid end to end (`chars`: code points, uint32; `piece_chars`:
    characters per piece): True where a sub-piece starts, that is at each piece's start and at each
    boundary that no token of the vocabulary can lie across (see cut_table)."""
    n = len(chars)
    left, right = chars[:-1], chars[1:]  # the characters on each side of each boundary
    whole = (cuts.flags[left] & AFTER) | (cuts.flags[right] & BEFORE) != 0  # a half character may cross
    if cuts.ends is not None:
        whole |= cuts.ends[left] & cuts.begins[right] != 0
    at = cuts.row[left] + cuts.col[right]  # > 0 where (A, B) may be a listed pair
    if cuts.grid is not None:
        whole |= cuts.grid[at]
    else:
        maybe = np.flatnonzero(~whole & (cuts.row[left] != 0) & (cuts.col[right] != 0))
        q = left[maybe].astype(np.int64) << BITS | right[maybe]
        whole[maybe] = cuts.pairs[np.minimum(np.searchsorted(cuts.pairs, q), len(cuts.pairs) - 1)] == q
    start = np.ones(n + 1, bool)  # one spare slot: an empty last piece starts at n
    start[1:n] = ~whole
    start[np.cumsum(piece_chars) - piece_chars] = True
    return start[:n]


def distinct_sub_pieces(joined: str, chars, starts, lengths):
    """(strings, row): the distinct sub-pieces as strings and the row of each sub-piece among them,
    for the sub-pieces joined[starts[i] : starts[i] + lengths[i]] (`chars`: joined's code points).

    Without a Python string per sub-piece, as most are one to three characters: one character is
    found distinct by a table indexed by code point (no sort); two or three pack exactly into one
    int64 key (code point + 1 each, so "ab" and "ab" + chr(0) differ), made distinct by np.unique
    (a sort of the few that are not single characters); longer ones: a dict of their strings."""
    row = np.empty(len(starts), np.int64)
    one = np.flatnonzero(lengths == 1)
    code = chars[starts[one]]
    present = np.zeros(N_CODE_POINTS, bool)
    present[code] = True
    singles = np.flatnonzero(present)  # each distinct single character, ascending
    number = np.zeros(N_CODE_POINTS, np.int64)
    number[singles] = np.arange(len(singles))
    row[one] = number[code]
    strings = list(map(chr, singles.tolist()))

    short = np.flatnonzero((lengths == 2) | (lengths == 3))
    s = starts[short]
    c = chars.astype(np.int64)[np.stack([s, s + 1, np.minimum(s + 2, len(chars) - 1)])] + 1
    key = c[0] | c[1] << BITS | np.where(lengths[short] == 3, c[2], 0) << 2 * BITS
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    row[short] = len(strings) + inverse
    strings += [joined[a : a + m] for a, m in zip(s[first].tolist(), lengths[short][first].tolist())]

    long = np.flatnonzero(lengths > 3)
    rows = {}
    pieces = [joined[a : a + m] for a, m in zip(starts[long].tolist(), lengths[long].tolist())]
    row[long] = len(strings) + np.array([rows.setdefault(w, len(rows)) for w in pieces], np.int64)
    strings += list(rows)
    return strings, row


@contextmanager
def gc_paused():
    """Python's cycle collector off for a block that makes many lists and no cycles: it would
    otherwise scan every live object each few hundred thousand allocations (30 % of a cold encode)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def sub_pieces(words, cuts) -> tuple:
    """(strings, row, piece): the distinct sub-pieces of the pieces `words` (str), each cut where no
    token can cross (`sub_piece_starts`, `cuts` from `cut_table`); the row among them of each
    sub-piece, in order; and the index in `words` of the piece each sub-piece comes from."""
    joined = "".join(words)
    chars = np.frombuffer(joined.encode("utf-32-le"), np.uint32)  # code points, indices into the tables
    piece_chars = np.fromiter(map(len, words), np.int64, len(words))
    starts = np.flatnonzero(sub_piece_starts(chars, piece_chars, cuts))
    lengths = np.diff(np.append(starts, len(chars)))  # characters per sub-piece
    strings, row = distinct_sub_pieces(joined, chars, starts, lengths)
    return strings, row, np.repeat(np.arange(len(words)), piece_chars)[starts]


def encode_texts(pieces, byte_ids, table, cuts=None) -> tuple:
    """(ids of each text, {string: ids} of the units seen more than once) for the pre-tokens of each
    text (`pieces`: a list of str lists). The units: the sub-pieces (`sub_pieces`, with `cuts`) when
    cutting the first SAMPLE pieces gives at least SUBS_PER_PIECE sub-pieces per piece (Chinese:
    4-7), else the pieces themselves (English: 1.2, where a dict that finds the distinct pieces is
    cheaper). Each distinct unit is merged once (bpe_fast.encode_joined) and the texts are put
    together by one gather in arrays instead of a Python loop per piece. A unit's ids are those of
    the same string as a whole piece, so the units seen more than once can go into the caller's cache
    (those seen once are mostly rare words, not worth a list each)."""
    text_of = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])  # the text of each piece
    with gc_paused():
        words = pieces[0] if len(pieces) == 1 else list(chain.from_iterable(pieces))
        if cuts is not None and len(sub_pieces(words[:SAMPLE], cuts)[1]) >= SUBS_PER_PIECE * len(
            words[:SAMPLE]
        ):
            distinct, occurrence, piece = sub_pieces(words, cuts)
            text_of = text_of[piece]
        else:
            first = {}  # piece -> where it first occurs in `words` (a map in C, no Python loop)
            seen_at = np.fromiter(map(first.setdefault, words, range(len(words))), np.int64, len(words))
            distinct = list(first)  # in order of first occurrence
            row = np.zeros(len(words), np.int64)
            row[np.fromiter(first.values(), np.int64, len(first))] = np.arange(len(first))
            occurrence = row[seen_at]  # the row of each piece among the distinct ones
        ids, offsets, lengths = encode_joined(*utf8_joined(distinct), byte_ids, table)
        m = lengths[occurrence]  # tokens of each occurrence
        repeated = np.flatnonzero(np.bincount(occurrence, minlength=len(distinct)) > 1)
        counts = lengths[repeated]
        kept = ids[ranges(offsets[repeated], counts)].tolist()  # only the repeated units' ids to lists
        ends = np.cumsum(counts).tolist()
        cacheable = {
            distinct[r]: kept[e - k : e] for r, e, k in zip(repeated.tolist(), ends, counts.tolist())
        }
    # The collector is back on, and its young-generation pass, due after all the objects made above,
    # runs at the next allocation: before the texts' id lists exist, not after. A pass visits every
    # item of every young list, and a million ints scattered in memory are a million cache misses
    # (~25 ms, 8 % of a cold encode of 红楼梦). The lists returned are young either way, as tiktoken's
    # are: the caller's next pass visits them once, whoever made them.
    flat = ids[ranges(offsets[occurrence], m)].tolist()
    if len(pieces) == 1:  # one text (encode_ordinary): its ids are the whole list, no copy
        return [flat], cacheable
    per_text = np.bincount(text_of, m, len(pieces)).astype(np.int64).tolist()  # tokens per text
    ends = np.cumsum(per_text).tolist()
    return [flat[end - k : end] for end, k in zip(ends, per_text)], cacheable
