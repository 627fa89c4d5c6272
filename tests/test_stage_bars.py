"""The pass/fail decision of the data, tokenizer, quantization and serving bars (issue 22): each passes a
clear case and fails the trivial baseline, and a case whose point estimate clears the threshold while its
95 % interval does not must fail. Other stages' bars are tested beside their stages (test_04_measure,
test_05_sft_lora, test_06_rlhf_dpo, test_07_distill, test_report_bars)."""

import math

import numpy as np
import pytest

import bench_serve
import data_outcome
import quantize
from common import report_card as report
import tokenizer_cli
from common.stats import paired_ratio_difference_interval
from test_report_bars import write_stage

# ---------------------------------------------------------------------------------------------------
# 01 data: a bar per noise type on min(precision, recall), Wilson intervals, flag-every-document baseline

CLAIMED = [k for k in data_outcome.NOISE_TYPES if k not in data_outcome.NOT_CLAIMED]


def noise_row(kind, caught, injected, flagged):
    w = data_outcome.wilson
    return {
        "step": data_outcome.CATCHING_STEP[kind],
        "injected": injected,
        "caught": caught,
        "missed": injected - caught,
        "flagged": flagged,
        "precision": caught / max(1, flagged),
        "recall": caught / max(1, injected),
        "precision_ci": w(caught, flagged),
        "recall_ci": w(caught, injected),
    }


def data_stats(**override):
    noise = {k: noise_row(k, 108, 108, 108) for k in data_outcome.NOISE_TYPES}
    noise["toxic"] = noise_row("toxic", 52, 108, 52)  # a lexicon: recall not claimed, does not decide
    noise.update(override)
    noise["(clean docs)"] = {"injected": 6500, "wrongly_removed": 0, "docs": 7472}
    return {"noise": noise, "splits": {"train": {"docs": 6000}}}


def test_the_data_bar_passes_when_every_claimed_type_clears_its_interval():
    o = data_outcome.outcome_block(data_stats())
    assert o["bar"]["passed"] and o["bar"] in o["bars"] and len(o["bars"]) == len(data_outcome.NOISE_TYPES)
    toxic = next(b for b in o["bars"] if b["metric"].startswith("toxic"))
    assert not toxic["passed"] and "not promised" in toxic["note"]  # shown, but not the stage's verdict


def test_the_data_bar_fails_on_one_miss_in_108_though_the_point_is_above_095():
    o = data_outcome.outcome_block(data_stats(near_dup=noise_row("near_dup", 107, 108, 107)))
    assert o["bar"]["value"] > 0.95 and not o["bar"]["passed"] and o["bar"]["metric"].startswith("near_dup")
    assert "near_dup" in o["headline"]


def test_the_flag_every_document_baseline_fails_the_data_bar():
    everything = noise_row("html", 108, 108, 7472)  # recall 1, precision = the type's share of the input
    bar = data_outcome.noise_bar("html", everything, 7472)
    assert not bar["passed"] and bar["value"] == pytest.approx(bar["baseline"])
    nothing = noise_row("html", 0, 108, 0)
    assert not data_outcome.noise_bar("html", nothing, 7472)["passed"]


def test_a_copy_below_the_dedup_threshold_is_an_edited_copy_not_a_near_duplicate():
    words = [f"w{i}" for i in range(120)]
    source = " ".join(words)
    light = " ".join(words[:60] + ["really"] + words[60:])  # one insertion: Jaccard ~0.97
    heavy = " ".join(w if i % 4 else "x" + w for i, w in enumerate(words))  # every 4th word changed
    docs = [{"id": "a", "text": source}, {"id": "b", "text": light}, {"id": "c", "text": heavy}]
    labels, sim = data_outcome.relabel_copies(docs, {"b": "near_dup", "c": "near_dup"}, 0.7)
    assert labels == {"b": "near_dup", "c": "edited_copy"} and sim["b"] > 0.9 > 0.7 > sim["c"]


# ---------------------------------------------------------------------------------------------------
# 02 tokenizer: bytes/token against GPT-2's, paired over documents


def test_paired_ratio_difference_interval_resamples_documents_jointly():
    rng = np.random.default_rng(0)
    n_bytes = rng.integers(100, 1000, 50)
    ours = n_bytes // 4
    assert paired_ratio_difference_interval(n_bytes, ours, ours) == (0.0, 0.0)
    lo, hi = paired_ratio_difference_interval(n_bytes, ours, 2 * ours)  # theirs: twice the tokens
    point = n_bytes.sum() / ours.sum() / 2
    assert lo < point < hi and hi - lo < 0.1 * point
    with pytest.raises(ValueError, match="equal shapes"):
        paired_ratio_difference_interval([1, 2], [1, 2], [1])


def test_the_tokenizer_bar_must_clear_gpt2_with_its_interval():
    rows = [{"tokenizer": "ours", "vocab_size": 2048, "all": 4.0}, {"tokenizer": "GPT-2", "all": 3.2}]
    clear = tokenizer_cli.outcome_block(rows, True, (3.9, 4.1), 300)["bar"]
    straddles = tokenizer_cli.outcome_block(rows, True, (3.1, 4.9), 10)["bar"]
    assert clear["passed"] and clear["n"] == 300 and not straddles["passed"]
    same = tokenizer_cli.outcome_block([rows[1] | {"vocab_size": 50257}, rows[1]], True, (3.2, 3.2), 9)
    assert not same["bar"]["passed"]  # GPT-2 against itself: the baseline fails its own bar


# ---------------------------------------------------------------------------------------------------
# 07 quantization: quality at a size, paired over val windows


def quant_row(name, nbytes, losses):
    losses = list(losses)
    return {
        "format": name,
        "bytes": nbytes,
        "window_loss": losses,
        "val_loss": float(np.mean(losses)),
        "ppl_change_pct": 0.0,
        "vs_fp32_bytes": nbytes / 1000,
    }


BASE = np.random.default_rng(1).normal(1.4, 0.2, 64)


def test_int8_passes_within_one_percent_at_under_half_the_bytes():
    rows = [quant_row("fp32", 1000, BASE), quant_row("int8", 410, BASE + 0.001)]
    (bar,) = quantize.quant_bars(rows)
    assert bar["passed"] and bar["threshold"] == pytest.approx(math.log(1.01)) and bar["n"] == 64


@pytest.mark.parametrize(
    "nbytes, shift, why",
    [
        (500, 0.0, "bf16's size: a cast, no quantization"),
        (1000, 0.0, "fp32 itself, the trivial baseline"),
        (410, 0.02, "2 % perplexity lost"),
    ],
)
def test_the_int8_bar_fails_the_trivial_baselines_and_a_lossy_int8(nbytes, shift, why):
    rows = [quant_row("fp32", 1000, BASE), quant_row("int8", nbytes, BASE + shift)]
    assert not quantize.quant_bars(rows)[0]["passed"], why


def test_gptq_must_beat_round_to_nearest_at_the_same_bytes():
    noise = np.random.default_rng(2).normal(0, 0.01, 64)
    rtn = quant_row("int4-g32", 330, BASE + 0.05)
    better = quant_row("int4-g32-gptq", 330, BASE + 0.02 + noise)
    same = quant_row("int4-g32-gptq", 330, BASE + 0.05 + noise)  # the point may dip below, the interval not
    o = quantize.outcome_block([quant_row("fp32", 1000, BASE), rtn, better], "int4-g32-gptq")
    assert o["bar"]["passed"] and "round-to-nearest" in o["bar"]["baseline_name"]
    assert not quantize.quant_bars([rtn, same])[0]["passed"]


# ---------------------------------------------------------------------------------------------------
# 07 serving: continuous / static tokens/s, paired per pass, t interval over passes


def serve_rows(cont, stat, same=True):
    row = lambda name, xs, s: {"policy": name, "tokens_per_s": float(np.median(xs)), "tokens_per_s_passes": xs, "same_tokens": s}  # fmt: skip
    return [row("static", stat, True), row("continuous", cont, same)]


def test_the_serving_bar_passes_a_steady_speedup_over_passes():
    bar = bench_serve.outcome_block(serve_rows([1200, 1250, 1190, 1230, 1210], [760, 790, 740, 770, 760]))[
        "bar"
    ]
    assert bar["passed"] and 1.5 < bar["value"] < 1.7 and bar["n"] == 5 and bar["interval"][0] > 1


def test_the_serving_bar_fails_when_timing_noise_straddles_one():
    bar = bench_serve.outcome_block(serve_rows([1300, 700, 1000], [700, 900, 800]))["bar"]
    assert bar["value"] > 1 and bar["interval"][0] < 1 and not bar["passed"]
    static_vs_static = bench_serve.outcome_block(serve_rows([760, 790, 740], [760, 790, 740]))["bar"]
    assert static_vs_static["value"] == pytest.approx(1.0) and not static_vs_static["passed"]
    assert not bench_serve.outcome_block(serve_rows([1200, 1250], [760, 790], same=False))["bar"]["passed"]


# ---------------------------------------------------------------------------------------------------
# the report: a finished stage without a bar of its own says n/a, never a verdict


def test_a_table_only_stage_is_n_a_on_the_report_card(tmp_path):
    write_stage(tmp_path, "rl_compare", {"headline": "0 of 3", "bar": None, "table_only": "a table"})
    write_stage(tmp_path, "rl_compare", {"rows": [{"method": "sft"}]}, name="compare.json")
    rows = report.bar_rows(tmp_path)
    assert rows == [rows[0]] and rows[0]["verdict"] == "n/a" and rows[0]["metric"] == "a table"
    text = report.write_report(tmp_path).read_text()
    assert "| rl_compare | 0 of 3 | a table | n/a |" in text and "0 of 0 stages" in text
