"""report.py's verdicts come from the bars the stages wrote (SCHEMA.md), and a bar whose interval does not
clear its threshold is a FAIL on the report card even when its point estimate does."""

import json

import pytest

from common import report_card as report
from common import report_parts
from common.outcome import make_bar


def write_stage(run, folder, outcome, name="outcome.json"):
    d = run / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(outcome))
    (d / "manifest.json").write_text(json.dumps({"status": "complete"}))


def pretrain_outcome(bar, **extra):
    heldout = {
        "checkpoint": "best.pt",
        "block_size": 128,
        "val_loss": 0.6,
        "test_loss": 0.59,
        "val_windows": 280,
        "test_windows": 262,
        "unigram_loss": 5.7,
        "ngram": {"8": {"val_loss": 0.63, "test_loss": 0.63}},
        "ngram_order": 8,
        "split": "test",
    }
    return {
        "params": 1_000_000,
        "steps": 1000,
        "status": "max_steps",
        "tokens_seen": 2_048_000,
        "best_val_loss": 0.6,
        "best_step": 1000,
        "unigram_val_loss": 5.79,
        "train_loss": 0.55,
        "tokens_per_s": 10_000.0,
        "device": "cpu",
        "dtype": "fp32",
        "headline": "test loss 0.590 ...",
        "bar": bar,
        "bars": [bar],
        "heldout": heldout,
        "fact_recall": None,
        **extra,
    }


def loss_bar(value, interval):
    return make_bar(
        "test loss (nats/token), best.pt",
        value,
        threshold=0.63,
        direction="lower",
        baseline=0.63,
        baseline_name="interpolated Kneser-Ney 8-gram",
        interval=interval,
        n=262,
    )


@pytest.mark.parametrize(
    "value, interval, verdict",
    [
        (0.59, (0.57, 0.61), "PASS"),  # the whole interval below the n-gram's loss
        (0.60, (0.56, 0.65), "FAIL"),  # the point clears the threshold, the interval does not: must fail
        (0.70, (0.68, 0.72), "FAIL"),  # worse than the baseline
    ],
)
def test_the_report_verdict_is_the_stage_bar(tmp_path, value, interval, verdict):
    write_stage(tmp_path, "pretrain", pretrain_outcome(loss_bar(value, interval)))
    assert report.headline_of("pretrain", tmp_path).endswith(f"| {verdict}")
    text = report.write_report(tmp_path).read_text()
    assert f"**{verdict}**" in text and "262" in text and "Kneser-Ney 8-gram" in text


def test_bar_line_lays_out_metric_value_interval_n_threshold_and_baseline():
    line = report_parts.bar_line(loss_bar(0.59, (0.57, 0.61)))
    assert line == (
        "test loss (nats/token), best.pt: 0.590 [0.570, 0.610] (n = 262), must be < 0.630; "
        "baseline: interpolated Kneser-Ney 8-gram 0.630"
    )
    higher = make_bar("accuracy", 0.4, threshold=0.5, direction="higher")
    assert report_parts.bar_line(higher) == "accuracy: 0.400, must be > 0.500"


def test_an_older_pretraining_outcome_without_a_bar_gets_no_verdict(tmp_path):
    o = pretrain_outcome(None)
    for k in ("bar", "bars", "heldout", "headline"):
        o.pop(k)
    write_stage(tmp_path, "pretrain", o)
    assert report.section_of("pretrain", tmp_path, None).passed is None


def test_the_bars_table_lists_every_stage_bar_with_its_verdict(tmp_path):
    good = loss_bar(0.59, (0.57, 0.61))
    recall = make_bar("fact recall", 0.15, threshold=0.117, direction="higher", interval=(0.11, 0.19), n=360)
    write_stage(tmp_path, "pretrain", pretrain_outcome(good, bars=[good, recall]))
    write_stage(
        tmp_path, "overfit", {"headline": "x", "bar": make_bar("loss", 1.0, threshold=0.9, direction="lower")}
    )
    rows = report.bar_rows(tmp_path)
    assert [(r["stage"], r["verdict"]) for r in rows] == [
        ("overfit", "FAIL"),
        ("pretrain *", "PASS"),
        ("pretrain", "FAIL"),
    ]
    assert (
        rows[1]["95 % interval"] == "[0.570, 0.610]"
        and rows[1]["threshold"] == "< 0.630"
        and rows[1]["n"] == "262"
    )
    assert rows[2]["threshold"] == "> 0.117" and rows[0]["95 % interval"] == "-"
    assert "## Bars" in report.write_report(tmp_path).read_text()
