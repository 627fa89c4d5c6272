"""Tests for 05_sft_lora/extraction_budget.py: a micro series connects (pretraining in process, sft.py as
its own process) and writes its JSON, table and plot; bad flags are one `error: ...; fix` line, exit 2;
the fit and the quiet-minutes ratio do what their docstrings say."""

import json

import pytest

import extraction_budget as B
from common.cli import run_cli


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    """A micro run folder with data/ (the generated world) and tokenizer/ + tokens/, in process."""
    import prepare
    import train_tokenizer

    run = tmp_path_factory.mktemp("budget") / "run"
    prepare.main(["--out", str(run), "--preset", "micro"])
    train_tokenizer.main(["--data", str(run), "--preset", "micro"])
    return run


def test_a_micro_series_writes_rows_for_every_budget_and_its_outputs(micro_data, capsys):
    argv = ["--run", str(micro_data), "--preset", "micro", "--budgets", "4,8"]
    outcome = B.extraction_budget(B.parse_config(B.BudgetConfig, argv, presets=B.PRESETS)[0])
    out = micro_data / "extraction_budget"
    saved = json.loads((out / "outcome.json").read_text())
    assert (
        [r["label"] for r in saved["rows"]] == ["w32_s4", "w32_s8"] == [r["label"] for r in outcome["rows"]]
    )
    r = saved["rows"][0]
    assert r["tokens"] == 4 * 8 * 128 and r["n"] > 0 and 0 <= r["answer_acc"] <= 1
    assert r["answer_acc_interval"][0] <= r["answer_acc"] <= r["answer_acc_interval"][1]
    assert r["heldout_recall"] is not None and r["quiet_min"] is None  # micro: no quiet scaling
    assert saved["fit"]["answer_acc"]["points"] == 2 and r["epochs"] > 0
    assert (out / "budget.png").stat().st_size > 0 and (out / "w32_s8" / "sft" / "outcome.json").is_file()
    assert "| 8 steps, width 32 |" in capsys.readouterr().out
    # a second call refuses to replace the finished budgets silently, and --reuse keeps them
    with pytest.raises(B.UserError, match="--reuse"):
        B.extraction_budget(B.parse_config(B.BudgetConfig, argv, presets=B.PRESETS)[0])
    again = B.extraction_budget(B.parse_config(B.BudgetConfig, [*argv, "--reuse"], presets=B.PRESETS)[0])
    assert [x["answer_acc"] for x in again["rows"]] == [x["answer_acc"] for x in saved["rows"]]


def test_budgets_name_width_and_steps_and_a_repeat_gets_its_own_folder(tmp_path):
    cfg = B.BudgetConfig(run="runs/x", budgets=["1000", "192x2000", "1000"])
    found = B.budget_configs(cfg, tmp_path)
    assert [label for label, _ in found] == ["w128_s1000", "w192_s2000", "w128_s1000_run2"]
    assert [(tc.max_steps, tc.n_embd) for _, tc in found] == [(1000, 128), (2000, 192), (1000, 128)]
    assert (
        found[1][1].out == str(tmp_path / "w192_s2000" / "pretrain") and found[1][1].lr == B.TrainConfig().lr
    )


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--budgets", "1000,abc"], "bad budget 'abc'; write STEPS or WIDTHxSTEPS"),
        (["--budgets", "0"], "bad budget '0'"),
        (["--budgets", "130x1000"], "not divisible by n_head=4"),  # 4 heads cannot split a width of 130
        ([], "--run is required"),
        (["--bogus", "2"], "unrecognized arguments"),
    ],
)
def test_bad_flags_are_one_line_errors_with_exit_2(tmp_path, argv, problem, capsys):
    run = ["--run", str(tmp_path / "none")] if argv and argv[0] == "--budgets" else []
    with pytest.raises(SystemExit) as e:
        run_cli(B.main, [*run, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert problem in err and ";" in err
    assert not (tmp_path / "none").exists()  # nothing written


def test_quiet_ratio_uses_the_fastest_default_run_and_the_fit_extrapolates_in_log_minutes():
    row = lambda steps, width, m, acc: {"steps": steps, "width": width, "pretrain_min": m, "answer_acc": acc}
    rows = [
        row(1000, 128, 6.0, 0.3),
        row(2000, 128, 12.0, 0.4),
        row(1000, 128, 6.1, 0.3),
        row(1000, 192, 9.0, 0.5),
    ]
    assert B.quiet_ratio(rows, 177.0) == pytest.approx(177.0 / 360.0)
    assert B.quiet_ratio(rows, 0.0) is None and B.quiet_ratio(rows[3:], 177.0) is None
    for r in rows:
        r["quiet_min"] = r["pretrain_min"] / 2
    fit = B.goal_fit(rows, 128)  # +0.1 per doubling from 0.3 at 3 minutes: 0.8 five doublings later
    assert fit["points"] == 2 and fit["b_per_doubling"] == pytest.approx(0.1)
    assert fit["minutes_to_goal"] == pytest.approx(3.0 * 2**5)
    assert B.goal_fit(rows, 192) is None  # one point is no line
    flat = [row(1000, 128, 6.0, 0.3), row(2000, 128, 12.0, 0.2)]
    for r in flat:
        r["quiet_min"] = None
    assert B.goal_fit(flat, 128)["minutes_to_goal"] is None
