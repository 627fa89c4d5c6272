"""kernels/attention_backends.py and kernels/flash_attention.py: every version agrees with naive attention.

The Triton kernel runs compiled on CUDA and in Triton's interpreter on a CPU (conftest sets
TRITON_INTERPRET=1), so shapes here are small. The interpreter tiles are 32×16 (forward, dQ) and
16×32 (dK/dV), so T = 50 or 40 leaves a ragged last tile and tiles straddle the causal diagonal.

Tolerances (max absolute error against naive attention computed in float32, inputs ~ N(0, 1)):
    float32: 1e-4 (observed ~1e-6)   float16: 1e-2 (observed ~2e-3)   bfloat16: 5e-2 (observed ~2e-2)
The interpreter cannot run bfloat16 (numpy has none; its tl.dot returns junk), so on a CPU the kernel is
checked in float16 and bfloat16 is checked on the tiled reference; bfloat16 kernel tests need a GPU.
"""

import math

import pytest
import torch
import triton
import triton.language as tl

import attention_backends
from attention_backends import (
    attention,
    attention_naive,
    attention_sdpa,
    attention_tiled,
    attention_tiled_backward,
    attention_tiled_forward,
)
from common.cli import UserError
from flash_attention import flash_attention, flash_attention_forward
from flash_tiles import INTERPRET, _bh_offset

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# (B, H, Hkv, T, S, D): MHA with a ragged tail, GQA, MQA, fewer queries than keys (KV cache), head dim 128
SHAPES = [
    (1, 2, 2, 50, 50, 32),
    (1, 4, 2, 40, 40, 64),
    (1, 4, 1, 33, 33, 32),
    (1, 2, 1, 24, 56, 32),
    (1, 1, 1, 20, 20, 128),
]


def make_qkv(B, H, Hkv, T, S, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(shape, generator=g).to(DEVICE, dtype)
        for shape in [(B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D)]
    )
    return q, k, v


def outputs_and_grads(fn, q, k, v, do, causal):
    """(o, dq, dk, dv) of fn, all as float32."""
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o = fn(*inputs, causal)
    grads = torch.autograd.grad(o, inputs, do.to(o.dtype))
    return [t.float() for t in (o, *grads)]


def assert_matches_naive(fn, q, k, v, causal, tol, mask=None):
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    naive = lambda q, k, v, causal: attention_naive(q, k, v, causal, mask=mask)
    ref = outputs_and_grads(naive, q.float(), k.float(), v.float(), do, causal)
    got = outputs_and_grads(fn, q, k, v, do, causal)
    for name, a, b in zip(["o", "dq", "dk", "dv"], got, ref):
        assert a.shape == b.shape, name
        err = (a - b).abs().max().item()
        assert err < tol, f"{name}: max abs error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}Hkv{}T{}S{}D{}".format(*s))
@pytest.mark.parametrize("fn", [flash_attention, attention_tiled], ids=["triton", "tiled"])
def test_matches_naive_fp32(fn, shape, causal):
    assert_matches_naive(fn, *make_qkv(*shape), causal, TOL[torch.float32])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_kernel_fp16(causal):
    q, k, v = make_qkv(2, 2, 1, 50, 50, 64, torch.float16)  # B = 2: the batch stride is used
    assert_matches_naive(flash_attention, q, k, v, causal, TOL[torch.float16])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tiled_half(dtype):
    q, k, v = make_qkv(1, 4, 2, 50, 50, 64, dtype)
    assert_matches_naive(attention_tiled, q, k, v, True, TOL[dtype])


def test_kernel_on_strided_views():
    """A fused QKV projection viewed as (B, T, heads, D) then transposed: nothing is contiguous."""
    B, T, H, D = 1, 40, 2, 32
    qkv = torch.randn(B, T, 3 * H, D, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    q, k, v = (qkv[:, :, i * H : (i + 1) * H].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    assert_matches_naive(flash_attention, q, k, v, True, TOL[torch.float32])


def test_lse_is_logsumexp_of_scaled_scores():
    q, k, v = make_qkv(1, 2, 1, 40, 40, 32)
    scores = (q @ k.repeat_interleave(2, dim=1).transpose(-2, -1)) / math.sqrt(32)
    scores = scores.masked_fill(~torch.ones(40, 40, dtype=torch.bool, device=DEVICE).tril(), float("-inf"))
    expected = scores.logsumexp(dim=-1)
    _, lse_tiled = attention_tiled_forward(q, k, v, causal=True, block_m=16, block_n=16)
    _, lse_kernel = flash_attention_forward(q, k, v, True, 1 / math.sqrt(32))
    torch.testing.assert_close(lse_tiled, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_kernel, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_tiled_backward_gradcheck_float64(causal):
    """The hand-written backward (P recomputed from the LSE) against finite differences; GQA, ragged tiles."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 9, 2, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 9, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: attention_tiled(q, k, v, causal, None, 3, 4), (q, k, v))


def test_tiled_backward_skips_nothing_it_needs():
    """Block sizes that do not divide T or each other must not change the result of the backward."""
    q, k, v = make_qkv(1, 2, 2, 23, 23, 32)
    do = torch.randn_like(q)
    o, lse = attention_tiled_forward(q, k, v, True, None, 32, 32)
    reference = attention_tiled_backward(q, k, v, o, lse, do, True, None, 32, 32)
    for block_m, block_n in [(5, 7), (16, 3), (64, 64)]:
        o2, lse2 = attention_tiled_forward(q, k, v, True, None, block_m, block_n)
        for a, b in zip(
            attention_tiled_backward(q, k, v, o2, lse2, do, True, None, block_m, block_n), reference
        ):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unsupported_head_dim_is_a_user_error_naming_the_supported_ones():
    q, k, v = make_qkv(1, 2, 2, 16, 16, 48)
    with pytest.raises(UserError, match="head dim 48.*32, 64, 128"):
        attention(q, k, v, backend="triton")
    torch.testing.assert_close(attention(q, k, v, backend="auto"), attention_naive(q, k, v))  # falls back


def test_dispatch_errors_and_backends():
    q, k, v = make_qkv(1, 4, 2, 24, 40, 32)
    with pytest.raises(UserError, match="unknown attention backend"):
        attention(q, k, v, backend="flash")
    with pytest.raises(UserError, match="multiple of key/value heads"):
        attention(q, k[:, :1].expand(1, 3, 40, 32), v[:, :1].expand(1, 3, 40, 32))
    with pytest.raises(UserError, match="at least as many keys"):
        attention(q, k[:, :, :16], v[:, :, :16], causal=True)
    expected = attention_naive(q, k, v, causal=True)
    for backend in ["auto", "torch", "tiled", "sdpa", "triton"]:
        torch.testing.assert_close(
            attention(q, k, v, causal=True, backend=backend), expected, atol=1e-5, rtol=1e-5, msg=backend
        )


def test_auto_never_takes_the_naive_path(monkeypatch):
    """auto = the fused kernel on every device (SDPA on a CPU), with and without a mask."""
    q, k, v = make_qkv(1, 4, 2, 24, 24, 32)
    expected = attention_naive(q, k, v, causal=True)
    monkeypatch.setattr(attention_backends, "attention_naive", lambda *a, **kw: pytest.fail("naive ran"))
    torch.testing.assert_close(attention(q, k, v, causal=True), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        attention(q, k, v, causal=False, mask=torch.ones(24, 24, dtype=torch.bool).tril()),
        expected,
        atol=1e-5,
        rtol=1e-5,
    )


def test_naive_mask_is_the_definition_and_sdpa_agrees():
    """A per-row mask (left padding + causal + a KV-cache offset), checked row by row against the
    softmax over only the allowed keys, and SDPA (the CPU default) against naive, gradients included."""
    B, H, Hkv, T, S, D = 2, 4, 2, 6, 10, 32
    q, k, v = make_qkv(B, H, Hkv, T, S, D)
    keep = torch.ones(B, 1, T, S, dtype=torch.bool, device=DEVICE)
    keep[1, :, :, :3] = False  # row 1: three padding keys
    out = attention_naive(q, k, v, causal=True, mask=keep)
    for b, h, i in [(0, 0, 0), (0, 3, 5), (1, 1, 0), (1, 2, 5)]:
        seen = [j for j in range(S) if j <= i + S - T and keep[b, 0, i, j]]
        kv = h // (H // Hkv)
        w = (q[b, h, i] @ k[b, kv, seen].T / math.sqrt(D)).softmax(-1)
        torch.testing.assert_close(out[b, h, i], w @ v[b, kv, seen], atol=1e-5, rtol=1e-5)
    assert_matches_naive(
        lambda q, k, v, c: attention_sdpa(q, k, v, c, mask=keep), q, k, v, True, TOL[torch.float32], mask=keep
    )
    for backend in ("triton", "tiled"):  # they know only causal-or-not: refuse, never ignore the mask
        with pytest.raises(UserError, match="not an explicit mask"):
            attention(q, k, v, backend=backend, mask=keep)


@triton.jit
def _offsets_kernel(OUT, stride_b, stride_h, H):
    bh = tl.program_id(0)
    tl.store(OUT + bh, _bh_offset(bh // H, bh % H, stride_b, stride_h))


def test_batch_and_head_offsets_do_not_wrap_past_2_to_the_31():
    """The kernels' (batch, head) offset with strides of a tensor of ~2³² elements: int32 would wrap
    (batch 1, head 2 -> -2147483635 instead of 2147483661); the interpreter does int32 arithmetic too."""
    B, H, stride_b, stride_h = 4, 3, 2**30 + 7, 2**29 + 3
    out = torch.zeros(B * H, dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(B * H,)](out, stride_b, stride_h, H)
    expected = [b * stride_b + h * stride_h for b in range(B) for h in range(H)]
    assert max(expected) > 2**31 and out.tolist() == expected


@pytest.mark.skipif(not INTERPRET, reason="only the interpreter lacks bfloat16")
def test_interpreter_refuses_bfloat16():
    q, k, v = make_qkv(1, 2, 2, 16, 16, 32, torch.bfloat16)
    with pytest.raises(UserError, match="bfloat16"):
        flash_attention(q, k, v)


def test_causal_past_ignores_future_keys():
    """Changing the last key and value changes no output row before the last (causal, T = S)."""
    q, k, v = make_qkv(1, 2, 2, 40, 40, 32)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 5.0
    v2[:, :, -1] -= 5.0
    a, b = flash_attention(q, k, v, causal=True), flash_attention(q, k2, v2, causal=True)
    assert a.transpose(1, 2).is_contiguous()  # o is stored (B, T, H, D): merging heads needs no copy
    assert torch.equal(a[:, :, :-1], b[:, :, :-1])
    assert not torch.allclose(a[:, :, -1], b[:, :, -1])


# --------------------------- GPU only: the compiled kernel at realistic sizes ---------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_bf16_large(D, causal):
    q, k, v = make_qkv(2, 8, 2, 1000, 1000, D, torch.bfloat16)  # 1000: ragged for every autotune tile
    assert_matches_naive(flash_attention, q, k, v, causal, TOL[torch.bfloat16])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fp32_and_fp16():
    for dtype in (torch.float32, torch.float16):
        q, k, v = make_qkv(1, 4, 4, 777, 777, 64, dtype)
        assert_matches_naive(flash_attention, q, k, v, True, TOL[dtype])


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a GPU with 40 GB",
)
def test_gpu_batch_stride_past_2_to_the_31_elements():
    """q, k, v whose second batch element starts 2³¹ elements into its buffer (12 GiB of fp16, little
    compute): the compiled kernel must read it there, not at a wrapped-around negative offset."""
    B, H, T, D = 2, 4, 256, 64
    small = make_qkv(B, H, H, T, T, D, torch.float16)
    big = []
    for x in small:
        buf = torch.empty(2**31 + x[0].numel(), dtype=x.dtype, device=x.device)
        view = buf.as_strided(x.shape, (2**31, T * D, D, 1))
        view.copy_(x)
        big.append(view)
    assert_matches_naive(flash_attention, *big, True, TOL[torch.float16])


def test_tiled_forward_keeps_the_key_tile_that_starts_on_the_diagonal():
    # block_m = 3, block_n = 2: the Q tile [0, 3) ends at row 2, whose diagonal key 2 starts the
    # K tile [2, 4); that tile holds the last key row 2 may see, so it must not be skipped. With
    # 7 queries behind 9 keys (a KV cache) the diagonal shifts by S - T = 2.
    for T, S in [(7, 7), (7, 9)]:
        q, k, v = make_qkv(1, 2, 2, T, S, 32)
        for bm, bn in [(3, 2), (2, 1), (4, 3)]:
            o, _ = attention_tiled_forward(q, k, v, True, None, bm, bn)
            torch.testing.assert_close(o, attention_naive(q, k, v, True), atol=1e-5, rtol=1e-5)
