"""Tests for 07_distill_quant/export_roundtrip.py, the `export` stage: the round trip of a micro run's own
model through transformers and onnxruntime (skipped without them), the bar a lossy export fails, the
"skipped" outcome when the packages are absent, and bad flags."""

import json

import pytest
import torch

import export_roundtrip as X
from common.cli import run_cli
from gpt import GPT, PRESETS, GPTConfig


def small_model() -> GPT:
    """Weights drawn wide (std 0.3, logits of a few units, as a trained model's) so rounding shows."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=32, **PRESETS["llama"]))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def test_rounding_the_weights_to_fp16_moves_the_logits_far_beyond_the_tolerance():
    """The baseline the bar rejects: what a lossy export does to 03's own forward (no package needed)."""
    model = small_model()
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = model(x)[0]
        for dtype in (torch.float16, torch.bfloat16):
            lossy = X.rounded_copy(model, dtype)(x)[0]
            assert (lossy - exact).abs().max() > 10 * X.RoundTripConfig().tolerance
        assert torch.equal(X.rounded_copy(model, torch.float32)(x)[0], exact)
    bar = X.logit_bar("x", 3e-6, 1e-4, 2e-3, 10, "")
    assert bar["passed"] and bar["value"] == pytest.approx(0.03) and bar["baseline"] == pytest.approx(20)
    assert not X.logit_bar("x", 2e-3, 1e-4, 2e-3, 10, "")["passed"]  # the lossy export fails the bar


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "--run"),
        (["--run", "{tmp}/none"], "missing"),
        (["--run", "{tmp}", "--tolerance", "-1"], "--tolerance"),
        (["--run", "{tmp}", "--prompts", "0"], "--prompts"),
        (["--run", "{tmp}", "--windows", "many"], "--windows"),
    ],
)
def test_bad_input_is_one_error_line_exit_2(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        run_cli(X.main, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """A real micro run (01 -> 02 -> 04, each stage's own micro preset), in process."""
    import prepare
    import pretrain
    import train_tokenizer

    run = tmp_path_factory.mktemp("ex") / "run"
    prepare.main(["--out", str(run), "--preset", "micro"])
    train_tokenizer.main(["--data", str(run), "--preset", "micro"])
    pretrain.main(["--data", str(run), "--preset", "micro", "--max-steps", "6", "--eval-interval", "3"])
    return run


def test_too_long_a_prompt_is_one_error_line(micro_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(X.main, ["--run", str(micro_run), "--out", str(tmp_path / "o"), "--new-tokens", "100000"])
    assert e.value.code == 2 and "--prompt-len + --new-tokens" in capsys.readouterr().err


def test_without_the_packages_the_stage_records_skipped_neither_pass_nor_fail(
    micro_run, tmp_path, monkeypatch
):
    monkeypatch.setattr(X, "missing", lambda packages: list(packages))
    o = X.round_trip(X.RoundTripConfig(run=str(micro_run), out=str(tmp_path / "x"), **X.PRESETS["micro"]))
    saved = json.loads((tmp_path / "x" / "outcome.json").read_text())
    assert saved["bar"] is None and saved["headline"].startswith("skipped") and "transformers" in o["skipped"]
    assert saved["table_only"].startswith("skipped") and (tmp_path / "x" / "manifest.json").is_file()


def test_the_round_trip_through_transformers_of_the_runs_own_model_passes_its_bar(
    micro_run, tmp_path, monkeypatch
):
    """transformers only (the ONNX export takes ~40 s under load; onnx_int8's measure and the graph have
    their own tests in test_07_export.py, and the bars built from them are checked below)."""
    pytest.importorskip("transformers")
    monkeypatch.setattr(X, "missing", lambda packages: [p for p in packages if p in X.ONNX_PACKAGES])
    o = X.round_trip(X.RoundTripConfig(run=str(micro_run), out=str(tmp_path / "x"), **X.PRESETS["micro"]))
    hf = o["transformers"]
    assert hf["architecture"] == "LlamaForCausalLM" and hf["max_abs_logit_diff"] < 1e-4
    assert hf["greedy_equal"] == hf["prompts"] == 2 and hf["tokenizer_equal"]["equal"] == 2
    assert min(hf["lossy_max_abs_logit_diff"].values()) > 0  # rounding moves this small model's logits too
    assert o["bar"]["passed"] and len(o["bars"]) == 1 and "onnxruntime" in o["skipped"]
    assert (
        not (tmp_path / "x" / "hf_fp16").exists() and (tmp_path / "x" / "hf" / "model.safetensors").is_file()
    )


def onnx_rows(int8_change, interval) -> dict:
    row = lambda change, iv, diff: {"loss": 1.0 + change, "loss_change": change, "loss_change_interval": iv,
                                    "top1_agree": 1.0, "max_abs_logit_diff": diff, "weight_bytes": 10**6,
                                    "tokens_per_s": 100.0, "greedy_equal": True}  # fmt: skip
    return {
        "pytorch fp32": row(0.0, [0.0, 0.0], 0.0),
        "pytorch int8 (07 QuantLinear)": row(0.0002, [-0.001, 0.001], 0.1),
        "onnxruntime fp32": row(0.0, [0.0, 0.0], 2e-6),
        "onnxruntime int8 (quantize_dynamic)": row(int8_change, interval, 1.0),
    }


def test_the_onnx_bars_hold_the_graph_to_the_tolerance_and_int8_to_one_percent_perplexity():
    cfg = X.RoundTripConfig()
    onnx = {"rows": onnx_rows(0.001, [-0.001, 0.003]), "greedy_equal": 8, "prompts": 8}
    graph, int8 = X.bars_of(None, onnx, cfg)
    assert graph["passed"] and int8["passed"] and int8["threshold"] == pytest.approx(0.00995, abs=1e-5)
    assert "x1.00 of ONNX fp32" in int8["note"] and "07's own INT8" in int8["baseline_name"]
    # an INT8 whose interval reaches past +1 % perplexity fails, and so does a graph off by 1e-3
    assert not X.bars_of(None, {**onnx, "rows": onnx_rows(0.008, [0.005, 0.011])}, cfg)[1]["passed"]
    bad = onnx_rows(0.001, [-0.001, 0.003])
    bad["onnxruntime fp32"]["max_abs_logit_diff"] = 1e-3
    assert not X.bars_of(None, {**onnx, "rows": bad}, cfg)[0]["passed"]
    assert "| onnxruntime int8 (quantize_dynamic) |" in X.table(onnx)
