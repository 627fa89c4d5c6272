"""04_pretrain's measurements: the Kneser-Ney n-gram baseline and lookup table (ngram_lm.py), the held-out
bar of pretraining (heldout_loss.py), fact recall (fact_recall.py), the scaling bar (scaling.py).

The judges are tested on cases worked by hand, and a crippled run (10 steps) must FAIL its bar.
"""

import json
import math

import numpy as np
import pytest

import fact_recall as fr
import pretrain
import scaling
from common.runs import write_manifest
from ngram_lm import KneserNey, NgramLookup
from pretrain import TrainConfig

VOCAB = 32


# ----------------------------------------------------------------------------------------------
# ngram_lm.py


def test_kneser_ney_bigram_by_hand():
    # corpus 0 1 0 1 0 2, V = 3, order 2.
    # bigram counts: (0,1) 2, (1,0) 2, (0,2) 1 -> n1 = 1, n2 = 2, D2 = 1 / (1 + 2·2) = 0.2
    # continuation counts N1+(• w): 0 after {1}, 1 after {0}, 2 after {0}: all 1 -> n1 = 3, n2 = 0,
    #   D1 = 3/3 = 1, clipped to 0.95; P1(w) = (1 - 0.95)/3 + 0.95 · 3/3 · 1/3 = 1/3 for every w
    # context 0: d = c(0,1) + c(0,2) = 3, t = 2; back-off weight 0.2 · 2/3 = 2/15
    #   P(1|0) = (2 - 0.2)/3 + 2/15 · 1/3 = 0.6 + 2/45 = 29/45
    #   P(2|0) = (1 - 0.2)/3 + 2/45 = 14/45;  P(0|0) = 0 + 2/45
    # context 1: d = 2, t = 1: P(0|1) = 1.8/2 + 0.2 · 1/2 · 1/3 = 0.9 + 1/30; P(1|1) = P(2|1) = 1/30
    # context 2 never precedes anything: P(w|2) = P1(w) = 1/3
    lm = KneserNey.fit(np.array([0, 1, 0, 1, 0, 2]), order=2, vocab_size=3)
    assert lm.tables[2].discount == pytest.approx(0.2) and lm.tables[1].discount == pytest.approx(0.95)
    assert [lm.prob([0], w) for w in range(3)] == pytest.approx([2 / 45, 29 / 45, 14 / 45])
    assert [lm.prob([1], w) for w in range(3)] == pytest.approx([0.9 + 1 / 30, 1 / 30, 1 / 30])
    assert [lm.prob([2], w) for w in range(3)] == pytest.approx([1 / 3] * 3)
    # token_nll of 0 1 0 2: -ln P(1|0), -ln P(0|1), -ln P(2|0)
    want = -np.log([29 / 45, 0.9 + 1 / 30, 14 / 45])
    assert lm.token_nll(np.array([0, 1, 0, 2])) == pytest.approx(want)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_kneser_ney_is_a_distribution_and_the_vectorized_path_equals_the_scalar_one(order):
    rng = np.random.default_rng(order)
    tokens = rng.integers(0, 7, size=500)
    tokens[::4] = 3  # some structure, some repeated contexts
    lm = KneserNey.fit(tokens, order, vocab_size=9)  # ids 7 and 8 never occur
    for history in ([], [3], [3, 1], [1, 2, 3, 0], [8, 8, 8, 8], [7]):
        assert sum(lm.prob(history, w) for w in range(9)) == pytest.approx(1.0, abs=1e-12)
        assert min(lm.prob(history, w) for w in range(9)) > 0  # never an infinite loss
    seq = rng.integers(0, 9, size=60)
    scalar = [-math.log(lm.prob(seq[:i], seq[i])) for i in range(1, 60)]
    assert lm.token_nll(seq) == pytest.approx(scalar, rel=1e-12)


def test_continuation_counts_make_a_frequent_but_fixed_successor_unlikely_after_new_contexts():
    # token 5 is frequent but only ever follows 4 ("San Francisco"); token 6 is rarer but follows many
    seq = []
    for i in range(300):
        seq += [4, 5] if i % 3 else [i % 4, 6]  # 6 follows 0, 1, 2 and 3
    lm = KneserNey.fit(np.array(seq), order=2, vocab_size=10)
    assert seq.count(5) > seq.count(6)
    assert lm.prob([9], 5) < lm.prob([9], 6)  # 9 never seen: the continuation unigram decides
    assert lm.prob([4], 5) > 0.9  # after "San" it is "Francisco"


def test_higher_orders_learn_a_longer_pattern():
    pattern = [0, 1, 0, 2, 0, 3]  # what follows 0 depends on the token before it
    tokens = np.array(pattern * 200)
    loss = {k: KneserNey.fit(tokens, k, 4).token_nll(tokens[:300]).mean() for k in (1, 2, 3)}
    assert loss[1] > loss[2] > loss[3] and loss[3] < 0.1


def test_lookup_table_emits_the_most_frequent_continuation_and_backs_off():
    t = np.array([5, 1, 2, 3, 5, 1, 2, 4, 5, 1, 2, 3, 0, 7, 2, 9])
    lk = NgramLookup(t, 3)
    assert lk.complete([5, 1], 3) == [2, 3, 0]  # (1,2) -> 3 twice, 4 once; (2,3) -> 5 or 0: smaller id
    assert lk.complete([7, 2], 2) == [9, 2]  # (2,9) and (9) unseen: the most frequent token, 2
    assert lk.complete([8], 2) == [2, 3]


# ----------------------------------------------------------------------------------------------
# fact_recall.py


def test_completion_matches_the_answer_as_a_whole_word_after_an_article():
    assert fr.completion_matches(" a tailor who lives", "tailor")
    assert fr.completion_matches(" an engineer.", "engineer")
    assert fr.completion_matches(" 49 years", "49")
    assert not fr.completion_matches(" tailors", "tailor")
    assert not fr.completion_matches(" 491", "49")
    assert not fr.completion_matches(" a baker", "tailor")
    assert fr.completion_matches("护士，住在", "护士") and not fr.completion_matches("医生", "护士")


def probe(subject, attr, answer, phrasing="novel"):
    return {"prompt": f"{subject} ...", "answer": answer, "attribute": attr, "phrasing": phrasing}


def test_fact_recall_scores_a_known_right_answer_right_and_a_wrong_one_wrong():
    probes = [probe("A", "job", "tailor"), probe("B", "job", "baker"), probe("C", "job", "tailor")]
    completions = [" a tailor.", " a tailor.", " the tailor"]  # A right, B wrong (tailor, not baker), C right
    right = [fr.completion_matches(c, p["answer"]) for p, c in zip(probes, completions)]
    assert right == [True, False, True]
    rows = fr.score_rows(probes, right, lookup_right=[False, False, False])
    job = next(r for r in rows if r["attribute"] == "job")
    assert job["n"] == 3 and job["accuracy"] == pytest.approx(2 / 3) and job["lookup"] == 0.0
    lo, hi = job["interval"]
    assert 0 < lo < 2 / 3 < hi < 1  # Wilson: n = 3 is wide
    # leave-one-out majority: for A the others are {baker, tailor}: a tie -> "baker" (alphabetical): wrong;
    # for B the others are {tailor, tailor}: wrong; for C as for A: wrong
    assert fr.majority_right(probes) == [False, False, False]


def test_recall_bar_fails_at_its_baseline_and_passes_clearly_above_it():
    def rows(model_acc, lookup_acc, n=200):
        probes = [probe(f"p{i}", "job", f"job{i % 7}") for i in range(n)]
        model = [i < model_acc * n for i in range(n)]
        lookup = [i < lookup_acc * n for i in range(n)]
        return fr.score_rows(probes, model, lookup)

    at_baseline = fr.recall_bar(rows(0.5, 0.5))
    assert not at_baseline["passed"] and at_baseline["baseline"] == 0.5
    assert "lookup" in at_baseline["baseline_name"]
    barely = fr.recall_bar(rows(0.55, 0.5))  # 110 of 200 vs 0.5: inside the interval's noise
    assert not barely["passed"] and barely["interval"][0] < 0.5
    assert fr.recall_bar(rows(0.8, 0.5))["passed"]


# ----------------------------------------------------------------------------------------------
# heldout_loss.py and the pretraining bar: a crippled run must fail


def write_shards_with_test(root, vocab=VOCAB):
    """tokens/{train,val,test}.bin of one noisy chain (each token has 2 likely successors)."""
    succ = np.random.default_rng(0).integers(0, vocab, size=(vocab, 2))

    def chain(n, seed):
        rng = np.random.default_rng(seed)
        out, t = np.empty(n, dtype="uint16"), 0
        for i in range(n):
            t = rng.integers(0, vocab) if rng.random() < 0.1 else succ[t, rng.integers(0, 2)]
            out[i] = t
        return out

    data, tok = root / "data", root / "tokens"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"text": "a made-up corpus"}\n')
    write_manifest(data, stage="01_data", command=f"python 01_data/prepare.py --out {root}", config={})
    tok.mkdir()
    sizes = {"train": 20_000, "val": 2_000, "test": 2_000}
    for seed, (split, n) in enumerate(sizes.items()):
        chain(n, seed + 1).tofile(tok / f"{split}.bin")
    meta = {
        "vocab_size": vocab,
        "dtype": "uint16",
        "eot_id": 0,
        "n_tokens": sizes,
        "tokenizer_dir": "tokenizer",
    }
    (tok / "meta.json").write_text(json.dumps(meta))
    write_manifest(
        tok, stage="02_tokenizer", command=f"python 02_tokenizer/train_tokenizer.py --data {root}", config={}
    )
    return root


def test_a_crippled_pretraining_run_fails_its_bar(tmp_path):
    run = write_shards_with_test(tmp_path / "run")
    cfg = TrainConfig(
        data=str(run),
        out=str(tmp_path / "pretrain"),
        n_layer=1,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=8,
        max_steps=10,
        warmup_steps=2,
        eval_interval=5,
        eval_batches=2,
        attn_backend="torch",
        quiet=True,
    )
    pretrain.train(cfg)
    outcome = json.loads((tmp_path / "pretrain" / "outcome.json").read_text())
    bar, held = outcome["bar"], outcome["heldout"]
    assert bar["passed"] is False and bar["direction"] == "lower" and bar["metric"].startswith("test loss")
    assert held["split"] == "test" and held["test_windows"] == bar["n"] == (2_000 - 1) // 32
    assert bar["interval"][0] <= bar["value"] <= bar["interval"][1]
    assert (
        bar["threshold"]
        == bar["baseline"]
        == pytest.approx(held["ngram"][str(held["ngram_order"])]["test_loss"])
    )
    # the n-gram learns the chain (2 successors + noise: about ln 2 + a little) far below the 10-step model
    assert bar["baseline"] < 1.5 < bar["value"] and held["unigram_loss"] > bar["baseline"] + 1
    assert outcome["headline"].startswith("test loss") and outcome["bars"][0] == bar
    assert outcome["fact_recall"] is None  # no world, no probes


# ----------------------------------------------------------------------------------------------
# scaling.py: a predictive bar that fails instead of crashing


def grid():
    N, D = np.meshgrid([1e4, 3e4, 1e5, 3e5, 1e6], [1e5, 3e5, 1e6])
    return N.ravel(), D.ravel()


def test_scaling_bar_passes_for_a_true_law_and_fails_without_one():
    N, D = grid()
    L = 1.5 + 40 * N**-0.35 + 300 * D**-0.3 + np.random.default_rng(0).normal(0, 0.002, N.size)
    bar = scaling.scaling_bar(scaling.leave_one_out(N, D, L))
    assert bar["passed"] and bar["value"] < bar["baseline"] and bar["n"] == 15
    noise = 3.0 + np.random.default_rng(1).normal(0, 0.05, N.size)  # nothing to predict
    bar = scaling.scaling_bar(scaling.leave_one_out(N, D, noise))
    assert not bar["passed"]
    rising = 2.0 + 1e-3 * np.log(N) + 1e-3 * np.log(D)  # losses that grow: no law with A, B >= 0
    assert not scaling.scaling_bar(scaling.leave_one_out(N, D, rising))["passed"]
