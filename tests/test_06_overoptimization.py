"""06 over-optimization lab, PPO's gold bar and RLAIF's judge: the formulas on hand-made numbers (no model).

best-of-n's KL formula against the exact KL of a large discrete distribution, the best-of-n estimator
against brute force over subsets, gold and proxy recorded as two curves (a proxy that climbs while the
gold falls is caught), PPO's bar reading the gold reward (and failing when only the proxy rose), and the
AI judge's agreement bar failing when it is no better than the length rule.
"""

import itertools
import math

import numpy as np
import pytest

import overoptimization
import ppo_outcome
import rlaif
from gold_reward import best_of_n, bon_kl


def test_best_of_n_kl_is_log_n_minus_n_minus_1_over_n_and_matches_the_exact_kl():
    assert bon_kl(1) == 0 and math.isclose(bon_kl(2), math.log(2) - 0.5)
    assert math.isclose(bon_kl(64), math.log(64) - 63 / 64)
    assert all(bon_kl(n) < bon_kl(n + 1) for n in range(1, 50))
    with pytest.raises(ValueError):
        bon_kl(0)
    # exact: N equally likely distinct answers ranked by the proxy; best-of-n picks rank i (1-based) with
    # probability (i^n - (i-1)^n) / N^n, so KL(π_bon ‖ π) = Σ p_i log(p_i N) -> log n - (n-1)/n as N grows
    N = 100_000
    i = np.arange(1, N + 1, dtype=float)
    for n in (2, 4, 16):
        p = (i / N) ** n - ((i - 1) / N) ** n
        exact = float(np.sum(p * np.log(np.maximum(p * N, 1e-300))))
        assert abs(exact - bon_kl(n)) < 1e-3, (n, exact, bon_kl(n))


def test_best_of_n_estimator_equals_the_average_over_every_subset():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 6)), rng.integers(0, 2, size=(3, 6)).astype(float)
    for n in range(1, 7):
        brute = np.mean(
            [
                np.mean(
                    [
                        gold[p, list(s)][np.argmax(proxy[p, list(s)])]
                        for s in itertools.combinations(range(6), n)
                    ]
                )
                for p in range(3)
            ]
        )
        assert math.isclose(best_of_n(proxy, gold, n), brute, abs_tol=1e-12), n
    assert math.isclose(best_of_n(proxy, gold, 1), gold.mean())  # n = 1: the plain samples
    with pytest.raises(ValueError):
        best_of_n(proxy, gold, 7)


def test_gold_and_proxy_are_two_curves_and_a_gold_fall_under_a_rising_proxy_is_caught():
    rng = np.random.default_rng(1)
    # per prompt 8 answers; the proxy's two favourites are wrong (gold 0), the middle ones right
    proxy = np.stack([rng.permutation(8) for _ in range(60)]).astype(float)
    gold = ((proxy >= 2) & (proxy <= 5)).astype(float)
    rows = overoptimization.best_of_n_curve(proxy, gold)
    assert [r["n"] for r in rows] == [1, 2, 4, 8]
    assert all(b["proxy"] > a["proxy"] for a, b in zip(rows, rows[1:]))  # the proxy keeps rising
    assert rows[-1]["gold"] == 0 and rows[0]["gold"] == 0.5  # the gold is its own number, not the proxy's
    assert [r["kl"] for r in rows] == [bon_kl(n) for n in (1, 2, 4, 8)]
    shape = overoptimization.peak_and_fall(rows)
    assert shape["falls"] and shape["proxy_rises"] and shape["peak_n"] in (1, 2)
    assert "falls" in overoptimization.words({"shape": shape})
    # the bar: best-of-n's gold at the largest n minus n = 1's; here it is below the samples': it fails
    lengths = rng.integers(3, 20, size=proxy.shape)  # lengths that say nothing about the gold
    length_rows = overoptimization.length_rule_curve(proxy, gold, lengths)
    assert not overoptimization.overopt_bar(rows, length_rows)["passed"]
    # a proxy that agrees with the gold: no fall, and the bar passes (the length rule knows nothing here)
    gold = (proxy >= 6).astype(float)
    rows = overoptimization.best_of_n_curve(proxy, gold)
    bar = overoptimization.overopt_bar(rows, overoptimization.length_rule_curve(proxy, gold, lengths))
    assert not overoptimization.peak_and_fall(rows)["falls"] and bar["passed"]
    assert set(bar["against"]) == {"SFT samples (best-of-1)", "length rule (shortest of 8)"}


def test_the_overopt_bar_fails_a_proxy_that_only_learnt_that_shorter_is_better():
    """The gold counts concision: a proxy that prefers short answers lifts the gold above the SFT samples,
    but no higher than the length rule at the same n, so the bar (which needs both) fails; a proxy that
    also knows the fact beats the rule and passes."""
    rng = np.random.default_rng(2)
    P, N = 80, 8
    lengths = rng.integers(3, 30, size=(P, N))
    correct = rng.random((P, N)) < 0.5
    gold = 0.5 * correct + 0.5 * (lengths <= 10)  # half for the fact, half for concision
    short_proxy = -lengths.astype(float)  # shorter is better, nothing else
    rows = overoptimization.best_of_n_curve(short_proxy, gold)
    length_rows = overoptimization.length_rule_curve(short_proxy, gold, lengths)
    assert [r["n"] for r in length_rows] == [1, 2, 4, 8] and length_rows[0]["gold"] == rows[0]["gold"]
    bar = overoptimization.overopt_bar(rows, length_rows)
    against = bar["against"]
    sft, rule = against["SFT samples (best-of-1)"], against["length rule (shortest of 8)"]
    assert sft["interval"][0] > 0  # above the SFT samples: the old bar would have passed it
    assert rule["interval"][0] <= 0 <= rule["interval"][1] and not bar["passed"]
    assert bar["baseline_name"] == "length rule (shortest of 8)"
    good_proxy = correct + 0.5 * (lengths <= 10) + 0.01 * rng.random((P, N))  # knows the fact too
    bar = overoptimization.overopt_bar(
        overoptimization.best_of_n_curve(good_proxy, gold),
        overoptimization.length_rule_curve(good_proxy, gold, lengths),
    )
    assert bar["passed"] and all(v["interval"][0] > 0 for v in bar["against"].values())


def ppo_bar_inputs(sft_gold, ppo_gold, proxy_after):
    n = len(sft_gold)
    curve = [
        {"step": 0, "gold": np.mean(sft_gold), "proxy": 0.0, "samples": 4},
        {"step": 10, "gold": np.mean(ppo_gold), "proxy": proxy_after, "samples": 4},
    ]
    best = {"step": 10, "gold": np.mean(ppo_gold), "proxy": proxy_after}
    greedy = {"PPO": list(ppo_gold), "SFT": list(sft_gold)}
    majority = {"gold": [0.0] * n, "acceptance": [0.0] * n}
    return curve, best, {0: list(sft_gold), 10: list(ppo_gold)}, greedy, majority


def test_ppo_bar_is_the_gold_reward_over_sft_and_fails_when_only_the_proxy_rose():
    sft = [0.25] * 40
    bars = ppo_outcome.ppo_bars(*ppo_bar_inputs(sft, [0.75] * 40, proxy_after=1.0))
    assert all("gold" in b["metric"] for b in bars) and bars[0]["passed"]
    assert math.isclose(bars[0]["value"], 0.5) and bars[0]["baseline_name"] == "SFT (before PPO)"
    # the proxy soared, the gold fell: the bar reads the gold and fails
    bars = ppo_outcome.ppo_bars(*ppo_bar_inputs(sft, [0.0] * 40, proxy_after=100.0))
    assert not bars[0]["passed"] and bars[0]["value"] < 0
    # equal to SFT is not better
    assert not ppo_outcome.ppo_bars(*ppo_bar_inputs(sft, sft, proxy_after=5.0))[0]["passed"]


def test_rlaif_agreement_counts_ties_half_and_the_judge_must_beat_the_length_rule():
    a = rlaif.agreement([1, -1, 0, 1], [1, 1, 1, 1])
    assert a["agreement"] == (1 + 0 + 0.5 + 1) / 4 and a["n"] == 4
    assert rlaif.agreement([], [])["agreement"] is None

    def stats(ai, length):
        gold = [1] * 50
        return {
            "agreement": {
                "AI judge (language model)": rlaif.agreement(ai, gold),
                "prefer the shorter answer": rlaif.agreement(length, gold),
            }
        }

    assert rlaif.judge_bar(stats([1] * 50, [1, -1] * 25))["passed"]
    assert not rlaif.judge_bar(stats([1] * 45 + [-1] * 5, [1] * 45 + [-1] * 5))["passed"]  # = the length rule
    assert not rlaif.judge_bar(stats([1, -1] * 25, [-1] * 50))["passed"]  # chance is the floor
