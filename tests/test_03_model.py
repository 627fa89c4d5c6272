"""Tests for 03_model: the GPT (gpt.py) and its pieces (positions, loss, MoE, memory), decoding,
checkpoints, the sampling CLI, the encoder-decoder (transformer.py) and the benchmark.

Each test states one property a reader can check against the paper or a hand computation.
"""

import dataclasses
import hashlib
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import gpt as gpt_module
import checkpoint_io
from checkpoint_io import load_checkpoint, save_checkpoint
from common.cli import UserError
from common.runs import write_manifest
from decoding import generate, generate_beam
from divergence import DivergenceGuard
from decoding import (
    KVCache,
    apply_repetition_penalty,
    beam_search,
    left_pad,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from gpt import GPT, GPTConfig, LayerNorm, PRESETS, RMSNorm, flops_per_token, matmul_params
from lm_loss import cross_entropy, cross_entropy_and_z, log_softmax, logsumexp, softmax
from mixture_of_experts import load_balancing_loss
from model_memory import activation_bytes_per_layer, kv_cache_bytes
from position_encoding import apply_rope, permute_rope_weights, rope_cos_sin, sinusoidal_positions
import transformer as transformer_module
from transformer import N_SENTINELS, Transformer, TransformerConfig, mlm_inputs, span_corrupt, special_ids

VARIANTS = {
    "llama": dict(),
    "gpt2": PRESETS["gpt2"],
    "gqa+qknorm": dict(n_kv_head=2, qk_norm=True),
    "mqa+untied": dict(n_kv_head=1, tie_weights=False),
    "moe": dict(n_experts=4, moe_top_k=2),
    "post-ln+sinusoidal+relu": dict(pre_norm=False, pos_emb="sinusoidal", mlp="relu", norm="layernorm"),
    "docs+half-rope": dict(doc_boundary_id=0, rope_pairs="half", z_loss_coef=1e-3),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread avoids the contention that makes two threads ~10x slower on a
    busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=67, block_size=48, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **kw})


def lively(cfg, seed=0) -> GPT:
    """A random model whose greedy continuations vary: at the 0.02 init with tied weights every row just
    repeats its last token, which would let a broken KV cache pass the equality tests."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.3)
    return model


# ----------------------------------------------------------------------------- the forward pass


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_loss_at_init_and_backward(name):
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = GPT(cfg)
    idx, targets = torch.randint(0, cfg.vocab_size, (2, 3, 20))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 20, cfg.vocab_size)
    assert model(idx)[1] is None
    # small init => near-uniform predictions => cross-entropy ≈ ln V (targets unrelated to the input:
    # with tied weights even a random model prefers to repeat its input token)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.3
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_causal_mask_future_token_changes_no_past_logit(name):
    model = lively(tiny(**VARIANTS[name]))
    idx = torch.randint(0, 67, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (idx[:, 10] + 1) % 67
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_ignore_index_minus_100_is_ignored():
    model = lively(tiny())
    idx = torch.randint(0, 67, (2, 12))
    targets = idx.clone()
    targets[:, :6] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 6:].reshape(-1, 67), idx[:, 6:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_gqa_equals_mha_with_each_kv_head_repeated_for_its_group():
    gqa = lively(tiny(n_kv_head=2))
    mha = GPT(tiny(n_kv_head=4)).eval()
    state = gqa.state_dict()
    g, hd = 4 // 2, 32 // 4
    for key in list(state):
        if key.endswith(("attn.wk.weight", "attn.wv.weight")):  # (Hkv·hd, d) -> (H·hd, d)
            w = state[key]
            state[key] = w.view(2, hd, -1).repeat_interleave(g, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    idx = torch.randint(0, 67, (2, 16))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)
    assert GPTConfig(n_head=4, n_kv_head=None).n_kv_head == 4  # None means MHA


def test_attention_backends_agree_with_and_without_a_mask():
    """The default (SDPA on CPU) against the naive reference: plain causal, and the masked path that
    left padding and the KV cache take."""
    model = lively(tiny(n_kv_head=2))
    idx, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12, 13]])
    out = {}
    for backend in ("torch", "auto"):
        model.cfg.attn_backend = backend
        out[backend] = (model(idx)[0], generate(model, idx, 6, temperature=0, attention_mask=mask))
    assert torch.allclose(out["torch"][0], out["auto"][0], atol=1e-4)
    assert out["torch"][1].tolist() == out["auto"][1].tolist()


def test_triton_kernel_backend_gives_the_same_logits_and_gradients():
    """The model through kernels/ (Triton; its interpreter on CPU): GQA, a ragged length of 20."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=64))
    idx = torch.randint(0, 50, (1, 20))
    results = []
    for backend in ("torch", "triton"):
        model.cfg.attn_backend = backend
        model.zero_grad()
        logits, loss = model(idx, idx)
        loss.backward()
        results.append((logits, [p.grad.clone() for p in model.parameters()]))
    (a, grads_a), (b, grads_b) = results
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(grads_a, grads_b))


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    cfg = tiny(n_experts=2, moe_top_k=1)  # MoE too: its aux loss must flow through the checkpoint
    torch.manual_seed(0)
    a = GPT(cfg)
    b = GPT(cfg)
    b.load_state_dict(a.state_dict())
    b.grad_checkpointing = True
    idx = torch.randint(0, 67, (2, 16))
    la, lb = a(idx, idx)[1], b(idx, idx)[1]
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


# ----------------------------------------------------------------------------- components


def test_rmsnorm_and_layernorm_formulas():
    x = torch.randn(3, 5, 16)
    rms = RMSNorm(16)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(rms(x), expected, atol=1e-6)
    ln = LayerNorm(16)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    assert torch.allclose(ln(x), (x - mean) / torch.sqrt(var + 1e-5), atol=1e-5)


def test_sinusoidal_positions_match_the_paper_formula():
    d = 10
    pe = sinusoidal_positions(torch.arange(50), d)
    assert pe.shape == (50, d)
    for p in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_moe_routes_each_token_to_k_experts_and_mixes_them_by_router_weight():
    torch.manual_seed(0)
    cfg = tiny(n_experts=4, moe_top_k=2)
    moe = GPT(cfg).blocks[0].ffn
    seen = []
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, inp, out, e=e: seen.append((e, inp[0].shape[0])))
    x = torch.randn(2, 5, 32)
    out, aux = moe(x)
    assert sum(n for _, n in seen) == 10 * 2  # 10 tokens, 2 expert visits each
    # the same output, token by token, straight from the definition
    flat = x.reshape(-1, 32)
    probs = moe.router(flat).softmax(-1)
    for t in range(10):
        top = probs[t].topk(2)
        w = top.values / top.values.sum()
        manual = sum(w[j] * moe.experts[e](flat[t : t + 1])[0] for j, e in enumerate(top.indices.tolist()))
        assert torch.allclose(out.reshape(-1, 32)[t], manual, atol=1e-5)


def test_load_balancing_loss_is_one_at_uniform_load_and_larger_when_skewed():
    E, N = 4, 64
    uniform = load_balancing_loss(torch.full((N, E), 1 / E), torch.arange(N)[:, None] % E, E)
    assert uniform.item() == pytest.approx(1.0)
    skewed_probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(N, 1)
    skewed = load_balancing_loss(skewed_probs, torch.zeros(N, 1, dtype=torch.long), E)
    assert skewed.item() == pytest.approx(4 * 0.7)
    # when the load follows the router (f = P = d), the loss is E·Σ d_i², which by Cauchy-Schwarz is
    # >= 1 with equality only at d uniform
    for counts in ([16, 16, 16, 16], [32, 16, 8, 8], [40, 8, 8, 8], [61, 1, 1, 1]):
        d = torch.tensor(counts, dtype=torch.float32) / N
        top_idx = torch.repeat_interleave(torch.arange(E), torch.tensor(counts))[:, None]
        loss = load_balancing_loss(d.repeat(N, 1), top_idx, E).item()
        assert loss == pytest.approx(E * (d**2).sum().item())
        assert loss >= 1.0 - 1e-6 and (loss > 1.01 or counts == [16] * 4)


def test_moe_aux_loss_is_added_to_the_lm_loss():
    torch.manual_seed(0)
    cfg = tiny(n_experts=4, moe_aux_coef=0.5)
    model = GPT(cfg)
    idx = torch.randint(0, 67, (2, 16))
    logits, loss = model(idx, idx)
    ce = F.cross_entropy(logits.reshape(-1, 67), idx.reshape(-1))
    assert torch.allclose(loss, ce + 0.5 * model.aux_loss)
    assert model.aux_loss.item() >= 1.0 - 1e-6


@pytest.mark.parametrize("pairs", ["interleaved", "half"])
def test_rope_pairings_both_preserve_norm_and_depend_only_on_relative_position(pairs):
    hd = 16
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def rotated(x, p):
        cos, sin = rope_cos_sin(torch.tensor([[p]]), hd)
        return apply_rope(x, cos[:, None], sin[:, None], pairs)

    assert torch.allclose(rotated(q, 9).norm(), q.norm(), atol=1e-5)
    dots = [(rotated(q, m) * rotated(k, n)).sum().item() for m, n in [(5, 2), (13, 10), (40, 37)]]
    assert dots[0] == pytest.approx(dots[1], abs=1e-4) == pytest.approx(dots[2], abs=1e-4)
    assert (rotated(q, 5) * rotated(k, 4)).sum().item() != pytest.approx(dots[0], abs=1e-3)


def test_rope_checkpoint_converts_between_pairings_by_permuting_q_and_k_rows():
    """An interleaved-RoPE model and its half-split conversion (wq, wk rows and biases, QK-norm weights
    permuted within each head) give the same logits; unconverted weights give another model."""
    inter = lively(tiny(n_kv_head=2, qk_norm=True, bias=True))
    with torch.no_grad():
        for prm in inter.parameters():
            if prm.dim() == 1:  # biases and norm weights too, so that their permutation matters
                prm.add_(torch.randn_like(prm) * 0.3)
    half = GPT(dataclasses.replace(inter.cfg, rope_pairs="half")).eval()
    state = inter.state_dict()
    half.load_state_dict(permute_rope_weights(state, inter.cfg, to="half"))
    idx = torch.randint(0, 67, (2, 20))
    assert torch.allclose(inter(idx)[0], half(idx)[0], atol=1e-5)
    back = permute_rope_weights(half.state_dict(), inter.cfg, to="interleaved")
    assert all(torch.equal(back[k], v) for k, v in state.items())
    half.load_state_dict(state)  # the wrong convention: runs, but is not the same model
    assert not torch.allclose(inter(idx)[0], half(idx)[0], atol=1e-2)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_document_mask_a_token_never_sees_an_earlier_document(name):
    """With doc_boundary_id set, tokens from the boundary on are unchanged when everything before it
    is altered, and a document anywhere in the window gives the same outputs (positions restart)."""
    model = lively(tiny(**VARIANTS[name], doc_boundary_id=0))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(1, 67, (2, 24), generator=g)  # ids >= 1: no boundary by chance
    idx[:, 10] = 0  # a document opens at position 10
    changed = idx.clone()
    changed[:, :10] = torch.randint(1, 67, (2, 10), generator=g)
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, 10:], b[:, 10:], atol=1e-5)
    assert not torch.allclose(a[:, :10], b[:, :10], atol=1e-3)
    moved = torch.cat(
        [torch.randint(1, 67, (2, 4), generator=g), idx[:, 10:], torch.randint(1, 67, (2, 6), generator=g)],
        dim=1,
    )  # the same document at 4..17
    assert torch.allclose(a[:, 10:], model(moved)[0][:, 4:18], atol=1e-5)
    model.cfg.doc_boundary_id = -1  # off: the earlier document leaks in
    assert not torch.allclose(model(idx)[0][:, 10:], model(changed)[0][:, 10:], atol=1e-3)


# ----------------------------------------------------------------------------- the loss (lm_loss.py)


def test_logsumexp_softmax_log_softmax_match_torch_and_survive_huge_logits():
    x = torch.randn(6, 50, dtype=torch.float64) * 3
    x[0] += 1000.0  # exp overflows float64 past 709
    x[1, :10] = float("-inf")  # masked entries
    x.requires_grad_()
    for ours, theirs in [
        (logsumexp, lambda t: t.logsumexp(-1)),
        (softmax, lambda t: t.softmax(-1)),
        (log_softmax, lambda t: t.log_softmax(-1)),
    ]:
        w = torch.randn_like(theirs(x))  # a random upstream gradient
        a, (ga,) = ours(x), torch.autograd.grad((ours(x).nan_to_num(neginf=0) * w).sum(), x)
        b, (gb,) = theirs(x), torch.autograd.grad((theirs(x).nan_to_num(neginf=0) * w).sum(), x)
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))
        torch.testing.assert_close(a[torch.isfinite(a)], b[torch.isfinite(b)])
        torch.testing.assert_close(ga, gb)
    naive = x.detach().exp().sum(-1).log()  # what the trick avoids
    assert torch.isinf(naive[0]) and torch.isfinite(logsumexp(x)[0])
    assert logsumexp(torch.full((1, 4), float("-inf"))).item() == float("-inf")


def test_softmax_subtracts_the_max_and_stays_within_1e6_of_torch_at_large_offsets():
    """fp32 at offsets up to 1e4: exp(x - logsumexp(x)) is off torch by 1.6e-6 at +100 and 3.8e-4 at
    +1e4 (x - lse rounds to the spacing of |lse|); the max-subtraction form stays at ~1.8e-7."""
    g = torch.Generator().manual_seed(0)
    for offset in (0.0, 100.0, -1000.0, 1e4):
        x = torch.randn(64, 1000, generator=g) * 3 + offset
        p = softmax(x)
        assert (p - torch.softmax(x, -1)).abs().max() < 1e-6, offset
        assert (p.sum(-1) - 1).abs().max() < 1e-6, offset
    x = torch.randn(64, 1000, generator=g) * 3 + 100.0
    lse_form = (x - logsumexp(x, -1, keepdim=True)).exp()  # the form it replaced: the test can fail
    assert (lse_form - torch.softmax(x, -1)).abs().max() > 1e-6


def test_cross_entropy_and_z_loss_values_and_gradients_match_autograd_of_torch():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(12, 30, generator=g, dtype=torch.float64) * 4).requires_grad_()
    targets = torch.randint(0, 30, (12,), generator=g)
    targets[[2, 7]] = -100  # ignored positions
    ce, z_sq = cross_entropy_and_z(logits, targets)
    loss = ce + 0.3 * z_sq
    (grad,) = torch.autograd.grad(loss, logits)
    keep = targets != -100
    ref = F.cross_entropy(logits, targets) + 0.3 * logits[keep].logsumexp(-1).square().mean()
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)  # (softmax - onehot)/n + 2·coef·lse·softmax/n
    assert grad[2].abs().max() == 0
    none = torch.full((12,), -100)  # nothing to predict: 0, not torch's NaN
    assert cross_entropy(logits, none).item() == 0.0 and torch.isnan(F.cross_entropy(logits, none))


def test_model_loss_is_lm_loss_cross_entropy_plus_z_loss(monkeypatch):
    calls = []
    monkeypatch.setattr(
        gpt_module, "cross_entropy_and_z", lambda *a: calls.append(a) or cross_entropy_and_z(*a)
    )
    model = lively(tiny(z_loss_coef=0.01))
    idx = torch.randint(0, 67, (2, 12))
    logits, loss = model(idx, idx)
    lse = logits.detach().reshape(-1, 67).logsumexp(-1)
    expected = F.cross_entropy(logits.detach().reshape(-1, 67), idx.reshape(-1)) + 0.01 * lse.square().mean()
    assert len(calls) == 1 and torch.allclose(loss, expected, atol=1e-5)
    assert model.z_loss.item() == pytest.approx(lse.square().mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- memory (model_memory.py)


def saved_bytes_of_one_block(cfg, B, T, dtype, checkpointing=False):
    """Bytes of the tensors autograd keeps for the backward of block 0 (each storage once; weights and
    the RoPE tables shared by all layers left out), measured with saved_tensors_hooks."""
    torch.manual_seed(0)
    model = GPT(cfg).to(dtype)
    block = model.blocks[0]
    cos, sin = rope_cos_sin(torch.arange(T)[None], cfg.head_dim)
    rope = (cos[:, None], sin[:, None]) if cfg.pos_emb == "rope" else None
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), cos, sin]}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(B, T, cfg.n_embd, dtype=dtype, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if checkpointing:
            torch.utils.checkpoint.checkpoint(block, x, rope, None, use_reentrant=False)
        else:
            block(x, rope)
    return sum(seen.values())


MEMORY_CASES = [  # (variant, dtype, attention backend, checkpointing)
    ("gpt2", torch.float32, "flash", False),
    ("gpt2", torch.bfloat16, "flash", False),
    ("gpt2", torch.float32, "naive", False),
    ("gpt2", torch.bfloat16, "naive", False),
    ("llama", torch.bfloat16, "flash", False),
    ("gqa+qknorm", torch.float32, "flash", False),
    ("gqa+qknorm", torch.bfloat16, "naive", False),
    ("post-ln+sinusoidal+relu", torch.bfloat16, "flash", False),
    ("llama", torch.float32, "flash", True),
]


@pytest.mark.parametrize(
    "name,dtype,attention,checkpointing",
    MEMORY_CASES,
    ids=[f"{n}-{str(d)[6:]}-{a}{'-ckpt' if c else ''}" for n, d, a, c in MEMORY_CASES],
)
def test_activation_bytes_per_layer_is_what_autograd_saves(name, dtype, attention, checkpointing):
    cfg = tiny(**VARIANTS[name], attn_backend="auto" if attention == "flash" else "torch")
    B, T = 2, 24  # T, head dim (8) and width (32) all differ, so no two terms can stand in for each other
    measured = saved_bytes_of_one_block(cfg, B, T, dtype, checkpointing)
    assert measured == activation_bytes_per_layer(cfg, B, T, dtype, attention, checkpointing, device="cpu")
    with pytest.raises(ValueError, match="dense blocks"):
        activation_bytes_per_layer(tiny(n_experts=2), B, T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_activation_bytes_per_layer_matches_the_gpu_allocator(name):
    cfg = GPTConfig(vocab_size=256, block_size=512, n_layer=1, n_head=4, n_embd=256, **PRESETS[name])
    model = GPT(cfg).to("cuda", torch.bfloat16)
    x = torch.randn(4, 512, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(512, device="cuda")[None], cfg.head_dim)
    rope = (cos[:, None], sin[:, None]) if cfg.pos_emb == "rope" else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    y, _ = model.blocks[0](x, rope)
    torch.cuda.synchronize()
    # what stays allocated after the forward is what autograd saved, plus the output (x existed before)
    kept = torch.cuda.memory_allocated() - before - y.numel() * y.element_size()
    expected = activation_bytes_per_layer(cfg, 4, 512, torch.bfloat16) - x.numel() * x.element_size()
    assert kept == pytest.approx(expected, rel=0.02)
    assert torch.cuda.max_memory_allocated() - before >= expected  # the peak adds transients on top


def test_kv_cache_bytes_is_what_the_cache_allocates():
    cfg = tiny(n_kv_head=2)
    model = GPT(cfg).eval()
    cache = KVCache(cfg.n_layer, max_len=20)
    with torch.no_grad():
        model(torch.randint(0, 67, (3, 5)), cache=cache)
    allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert allocated == kv_cache_bytes(cfg, batch=3, seq_len=20, bytes_per_value=4)
    assert kv_cache_bytes(tiny(), 3, 20) == 2 * kv_cache_bytes(cfg, 3, 20)  # MHA: 4 kv heads instead of 2


# ----------------------------------------------------------------------------- counting


def test_gpt2_small_parameter_count():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, **PRESETS["gpt2"])
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(cfg)
    assert model.num_params(non_embedding=False) == 124_439_808  # the published GPT-2 small count
    assert model.num_params() == 124_439_808 - 50257 * 768 - 1024 * 768


@pytest.mark.parametrize("name", ["gpt2", "llama", "gqa+qknorm", "mqa+untied", "moe"])
def test_flops_per_token_equals_the_flops_counted_in_a_training_step(name):
    """torch's FlopCounterMode counts every matmul of a real forward + backward; with naive attention
    (plain matmuls over the full T×T square, the convention of the formula) it must equal
    flops_per_token · tokens exactly, MoE routing included."""
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name], attn_backend="torch")
    model = GPT(cfg)
    B, T = 2, 16
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    assert counter.get_total_flops() == flops_per_token(cfg, T) * B * T


@pytest.mark.parametrize("name", ["llama", "gqa+qknorm", "mqa+untied"])
def test_matmul_params_counts_every_weight_matrix_a_token_passes(name):
    cfg = tiny(**VARIANTS[name])
    model = GPT(cfg)
    block_mats = sum(p.numel() for n, p in model.blocks.named_parameters() if p.dim() == 2)
    assert matmul_params(cfg) == block_mats + cfg.n_embd * cfg.vocab_size


# ----------------------------------------------------------------------------- decoding


def test_top_p_keeps_the_smallest_set_reaching_mass_p():
    logits = torch.tensor([[0.125, 0.5, 0.125, 0.25]]).log()  # sorted: 0.5, 0.25, 0.125, 0.125
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()
    assert kept(0.4) == [False, True, False, False]  # 0.5 alone reaches 0.4
    assert kept(0.7) == [False, True, False, True]  # 0.5 + 0.25 = 0.75 >= 0.7
    assert sum(kept(0.8)) == 3  # needs one of the 0.125s (0.875)
    assert sum(kept(1.0)) == 4


def test_top_k_temperature_and_repetition_penalty():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]
    assert sample_next(logits, temperature=0).tolist() == [1]
    g = torch.Generator().manual_seed(0)
    draws = [sample_next(logits, temperature=1.0, top_k=1, generator=g).item() for _ in range(20)]
    assert set(draws) == {1}
    prev = torch.tensor([[1, 3, 0]])
    mask = torch.tensor([[True, True, False]])  # token 0 is padding: not penalized
    out = apply_repetition_penalty(logits, prev, 2.0, mask)
    assert out.tolist() == [[1.0, 1.5, 2.0, -2.0]]


def test_left_pad_right_aligns_prompts():
    idx, mask = left_pad([[5, 6], [7, 8, 9]], pad_id=0)
    assert idx.tolist() == [[0, 5, 6], [7, 8, 9]]
    assert mask.tolist() == [[False, True, True], [True, True, True]]


@pytest.mark.parametrize("name", ["llama", "gpt2", "gqa+qknorm", "moe", "post-ln+sinusoidal+relu"])
def test_kv_cache_generation_equals_full_recomputation(name):
    model = lively(tiny(**VARIANTS[name]))
    idx = torch.randint(0, 67, (2, 7))
    cached = generate(model, idx, 20, temperature=0)
    full = generate(model, idx, 20, temperature=0, use_cache=False)
    assert cached.tolist() == full.tolist()
    assert len(set(cached[0, 7:].tolist())) > 3  # a real continuation, not one repeated token
    # sampling too: the same generator seed gives the same draws
    a = generate(model, idx, 20, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = generate(
        model,
        idx,
        20,
        temperature=1.0,
        top_p=0.9,
        use_cache=False,
        generator=torch.Generator().manual_seed(1),
    )
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("name", ["llama", "gpt2", "post-ln+sinusoidal+relu"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(name):
    model = lively(tiny(**VARIANTS[name]))
    prompts = [[3, 14, 15, 9], [26, 5], [35, 8, 9, 7, 9, 32, 3]]
    idx, mask = left_pad(prompts, pad_id=0)
    batch = generate(model, idx, 12, temperature=0, attention_mask=mask)
    full = generate(model, idx, 12, temperature=0, attention_mask=mask, use_cache=False)
    assert batch.tolist() == full.tolist()
    for row, p in zip(batch, prompts):
        alone = generate(model, torch.tensor([p]), 12, temperature=0)[0]
        assert row[idx.shape[1] :].tolist() == alone[len(p) :].tolist()


def test_stop_tokens_end_a_row_and_pad_the_rest():
    model = lively(tiny())
    idx = torch.randint(0, 67, (2, 5))
    free = generate(model, idx, 10, temperature=0)
    stop = free[0, 7].item()  # row 0 produces this token at its third step
    out = generate(model, idx, 10, temperature=0, stop_tokens=[stop], pad_id=66)
    row0 = out[0, 5:].tolist()
    first = row0.index(stop)
    assert all(t == 66 for t in row0[first + 1 :])
    assert row0[: first + 1] == free[0, 5 : 5 + first + 1].tolist()


def test_beam_search_finds_a_likelier_sequence_than_greedy():
    """A hand-built 3-token model: first token A (0.6) or B (0.4); after A every token has 1/3, after B
    the next is B with 0.9. Greedy takes A: 0.6 · 1/3 = 0.2. Beams of 2 keep B: 0.4 · 0.9 = 0.36."""
    table = {(): [0.6, 0.4, 0.0], (0,): [1 / 3, 1 / 3, 1 / 3], (1,): [0.05, 0.9, 0.05]}
    history = []

    def next_logits(tokens, parents):  # keeps each beam's tokens the way a KV cache keeps its rows
        nonlocal history
        rows = tokens.tolist()
        history = rows if parents is None else [history[p] + t for p, t in zip(parents.tolist(), rows)]
        return torch.tensor([table[tuple(h[1:])] for h in history]).log()  # h[0] is the prompt

    prompt = torch.tensor([7])
    greedy, greedy_lp = beam_search(next_logits, prompt, 2, beam_width=1)
    best, best_lp = beam_search(next_logits, prompt, 2, beam_width=2)
    assert greedy[0, 1].item() == 0 and greedy_lp == pytest.approx(math.log(0.2))
    assert best.tolist() == [[7, 1, 1]] and best_lp == pytest.approx(math.log(0.36))


def test_beam_search_of_width_1_is_greedy_and_scores_are_the_models_log_probabilities():
    model = lively(tiny(n_kv_head=2))
    idx = torch.randint(0, 67, (1, 6))
    greedy = generate(model, idx, 10, temperature=0)
    assert generate_beam(model, idx, 10, beam_width=1)[0].tolist() == greedy.tolist()
    tokens, score = generate_beam(model, idx, 10, beam_width=3)
    # the score, computed step by step through a reordered KV cache, equals one full forward's
    logp = model(tokens)[0][0, 5:-1].log_softmax(-1).gather(1, tokens[0, 6:, None]).sum().item()
    assert score == pytest.approx(logp, abs=1e-4)
    stop = greedy[0, 8].item()  # the third generated token ends the greedy beam
    assert generate_beam(model, idx, 10, 1, stop_tokens=[stop])[0].tolist() == [greedy[0, :9].tolist()]


def test_kv_cache_is_preallocated_once_per_layer():
    cache = KVCache(n_layer=2, max_len=10)
    k = torch.randn(1, 2, 4, 8)
    k_all, _ = cache.update(0, k, k)
    buffer = cache.k[0]
    cache.pos = 4
    k_all, _ = cache.update(0, k[:, :, :1], k[:, :, :1])
    assert cache.k[0] is buffer and buffer.shape == (1, 2, 10, 8) and k_all.shape == (1, 2, 5, 8)


# ----------------------------------------------------------------------------- training


def test_tiny_gpt_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg)
    x = torch.randint(0, 64, (4, 33))
    idx, targets = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(1, 301):  # noqa: B007 (printed after the loop)
        _, loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    print(f"overfit one batch: {step} steps, final loss {loss.item():.4f}, {time.perf_counter() - t0:.1f} s")
    assert loss.item() < 0.05


# ----------------------------------------------------------------------------- errors and checkpoints


def test_bad_configs_and_inputs_raise_user_errors():
    with pytest.raises(UserError, match="n_head=6 is not divisible by n_kv_head=4"):
        GPTConfig(n_head=6, n_kv_head=4, n_embd=48)
    with pytest.raises(UserError, match="'batchnorm' is not one of layernorm, rmsnorm"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(
        UserError, match=r"head dim 24 .* not supported by the Triton kernel; use one of \(32, 64, 128\)"
    ):
        GPTConfig(n_embd=96, n_head=4, attn_backend="triton")
    model = GPT(tiny())
    with pytest.raises(UserError, match=r"49 tokens.*block_size=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    for bad, message in [
        (dict(temperature=-1), "temperature=-1 must be >= 0"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_k=0), "top_k=0"),
        (dict(repetition_penalty=0), "repetition_penalty=0 must be > 0"),
    ]:
        with pytest.raises(UserError, match=message):
            generate(model, torch.zeros(1, 4, dtype=torch.long), 5, **bad)
    with pytest.raises(
        UserError, match=r"prompt \(40 tokens\) \+ max_new_tokens \(10\) = 50 .*block_size=48"
    ):
        generate(model, torch.zeros(1, 40, dtype=torch.long), 10)


def test_checkpoint_roundtrip_truncation_and_config_mismatch(tmp_path):
    model = lively(tiny(n_kv_head=2))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, dataclasses.asdict(model.cfg), model.state_dict(), step=7)
    loaded = GPT.from_checkpoint(path)
    idx = torch.randint(0, 67, (2, 10))
    assert torch.equal(model(idx)[0], loaded(idx)[0])

    other = dataclasses.replace(model.cfg, n_layer=3)
    with pytest.raises(UserError, match=r"n_layer: saved=2 current=3"):
        GPT.from_checkpoint(path, config=other)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated.pt"):
        GPT.from_checkpoint(truncated)

    wrong = tmp_path / "wrong.pt"  # config says 3 layers, weights have 2
    save_checkpoint(wrong, dataclasses.asdict(other), model.state_dict())
    with pytest.raises(UserError, match="wrong.pt: weights do not fit"):
        GPT.from_checkpoint(wrong)


def test_a_flipped_byte_in_a_weight_is_refused_by_its_sha256(tmp_path):
    model = lively(tiny())
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, dataclasses.asdict(model.cfg), model.state_dict(), step=3, rng=[1, (2, 3)])
    assert load_checkpoint(path)["step"] == 3 and "sha256" not in load_checkpoint(path)
    raw = bytearray(path.read_bytes())
    w = next(t for t in model.state_dict().values() if t.numel() >= 64)
    at = raw.find(w.contiguous().view(-1).numpy().tobytes()[:256])  # torch.save stores tensors uncompressed
    assert at > 0
    raw[at + 17] ^= 0x01  # one bit of one weight: the zip still opens, the tensor is simply wrong
    (tmp_path / "flipped.pt").write_bytes(raw)
    with pytest.raises(UserError, match=r"flipped.pt: damaged checkpoint \(its SHA-256 does not match"):
        GPT.from_checkpoint(tmp_path / "flipped.pt")
    old = {k: v for k, v in torch.load(path, weights_only=True).items() if k != "sha256"}
    torch.save(old, tmp_path / "old.pt")  # written before the digest existed: loads, unchecked
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 3


def test_a_full_disk_during_a_save_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """torch.save reports ENOSPC as a RuntimeError ('unexpected pos ...'), after writing part of the file."""

    def full_disk(obj, f):
        Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 896 vs 790")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    monkeypatch.setattr(checkpoint_io.shutil, "disk_usage", lambda p: type("U", (), {"free": 4096})())
    model = lively(tiny())
    with pytest.raises(UserError) as e:
        save_checkpoint(tmp_path / "out" / "ckpt.pt", dataclasses.asdict(model.cfg), model.state_dict())
    assert re.fullmatch(
        r".*ckpt.pt: could not write the checkpoint \(the disk has 0.0 MiB free, the checkpoint needs about "
        r"[0-9.]+ MiB\); free space or choose --out elsewhere",
        str(e.value),
    )
    assert list((tmp_path / "out").iterdir()) == []  # the half-written temp file is gone


def test_the_divergence_guard_stops_on_nan_inf_and_a_loss_back_at_ln_vocab():
    guard = DivergenceGuard(lower="--lr (now 1)", vocab_size=100, patience=3)
    guard.check(1, torch.tensor(4.7), 2.0)  # ln 100 = 4.605: an untrained model starts about here
    for bad, what in ((math.nan, "the loss is nan"), (math.inf, "the loss is inf")):
        with pytest.raises(UserError, match=rf"diverged at step 2: {what}; .*; lower --lr \(now 1\)$"):
            guard.check(2, bad)
    with pytest.raises(UserError, match=r"the gradient norm is inf \(loss 3\)"):
        guard.check(2, 3.0, math.inf)
    guard.check(3, 1.0, 1.0)  # learned something ...
    for step in (4, 5):  # ... then back at ln V: two steps are not yet stuck
        guard.check(step, math.log(100) + 0.01)
    guard.check(6, 2.0)  # and leaving resets the count
    for step in (7, 8):
        guard.check(step, math.log(100))
    with pytest.raises(UserError, match=r"≈ ln\(100\) = 4.6052, the loss of a uniform guess, for 3 steps"):
        guard.check(9, math.log(100))
    fresh = DivergenceGuard(
        vocab_size=100, patience=3
    )  # never below ln V: an untrained start, not a collapse
    for step in range(10):
        fresh.check(step, math.log(100))


# ----------------------------------------------------------------------------- transformer.py

SPECIALS = special_ids(256)


def small_transformer(seed=0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.0)).eval()


def test_encoder_is_bidirectional_decoder_is_causal_and_reads_the_encoder():
    model = small_transformer()
    src, tgt = torch.randint(0, 256, (2, 12)), torch.randint(0, 256, (2, 9))
    logits = model(src, tgt)
    assert logits.shape == (2, 9, 256 + 2 + N_SENTINELS)
    src2 = src.clone()
    src2[:, -1] = (src[:, -1] + 1) % 256
    assert not torch.allclose(model.encode(src)[:, 0], model.encode(src2)[:, 0], atol=1e-4)  # sees the future
    assert not torch.allclose(logits, model(src2, tgt), atol=1e-4)  # cross-attention reads the encoder
    tgt2 = tgt.clone()
    tgt2[:, 5] = (tgt[:, 5] + 1) % 256
    assert torch.allclose(logits[:, :5], model(src, tgt2)[:, :5], atol=1e-5)  # decoder: past only


def test_mlm_corruption_is_15_percent_with_80_10_10():
    tokens = torch.randint(0, 256, (200, 500))
    inputs, labels = mlm_inputs(tokens, SPECIALS, generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(labels[chosen], tokens[chosen]) and torch.equal(inputs[~chosen], tokens[~chosen])
    masked = (inputs[chosen] == SPECIALS["mask"]).float().mean().item()
    unchanged = (inputs[chosen] == tokens[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.01)
    assert unchanged == pytest.approx(0.1 + 0.1 / 256, abs=0.01)  # kept, or a random draw of the same token
    assert (inputs[chosen] < 256).float().mean().item() == pytest.approx(0.2, abs=0.01)


def test_span_corruption_source_and_target_rebuild_the_original():
    g = torch.Generator().manual_seed(0)
    sentinels = SPECIALS["sentinels"]
    for L in (10, 40, 100):
        lengths = set()
        for _ in range(20):
            row = torch.randint(0, 256, (L,)).tolist()
            source, target = span_corrupt(row, sentinels, generator=g)
            lengths.add((len(source), len(target)))
            spans, current = {}, None  # target: <s_i> span_i ... <s_last>
            for t in target:
                if t in sentinels:
                    current = t
                    spans[t] = []
                else:
                    spans[current].append(t)
            rebuilt = [x for t in source for x in (spans[t] if t in sentinels else [t])]
            assert rebuilt == row
            assert sum(len(v) for v in spans.values()) == max(1, round(0.15 * L))
        assert len(lengths) == 1  # every example of length L has the same shapes: no padding needed


@pytest.mark.parametrize("objective", ["clm", "mlm", "span"])
def test_each_objective_learns_a_fixed_batch(objective):
    model = small_transformer().train()
    tokens = torch.randint(0, 256, (4, 24))
    loss_fn = transformer_module.OBJECTIVES[objective]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):  # the same corruption every step, so the batch can be memorized
        loss = loss_fn(model, tokens, SPECIALS, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def write_data_run(run):
    """A runs/<name>/data/ folder with a manifest, as 01_data/prepare.py leaves it."""
    (run / "data").mkdir(parents=True)
    text = "the cat sat on the mat. " * 40
    (run / "data" / "train.jsonl").write_text(
        "\n".join(json.dumps({"id": str(i), "text": text}) for i in range(5))
    )
    write_manifest(run / "data", stage="01_data", command="python 01_data/prepare.py", config={})


def test_transformer_demo_prints_and_writes_the_same_measured_results(tmp_path, capsys):
    write_data_run(tmp_path)
    argv = [
        "--data",
        str(tmp_path),
        "--seconds",
        "0.5",
        "--block-size",
        "32",
        "--n-layer",
        "1",
        "--n-embd",
        "32",
        "--batch-size",
        "4",
        "--tokenizer",
        "bytes",
    ]
    transformer_module.main(argv)
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "transformer" / "metrics.json").read_text())
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["clm"], ["mlm"], ["span"])]
    assert [r[0] for r in rows] == [r["objective"] for r in metrics["results"]] == ["clm", "mlm", "span"]
    for printed, r in zip(rows, metrics["results"]):  # objective steps first -> last before -> after tok/s
        assert int(printed[1]) == r["steps"] >= 1 and int(printed[-1]) == r["tokens_per_s"]
        assert float(printed[2]) == pytest.approx(r["train_first"], abs=5e-4)
        assert float(printed[5]) == pytest.approx(r["val_before"], abs=5e-4)
        # seconds is stored to 0.1 s and tokens/s to 1, so the true time lies within ±0.05 s of the stored one:
        # a relative tolerance would fail by rounding alone on a fast machine (0.24 s stored as 0.2 is 20 % off)
        tokens = r["steps"] * 4 * 32
        assert (
            (r["tokens_per_s"] - 1) * (r["seconds"] - 0.05)
            <= tokens
            <= (r["tokens_per_s"] + 1) * (r["seconds"] + 0.05)
        )
    # clm's untrained val loss is near ln(vocab): the model starts knowing nothing
    assert metrics["results"][0]["val_before"] == pytest.approx(math.log(256 + 2 + 16), abs=1.0)
    manifest = json.loads((tmp_path / "transformer" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"metrics.json", "loss.png"} and manifest["inputs"]
    assert (tmp_path / "transformer" / "loss.png").stat().st_size > 1000
    with pytest.raises(UserError, match="already holds a run"):
        transformer_module.main(argv)


def make_run(run):
    """runs/<name>/tokenizer (with its manifest) and pretrain/ckpt.pt naming it as "../tokenizer",
    as 04_pretrain writes it. Returns (model, tokenizer, checkpoint path)."""
    from bpe import BPETokenizer

    tok = BPETokenizer.train(["the cat sat on the mat, the dog sat on the log"] * 5, vocab_size=280)
    tok.save(run / "tokenizer")
    write_manifest(
        run / "tokenizer", stage="02_tokenizer", command="python 02_tokenizer/train_tokenizer.py", config={}
    )
    model = lively(tiny(vocab_size=tok.vocab_size))
    ckpt = run / "pretrain" / "ckpt.pt"
    save_checkpoint(ckpt, dataclasses.asdict(model.cfg), model.state_dict(), tokenizer="../tokenizer")
    return model, tok, ckpt


def test_sampling_cli_prints_what_the_model_generates(tmp_path, capsys):
    import sample_text

    model, tok, ckpt = make_run(tmp_path / "run")
    prompts = ["the cat", "a dog sat"]
    sample_text.main(
        [
            "--ckpt",
            str(ckpt),
            "--prompt",
            *prompts,
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
            "--repetition-penalty",
            "1",
        ]
    )
    expected = ""
    for p in prompts:  # each prompt alone, greedy: the left-padded batch must give the same
        ids = [tok.eot_id] + tok.encode(p)
        row = generate(model, torch.tensor([ids]), 8, temperature=0, stop_tokens=[tok.eot_id])[
            0, len(ids) :
        ].tolist()
        expected += (
            f"--- {p!r}\n{p}{tok.decode(row[: row.index(tok.eot_id)] if tok.eot_id in row else row)}\n"
        )
    assert capsys.readouterr().out == expected
    # beam search: the printed log-probability is the model's for the printed tokens
    sample_text.main(
        ["--ckpt", str(ckpt), "--prompt", "the cat", "--beam-width", "3", "--max-new-tokens", "6"]
    )
    ids = [tok.eot_id] + tok.encode("the cat")
    tokens, logprob = generate_beam(model, torch.tensor([ids]), 6, 3, stop_tokens=[tok.eot_id])
    head, text = capsys.readouterr().out.splitlines()[:2]
    assert head == f"--- 'the cat' (beam search, log-probability {logprob:.2f})"
    assert text.startswith("the cat")
    # an older checkpoint holding an absolute tokenizer path still works
    old = tmp_path / "old.pt"
    save_checkpoint(
        old, dataclasses.asdict(model.cfg), model.state_dict(), tokenizer=str(tmp_path / "run" / "tokenizer")
    )
    sample_text.main(
        [
            "--ckpt",
            str(old),
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
            "--repetition-penalty",
            "1",
        ]
    )
    assert capsys.readouterr().out == expected.split("--- 'a dog sat'")[0]
    small = lively(tiny(vocab_size=100))
    save_checkpoint(tmp_path / "small.pt", dataclasses.asdict(small.cfg), small.state_dict())
    with pytest.raises(UserError, match=rf"tokenizer has {tok.vocab_size} tokens but the model only 100"):
        sample_text.main(
            ["--ckpt", str(tmp_path / "small.pt"), "--tokenizer", str(tmp_path / "run" / "tokenizer")]
        )
    with pytest.raises(UserError, match="no tokenizer found"):
        sample_text.main(["--ckpt", str(tmp_path / "small.pt")])


def test_every_expert_gets_a_gradient_even_with_no_tokens_routed_to_it():
    """DDP waits for a gradient of every parameter; an expert left out of the graph would hang it."""
    torch.manual_seed(0)
    model = GPT(tiny(n_experts=8, moe_top_k=1, n_layer=1))
    idx = torch.randint(0, 67, (1, 2))  # 2 tokens, 8 experts: at least 6 receive nothing
    model(idx, idx)[1].backward()
    assert all(p.grad is not None for p in model.blocks[0].ffn.experts.parameters())


def test_bench_generate_prints_and_saves_the_same_table(tmp_path, capsys):
    import bench_generate

    bench_generate.main(
        [
            "--lengths",
            "4,8",
            "--n-layer",
            "1",
            "--n-embd",
            "32",
            "--n-head",
            "2",
            "--n-kv-head",
            "1",
            "--batch-size",
            "2",
            "--out",
            str(tmp_path / "g.png"),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    saved = json.loads((tmp_path / "g.json").read_text())
    assert lines[1].split()[:2] == ["new", "tokens"] and [int(l.split()[0]) for l in lines[2:4]] == [4, 8]
    cfg = GPTConfig(vocab_size=512, block_size=16 + 8, n_layer=1, n_head=2, n_kv_head=1, n_embd=32)
    for line, row in zip(lines[2:4], saved["rows"]):
        n, cached, full, speedup, mib, mib_mha = line.split()
        assert float(cached) == pytest.approx(row["cached_tok_s"], abs=0.5)
        assert float(speedup[:-1]) == pytest.approx(row["cached_tok_s"] / row["no_cache_tok_s"], abs=0.051)
        assert row["cache_mib_bf16"] == kv_cache_bytes(cfg, 2, 16 + int(n)) / 2**20
        assert float(mib) == pytest.approx(row["cache_mib_bf16"], abs=0.005)
        assert row["cache_mib_bf16_mha"] == pytest.approx(
            2 * row["cache_mib_bf16"]
        )  # 2 query heads, 1 kv head
    assert (tmp_path / "g.png").stat().st_size > 1000


REFERENCE_MODEL = """
from dataclasses import dataclass
import torch.nn as nn, torch.nn.functional as F
@dataclass
class GPTConfig:
    block_size: int; vocab_size: int; n_layer: int; n_head: int; n_embd: int; dropout: float; bias: bool
class GPT(nn.Module):  # a bigram model standing in for another GPT implementation
    def __init__(self, c):
        super().__init__()
        self.emb, self.head = nn.Embedding(c.vocab_size, c.n_embd), nn.Linear(c.n_embd, c.vocab_size)
    def forward(self, idx, targets):
        logits = self.head(self.emb(idx))
        return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
"""


def test_bench_train_step_times_ours_beside_a_reference_model(tmp_path, capsys):
    import bench_train_step

    (tmp_path / "ref.py").write_text(REFERENCE_MODEL)
    bench_train_step.main(
        [
            "--contexts",
            "16,8",
            "--tokens",
            "32",
            "--n-layer",
            "1",
            "--n-embd",
            "32",
            "--steps",
            "1",
            "--vocab-size",
            "50",
            "--reference",
            str(tmp_path / "ref.py"),
            "--out",
            str(tmp_path / "t.png"),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [(r["context"], r["model"]) for r in rows] == [
        (T, m) for T in (16, 8) for m in ("reference", "ours (auto)", "ours (torch)")
    ]
    ours = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=4, n_embd=32, **PRESETS["gpt2"]))
    assert rows[1]["params"] == ours.num_params(non_embedding=False) and rows[0]["params"] == 50 * 32 * 2 + 50
    for line, r in zip(lines[2:8], rows):
        assert line.split()[:3] == [str(r["context"]), str(r["batch"]), r["model"].split()[0]]
        assert line.endswith(", ".join(f"{v:.2f}x" for v in r["ratios"].values()))
    assert rows[0]["ratios"] == {"wall_tok_s": 1.0, "best_tok_s": 1.0, "cpu_tok_s": 1.0}
    assert (tmp_path / "t.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- bad input, in a subprocess


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_run(run)
    (run / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    return run


BAD_INPUT = [  # (script, arguments, part of the one error line); {run} is the run folder above.
    # One case per class (missing / corrupt input, a flag out of range, a cross-field conflict, a device
    # that is not there, input too long for the model): each costs a Python start with torch.
    (
        "sample_text.py",
        ["--ckpt", "{run}/nothing/ckpt.pt"],
        "make it with `python 04_pretrain/pretrain.py --data",
    ),
    ("sample_text.py", ["--ckpt", "{run}/corrupt.pt"], "corrupt or truncated checkpoint"),
    ("sample_text.py", ["--ckpt", "{run}/pretrain/ckpt.pt", "--device", "cuda:99"], "--device cuda:99"),
    (
        "sample_text.py",
        ["--ckpt", "{run}/pretrain/ckpt.pt", "--prompt", "the cat sat " * 20],
        "longest prompt",
    ),
    (
        "sample_text.py",
        ["--ckpt", "{run}/pretrain/ckpt.pt", "--top-p", "2"],
        "--top-p 2.0 is above its maximum",
    ),
    (
        "gpt.py",
        ["--n-head", "6", "--n-kv-head", "4", "--n-embd", "48"],
        "n_head=6 is not divisible by n_kv_head=4",
    ),
    ("transformer.py", ["--data", "{run}/missing"], "missing; make it first with `python 01_data/prepare.py"),
    ("bench_generate.py", ["--lengths", "4,b"], "cannot read '4,b' as a list of int"),
]


def test_bad_input_gets_one_error_line_exit_2_and_changes_no_file(sample_run, repo_root):
    """Every class of bad input to 03's commands: exit 2, one `error:` line, no traceback, and the run's
    files byte-identical afterwards. The commands run four at a time (each pays torch's import)."""
    files = sorted(p for p in sample_run.rglob("*") if p.is_file())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    results = []
    for i in range(0, len(BAD_INPUT), 4):
        procs = [
            (
                case,
                subprocess.Popen(
                    [
                        sys.executable,
                        str(repo_root / "03_model" / case[0]),
                        *[a.format(run=sample_run) for a in case[1]],
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
            for case in BAD_INPUT[i : i + 4]
        ]
        for case, proc in procs:
            out, err = proc.communicate(timeout=120)
            results.append((case, proc.returncode, out, err))
    for (script, args, expected), _, _, err in results:
        lines = err.strip().splitlines()
        assert "Traceback" not in err, (script, args, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
            script,
            args,
            err,
        )
    assert [rc for _, rc, _, _ in results] == [2] * len(BAD_INPUT)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == before
    assert sorted(p for p in sample_run.rglob("*") if p.is_file()) == files


def test_generate_and_beam_search_decode_on_one_thread(monkeypatch):
    """The thread policy of common/devices.py reaches the decoding loop; the caller's count comes back."""
    import common.devices as devices

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "_pinned_threads", 0)
    model = GPT(tiny()).eval()
    seen = []
    model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        generate(model, torch.tensor([[1, 2, 3]]), 4, temperature=0)
        generate_beam(model, torch.tensor([[1, 2, 3]]), 3, beam_width=2)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Hand-computed edges of the exercised functions (issue 26: each wrong answer in
# tests/exercise_mutants.py must fail one of these)


def test_top_p_keeps_the_token_whose_mass_reaches_p_exactly():
    # four equal logits: softmax is exactly 0.25 each, the mass before each sorted token exactly
    # 0, 0.25, 0.5, 0.75 (no rounding), so the boundary is tested, not float noise
    kept = lambda p: int(torch.isfinite(top_p_filter(torch.zeros(1, 4), p)).sum())
    assert kept(0.5) == 2  # 0.25 + 0.25 reaches 0.5: the third token (mass before it 0.5) goes
    assert kept(0.25) == 1 and kept(0.75) == 3 and kept(0.7) == 3 and kept(1.0) == 4


def test_rmsnorm_applies_its_gain_and_eps_inside_the_root():
    rms = RMSNorm(4)
    with torch.no_grad():
        rms.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, -2.0, 2.0, -2.0], [0.01, 0.01, -0.01, 0.01]])
    # mean of squares per row: 1, 4, 1e-4; y = x / sqrt(ms + 1e-5) · w
    ms = torch.tensor([[1.0], [4.0], [1e-4]])
    torch.testing.assert_close(rms(x), x / torch.sqrt(ms + 1e-5) * rms.weight)
    # the last row: 0.01 / sqrt(1.1e-4) = 0.9535 (eps outside the root would give 0.999)
    assert rms(x)[2, 0].item() == pytest.approx(0.01 / math.sqrt(1.1e-4), rel=1e-5)


def test_logsumexp_along_another_dim_and_keepdim():
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(logsumexp(x, dim=0), x.logsumexp(0))
    torch.testing.assert_close(logsumexp(x, dim=0, keepdim=True), x.logsumexp(0, keepdim=True))
    assert logsumexp(x, dim=-1, keepdim=True).shape == (3, 1)


def test_load_balancing_loss_with_two_experts_per_token_by_hand():
    # E = 4, tokens routed to (0, 1) and (0, 2): f = [2, 1, 1, 0] / 4 routing slots
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.4, 0.1, 0.3, 0.2]])  # P = [0.4, 0.2, 0.25, 0.15]
    # 4 · (0.5·0.4 + 0.25·0.2 + 0.25·0.25 + 0·0.15) = 4 · 0.3125 = 1.25
    assert load_balancing_loss(probs, torch.tensor([[0, 1], [0, 2]]), 4).item() == pytest.approx(1.25)


@pytest.mark.parametrize(
    "pairs, want", [("interleaved", [-2.0, 1.0, 3.0, 4.0]), ("half", [-3.0, 2.0, 1.0, 4.0])]
)
def test_apply_rope_by_hand(pairs, want):
    # hd = 4, angles θ0 = 90° (cos 0, sin 1) and θ1 = 0; x = [1, 2, 3, 4]
    # interleaved pairs (1, 2), (3, 4): (1·0 - 2·1, 1·1 + 2·0) = (-2, 1); (3, 4) unrotated
    # half pairs (1, 3), (2, 4): (1·0 - 3·1, 1·1 + 3·0) = (-3, 1) to positions 0 and 2; (2, 4) unrotated
    cos, sin = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    assert apply_rope(x, cos, sin, pairs).flatten().tolist() == want
