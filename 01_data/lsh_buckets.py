"""LSH band grouping out of core: dedup.candidate_pairs_lean's candidate pairs with an in-memory peak
set by one bucket's size, not by the number of documents.

    pairs = candidate_pairs_bucketed(sig, b, r, folder, bucket_rows=1 << 20)   # (E, 2), as lean's
    repeated = repeated_keys_bucketed(keys, folder)   # exact dedup's mask, the same way

candidate_pairs_lean sorts each band's keys for every document at once (~20 bytes a document): fine
at millions of documents, but it grows with the input. Here each band is a group-by done the way
external sorts and datatrove's MinHash stage do it, on disk:

1. Partition. The band key of each document (the same 64-bit hash of its r signature rows as
   candidate_pairs') is computed `chunk_rows` documents at a time, and (key, doc) goes to the
   bucket file of its top bits, bucket = key >> (64 - bits), with 2^bits ~ n / bucket_rows. Equal
   keys have equal top bits, so every run of equal keys lies whole in one bucket.
2. Group one bucket at a time. A bucket's records are sorted by key (stably: they were appended in
   increasing doc order, so a run keeps its lowest document first, as candidate_pairs' stable sort
   does), and each run's first document pairs with each other member: code = first·n + doc.
3. Merge the bands. The codes go to pair files partitioned by the first document's range
   (first // part_docs); one partition at a time is np.unique'd, and the partitions in order are
   the sorted unique codes of every band: candidate_pairs_lean's pairs, in its order (a test checks
   it with buckets of a few dozen rows).

Memory: one bucket's records (12 bytes each) and their sort order (8), one pair partition's codes,
a chunk of signature rows, and the output pairs (8 bytes a pair as int32). Disk: 12 bytes a document
per band (rewritten each band) plus 8 bytes a pair occurrence. On a cluster the partitions are the
shuffle: Spark's groupBy on (band, key), Ray's `groupby().map_groups`; a bucket is what one task sorts.

Exact dedup's keys are grouped the same way (repeated_keys_bucketed): a repeated key is a run of
equal keys, its first document kept.

Interview question it answers: how do you group a key that does not fit in memory? (hash-partition
to files by the key's top bits, so equal keys meet in one file, then sort one file at a time)
"""

import sys
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from dedup import band_multipliers

RECORD = np.dtype([("key", "<u8"), ("doc", "<i4")])  # 12 bytes on disk per (band key, document)


def bucket_bits(n: int, bucket_rows: int) -> int:
    """The fewest top bits that make the expected bucket at most bucket_rows records (0: one bucket)."""
    return max(0, int(np.ceil(np.log2(max(1, n) / bucket_rows)))) if n > bucket_rows else 0


def write_buckets(files, keys: np.ndarray, docs: np.ndarray, bits: int):
    """Append each (keys[i], docs[i]) to files[keys[i] >> (64 - bits)], in the order given."""
    rec = np.empty(len(keys), dtype=RECORD)
    rec["key"], rec["doc"] = keys, docs
    bucket = (keys >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(keys), np.int64)
    order = np.argsort(bucket, kind="stable")  # a bucket's records side by side, docs increasing
    ends = np.cumsum(np.bincount(bucket, minlength=1 << bits))
    rec = rec[order]
    for k in np.flatnonzero(np.diff(ends, prepend=0)):
        rec[ends[k - 1] if k else 0 : ends[k]].tofile(files[k])


def write_band_buckets(sig, band: int, r: int, folder: Path, bits: int, chunk_rows: int) -> list:
    """Step 1 for one band: (key, doc) of every document into folder/bucket_<k>.bin; returns the paths."""
    mults = band_multipliers(r)
    paths = [folder / f"bucket_{k:05d}.bin" for k in range(1 << bits)]
    files = [open(p, "wb") for p in paths]
    try:
        for lo in range(0, len(sig), chunk_rows):
            rows = np.asarray(sig[lo : lo + chunk_rows][:, band * r : (band + 1) * r])  # (chunk, r)
            keys = np.zeros(len(rows), dtype=np.uint64)  # sum_c rows[:, c]·mults[c] mod 2^64
            for c in range(r):
                keys += rows[:, c].astype(np.uint64) * mults[c]
            write_buckets(files, keys, np.arange(lo, lo + len(rows), dtype=np.int32), bits)
    finally:
        for f in files:
            f.close()
    return paths


def bucket_codes(path: Path, n: int) -> np.ndarray:
    """Step 2 for one bucket: the sorted codes first·n + doc of its runs of equal keys, int64."""
    rec = np.fromfile(path, dtype=RECORD)  # (m,) docs increasing
    order = np.argsort(rec["key"], kind="stable")  # (m,) equal keys adjacent, lower doc first
    keys, docs = rec["key"][order], rec["doc"][order].astype(np.int64)
    del rec, order
    new_run = np.ones(len(keys), dtype=bool)
    np.not_equal(keys[1:], keys[:-1], out=new_run[1:])
    first = np.where(new_run, np.arange(len(keys)), 0)
    np.maximum.accumulate(first, out=first)  # position of the first member of each position's run
    dup = np.flatnonzero(~new_run)
    codes = docs[first[dup]] * n + docs[dup]
    codes.sort()
    return codes


def merge_codes(path: Path, new: np.ndarray):
    """The sorted unique codes in `path` (a pair partition) with `new` ones added, rewritten in place:
    only the codes not there yet are inserted (a binary search each), as candidate_pairs_lean merges."""
    codes = np.fromfile(path, dtype=np.int64) if path.exists() else np.zeros(0, np.int64)
    new = np.unique(new)
    at = np.searchsorted(codes, new)  # where each new code would sit
    seen = at < len(codes)
    seen[seen] = codes[at[seen]] == new[seen]
    np.insert(codes, at[~seen], new[~seen]).tofile(path)


def candidate_pairs_bucketed(sig, b: int, r: int, folder: Path, bucket_rows=1 << 20, chunk_rows=1 << 16):
    """dedup.candidate_pairs_lean's pairs (E, 2), same order and dtype, grouping each band through
    bucket files in `folder` (created, and emptied when done). sig: (N, b·r) array or
    prepare_stream.ShardSignatures; bucket_rows: the records one bucket holds on average, and the
    first documents of one pair partition."""
    n = len(sig)
    index = np.int32 if n < 2**31 else np.int64
    folder.mkdir(parents=True, exist_ok=True)
    bits = bucket_bits(n, bucket_rows)
    part_docs = max(1, min(n, bucket_rows))  # first documents per pair partition
    n_parts = -(-n // part_docs)
    part_paths = [folder / f"pairs_{p:05d}.bin" for p in range(n_parts)]  # sorted unique codes so far
    band_paths = [folder / f"band_{p:05d}.bin" for p in range(n_parts)]  # this band's codes
    bucket_paths = []
    try:
        for band in range(b):
            bucket_paths = write_band_buckets(sig, band, r, folder, bits, chunk_rows)
            band_files = [open(p, "wb") for p in band_paths]
            try:
                for path in bucket_paths:
                    codes = bucket_codes(path, n)  # sorted, so each partition's codes are one slice
                    cuts = np.searchsorted(codes, np.arange(n_parts + 1, dtype=np.int64) * part_docs * n)
                    for p in np.flatnonzero(cuts[1:] > cuts[:-1]):
                        codes[cuts[p] : cuts[p + 1]].tofile(band_files[p])
            finally:
                for f in band_files:
                    f.close()
            # a pair shared by many bands is stored once: each band's codes are merged into the
            # partition's unique codes, so a partition holds its pairs, not their ~b occurrences
            for path, band_path in zip(part_paths, band_paths):
                if band_path.stat().st_size:
                    merge_codes(path, np.fromfile(band_path, dtype=np.int64))
        sizes = [p.stat().st_size // 8 if p.exists() else 0 for p in part_paths]
        pairs = np.empty((sum(sizes), 2), dtype=index)  # (E, 2) back to (i, j), partitions in order
        at = 0
        for path, size in zip(part_paths, sizes):
            if size:
                codes = np.fromfile(path, dtype=np.int64)
                pairs[at : at + size, 0], pairs[at : at + size, 1] = codes // n, codes % n
                at += size
    finally:
        for path in bucket_paths + part_paths + band_paths:
            path.unlink(missing_ok=True)
    return pairs


def repeated_keys_bucketed(keys: np.ndarray, folder: Path, bucket_rows=1 << 20, chunk_rows=1 << 16):
    """(N,) bool, True where keys[i] equals an earlier key: exact dedup's mask (np.unique's first
    index per key kept) through the same bucket files, so its sort holds one bucket, not N keys."""
    n = len(keys)
    folder.mkdir(parents=True, exist_ok=True)
    bits = bucket_bits(n, bucket_rows)
    paths = [folder / f"bucket_{k:05d}.bin" for k in range(1 << bits)]
    files = [open(p, "wb") for p in paths]
    try:
        for lo in range(0, n, chunk_rows):
            chunk = np.asarray(keys[lo : lo + chunk_rows], dtype=np.uint64)
            write_buckets(files, chunk, np.arange(lo, lo + len(chunk), dtype=np.int32), bits)
        for f in files:
            f.close()
        repeated = np.zeros(n, dtype=bool)
        for path in paths:
            repeated[bucket_codes(path, n) % n] = True  # every run member after its first document
    finally:
        for f, path in zip(files, paths):
            f.close()
            path.unlink(missing_ok=True)
    return repeated
