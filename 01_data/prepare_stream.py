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
   signatures (128 x 4 bytes each) to shard_<i>.sig.npy beside it, and returns only *metadata*: per
   document a DocRecord (id, domain, length) and what each step did, and per kept document its
   exact-dedup key (8 bytes of SHA-1, in a uint64 array).
3. Decide, in the main process, over metadata alone: exact dedup over the keys, near-dedup and
   the split clusters over ShardSignatures (the signatures on disk, read one LSH band or a few
   candidate rows at a time; dedup.near_duplicate_clusters takes it as `sig`), the near-duplicate
   candidates verified by their exact Jaccard from the shards' texts (only theirs), the domain mix
   over lengths. A signature depends only on its text, so these are the decisions the in-memory
   pipeline makes (a test checks it on the default corpus).
   With --line-dedup-docs, a pass in between: the workers also return each prose document's line
   keys, the main process counts documents per key, and a second map over the shards drops the
   common lines and refreshes the keys and signatures (line_dedup_shard).
4. Write: the temporary shards are read back once per split and the kept documents written out.

Peak memory is the metadata: about 180 bytes per document held and 510 at the peak of the decisions
(before the signatures went to disk and the dicts became records: 900 and 1,700), plus the shards in
flight. One machine is the limit of this design, not of the idea: on Ray or Spark each shard is a
task (`ray.remote` / a partition mapped by `mapPartitions`) returning the same metadata, the
decisions are a reduce over signatures (an LSH band is a group-by key), and the writes are a second
map over the shards with the decision table broadcast -- the same three phases, spread over machines.

Interview questions it answers:
- How do you dedup a corpus that does not fit in memory? (keep fingerprints, not texts: exact
  hashes and MinHash signatures; LSH bands are a group-by; write in a second pass)
- Why a bounded queue in front of a worker pool? (an unbounded one reads the whole input ahead of
  the workers, which is the memory problem again)
"""

import hashlib
import json
import sys
from collections import deque
from multiprocessing import get_context
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from clean import CleanConfig, clean_document
from dedup import (
    DedupConfig,
    doc_line_keys,
    drop_lines,
    near_duplicate_clusters,
    normalize_for_hash,
    signatures,
    unique_shingles,
)
from langid_ngram import predict_lang

_WORKER = {}  # the language model and clean config, set once per worker process


def exact_key(text: str) -> int:
    """The exact-dedup key: the first 8 bytes of SHA-1 of the normalized text (as dedup.py hashes it),
    as an unsigned 64-bit integer (8 bytes in a numpy array, not a 41-byte Python bytes object)."""
    return int.from_bytes(hashlib.sha1(normalize_for_hash(text).encode("utf-8")).digest()[:8], "little")


class DocRecord:
    """A document without its text: what the decisions read of it ("id", "domain", "chars").

    It answers doc["id"], doc["domain"], doc["chars"] and `"chars" in doc` like the dicts of the
    in-memory path, in 56 bytes instead of a dict's 184 (with 2 million short documents, the
    difference between fitting in 2 GB or not); an input document that cleaning left unchanged is
    the same object in the inputs and the kept list."""

    __slots__ = ("id", "domain", "chars")

    def __init__(self, doc_id: str, domain: str, chars: int):
        self.id, self.domain, self.chars = doc_id, domain, chars

    def __getitem__(self, key):
        return getattr(self, key)

    def __contains__(self, key):
        return key in self.__slots__

    def __eq__(self, other):
        return all(self[k] == other[k] for k in self.__slots__)


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
        """sig[rows][:, cols] as an array, reading each shard file that holds one of the rows once."""
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        width = len(range(self.num_perm)[cols])
        out = np.empty((len(rows), width), dtype=np.uint32)
        for s in np.unique(shard):
            here = shard == s
            out[here] = np.load(self.paths[s])[rows[here] - self.offsets[s]][:, cols]
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
    """Clean one shard, write its kept documents to folder/shard_<index>.jsonl, return metadata only
    (with line dedup on, also each kept prose document's line keys, as a uint64 array)."""
    model, cfg = _WORKER["model"], _WORKER["cfg"]
    meta = {"inputs": [], "acted": {}, "dropped": {}, "kept": [], "keys": [], "lines": []}
    kept_texts = []
    with open(folder / f"shard_{index:06d}.jsonl", "w", encoding="utf-8") as f:
        for doc in docs:
            out, acted, step = clean_document(doc, lambda t: predict_lang(model, t), cfg)
            record = DocRecord(doc["id"], doc["domain"], len(doc["text"]))
            meta["inputs"].append(record)
            if acted:
                meta["acted"][doc["id"]] = acted
            if out is None:
                meta["dropped"][doc["id"]] = step
                continue
            f.write(
                json.dumps({k: out[k] for k in ("id", "domain", "lang", "text")}, ensure_ascii=False) + "\n"
            )
            if len(out["text"]) != record.chars:
                record = DocRecord(out["id"], out["domain"], len(out["text"]))
            meta["kept"].append(record)
            meta["keys"].append(exact_key(out["text"]))
            kept_texts.append(out["text"])
            if _WORKER["lines"] and out["domain"] != "code":  # code is not line-deduped
                meta["lines"].append(np.fromiter(doc_line_keys(out["text"]), dtype=np.uint64))
    meta["keys"] = np.array(meta["keys"], dtype=np.uint64)
    meta["sig"] = save_signatures(folder, index, kept_texts)
    return meta


def save_signatures(folder: Path, index: int, texts) -> int:
    """Write the texts' MinHash signatures to folder/shard_<index>.sig.npy; returns how many rows."""
    sig = signatures(texts) if texts else np.zeros((0, DedupConfig.num_perm), np.uint32)
    np.save(folder / f"shard_{index:06d}.sig.npy", sig)
    return len(sig)


def line_dedup_shard(index, folder, common):
    """Drop the `common` lines from one shard's prose documents, rewrite the shard, and return its
    new metadata: kept, keys, sig, and {id: characters removed}, [ids left empty]."""
    path = folder / f"shard_{index:06d}.jsonl"
    meta = {"kept": [], "keys": [], "changed": {}, "emptied": []}
    texts = []
    with open(path, encoding="utf-8") as src, open(path.with_suffix(".tmp"), "w", encoding="utf-8") as dst:
        for line in src:
            doc = json.loads(line)
            text = doc["text"] if doc["domain"] == "code" else drop_lines(doc["text"], common)
            if text != doc["text"]:
                meta["changed"][doc["id"]] = len(doc["text"]) - len(text)
            if not text:
                meta["emptied"].append(doc["id"])
                continue
            dst.write(json.dumps({**doc, "text": text}, ensure_ascii=False) + "\n")
            meta["kept"].append(DocRecord(doc["id"], doc["domain"], len(text)))
            meta["keys"].append(exact_key(text))
            texts.append(text)
    path.with_suffix(".tmp").replace(path)
    meta["keys"] = np.array(meta["keys"], dtype=np.uint64)
    meta["sig"] = save_signatures(folder, index, texts)
    return meta


def streamed_line_dedup(merged, folder: Path, n_shards: int, max_docs: int, workers: int):
    """Second pass for line dedup: the lines whose keys are in more than max_docs prose documents
    are removed from every shard, and the kept metadata is rebuilt (as prepare.line_dedup_all does
    in memory: its characters go to the "line_dedup" step, an emptied document is dropped by it)."""
    keys, counts = np.unique(
        np.concatenate(merged.pop("lines") or [np.zeros(0, np.uint64)]), return_counts=True
    )
    common = {int(k) for k in keys[counts > max_docs]}
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(line_dedup_shard, [(i, folder, common) for i in range(n_shards)])
    else:
        parts = [line_dedup_shard(i, folder, common) for i in range(n_shards)]
    merged["kept"] = []
    for part in parts:
        merged["kept"] += part["kept"]
        for doc_id, chars in part["changed"].items():
            merged["acted"].setdefault(doc_id, {})["line_dedup"] = chars
        merged["dropped"] |= dict.fromkeys(part["emptied"], "line_dedup")
    merged["keys"] = np.concatenate([p["keys"] for p in parts] or [np.zeros(0, np.uint64)])
    merged["sig"] = shard_signatures(folder, [p["sig"] for p in parts])
    return merged


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
    input order: inputs [(id, domain, chars)], acted, dropped, kept [{"id", "domain", "chars"}],
    keys [bytes], sig (kept docs, num_perm) uint32. line_dedup_docs > 0: then drop the lines found
    in more than that many prose documents (a second pass over the shards)."""
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
    merged = {"inputs": [], "acted": {}, "dropped": {}, "kept": [], "keys": [], "lines": [], "sig": []}
    n_shards = len(results)
    for i in sorted(results):
        r = results.pop(i)
        for k in ("inputs", "kept", "keys", "lines", "sig"):
            merged[k] += r[k] if k != "keys" and k != "sig" else [r[k]]
        merged["acted"].update(r["acted"])
        merged["dropped"].update(r["dropped"])
    merged["keys"] = np.concatenate(merged["keys"] or [np.zeros(0, np.uint64)])
    merged["sig"] = shard_signatures(folder, merged["sig"])
    merged["folder"] = folder  # the shards, read back to verify near-duplicate candidates exactly
    if want_lines:
        return streamed_line_dedup(merged, folder, n_shards, line_dedup_docs, workers)
    merged.pop("lines")
    return merged


def dedup_by_fingerprints(keys, sig, threshold, folder=None):
    """Masks exact_dup, near_dup, keep over the kept documents: dedup.dedup's decisions, from the
    8-byte keys and the signatures, with the near-duplicate candidates verified by their exact
    Jaccard read back from the shards in `folder` (only the candidates' texts; without a folder, by
    the signature estimate)."""
    keys = np.asarray(keys, dtype=np.uint64)
    _, first = np.unique(keys, return_index=True)  # the first document holding each key stays
    exact = np.ones(len(keys), dtype=bool)
    exact[first] = False
    idx = np.flatnonzero(~exact)
    cfg = DedupConfig(threshold=threshold)
    shingles_of = shard_shingles(folder, idx, cfg.shingle) if folder is not None else None
    roots, _, _ = near_duplicate_clusters(None, cfg, sig=sig[idx], shingles_of=shingles_of)
    near = np.zeros(len(keys), dtype=bool)
    near[idx] = roots != np.arange(len(idx))
    return exact, near, ~exact & ~near


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
