"""Streaming the stage over input files of any size: shards, a bounded pool of workers, an index of
signatures instead of texts. prepare.py uses it for --input.

    python 01_data/prepare.py --out runs/web --input shard1.jsonl shard2.jsonl --workers 4

Memory is what limits a pipeline that holds every document at once (about 32 bytes per input byte
before: a 1 GB web shard needed 32 GB). Here nothing grows with the input's *text*:

1. Read. Input files are read line by line and cut into documents (input_documents.iter_documents);
   every `shard_docs` documents form a shard.
2. Clean and fingerprint, in a pool of `workers` processes with at most 2 shards per worker in
   flight (a bounded queue: a fast reader cannot pile the whole input into memory). A worker cleans
   each document (clean.py), writes the kept ones to a temporary shard file and their MinHash
   signatures (128 x 4 bytes each) to shard_<i>.sig.npy beside it, and returns only *columns*: per
   document its id, domain, lengths and the step that dropped it, per edit (row, step, characters
   removed), per kept document its exact-dedup key (8 bytes of SHA-1, uint64): doc_table.DocTable.
3. Decide, in the main process, over columns alone (decide_streamed): exact dedup over the keys,
   near-dedup and the split clusters over ShardSignatures (the signatures on disk, read one LSH band
   or a few candidate rows at a time; dedup.near_duplicate_clusters takes it as `sig`), the
   near-duplicate candidates verified by their exact Jaccard from the shards' texts (only theirs),
   the domain mix over lengths (mix_positions) and the split over cluster roots (split_codes), each
   prepare.py's rule over arrays. A signature depends only on its text, so these are the decisions the in-memory
   pipeline makes (a test checks it on the default corpus).
   With --line-dedup-docs, a pass in between: the workers also return each prose document's line
   keys, the main process counts documents per key, and a second map over the shards drops the
   common lines and refreshes the keys and signatures (line_dedup_shard).
4. Write: the temporary shards are read back once per split and the kept documents written out.

Peak memory is the metadata, and the metadata is numpy columns (doc_table.py): about 40 bytes per
document held (ids, lengths, codes, keys, signature row numbers), plus the shards in flight. The
decisions' group-bys no longer sort every document in memory: exact dedup and every LSH band are
grouped through bucket files beside the shards (lsh_buckets.py: (key, doc) records partitioned by
the key's top bits, one bucket of ~0.5 M records sorted at a time) and the candidate pairs are
merged a partition of first documents at a time, each pair stored once. What still grows is a few
arrays of 1-16 bytes per document (masks, row numbers, the union-find labels, the estimate's block
of 4 signature columns) and the candidate pairs themselves (8 bytes each). release_freed_memory (glibc's malloc_trim) after each phase returns the heap pages
numpy freed between live ones: the process kept ~75 MB of them at 2 M documents after the shards'
columns were joined. README, "Scale", has the measurements: 8,371,326 short documents (1 GB) in
1.36 GB at the peak, against ~0.26 KB a document before; what still grows there is the join of the
shards' columns (two copies at once) and the near-duplicate verification's candidate sets.

On Ray or Spark the same design is spread over machines: each shard is a task (`ray.remote` / a
partition mapped by `mapPartitions`) returning the same metadata; the bucket files are the shuffle
(Spark's groupBy on (band, key) writes exactly such hash-partitioned files; Ray Data's
`groupby(...).map_groups`), each bucket sorted by one task; the candidate pairs' connected
components are a few rounds of min-label propagation (GraphFrames); and the writes are a second map
over the shards with the decision table broadcast -- the same three phases, spread over machines.

Interview questions it answers:
- How do you dedup a corpus that does not fit in memory? (keep fingerprints, not texts: exact
  hashes and MinHash signatures; LSH bands are a group-by; write in a second pass)
- Why does "metadata only" still run out of memory? (a Python object per document costs 100-200
  bytes whatever it holds; numpy columns with integer codes cost what their dtypes say)
- Why a bounded queue in front of a worker pool? (an unbounded one reads the whole input ahead of
  the workers, which is the memory problem again)
"""

import ctypes
import hashlib
import json
import random
import sys
import zlib
from collections import deque
from multiprocessing import get_context
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from clean import CleanConfig, clean_document
from common.cli import UserError
from dedup import (
    DedupConfig,
    candidate_pairs_lean,
    component_roots,
    doc_line_keys,
    drop_lines,
    near_duplicate_clusters,
    normalize_for_hash,
    signatures,
    unique_shingles,
)
from doc_table import CHUNK, DOMAIN_CODE, DOMAINS, SPLITS, STEP_CODE, DocTable, encode_ids
from langid_ngram import predict_lang
from lsh_buckets import candidate_pairs_bucketed, repeated_keys_bucketed

_WORKER = {}  # the language model and clean config, set once per worker process


def release_freed_memory():
    """Give the pages of freed allocations back to the system (glibc's malloc_trim(0); elsewhere
    nothing). numpy's arrays under glibc's mmap threshold (128 KB, raised up to 32 MB after each big
    array is freed) live in the heap, and a heap page freed between live ones stays resident: after
    the shards' columns are concatenated that was ~75 MB at 2 M documents, ~40 % of the process."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def exact_key(text: str) -> int:
    """The exact-dedup key: the first 8 bytes of SHA-1 of the normalized text (as dedup.py hashes it),
    as an unsigned 64-bit integer (8 bytes in a numpy array, not a 41-byte Python bytes object)."""
    return int.from_bytes(hashlib.sha1(normalize_for_hash(text).encode("utf-8")).digest()[:8], "little")


class ShardSignatures:
    """The kept documents' MinHash signatures, left on disk (one .npy file per shard) and read a band
    of columns or a few rows at a time: the (N, num_perm) matrix near_duplicate_clusters indexes, at
    8 bytes of memory per document (its row number) instead of num_perm x 4 = 512.

    sig[:, a:b] -> an (N, b - a) array (one LSH band); sig[rows] -> the lazy subset of those rows;
    np.asarray(sig) -> the rows themselves (only ever a few candidates)."""

    def __init__(self, paths, sizes, num_perm: int, rows=None):
        self.paths, self.sizes, self.num_perm = list(paths), np.asarray(sizes, dtype=np.int64), num_perm
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.rows = np.arange(self.offsets[-1]) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    @property
    def shape(self):
        return (len(self.rows), self.num_perm)

    def gather(self, rows, cols=slice(None)) -> np.ndarray:
        """sig[rows][:, cols] as an array, reading each shard file that holds one of the rows once.
        Rows in increasing order (a band, the non-exact subset) are cut into one run per shard by a
        binary search, with no per-row shard index (8 bytes a row) and no pass over all rows per shard."""
        width = len(range(self.num_perm)[cols])
        out = np.empty((len(rows), width), dtype=np.uint32)
        if len(rows) < 2 or np.all(rows[1:] >= rows[:-1]):
            bounds = np.searchsorted(rows, self.offsets)  # rows[bounds[s]:bounds[s + 1]] lie in shard s
            for s in np.flatnonzero(bounds[1:] > bounds[:-1]):
                lo, hi = bounds[s], bounds[s + 1]
                out[lo:hi] = np.load(self.paths[s], mmap_mode="r")[rows[lo:hi] - self.offsets[s], cols]
            return out
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard):
            here = shard == s
            out[here] = np.load(self.paths[s], mmap_mode="r")[rows[here] - self.offsets[s], cols]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):  # sig[:, a:b]: a band, for every row
            rows, cols = key
            assert rows == slice(None), "a band is read for all rows"
            return self.gather(self.rows, cols)
        return ShardSignatures(self.paths, self.sizes, self.num_perm, self.rows[key])

    def __array__(self, dtype=None, copy=None):
        out = self.gather(self.rows)
        return out if dtype is None else out.astype(dtype)


def start_worker(model, clean_cfg, want_lines=False):
    _WORKER["model"], _WORKER["cfg"], _WORKER["lines"] = model, clean_cfg, want_lines


def clean_shard(index, docs, folder):
    """Clean one shard, write its kept documents to folder/shard_<index>.jsonl, return its columns
    (doc_table.DocTable's, rows numbered from 0 in this shard), the kept documents' exact keys, the
    count of signatures saved, and with line dedup on the line keys of its prose documents (one
    uint64 array: each document's distinct keys, one after another)."""
    model, cfg = _WORKER["model"], _WORKER["cfg"]
    cols = {k: [] for k in ("ids", "domain", "chars_in", "chars", "dropped", "kept", "keys", "lines")}
    acted_cols = {"acted_row": [], "acted_step": [], "acted_chars": []}
    kept_texts = []
    with open(folder / f"shard_{index:06d}.jsonl", "w", encoding="utf-8") as f:
        for row, doc in enumerate(docs):
            out, acted, step = clean_document(doc, lambda t: predict_lang(model, t), cfg)
            cols["ids"].append(doc["id"])
            cols["domain"].append(DOMAIN_CODE[doc["domain"]])
            cols["chars_in"].append(len(doc["text"]))
            for name, chars in acted.items():
                acted_cols["acted_row"].append(row)
                acted_cols["acted_step"].append(STEP_CODE[name])
                acted_cols["acted_chars"].append(chars)
            if out is None:
                cols["dropped"].append(STEP_CODE[step])
                cols["chars"].append(0)
                continue
            cols["dropped"].append(0)
            f.write(
                json.dumps({k: out[k] for k in ("id", "domain", "lang", "text")}, ensure_ascii=False) + "\n"
            )
            cols["chars"].append(len(out["text"]))
            cols["kept"].append(row)
            cols["keys"].append(exact_key(out["text"]))
            kept_texts.append(out["text"])
            if _WORKER["lines"] and out["domain"] != "code":  # code is not line-deduped
                cols["lines"] += doc_line_keys(out["text"])
    meta = {k: np.array(v, dtype=COLUMN_DTYPES[k]) for k, v in {**cols, **acted_cols}.items() if k != "ids"}
    meta["ids"] = encode_ids(cols["ids"])
    meta["sig"] = save_signatures(folder, index, kept_texts)
    return meta


# The dtype of each column a shard returns (doc_table.py's docstring says why these widths).
COLUMN_DTYPES = {
    "domain": np.uint8,
    "chars_in": np.int32,
    "chars": np.int32,
    "dropped": np.uint8,
    "kept": np.int64,
    "keys": np.uint64,
    "lines": np.uint64,
    "acted_row": np.int64,
    "acted_step": np.uint8,
    "acted_chars": np.int32,
}


def save_signatures(folder: Path, index: int, texts) -> int:
    """Write the texts' MinHash signatures to folder/shard_<index>.sig.npy; returns how many rows."""
    sig = signatures(texts) if texts else np.zeros((0, DedupConfig.num_perm), np.uint32)
    np.save(folder / f"shard_{index:06d}.sig.npy", sig)
    return len(sig)


def line_dedup_shard(index, folder, common):
    """Drop the `common` lines from one shard's prose documents, rewrite the shard, and return per
    document of the shard its new length ("chars", 0 when emptied), which ones changed and by how
    many characters ("changed", "removed"), which were emptied, and the kept ones' keys and sig count."""
    path = folder / f"shard_{index:06d}.jsonl"
    meta = {"chars": [], "changed": [], "removed": [], "emptied": [], "keys": []}
    texts = []
    with open(path, encoding="utf-8") as src, open(path.with_suffix(".tmp"), "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            doc = json.loads(line)
            text = doc["text"] if doc["domain"] == "code" else drop_lines(doc["text"], common)
            meta["chars"].append(len(text))
            if text != doc["text"]:
                meta["changed"].append(i)
                meta["removed"].append(len(doc["text"]) - len(text))
            if not text:
                meta["emptied"].append(i)
                continue
            dst.write(json.dumps({**doc, "text": text}, ensure_ascii=False) + "\n")
            meta["keys"].append(exact_key(text))
            texts.append(text)
    path.with_suffix(".tmp").replace(path)
    meta = {k: np.array(v, dtype=np.uint64 if k == "keys" else np.int64) for k, v in meta.items()}
    meta["sig"] = save_signatures(folder, index, texts)
    return meta


def streamed_line_dedup(meta, max_docs: int, workers: int):
    """Second pass for line dedup: the lines whose keys are in more than max_docs prose documents
    are removed from every shard, and the kept columns are updated (as prepare.line_dedup_all does
    in memory: its characters go to the "line_dedup" step, an emptied document is dropped by it)."""
    table, folder, sizes = meta["table"], meta["folder"], meta["sig"].sizes
    keys, counts = np.unique(meta.pop("lines"), return_counts=True)
    common = {int(k) for k in keys[counts > max_docs]}
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(line_dedup_shard, [(i, folder, common) for i in range(len(sizes))])
    else:
        parts = [line_dedup_shard(i, folder, common) for i in range(len(sizes))]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    changed, removed = [], []
    for s, part in enumerate(parts):
        rows = table.kept[offsets[s] : offsets[s + 1]]  # the shard's kept documents, in its order
        table.chars[rows] = part["chars"]
        table.dropped[rows[part["emptied"]]] = STEP_CODE["line_dedup"]
        changed.append(rows[part["changed"]])
        removed.append(part["removed"])
    table.add_acted(np.concatenate(changed), "line_dedup", np.concatenate(removed))
    table.kept = table.kept[table.dropped[table.kept] == 0]
    meta["keys"] = np.concatenate([p["keys"] for p in parts] or [np.zeros(0, np.uint64)])
    meta["sig"] = shard_signatures(folder, [p["sig"] for p in parts])
    return meta


def shard_signatures(folder: Path, sizes) -> ShardSignatures:
    """The signatures the shards saved (save_signatures), in shard order, as one lazy matrix."""
    paths = [folder / f"shard_{i:06d}.sig.npy" for i in range(len(sizes))]
    return ShardSignatures(paths, sizes, DedupConfig.num_perm)


def shards(docs, size):
    batch = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def clean_all_streamed(
    docs, model, folder: Path, workers=1, shard_docs=2000, progress=True, line_dedup_docs=0
):
    """Clean an iterable of documents shard by shard; returns the metadata of all shards merged, in
    input order: table (doc_table.DocTable), and read from it inputs / kept (sequences of DocRecord),
    acted {id: {step: chars}}, dropped {id: step}; keys (kept docs,) uint64; sig (kept docs, num_perm)
    uint32, on disk; folder. line_dedup_docs > 0: then drop the lines found in more than that many
    prose documents (a second pass over the shards)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = CleanConfig()
    results = {}
    want_lines = line_dedup_docs > 0
    if workers <= 1:
        start_worker(model, cfg, want_lines)
        for i, shard in enumerate(shards(docs, shard_docs)):
            results[i] = clean_shard(i, shard, folder)
            if progress:
                print(f"  cleaned shard {i + 1}", flush=True)
    else:
        with get_context("fork").Pool(
            workers, initializer=start_worker, initargs=(model, cfg, want_lines)
        ) as pool:
            in_flight = deque()  # at most 2 shards per worker are read ahead of the workers
            for i, shard in enumerate(shards(docs, shard_docs)):
                in_flight.append((i, pool.apply_async(clean_shard, (i, shard, folder))))
                while len(in_flight) >= 2 * workers:
                    j, res = in_flight.popleft()
                    results[j] = res.get()
                    if progress:
                        print(f"  cleaned shard {j + 1}", flush=True)
            while in_flight:
                j, res = in_flight.popleft()
                results[j] = res.get()
    parts = [results.pop(i) for i in sorted(results)]
    meta = {
        "table": DocTable.concat(parts),
        "keys": np.concatenate([p["keys"] for p in parts] or [np.zeros(0, np.uint64)]),
        "lines": np.concatenate([p["lines"] for p in parts] or [np.zeros(0, np.uint64)]),
        "sig": shard_signatures(folder, [p["sig"] for p in parts]),
        "folder": folder,  # the shards, read back to verify near-duplicate candidates exactly
    }
    del parts
    release_freed_memory()
    if want_lines:
        streamed_line_dedup(meta, line_dedup_docs, workers)
    meta.pop("lines", None)
    table = meta["table"]
    meta["inputs"] = table.records(None, "chars_in")
    meta["kept"] = table.records(table.kept)
    meta["acted"], meta["dropped"] = table.acted_view(), table.removed_view()
    return meta


def lsh_functions(work=None) -> dict:
    """near_duplicate_clusters' pairs_of for a streamed run. With a `work` folder: the bands grouped
    through bucket files there (lsh_buckets.py), holding one bucket, not every document; without:
    candidate_pairs_lean (~20 bytes a document). The same pairs either way.

    The estimate stays estimated_jaccard, 4 signature columns of every row at a time (16 bytes a
    document): reading only the candidates' two rows instead opens every shard file for each chunk of
    pairs, whose second documents are anywhere; at 8 M documents that was ~11 s a chunk of 32,768
    pairs, hours for the run, against a minute or two for the column blocks."""
    if work is None:
        return {"pairs_of": candidate_pairs_lean}
    return {"pairs_of": lambda sig, b, r: candidate_pairs_bucketed(sig, b, r, Path(work), BUCKET_ROWS)}


BUCKET_ROWS = 1 << 19  # (key, doc) records a bucket file holds on average: 6 MB, ~23 MB while grouped


def dedup_by_fingerprints(keys, sig, threshold, folder=None, work=None):
    """Masks exact_dup, near_dup, keep over the kept documents: dedup.dedup's decisions, from the
    8-byte keys and the signatures, with the near-duplicate candidates verified by their exact
    Jaccard read back from the shards in `folder` (only the candidates' texts; without a folder, by
    the signature estimate). work: a folder for the LSH's bucket files (lsh_functions)."""
    keys = np.asarray(keys, dtype=np.uint64)
    if work is None:
        _, first = np.unique(keys, return_index=True)  # the first document holding each key stays
        exact = np.ones(len(keys), dtype=bool)
        exact[first] = False
    else:  # the same, sorting one bucket of keys at a time (np.unique: ~35 bytes a document)
        exact = repeated_keys_bucketed(keys, Path(work), BUCKET_ROWS)
    idx = np.flatnonzero(~exact)
    cfg = DedupConfig(threshold=threshold)
    shingles_of = shard_shingles(folder, idx, cfg.shingle) if folder is not None else None
    roots, _, _ = near_duplicate_clusters(
        None,
        cfg,
        sig=sig[idx],
        shingles_of=shingles_of,
        roots_of=component_roots,
        **lsh_functions(work),
    )
    near = np.zeros(len(keys), dtype=bool)
    near[idx] = roots != np.arange(len(idx))
    return exact, near, ~exact & ~near


def mix_positions(ids, domain, chars, ratios, seed) -> np.ndarray:
    """prepare.mix_domains over columns: positions into the arrays of the documents kept, in id order.

    ids, domain, chars: (N,) columns of the deduplicated documents. The same draws as mix_domains
    (random.Random(seed).shuffle of 0..N-1, here a numpy array: shuffle only swaps items), the same
    greedy take per domain, the same sort by id; a test checks they agree."""
    codes = {d: DOMAIN_CODE[d] for d in ratios}
    have = {d: int(chars[domain == c].sum()) for d, c in codes.items()}
    present = {d: r for d, r in ratios.items() if r > 0 and have[d] > 0}
    if not present:
        names = sorted(DOMAINS[c] for c in np.unique(domain))
        raise UserError(
            f"--mix gives no weight to the domains the documents have ({', '.join(names)}); "
            f"give one of them a share, e.g. --mix {names[0]}=1"
        )
    total = min(have[d] / r for d, r in present.items())  # the scarcest domain sets the corpus size
    quota = {codes[d]: present[d] / sum(present.values()) * total for d in present}
    order = np.arange(len(ids), dtype=np.int64)
    random.Random(seed).shuffle(order)
    taken = dict.fromkeys(quota, 0)
    take = np.zeros(len(ids), dtype=bool)
    for lo in range(0, len(order), 1 << 16):  # Python values a chunk at a time, not N at once
        idx = order[lo : lo + (1 << 16)]
        for i, d, c in zip(idx.tolist(), domain[idx].tolist(), chars[idx].tolist()):
            if d in quota and taken[d] + c / 2 <= quota[d]:
                take[i] = True
                taken[d] += c
    out = np.flatnonzero(take)
    return out[np.argsort(ids[out], kind="stable")]


def split_codes(ids, fractions, threshold, sig, work=None) -> np.ndarray:
    """prepare.split_by_cluster over columns: the split (an index into SPLITS) of each document, (N,)
    uint8, from its id (ids: (N,) bytes) and its signature row.

    The same rule with arrays instead of per-cluster dicts: clusters are the roots of
    near_duplicate_clusters in increasing order (the order the dict version meets them: a root is
    its cluster's first document), u = crc32(first id) % 1000 per cluster, a split from where u falls
    among the cumulative fractions, and an empty split takes the nearest cluster (ties: lower u,
    then the earlier cluster) from a split that keeps another."""
    cfg = DedupConfig(threshold=threshold)
    roots, _, _ = near_duplicate_clusters(None, cfg, sig=sig, roots_of=component_roots, **lsh_functions(work))
    # a root is its own root and the smallest index of its cluster, so the roots in increasing order
    # are np.unique(roots), found without sorting N values (np.unique's sort took ~30 bytes a document)
    clusters = np.flatnonzero(roots == np.arange(len(roots), dtype=roots.dtype))  # (C,)
    cluster_of = np.searchsorted(clusters, roots)  # (N,) the index of each document's cluster
    u = np.empty(len(clusters), dtype=np.int16)  # (C,) crc32(first id) % 1000
    for lo in range(0, len(clusters), CHUNK):  # Python ints a chunk at a time (36 bytes each)
        u[lo : lo + CHUNK] = [zlib.crc32(x) % 1000 for x in ids[clusters[lo : lo + CHUNK]].tolist()]
    edges = np.cumsum(fractions) * 1000
    part = np.minimum(2, np.searchsorted(edges, u, side="right"))  # (C,) split of each cluster
    for k, (lo, hi) in enumerate(zip([0.0, *edges[:2]], edges)):
        sizes = np.bincount(part, minlength=3)
        donors = np.flatnonzero(sizes[part] > 1)
        if sizes[k] == 0 and len(donors):
            gap = np.maximum(np.maximum(lo - u[donors], u[donors] - hi), 0)
            part[donors[np.lexsort((donors, u[donors], gap))[0]]] = k
    return part.astype(np.uint8)[cluster_of]


def decide_streamed(meta, cfg, lap=lambda name: None):
    """(removed, unique, mixed, splits) from a streamed run's metadata (clean_all_streamed): exact and
    near dedup over keys and signatures, the mix over lengths, the split over signatures -- the
    in-memory run's decisions, written into the table's `dropped` and `split` columns and returned
    as views of it ({id: step}, sequences of DocRecord). cfg: a prepare.PrepareConfig."""
    table, folder = meta["table"], meta.get("folder")
    work = None if folder is None else folder / "lsh"  # the LSH's bucket files, beside the shards
    exact, near, keep = dedup_by_fingerprints(meta["keys"], meta["sig"], cfg.dedup_threshold, folder, work)
    table.dropped[table.kept[exact]] = STEP_CODE["exact_dedup"]
    table.dropped[table.kept[near]] = STEP_CODE["near_dedup"]
    unique_pos = np.flatnonzero(keep)  # positions among the kept documents (= signature rows)
    unique = table.kept[unique_pos]
    release_freed_memory()
    lap("dedup")
    chosen = mix_positions(table.ids[unique], table.domain[unique], table.chars[unique], cfg.mix, cfg.seed)
    mixed_pos = unique_pos[chosen]
    del chosen, unique_pos  # 8 bytes a document each, no longer needed during the split
    mixed = table.kept[mixed_pos]
    release_freed_memory()
    lap("mix")
    split = split_codes(table.ids[mixed], cfg.split, cfg.split_threshold, meta["sig"][mixed_pos], work)
    table.split[mixed] = split
    release_freed_memory()
    splits = {name: table.records(mixed[split == k]) for k, name in enumerate(SPLITS)}
    return table.removed_view(), table.records(unique), table.records(mixed), splits


def split_documents(meta, name: str):
    """The kept documents of split `name`, read back from the shards (decide_streamed set `split`)."""
    table, k = meta["table"], SPLITS.index(name)
    split_of_kept = table.split[table.kept]  # (kept,) the shards hold the kept documents in this order
    for g, doc in enumerate(read_shard_docs(meta["folder"])):
        if split_of_kept[g] == k:
            yield doc


def shard_shingles(folder: Path, idx, k: int):
    """shingles_of over the shards: one pass reading the kept documents back, keeping the shingle
    sets of the asked documents only (indices into `idx`, the positions of the kept documents that
    are not exact copies). Memory: the candidates' shingles, not the corpus."""

    def shingles_of(ids):
        wanted = {int(idx[i]): i for i in ids}
        out, cache = {}, {}
        for g, doc in enumerate(read_shard_docs(folder)):
            if g in wanted:
                out[wanted[g]] = unique_shingles(doc["text"], k, cache)
        return out

    return shingles_of


def read_shard_docs(folder: Path):
    """The kept documents back from the temporary shards, in order."""
    for path in sorted(folder.glob("shard_*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
