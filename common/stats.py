"""95 % intervals and tests for the bars every stage reports: how sure is a number measured on n items?

Used by every stage's outcome block (common/outcome.py's make_bar takes the interval these return).
A bar passes only when its interval clears the threshold, so a 2-of-200 result cannot pass on luck.

    from common.stats import wilson_interval, bootstrap_interval
    wilson_interval(8, 200)                    # pass@1 of 8/200 -> (0.020, 0.077)
    bootstrap_interval(per_window_losses)      # mean loss over windows -> (lo, hi)

Interview questions this file answers:
- Why Wilson and not the normal interval p +- 1.96 sqrt(p(1-p)/n)? The normal one collapses to
  a zero-width interval at p = 0 or 1 and leaves [0, 1] for small n; Wilson inverts the score test,
  so it stays inside [0, 1] and keeps close to 95 % coverage down to n of about 10.
- What does a bootstrap interval assume? That the n items are independent draws from the population
  you care about: resample them with replacement, recompute the statistic, read off the 2.5 % and
  97.5 % quantiles (the percentile method). Resample the unit that is independent (a document, a
  question, a seed), not the token, or the interval is too narrow.
- Why a paired bootstrap to compare two models on the same items? The items' difficulty is shared, so
  the difference per item has far less variance than the two scores separately; resampling items
  jointly keeps that pairing.
- How are ties counted in a win rate? As half a win (the usual convention of pairwise evaluation), or
  dropped with a sign test on the decisive pairs; with 97 % ties a "win rate 0.5" says nothing, so n
  of decisive pairs is reported beside it.
- Why a t interval over 3 seeds and not 1.96 standard errors? With 2 degrees of freedom the 97.5 %
  quantile of Student's t is 4.30, not 1.96: three seeds pin a mean down far less than it looks.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal

# 97.5 % quantiles of Student's t for 1..30 degrees of freedom (a printed table, so no scipy).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion successes/n (successes may be fractional, e.g. ties as 1/2).

    centre = (p + z²/2n) / (1 + z²/n),  half = z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, n={n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of stat(values), resampling the items with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_interval of no values")
    if x.size == 1:
        v = float(stat(x))
        return (v, v)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (n_boot, n): one resample per row
    if stat is np.mean:
        stats = x[idx].mean(axis=1)  # vectorized fast path for the common case
    else:
        stats = np.array([stat(x[row]) for row in idx])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def paired_bootstrap_interval(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) where a[i] and b[i] are two systems' scores on the same item i."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal shapes, got {a.shape} and {b.shape}")
    return bootstrap_interval(a - b, np.mean, n_boot=n_boot, seed=seed, level=level)


def paired_change(after, before) -> dict:
    """{"value", "interval", "n"}: the mean of after[i] - before[i] over the same items (a model before
    and after an update, say), with its 95 % paired bootstrap interval."""
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    return {
        "value": float(diff.mean()),
        "interval": list(paired_bootstrap_interval(after, before)),
        "n": len(diff),
    }


def paired_ratio_difference_interval(
    num: Sequence[float] | np.ndarray,
    den_a: Sequence[float] | np.ndarray,
    den_b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Interval of Σnum/Σden_a - Σnum/Σden_b, resampling the items i jointly (a ratio of sums, e.g.
    bytes per token of two tokenizers over the same documents: a long document weighs more, as in the
    point estimate, and the documents' shared difficulty cancels in the difference)."""
    num, a, b = (np.asarray(v, dtype=np.float64) for v in (num, den_a, den_b))
    if not num.shape == a.shape == b.shape:
        raise ValueError(f"paired counts need equal shapes, got {num.shape}, {a.shape}, {b.shape}")
    if num.size == 0:
        raise ValueError("paired_ratio_difference_interval of no items")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(n_boot, num.size))  # (n_boot, n): one resample per row
    sums = lambda x: x[idx].sum(axis=1)
    stats = sums(num) / sums(a) - sums(num) / sums(b)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of wins vs losses, each decisive pair a coin flip (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # P(X <= k), X ~ Binomial(n, 1/2)
    return min(1.0, 2 * tail)


def win_rate_with_ties(wins: int, losses: int, ties: int) -> dict:
    """Win rate with ties as 1/2, its Wilson interval, and the sign test on the decisive pairs."""
    n = wins + losses + ties
    rate = (wins + 0.5 * ties) / n if n else 0.5
    return {
        "win_rate": rate,
        "interval": list(wilson_interval(wins + 0.5 * ties, n)) if n else [0.0, 1.0],
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "decisive": wins + losses,
        "sign_test_p": sign_test_p(wins, losses),
    }


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """95 % Student-t interval of the mean of a few values (e.g. seeds): mean +- t_{0.975,n-1} s / sqrt(n)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        v = float(x.mean()) if x.size else float("nan")
        return (v, v)
    t = _T975[x.size - 2] if x.size - 1 <= len(_T975) else Z95
    half = t * x.std(ddof=1) / math.sqrt(x.size)
    return (float(x.mean() - half), float(x.mean() + half))
