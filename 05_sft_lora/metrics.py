"""Evaluation metrics for generated text, each equal to the definition people quote (shared by 05, 06, 07).

    exact_match, token_f1    SQuAD v1.1's official evaluation script (its normalization, its F1)
    char_exact_match,        a character-level variant for Chinese (no spaces to split on): every
      char_f1                character not punctuation or space is a token; named so, not SQuAD's
    corpus_bleu,             sacrebleu's defaults: 13a tokenizer (or `zh`), case-sensitive, 4-grams,
      sentence_bleu          exp smoothing; sentence BLEU with effective order, as sacrebleu.sentence_bleu
    rouge_l                  rouge-score's ROUGE-L F-measure with its default tokenizer, plus a Chinese mode
    perplexity               exp(mean token NLL)
    pass_at_k                unbiased estimate of P(at least one of k samples is correct) from n samples
    win_rate                 (wins + ties/2) / n with a 95 % Wilson interval
    answer_in                the short answer appears in the prediction (fact accuracy, any phrasing)

Written here from the published definitions; tests/test_05_sft_lora.py pins worked examples by hand and,
when sacrebleu and rouge-score are installed (requirements-bench.txt), compares with them.

    from metrics import exact_match, token_f1, corpus_bleu, sentence_bleu, rouge_l
    exact_match("The U.S.", "us")                   # 1.0: punctuation is deleted, not split on
    sentence_bleu("cat", "cat")["bleu"]             # 100.0 (effective order 1)
    corpus_bleu(["cat"], ["cat"])["bleu"]           # 0.0: no 2-gram to match at corpus level

Interview questions it answers:
- Why does "don't" match "dont" but "don't" not match "do not" in SQuAD EM? (normalization deletes
  punctuation characters, it does not split on them; there is no contraction expansion)
- Why a brevity penalty in BLEU? (precision alone rewards a one-word output that is surely in the
  reference; BP = exp(1 - r/c) when the candidate total c is shorter than the reference total r)
- Why is BLEU computed over the corpus, not averaged per sentence? (a sentence with no matching
  4-gram has precision 0, so its geometric mean is 0; pooling the counts avoids that; sentence BLEU
  needs smoothing and effective order, which is why sacrebleu's two defaults differ)
- Why must a BLEU number name its tokenizer and case? (13a vs zh vs intl, cased vs lowercased change
  the score by points on the same output; sacrebleu prints a signature for that reason)
- ROUGE-L vs ROUGE-N? (LCS rewards in-order matches that need not be contiguous, no n chosen)
- Why does rouge-score give 0 on Chinese? (its default tokenizer keeps only [a-z0-9] runs: every
  CJK character is deleted; split characters first, as rouge_l(..., lang="zh") does)
- Why not estimate pass@k as (fraction correct of k samples)? (averaging over n >= k samples with
  the combinatorial formula is unbiased and has lower variance: 1 - C(n-c, k) / C(n, k))
- How sure is a 55 % win rate over 200 comparisons? (Wilson 95 % interval about [48 %, 62 %])
"""

import math
import re
import string
import unicodedata
from collections import Counter

# ----------------------------------------------------------------------------------------------
# SQuAD v1.1: exact match and token F1

PUNCT = set(string.punctuation)  # the 32 ASCII marks !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalize_answer, in its order: lower case; delete every ASCII punctuation character
    (so "don't" -> "dont", "12,345" -> "12345", "U.S." -> "us"); replace the whole words a/an/the by a
    space; collapse whitespace. Only ASCII punctuation goes: "，" or "“" stay, as in the script."""
    text = "".join(c for c in text.lower() if c not in PUNCT)
    return " ".join(ARTICLES_RE.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalized strings are equal, else 0.0 (two empty answers are equal: 1.0)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1's F1 over whitespace tokens of the normalized answers:
    overlap = Σ_w min(count_pred(w), count_ref(w)) (a word repeated in the prediction counts only as
    often as in the reference), P = overlap / |pred|, R = overlap / |ref|, F1 = 2PR / (P + R).
    No overlap gives 0, and so do two empty answers: the v1.1 script returns 0 whenever the overlap is
    0 (the v2.0 script, which has unanswerable questions, returns 1 for two empty answers instead)."""
    # >>> exercise: tokens = normalize_answer(x).split(); overlap = Σ_w min(count_pred, count_ref); 0 if overlap is 0; P = overlap/|pred|, R = overlap/|ref|, F1 = 2PR/(P+R)
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    p, r = overlap / len(pred), overlap / len(ref)
    return 2 * p * r / (p + r)
    # <<< exercise


def char_tokens(text: str) -> list:
    """Characters of a Chinese answer for the character-level variant: lower case, every character that
    is neither whitespace nor punctuation (ASCII marks and any Unicode P* category: "，。“”《》") is one
    token. Chinese has no spaces, so SQuAD's whitespace split would make a whole answer one token."""
    return [
        c
        for c in text.lower()
        if not c.isspace() and c not in PUNCT and not unicodedata.category(c).startswith("P")
    ]


def char_exact_match(prediction: str, reference: str) -> float:
    """Character-level exact match for Chinese: the char_tokens lists are equal."""
    return float(char_tokens(prediction) == char_tokens(reference))


def char_f1(prediction: str, reference: str) -> float:
    """Character-level F1 for Chinese: SQuAD's F1 formula over char_tokens (0 when no overlap)."""
    pred, ref = char_tokens(prediction), char_tokens(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    p, r = overlap / len(pred), overlap / len(ref)
    return 2 * p * r / (p + r)


# ----------------------------------------------------------------------------------------------
# BLEU as sacrebleu computes it by default

# 13a (mteval-v13a, WMT's tokenizer). Every ASCII mark but ' , - . is split off; a period or comma is
# split off unless it sits between digits ("12,345.6" stays one token); a hyphen is split off only
# after a digit ("3-4" -> "3 - 4", "e-mail" stays). No lower-casing: BLEU is case-sensitive by default.
SPLIT_ALWAYS = re.compile(r"""([!"#$%&()*+/:;<=>?@\[\\\]^_`{|}~])""")
PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
HYPHEN_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def _split_marks(line: str) -> list:
    """The regex steps 13a and zh share, applied in order, each over the whole line."""
    line = SPLIT_ALWAYS.sub(r" \1 ", line)
    line = PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", line)
    line = PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", line)
    line = HYPHEN_AFTER_DIGIT.sub(r"\1 \2 ", line)
    return line.split()


def tokenize_13a(line: str) -> list:
    """sacrebleu's default tokenizer: drop '<skipped>', join '-\\n' line breaks, unescape four HTML
    entities, then split marks as above (the line is padded with spaces so a mark at an end is split)."""
    line = line.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        line = line.replace(entity, char)
    return _split_marks(f" {line} ")


# Code points sacrebleu's zh tokenizer treats as Chinese: CJK ideographs and extensions, CJK and
# full-width punctuation, radicals, strokes, bopomofo, enclosed/compatibility CJK. Two of its table's
# entries are written with 5 hex digits in a 4-digit escape ('\u20000' is U+2000 followed by "0"), so
# compared as strings they cover U+2001..U+2A6D (general punctuation such as “ ” — …, arrows, math
# symbols) and U+2F81..U+2FA1; we reproduce that behaviour, since equality with sacrebleu is the goal.
ZH_RANGES = [
    (0x3400, 0x4DB5), (0x4E00, 0x9FA5), (0x9FA6, 0x9FBB), (0xF900, 0xFA2D), (0xFA30, 0xFA6A),
    (0xFA70, 0xFAD9), (0x2001, 0x2A6D), (0x2F81, 0x2FA1), (0xFF00, 0xFFEF), (0x2E80, 0x2EFF),
    (0x3000, 0x303F), (0x31C0, 0x31EF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF), (0x3100, 0x312F),
    (0x31A0, 0x31BF), (0xFE10, 0xFE1F), (0xFE30, 0xFE4F), (0x2600, 0x26FF), (0x2700, 0x27BF),
    (0x3200, 0x32FF), (0x3300, 0x33FF),
]  # fmt: skip


def is_zh_char(c: str) -> bool:
    return any(lo <= ord(c) <= hi for lo, hi in ZH_RANGES)


def tokenize_zh(line: str) -> list:
    """sacrebleu's `zh` tokenizer: each Chinese character (ZH_RANGES) is its own token, the rest is
    split like 13a (without 13a's entity and <skipped> steps)."""
    return _split_marks("".join(f" {c} " if is_zh_char(c) else c for c in line.strip()))


BLEU_TOKENIZERS = {"13a": tokenize_13a, "zh": tokenize_zh}


def ngrams(tokens, n) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_stats(prediction: str, reference: str, tokenize="13a", max_n=4) -> list:
    """One sentence's sufficient statistics: [c, r, matched_1..N, total_1..N], where matched_n is the
    clipped count Σ_g min(count_pred(g), count_ref(g)) over n-grams g and total_n = Σ_g count_pred(g)."""
    tok = BLEU_TOKENIZERS[tokenize]
    p, q = tok(prediction), tok(reference)
    matched = [sum((ngrams(p, n) & ngrams(q, n)).values()) for n in range(1, max_n + 1)]
    total = [max(len(p) - n + 1, 0) for n in range(1, max_n + 1)]
    return [len(p), len(q), *matched, *total]


def bleu_from_stats(stats, effective_order=False, max_n=4) -> dict:
    """BLEU on sacrebleu's 0-100 scale with its 'exp' smoothing (Chen & Cherry 2014, method 3, as mteval):

    p_n = matched_n / total_n; the k-th order with matched_n = 0 gets p_n = 1 / (2^k · total_n)
    BP  = 1 if c >= r else exp(1 - r/c)                  c, r: total prediction and reference lengths
    BLEU = 100 · BP · exp((1/N') Σ_{n<=N'} log p_n)      N' = 4, or with effective order the highest n
                                                          with total_n > 0 (a 2-word sentence has N' = 2)
    No matched unigram gives 0. At corpus level (effective order off) a prediction set with no 4-gram
    at all has p_4 = 0 and BLEU 0: sacrebleu scores log 0 as -9999999999."""
    c, r = stats[0], stats[1]
    matched, total = list(stats[2 : 2 + max_n]), list(stats[2 + max_n : 2 + 2 * max_n])
    bp = 1.0 if c >= r else (math.exp(1 - r / c) if c > 0 else 0.0)
    precisions = [0.0] * max_n
    out = {"bleu": 0.0, "precisions": precisions, "bp": bp, "pred_len": c, "ref_len": r}
    if not any(matched):
        return out
    halvings, order = 1, max_n
    for n in range(max_n):
        if total[n] == 0:
            break
        if effective_order:
            order = n + 1
        if matched[n] == 0:
            halvings *= 2
            precisions[n] = 100.0 / (halvings * total[n])
        else:
            precisions[n] = 100.0 * matched[n] / total[n]
    log_sum = sum(math.log(p) if p > 0 else -9999999999 for p in precisions[:order])
    out["bleu"] = bp * math.exp(log_sum / order)
    return out


def corpus_bleu(predictions, references, tokenize="13a") -> dict:
    """Corpus BLEU-4 equal to sacrebleu.corpus_bleu(predictions, [references]) with its defaults (one
    reference per prediction). Counts are pooled over the corpus before the ratios are taken.
    Returns {"bleu" (0-100), "precisions" (percent), "bp", "pred_len", "ref_len"}."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    sums = [0] * 10
    for pred, ref in zip(predictions, references):
        sums = [a + b for a, b in zip(sums, bleu_stats(pred, ref, tokenize))]
    return bleu_from_stats(sums)


def sentence_bleu(prediction: str, reference: str, tokenize="13a") -> dict:
    """Sentence BLEU equal to sacrebleu.sentence_bleu(prediction, [reference]): exp smoothing and
    effective order, so a short exact answer ("Calinwi" vs "Calinwi") scores 100, not 0."""
    return bleu_from_stats(bleu_stats(prediction, reference, tokenize), effective_order=True)


# ----------------------------------------------------------------------------------------------
# ROUGE-L as rouge-score computes it

ROUGE_TOKEN_RE = re.compile(r"[a-z0-9]+")
ROUGE_ZH_TOKEN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[a-z0-9]+")


def rouge_tokens(text: str, lang="en") -> list:
    """rouge-score's default tokenizer: lower case, every run of characters outside [a-z0-9] is a
    separator (punctuation and every non-ASCII letter disappear, "don't" -> "don", "t"), no stemming.
    lang="zh": the same, except that each CJK ideograph is kept as its own token (the default would
    delete Chinese entirely and score every pair 0); equal to rouge-score run on text whose
    characters were first separated by spaces with a tokenizer that keeps them."""
    return (ROUGE_ZH_TOKEN_RE if lang == "zh" else ROUGE_TOKEN_RE).findall(text.lower())


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


def rouge_l(prediction: str, reference: str, lang="en") -> float:
    """ROUGE-L F-measure (Lin 2004) as rouge-score's RougeScorer(["rougeL"]).score(reference, prediction):
    P = LCS/|pred|, R = LCS/|ref|, F = 2PR / (P + R); 0 when either side has no token."""
    pred, ref = rouge_tokens(prediction, lang), rouge_tokens(reference, lang)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


# ----------------------------------------------------------------------------------------------
# the rest


def words(text: str) -> list:
    """Lower-cased word runs, single punctuation marks and single CJK characters: a plain tokenizer for
    rules that count or look up words (06's rule judge); the scored metrics above use their own."""
    return WORDS_RE.findall(text.lower())


CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORDS_RE = re.compile(rf"[{CJK}]|[^\W{CJK}]+|[^\w\s]", re.UNICODE)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """PPL = exp(Σ NLL / N): the effective number of equally likely choices per token."""
    return math.exp(nll_sum / max(n_tokens, 1))


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
    pred, ans = normalize_answer(prediction).split(), normalize_answer(answer).split()
    return float(bool(ans) and any(pred[i : i + len(ans)] == ans for i in range(len(pred) - len(ans) + 1)))
