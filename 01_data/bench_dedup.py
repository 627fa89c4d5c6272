"""Benchmark: documents per second for exact + MinHash-LSH dedup (dedup.py) on generated documents.

    python 01_data/bench_dedup.py                    # 100k documents (about a minute on one core)
    python 01_data/bench_dedup.py --docs 20000       # quicker

The corpus: micro-world documents (world.py) plus 10 % near-copies (noise_inject.near_copy) and 5 % exact
copies, so the right answer is known: every injected copy should be removed, nothing else.
Prints a table of seconds and documents/second per phase, the recall of injected copies and the
false removals, and saves a bar chart to runs/bench_dedup.png and the numbers beside it (.json).

If the `datasketch` package happens to be installed, the same work runs through its MinHash and
MinHashLSH (same shingles, threshold, num_perm and (b, r) weights) and the table adds its time, the
ratio of times and how many keep/remove decisions agree. datasketch is not a requirement: without
it that column is skipped with a note.
"""

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from dedup import (
    DedupConfig,
    candidate_pairs,
    exact_duplicate_mask,
    jaccard,
    lsh_params,
    minhash_signatures,
    shingle_hashes,
    shingle_set,
    union_find_roots,
)
from noise_inject import near_copy
from world import WorldConfig, build_world
from world_corpus import generate_corpus

REPO = (
    Path(__file__).resolve().parents[1]
)  # for the default output path only (same-stage imports need no sys.path)

MIX = {"dialog": 0.4, "code": 0.1, "knowledge": 0.2, "stories": 0.3}


@dataclass
class BenchDedupConfig:
    docs: int = option(
        100_000, "documents to generate and deduplicate (15 % of them injected copies)", min=100
    )
    out: str = option(
        str(REPO / "runs" / "bench_dedup.png"), "where to save the bar chart (and .json beside it)"
    )


def bench_corpus(n_docs, seed=0):
    """(texts, is_copy): n_docs texts, the last 15 % near or exact copies of earlier ones."""
    rng = random.Random(seed)
    w = build_world(WorldConfig(seed=seed, n_people=20_000, n_cities=1500, n_objects=10_000))
    n_base = int(n_docs * 0.85)
    base = []
    while len(base) < n_base:  # ~430 characters per document
        base += [d["text"] for d in generate_corpus(w, seed + len(base), 430 * (n_base - len(base)), MIX)]
    base = base[:n_base]
    copies = [near_copy(rng, rng.choice(base)) for _ in range(int(n_docs * 0.10))]
    copies += [rng.choice(base) for _ in range(n_docs - n_base - len(copies))]
    return base + copies, np.arange(n_docs) >= n_base


def ours(texts, cfg):
    """(keep mask, seconds per phase)."""
    t = {}
    t0 = time.time()
    exact = exact_duplicate_mask(texts)
    t["exact (sha1)"] = time.time() - t0
    idx = np.flatnonzero(~exact)
    t0 = time.time()
    cache = {}
    hashes = [shingle_hashes(texts[i], cfg.shingle, cache) for i in idx]
    t["shingles"] = time.time() - t0
    t0 = time.time()
    sig = minhash_signatures(hashes, cfg.num_perm, cfg.seed)
    t["minhash"] = time.time() - t0
    t0 = time.time()
    b, r = lsh_params(cfg.threshold, cfg.num_perm, cfg.fp_weight, cfg.fn_weight)
    pairs = candidate_pairs(sig, b, r)
    pairs = pairs[(sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1) >= cfg.threshold]
    roots = union_find_roots(len(idx), pairs)
    t["lsh + verify + union-find"] = time.time() - t0
    keep = np.zeros(len(texts), dtype=bool)
    keep[idx[roots == np.arange(len(idx))]] = True
    root_of = np.arange(len(texts))
    root_of[idx] = idx[roots]
    return keep, t, root_of


def with_datasketch(texts, cfg):
    """The same dedup through datasketch; None when it is not installed."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        return None
    from dedup import TOKEN_RE

    t0 = time.time()
    exact = exact_duplicate_mask(texts)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(cfg.fp_weight, cfg.fn_weight))
    keep = np.zeros(len(texts), dtype=bool)
    parent = {}
    for i in np.flatnonzero(~exact):
        toks = TOKEN_RE.findall(texts[i].lower())
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        m.update_batch(
            [" ".join(toks[j : j + cfg.shingle]).encode() for j in range(max(1, len(toks) - cfg.shingle + 1))]
        )
        dups = [j for j in lsh.query(m) if parent.get(j) is not None]
        # verified like ours: estimated Jaccard >= threshold against an earlier kept document
        if not any(m.jaccard(parent[j]) >= cfg.threshold for j in dups):
            keep[i] = True
        lsh.insert(int(i), m)
        parent[int(i)] = m
    return keep, time.time() - t0


def main(argv=None):
    args, _ = parse_config(BenchDedupConfig, argv, doc=__doc__)
    cfg = DedupConfig()
    t0 = time.time()
    texts, is_copy = bench_corpus(args.docs)
    print(
        f"generated {len(texts):,} documents ({sum(map(len, texts)) / 1e6:.1f} M characters, "
        f"{is_copy.sum():,} injected copies) in {time.time() - t0:.1f}s"
    )
    keep, t, root_of = ours(texts, cfg)
    total = sum(t.values())
    print(f"\n{'phase':28s} {'seconds':>8s} {'docs/s':>10s}")
    for name, s in t.items():
        print(f"{name:28s} {s:8.2f} {len(texts) / max(s, 1e-9):10,.0f}")
    print(f"{'total (dedup.py)':28s} {total:8.2f} {len(texts) / total:10,.0f}")
    print(
        f"\ninjected copies removed: {(~keep & is_copy).sum():,} / {is_copy.sum():,} "
        f"(recall {(~keep & is_copy).sum() / is_copy.sum():.4f}); original documents removed: {(~keep & ~is_copy).sum():,}"
    )
    lost = np.flatnonzero(~keep & ~is_copy)
    true_j = [
        jaccard(shingle_set(texts[i], cfg.shingle), shingle_set(texts[root_of[i]], cfg.shingle))
        for i in lost
        if root_of[i] != i
    ]
    if true_j:
        print(
            f"  those originals vs the document kept for them: true Jaccard >= {cfg.threshold}: "
            f"{sum(j >= cfg.threshold for j in true_j)} of {len(true_j)} (min {min(true_j):.2f}); the generator's "
            f"templates make some natural near-duplicates, which dedup should remove"
        )
    ds = with_datasketch(texts, cfg)
    if ds is None:
        print(
            "\ndatasketch is not installed: the side-by-side column is skipped (pip install datasketch to compare)."
        )
    else:
        keep_ds, s_ds = ds
        print(
            f"\ndatasketch: {s_ds:.2f}s ({len(texts) / s_ds:,.0f} docs/s); dedup.py is {s_ds / total:.2f}x faster; "
            f"keep/remove decisions agree on {(keep_ds == keep).mean():.4%} of documents"
        )
    plt = pyplot()
    names = list(t) + (["datasketch (all)"] if ds else [])
    secs = list(t.values()) + ([ds[1]] if ds else [])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(names, secs, color=["C0"] * len(t) + ["C1"] * bool(ds))
    ax.set_xlabel("seconds")
    ax.set_title(f"dedup of {len(texts):,} documents: {len(texts) / total:,.0f} docs/s (dedup.py total)")
    save_figure(fig, args.out)
    write_json(
        Path(args.out).with_suffix(".json"),
        {
            "docs": len(texts),
            "seconds": t,
            "docs_per_s": len(texts) / total,
            "copies_removed": int((~keep & is_copy).sum()),
            "copies": int(is_copy.sum()),
            "originals_removed": int((~keep & ~is_copy).sum()),
            "datasketch_s": ds[1] if ds else None,
            "datasketch_agreement": float((ds[0] == keep).mean()) if ds else None,
        },
    )
    print(f"saved {args.out} and {Path(args.out).with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
