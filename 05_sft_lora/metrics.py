"""Evaluation metrics for generated text, each written out with its formula (shared by 05, 06, 07).

    perplexity      exp(mean token NLL)
    exact_match     normalized prediction == normalized reference
    token_f1        harmonic mean of token precision and recall (multiset overlap)
    corpus_bleu     BLEU-4: geometric mean of clipped n-gram precisions × brevity penalty
    rouge_l         F-measure of the longest common subsequence
    pass_at_k       unbiased estimate of P(at least one of k samples is correct) from n samples
    win_rate        (wins + ties/2) / n with a 95 % Wilson interval
    answer_in       the short answer appears in the prediction (fact accuracy, any phrasing)

Tokens: `words` lower-cases and splits into words and punctuation marks, and each CJK character is
one token (Chinese has no spaces; character-level BLEU/ROUGE is the usual convention for it).

    from metrics import exact_match, token_f1, corpus_bleu, rouge_l, pass_at_k, win_rate
    token_f1("the cat sat", "a cat sat down")     # 0.8 (articles dropped: P = 2/2, R = 2/3)

Interview questions it answers:
- Why a brevity penalty in BLEU? (precision alone rewards a one-word output that is surely in the
  reference; BP = exp(1 - r/c) when the candidate total c is shorter than the reference total r)
- Why is BLEU computed over the corpus, not averaged per sentence? (a sentence with no matching
  4-gram has precision 0, so its geometric mean is 0; pooling the counts avoids that)
- ROUGE-L vs ROUGE-N? (LCS rewards in-order matches that need not be contiguous, no n chosen)
- Why not estimate pass@k as (fraction correct of k samples)? (averaging over n >= k samples with
  the combinatorial formula is unbiased and has lower variance: 1 - C(n-c, k) / C(n, k))
- How sure is a 55 % win rate over 200 comparisons? (Wilson 95 % interval about [48 %, 62 %])
"""

import math
import re
import string
from collections import Counter

CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN_RE = re.compile(rf"[{CJK}]|[^\W{CJK}]+|[^\w\s]", re.UNICODE)
ARTICLES = {"a", "an", "the"}


def words(text: str) -> list:
    """Lower-cased tokens: word runs, single punctuation marks, single CJK characters."""
    return TOKEN_RE.findall(text.lower())


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """PPL = exp(Σ NLL / N): the effective number of equally likely choices per token."""
    return math.exp(nll_sum / max(n_tokens, 1))


def normalize_answer(text: str) -> list:
    """SQuAD's normalization, as tokens: lower case, no punctuation, no articles (a, an, the)."""
    return [w for w in words(text) if w not in ARTICLES and not all(c in string.punctuation for c in w)]


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalized token lists are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 = 2PR / (P + R), P = overlap / |pred|, R = overlap / |ref|, overlap = Σ_w min(count_pred(w),
    count_ref(w)) on normalized tokens (a word repeated in the prediction counts only as often as
    in the reference). Both empty: 1; one empty: 0."""
    # >>> exercise: overlap = Σ_w min(count_pred, count_ref) of normalized tokens; P = overlap/|pred|, R = overlap/|ref|, F1 = 2PR/(P+R)
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    p, r = overlap / len(pred), overlap / len(ref)
    return 2 * p * r / (p + r)
    # <<< exercise


def ngrams(tokens, n) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(predictions, references, max_n=4) -> dict:
    """Corpus BLEU (Papineni et al. 2002), one reference per prediction, no smoothing.

    p_n = Σ_sentences Σ_g min(count_pred(g), count_ref(g)) / Σ_sentences Σ_g count_pred(g)   (n-grams g)
    BP  = 1 if c > r else exp(1 - r/c)      c, r: total prediction and reference lengths
    BLEU = BP · exp(Σ_{n=1..N} (1/N) log p_n)   (0 if any p_n is 0)
    Returns {"bleu", "precisions", "bp", "pred_len", "ref_len"}."""
    matched, total = [0] * max_n, [0] * max_n
    c = r = 0
    for pred, ref in zip(predictions, references, strict=True):
        p, q = words(pred), words(ref)
        c, r = c + len(p), r + len(q)
        for n in range(1, max_n + 1):
            pn, rn = ngrams(p, n), ngrams(q, n)
            matched[n - 1] += sum((pn & rn).values())  # clipped counts
            total[n - 1] += sum(pn.values())
    precisions = [m / t if t else 0.0 for m, t in zip(matched, total)]
    bp = 1.0 if c > r else (math.exp(1 - r / c) if c else 0.0)
    bleu = bp * math.exp(sum(math.log(p) for p in precisions) / max_n) if min(precisions) > 0 else 0.0
    return {"bleu": bleu, "precisions": precisions, "bp": bp, "pred_len": c, "ref_len": r}


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence, by dynamic programming over one row:
    L[i][j] = L[i-1][j-1] + 1 if a_i = b_j else max(L[i-1][j], L[i][j-1])."""
    # >>> exercise: dynamic programming: L[i][j] = L[i-1][j-1] + 1 if a_i == b_j else max(L[i-1][j], L[i][j-1])
    row = [0] * (len(b) + 1)  # row[j] = L[i][j] for the current i
    for x in a:
        diag = 0  # L[i-1][j-1]
        for j, y in enumerate(b, 1):
            up = row[j]  # L[i-1][j]
            row[j] = diag + 1 if x == y else max(up, row[j - 1])
            diag = up
    return row[-1]
    # <<< exercise


def rouge_l(prediction: str, reference: str, beta=1.0) -> float:
    """ROUGE-L (Lin 2004): P = LCS/|pred|, R = LCS/|ref|, F = (1 + β²)·P·R / (R + β²·P)."""
    pred, ref = words(prediction), words(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return (1 + beta**2) * p * r / (r + beta**2 * p)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as 1 - Π_{i=n-c+1}^{n} (1 - k/i) to avoid huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def win_rate(wins: int, losses: int, ties: int = 0, z: float = 1.96) -> dict:
    """Win rate p̂ = (wins + ties/2) / n and its Wilson score interval (z = 1.96 for 95 %):
    (p̂ + z²/2n ± z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n). Unlike p̂ ± z·sqrt(p̂(1-p̂)/n) it stays
    inside [0, 1] and is not degenerate at p̂ = 0 or 1."""
    n = wins + losses + ties
    if n == 0:
        raise ValueError("win_rate needs at least one comparison")
    p = (wins + ties / 2) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"win_rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n}


def answer_in(prediction: str, answer: str) -> float:
    """1.0 if the short answer's normalized tokens appear, contiguous and in order, in the normalized
    prediction ("Calinwi" in "Noin Marora lives in Calinwi."): the fact, whatever the phrasing."""
    pred, ans = normalize_answer(prediction), normalize_answer(answer)
    return float(bool(ans) and any(pred[i : i + len(ans)] == ans for i in range(len(pred) - len(ans) + 1)))
