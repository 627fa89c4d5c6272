"""04_pretrain: optimizers, schedules, clipping, loss scaling, data order, the loop, resume, DDP/FSDP.

The token shards are made here (a deterministic noisy bigram chain written in the 02_tokenizer
contract format), so these tests do not depend on stages 01/02 having run.
"""
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import optimizers as optim
import pretrain
from common import UserError, write_manifest
from pretrain import TrainConfig

REPO = Path(__file__).resolve().parents[1]
VOCAB = 64


def write_shards(root: Path, n_train=40_000, n_val=4_000, vocab=VOCAB, dtype="uint16"):
    """runs/<name>/tokens/{train,val}.bin + meta.json: each token picks one of 3 successors, 10% noise."""
    succ = np.random.default_rng(0).integers(0, vocab, size=(vocab, 3))

    def chain(n, seed):
        rng = np.random.default_rng(seed)
        choice, noise, rand = rng.integers(0, 3, n), rng.random(n) < 0.1, rng.integers(0, vocab, n)
        out, t = np.empty(n, dtype=dtype), 0
        for i in range(n):
            t = rand[i] if noise[i] else succ[t, choice[i]]
            out[i] = t
        return out

    tok = root / "tokens"
    tok.mkdir(parents=True, exist_ok=True)
    train, val = chain(n_train, 1), chain(n_val, 2)
    train.tofile(tok / "train.bin")
    val.tofile(tok / "val.bin")
    (tok / "meta.json").write_text(json.dumps({
        "vocab_size": vocab, "dtype": dtype, "eot_id": 0,
        "n_tokens": {"train": n_train, "val": n_val}, "tokenizer_dir": "tokenizer"}))
    write_manifest(tok, stage="02_tokenizer", command="(test shards)", config={"vocab": vocab})
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("run"))


def small_cfg(data, out, **kw):
    """A model and batch small enough that a 10-step run takes about a second on a shared CPU."""
    base = dict(data=str(data), out=str(out), n_layer=2, n_head=2, n_embd=32, block_size=16,
                batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=10, eval_interval=5,
                eval_batches=2, log_interval=1, attn_backend="torch")
    return TrainConfig(**{**base, **kw})


def losses(records):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]


# ----------------------------------------------------------------------------------------------
# optimizers.py

def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def test_adamw_equals_torch_adamw_over_100_steps():
    ours, ref = _mlp(), _mlp()
    opt_ours = optim.AdamW(optim.param_groups(ours, 0.1), lr=1e-2, betas=(0.9, 0.95))
    opt_ref = torch.optim.AdamW(optim.param_groups(ref, 0.1), lr=1e-2, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        x = torch.randn(32, 8, generator=gen)
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    assert set(opt_ours.state[next(ours.parameters())]) == {"step", "exp_avg", "exp_avg_sq"}


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
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


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
    assert len(no_decay["params"]) == 4   # tok_emb.weight, proj.bias, norm.weight, norm.bias


def test_lamb_one_step_by_hand():
    # p = [3, 4] (norm 5), g = [1, 1]. Step 1: m^ = g, v^ = g^2, so Adam's direction is g/|g| = [1, 1].
    # With wd = 0.1: u = [1, 1] + 0.1 * [3, 4] = [1.3, 1.4], ||u|| = sqrt(3.65), trust = 5 / ||u||.
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([1.0, 1.0])
    optim.LAMB([p], lr=0.1, betas=(0.9, 0.999), eps=0.0, weight_decay=0.1).step()
    trust = 5.0 / math.sqrt(1.3 ** 2 + 1.4 ** 2)
    expected = torch.tensor([3.0 - 0.1 * trust * 1.3, 4.0 - 0.1 * trust * 1.4])
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)


def test_schedules_at_key_steps():
    s = optim.Schedule(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, kind="cosine")
    assert optim.lr_at(0, s) == pytest.approx(0.1)           # (0 + 1) / 10
    assert optim.lr_at(9, s) == pytest.approx(1.0)
    assert optim.lr_at(10, s) == pytest.approx(1.0)          # cosine starts at the peak
    assert optim.lr_at(60, s) == pytest.approx(0.55)         # half-way: (max + min) / 2
    assert optim.lr_at(110, s) == pytest.approx(0.1)
    assert optim.lr_at(500, s) == pytest.approx(0.1)         # stays at the floor
    w = optim.Schedule(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=100, kind="wsd", decay_frac=0.2)
    assert optim.lr_at(50, w) == 1.0 and optim.lr_at(79, w) == 1.0   # stable
    assert optim.lr_at(90, w) == pytest.approx(0.5)          # linear decay over the last 20 steps
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


def test_fp16_scaler_skips_an_inf_step_then_grows():
    p = torch.nn.Parameter(torch.ones(3))
    opt = optim.AdamW([p], lr=0.1)
    scaler = optim.DynamicLossScaler(init_scale=1024.0, growth_interval=2)
    scaler.scale_loss((p * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
    assert torch.equal(p.grad, torch.tensor([1024.0, 2048.0, 3072.0]))
    assert scaler.unscale_([p]) is False
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0]))
    p.grad[1] = float("inf")                                 # an overflowed backward
    found = scaler.unscale_([p])
    if not found:
        opt.step()
    scaler.update(found)
    assert found and torch.equal(p.detach(), torch.ones(3)) and scaler.scale == 512.0
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 1024.0                            # doubled after growth_interval good steps


# ----------------------------------------------------------------------------------------------
# Data order and the unigram baseline

def test_batches_are_a_function_of_seed_and_step_and_ranks_partition_them():
    a = pretrain.batch_starts(10_000, 16, 8, seed=1, step=5)
    assert np.array_equal(a, pretrain.batch_starts(10_000, 16, 8, seed=1, step=5))
    assert not np.array_equal(a, pretrain.batch_starts(10_000, 16, 8, seed=1, step=6))
    assert a.max() <= 10_000 - 17                            # room for x and the shifted y
    parts = [pretrain.rank_rows(a, k, r, world=2, micro_batch=2) for k in range(2) for r in range(2)]
    assert np.array_equal(np.concatenate(parts), a)          # 2 micro-steps x 2 ranks cover the batch
    data = np.arange(100, dtype=np.uint16)
    x, y = pretrain.get_batch(data, np.array([3, 50]), 4, "cpu")
    assert x.tolist() == [[3, 4, 5, 6], [50, 51, 52, 53]] and y.tolist() == [[4, 5, 6, 7], [51, 52, 53, 54]]


def test_unigram_baseline_by_hand():
    train = np.array([0, 0, 0, 1], dtype=np.uint16)          # add-one counts over vocab 2: [4, 2]
    assert pretrain.unigram_loss(train, np.array([0, 1]), 2) == pytest.approx(
        -(math.log(4 / 6) + math.log(2 / 6)) / 2)


# ----------------------------------------------------------------------------------------------
# The loop

def test_training_beats_unigram_and_writes_artifacts(shards, tmp_path):
    out = pretrain.train(small_cfg(shards, tmp_path, max_steps=40, eval_interval=20))
    assert out["val_loss"] < out["unigram_val_loss"] - 0.3
    for name in ("ckpt.pt", "metrics.jsonl", "loss.png", "outcome.json"):
        assert (tmp_path / name).is_file()
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 40 and {"optimizer", "rng", "scaler", "data"} <= set(ckpt)
    assert json.loads((tmp_path / "outcome.json").read_text())["status"] == "max_steps"


def test_accumulation_equals_one_big_batch(shards, tmp_path):
    # fp32: 4 micro-batches of 2 with loss/4 vs one batch of 8; only summation order differs.
    one = pretrain.train(small_cfg(shards, tmp_path / "one", max_steps=5, micro_batch=8))
    acc = pretrain.train(small_cfg(shards, tmp_path / "acc", max_steps=5, micro_batch=2))
    for a, b in zip(losses(one["records"]), losses(acc["records"])):
        assert a[0] == b[0]
        assert (a[1] or a[2]) == pytest.approx(b[1] or b[2], abs=1e-5)
    wa = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "acc" / "ckpt.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_kill_and_resume_is_bit_exact(shards, tmp_path):
    kw = dict(max_steps=12, eval_interval=4, dropout=0.1)   # dropout: the RNG state must resume too
    full = pretrain.train(small_cfg(shards, tmp_path / "full", **kw))
    killed = pretrain.train(small_cfg(shards, tmp_path / "cut", stop_at=10, **kw))
    assert killed["status"] == "stop_at"                     # steps 9-10 are lost, ckpt is at step 8
    resumed = pretrain.train(small_cfg(shards, tmp_path / "cut", resume=True, **kw))
    assert losses(resumed["records"]) == losses(full["records"])
    wa = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    wb = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    sa, sb = wa["optimizer"]["state"], wb["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_early_stopping_stops_after_patience(shards, tmp_path):
    # lr so small that val barely moves: any non-improvement counts against patience.
    out = pretrain.train(small_cfg(shards, tmp_path, max_steps=200, eval_interval=2, patience=1,
                                   lr=1e-9, min_lr=1e-9, dropout=0.5))
    assert out["status"] == "early_stop" and out["steps"] < 200


def test_nan_guard_stops_and_keeps_last_good_checkpoint(shards, tmp_path):
    cfg = small_cfg(shards, tmp_path, max_steps=50, eval_interval=1, lr=1e30, min_lr=1e30, grad_clip=0)
    with pytest.raises(pretrain.Diverged, match="diverged.*last good checkpoint"):
        pretrain.train(cfg)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert json.loads((tmp_path / "outcome.json").read_text())["status"] == "diverged"


def test_ddp_and_fsdp_on_two_processes_equal_single_process(shards, tmp_path):
    kw = dict(max_steps=6, eval_interval=3, log_interval=1)
    single = pretrain.train(small_cfg(shards, tmp_path / "single", **kw))
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "04_pretrain")!r})
        import torch.distributed as dist
        import pretrain
        for mode in ("ddp", "fsdp"):
            cfg = pretrain.TrainConfig(**{{**{small_cfg(shards, '', **kw).__dict__!r},
                                          "out": {str(tmp_path)!r} + "/" + mode, "parallel": mode}})
            pretrain.train(cfg)
        dist.destroy_process_group()
    """))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", str(driver)], capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = torch.load(tmp_path / "single" / "ckpt.pt", weights_only=True)
    for mode in ("ddp", "fsdp"):
        ckpt = torch.load(tmp_path / mode / "ckpt.pt", weights_only=True)
        assert ckpt["data"]["world"] == 2
        records = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(losses(single["records"]), losses(records), strict=True):
            assert a[0] == b[0] and (a[1] or a[2]) == pytest.approx(b[1] or b[2], abs=1e-5), mode
        for k in ref["model"]:   # the all-reduce sums in another order: equal to float rounding
            torch.testing.assert_close(ckpt["model"][k], ref["model"][k], atol=1e-5, rtol=0, msg=mode)
    # a checkpoint written by 2 FSDP ranks resumes in one process
    pretrain.train(small_cfg(shards, tmp_path / "fsdp", resume=True, max_steps=8, eval_interval=3))


# ----------------------------------------------------------------------------------------------
# Bad input: one clear line

def test_missing_shards_and_vocab_mismatch(tmp_path):
    with pytest.raises(UserError, match="tokens: missing; make it first with `python 02_tokenizer/bpe.py"):
        pretrain.train(small_cfg(tmp_path, tmp_path / "o"))
    write_shards(tmp_path, n_train=2000, n_val=500)
    meta = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    (tmp_path / "tokens" / "meta.json").write_text(json.dumps({**meta, "vocab_size": 32}))
    with pytest.raises(UserError, match="meta.json: changed or damaged"):
        pretrain.train(small_cfg(tmp_path, tmp_path / "o"))
    write_manifest(tmp_path / "tokens", stage="02_tokenizer", command="(test)", config={})
    with pytest.raises(UserError, match="different tokenizer"):
        pretrain.train(small_cfg(tmp_path, tmp_path / "o"))


def test_config_errors_name_the_fix(shards, tmp_path):
    with pytest.raises(UserError, match="not divisible by micro_batch 3 x world size 2"):
        pretrain.check_config(small_cfg(shards, tmp_path, batch_size=8, micro_batch=3), 2, "cpu")
    with pytest.raises(UserError, match="fewer than block_size"):
        pretrain.train(small_cfg(shards, tmp_path, block_size=8000))
    pretrain.train(small_cfg(shards, tmp_path, max_steps=2, eval_interval=2))
    with pytest.raises(UserError, match="n_embd: saved=32 current=64"):
        pretrain.train(small_cfg(shards, tmp_path, n_embd=64, resume=True))
    (tmp_path / "ckpt.pt").write_bytes((tmp_path / "ckpt.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt or truncated"):
        pretrain.train(small_cfg(shards, tmp_path, resume=True))


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "04_pretrain" / "pretrain.py"), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# scaling.py and overfit.py: the analysis on known numbers

def test_scaling_fit_recovers_a_known_law():
    import scaling
    N, D = np.meshgrid([1e4, 3e4, 1e5, 3e5, 1e6], [1e5, 3e5, 1e6])
    N, D = N.ravel(), D.ravel()
    L = 1.5 + 40 * N ** -0.35 + 300 * D ** -0.3
    fit = scaling.fit_chinchilla(N, D, L)
    assert fit["alpha"] == pytest.approx(0.35, abs=0.03) and fit["beta"] == pytest.approx(0.3, abs=0.03)
    assert fit["E"] == pytest.approx(1.5, abs=0.1) and fit["rms"] < 1e-3
    alpha, A = scaling.fit_power_law_in_n(np.array([1e4, 1e5, 1e6]), 7 * np.array([1e4, 1e5, 1e6]) ** -0.1)
    assert alpha == pytest.approx(0.1) and A == pytest.approx(7)


def test_overfit_summary_reads_early_stopping_at_the_best_eval():
    import overfit
    steps, train, val = [10, 20, 30], [3.0, 2.0, 1.0], [3.5, 3.0, 3.4]
    final = overfit.summarize("baseline", steps, train, val)
    early = overfit.summarize("early stop", steps, train, val, early_stop=True)
    assert (final["val"], final["gap"]) == (3.4, pytest.approx(2.4))
    assert (early["val"], early["train"], early["best_step"]) == (3.0, 2.0, 20)
