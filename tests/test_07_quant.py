"""07_distill_quant, quantization: fake quantization and the outlier table, W8A8, QuantLinear's error bound,
swapping by module name, GPTQ (Hessian, Cholesky factor, column loop, gain over round-to-nearest), the quantized
checkpoint, and the command line with one-line errors for bad input.

The formats' own round trip, packing and the Triton kernel are tested in tests/test_kernels_quant.py; here the
model side. The run folder is made here (a small BPE tokenizer, an untrained 2-layer GPT, token shards), so the
tests do not depend on stages 01-05 having run.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import quant_linear
from bpe import BPETokenizer
from checkpoint_io import save_checkpoint
from common.cli import UserError, run_cli
from common.runs import write_manifest
from gpt import GPT, GPTConfig
from gptq import HessianCollector, gptq_quantize, inverse_hessian_cholesky, output_error
from lora import inject_lora, merge_lora, save_lora
from quant_linear import (
    QuantLinear,
    load_float_model,
    load_quantized,
    model_bytes,
    parse_format,
    quantize_model,
    save_quantized,
    w8a8_matmul,
)
from quant_matmul import dequantize, quantize
from quant_granularity import fake_quantize, weight_stats
from quantize import main as quantize_main

REPO = Path(__file__).resolve().parents[1]
QUANTIZE_PY = str(REPO / "07_distill_quant" / "quantize.py")


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=32, attn_backend="torch")
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def correlated_inputs(n, K, seed=0):
    """Rows x (n, K) whose features are strongly correlated (a rank-8 signal + a little noise), like a layer's
    real inputs: the case where choosing codes jointly (GPTQ) beats rounding each weight alone."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g) @ torch.randn(8, K, generator=g) + 0.1 * torch.randn(
        n, K, generator=g
    )


# ----------------------------------------------------------------------------------------------------
# fake quantization: the formulas written out, and why outliers hurt a per-tensor scale


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits,per", [(8, "tensor"), (8, "channel"), (4, "channel"), (4, 32)])
def test_fake_quantize_error_at_most_half_a_step_and_few_levels(bits, per, symmetric):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 64, generator=g) + (0.0 if symmetric else 0.7)  # skewed sets for the zero point
    w_hat = fake_quantize(w, bits, per, symmetric)
    sets = lambda t: t.reshape(1, -1) if per == "tensor" else t if per == "channel" else t.reshape(-1, per)
    ws, hs = sets(w), sets(w_hat)
    if symmetric:
        step = ws.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
    else:
        step = (ws.amax(-1, keepdim=True).clamp(min=0) - ws.amin(-1, keepdim=True).clamp(max=0)) / (
            2**bits - 1
        )
    assert ((hs - ws).abs() <= step / 2 * (1 + 1e-5)).all()
    assert (hs - ws).abs().max() > 0  # it really rounded
    for row, s in zip(hs, step):  # every value on the set's grid
        levels = torch.unique(torch.round(row / s))
        assert len(levels) <= 2**bits
        assert torch.allclose(levels * s, torch.unique(row), atol=1e-5 * float(s))


def test_zero_point_beats_symmetric_on_a_skewed_set():
    w = torch.rand(4, 32, generator=torch.Generator().manual_seed(2)) + 0.5  # all positive: half of ±7 unused
    err = lambda sym: float((fake_quantize(w, 4, 32, sym) - w).norm())
    assert err(False) < 0.6 * err(True)


def test_outlier_row_hurts_per_tensor_not_per_channel():
    model = small_model()
    with torch.no_grad():
        model.blocks[0].attn.wq.weight[3] *= 50  # one huge output channel
    stats = {s["layer"]: s for s in weight_stats(model, ["wq", "wk"])}
    hit, clean = stats["blocks.0.attn.wq"], stats["blocks.0.attn.wk"]
    assert hit["max_over_mean"] > 5 * clean["max_over_mean"]
    assert hit["int8_tensor"] > 3 * hit["int8_channel"]  # one scale for all: coarse grid
    assert clean["int8_tensor"] < 2 * clean["int8_channel"]
    assert hit["int4_g32_asym"] is not None and hit["int4_g32"] <= hit["int4_channel"]


# ----------------------------------------------------------------------------------------------------
# W8A8 and QuantLinear: errors bounded by the scales


def test_w8a8_error_bounded_by_activation_rounding_and_int32_exact():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(5, 96, generator=g), torch.randn(24, 96, generator=g)
    qw = quantize(w, bits=8, group_size=None)
    W_hat = dequantize(qw)
    y = w8a8_matmul(x, qw)
    ref = x @ W_hat.T  # weight-only: x not rounded
    s_x = x.abs().amax(-1, keepdim=True) / 127
    bound = (s_x / 2) * W_hat.abs().sum(1)[None, :]  # Σ_k |Ŵ_nk| · s_x[m] / 2
    assert ((y - ref).abs() <= bound * (1 + 1e-4) + 1e-5).all()
    assert (y - ref).abs().max() > 1e-4  # activations really were rounded
    x_grid = torch.round(x / s_x) * s_x  # already on its int8 grid:
    exact = (x_grid.double() @ W_hat.double().T).float()  # nothing left to round
    torch.testing.assert_close(w8a8_matmul(x_grid, qw), exact, rtol=1e-5, atol=1e-5)
    assert w8a8_matmul(x[None], qw).shape == (1, 5, 24)


@pytest.mark.parametrize("fmt", ["int8", "int4-g32", "int4-g32-asym", "w8a8"])
def test_quant_linear_within_the_bound_the_scales_give(fmt):
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(48, 20)  # 48: padded to 64 for g32
    with torch.no_grad():
        lin.weight.copy_(torch.randn(20, 48, generator=g))
    model = nn.Sequential(lin)
    meta = quantize_model(model, parse_format(fmt), targets=["0"])
    q = model[0]
    assert isinstance(q, QuantLinear) and meta["0"]["padded_in"] == (64 if "int4" in fmt else 48)
    x = torch.randn(3, 7, 48, generator=g)
    y, ref = q(x), lin(x)
    qw = q.quantized_weight()
    step = (
        qw.scales.float()[:, None].expand(20, 48)
        if qw.bits == 8
        else qw.scales.float().repeat_interleave(32, dim=1)[:, :48]
    )  # s(n, k) of every weight
    bound = x.abs() @ (step / 2).T  # Σ_k |x_k| s(n, k) / 2
    if fmt == "w8a8":  # + the activations' rounding
        bound = bound + x.abs().amax(-1, keepdim=True) / 254 * dequantize(qw).abs().sum(1)
    assert ((y - ref).abs() <= bound * (1 + 1e-4) + 1e-5).all()
    assert (y - ref).abs().max() > 0


def test_quantize_model_swaps_only_the_named_layers_and_shrinks_the_model():
    model = small_model()
    before, x = model_bytes(model), torch.randint(0, 300, (2, 16))
    logits = model(x)[0]
    meta = quantize_model(model, parse_format("int4-g32"), targets=["wq", "ffn.down"])
    swapped = sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))
    assert (
        swapped
        == sorted(meta)
        == ["blocks.0.attn.wq", "blocks.0.ffn.down", "blocks.1.attn.wq", "blocks.1.ffn.down"]
    )
    assert isinstance(model.blocks[0].attn.wk, nn.Linear) and isinstance(model.lm_head, nn.Linear)
    assert model_bytes(model) < before
    assert (model(x)[0] - logits).abs().max() < 0.1 * logits.abs().max()
    with pytest.raises(UserError, match="already quantized"):
        quantize_model(model, parse_format("int8"))
    with pytest.raises(UserError, match="match no linear layer"):
        quantize_model(small_model(), parse_format("int8"), targets=["q_proj"])


def test_unmerged_lora_is_refused_and_a_merged_one_quantizes_to_plain_keys():
    model = small_model()
    inject_lora(model, ["wq"], r=2, alpha=4)
    with pytest.raises(UserError, match="merge first"):
        quantize_model(model, parse_format("int8"))
    merge_lora(model)
    quantize_model(model, parse_format("int8"))
    assert not any("lora" in k for k in model.state_dict())


# ----------------------------------------------------------------------------------------------------
# GPTQ


def test_hessian_collector_is_two_over_n_xtx_and_removes_its_hooks():
    lin, X = nn.Linear(12, 5), correlated_inputs(40, 12)
    with HessianCollector({"fc": lin}) as hc:
        lin(X[:25].reshape(5, 5, 12))  # batches of any shape
        lin(X[25:])
    torch.testing.assert_close(hc.hessians()["fc"], 2 * X.T @ X / 40, rtol=1e-5, atol=1e-5)
    lin(X)
    assert hc.counts["fc"] == 40 and not lin._forward_pre_hooks


def test_inverse_hessian_cholesky_factors_the_damped_inverse():
    X = correlated_inputs(64, 16)
    H = 2 * X.T @ X / 64
    U = inverse_hessian_cholesky(H, damp=0.05)
    damped = H + 0.05 * H.diagonal().mean() * torch.eye(16)
    assert torch.equal(U, U.triu())
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(damped.double()).float(), rtol=1e-3, atol=1e-4)
    assert torch.equal(H, 2 * X.T @ X / 64)  # H itself left as it was


def test_output_error_equals_the_error_on_the_inputs():
    X, W = correlated_inputs(50, 16), torch.randn(6, 16)
    W_hat = W + 0.05 * torch.randn(6, 16)
    direct = (X @ (W - W_hat).T).norm() / (X @ W.T).norm()
    assert output_error(W, W_hat, 2 * X.T @ X / 50) == pytest.approx(float(direct), rel=1e-4)


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, True), (4, 32, False), (8, None, True)])
def test_gptq_lowers_the_output_error_of_round_to_nearest(bits, group, symmetric):
    X, W = correlated_inputs(256, 64, seed=5), torch.randn(16, 64, generator=torch.Generator().manual_seed(6))
    H = 2 * X.T @ X / len(X)
    rtn = quantize(W, bits, group, symmetric)
    gq = gptq_quantize(W, H, bits, group, symmetric, damp=0.01)
    assert (gq.bits, gq.group_size, gq.qweight.dtype, gq.scales.shape) == (
        rtn.bits,
        rtn.group_size,
        rtn.qweight.dtype,
        rtn.scales.shape,
    )
    e_rtn, e_gptq = output_error(W, dequantize(rtn), H), output_error(W, dequantize(gq), H)
    assert e_gptq < 0.8 * e_rtn, (e_rtn, e_gptq)


def test_gptq_on_a_model_uses_calibration_and_beats_rtn_on_it():
    model = small_model()
    calibration = [
        torch.randint(0, 300, (4, 64), generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    with pytest.raises(UserError, match="calibration"):
        quantize_model(small_model(), parse_format("int4-g32-gptq"))
    meta = quantize_model(model, parse_format("int4-g32-gptq"), calibration=calibration)
    rtn = np.mean([m["calib_error_rtn"] for m in meta.values()])
    ours = np.mean([m["calib_error_gptq"] for m in meta.values()])
    assert len(meta) == 14 and ours < 0.9 * rtn, (rtn, ours)


# ----------------------------------------------------------------------------------------------------
# the quantized checkpoint


def test_quantized_checkpoint_loads_back_without_requantizing(tmp_path, monkeypatch):
    model, x = small_model(), torch.randint(0, 300, (2, 16))
    spec = parse_format("int4-g64-asym")  # ffn.down: K = 96 padded to 128
    layers = quantize_model(model, spec)
    save_quantized(tmp_path / "q.pt", model, spec, layers)

    def refuse(*a, **k):
        raise AssertionError("loading must not quantize")

    monkeypatch.setattr(quant_linear, "quantize", refuse)
    monkeypatch.setattr(quant_linear, "gptq_quantize", refuse)
    back, q = load_quantized(tmp_path / "q.pt")
    assert q["name"] == "int4-g64-asym" and q["layers"]["blocks.0.ffn.down"]["padded_in"] == 128
    assert torch.equal(back(x)[0], model(x)[0])
    wq = back.blocks[1].attn.wq
    assert wq.qweight.dtype == torch.uint8 and wq.scales.dtype == wq.zeros.dtype == torch.float16
    back.to(torch.bfloat16)
    assert wq.scales.dtype == torch.float16  # part of the stored format


def test_float_and_quantized_checkpoints_are_not_interchangeable(tmp_path):
    model = small_model()
    save_checkpoint(tmp_path / "float.pt", model.cfg.__dict__, model.state_dict())
    with pytest.raises(UserError, match="a float checkpoint, not a quantized one"):
        load_quantized(tmp_path / "float.pt")
    spec = parse_format("int8")
    save_quantized(tmp_path / "q.pt", model, spec, quantize_model(model, spec))
    with pytest.raises(UserError, match="holds a quantized model"):
        load_float_model(tmp_path / "q.pt")
    with pytest.raises(UserError, match="a float model cannot load it"):
        quant_linear.load_weights(
            small_model(), torch.load(tmp_path / "q.pt", weights_only=True)["model"], "q.pt"
        )


@pytest.mark.parametrize(
    "name,match",
    [
        ("int3", "unknown format"),
        ("int4-g48", "group size must be one of"),
        ("int4-g32-awq", "unknown format"),
    ],
)
def test_bad_format_names(name, match):
    with pytest.raises(UserError, match=match):
        parse_format(name)


# ----------------------------------------------------------------------------------------------------
# the command line


def tree_hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """runs/<name> with tokenizer/, tokens/ and pretrain/ (an untrained 2-layer GPT), each with a manifest,
    and quant/ made by the command (in process) from it."""
    run = tmp_path_factory.mktemp("run")
    text = " ".join(
        f"the {a} {b} is {c}."
        for a in ("red", "blue", "green")
        for b in ("cat", "dog", "bird")
        for c in ("small", "big", "here")
    )
    tok = BPETokenizer.train([text] * 4, vocab_size=300)
    tok.save(run / "tokenizer")
    write_manifest(run / "tokenizer", stage="02_tokenizer", command="(test)", config={})
    ids = np.array(tok.encode_ordinary(text * 12), dtype=np.uint16)
    (run / "tokens").mkdir()
    ids.tofile(run / "tokens" / "train.bin")
    ids[::-1].copy().tofile(run / "tokens" / "val.bin")
    (run / "tokens" / "meta.json").write_text(
        json.dumps(
            {
                "vocab_size": tok.vocab_size,
                "dtype": "uint16",
                "eot_id": tok.eot_id,
                "n_tokens": {"train": len(ids), "val": len(ids)},
            }
        )
    )
    write_manifest(run / "tokens", stage="02_tokenizer", command="(test)", config={})
    model = small_model(vocab_size=tok.vocab_size)
    save_checkpoint(run / "pretrain" / "ckpt.pt", model.cfg.__dict__, model.state_dict())
    write_manifest(
        run / "pretrain", stage="04_pretrain", command="(test)", config={}, inputs=[run / "tokens"]
    )
    quantize_main(
        [
            "--run",
            str(run),
            "--compare",
            "fp32,int8,w8a8,int4-g32",
            "--calib-windows",
            "4",
            "--val-windows",
            "4",
            "--gen-tokens",
            "4",
            "--device",
            "cpu",
        ]
    )
    return run


def test_command_writes_the_outcome_and_a_checkpoint_that_loads(run_dir, capsys):
    out = run_dir / "quant"
    assert {"model.pt", "outcome.json", "tables.md", "quant.png", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    outcome = json.loads((out / "outcome.json").read_text())
    rows = {r["format"]: r for r in outcome["rows"]}
    assert (
        list(rows) == ["fp32", "int8", "w8a8", "int4-g32", "int4-g32-gptq"]
        and outcome["saved_format"] == "int4-g32-gptq"
    )
    assert (
        rows["fp32"]["ppl_change_pct"] == 0
        and rows["int4-g32"]["bytes"] < rows["int8"]["bytes"] < rows["fp32"]["bytes"]
    )
    assert all(r["tok_s"] > 0 and r["val_ppl"] > 1 for r in rows.values())
    # KL in nats per token (float64, so rounding is ~1e-15): the fp32 row is the reference itself; int8 moves
    # predictions measurably but by less than 1e-4 nats (measured ~1e-8 on this untrained model), and less
    # than int4 does (~5e-6). The bounds sit orders of magnitude from both the values and the rounding.
    kl = {k: r["kl_fp32"] for k, r in rows.items()}
    assert kl["fp32"] < 1e-12 < kl["int8"] < min(1e-4, kl["int4-g32"]), kl
    assert rows["int4-g32-gptq"]["calib_error_gptq"] < rows["int4-g32-gptq"]["calib_error_rtn"]
    assert any(line.startswith("goal int8 perplexity change <= 1%") for line in outcome["goals"])
    assert "| int4-g32-gptq |" in (out / "tables.md").read_text()
    model, q = load_quantized(out / "model.pt")
    assert q["name"] == "int4-g32-gptq" and sum(isinstance(m, QuantLinear) for m in model.modules()) == 14
    quantize_main(
        [
            "--run",
            str(run_dir),
            "--load",
            str(out / "model.pt"),
            "--val-windows",
            "2",
            "--gen-tokens",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert "int4-g32-gptq, 14 quantized layers" in capsys.readouterr().out


@pytest.fixture(scope="module")
def bad_inputs(run_dir, tmp_path_factory):
    """{class of bad input: (arguments, what the one line must say)} for quantize.py."""
    tmp = tmp_path_factory.mktemp("bad")
    lora_model = small_model(vocab_size=GPT.from_checkpoint(run_dir / "pretrain" / "ckpt.pt").cfg.vocab_size)
    inject_lora(lora_model, ["wq"], r=2, alpha=4)
    save_lora(lora_model, tmp / "adapter.pt")
    write_manifest(tmp, stage="05_sft_lora", command="(test)", config={})
    run, quant = str(run_dir), str(run_dir / "quant" / "model.pt")
    return {
        "bits": (["--run", run, "--bits", "3"], r"bits must be 4 or 8"),
        "group size": (["--run", run, "--group-size", "48"], r"group size must be one of 32, 64, 128"),
        "group does not divide": (
            ["--run", run, "--group-size", "64", "--no-pad-groups", "--compare", "", "--targets", "down"],
            r"ffn\.down: group size 64 does not divide in_features 96.*--pad-groups",
        ),
        "w8a8 int4": (["--run", run, "--activation-bits", "8"], r"W8A8\) needs --bits 8"),
        "format": (["--run", run, "--compare", "fp32,int4-g32-awq"], r"unknown format 'int4-g32-awq'"),
        "targets": (["--run", run, "--targets", "q_proj"], r"match no linear layer; the model has"),
        "quantized as float": (
            ["--run", run, "--ckpt", quant],
            r"holds a quantized model .*pass the float checkpoint",
        ),
        "float as quantized": (
            ["--run", run, "--load", str(run_dir / "pretrain" / "ckpt.pt")],
            r"a float checkpoint, not a quantized one",
        ),
        "unmerged adapter": (
            ["--run", run, "--ckpt", str(tmp / "adapter.pt")],
            r"adapter, not a model; merge first",
        ),
        "no run": (["--run", str(tmp / "nowhere")], r"tokenizer: missing; make it first"),
    }


def test_bad_input_one_line_errors_and_nothing_touched(run_dir, bad_inputs, tmp_path, capsys):
    """Every class through run_cli in this process (cheap), nothing written, the run folder byte-identical."""
    before = tree_hashes(run_dir)
    for i, (name, (argv, expect)) in enumerate(bad_inputs.items()):
        with pytest.raises(SystemExit) as stop:
            run_cli(quantize_main, [*argv, "--out", str(tmp_path / f"out_{i}")])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), (name, err)
        assert re.search(expect, err[0]), (name, err[0])
        assert not (tmp_path / f"out_{i}").exists(), name
    assert tree_hashes(run_dir) == before


SUBPROCESS_CASES = ["group does not divide", "quantized as float"]  # a check at parse time, one at load time


def test_bad_input_as_a_real_command_prints_one_line_and_exits_2(run_dir, bad_inputs, tmp_path):
    """The issue's classes as real commands: the exit code and stderr a user sees (no traceback)."""
    before = tree_hashes(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, QUANTIZE_PY, *bad_inputs[name][0], "--out", str(tmp_path / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in SUBPROCESS_CASES
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)  # generous: a shared machine can be very slow
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)
        assert re.search(bad_inputs[name][1], lines[0]), (name, lines[0])
        assert not (tmp_path / name).exists(), name
    assert tree_hashes(run_dir) == before


def test_asymmetric_fake_quantize_keeps_zero_on_the_grid_by_hand():
    # 2 bits, one all-positive row: the range widens to [0, 4] so that 0 is a level: s = 4/3, z = 0;
    # 1, 2, 3, 4 -> codes round(0.75, 1.5, 2.25, 3) = 1, 2, 2, 3 -> 4/3, 8/3, 8/3, 4
    w_hat = fake_quantize(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 2, "channel", symmetric=False)
    torch.testing.assert_close(w_hat, torch.tensor([[4 / 3, 8 / 3, 8 / 3, 4.0]]))
