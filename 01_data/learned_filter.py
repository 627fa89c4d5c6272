"""A learned text classifier, written by hand: hashed n-gram features + logistic regression in numpy.

    from learned_filter import train_classifier, predict_proba
    model = train_classifier(texts, labels)          # labels: 1 = the class to filter (bad / toxic)
    predict_proba(model, ["some text"])              # P(label 1) per text

The model every modern data pipeline uses in some form (GPT-3's quality filter, CCNet's, the
fastText classifiers of DCLM and FineWeb-Edu): a linear model over bags of n-grams.

Features. Each text becomes counts of hashed word unigrams and bigrams and character 2- to 4-grams
(CJK text has no spaces, so character n-grams carry it), in B = 2^18 buckets; a row is scaled to
unit length so long and short texts weigh alike. The hashing trick replaces a vocabulary: two
n-grams that collide share a weight, which costs little at 2^18 buckets.

Model. p(y=1 | x) = sigmoid(w·x + b), trained by full-batch gradient descent on the mean log loss
+ (lambda/2)·|w|²:  grad_w = X^T (p - y) / n + lambda·w,  grad_b = mean(p - y). X is kept sparse
(CSR: data, indices, row pointers), so X·w is a gather and X^T r a bincount.

Two uses, both evaluated on a source the model was *not* trained on (a classifier graded on its
own training distribution grades itself):
- quality: good = real books and stories, bad = web boilerplate and spam (quality_data.py);
- toxicity: toxic and harmless sentences in one set of phrasings, tested on another (config
  TOXICITY: classes balanced in the loss, since toxic examples are few).
bench_clean.py prints both beside the rule-based filters.

Interview questions it answers:
- How does a learned quality filter work, and what does it learn? (a linear model over n-grams
  separating a reference corpus from random web text; it learns the reference's style, which is
  why its threshold decides how much "unusual but good" text you lose)
- Why hash features? (no vocabulary to build or store; memory fixed at B weights)
- Why test on another source? (on its own distribution it can learn the source's quirks, not quality)
"""

import re
import zlib
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

WORD = re.compile(r"[\u3400-\u9fff]|[^\W_]+")


@dataclass
class ClassifierConfig:
    buckets: int = 1 << 18
    char_n: tuple = (2, 3, 4)
    steps: int = 300
    lr: float = 2.0
    l2: float = 1e-5
    max_chars: int = 3000
    balance: bool = False  # weigh each class to half the loss, whatever its share of the examples


# Toxicity: few toxic examples beside many harmless ones (pool B: 26 and 400), so the classes are
# balanced in the loss and the model trained to convergence. Measured (bench_clean.py): with the
# quality defaults (unweighted, 300 steps) the model trained on B flagged nothing in A (every p sat
# near the prior, 0.06); balanced and 1000 steps, recall 0.90 on A and 0.65 on B, lexicon 0.45 / 0.46.
TOXICITY = ClassifierConfig(balance=True, steps=1000)


def feature_ids(text: str, cfg: ClassifierConfig) -> np.ndarray:
    """Bucket ids of the word 1-2-grams and character n-grams of the lowercased text."""
    text = text[: cfg.max_chars].lower()
    words = WORD.findall(text)
    grams = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in pairwise(words)]
    squeezed = " ".join(text.split())
    for n in cfg.char_n:
        grams += [f"c:{squeezed[i : i + n]}" for i in range(len(squeezed) - n + 1)]
    return np.fromiter(
        (zlib.crc32(g.encode("utf-8")) % cfg.buckets for g in grams), dtype=np.int64, count=len(grams)
    )


def featurize(texts, cfg: ClassifierConfig):
    """CSR rows (data, indices, indptr) of unit-length count vectors, one row per text."""
    data, indices, indptr = [], [], [0]
    for t in texts:
        ids, counts = np.unique(feature_ids(t, cfg), return_counts=True)
        values = counts / max(1e-9, np.sqrt((counts**2).sum()))
        data.append(values)
        indices.append(ids)
        indptr.append(indptr[-1] + len(ids))
    return (
        np.concatenate(data or [np.zeros(0)]),
        np.concatenate(indices or [np.zeros(0, np.int64)]),
        np.array(indptr),
    )


def scores(w, b, X) -> np.ndarray:
    """w·x + b per row of the CSR matrix X."""
    data, indices, indptr = X
    per_entry = w[indices] * data
    sums = np.add.reduceat(per_entry, indptr[:-1]) if len(per_entry) else np.zeros(len(indptr) - 1)
    sums[np.diff(indptr) == 0] = 0.0  # reduceat gives the next entry for an empty row
    return sums + b


def train_classifier(texts, labels, cfg: ClassifierConfig = None):
    """(w, b, cfg) of a logistic regression trained by full-batch gradient descent."""
    cfg = cfg or ClassifierConfig()
    X = featurize(texts, cfg)
    y = np.asarray(labels, dtype=float)
    data, indices, indptr = X
    rows = np.repeat(np.arange(len(y)), np.diff(indptr))
    w, b = np.zeros(cfg.buckets), 0.0
    # balance: example weight n / (2·n_class), so a class of 26 examples beside 400 still moves the
    # boundary (unweighted, the prior pulls every p below 0.5 and nothing is flagged)
    weight = np.where(y == 1, len(y) / (2 * max(1, y.sum())), len(y) / (2 * max(1, len(y) - y.sum())))
    weight = weight if cfg.balance else np.ones(len(y))
    for _ in range(cfg.steps):
        p = 1 / (1 + np.exp(-scores(w, b, X)))
        r = weight * (p - y) / len(y)
        grad_w = np.bincount(indices, weights=data * r[rows], minlength=cfg.buckets) + cfg.l2 * w
        w -= cfg.lr * grad_w
        b -= cfg.lr * r.sum()
    return w, b, cfg


def predict_proba(model, texts) -> np.ndarray:
    w, b, cfg = model
    return 1 / (1 + np.exp(-scores(w, b, featurize(texts, cfg))))


def precision_recall(probs, labels, threshold=0.5) -> dict:
    """Precision and recall of "label 1" at a threshold, with the counts behind them."""
    pred = np.asarray(probs) >= threshold
    y = np.asarray(labels).astype(bool)
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "precision": tp / max(1, tp + fp),
        "recall": tp / max(1, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "negatives": int((~y).sum()),
    }
