"""The fast path of bpe_merges.py and bpe.py: BPE training and encoding on numpy arrays, same results.

Why it exists. The readable versions (bpe_merges.py, bpe.py) do their work one Python step at a
time: the encoder merges one pre-token ("piece") at a time, the trainer rewrites one word at a
time. That is fine for English, where a few thousand distinct words cover most of a corpus, and slow for Chinese:
under the GPT-4 pattern a run of Chinese characters is one piece (~24 bytes), about 70 % of the
pieces in 红楼梦 are distinct, so the encoder's cache misses and the trainer's first merges (the
UTF-8 byte pairs inside characters) touch nearly every word. Both versions here do the same
arithmetic as theirs, on whole arrays at once, and are tested equal to them.

1. Encoding in rounds (`encode_pieces_flat`). Lay all distinct pieces end to end in one array of
   token ids. Every pair of tokens (x, y) whose joined bytes are a token t is a row of a sorted table
   with key x * 2^32 + y, found for a whole array of pairs with one `np.searchsorted` (or one gather
   in a dense grid when it fits: `merge_table`). Then, in each round, every piece merges its one
   best pair (lowest rank, leftmost on ties) - exactly the step the per-piece loop takes - so after
   as many rounds as the longest piece has merges, every piece is done. A merged-away token leaves a
   hole that a linked list skips, so a round is one pass (a min per piece) plus work per merging
   piece; finished pieces are copied out when they fill most of the array. The pieces are merged in
   groups of similar length: a group's arrays stay in the CPU's cache, and short pieces do not wait
   through the long ones' rounds.
   bpe_cuts.encode_texts cuts the pieces of a batch where no token of the vocabulary can lie across
   (红楼梦's 96k distinct pieces, 2.3 MB, become ~15k distinct sub-pieces with a trained 2k
   vocabulary), merges only the distinct sub-pieces this way, and puts the texts together with
   gathers, with Python's cycle collector paused.
   Measured (bench_bpe.py, CPU time, cold, whole 红楼梦, see the README for the table): the rounds
   alone brought Chinese from 16x tiktoken's time (the per-piece loop) to 2.1-3.0x; the cuts to
   1.1-1.4x, and with pretokenize.PreTokenizer's faster regex 0.9-1.2x (English 1.3-1.4x). What is
   left is the cuts and the id list; on English, where few pieces are cut, the dict of distinct
   pieces, the merging and the id list.

2. Training with a position index (`train_merges_fast`). All distinct words are laid end to end
   in one array `sym`; a doubly linked list (`nxt`, `prv`) skips the symbols that merges removed,
   so nothing is ever copied. The pair -> words index of bpe_merges.train_merges becomes pair -> positions:
   the left position of every occurrence, stale ones dropped when read. A merge of (a, b) reads its
   positions, rewrites them all at once, and turns the neighbours into count changes (the same
   bookkeeping as bpe_merges.merge_counting_pairs, written for arrays):
       ... p a b q ...  ->  ... p t q ...   with t the new token, each weighted by the word's count:
       (a, b) -1,  (p, a) -1, (p, t) +1,  (b, q) -1, (t, q) +1
   with two adjacent occurrences "a b a b" sharing one (b, a), which becomes one (t, t).
   A merge with few occurrences (late merges, most of a large vocabulary) is cheaper one by one
   in plain Python than through numpy's per-call cost: `merge_one_by_one`, tested equal.
   The heap, tie-break and stopping rule are bpe_merges.train_merges', so the merges are identical.
   Measured (bench_bpe.py, CPU time): 4-9x faster than train_merges on 红楼梦 (vocab 10k / 2048),
   2-3.5x on English.

Interview questions it answers:
- Why is a Python BPE encoder slow on Chinese but fast on English? (cache hit rate: distinct pieces)
- How do you vectorize a sequential algorithm? Find the unit that is independent (each piece; each
  occurrence of one pair) and do one step for all of them per array operation.
"""

import heapq
from collections import Counter, defaultdict

import numpy as np

LOW32 = (1 << 32) - 1
FEW = 32  # merges with at most this many positions run one by one (merge_one_by_one)


def pair_keys(left, right):
    """One int64 per pair of token ids: left * 2^32 + right (token ids < 2^31)."""
    return (np.asarray(left, np.int64) << 32) | np.asarray(right, np.int64)


# ==================================================================================================
# 1. Encoding: every piece merges its best pair, all pieces at once, round after round


DENSE_MAX_ENTRIES = 1 << 24  # a dense pair table of at most this many int16 entries (32 MB)


def merge_table(ranks: dict):
    """(keys, ranks, can_left, can_right, dense): every pair of tokens (x, y) whose joined bytes are a
    token, as sorted keys and the joined token's rank; can_left[x] / can_right[y]: x starts / y ends some
    pair (a cheap test that spares most binary searches). Found by splitting each token's bytes at
    every point, so it holds exactly the pairs that tiktoken's rule (`rank of bytes(x) + bytes(y)`)
    can merge, not only the trained merges.
    dense, when it fits in DENSE_MAX_ENTRIES: (row, col, grid) with grid[row[x] + col[y]] the same rank
    (`no_merge` where none), row[x] = 0 and col[y] = 0 for a token that starts / ends no pair, so
    only the tokens that do get a row / column: one gather instead of a binary search, ~5x cheaper.
    A trained 10k vocabulary has ~2.5k of each (6M entries); GPT-2's 50k has 17k x 14k, so it searches."""
    left, right, merged = [], [], []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            x, y = ranks.get(token[:cut]), ranks.get(token[cut:])
            if x is not None and y is not None:
                left.append(x)
                right.append(y)
                merged.append(rank)
    keys = pair_keys(left, right)
    order = np.argsort(keys)
    V = max(ranks.values(), default=0) + 1
    can_left, can_right = np.zeros((2, V), bool)
    can_left[left], can_right[right] = True, True
    none = max(merged, default=0) + 1  # = no_merge(table)
    width = int(can_right.sum()) + 1
    dense = None
    if (can_left.sum() + 1) * width <= DENSE_MAX_ENTRIES and none < 1 << 15:
        row = np.cumsum(can_left) * can_left * width  # 0 for a token that starts no pair
        col = np.cumsum(can_right) * can_right
        grid = np.full((can_left.sum() + 1) * width, none, np.int16)
        grid[row[left] + col[right]] = merged
        dense = (row, col, grid)
    return keys[order], np.asarray(merged, np.int64)[order], can_left, can_right, dense


def rank_of_pairs(table, left, right, no_merge):
    """The rank of merging each (left[i], right[i]), or `no_merge` (which must be no_merge(table)):
    a binary search in the table (or one gather in its dense form, which is filled with it)."""
    keys, ranks, can_left, can_right, dense = table
    if dense is not None:
        row, col, grid = dense
        return grid[row[left] + col[right]].astype(np.int64)  # holds no_merge(table) already
    out = np.full(len(left), no_merge, np.int64)
    maybe = np.flatnonzero(can_left[left] & can_right[right])
    if len(keys) == 0 or len(maybe) == 0:
        return out
    q = pair_keys(left[maybe], right[maybe])
    i = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    out[maybe] = np.where(keys[i] == q, ranks[i], no_merge)
    return out


CHUNK_BYTES = 1 << 17  # pieces merged together: arrays of ~this many slots stay in the CPU's cache
PACK = 8  # finished pieces are copied out once the merging ones fill less than 1/PACK of the slots


def ranges(starts, counts):
    """The indices starts[0], ..., starts[0] + counts[0] - 1, then the next range's, ..., as one array."""
    # output position j of range i holds starts[i] + (j - positions before range i): one repeat, one arange
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())


def encode_pieces_flat(pieces, byte_ids, table, chunk_bytes=None):
    """`encode_chunk` on groups of pieces of similar length, about chunk_bytes bytes each.

    Why groups: a round touches its slots at random places (the merging pairs), so the arrays should
    fit in the CPU's cache; and a round costs per piece still merging, so pieces that need as many
    rounds as each other should share them: sorted by length, the short pieces finish in a few rounds
    together and the few long ones take their many rounds alone. Same ids: each piece merges on its own."""
    lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
    return encode_joined(np.frombuffer(b"".join(pieces), np.uint8), lengths, byte_ids, table, chunk_bytes)


def utf8_joined(strings) -> tuple:
    """(the UTF-8 bytes of the strings end to end as uint8, the byte length of each string): one
    encode of the joined text, the lengths counted from code points (1 byte below U+0080, 2 below
    U+0800, 3 below U+10000, else 4), instead of one `str.encode` per string."""
    joined = "".join(strings)
    raw = np.frombuffer(joined.encode("utf-8"), np.uint8)
    points = np.frombuffer(joined.encode("utf-32-le"), np.uint32)
    width = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    bytes_before = np.concatenate([[0], np.cumsum(width)])  # bytes before each character
    chars_before = np.concatenate([[0], np.cumsum(np.fromiter(map(len, strings), np.int64, len(strings)))])
    return raw, np.diff(bytes_before[chars_before])


def encode_joined(raw, lengths, byte_ids, table, chunk_bytes=None):
    """`encode_pieces_flat` of pieces given as their bytes end to end (uint8) and their lengths."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    offsets = np.cumsum(lengths) - lengths
    final, final_lengths = np.zeros(lengths.sum(), np.int64), np.zeros(len(lengths), np.int64)
    order = np.argsort(lengths, kind="stable")
    first = byte_pair_ranks(byte_ids, table)
    chunk = (np.cumsum(lengths[order]) - 1) // chunk_bytes  # the group of each piece, in sorted order
    cuts = np.flatnonzero(np.diff(chunk)) + 1
    for group in np.split(order, cuts):
        group_raw = raw[ranges(offsets[group], lengths[group])]
        ids, offs, lens = encode_chunk(group_raw, lengths[group], byte_ids, table, first)
        final_lengths[group] = lens
        final[ranges(offsets[group], lens)] = ids[ranges(offs, lens)]
    return final, offsets, final_lengths


def no_merge(table) -> int:
    """A rank above every rank of the table: "cannot merge"."""
    return int(table[1].max()) + 1 if len(table[1]) else 1


def byte_pair_ranks(byte_ids, table):
    """(65536,): the rank of merging byte a's token with byte b's at a * 256 + b (every chunk's first
    lookup covers its byte pairs: one dense table, built once per call)."""
    byte_ids = np.asarray(byte_ids, np.int64)
    return rank_of_pairs(table, np.repeat(byte_ids, 256), np.tile(byte_ids, 256), no_merge(table))


def encode_chunk(raw, lengths, byte_ids, table, first=None):
    """(ids, offsets, lengths): the token ids of every piece end to end, piece i being
    ids[offsets[i] : offsets[i] + lengths[i]], equal to bpe.BPETokenizer.bpe_piece on each one.
    The pieces come as their bytes end to end (`raw`, uint8) and their lengths in bytes.

    State, for the pieces still merging laid end to end in n slots:
      ids[x]   token ids, -1 in a slot whose token was merged into its left neighbour (a hole);
      key[x] = rank << shift | x (2^shift > n), rank = the rank of merging the token in slot x with the next one
               (`none` at a piece's end and in holes), so one min per piece gives the lowest rank
               and, on ties, the leftmost pair;
      nxt, prv: the next / previous slot that is not a hole (a linked list: nothing moves).
    A round: the min key of each piece (one `minimum.reduceat` over the slots); a piece whose min
    is `none` is finished; every other piece merges that pair (the merged token's id is its rank,
    as in tiktoken), looks up the two pair ranks beside it and unlinks the right half. Only the
    merging pieces' few slots are touched, so a round costs one pass over the slots plus work per
    piece. When finished pieces fill most slots they are copied out and the rest are packed."""
    none = no_merge(table)
    offsets = np.cumsum(lengths) - lengths  # where each piece starts in `final`
    final, final_lengths = np.zeros(lengths.sum(), np.int64), np.zeros(len(lengths), np.int64)
    owner = np.flatnonzero(lengths > 0)  # the piece of each segment of slots
    seg = lengths[owner]  # slots per segment, holes included
    byte_ids = np.asarray(byte_ids, np.int64)
    n = len(raw)
    ids = np.append(byte_ids[raw], 0)  # one spare slot: the "next" of the last slot
    # The first lookup covers every byte pair of the text: read it from a dense 256 x 256 table.
    first = byte_pair_ranks(byte_ids, table) if first is None else first
    start = np.cumsum(seg) - seg
    key = np.full(n, none, np.int64)
    key[:-1] = first[raw[:-1].astype(np.int64) * 256 + raw[1:]]
    key[start + seg - 1] = none  # no pair across a piece boundary
    shift = n.bit_length()  # key = rank << shift | slot: shifts and masks, cheaper than * n and divmod
    key = key << shift | np.arange(n)
    nxt, prv = np.arange(1, n + 2), np.arange(-1, n)
    alive = np.ones(len(owner), bool)
    live, live_start, live_end = np.arange(len(owner)), start, start + seg
    while len(live):
        best = np.minimum.reduceat(key, live_start)
        best_rank, at = best >> shift, best & ((1 << shift) - 1)
        going = best_rank != none
        if not going.all():  # these pieces are finished
            alive[live[~going]] = False
            live, live_start, live_end = live[going], live_start[going], live_end[going]
            best_rank, at = best_rank[going], at[going]
        if len(live):
            right = nxt[at]  # the right half of the pair: becomes a hole
            after = nxt[right]  # the token after the pair (or the next piece's first slot)
            ids[at] = best_rank
            ids[right] = -1
            key[right] = none << shift | right
            nxt[at] = after
            prv[after] = at  # harmless past a piece's end: a piece's first slot never reads its prv
            has_left = at != live_start
            left = prv[at[has_left]]
            key[left] = rank_of_pairs(table, ids[left], best_rank[has_left], none) << shift | left
            has_right = after < live_end
            pair = np.where(has_right, rank_of_pairs(table, best_rank, ids[after], none), none)
            key[at] = pair << shift | at
        if PACK * (live_end - live_start).sum() < n or not len(live):  # copy the finished out, pack the rest
            kept = ids[:n] >= 0
            counts = np.add.reduceat(kept, start)  # tokens per segment
            done = ~alive
            m, k = counts[done], owner[done]
            step = np.arange(m.sum()) - np.repeat(np.cumsum(m) - m, m)  # 0, 1, ... inside each piece
            final[np.repeat(offsets[k], m) + step] = ids[:n][np.repeat(done, seg) & kept]
            final_lengths[k] = m
            keep = np.repeat(alive, seg) & kept
            rank = key[keep] >> shift
            ids = np.append(ids[:n][keep], 0)
            owner, seg = owner[alive], counts[alive]
            start = np.cumsum(seg) - seg
            n = len(rank)
            shift = n.bit_length()
            key = rank << shift | np.arange(n)
            nxt, prv = np.arange(1, n + 2), np.arange(-1, n)
            alive = np.ones(len(owner), bool)
            live, live_start, live_end = np.arange(len(owner)), start, start + seg
    return final, offsets, final_lengths


def encode_pieces(pieces, byte_ids, table):
    """Token ids of each piece (bytes) as a list per piece: `encode_pieces_flat`, cut up."""
    final, offsets, lengths = encode_pieces_flat(pieces, byte_ids, table)
    flat = final.tolist()
    return [flat[s : s + m] for s, m in zip(offsets.tolist(), lengths.tolist())]


# ==================================================================================================
# 2. Training: a merge rewrites all occurrences of its pair at once


def descending(token: bytes) -> tuple:
    """A sort key that orders byte strings from greatest to least, for the trainers' tie-break
    (the greatest bytes win) in a min-heap: every byte flipped (255 - x), then 256, above any
    flipped byte, so that "ab" sorts after "abc" as b"ab" < b"abc" requires. Plain tuples compare
    in C, which matters when thousands of pairs tie at a low count."""
    return tuple(255 - x for x in token) + (256,)


def sum_by_key(keys, weights):
    """(distinct keys ascending, the sum of the weights of each key, exact in int64, and the sort
    order and group starts, for grouping other values the same way)."""
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else keys
    sums = np.add.reduceat(weights[order], first) if len(keys) else weights
    return keys[first], sums, order, first


def group_by_key(keys, values, weights):
    """(distinct keys ascending, the values of each key as a list of arrays, the weight sums)."""
    distinct, sums, order, first = sum_by_key(keys, weights)
    values = values[order]
    bounds = np.append(first, len(values)).tolist()
    return distinct.tolist(), [values[s:e] for s, e in zip(bounds, bounds[1:])], sums.tolist()


def every_other_in_runs(at, nxt):
    """For a pair (a, a): of overlapping occurrences ("a a a" has two), keep the 1st, 3rd, ... of each
    run, as a left-to-right scan does. `at` is sorted; an occurrence continues a run when it starts
    where the previous one's right half is."""
    cont = np.concatenate([[False], at[1:] == nxt[at[:-1]]])
    idx = np.arange(len(at))
    run_start = np.maximum.accumulate(np.where(cont, 0, idx))
    return at[(idx - run_start) % 2 == 0]


def merge_all_at_once(at, a, b, new, sym, nxt, prv, freq, end):
    """Merge (a, b) into `new` at the sorted positions `at` (stale ones dropped here), all at once.
    Returns the count changes [(pair key, change)] (a pair the merge made: its count) and the
    positions of the pairs it made [(pair key, array of left positions)]."""
    at = at[(sym[at] == a) & (sym[nxt[at]] == b)]  # drop positions whose pair has changed
    if a == b:
        at = every_other_in_runs(at, nxt)
    j, p = nxt[at], prv[at]  # right half, left neighbour
    q = nxt[j]  # right neighbour
    f = freq[at]
    joined_left = np.concatenate([[False], p[1:] == j[:-1]])  # "a b a b": the 2nd's p is the 1st's b
    joined_right = np.concatenate([q[:-1] == at[1:], [False]])
    has_left = (p != end) & ~joined_left
    has_right = q != end
    sp, sq = sym[p[has_left]], sym[q[has_right]]
    # pairs the merge removes: (a, b) at each occurrence, (p, a) and (b, q) beside it
    gone = np.concatenate([pair_keys(np.full(len(at), a), b), pair_keys(sp, a), pair_keys(b, sq)])
    gone_f = np.concatenate([f, f[has_left], f[has_right]])
    # pairs it makes, at the position of their left symbol: (p, t), and (t, q) or (t, t)
    made = np.concatenate([pair_keys(sp, new), pair_keys(new, np.where(joined_right[has_right], new, sq))])
    made_at = np.concatenate([p[has_left], at[has_right]])
    made_f = np.concatenate([f[has_left], f[has_right]])

    sym[at] = new  # rewrite: t at the left position,
    sym[j] = -1  # the right half unlinked
    nxt[at] = q
    prv[q[has_right]] = at[has_right]

    gone_keys, gone_counts, _, _ = sum_by_key(gone, gone_f)
    made_keys, made_positions, made_counts = group_by_key(made, made_at, made_f)
    changes = [*zip(gone_keys.tolist(), (-c for c in gone_counts.tolist())), *zip(made_keys, made_counts)]
    return changes, list(zip(made_keys, made_positions))


def merge_one_by_one(at, a, b, new, sym, nxt, prv, freq, end):
    """`merge_all_at_once` in plain Python, for a merge with few occurrences, where numpy's cost per
    call outweighs the work: bpe_merges.merge_counting_pairs on positions. Each left neighbour is read
    after the occurrence before it was rewritten, so "a b a b" and "a a a" come out the same."""
    change, made = Counter(), defaultdict(list)
    for i in at.tolist():
        j = int(nxt[i])
        if sym[i] != a or sym[j] != b:
            continue  # its pair has changed, or merged just now
        p, q, f = int(prv[i]), int(nxt[j]), int(freq[i])
        change[a << 32 | b] -= f
        if p != end:
            left = int(sym[p])
            change[left << 32 | a] -= f
            change[left << 32 | new] += f
            made[left << 32 | new].append(p)
        if q != end:
            right = int(sym[q])
            change[b << 32 | right] -= f
            change[new << 32 | right] += f
            made[new << 32 | right].append(i)
            prv[q] = i
        sym[i], sym[j], nxt[i] = new, -1, q
    return [(k, c) for k, c in change.items() if c], [(k, np.array(v)) for k, v in made.items()]


def train_merges_fast(word_counts, n_merges, progress=None, progress_every=500):
    """bpe_merges.train_merges on arrays: the same merges [(left_id, right_id), ...], merge k makes 256+k.

    Arrays over the L bytes of all distinct words laid end to end, plus one sentinel slot at L:
      sym[i]  symbol at position i (-1 once merged into its left neighbour; sym[L] = -1)
      nxt[i], prv[i]  next / previous live position in the same word, or L at the word's ends
      freq[i] count of the word position i belongs to
    where[pair key] = list of arrays of positions i with (sym[i], sym[nxt[i]]) == pair, or that had it
    once (checked when read). counts[pair key] and the heap as in bpe_merges.train_merges, with one change
    that saves most pushes: a count that falls gets no new entry; its old, larger entry is re-pushed
    with the true count when popped. Only a new pair is pushed at once (the pairs a merge creates all
    contain the new token, so they are new; the pairs it removes only fall)."""
    words = list(word_counts)
    if not words:
        return []
    lengths = np.fromiter(map(len, words), np.int64, len(words))
    L = int(lengths.sum())
    sym = np.full(L + 1, -1, np.int64)
    sym[:L] = np.frombuffer(b"".join(words), np.uint8)
    freq = np.zeros(L + 1, np.int64)
    freq[:L] = np.repeat(np.fromiter(word_counts.values(), np.int64, len(words)), lengths)
    ends = np.cumsum(lengths)
    nxt = np.arange(1, L + 2)
    prv = np.arange(-1, L)
    nxt[ends - 1] = L
    prv[ends - lengths] = L
    nxt[L] = prv[L] = L

    at = np.flatnonzero(nxt[:L] != L)
    keys, positions, sums = group_by_key(pair_keys(sym[at], sym[nxt[at]]), at, freq[at])
    where = {k: [v] for k, v in zip(keys, positions)}
    counts = dict(zip(keys, sums))
    vocab = [bytes([i]) for i in range(256)]
    desc = [descending(t) for t in vocab]  # token id -> its tie-break key

    def entry(key):
        return (-counts[key], desc[key >> 32], desc[key & LOW32], key)

    heap = [entry(k) for k in counts]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        neg, _, _, key = heapq.heappop(heap)
        if counts.get(key, 0) != -neg:
            if key in counts:
                heapq.heappush(heap, entry(key))  # its count fell since: back in at its true count
            continue
        a, b, new = key >> 32, key & LOW32, 256 + len(merges)
        vocab.append(vocab[a] + vocab[b])
        desc.append(descending(vocab[new]))
        merges.append((a, b))

        chunks = where.pop(key)
        at = np.sort(np.concatenate(chunks)) if len(chunks) > 1 else chunks[0]  # each chunk is sorted
        merge = merge_one_by_one if len(at) <= FEW else merge_all_at_once
        changes, made_at = merge(at, a, b, new, sym, nxt, prv, freq, L)
        for k, c in changes:
            if c > 0:  # a pair the merge made: new, so pushed now
                counts[k] = c
                heapq.heappush(heap, entry(k))
            elif counts[k] + c > 0:
                counts[k] += c  # fell: re-pushed when its old entry is popped
            else:
                del counts[k]
                where.pop(k, None)
        where.update((k, [v]) for k, v in made_at if k in counts)
        if progress and len(merges) % progress_every == 0:
            progress(f"merge {len(merges)}/{n_merges}: {vocab[new]!r} (count {-neg})")
    return merges
