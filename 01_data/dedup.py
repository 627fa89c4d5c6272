"""Deduplication: exact (hash of normalized text) and near-duplicate (MinHash + LSH + union-find).

Exact duplicates are easy: hash the normalized text and keep the first document per hash.
Near-duplicates (a copy with a few words changed, a page scraped twice with a different footer) need
a similarity: the Jaccard similarity of the two documents' *shingle* sets,

    J(A, B) = |A ∩ B| / |A ∪ B|,   A = the set of k-token windows ("shingles") of document A.

Comparing all pairs is O(N²). MinHash turns each set into a short signature whose agreement rate
estimates J, and LSH finds the pairs likely to agree without comparing all of them:

1. MinHash. Take a random hash function h_i; the probability that min h_i(A) == min h_i(B) is exactly
   J(A, B) (the minimum over A ∪ B falls in A ∩ B with that probability). With `num_perm` independent
   functions h_i (multiply-shift hashes, see `minhash_signatures`), the fraction of equal minima estimates J with standard
   error sqrt(J(1-J)/num_perm) (≈0.04 at num_perm=128, J=0.5). All documents are hashed at once with
   numpy: one (perms, shingles) matrix per chunk and `np.minimum.reduceat` over each document's span.
2. LSH banding. Cut the signature into b bands of r rows. Two documents become candidates when any
   band is identical. One band matches with probability s^r, so

       P(candidate | J = s) = 1 - (1 - s^r)^b,

   an S-curve that is ~0 below its threshold ≈ (1/b)^(1/r) and ~1 above it. We choose (b, r) with
   b·r ≤ num_perm to minimize the area of false positives (below the wanted Jaccard threshold) plus
   false negatives (above it) under that curve (`lsh_params`). A band is a group-by: sort the band
   keys, and equal neighbours are candidates (`candidate_pairs`; `candidate_pairs_lean` finds the
   same pairs in ~20 bytes a document, for the millions of documents of a streamed run).
3. Each candidate pair is verified and joined in a union-find; one document per cluster -- the
   first in corpus order -- is kept. dedup() verifies by the *exact* Jaccard of the two shingle sets,
   with bands widened so a pair at the threshold is a candidate with probability 0.9998
   (candidate_bands). Verifying by the signature estimate instead (J-hat ≥ threshold) missed 8 of the
   114 injected copies on the default corpus, all at true J 0.71-0.77: a copy just above the
   threshold has its estimate below it about half the time, and the balanced S-curve made it a
   candidate only 79 % of the time at J = 0.7. (The split's looser clustering still uses the estimate.)

    python 01_data/dedup.py                       # the S-curve of the chosen (b, r) and a tiny example
    python 01_data/dedup.py --threshold 0.8 --num-perm 256

Interview questions it answers:
- Why is P(min-hashes equal) = Jaccard? How many permutations for a ±0.05 estimate?
- Why verify LSH candidates exactly? (an estimate's errors pile up at the threshold, where copies are)
- How do b and r move the LSH threshold, and what does each error cost? (false positive: a wasted
  comparison; false negative: a duplicate that leaks into training or across the train/test split)
- Why can the LSH pass outgrow the documents, and how is it kept to a few bytes each? (a close copy
  shares most bands: collect pairs per band and it is stored ~20 times; merge each band's pairs into
  one sorted set instead, and keep one sort index per document: candidate_pairs_lean)
- Why dedup before splitting? (otherwise a near-copy of a test document sits in train: the test
  score measures memorization)
"""

import hashlib
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import option, parse_config, run_cli

TOKEN_RE = re.compile(r"[\u3400-\u9fff]|\w+")  # a CJK character is one token; otherwise a word


@dataclass
class DedupConfig:
    shingle: int = option(3, "tokens per shingle", min=1, max=6)
    num_perm: int = option(128, "MinHash permutations (signature length)", min=16, max=4096)
    threshold: float = option(
        0.7, "Jaccard at or above which two documents are near-duplicates", min=0.05, max=1.0
    )
    seed: int = option(1, "seed of the MinHash functions", min=0)
    # A missed duplicate leaks into training or across the split; a false candidate only costs one
    # signature comparison (every candidate is verified). So weigh false negatives 4x when picking (b, r).
    fp_weight: float = option(0.2, "weight of false candidates when choosing (b, r)", min=0.0)
    fn_weight: float = option(0.8, "weight of missed pairs when choosing (b, r)", min=0.0)


def normalize_for_hash(text: str) -> str:
    """Lowercase, collapse whitespace: copies that differ only in spacing or case hash alike."""
    return " ".join(text.lower().split())


def exact_duplicate_mask(texts) -> np.ndarray:
    """True for every document whose normalized text was already seen earlier."""
    seen, dup = {}, np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        key = hashlib.sha1(normalize_for_hash(t).encode("utf-8")).digest()
        dup[i] = key in seen
        seen.setdefault(key, i)
    return dup


def shingle_set(text: str, k: int) -> set:
    """The exact shingle set (tuples of k tokens); used to check MinHash against true Jaccard."""
    toks = TOKEN_RE.findall(text.lower())
    return {tuple(toks[i : i + k]) for i in range(max(1, len(toks) - k + 1))}


def jaccard(a: set, b: set) -> float:
    # >>> exercise: |A ∩ B| / |A ∪ B| (two empty sets: 0, not a division by zero)
    return len(a & b) / max(1, len(a | b))
    # <<< exercise


def shingle_hashes(text: str, k: int, cache: dict) -> np.ndarray:
    """32-bit hashes of the k-token shingles of `text` (with repeats; MinHash ignores them), shape (n,)."""
    toks = TOKEN_RE.findall(text.lower())
    ids = np.fromiter(
        (cache[t] if t in cache else cache.setdefault(t, zlib.crc32(t.encode("utf-8"))) for t in toks),
        dtype=np.uint64,
        count=len(toks),
    )
    if len(ids) < k:  # shorter than one shingle: the whole token list is the one shingle
        return np.array([int(ids.sum()) & 0xFFFFFFFF if len(ids) else 0], dtype=np.uint64)
    # shingle hash = sum_j ids[i+j]·m_j mod 2^32 with fixed odd multipliers (order-sensitive)
    mults = np.array(
        [0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C][:k], dtype=np.uint64
    )
    h = np.zeros(len(ids) - k + 1, dtype=np.uint64)
    for j in range(k):
        h += ids[j : len(ids) - k + 1 + j] * mults[j]
    return h & np.uint64(0xFFFFFFFF)


def minhash_params(num_perm: int, seed: int):
    """Odd 64-bit multipliers a_i and 64-bit offsets b_i for multiply-shift hashing."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(hash_lists, num_perm=128, seed=1, chunk_elems=1 << 24) -> np.ndarray:
    """MinHash signatures of many documents at once, shape (N, num_perm), uint32.

    hash_lists: N arrays of 32-bit shingle hashes (each non-empty). sig[d, i] = min over the shingles
    x of document d of h_i(x) = ((a_i·x + b_i) mod 2^64) >> 32, the multiply-shift hash family
    (Dietzfelbinger et al.): uint64 arithmetic wraps mod 2^64 for free, so there is no slow `%`,
    and taking the *high* bits makes h_i depend on every bit of x. (A first version used
    (a·x + b) mod (2^61 - 1) with a < 2^31 so the product fit in 64 bits; then a·x + b wraps only a
    few times, h is almost linear in x, every "permutation" picks nearly the same minimum, and the
    estimate was off by 0.1. The test against true Jaccard caught it.)
    """
    # >>> exercise: sig[d, i] = min over d's shingle hashes x of ((a_i·x + b_i) mod 2^64) >> 32, uint32
    a, b = minhash_params(num_perm, seed)
    sig = np.empty((len(hash_lists), num_perm), dtype=np.uint32)
    lengths = np.array([len(h) for h in hash_lists])
    d0 = 0
    while d0 < len(hash_lists):  # a batch of documents whose shingles fit one chunk (at least one doc)
        d1 = d0 + 1
        total = lengths[d0]
        while d1 < len(hash_lists) and total + lengths[d1] <= chunk_elems // 16:
            total += lengths[d1]
            d1 += 1
        x = np.concatenate(hash_lists[d0:d1])  # (S,)
        starts = np.concatenate([[0], np.cumsum(lengths[d0:d1])[:-1]])  # (docs,)
        for p0 in range(0, num_perm, 16):
            hx = (a[p0 : p0 + 16, None] * x[None, :] + b[p0 : p0 + 16, None]) >> np.uint64(32)  # (16, S)
            sig[d0:d1, p0 : p0 + 16] = np.minimum.reduceat(hx, starts, axis=1).T
        d0 = d1
    return sig
    # <<< exercise


def candidate_probability(s, b, r):
    """P(two documents with Jaccard s share at least one identical band) = 1 - (1 - s^r)^b."""
    # >>> exercise: P(share >= 1 band) = 1 - (1 - s^r)^b for Jaccard s, b bands of r rows
    return 1.0 - (1.0 - np.asarray(s, dtype=float) ** r) ** b
    # <<< exercise


def lsh_params(threshold: float, num_perm: int, fp_weight=0.5, fn_weight=0.5):
    """(b, r) with b·r <= num_perm minimizing weighted false-positive + false-negative area of the S-curve."""
    best, best_err = None, float("inf")
    below, above = np.linspace(0, threshold, 200), np.linspace(threshold, 1, 200)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        fp = np.trapezoid(candidate_probability(below, b, r), below)
        fn = np.trapezoid(1 - candidate_probability(above, b, r), above)
        err = fp_weight * fp + fn_weight * fn
        if err < best_err:
            best, best_err = (b, r), err
    return best


def candidate_pairs(sig: np.ndarray, b: int, r: int) -> np.ndarray:
    """Pairs (i, j), i < j, that share an identical band, shape (E, 2); each bucket links to its first doc."""
    # >>> exercise: b bands of r rows; documents with an identical band are candidates: unique (i, j), i < j
    n = len(sig)
    mults = np.random.default_rng(0).integers(1, 1 << 62, size=r, dtype=np.uint64) | np.uint64(1)
    pairs = []
    for band in range(b):
        rows = sig[:, band * r : (band + 1) * r]  # (N, r) uint32
        keys = np.zeros(n, dtype=np.uint64)  # (N,) band key = sum_c rows[:, c]·mults[c], wrapping mod 2^64
        for c in range(r):  # a column at a time: no (N, r) uint64 copy and product (64 bytes a document)
            keys += rows[:, c].astype(np.uint64) * mults[c]
        order = np.argsort(keys, kind="stable")  # equal keys end up adjacent, lower index first
        k = keys[order]
        new_run = np.ones(n, dtype=bool)
        new_run[1:] = k[1:] != k[:-1]
        first = order[
            np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
        ]  # bucket's first doc per position
        m = ~new_run
        pairs.append(np.stack([first[m], order[m]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)
    # <<< exercise


def band_multipliers(r: int) -> np.ndarray:
    """The r odd multipliers of the band key sum_c row[c]·mults[c] mod 2^64 (candidate_pairs' own)."""
    return np.random.default_rng(0).integers(1, 1 << 62, size=r, dtype=np.uint64) | np.uint64(1)


def candidate_pairs_lean(sig, b: int, r: int, chunk_rows=1 << 16) -> np.ndarray:
    """candidate_pairs' pairs, in the same order, with less memory per document: for the millions of
    signatures of a streamed run (prepare_stream.py). A test checks that both give the same pairs.

    candidate_pairs holds, per band, the band's rows (4r bytes a document), its keys and their
    sorted copy, the sort order and three more index arrays (~75 bytes a document at r = 4), and
    then every band's pairs at once (16 bytes a pair, a pair counted once per band it shares, so a
    close copy ~20 times at b = 32), concatenated and np.unique'd (three more copies). Here:
    - the keys are hashed `chunk_rows` documents at a time: a band's rows are never held all at once;
    - the sort order is the only index array per document: the keys are sorted in place (equal keys
      are equal, so np.sort gives keys[order]), and the first document of each run of equal keys is
      found by a running maximum over positions in 4-byte ints (n < 2^31);
    - a band's pairs are merged at once into the sorted unique pairs so far, each pair (i, j) one
      int64 code i·n + j (codes sort as the (i, j) rows do), so a pair is held once, not once a band;
      only the pairs not seen yet are inserted (a binary search per pair), nothing is re-sorted.
    Per document that is keys 8 + order 8 + the sort's buffer (<= 4) bytes, then order 8 + run starts
    4, ~20 at most; per pair 8 bytes (~3 times that while a band is merged); the pairs come back as
    int32 when n < 2^31 (8 bytes a pair, not 16)."""
    n = len(sig)
    index = np.int32 if n < 2**31 else np.int64
    mults = band_multipliers(r)
    codes = np.zeros(0, dtype=np.int64)  # (U,) sorted unique i·n + j of the pairs found so far
    for band in range(b):
        keys = np.empty(n, dtype=np.uint64)  # (N,) the same band keys as candidate_pairs
        for lo in range(0, n, chunk_rows):
            rows = np.asarray(sig[lo : lo + chunk_rows][:, band * r : (band + 1) * r])  # (chunk, r)
            k = keys[lo : lo + chunk_rows]
            k[:] = 0
            for c in range(r):
                k += rows[:, c].astype(np.uint64) * mults[c]
        order = np.argsort(keys, kind="stable")  # (N,) equal keys adjacent, lower index first
        keys.sort()  # in place: keys[order], without a second array
        new_run = np.ones(n, dtype=bool)
        np.not_equal(keys[1:], keys[:-1], out=new_run[1:])
        del keys
        first = np.arange(n, dtype=index)  # (N,) position of the first member of each position's run
        first[~new_run] = 0
        np.maximum.accumulate(first, out=first)
        dup = np.flatnonzero(~new_run)  # (E_band,) positions that are not the first of their run
        del new_run
        band_codes = order[first[dup]] * n + order[dup]  # (E_band,) pairs (bucket's first doc, doc)
        del first, dup, order
        # merge into the sorted codes: only the new pairs are inserted (np.union1d would re-sort all
        # of them every band: 30x slower here, and two more copies)
        band_codes.sort()
        at = np.searchsorted(codes, band_codes)  # (E_band,) where each would sit in `codes`
        seen = at < len(codes)
        seen[seen] = codes[at[seen]] == band_codes[seen]
        codes = np.insert(codes, at[~seen], band_codes[~seen])
    pairs = np.empty((len(codes), 2), dtype=index)  # (E, 2) back to (i, j)
    pairs[:, 0], pairs[:, 1] = codes // n, codes % n
    return pairs


def union_find_roots(n: int, pairs) -> np.ndarray:
    """Cluster id per document: the smallest index in its connected component."""
    # >>> exercise: union-find over the pairs; cluster id = smallest index in the connected component
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)
    # <<< exercise


def component_roots(n: int, pairs) -> np.ndarray:
    """union_find_roots with numpy arrays: the same cluster ids (the smallest index of each connected
    component), at 8 bytes per document instead of a Python list of Python ints (~70 bytes), for the
    millions of documents of a streamed run (prepare_stream.py). A test checks they agree.

    Hook and compress: every pair whose two documents have different roots points the larger root at
    the smaller one (np.minimum.at keeps the smallest offer), then pointer jumping, label = label[label],
    until every label is a root. A label only ever points lower, so the smallest index of a component
    is never hooked and ends as its root; each round removes a root from every component not yet
    joined, and jumping halves the longest path, so rounds stay few.

    Labels are int32 when n < 2^31 (4 bytes a document, and as many for each round's jump), and
    int32 pairs (candidate_pairs_lean's) are read as they are, not copied to int64."""
    index = np.int32 if n < 2**31 else np.int64
    label = np.arange(n, dtype=index)  # (n,) a document's parent, a smaller index or itself
    pairs = np.asarray(pairs).reshape(-1, 2)  # (E, 2)
    if pairs.dtype.kind not in "iu":  # an empty list: no pairs
        pairs = pairs.astype(index)
    while True:
        ri, rj = label[pairs[:, 0]], label[pairs[:, 1]]
        apart = ri != rj
        if not apart.any():
            return label
        np.minimum.at(label, np.maximum(ri[apart], rj[apart]), np.minimum(ri[apart], rj[apart]))
        while True:  # compress: every document points at its root
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped


def signatures(texts, cfg: DedupConfig = None) -> np.ndarray:
    """MinHash signatures of the texts, shape (N, num_perm); each row depends on its text only, so
    signatures computed shard by shard (prepare_stream.py) stack into the same matrix."""
    cfg = cfg or DedupConfig()
    cache = {}
    return minhash_signatures([shingle_hashes(t, cfg.shingle, cache) for t in texts], cfg.num_perm, cfg.seed)


def unique_shingles(text: str, k: int, cache=None) -> np.ndarray:
    """The sorted distinct shingle hashes of `text`: its shingle set, for an exact Jaccard."""
    return np.unique(shingle_hashes(text, k, {} if cache is None else cache))


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two sorted distinct hash arrays."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / max(1, len(a) + len(b) - common)


def candidate_bands(threshold: float, num_perm: int, recall=0.999):
    """(b, r) for exact verification: the most rows per band (the fewest false candidates) that still
    make a pair AT the threshold a candidate with probability >= recall.

    lsh_params balances the S-curve's two error areas, which leaves P(candidate | J = 0.7) = 0.79 at
    num_perm 128: a fifth of the pairs just above the threshold are never looked at. When every
    candidate is checked exactly, a false candidate costs one comparison, so we buy recall at the
    threshold instead: at 0.7 and 128 permutations, b = 32 bands of r = 4 rows, P = 0.9998."""
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if candidate_probability(threshold, b, r) >= recall:
            return b, r
    return num_perm, 1


def estimated_jaccard(sig, pairs, cols=4, pair_chunk=1 << 16) -> np.ndarray:
    """The share of equal signature entries per pair, shape (E,), counted `cols` columns and
    `pair_chunk` pairs at a time.

    Gathering both rows of every pair at once costs E x num_perm x 4 bytes twice: with 2.2 M short
    documents (E ~ 2 M candidates) that was a 2.7 GB spike in a streamed run. Column by column it is
    E x cols x 9 bytes (two gathers and their comparison), and in chunks of pairs a fixed ~2.5 MB:
    what stays per pair is its count (int16). A streamed run's on-disk signatures are read `cols`
    columns of every row at a time, as LSH reads a band: cols x 4 bytes a document (4 columns, 16
    bytes, as much as candidate_pairs_lean's keys and order; 8 made this block the decisions' peak)."""
    equal = np.zeros(len(pairs), dtype=np.int16)  # (E,) equal entries so far, at most num_perm
    for c in range(0, sig.shape[1], cols):
        block = sig[:, c : c + cols]  # (N, cols)
        for p in range(0, len(pairs), pair_chunk):
            i, j = pairs[p : p + pair_chunk, 0], pairs[p : p + pair_chunk, 1]
            equal[p : p + pair_chunk] += (block[i] == block[j]).sum(axis=1, dtype=np.int16)
        del block  # before the next read: `block = ...` would otherwise hold two blocks at once
    return equal / sig.shape[1]


def near_duplicate_clusters(
    texts,
    cfg: DedupConfig = DedupConfig(),
    sig=None,
    shingles_of=None,
    roots_of=union_find_roots,
    pairs_of=candidate_pairs,
):
    """(roots, sig, pairs): cluster id per document, the signatures, and the verified pairs.
    roots_of: union_find_roots, or component_roots (the same ids, in numpy) for millions of documents;
    pairs_of: candidate_pairs, or candidate_pairs_lean (the same pairs, ~20 bytes a document instead
    of ~75 and each pair held once) for millions of documents, or lsh_buckets.candidate_pairs_bucketed
    (the same again, grouped on disk).

    With `sig` given, `texts` is not read: the index runs over signatures alone, and a candidate is
    kept when its *estimated* Jaccard (the share of equal signature entries) reaches the threshold.
    That estimate has a standard error of sqrt(J(1-J)/num_perm) = 0.04 at J = 0.7, so a copy at a
    true 0.71 is missed about 4 times in 10: the errors cluster exactly at the threshold.

    With `shingles_of` (a function: list of document indices -> {index: unique_shingles}), each
    candidate is verified by its *exact* Jaccard instead, after the LSH bands were widened so that
    a pair at the threshold is almost surely a candidate (candidate_bands). To keep the exact checks
    few, candidates whose estimate lies more than 3 standard errors below the threshold are dropped
    first (a pair at the threshold falls that low with probability 0.0013)."""
    if sig is None:
        sig = signatures(texts, cfg)
    if shingles_of is None:
        b, r = lsh_params(cfg.threshold, cfg.num_perm, cfg.fp_weight, cfg.fn_weight)
    else:
        b, r = candidate_bands(cfg.threshold, cfg.num_perm)
    pairs = pairs_of(sig, b, r)
    if len(pairs):
        est = estimated_jaccard(sig, pairs)
        if shingles_of is None:
            pairs = pairs[est >= cfg.threshold]
        else:
            se = np.sqrt(cfg.threshold * (1 - cfg.threshold) / cfg.num_perm)
            pairs = pairs[est >= cfg.threshold - 3 * se]
            sets = shingles_of(sorted(set(pairs.ravel().tolist())))
            exact = np.array([exact_jaccard(sets[i], sets[j]) for i, j in pairs.tolist()])
            pairs = pairs[exact >= cfg.threshold] if len(pairs) else pairs
    return roots_of(len(sig), pairs), sig, pairs


def text_shingles(texts, k: int):
    """shingles_of for texts in memory: {i: unique_shingles(texts[i])} for the asked indices."""
    cache = {}
    return lambda ids: {i: unique_shingles(texts[i], k, cache) for i in ids}


def dedup(texts, cfg: DedupConfig = DedupConfig()):
    """Masks over `texts`: exact_dup, near_dup (removed by MinHash-LSH, not exact), keep; and cluster ids.
    Near-duplicate candidates are verified by their exact shingle Jaccard (near_duplicate_clusters)."""
    exact = exact_duplicate_mask(texts)
    idx = np.flatnonzero(~exact)
    rest = [texts[i] for i in idx]
    roots_sub, _, _ = near_duplicate_clusters(rest, cfg, shingles_of=text_shingles(rest, cfg.shingle))
    near = np.zeros(len(texts), dtype=bool)
    near[idx] = roots_sub != np.arange(len(idx))
    roots = np.arange(len(texts))
    roots[idx] = idx[roots_sub]
    return {"exact_dup": exact, "near_dup": near, "keep": ~exact & ~near, "cluster": roots}


# ---------------------------------------------------------------------------------------------------
# Line-level dedup: web pages repeat the same lines (menus, cookie notices, footers) across documents;
# whole-document dedup cannot see them. CCNet and Dolma drop such repeated lines or paragraphs.


def line_key(line: str) -> int:
    """A line's 64-bit key: the first 8 bytes of SHA-1 of the normalized line."""
    return int.from_bytes(hashlib.sha1(normalize_for_hash(line).encode("utf-8")).digest()[:8], "little")


def doc_line_keys(text: str) -> set:
    """The keys of the document's non-blank lines (a line counts once per document)."""
    return {line_key(ln) for ln in text.split("\n") if ln.strip()}


def common_lines(key_sets, max_docs: int) -> set:
    """Keys found in more than max_docs of the documents' key sets."""
    docs_with = Counter()
    for keys in key_sets:
        docs_with.update(keys)
    return {k for k, n in docs_with.items() if n > max_docs}


def drop_lines(text: str, common: set) -> str:
    """The text without its lines in `common`; blank lines stay, runs of them collapse to one."""
    lines = text.split("\n")
    kept = [ln for ln in lines if not ln.strip() or line_key(ln) not in common]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip() if len(kept) < len(lines) else text


def line_dedup(texts, max_docs: int):
    """The texts with every line that occurs (normalized) in more than `max_docs` documents removed.

    Two passes: count, per line hash, the documents holding it; then drop those lines (prepare_stream.py
    makes the same two passes over shards, keeping only the keys). Returns (new texts, lines dropped)."""
    common = common_lines((doc_line_keys(t) for t in texts), max_docs)
    out = [drop_lines(t, common) for t in texts]
    dropped = sum(ln.strip() != "" and line_key(ln) in common for t in texts for ln in t.split("\n"))
    return out, dropped


def exact_line_dedup(paths, out_suffix=".dedup"):
    """Exact-line dedup over a list of text files: each file written beside itself with `out_suffix`,
    keeping only the first occurrence of every stripped line across all files (blank lines kept).
    Returns {path: lines removed}."""
    seen, removed = set(), {}
    for path in map(Path, paths):
        out, n = [], 0
        for line in path.read_text(encoding="utf-8").split("\n"):
            key = line.strip()
            if key and key in seen:
                n += 1
                continue
            seen.add(key)
            out.append(line)
        path.with_name(path.name + out_suffix).write_text("\n".join(out), encoding="utf-8")
        removed[str(path)] = n
    return removed


def main(argv=None):
    cfg, _ = parse_config(DedupConfig, argv, doc=__doc__)
    b, r = lsh_params(cfg.threshold, cfg.num_perm, cfg.fp_weight, cfg.fn_weight)
    print(f"threshold {cfg.threshold}, num_perm {cfg.num_perm} -> b={b} bands x r={r} rows")
    for s in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9):
        print(f"  Jaccard {s:.1f}: P(candidate) = {candidate_probability(s, b, r):.3f}")
    story = (
        "the cat sat on the mat and looked at the dog while the rain fell on the roof of the old house "
        "and the children read their books by the fire until it was time for dinner"
    )
    texts = [
        story,
        story.replace("the dog", "a dog"),
        story.replace("the cat", "The  cat"),
        "an entirely different sentence about boats on the river",
    ]
    print(
        f"true Jaccard of the near pair: {jaccard(shingle_set(texts[0], cfg.shingle), shingle_set(texts[1], cfg.shingle)):.2f}"
    )
    d = dedup(texts, cfg)
    for t, e, n in zip(texts, d["exact_dup"], d["near_dup"]):
        print(f"  {'exact copy' if e else 'near copy' if n else 'kept':10s}  {t[:60]}")


if __name__ == "__main__":
    run_cli(main)
