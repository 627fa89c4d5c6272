"""04_pretrain: optimizers, schedules, clipping, loss scaling, data order, the loop, best weights,
resume, run integrity (bad input, kills, locks), DDP/FSDP.

The token shards are made here (a deterministic noisy bigram chain written in the 02_tokenizer
contract format, below a data/ folder with its own manifest), so these tests do not depend on
stages 01/02 having run.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import optimizers as optim
import overfit  # imported here: it binds the real pretrain_loop.evaluate (a test scripts it)
import pretrain
import pretrain_loop
import batches
from common.cli import UserError
from common.runs import check_artifact, run_lock, write_manifest
from gpt import GPT
from pretrain_loop import TrainConfig
from forked_cli import run_forked

REPO = Path(__file__).resolve().parents[1]
VOCAB = 64
BYTES_PER_TOKEN = 3  # what the made-up meta.json claims, for bits per byte


def write_shards(root: Path, n_train=40_000, n_val=4_000, vocab=VOCAB, dtype="uint16"):
    """runs/<name>/{data,tokens}: each token picks one of 3 successors, 10% noise; manifests as 01/02 write them."""
    succ = np.random.default_rng(0).integers(0, vocab, size=(vocab, 3))

    def chain(n, seed):
        rng = np.random.default_rng(seed)
        choice, noise, rand = rng.integers(0, 3, n), rng.random(n) < 0.1, rng.integers(0, vocab, n)
        out, t = np.empty(n, dtype=dtype), 0
        for i in range(n):
            t = rand[i] if noise[i] else succ[t, choice[i]]
            out[i] = t
        return out

    data, tok = root / "data", root / "tokens"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text('{"text": "a made-up corpus"}\n')
    write_manifest(data, stage="01_data", command=f"python 01_data/prepare.py --out {root}", config={})
    tok.mkdir(parents=True, exist_ok=True)
    chain(n_train, 1).tofile(tok / "train.bin")
    chain(n_val, 2).tofile(tok / "val.bin")
    (tok / "meta.json").write_text(
        json.dumps(
            {
                "vocab_size": vocab,
                "dtype": dtype,
                "eot_id": 0,
                "n_tokens": {"train": n_train, "val": n_val},
                "n_bytes": {"train": BYTES_PER_TOKEN * n_train, "val": BYTES_PER_TOKEN * n_val},
                "tokenizer_dir": "tokenizer",
            }
        )
    )
    remake_tokens_manifest(root)
    return root


def remake_tokens_manifest(root: Path, **config):
    write_manifest(
        root / "tokens",
        stage="02_tokenizer",
        command=f"python 02_tokenizer/train_tokenizer.py --data {root}",
        config={"vocab": VOCAB, **config},
        inputs=[root / "data"],
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("run"))


def small_cfg(data, out, **kw):
    """A model and batch small enough that a 10-step run takes about a second on a shared CPU."""
    base = dict(
        data=str(data),
        out=str(out),
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=16,
        batch_size=8,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        max_steps=10,
        eval_interval=5,
        eval_batches=2,
        log_interval=1,
        attn_backend="torch",
        final_eval=False,  # the held-out bar and fact recall have their own tests (test_04_measure.py)
    )
    return TrainConfig(**{**base, **kw})


def losses(records):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# optimizers.py


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_equals_torch_adamw_over_100_steps(foreach):
    """torch.equal, not a tolerance: the same ops in the same order (m.lerp_, v.mul_.addcmul_, sqrt(v) /
    bc2**0.5 + eps). A frozen bias (no .grad) is skipped by both, weight decay included."""
    ours, ref = _mlp(), _mlp()
    for m in (ours, ref):
        m[0].bias.requires_grad_(False)
    groups = lambda m: [
        {"params": [m[0].weight, m[2].weight], "weight_decay": 0.1},
        {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0},
    ]
    opt_ours = optim.AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.95), foreach=foreach)
    opt_ref = torch.optim.AdamW(groups(ref), lr=1e-2, betas=(0.9, 0.95), foreach=foreach)
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        x = torch.randn(32, 8, generator=gen)
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(ours.parameters(), ref.parameters()):
        if p.requires_grad:
            for k in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opt_ours.state[p][k], opt_ref.state[q][k])
    assert torch.equal(ours[0].bias, _mlp()[0].bias) and ours[0].bias not in opt_ours.state
    assert set(opt_ours.state[ours[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}


def test_foreach_adamw_equals_the_per_parameter_loop():
    a, b = _mlp(), _mlp()
    opt_a = optim.AdamW(optim.param_groups(a, 0.1), lr=1e-2, betas=(0.9, 0.95))
    opt_b = optim.AdamW(optim.param_groups(b, 0.1), lr=1e-2, betas=(0.9, 0.95), foreach=True)
    for _ in range(20):
        x = torch.randn(16, 8)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_param_groups_no_decay_on_1d_and_embeddings():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

    m = M()
    decay, no_decay = optim.param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [m.proj.weight.shape]
    assert len(no_decay["params"]) == 4  # tok_emb.weight, proj.bias, norm.weight, norm.bias


def test_lamb_one_step_by_hand():
    # p = [3, 4] (norm 5), g = [1, 1]. Step 1: m^ = g, v^ = g^2, so Adam's direction is g/|g| = [1, 1].
    # With wd = 0.1: u = [1, 1] + 0.1 * [3, 4] = [1.3, 1.4], ||u|| = sqrt(3.65), trust = 5 / ||u||.
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([1.0, 1.0])
    optim.LAMB([p], lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.1).step()
    trust = 5.0 / math.sqrt(1.3**2 + 1.4**2)
    expected = torch.tensor([3.0 - 0.1 * trust * 1.3, 4.0 - 0.1 * trust * 1.4])
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)


def test_schedules_at_key_steps():
    s = optim.Schedule(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, kind="cosine")
    assert optim.lr_at(0, s) == pytest.approx(0.1)  # (0 + 1) / 10
    assert optim.lr_at(9, s) == pytest.approx(1.0)
    assert optim.lr_at(10, s) == pytest.approx(1.0)  # cosine starts at the peak
    assert optim.lr_at(60, s) == pytest.approx(0.55)  # half-way: (max + min) / 2
    assert optim.lr_at(110, s) == pytest.approx(0.1)
    assert optim.lr_at(500, s) == pytest.approx(0.1)  # stays at the floor
    w = optim.Schedule(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=100, kind="wsd", decay_frac=0.2)
    assert optim.lr_at(50, w) == 1.0 and optim.lr_at(79, w) == 1.0  # stable
    assert optim.lr_at(90, w) == pytest.approx(0.5)  # linear decay over the last 20 steps
    assert optim.lr_at(100, w) == pytest.approx(0.0)


def test_clip_grad_norm_equals_torch():
    a, b = _mlp(), _mlp()
    x = torch.randn(16, 8)
    for m in (a, b):
        (m(x).sum() * 10).backward()
    norm_ours = optim.clip_grad_norm(list(a.parameters()), 0.5)
    norm_ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    torch.testing.assert_close(norm_ours, norm_ref)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert optim.global_norm([p.grad for p in a.parameters()]) == pytest.approx(0.5, rel=1e-4)


def test_fp16_scaler_step_skips_an_overflowed_update_then_steps_and_grows():
    p = torch.nn.Parameter(torch.ones(3))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.0)
    scaler = optim.DynamicLossScaler(init_scale=1024.0, growth_interval=2)
    scaler.scale_loss((p * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
    assert torch.equal(p.grad, torch.tensor([1024.0, 2048.0, 3072.0]))
    assert scaler.unscale_([p]) is False
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0]))
    p.grad = torch.tensor([1024.0, float("inf"), 3072.0])  # an overflowed backward
    found = scaler.unscale_([p])
    scaler.step(opt, found)  # the loop's own call
    assert found is True and torch.equal(p.detach(), torch.ones(3)) and not opt.state
    assert scaler.scale == 512.0  # halved
    for _ in range(2):  # two good steps: Adam moves every weight by ~lr
        p.grad = torch.tensor([512.0, 1024.0, 1536.0])
        scaler.step(opt, scaler.unscale_([p]))
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.8), atol=1e-5, rtol=0)
    assert scaler.scale == 1024.0  # doubled after growth_interval good steps
    fresh = optim.DynamicLossScaler(enabled=True)
    fresh.load_state_dict(optim.DynamicLossScaler(enabled=False).state_dict())
    assert fresh.scale == 2.0**16  # an fp32 run's scaler has no scale to inherit


def test_betas_come_back_as_a_tuple_after_load_full_state():
    from torch_parallel import full_state, load_full_state

    a, b = _mlp(), _mlp()
    opt_a = optim.AdamW(a.parameters(), lr=1e-2, betas=(0.9, 0.95))
    opt_b = optim.AdamW(b.parameters(), lr=1e-2, betas=(0.5, 0.5))
    a(torch.randn(2, 8)).sum().backward()
    opt_a.step()
    load_full_state(b, opt_b, *full_state(a, opt_a, world=1))
    assert opt_b.param_groups[0]["betas"] == (0.9, 0.95) and type(opt_b.param_groups[0]["betas"]) is tuple
    assert opt_b.state_dict()["param_groups"] == opt_a.state_dict()["param_groups"]


# ----------------------------------------------------------------------------------------------
# batches.py: data order, the unigram baseline, bits per byte


def test_batches_are_a_function_of_seed_and_step_and_ranks_partition_them():
    a = batches.batch_starts(10_000, 16, 8, seed=1, step=5)
    assert np.array_equal(a, batches.batch_starts(10_000, 16, 8, seed=1, step=5))
    assert not np.array_equal(a, batches.batch_starts(10_000, 16, 8, seed=1, step=6))
    assert a.max() <= 10_000 - 17  # room for x and the shifted y
    parts = [batches.rank_rows(a, k, r, world=2, micro_batch=2) for k in range(2) for r in range(2)]
    assert np.array_equal(np.concatenate(parts), a)  # 2 micro-steps x 2 ranks cover the batch
    data = np.arange(100, dtype=np.uint16)
    x, y = batches.get_batch(data, np.array([3, 50]), 4, "cpu")
    assert x.tolist() == [[3, 4, 5, 6], [50, 51, 52, 53]] and y.tolist() == [[4, 5, 6, 7], [51, 52, 53, 54]]


def test_unigram_baseline_and_bits_per_byte_by_hand():
    train = np.array([0, 0, 0, 1], dtype=np.uint16)  # add-one counts over vocab 2: [4, 2]
    assert batches.unigram_loss(train, np.array([0, 1]), 2) == pytest.approx(
        -(math.log(4 / 6) + math.log(2 / 6)) / 2
    )
    meta = {"n_tokens": {"val": 100}, "n_bytes": {"val": 400}}  # 4 bytes per token
    assert batches.bits_per_byte(2.0, meta) == pytest.approx(2.0 / 4 / math.log(2))
    assert batches.bits_per_byte(2.0, {"n_tokens": {"val": 100}}) is None  # an older meta.json


# ----------------------------------------------------------------------------------------------
# The loop


def test_training_beats_unigram_and_leaves_a_complete_run(shards, tmp_path):
    out = tmp_path / "pretrain"
    res = pretrain_loop.train(small_cfg(shards, out, max_steps=40, eval_interval=20))
    assert res["val_loss"] < res["unigram_val_loss"] - 0.3
    assert res["val_bpb"] == pytest.approx(res["val_loss"] / BYTES_PER_TOKEN / math.log(2))
    outcome = json.loads((out / "outcome.json").read_text())
    assert outcome["status"] == "max_steps" and outcome["weights"] == "best.pt" and outcome["val_bpb"] > 0
    manifest = check_artifact(out, made_by="(test)")  # what a later stage checks: complete, intact
    assert manifest["status"] == "complete"
    assert set(manifest["files"]) == {"ckpt.pt", "best.pt", "metrics.jsonl", "loss.png", "outcome.json"}
    ckpt, best = (torch.load(out / f, weights_only=True) for f in ("ckpt.pt", "best.pt"))
    assert ckpt["step"] == 40 and {"optimizer", "rng", "scaler", "data"} <= set(ckpt)
    assert "optimizer" not in best and best["val_loss"] == res["best_val_loss"]
    assert not Path(ckpt["tokenizer"]).is_absolute()  # the run folder can move
    assert (out / ckpt["tokenizer"]).resolve() == (shards / "tokenizer").resolve()


def test_accumulation_equals_one_big_batch(shards, tmp_path):
    # fp32: 4 micro-batches of 2 with loss/4 vs one batch of 8; only summation order differs.
    one = pretrain_loop.train(small_cfg(shards, tmp_path / "one", max_steps=5, micro_batch=8))
    acc = pretrain_loop.train(small_cfg(shards, tmp_path / "acc", max_steps=5, micro_batch=2))
    for a, b in zip(losses(one["records"]), losses(acc["records"])):
        assert a[0] == b[0]
        assert (a[1] or a[2]) == pytest.approx(b[1] or b[2], abs=1e-5)
    wa, wb = weights(tmp_path / "one" / "ckpt.pt"), weights(tmp_path / "acc" / "ckpt.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_kill_and_resume_is_bit_exact(shards, tmp_path):
    kw = dict(max_steps=12, eval_interval=4, dropout=0.1)  # dropout: the RNG state must resume too
    full = pretrain_loop.train(small_cfg(shards, tmp_path / "full", **kw))
    killed = pretrain_loop.train(small_cfg(shards, tmp_path / "cut", stop_at=10, **kw))
    assert killed["status"] == "stop_at"  # steps 9-10 are lost, ckpt is at step 8
    resumed = pretrain_loop.train(small_cfg(shards, tmp_path / "cut", resume=True, **kw))
    assert losses(resumed["records"]) == losses(full["records"])
    wa = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    wb = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    assert same_weights(wa["model"], wb["model"])
    sa, sb = wa["optimizer"]["state"], wb["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_early_stopping_keeps_the_best_weights_and_resets_its_counter(shards, tmp_path, monkeypatch):
    # The val losses are scripted (one per eval, every 2 steps); the weights are trained for real.
    # Best at step 4, worse at 6, better again at 8 (the counter resets), then 3 worse evals in a row:
    # with patience 3 the run stops at step 14 (without the reset it would stop at step 12).
    script = iter([3.0, 2.5, 2.7, 2.4, 2.6, 2.8, 2.9, 2.0, 2.0])
    monkeypatch.setattr(pretrain_loop, "evaluate", lambda *a, **k: next(script))
    es = small_cfg(shards, tmp_path / "es", max_steps=30, eval_interval=2, patience=3)
    res = pretrain_loop.train(es)
    assert (res["status"], res["steps"], res["best_step"], res["best_val_loss"]) == ("early_stop", 14, 8, 2.4)
    best = torch.load(tmp_path / "es" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "es" / "ckpt.pt", weights_only=True)
    assert (best["step"], last["step"], last["best"]["bad_evals"]) == (8, 14, 3)
    assert not same_weights(best["model"], last["model"])  # what was kept is not the last weights ...
    script = iter([3.0, 2.5, 2.7, 2.4])
    pretrain_loop.train(dataclasses.replace(es, out=str(tmp_path / "to8"), stop_at=8))
    assert same_weights(best["model"], weights(tmp_path / "to8" / "ckpt.pt"))  # ... but the step-8 weights
    assert pretrain_loop.train(dataclasses.replace(es, resume=True))["status"] == "already_finished"
    row = overfit.restored_best(es)  # overfit.py's `early stop` row measures best.pt
    model = GPT.from_checkpoint(tmp_path / "to8" / "ckpt.pt")
    assert row["best_step"] == 8 and row["val"] == pytest.approx(
        overfit.evaluate(model, pretrain_loop.load_shards(shards, 16)[1], 16, es.eval_batches * 8, 8, "cpu"),
        abs=1e-6,
    )


def test_divergence_stops_and_names_the_checkpoint_on_disk(shards, tmp_path, monkeypatch):
    real_step = pretrain_loop.train_step
    monkeypatch.setattr(
        pretrain_loop,
        "train_step",  # step 5 (0-based) returns a nan loss
        lambda s, step: (float("nan"), 1.0, False) if step == 5 else real_step(s, step),
    )
    with pytest.raises(pretrain_loop.Diverged, match=r"at step 5: training diverged; .*ckpt.pt \(step 4\)"):
        pretrain_loop.train(small_cfg(shards, tmp_path, max_steps=10, eval_interval=2))
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 4
    assert json.loads((tmp_path / "outcome.json").read_text())["status"] == "diverged"
    with pytest.raises(UserError, match="unfinished run \\(diverged\\)"):
        check_artifact(tmp_path, made_by="(test)")  # a later stage refuses it


def test_a_real_divergence_before_the_first_checkpoint(shards, tmp_path):
    with pytest.raises(pretrain_loop.Diverged, match="no checkpoint of this run was written yet"):
        pretrain_loop.train(
            small_cfg(shards, tmp_path, max_steps=50, eval_interval=10, lr=1e30, min_lr=1e30, grad_clip=0)
        )
    assert not (tmp_path / "ckpt.pt").exists()


@pytest.fixture(scope="module")
def fp32_run(shards, tmp_path_factory):
    return pretrain_loop.train(
        small_cfg(shards, tmp_path_factory.mktemp("fp32"), max_steps=6, eval_interval=3)
    )


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_mixed_precision_through_train_matches_fp32(shards, tmp_path, fp32_run, dtype):
    # Autocast runs the matmuls in 16 bits (on CPU too); weights, grads and optimizer stay fp32. The
    # gradient norm is measured after unscaling, so a scaler that did not undo its scale shows here.
    res = pretrain_loop.train(small_cfg(shards, tmp_path, max_steps=6, eval_interval=3, dtype=dtype))
    for ours, ref in zip(res["records"], fp32_run["records"], strict=True):
        if "loss" in ours:
            assert ours["loss"] == pytest.approx(ref["loss"], abs=0.05)
            assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=0.1)
            assert ours["loss_scale"] == (2.0**16 if dtype == "fp16" else 1.0) and not ours["skipped"]
        else:
            assert ours["val_loss"] == pytest.approx(ref["val_loss"], abs=0.05)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["scaler"]["enabled"] == (dtype == "fp16")


PARALLEL_MODES = ("ddp", "fsdp", "ddp_by_hand", "zero1", "zero2")  # torch's, then the hand-written ones


def test_every_parallel_mode_on_two_processes_equals_single_process(shards, tmp_path):
    kw = dict(max_steps=6, eval_interval=3, log_interval=1)
    single = pretrain_loop.train(small_cfg(shards, tmp_path / "single", **kw))
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "04_pretrain")!r})
        import torch.distributed as dist
        import pretrain_loop
        for mode in {PARALLEL_MODES!r}:
            cfg = pretrain_loop.TrainConfig(**{{**{small_cfg(shards, "", **kw).__dict__!r},
                                          "out": {str(tmp_path)!r} + "/" + mode, "parallel": mode}})
            pretrain_loop.train(cfg)
        dist.destroy_process_group()
    """)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(driver)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = weights(tmp_path / "single" / "ckpt.pt")
    for mode in PARALLEL_MODES:
        ckpt = torch.load(tmp_path / mode / "ckpt.pt", weights_only=True)
        assert ckpt["data"]["world"] == 2
        records = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(losses(single["records"]), losses(records), strict=True):
            assert a[0] == b[0] and (a[1] or a[2]) == pytest.approx(b[1] or b[2], abs=1e-5), mode
        for k in ref:  # the all-reduce sums in another order: equal to float rounding
            torch.testing.assert_close(ckpt["model"][k], ref[k], atol=1e-5, rtol=0, msg=mode)
    # checkpoints written by 2 FSDP or ZeRO-2 ranks resume in one process (full state dicts)
    for mode in ("fsdp", "zero2"):
        pretrain_loop.train(
            small_cfg(
                shards,
                tmp_path / mode,
                resume=True,
                max_steps=8,
                eval_interval=3,
                allow_config_change=["max_steps"],
            )
        )


# ----------------------------------------------------------------------------------------------
# The function API refuses what cannot run, before writing anything


def test_config_checks_name_the_field_and_the_fix(shards, tmp_path):
    cases = [
        (dict(batch_size=8, micro_batch=3), "not divisible by micro_batch 3"),
        (dict(warmup_steps=10, max_steps=10), "must be fewer than --max-steps 10"),
        (dict(min_lr=1.0, lr=0.1), "at most --lr"),
        (dict(n_embd=30, n_head=4), "not divisible by n_head"),
        (dict(lr=-1.0), "below its minimum"),
        (dict(allow_config_change=["max_steps"]), "is for --resume"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message):
            pretrain_loop.train(small_cfg(shards, tmp_path / "never", **kw))
    assert not (tmp_path / "never").exists()
    pretrain_loop.train(small_cfg(shards, tmp_path / "run", max_steps=4, eval_interval=2, stop_at=2))
    with pytest.raises(UserError, match="n_embd 32 -> 64"):
        pretrain_loop.train(
            small_cfg(shards, tmp_path / "run", max_steps=4, eval_interval=2, n_embd=64, resume=True)
        )


# ----------------------------------------------------------------------------------------------
# Run integrity through the command line. Every case runs `pretrain.py <argv>` in its own process,
# forked from one driver process that imported torch once (a fresh interpreter per case would spend
# ~3 s of CPU on `import torch` alone); exit code, stdout and stderr are the command's own.


def _snapshot(root: Path) -> dict:
    """{relative path: sha256} of every file under root, hidden ones included. Lock files are left
    out: they are the locking mechanism itself (taking the lock writes the holder's pid)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def _inject_fault(nth: int, signame: str):
    """Make the nth write of ckpt.pt send `signame` to this process half-way through the file."""
    real_save, count = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        if ".ckpt.pt." in str(f):  # atomic_path's temp file for ckpt.pt
            count[0] += 1
            if count[0] == nth:
                Path(f).write_bytes(b"PK\x03\x04" + bytes(4096))  # the start of a zip archive
                if signame == "SIGINT":  # a terminal's Ctrl-C reaches Python's handler, even when this
                    signal.signal(signal.SIGINT, signal.default_int_handler)  # suite runs as a background job
                os.kill(os.getpid(), getattr(signal, signame))
                time.sleep(30)  # SIGINT interrupts this; SIGKILL never returns
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def _fork_driver(cases_path):
    """Run each case of cases_path (a JSON list of {argv, fault, snapshot}) in a forked child."""
    from common.files import pyplot
    from common.runs import code_version
    import torch._dynamo  # noqa: F401  (what every run imports on its first use: pay it before forking)

    pyplot(), code_version()  # (optimizer, plot, manifest): pay it once
    cases, results = json.loads(Path(cases_path).read_text()), []
    for case in cases:
        t0 = time.time()
        fault = (lambda: _inject_fault(*case["fault"])) if case.get("fault") else None
        result = run_forked(pretrain.main, case["argv"], before=fault)
        results.append({**result, "s": time.time() - t0, "files": _snapshot(Path(case["snapshot"]))})
    Path(cases_path + ".out").write_text(json.dumps(results))


def run_cases(cases: list, tmp: Path) -> list:
    """Run the cases through _fork_driver in one fresh interpreter; their results, in order."""
    path = tmp / "cases.json"
    path.write_text(json.dumps(cases))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [
                str(REPO / d)
                for d in ("tests", "", "01_data", "02_tokenizer", "03_model", "04_pretrain", "kernels")
            ]
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, test_04_pretrain as t; t._fork_driver(sys.argv[1])", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(str(path) + ".out").read_text())


TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=16,
    block_size=16,
    batch_size=4,
    lr=3e-3,
    min_lr=3e-4,
    warmup_steps=1,
    max_steps=4,
    eval_interval=2,
    eval_batches=1,
    log_interval=1,
    attn_backend="torch",
)


def cli_argv(root: Path, **kw) -> list:
    """The flags of the TINY run in `root`, as pretrain_loop.command_for writes them."""
    return shlex.split(pretrain_loop.command_for(TrainConfig(data=str(root), **{**TINY, **kw})))[2:]


def _flip_byte(path: Path, at=100):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, n_bytes: int):
    path.write_bytes(path.read_bytes()[:-n_bytes])


def _edit_meta(root: Path, **changes):
    meta = {**json.loads((root / "tokens" / "meta.json").read_text()), **changes}
    (root / "tokens" / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


TOK = lambda root: root / "tokens"
BPE = "rerun `python 02_tokenizer/train_tokenizer.py --data"
# (case, the run folder it starts from, what is done to it first, flags after the TINY run's, the error)
BAD_INPUT = [
    ("unknown flag", "plain", None, ["--bogus"], "unrecognized arguments: --bogus"),
    ("value below its minimum", "plain", None, ["--lr", "-1"], "--lr -1.0 is below its minimum"),
    ("not a number", "plain", None, ["--max-steps", "ten"], "invalid int value: 'ten'"),
    ("unknown choice", "plain", None, ["--dtype", "fp8"], "invalid choice: 'fp8'"),
    ("no --data", "plain", None, None, "--data is required"),
    (
        "warmup as long as the run",
        "plain",
        None,
        ["--warmup-steps", "6", "--max-steps", "6"],
        "--warmup-steps 6 must be fewer than --max-steps 6",
    ),
    (
        "batch that does not split",
        "plain",
        None,
        ["--batch-size", "6", "--micro-batch", "4"],
        "--batch-size 6 is not divisible by micro_batch 4",
    ),
    (
        "width not divisible by heads",
        "plain",
        None,
        ["--n-embd", "18", "--n-head", "4"],
        "not divisible by n_head",
    ),
    ("--resume and --overwrite", "finished", None, ["--resume", "--overwrite"], "pass one"),
    ("--allow-config-change lr", "finished", None, ["--resume", "--allow-config-change", "lr"], r"\(not lr"),
    (
        "no tokens/",
        "plain",
        lambda r: shutil.rmtree(TOK(r)),
        [],
        "tokens: missing; make it first with `python 02_tokenizer/train_tokenizer.py --data",
    ),
    (
        "incomplete tokens/",
        "plain",
        lambda r: (TOK(r) / "manifest.json").unlink(),
        [],
        f"tokens: incomplete .*{BPE}",
    ),
    (
        "stale tokens/",
        "plain",
        lambda r: write_manifest(r / "data", stage="01_data", command="x", config={"new": 1}),
        [],
        f"tokens is stale: .*{BPE}",
    ),
    (
        "damaged shard",
        "plain",
        lambda r: _flip_byte(TOK(r) / "val.bin"),
        [],
        f"val.bin: changed or damaged .*{BPE}",
    ),
    (
        "truncated shard",
        "plain",
        lambda r: _truncate(TOK(r) / "train.bin", 1001),
        [],
        f"train.bin: changed or damaged .*{BPE}",
    ),
    (
        "truncated shard, manifest remade",
        "plain",
        lambda r: (_truncate(TOK(r) / "train.bin", 1), remake_tokens_manifest(r)),
        [],
        f"train.bin: 79999 bytes is not a whole number of uint16 tokens .*{BPE}",
    ),
    (
        "corrupt meta.json",
        "plain",
        lambda r: (TOK(r) / "meta.json").write_text("{not json"),
        [],
        f"meta.json: changed or damaged .*{BPE}",
    ),
    (
        "corrupt meta.json, manifest remade",
        "plain",
        lambda r: ((TOK(r) / "meta.json").write_text("{not json"), remake_tokens_manifest(r)),
        [],
        f"meta.json: corrupt or truncated .*{BPE}",
    ),
    (
        "meta.json without vocab_size",
        "plain",
        lambda r: (_edit_meta(r, vocab_size=None), remake_tokens_manifest(r)),
        [],
        f"needs an integer vocab_size .*{BPE}",
    ),
    (
        "ids beyond the vocabulary",
        "plain",
        lambda r: (_edit_meta(r, vocab_size=32), remake_tokens_manifest(r)),
        [],
        f"token id 63 >= vocab_size 32 .*different tokenizer: {BPE}",
    ),
    ("context longer than the data", "plain", None, ["--block-size", "5000"], r"fewer than block_size \+ 2"),
    ("--device cuda without CUDA", "plain", None, ["--device", "cuda"], "--device cuda: no CUDA device here"),
    (
        "--out is a file",
        "plain",
        lambda r: (r / "a_file").write_text("x"),
        ["--out", "{root}/a_file"],
        "a_file is a file, not a folder",
    ),
    (
        "concurrent writer",
        "finished",
        None,
        ["--overwrite"],
        rf"pretrain is being written by another process \(pid {os.getpid()}\)",
    ),
    (
        "fresh run into a finished run",
        "finished",
        None,
        [],
        "pretrain already holds a run .*pass --overwrite",
    ),
    (
        "--resume, another --batch-size",
        "finished",
        None,
        ["--resume", "--batch-size", "8"],
        "batch_size 4 -> 8",
    ),
    ("--resume, another --seed", "finished", None, ["--resume", "--seed", "7"], "seed 1337 -> 7"),
    ("--resume, another --lr", "finished", None, ["--resume", "--lr", "0.01"], "lr 0.003 -> 0.01"),
    (
        "--resume, more steps unasked",
        "finished",
        None,
        ["--resume", "--max-steps", "8"],
        "max_steps 4 -> 8.*--allow-config-change max_steps",
    ),
    ("--resume with nothing there", "plain", None, ["--resume"], "pretrain holds no run"),
    (
        "--resume from a corrupt ckpt.pt",
        "finished",
        lambda r: _truncate(r / "pretrain" / "ckpt.pt", 5000),
        ["--resume"],
        "ckpt.pt: corrupt or truncated checkpoint",
    ),
    (
        "--resume after tokens/ was remade",
        "finished",
        lambda r: remake_tokens_manifest(r, remade=True),
        ["--resume"],
        "trained on other tokens",
    ),
]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every BAD_INPUT case, then the fault scenarios, through one driver: ({case: (result, files
    before, run folder)}, the folder of an uninterrupted TINY run)."""
    tmp = tmp_path_factory.mktemp("cli")
    bases = {"plain": write_shards(tmp / "plain"), "finished": tmp / "finished"}
    shutil.copytree(bases["plain"], bases["finished"])
    pretrain_loop.train(TrainConfig(data=str(bases["finished"]), quiet=True, **TINY))
    cases, names = [], []

    def copy_of(base, damage=None):
        root = tmp / f"case{len(cases)}"
        shutil.copytree(bases[base], root)
        if damage:
            damage(root)
        return root

    def add(name, root, argv, fault=None):
        cases.append({"argv": argv, "fault": fault, "snapshot": str(root)})
        names.append((name, _snapshot(root), root))

    for name, base, damage, extra, _ in BAD_INPUT:
        root = copy_of(base, damage)
        add(
            name,
            root,
            ["--max-steps", "4"]
            if extra is None
            else cli_argv(root) + [a.replace("{root}", str(root)) for a in extra],
        )
    root = copy_of("plain")  # consecutive steps share a folder
    add("kill -9 during a save", root, cli_argv(root), fault=[2, "SIGKILL"])
    add("resume after kill -9", root, cli_argv(root) + ["--resume"])
    root = copy_of("plain")
    add("Ctrl-C during a save", root, cli_argv(root), fault=[2, "SIGINT"])
    root = copy_of("finished")
    add("resume a finished run", root, cli_argv(root) + ["--resume"])
    add(
        "resume with more steps",
        root,
        cli_argv(root) + ["--resume", "--max-steps", "6", "--allow-config-change", "max_steps"],
    )
    root = copy_of("finished")
    add("--overwrite a finished run", root, cli_argv(root) + ["--overwrite", "--seed", "5"])

    locked = next(root for name, _, root in names if name == "concurrent writer")
    with run_lock(locked / "pretrain"):  # this test process is the other writer
        results = run_cases(cases, tmp)
    return {name: (res, before, root) for (name, before, root), res in zip(names, results)}, bases["finished"]


def error_lines(res) -> list:
    return [line for line in res["stderr"].splitlines() if line.strip()]


@pytest.mark.parametrize("case", [c[0] for c in BAD_INPUT])
def test_bad_input_is_one_error_line_and_changes_nothing(cli, case):
    if case == "--device cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res, before, _ = cli[0][case]
    message = next(c[4] for c in BAD_INPUT if c[0] == case)
    assert res["rc"] == 2 and "Traceback" not in res["stderr"], res["stderr"][-2000:]
    lines = error_lines(res)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(message, lines[0]), lines[0]
    assert res["files"] == before  # nothing written, removed or changed


def test_kill_9_during_a_save_leaves_an_orphan_that_the_next_start_removes(cli):
    results, uninterrupted = cli
    killed, _, root = results["kill -9 during a save"]
    assert killed["rc"] == -signal.SIGKILL
    assert len([f for f in killed["files"] if f.startswith("pretrain/.ckpt.pt.") and f.endswith(".tmp")]) == 1
    resumed = results["resume after kill -9"][0]
    assert resumed["rc"] == 0 and "removed 1 temp file(s)" in resumed["stderr"], resumed["stderr"]
    assert not any(f.endswith(".tmp") for f in resumed["files"])
    assert check_artifact(root / "pretrain", made_by="(test)")["status"] == "complete"
    assert same_weights(
        weights(root / "pretrain" / "ckpt.pt"), weights(uninterrupted / "pretrain" / "ckpt.pt")
    )


def test_ctrl_c_during_a_save_exits_130_with_one_line_and_keeps_the_last_checkpoint(cli):
    res, _, root = cli[0]["Ctrl-C during a save"]
    resume = pretrain_loop.command_for(TrainConfig(data=str(root), **TINY), resume=True)
    assert res["rc"] == 130 and "Traceback" not in res["stderr"]
    assert error_lines(res) == [
        f"interrupted; at step 4; continue from the checkpoint of step 2 with `{resume}`"
    ]
    assert not any(f.endswith(".tmp") for f in res["files"])  # the write in progress is absent ...
    assert (
        torch.load(root / "pretrain" / "ckpt.pt", weights_only=True)["step"] == 2
    )  # ... the last one complete
    with pytest.raises(UserError, match="unfinished run \\(running\\).*--resume"):
        check_artifact(root / "pretrain", made_by="(test)")


def test_resuming_a_finished_run_changes_nothing_unless_it_is_given_more_steps(cli):
    res, before, root = cli[0]["resume a finished run"]
    assert res["rc"] == 0 and "finished at step 4 (max_steps 4), nothing to do" in res["stdout"], res
    assert res["files"] == before  # every file, byte for byte
    more = cli[0]["resume with more steps"][0]
    assert more["rc"] == 0, more["stderr"]
    assert torch.load(root / "pretrain" / "ckpt.pt", weights_only=True)["step"] == 6
    assert json.loads((root / "pretrain" / "outcome.json").read_text())["steps"] == 6
    assert check_artifact(root / "pretrain", made_by="(test)")["status"] == "complete"


def test_overwrite_removes_the_old_run_first_and_says_so(cli):
    res, before, root = cli[0]["--overwrite a finished run"]
    assert res["rc"] == 0 and "--overwrite: removed the previous run" in res["stderr"]
    manifest = check_artifact(root / "pretrain", made_by="(test)")
    assert manifest["config"]["seed"] == 5 and res["files"]["pretrain/ckpt.pt"] != before["pretrain/ckpt.pt"]
    assert torch.load(root / "pretrain" / "best.pt", weights_only=True)["tokenizer"] == "../tokenizer"


def test_the_script_itself_follows_the_error_contract(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "04_pretrain" / "pretrain.py"), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_help_shows_each_presets_values(capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "transformer blocks (default 4; preset micro 1, small 6, gpt2 12)" in out
    assert "peak learning rate (default 0.004; preset micro 0.01, small 0.001, gpt2 0.0006)" in out


# ----------------------------------------------------------------------------------------------
# scaling.py and overfit.py


def test_scaling_fit_recovers_a_known_law():
    import scaling

    N, D = np.meshgrid([1e4, 3e4, 1e5, 3e5, 1e6], [1e5, 3e5, 1e6])
    N, D = N.ravel(), D.ravel()
    L = 1.5 + 40 * N**-0.35 + 300 * D**-0.3
    fit = scaling.fit_chinchilla(N, D, L)
    assert fit["alpha"] == pytest.approx(0.35, abs=0.03) and fit["beta"] == pytest.approx(0.3, abs=0.03)
    assert fit["E"] == pytest.approx(1.5, abs=0.1) and fit["rms"] < 1e-3
    alpha, A = scaling.fit_power_law_in_n(np.array([1e4, 1e5, 1e6]), 7 * np.array([1e4, 1e5, 1e6]) ** -0.1)
    assert alpha == pytest.approx(0.1) and A == pytest.approx(7)


def test_overfit_summary_reads_the_last_eval_and_the_best():
    steps, train, val = [10, 20, 30], [3.0, 2.0, 1.0], [3.5, 3.0, 3.4]
    row = overfit.summarize("baseline", steps, train, val)
    assert (row["val"], row["gap"], row["best_val"], row["best_step"]) == (3.4, pytest.approx(2.4), 3.0, 20)


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("overfit", [], "--data is required"),
        ("overfit", ["--data", "{tmp}", "--train-tokens", "100"], "too small for block_size 64"),
        (
            "overfit",
            ["--data", "{tmp}"],
            "tokens: missing; make it first with `python 02_tokenizer/train_tokenizer.py",
        ),
        ("scaling", ["--data", "{tmp}", "--steps", "50"], "at least 2 different budgets"),
        ("scaling", ["--data", "{tmp}", "--sizes", "9"], "--sizes 9 is above its maximum 6"),
        ("scaling", ["--data", "{tmp}"], "tokens: missing"),
        ("bench_pretrain", ["--cpu-steps", "0"], "--cpu-steps 0 is below its minimum 1"),
        ("bench_pretrain", ["--data", "{tmp}"], "tokens: missing"),
    ],
)
def test_the_other_commands_refuse_bad_input_before_writing(tmp_path, module, argv, message):
    main = __import__(module).main
    with pytest.raises(UserError, match=message):
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert not list(tmp_path.iterdir())  # nothing written


# ----------------------------------------------------------------------------------------------
# Hand-computed edges of the exercised functions (issue 26: each wrong answer in
# tests/exercise_mutants.py must fail one of these)


def test_clip_grad_norm_leaves_small_off_and_non_finite_gradients_alone():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])  # norm 5
    assert optim.clip_grad_norm([p], 10.0).item() == pytest.approx(5.0)  # min(1, 10 / 5) = 1: unchanged
    assert p.grad.tolist() == [3.0, 4.0]
    assert optim.clip_grad_norm([p], 0.0).item() == pytest.approx(5.0)  # max_norm 0: clipping is off
    assert p.grad.tolist() == [3.0, 4.0]
    assert optim.clip_grad_norm([p], 1.0).item() == pytest.approx(5.0)  # the norm before clipping
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]))  # scaled by 1 / (5 + 1e-6)
    p.grad = torch.tensor([float("inf"), 1.0])
    assert torch.isinf(optim.clip_grad_norm([p], 1.0))
    assert p.grad.tolist() == [float("inf"), 1.0]  # left for the caller to skip, not turned into nan


def test_wsd_decays_to_min_lr_and_loss_scaler_counts_good_steps_in_a_row():
    w = optim.Schedule(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=100, kind="wsd", decay_frac=0.2)
    assert optim.lr_at(90, w) == pytest.approx(0.55)  # 1 + (0.1 - 1) · 10/20
    assert optim.lr_at(100, w) == pytest.approx(0.1)
    s = optim.DynamicLossScaler(init_scale=64.0, growth_interval=3)
    # good, good, overflow (halve, count restarts), three good (double), three good (double again)
    for found, want in zip([0, 0, 1, 0, 0, 0, 0, 0, 0], [64, 64, 32, 32, 32, 64, 64, 64, 128]):
        s.update(bool(found))
        assert s.scale == want


def test_unigram_baseline_smooths_an_unseen_val_token():
    train, val = np.array([0, 0, 0, 1], dtype=np.uint16), np.array([0, 2], dtype=np.uint16)
    # add-one counts of train over vocab 3: [4, 2, 1] of 7; val: -(ln 4/7 + ln 1/7) / 2 nats
    assert batches.unigram_loss(train, val, 3) == pytest.approx(-(math.log(4 / 7) + math.log(1 / 7)) / 2)
