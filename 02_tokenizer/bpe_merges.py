"""Learning BPE's merges: the textbook loop, and the incremental trainer that touches only what changed.

BPE starts from the 256 byte values and repeatedly adds one new token: the concatenation of the
adjacent pair of tokens that occurs most often in the training corpus. The ordered list of merges
*is* the tokenizer (bpe.py encodes with it).

In reading order:
  1. count each distinct pre-token once (pretokenize.word_counts_of: word -> frequency), so a word
     seen 10,000 times is merged once and its pairs counted with weight 10,000;
  2. `train_merges_naive`, the textbook loop: recount every pair after every merge (a small
     reference, minutes on a real corpus);
  3. `train_merges` keeps the pair counts, an index pair -> words containing it, and a max-heap
     with lazy deletion, and after each merge touches only the words that contained the merged
     pair. `BPETokenizer.train` runs the same algorithm on numpy arrays (bpe_fast.py), tested equal.

Tie-break rule (written down because it decides which merges you get on small corpora): among
pairs with equal count, pick the pair whose (left bytes, right bytes) is lexicographically
greatest, e.g. (b"we", b"s") beats (b"n", b"e"). All trainers use it, so they agree exactly.

Interview questions it answers:
- How does BPE training work, and what is its cost per merge done naively? (recount: O(corpus))
- How do you train BPE in O(changes) instead of O(corpus) per merge? (pair -> words index + heap)
- Why count distinct pre-tokens instead of scanning the text? (Zipf: a few words make most tokens)
"""

import heapq
from collections import Counter, defaultdict

from bpe_fast import descending  # same stage


def merge_ids(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair` in `ids` (left to right) by `new_id`."""
    # >>> exercise: scan left to right; where ids[i], ids[i+1] == pair emit new_id and skip both, else copy ids[i]
    out, i, a, b = [], 0, pair[0], pair[1]
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    # <<< exercise


def train_merges_naive(word_counts, n_merges):
    """Reference trainer: recount all pairs after every merge. O(corpus) per merge; for tests."""
    # >>> exercise: each round: count pairs weighted by word count; merge the most frequent (ties: greater bytes)
    vocab = {i: bytes([i]) for i in range(256)}
    words = {tuple(w): n for w, n in word_counts.items()}
    merges = []
    for k in range(n_merges):
        stats = Counter()
        for w, n in words.items():
            for p in zip(w, w[1:]):
                stats[p] += n
        if not stats:
            break
        best = max(stats, key=lambda p: (stats[p], vocab[p[0]], vocab[p[1]]))  # count, then tie-break
        new_id = 256 + k
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merges.append(best)
        merged = Counter()
        for w, n in words.items():
            merged[tuple(merge_ids(w, best, new_id))] += n
        words = merged
    return merges
    # <<< exercise


def merge_counting_pairs(word, pair, new_id, n, delta):
    """`merge_ids` that also records how the pair counts change, in `delta` (weighted by the word's
    frequency n). At each occurrence of (a, b) with neighbours p and q, the pairs (p, a), (a, b),
    (b, q) disappear and (p, new), (new, q) appear; nothing else in the word changes. p is read from
    the output, so in "a b a b" the (new, a) counted at the first occurrence is taken back at the
    second, which then adds (new, new). Cost: one pass over the word, not a recount of it."""
    # >>> exercise: merge_ids; in delta (p,a), (a,b), (b,q) lose n and (p,new), (new,q) gain n per occurrence
    a, b = pair
    out, i, length = [], 0, len(word)
    while i < length:
        if word[i] == a and i + 1 < length and word[i + 1] == b:
            delta[pair] -= n
            if out:
                delta[out[-1], a] -= n
                delta[out[-1], new_id] += n
            if i + 2 < length:
                delta[b, word[i + 2]] -= n
                delta[new_id, word[i + 2]] += n
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
    # <<< exercise


def train_merges(word_counts, n_merges, progress=None, progress_every=500):
    """Incremental BPE trainer; returns the merges [(left_id, right_id), ...], merge k makes id 256+k.

    State:
      counts[pair]  = sum over words of freq(word) * occurrences of pair in word   (exact)
      where[pair]   = indices of words that contain pair, or did once (the pair -> words index;
                      a word that lost the pair is not removed, it is skipped when merged: cheaper
                      than keeping the sets exact)
      heap          = entries (-count, descending(left bytes), descending(right bytes), pair), so
                      the min-heap pops the highest count, then the greatest bytes (the tie-break);
                      an entry is stale when its count differs from counts[pair] and is skipped
                      when popped (lazy deletion), because a changed pair gets a fresh entry.
    A merge of (a, b) rewrites only the words in where[(a, b)] and changes only the counts of the
    pairs around each occurrence (merge_counting_pairs), so its cost is the size of the change,
    not of the corpus.
    """
    vocab = {i: bytes([i]) for i in range(256)}
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    counts, where = Counter(), defaultdict(set)
    for wi, (w, n) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            counts[p] += n
            where[p].add(wi)

    def entry(p):
        return (-counts[p], descending(vocab[p[0]]), descending(vocab[p[1]]), p)

    heap = [entry(p) for p in counts]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # stale entry: this pair's count changed after it was pushed
        new_id = 256 + len(merges)
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        merges.append(pair)
        delta = Counter()  # net change of each pair's count caused by this merge
        for wi in where.pop(pair):
            word = merge_counting_pairs(words[wi], pair, new_id, freqs[wi], delta)
            for p in zip(word, word[1:]):
                if new_id in p:
                    where[p].add(wi)
            words[wi] = word
        for p, d in delta.items():
            if d == 0:
                continue  # e.g. the (new, a) of "a b a b", added and taken back
            counts[p] += d
            if counts[p] > 0:
                heapq.heappush(heap, entry(p))
            else:
                del counts[p]
                where.pop(p, None)
        if progress and len(merges) % progress_every == 0:
            progress(f"merge {len(merges)}/{n_merges}: {vocab[new_id]!r} (count {-neg})")
    return merges
