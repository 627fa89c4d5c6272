"""04_pretrain's hand-written parallelism: DDP by hand, ZeRO-1/2, tensor and pipeline parallel, memory.

Every distributed check runs in ONE pair of gloo processes started once for the module (the
`two_ranks` fixture): starting processes costs seconds, the checks themselves milliseconds. Each rank
computes both the parallel result and the one-process reference from the same seeds; the tests below
assert on the differences. Tolerances: fp32 rounding of sums taken in another order, 1e-5 absolute
on gradients and weights of O(0.01-1) (1e-6 where nothing but the summation order differs).
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import collectives
import memory_estimate as mem
import pipeline_parallel as pp
from common.cli import UserError
from gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(world=2, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=64, seq_len=16, batch=8)


# ----------------------------------------------------------------------------------------------
# What each of the two ranks runs (module level, so that spawned processes can import it)


def _grad_sync_contract(rank, world):
    """torch_parallel.grad_sync drives DataParallelByHand as it drives torch's DDP."""
    import torch.distributed as dist
    from ddp_by_hand import DataParallelByHand
    from torch_parallel import grad_sync

    cfg = collectives.DemoModel(**SMALL)
    model = DataParallelByHand(collectives.demo_model(cfg, seed=rank), bucket_mb=0.01)
    x, y = collectives.demo_batch(cfg, 0)
    rows = slice(rank * 4, rank * 4 + 4)
    with grad_sync(model, sync=False):
        _, loss = model(x[rows], y[rows])
    loss.backward()  # outside the context, as pretrain.py does: the forward decided
    quiet = model.calls
    local = model.module.tok_emb.weight.grad.clone()
    other = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(other, local)
    with grad_sync(model, sync=True):
        model(x[rows], y[rows])[1].backward()
    synced = model.module.tok_emb.weight.grad.clone()
    both = [torch.empty_like(synced) for _ in range(world)]
    dist.all_gather(both, synced)
    return {
        "calls_without_sync": quiet,
        "calls_with_sync": model.calls,
        "buckets": len(model.buckets),
        "local_grads_differ": collectives.max_diff(other[0], other[1]),
        "synced_grads_differ": collectives.max_diff(both[0], both[1]),
        "synced_is_mean_of_twice_local": collectives.max_diff(synced, (other[0] + other[1])),
    }


def _zero_checkpoint_roundtrip(rank, world):
    """ZeRO-2 state saved through torch's get_state_dict (as pretrain.full_state does), loaded with
    set_state_dict into ZeRO-1 on other random weights, continued: equal to unsharded AdamW throughout."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    from optimizers import AdamW, param_groups
    from zero_sharding import ZeroAdamW

    cfg = collectives.DemoModel(**SMALL)
    model, ref = collectives.demo_model(cfg), collectives.demo_model(cfg)
    opt = ZeroAdamW(param_groups(model, 0.1), stage=2, lr=1e-2, betas=(0.9, 0.95))
    ref_opt = AdamW(param_groups(ref, 0.1), lr=1e-2, betas=(0.9, 0.95))
    rows = slice(rank * 4, rank * 4 + 4)

    def step(m, o, s, part):
        x, y = collectives.demo_batch(cfg, s)
        m(x[part], y[part])[1].backward()
        o.step()
        o.zero_grad(set_to_none=True)

    for s in range(2):
        step(model, opt, s, rows)
        step(ref, ref_opt, s, slice(None))
    options = StateDictOptions(full_state_dict=True)
    model_sd, optim_sd = get_state_dict(model, opt, options=options)
    ref_sd = get_state_dict(ref, ref_opt, options=options)[1]
    saved_diff = max(
        collectives.max_diff(optim_sd["state"][k][n], ref_sd["state"][k][n])
        for k in ref_sd["state"]
        for n in ("exp_avg", "exp_avg_sq", "step")
    )
    resumed = collectives.demo_model(cfg, seed=99)
    resumed_opt = ZeroAdamW(param_groups(resumed, 0.1), stage=1, lr=1e-2, betas=(0.9, 0.95))
    set_state_dict(
        resumed, resumed_opt, model_state_dict=model_sd, optim_state_dict=optim_sd, options=options
    )
    for s in range(2, 4):
        step(resumed, resumed_opt, s, rows)
        step(ref, ref_opt, s, slice(None))
    return {
        "saved_state_max_diff": saved_diff,
        "same_names": sorted(optim_sd["state"]) == sorted(ref_sd["state"]),
        "resumed_weights_max_diff": collectives.max_diff(list(resumed.parameters()), list(ref.parameters())),
    }


def _tp_by_hand(rank, world):
    """Column- and row-parallel layers on matrices small enough to multiply on paper (module tests)."""
    from tensor_parallel import ColumnParallelLinear, CopyToParallel, RowParallelLinear

    lin = torch.nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(8.0).view(4, 2))  # W = [[0,1],[2,3],[4,5],[6,7]]
    col = ColumnParallelLinear.from_linear(lin, rank, world)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = col(CopyToParallel.apply(x, None))
    y.sum().backward()
    col_x_grad_with_f = x.grad.clone()
    x2 = x.detach().clone().requires_grad_()
    col(x2).sum().backward()  # without f: only this rank's part

    row_lin = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        row_lin.weight.copy_(torch.arange(8.0).view(2, 4))  # W = [[0,1,2,3],[4,5,6,7]]
    row = RowParallelLinear.from_linear(row_lin, rank, world)
    xr = torch.tensor([[1.0, 2.0, 3.0, 4.0]])[:, rank * 2 : rank * 2 + 2].clone().requires_grad_()
    yr = row(xr)
    yr.sum().backward()
    return {
        "col_out": y.tolist(),
        "col_x_grad_with_f": col_x_grad_with_f.tolist(),
        "col_x_grad_without_f": x2.grad.tolist(),
        "row_out": yr.tolist(),
        "row_x_grad": xr.grad.tolist(),
    }


def _all_checks(rank, world):
    import ddp_by_hand
    import tensor_parallel
    import zero_sharding

    return {
        "ddp": ddp_by_hand.ddp_worker(
            rank, world, ddp_by_hand.DDPConfig(**SMALL, steps=2, accum=2, bucket_mb=0.01)
        ),
        "contract": _grad_sync_contract(rank, world),
        "zero": zero_sharding.zero_worker(rank, world, zero_sharding.ZeroConfig(**SMALL, steps=3)),
        "zero_ckpt": _zero_checkpoint_roundtrip(rank, world),
        "tp_hand": _tp_by_hand(rank, world),
        "tp": tensor_parallel.tp_worker(rank, world, tensor_parallel.TPConfig(**SMALL)),
        "pp": pp.pp_worker(
            rank, world, pp.PipelineConfig(**SMALL, micro_batches=4, repeats=1)
        ),  # last: 1 thread
    }


@pytest.fixture(scope="module")
def two_ranks():
    return collectives.run_ranks(_all_checks, 2, threads=1)


# ----------------------------------------------------------------------------------------------
# Data parallel by hand


def test_ddp_by_hand_equals_torch_ddp_and_one_process(two_ranks):
    for r in two_ranks:
        d = r["ddp"]
        assert d["max_diff_loss_vs_torch_ddp"] < 1e-6 and d["max_diff_grad_vs_torch_ddp"] < 1e-7
        assert d["max_diff_weight_vs_torch_ddp"] < 1e-6
        assert d["max_diff_grad_vs_single"] < 1e-6  # first step: same weights, same batch
        assert d["max_diff_weight_vs_single"] < 1e-4  # after 2 Adam steps of lr 1e-2


def test_ddp_by_hand_buckets_overlap_backward_and_no_sync_sends_once(two_ranks):
    d = two_ranks[0]["ddp"]
    assert d["buckets"] > 2 and d["calls_per_step"] == d["buckets"]
    assert d["bytes_per_step"] == 4 * d["params"]  # every gradient once per optimizer step
    assert d["bytes_per_step_without_no_sync"] == 2 * d["bytes_per_step"]  # 2 micro-steps
    assert d["grads_ready_at_each_launch"][0] < d["grad_tensors"]  # sent while backward ran
    assert d["grads_ready_at_each_launch"][-1] == d["grad_tensors"]


def test_grad_sync_contract(two_ranks):
    for r in two_ranks:
        c = r["contract"]
        assert c["calls_without_sync"] == 0 and c["calls_with_sync"] == c["buckets"]
        assert c["local_grads_differ"] > 1e-4  # different rows, no communication
        assert c["synced_grads_differ"] == 0.0  # identical after the all-reduce
        # the second backward accumulates onto the first (2·g_r), the all-reduce averages: g_0 + g_1
        assert c["synced_is_mean_of_twice_local"] < 1e-6


def test_ring_bytes_formula():
    assert collectives.ring_bytes("all_reduce", 1000, 4) == 1500  # 2 (N-1)/N
    assert (
        collectives.ring_bytes("reduce_scatter", 1000, 4)
        == collectives.ring_bytes("all_gather", 1000, 4)
        == 750
    )
    assert collectives.ring_bytes("all_reduce", 1000, 1) == 0
    zero2 = sum(b for _, _, b in collectives.step_traffic("zero2", 1000, 8))
    assert zero2 == collectives.ring_bytes("all_reduce", 1000, 8)  # ZeRO-2 moves what DDP moves


# ----------------------------------------------------------------------------------------------
# ZeRO-1 / ZeRO-2


def test_zero_equals_unsharded_adamw_and_holds_half_the_state(two_ranks):
    P = two_ranks[0]["zero"]["params"]
    for r in two_ranks:
        z = r["zero"]
        for stage in (1, 2):
            s = z[f"zero{stage}"]
            assert s["max_diff_weight_vs_ddp"] < 1e-6, stage  # same gradients: only the sharding differs
            assert s["max_diff_loss"] < 1e-5 and s["max_diff_weight"] < 1e-4, stage  # vs one process
            assert s["max_diff_state_dict"] < 1e-6 and s["same_state_keys"], stage
            # m and v for 1/N of the values (+ one step count per piece): about half at N = 2
            assert abs(s["state_bytes"] / z["unsharded_state_bytes"] - 0.5) < 0.01, stage
            assert s["state_bytes"] == pytest.approx(mem.STATE_BYTES["fp32"][2] * P / 2, rel=0.01)
        assert z["zero1"]["grad_bytes"] == 4 * P + 4 * (P % 2)  # full (padded) gradient kept
        assert z["zero2"]["grad_bytes"] == 4 * ((P + 1) // 2)  # only this rank's slice


def test_zero_checkpoint_through_torch_state_dict_and_resume_on_another_stage(two_ranks):
    for r in two_ranks:
        c = r["zero_ckpt"]
        assert c["same_names"] and c["saved_state_max_diff"] < 1e-7
        assert c["resumed_weights_max_diff"] < 1e-4


# ----------------------------------------------------------------------------------------------
# Tensor parallel


def test_column_and_row_parallel_layers_by_hand(two_ranks):
    # x W^T = [[2, 8, 14, 20], [4, 18, 32, 46]]: rank 0 has columns 0-1, rank 1 columns 2-3
    assert two_ranks[0]["tp_hand"]["col_out"] == [[2, 8], [4, 18]]
    assert two_ranks[1]["tp_hand"]["col_out"] == [[14, 20], [32, 46]]
    for r in two_ranks:  # dL/dx = sum of W's rows = [12, 16]: f's all-reduce adds the other rank's part
        assert r["tp_hand"]["col_x_grad_with_f"] == [[12, 16], [12, 16]]
    assert two_ranks[0]["tp_hand"]["col_x_grad_without_f"] == [[2, 4], [2, 4]]
    # row-parallel: partial sums [2, 14] + [18, 46] -> g -> [20, 60] on both ranks; dL/dx_r = column sums
    for r in two_ranks:
        assert r["tp_hand"]["row_out"] == [[20, 60]]
    assert two_ranks[0]["tp_hand"]["row_x_grad"] == [[4, 6]] and two_ranks[1]["tp_hand"]["row_x_grad"] == [
        [8, 10]
    ]


def test_tensor_parallel_block_and_gpt_equal_the_ordinary_ones(two_ranks):
    for r in two_ranks:
        t = r["tp"]
        assert t["block_max_diff_output"] < 1e-5 and t["block_max_diff_grad_input"] < 1e-5
        assert t["block_max_diff_grad_weights"] < 1e-5
        assert t["gpt_max_diff_loss"] < 1e-5 and t["gpt_max_diff_grads"] < 1e-6
        assert t["state_dict_roundtrip_max_diff"] == 0.0 and t["state_dict_same_keys"]
        assert t["dtensor_max_diff_output"] < 1e-5 and t["dtensor_max_diff_grad_weights"] < 1e-5
        assert t["ours_vs_dtensor_max_diff_output"] < 1e-6


def test_tensor_parallel_params_per_rank_match_the_memory_estimate(two_ranks):
    cfg = collectives.demo_gpt_config(collectives.DemoModel(**SMALL))
    assert two_ranks[0]["tp"]["gpt_local_params"] == mem.stage_params(cfg, tp=2, pp=1, stage=0)
    assert two_ranks[0]["tp"]["gpt_params"] == mem.total_params(cfg)


# ----------------------------------------------------------------------------------------------
# Pipeline parallel


def test_1f1b_order_for_two_stages_and_four_micro_batches():
    ops = lambda s: " ".join(f"{k}{i}" for k, i in pp.schedule("1f1b", s, 2, 4))
    assert ops(0) == "F0 F1 B0 F2 B1 F3 B2 B3"  # 1 warm-up forward, 3 x (F, B), 1 cool-down B
    assert ops(1) == "F0 B0 F1 B1 F2 B2 F3 B3"  # the last stage alternates from the start
    assert " ".join(f"{k}{i}" for k, i in pp.schedule("gpipe", 0, 2, 4)) == "F0 F1 F2 F3 B0 B1 B2 B3"


@pytest.mark.parametrize("p,m", [(2, 4), (3, 2), (4, 8), (4, 3)])
def test_schedules_do_each_op_once_keep_p_in_flight_and_leave_the_formula_bubble(p, m):
    for kind in ("gpipe", "1f1b"):
        for s in range(p):
            ops = pp.schedule(kind, s, p, m)
            assert sorted(ops) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            in_flight = peak = 0
            for op, i in ops:
                assert op == "F" or ("F", i) in ops[: ops.index((op, i))]
                in_flight += 1 if op == "F" else -1
                peak = max(peak, in_flight)
            assert peak == (m if kind == "gpipe" else min(p - s, m))
        for t_b in (1.0, 2.0):  # backward twice the forward: same fraction
            assert pp.simulate(kind, p, m, 1.0, t_b)["idle_fraction"] == pytest.approx(
                pp.bubble_fraction(p, m)
            )


def test_pipeline_gradients_equal_one_process(two_ranks):
    stages = two_ranks[0]["pp"]  # every rank returns all stages' results
    for kind in ("gpipe", "1f1b"):
        for s in stages:
            assert s[kind]["max_diff_grad"] < 1e-6, kind
            assert s[kind]["torch_pipelining_max_diff_grad"] < 1e-6, kind
        assert stages[-1][kind]["loss"] == pytest.approx(stages[-1]["loss_single"], abs=1e-6)
    assert [s["1f1b"]["peak_stored"] for s in stages] == [2, 1] and stages[0]["gpipe"]["peak_stored"] == 4


def test_pipeline_stage_params_match_the_memory_estimate():
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=5, n_head=4, n_embd=32)
    model = GPT(cfg)
    for p in (1, 2, 3):
        for s in range(p):
            stage = pp.GPTStage(model, s, p)
            assert sum(x.numel() for x in stage.parameters()) == mem.stage_params(cfg, 1, p, s), (p, s)


# ----------------------------------------------------------------------------------------------
# Memory arithmetic against real tensors

CONFIGS = [
    dict(),
    dict(n_kv_head=2),
    dict(pos_emb="learned", norm="layernorm", mlp="gelu", bias=True),
    dict(qk_norm=True, tie_weights=False, bias=True),
    dict(n_kv_head=1, n_experts=2),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_parameter_count_formula_equals_the_model(kw):
    cfg = GPTConfig(vocab_size=96, block_size=32, n_layer=3, n_head=4, n_embd=64, **kw)
    assert mem.total_params(cfg) == GPT(cfg).num_params(non_embedding=False)


def test_model_state_bytes_equal_the_real_tensors():
    from optimizers import AdamW, param_groups

    cfg = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=64, attn_backend="torch")
    model = GPT(cfg)
    opt = AdamW(param_groups(model, 0.1), lr=1e-3)
    model(torch.randint(0, 96, (2, 32)), torch.randint(0, 96, (2, 32)))[1].backward()
    opt.step()
    est = mem.memory_per_gpu(cfg, 2, 32, dtype="fp32", weights="fp32")
    params = list(model.parameters())
    assert collectives.storage_bytes(params) == est["weights"]
    assert collectives.storage_bytes([p.grad for p in params]) == est["gradients"]
    state = [t for s in opt.state.values() for t in s.values()]
    assert collectives.storage_bytes(state) == est["optimizer"] + 4 * len(params)  # + a step count each


def saved_activation_bytes(model, x, y, autocast: bool) -> int:
    """Bytes of the distinct tensors autograd saves in one forward, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    blocks = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            blocks[st.data_ptr()] = st.nbytes()
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        model(x, y)
    return sum(blocks.values())


@pytest.mark.parametrize("kw", CONFIGS[:3] + [dict(n_kv_head=1, block_size=64)])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["naive", "flash"])
def test_activation_estimate_equals_what_autograd_saves(kw, dtype, attention):
    """'flash' is kernels' tiled FlashAttention-2 in PyTorch: it saves what the Triton kernel saves."""
    cfg = GPTConfig(
        **{
            **dict(
                vocab_size=96,
                block_size=32,
                n_layer=2,
                n_head=4,
                n_embd=64,
                attn_backend="torch" if attention == "naive" else "tiled",
            ),
            **kw,
        }
    )
    model = GPT(cfg)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 96, (2, cfg.block_size), generator=g) for _ in range(2))
    measured = saved_activation_bytes(model, x, y, dtype == "bf16")
    act = mem.activation_bytes(cfg, 2, cfg.block_size, cfg.n_layer, dtype, attention=attention)
    bf16_weight_copies = 2 * model.num_params(non_embedding=False) if dtype == "bf16" else 0
    assert act["blocks"] + act["head"] + bf16_weight_copies == pytest.approx(measured, rel=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_estimate_against_cuda_peak_memory():
    from optimizers import AdamW, param_groups

    cfg = GPTConfig(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=256)  # head_dim 64: Triton
    model = GPT(cfg).cuda()
    opt = AdamW(param_groups(model, 0.1), lr=1e-3, foreach=True)
    x, y = (torch.randint(0, 4096, (8, 256), device="cuda") for _ in range(2))
    for _ in range(2):  # the optimizer state exists after step 1
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    logits, loss = model(x, y)
    loss.backward()
    peak = torch.cuda.max_memory_allocated()
    est = mem.memory_per_gpu(cfg, 8, 256, dtype="fp32", weights="fp32")
    # weights + AdamW state + activations at the end of forward; gradients fill while activations free
    assert 0.75 < est["total"] / peak < 1.25, (est, peak)


# ----------------------------------------------------------------------------------------------
# Bad input: one clear line, exit 2, earlier output untouched

BAD = [
    ("tensor_parallel.py", ["--world", "3"], "does not divide 4"),  # heads
    ("tensor_parallel.py", ["--world", "4", "--n-kv-head", "2"], "n_kv_head = 2"),  # KV heads
    (
        "tensor_parallel.py",
        ["--world", "3", "--n-head", "6", "--n-kv-head", "3", "--n-embd", "96"],
        "MLP hidden size = 256",
    ),
    ("pipeline_parallel.py", ["--world", "3", "--n-layer", "2"], "3 pipeline stages but only 2 blocks"),
    ("memory_estimate.py", ["--strategy", "zero4", "--out", "{out}"], "invalid choice: 'zero4'"),
]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    """Each bad command in its own process (started together: each spends its time importing torch)."""
    out = tmp_path / "memory"
    mem.main(["--preset", "tiny", "--out", str(out)])
    assert "zero3" in capsys.readouterr().out and (out / "memory.png").is_file()
    with pytest.raises(UserError, match="does not divide 12"):  # the function API checks the same
        mem.memory_per_gpu(GPTConfig(n_head=12, n_embd=768), 1, 128, tp=5)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        (
            subprocess.Popen(
                [sys.executable, str(REPO / "04_pretrain" / script), *[a.format(out=out) for a in args]],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            ),
            expected,
        )
        for script, args, expected in BAD
    ]
    for proc, expected in procs:
        _, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, err
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
        assert "Traceback" not in err
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == before


def test_fewer_micro_batches_than_stages_warns_about_the_bubble(capsys):
    pp.check_pipeline(n_layer=4, stages=4, micro_batches=2)
    err = capsys.readouterr().err
    assert err.startswith("warning: 2 micro-batches for 4 stages") and "60%" in err
    pp.check_pipeline(n_layer=4, stages=2, micro_batches=8)
    assert capsys.readouterr().err == ""
