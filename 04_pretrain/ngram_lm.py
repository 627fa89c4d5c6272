"""A count-based n-gram language model with interpolated Kneser-Ney smoothing: the baseline a transformer
must beat, over the same token shards, with no training at all.

    lm = KneserNey.fit(train_tokens, order=4, vocab_size=V)
    nll = lm.token_nll(test_tokens)          # (N,) nats of each test token given its n-1 predecessors
    float(nll.mean())                        # test loss in nats/token, comparable with pretrain.py's

    python 04_pretrain/ngram_lm.py --data runs/tiny --orders 2,3,4,8,16     # a table of test losses

Interpolated Kneser-Ney (Chen & Goodman 1998, "interpolated KN" with one discount per order). For a
context h = w_{i-k+1..i-1} of order k and the token w = w_i:

    P_k(w | h) = max(a_k(h w) - D_k, 0) / d_k(h)  +  D_k · t_k(h) / d_k(h) · P_{k-1}(w | h')
    d_k(h) = Σ_v a_k(h v)       t_k(h) = |{v : a_k(h v) > 0}|       h' = h without its first token
    P_0(w) = 1 / V (uniform), and P_k = P_{k-1} when the context h was never seen (d_k(h) = 0)

a_k is the raw count c(h w) at the highest order, and the *continuation count* N1+(• h w) (how many
distinct tokens precede h w) at every lower order. Why: a lower order is consulted only when the longer
context is rare, so it should say how likely w is to follow *new* contexts: "Francisco" is frequent
but follows only "San", so its unigram continuation probability is small. D_k = n1 / (n1 + 2 n2), from
the number of n-grams seen once (n1) and twice (n2) at that order (Ney, Essen & Kneser 1994). The
weight D_k t_k(h) / d_k(h) is exactly the mass the discounts took away, so Σ_w P_k(w | h) = 1.

How it is computed. An n-gram is one 64-bit key, a polynomial hash of its token ids with wrap-around
(key_k[i] = key_{k-1}[i-1] · B + id_i + 1 mod 2^64; 01_data/contamination.ngram_keys): counting is np.unique over keys and a lookup is a
binary search (np.searchsorted) in the sorted unique keys, so a million tokens and order 8 take seconds
without a Python loop per token. Two different n-grams sharing a key has probability about m² / 2^65
for m distinct n-grams (1e-8 for m = 1e6): negligible next to the smoothing.

Interview questions it answers:
- Why Kneser-Ney and not add-one or plain back-off? (add-one gives far too much mass to unseen
  events; KN's absolute discount matches how counts of once-seen n-grams shrink on new text, and its
  continuation counts make the lower orders answer the question they are asked)
- Why does a higher order stop helping? (most 8-grams of the test text were never seen: the model
  backs off, and with few data the higher-order counts are noise; the transformer generalizes
  across contexts that share meaning, not only exact history)
- What is the strongest cheap baseline for a language model? (a smoothed n-gram on the same tokens:
  it costs one pass of counting; a unigram baseline is far too easy to beat)
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data")]
from common.cli import UserError, option, parse_config, run_cli
from contamination import MULT, ngram_keys  # 01_data: the same n-gram hashing

from batches import load_shards, load_test_shard


def lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values of the query keys in a sorted key table, 0 for a key it does not hold."""
    if sorted_keys.size == 0:
        return np.zeros(query.shape, dtype=values.dtype)
    pos = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return np.where(sorted_keys[pos] == query, values[pos], 0)


@dataclass
class OrderTable:
    """Everything order k needs: a_k per n-gram key, and d_k, t_k per context key; D_k."""

    gram_keys: np.ndarray  # sorted unique keys of the k-grams
    gram_counts: np.ndarray  # a_k: raw counts (highest order) or continuation counts (lower orders)
    ctx_keys: np.ndarray  # sorted unique keys of the (k-1)-token contexts
    ctx_total: np.ndarray  # d_k(h) = Σ_v a_k(h v)
    ctx_types: np.ndarray  # t_k(h) = |{v : a_k(h v) > 0}|
    discount: float  # D_k


def discount_of(counts: np.ndarray) -> float:
    """D = n1 / (n1 + 2 n2), clipped into (0, 1): n1, n2 = how many n-grams have count 1 and 2."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95) if n1 else 0.5


def table_of(gram_keys, ctx_of_gram, counts) -> OrderTable:
    """Sum counts (and count types) per context from unique grams, their contexts and their a_k."""
    ctx_keys, inverse = np.unique(ctx_of_gram, return_inverse=True)
    total = np.bincount(inverse, weights=counts, minlength=ctx_keys.size)
    types = np.bincount(inverse, minlength=ctx_keys.size)
    return OrderTable(gram_keys, counts, ctx_keys, total, types, discount_of(counts))


class KneserNey:
    def __init__(self, tables: list, order: int, vocab_size: int):
        self.tables, self.order, self.vocab_size = tables, order, vocab_size

    @classmethod
    def fit(cls, tokens, order: int, vocab_size: int) -> "KneserNey":
        """Count the training tokens once: tables[k] for k = 1..order."""
        if order < 1:
            raise ValueError(f"order must be >= 1 (got {order})")
        tokens = np.asarray(tokens)
        if tokens.size < order:
            raise ValueError(f"{tokens.size} training tokens, fewer than the order {order}")
        keys = ngram_keys(tokens, order)
        tables = [None] * (order + 1)
        # the highest order: raw counts c(h w)
        ends = np.arange(order - 1, tokens.size)
        grams, first, counts = np.unique(keys[order][ends], return_index=True, return_counts=True)
        gram_end = ends[first]  # where one occurrence of each unique gram ends
        ctx = keys[order - 1][gram_end - 1] if order > 1 else np.zeros_like(grams)
        tables[order] = table_of(grams, ctx, counts.astype(np.float64))
        # lower orders: a_k(g) = N1+(• g) = the number of distinct (k+1)-grams whose last k tokens are g
        for k in range(order - 1, 0, -1):
            ends = np.arange(k, tokens.size)  # (k+1)-grams end here; their suffix k-gram ends here too
            _, first = np.unique(keys[k + 1][ends], return_index=True)
            suffix = keys[k][ends[first]]  # one entry per distinct left extension
            grams, cont = np.unique(suffix, return_counts=True)
            # the context of each k-gram: its first k-1 tokens, ending one position earlier
            _, where = np.unique(keys[k][ends], return_index=True)
            gram_end = ends[where]  # an occurrence of each k-gram that has a left neighbour (same sort)
            ctx = keys[k - 1][gram_end - 1] if k > 1 else np.zeros_like(grams)
            tables[k] = table_of(grams, ctx, cont.astype(np.float64))
        return cls(tables, order, vocab_size)

    def token_nll(self, tokens) -> np.ndarray:
        """-ln P(w_i | w_{i-n+1..i-1}) for every token i >= 1 of `tokens` (the first has no history and
        is not scored, like the first input of a training window): shape (len(tokens) - 1,)."""
        tokens = np.asarray(tokens)
        keys = ngram_keys(tokens, self.order)
        n = tokens.size
        p = np.full(n, 1.0 / self.vocab_size)  # P_0
        for k in range(1, self.order + 1):
            tab = self.tables[k]
            i = np.arange(k - 1, n)  # positions with k-1 tokens of history
            if i.size == 0:
                break
            ctx = keys[k - 1][i - 1] if k > 1 else np.zeros(i.size, dtype=np.uint64)
            d = lookup(tab.ctx_keys, tab.ctx_total, ctx)
            t = lookup(tab.ctx_keys, tab.ctx_types, ctx)
            a = lookup(tab.gram_keys, tab.gram_counts, keys[k][i])
            seen = d > 0
            safe = np.where(seen, d, 1.0)
            mixed = np.maximum(a - tab.discount, 0) / safe + tab.discount * t / safe * p[i]
            p[i] = np.where(seen, mixed, p[i])
        return -np.log(p[1:])

    def prob(self, history, token) -> float:
        """P(token | history) for one query, by the formula above one order at a time with Python ints
        (the same hashing as ngram_keys): a scalar reference for the vectorized token_nll."""
        h = [int(x) for x in history][max(0, len(history) - self.order + 1) :] if self.order > 1 else []
        p = 1.0 / self.vocab_size
        for k in range(1, min(self.order, len(h) + 1) + 1):
            ctx = key_of(h[len(h) - k + 1 :] if k > 1 else [])
            tab = self.tables[k]
            one = lambda keys, vals, q: float(lookup(keys, vals, np.asarray([q], dtype=np.uint64))[0])
            d, t = one(tab.ctx_keys, tab.ctx_total, ctx), one(tab.ctx_keys, tab.ctx_types, ctx)
            if d > 0:
                a = one(
                    tab.gram_keys,
                    tab.gram_counts,
                    key_of([*h[len(h) - k + 1 :], token] if k > 1 else [token]),
                )
                p = max(a - tab.discount, 0) / d + tab.discount * t / d * p
        return p


class NgramLookup:
    """The lookup-table baseline for completions: after a context, emit the token that most often
    followed it in the training shard, backing off from the last order-1 tokens to shorter contexts
    ("stupid" greedy back-off, no smoothing needed for an argmax). A probe that appears word for
    word in the training text is completed right by this table: a model must beat it to show more
    than memorized word order (04's fact recall)."""

    def __init__(self, tokens, order: int):
        tokens = np.asarray(tokens)
        self.order = order
        keys = ngram_keys(tokens, order)
        self.fallback = int(np.bincount(tokens).argmax())  # the most common token
        self.best = {}  # context length k -> (sorted context keys, most frequent next token)
        for k in range(1, order):
            i = np.arange(k, tokens.size)  # the next token is at i, its k-token context ends at i-1
            grams, first, counts = np.unique(keys[k + 1][i], return_index=True, return_counts=True)
            ctx, nxt = keys[k][i[first] - 1], tokens[i[first]]
            # per context, the (context, next) pair with the highest count (ties: the smaller token id)
            by = np.lexsort((nxt, -counts, ctx))
            ctx, nxt = ctx[by], nxt[by]
            head = np.r_[True, ctx[1:] != ctx[:-1]]
            self.best[k] = (ctx[head], nxt[head].astype(np.int64))

    def next_token(self, history) -> int:
        for k in range(min(self.order - 1, len(history)), 0, -1):
            ctx_keys, nxt = self.best[k]
            q = np.asarray([key_of(history[-k:])], dtype=np.uint64)
            pos = min(int(np.searchsorted(ctx_keys, q)[0]), ctx_keys.size - 1)
            if ctx_keys.size and ctx_keys[pos] == q[0]:
                return int(nxt[pos])
        return self.fallback

    def complete(self, prompt_ids, n_new: int) -> list:
        """Greedy continuation: n_new token ids after prompt_ids."""
        seq = [int(x) for x in prompt_ids]
        for _ in range(n_new):
            seq.append(self.next_token(seq))
        return seq[len(prompt_ids) :]


def key_of(ids) -> int:
    """The key of one n-gram, as ngram_keys computes it: fold key = key · B + id + 1 (mod 2^64)."""
    key = 0
    for x in ids:
        key = (key * int(MULT) + int(x) + 1) % (1 << 64)
    return key


def ngram_losses(train, test, vocab_size: int, orders=(2, 3, 4, 6, 8, 12, 16)) -> dict:
    """{order: per-token nll array of test} for each order, each model fitted on train."""
    return {k: KneserNey.fit(train, k, vocab_size).token_nll(test) for k in orders}


@dataclass
class NgramConfig:
    data: str = option("", "run folder runs/<name> holding tokens/ from 02_tokenizer (required)")
    orders: list[int] = option([2, 3, 4, 6, 8, 12, 16], "n-gram orders to fit (1..16)", sep=",")


def main(argv=None):
    c, _ = parse_config(NgramConfig, argv, doc=__doc__)
    if not c.data:
        raise UserError("--data is required: the run folder holding tokens/, e.g. --data runs/tiny")
    if not c.orders or not all(1 <= k <= 16 for k in c.orders):
        raise UserError(f"--orders {c.orders} must be integers in 1..16; e.g. --orders 2,3,4")
    train, val, meta = load_shards(Path(c.data), block_size=1)
    test = load_test_shard(Path(c.data), meta)
    split, data = ("test", test) if test is not None else ("val", val)
    print(f"| order | {split} loss (nats/token) |\n|---|---|")
    for k, nll in ngram_losses(train, data, meta["vocab_size"], c.orders).items():
        print(f"| {k} | {nll.mean():.4f} |")


if __name__ == "__main__":
    run_cli(main)
