"""07_distill_quant serving: the batching engine (batching.py), the HTTP server (serve.py), the
terminal chat (chat.py) and the benchmark's workload (serve_workload.py), with one-line errors for bad input.

The model is an untrained 2-layer GPT and the tokenizer a small BPE trained here, so nothing depends
on stages 01-05 having run. Untrained is enough: every check compares the engine with 03's
decoding.generate on the same weights (greedy, so the tokens must be identical), or the server's answers
with each other, never with a right answer.
"""

import dataclasses
import hashlib
import http.client
import json
import math
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from batch_sampling import MIN_TEMPERATURE, BatchSampler, reference_probs
from batching import Engine, apply_presence_frequency
from serve_request import QueueFull, Request, SamplingParams, cut_at_stop, held_back
from slot_cache import SlotCache
from decode_runner import DecodeRunner, unsupported
from bench_serve import BenchServeConfig
from serve_workload import at_rate, judged_rate, workload
from prefix_cache import PrefixCache
from bpe import BPETokenizer
from chat import ChatConfig, ChatSession, run_chat
from chat_template import encode_prompt
from checkpoint_io import save_checkpoint
from common.cli import UserError
from common.runs import write_manifest
from decoding import KVCache, generate
from feedback_data import feedback_conversations, feedback_pairs, read_feedback
from gpt import GPT, GPTConfig
import serve
from serve import ChatServer

REPO = Path(__file__).resolve().parents[1]
CTX = 48


def tiny_model(vocab=64, block_size=CTX, seed=0):
    """An untrained GPT with large weights (std 0.5): its greedy output depends on every earlier token
    (with the usual std 0.02 it repeats one token forever, which a broken cache would reproduce too)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    return model


def reference(model, prompt, n):
    """What 03's decoding.generate gives this prompt alone, greedy: the tokens every policy must reproduce."""
    return generate(model, torch.tensor([prompt]), n, temperature=0)[0, len(prompt) :].tolist()


class Letters:
    """A stand-in tokenizer for engine tests: id i decodes to one letter."""

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def mixed(model):
    """Twelve requests of different prompt and answer lengths (some reach the context's end, so the
    cache must move its columns), with the tokens each gets alone."""
    rng = random.Random(0)
    items = [([rng.randrange(64) for _ in range(rng.randint(2, 14))], rng.randint(1, 30)) for _ in range(12)]
    return [(p, n, reference(model, p, n)) for p, n in items]


# ----------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("policy", ["sequential", "static", "continuous", "continuous, 03's forward"])
def test_every_policy_gives_each_request_the_tokens_it_gets_alone(model, mixed, policy):
    engine = Engine(model, None, policy.split(",")[0], max_batch=3, decode_runner="03" not in policy)
    assert (engine.runner is None) == ("03" in policy)
    reqs = []
    for i, (prompt, n, _) in enumerate(mixed):  # arrivals mid-flight: a step between some submits
        reqs.append(engine.submit(Request(prompt, SamplingParams(max_tokens=n, temperature=0))))
        if i % 3 == 0:
            engine.step()
    engine.run_until_idle()
    assert [r.output_ids for r in reqs] == [ref for _, _, ref in mixed]
    assert all(r.finish_reason == "length" for r in reqs)
    assert engine.cache.moves > 0  # the column moves were exercised, and harmless
    assert engine.stats["decode_useful"] == sum(
        n - 1 for _, n, _ in mixed
    )  # the first token comes from prefill


def test_continuous_refills_a_freed_slot_at_the_next_step_and_static_waits(model):
    def trace(policy):
        engine = Engine(model, None, policy, max_batch=2)
        short, long_, late = (
            engine.submit(Request([1, 2, 3], SamplingParams(max_tokens=n, temperature=0))) for n in (2, 8, 3)
        )
        steps = 0
        while late.first_token_at is None:
            engine.step()
            steps += 1
        engine.run_until_idle()
        return steps, late.slot, engine.stats

    steps, slot, continuous = trace("continuous")
    assert steps == 2 and slot == 0  # short ends at step 1; late takes its row at step 2
    steps, _, static = trace("static")
    assert steps == 8  # late waits for the batch's longest member
    padding = lambda stats: stats["decode_rows"] - stats["decode_useful"]
    assert continuous["decode_useful"] == static["decode_useful"] == 1 + 7 + 2
    # static: short's finished row computes padding until the batch ends; continuous: when late
    # finishes, long moves down into row 0 (Engine.compact) and no step computes a padding row
    assert padding(static) == 6 and padding(continuous) == 0 and continuous["row_moves"] == 1


def test_a_cancelled_request_frees_its_slot_and_the_others_are_unchanged(model, mixed):
    engine = Engine(model, None, "continuous", max_batch=2)
    (p0, n0, ref0), (p1, _, _), (p2, n2, ref2) = mixed[0], mixed[1], mixed[2]
    a = engine.submit(Request(p0, SamplingParams(max_tokens=n0, temperature=0)))
    b = engine.submit(Request(p1, SamplingParams(max_tokens=30, temperature=0)))
    c = engine.submit(Request(p2, SamplingParams(max_tokens=n2, temperature=0)))
    engine.step()
    assert c.slot is None and engine.slots[b.slot] is b
    b.cancel()
    engine.step()
    assert b.finish_reason == "cancelled" and b.done.is_set() and c.slot == 1  # c took b's row at once
    assert engine.cache.start[1] is not None and None in list(b.deltas.queue)  # b's stream is closed
    engine.run_until_idle()
    assert a.output_ids == ref0 and c.output_ids == ref2
    assert engine.stats["finished_cancelled"] == 1 and not engine.busy()


def test_seeded_sampling_is_per_request_whoever_shares_the_batch(model, mixed):
    params = dict(max_tokens=12, temperature=1.0, top_p=0.9, top_k=20, repetition_penalty=1.3, seed=7)
    alone = Engine(model, None, "sequential")
    want = alone.submit(Request(mixed[0][0], SamplingParams(**params)))
    alone.run_until_idle()
    crowd = Engine(model, None, "continuous", max_batch=4)
    others = [
        crowd.submit(Request(p, SamplingParams(max_tokens=n, temperature=1.0, seed=i)))
        for i, (p, n, _) in enumerate(mixed[1:4])
    ]
    got = crowd.submit(Request(mixed[0][0], SamplingParams(**params)))
    crowd.run_until_idle()
    assert got.output_ids == want.output_ids and len(got.output_ids) == 12
    assert len({tuple(r.output_ids) for r in others}) == 3


def test_stop_strings_cut_the_text_and_streaming_never_sends_what_it_takes_back(model, mixed):
    prompt, _, _ = mixed[3]
    full = Letters().decode(reference(model, prompt, 20))
    stop = full[8:10]
    cut = full.find(stop)
    assert cut >= 3  # the model's output, not the test, would be odd
    engine = Engine(model, Letters(), "continuous", max_batch=2)
    req = engine.submit(Request(prompt, SamplingParams(max_tokens=20, temperature=0, stop=(stop, "never"))))
    pieces = []
    while engine.busy():
        engine.step()
        while not req.deltas.empty():
            pieces.append(req.deltas.get_nowait())
    assert req.finish_reason == "stop" and req.text == full[:cut]
    assert pieces[-1] is None and "".join(pieces[:-1]) == req.text and len(pieces) > 2  # it streamed


def test_stop_id_ends_the_answer_and_is_kept_in_the_ids_only(model, mixed):
    prompt, _, _ = mixed[4]
    ref = reference(model, prompt, 10)
    engine = Engine(model, Letters(), "continuous")
    req = engine.submit(Request(prompt, SamplingParams(max_tokens=10, temperature=0), stop_ids=[ref[3]]))
    engine.run_until_idle()
    first = ref.index(ref[3])
    assert req.output_ids == ref[: first + 1] and req.text == Letters().decode(ref[:first])
    assert req.finish_reason == "stop"


@pytest.mark.parametrize(
    "text, stops, cut, held",
    [
        ("hello wor", ("world",), "hello wor", 3),  # "wor" may become "world": hold it
        ("hello world!", ("world",), "hello ", 0),
        ("say ab then abc", ("abc", "then"), "say ab ", 0),  # the earliest stop wins
        ("caf\ufffd", (), "caf\ufffd", 1),  # half a UTF-8 character: wait for the rest
        ("abcab", ("abd",), "abcab", 2),
        ("plain", (), "plain", 0),
    ],
)
def test_cut_at_stop_and_held_back(text, stops, cut, held):
    assert cut_at_stop(text, stops)[0] == cut
    assert held_back(cut, stops) == held


def test_submit_refuses_what_can_never_run_and_a_full_queue(model):
    engine = Engine(model, None, "continuous", max_waiting=1)
    with pytest.raises(UserError, match=f"exceeds the model's context of {CTX}"):
        engine.submit(Request([1] * 40, SamplingParams(max_tokens=9)))
    with pytest.raises(UserError, match="empty"):
        engine.submit(Request([], SamplingParams()))
    with pytest.raises(UserError, match="top_p"):
        engine.submit(Request([1], SamplingParams(top_p=0)))
    engine.submit(Request([1], SamplingParams(max_tokens=1)))
    with pytest.raises(QueueFull):
        engine.submit(Request([1], SamplingParams(max_tokens=1)))


def test_slot_cache_move_keeps_every_row_and_its_mask(model):
    cache = SlotCache(model, 2)
    cache.kv.pos = 10
    for slot, n in ((0, 4), (1, 7)):
        cache.claim(slot, n)
        for k in cache.kv.k + cache.kv.v:
            k[slot, :, 10 - n : 10] = torch.arange(n, dtype=k.dtype)[:, None] + 100 * slot
    before = [k[:, :, 3:10].clone() for k in cache.kv.k]
    cache.move_columns(-3)
    assert cache.pos == 7 and cache.start == [3, 0] and cache.left() == 0
    assert all(torch.equal(k[:, :, 0:7], b) for k, b in zip(cache.kv.k, before))
    assert cache.mask[0].nonzero().flatten().tolist() == [3, 4, 5, 6] and cache.mask[1, :7].all()
    assert not cache.mask[:, 7:].any()


# ----------------------------------------------------------------------------- the decode runner

RUNNER_SHAPES = {  # every switch of 03's GPT the fused step handles
    "llama (rope, rmsnorm, swiglu)": {},
    "gqa, half rope, biases": dict(n_head=4, n_kv_head=2, rope_pairs="half", bias=True),
    "gpt-2 (learned, layernorm, gelu_tanh, untied)": dict(
        pos_emb="learned", norm="layernorm", mlp="gelu_tanh", bias=True, tie_weights=False
    ),
    "2017 (sinusoidal, relu), naive attention": dict(pos_emb="sinusoidal", mlp="relu", attn_backend="torch"),
    "pruned sizes (head 12, mlp 40), no positions": dict(head_size=12, mlp_hidden=40, pos_emb="none"),
}


def filled_cache(model, starts, pos):
    """A SlotCache of len(starts) rows with random keys/values, row i live on columns [starts[i], pos)
    (None: a free row that computes padding)."""
    cache = SlotCache(model, len(starts))
    g = torch.Generator().manual_seed(1)
    for buf in cache.kv.k + cache.kv.v:
        buf.copy_(torch.randn(buf.shape, generator=g))
    cache.kv.pos = pos
    for row, start in enumerate(starts):
        if start is not None:
            cache.claim(row, pos - start)
    return cache


@pytest.mark.parametrize("shape", list(RUNNER_SHAPES))
def test_the_decode_runner_computes_03s_decode_step_exactly(shape):
    """Same logits as SlotCache.decode through 03's forward (bit for bit on this CPU; a BLAS that splits
    a fused product differently may move the last bits), the same keys/values written, the same
    columns, including a padding row and a step at the end of the cache (the columns move first)."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=CTX, n_layer=2, n_head=2, n_embd=32)
    model = GPT(dataclasses.replace(cfg, **RUNNER_SHAPES[shape])).eval()
    assert unsupported(model) is None
    runner = DecodeRunner(model)
    idx = torch.tensor([[5], [9], [1], [33]])
    for pos in (20, CTX):  # CTX: the write column is past the end, so make_room moves every row left
        want_cache, got_cache = (
            filled_cache(model, [3, 11, None, 0 if pos < CTX else 7], pos) for _ in range(2)
        )
        active = torch.tensor([0, 1, 3])
        with torch.inference_mode():
            want = want_cache.decode(model, idx, active)
            got = runner.decode(got_cache, idx, active)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        assert got_cache.pos == want_cache.pos and torch.equal(got_cache.mask, want_cache.mask)
        for a, b in zip(got_cache.kv.k + got_cache.kv.v, want_cache.kv.k + want_cache.kv.v):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", list(RUNNER_SHAPES))
def test_the_runners_prefill_is_03s_forward_on_the_engines_layout(shape):
    """Engine.prefill's pass: cached prefix columns (a prefix-cache hit), right-padded prompts, masked
    columns before a short prefix; the last token's logits and every key/value written match 03."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=CTX, n_layer=2, n_head=2, n_embd=32)
    model = GPT(dataclasses.replace(cfg, **RUNNER_SHAPES[shape])).eval()
    B, Lp, T = 3, 5, 7
    mask = torch.ones(B, Lp + T, dtype=torch.bool)
    mask[0, :3] = False  # a 2-token cached prefix
    mask[1, :Lp] = False  # no prefix
    mask[2, Lp + 4 :] = False  # a 4-token suffix, right-padded
    idx = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(2))
    caches = []
    for _ in range(2):
        run = KVCache(cfg.n_layer, Lp + T)
        g = torch.Generator().manual_seed(3)
        shape_kv = (B, model.cfg.n_kv_head, Lp + T, model.cfg.head_dim)
        run.k = [torch.randn(shape_kv, generator=g) for _ in range(cfg.n_layer)]
        run.v = [torch.randn(shape_kv, generator=g) for _ in range(cfg.n_layer)]
        run.pos = Lp
        caches.append(run)
    ends = torch.tensor([T - 1, T - 1, 3])
    with torch.inference_mode():
        logits, _ = model(idx, attention_mask=mask, cache=caches[0])
        want = logits[torch.arange(B), ends]
        got = DecodeRunner(model).prefill(idx, mask, caches[1], ends)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1)) and caches[1].pos == caches[0].pos
    for a, b in zip(caches[1].k + caches[1].v, caches[0].k + caches[0].v):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_models_the_fused_step_would_compute_wrongly_keep_03s_forward(model, mixed):
    """LoRA, adapters, prefix tuning, quantized layers, pruning masks, MoE, post-LN, QK-norm: each
    gets a reason, and the engine serves it through 03's forward with generate's tokens."""
    cfg = GPTConfig(vocab_size=64, block_size=CTX, n_layer=2, n_head=2, n_embd=32)
    for change, reason in (
        (dict(n_experts=2), "mixture-of-experts"),
        (dict(pre_norm=False), "post-LN"),
        (dict(qk_norm=True), "QK-norm"),
    ):
        assert reason in unsupported(GPT(dataclasses.replace(cfg, **change)))
    hooked = tiny_model()
    handle = hooked.blocks[0].ffn.register_forward_hook(lambda m, i, out: out * 0.5)
    assert "hook" in unsupported(hooked)
    with pytest.raises(ValueError, match="hook"):
        DecodeRunner(hooked)
    engine = Engine(hooked, None, "continuous", max_batch=3)
    assert engine.runner is None
    prompt, n, _ = mixed[0]
    req = engine.submit(Request(prompt, SamplingParams(max_tokens=n, temperature=0)))
    engine.run_until_idle()
    assert req.output_ids == reference(hooked, prompt, n)  # the hook is applied, as generate applies it
    handle.remove()
    hooked.blocks[0].ffn.up = torch.nn.Sequential(hooked.blocks[0].ffn.up)  # a wrapped layer (as LoRA does)
    assert "Sequential" in unsupported(hooked)


def test_the_runner_refuses_stale_weights_and_the_engine_serves_the_new_ones(mixed):
    """Weights changed in place after the engine was built (load_state_dict, an optimizer step): the
    fused copies are made again before the next step, so the tokens are the new model's."""
    model = tiny_model(seed=3)
    engine = Engine(model, None, "continuous", max_batch=3)
    assert engine.runner is not None
    with torch.no_grad():
        model.load_state_dict(tiny_model(seed=4).state_dict())
    assert engine.runner.stale()
    reqs = [engine.submit(Request(p, SamplingParams(max_tokens=n, temperature=0))) for p, n, _ in mixed[:4]]
    engine.run_until_idle()
    assert not engine.runner.stale()
    assert [r.output_ids for r in reqs] == [reference(model, p, n) for p, n, _ in mixed[:4]]


SETTINGS = [  # one per request: every sampler setting, alone and together
    dict(temperature=0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3),
    dict(temperature=0.9, presence_penalty=0.8, frequency_penalty=0.5),
    dict(temperature=1.0, logit_bias={3: 5.0, 7: -100.0}),
    dict(temperature=0, repetition_penalty=1.5, frequency_penalty=1.0, logit_bias={1: 2.0}),
    dict(temperature=1e-5, top_p=0.5),
]


def test_the_batched_sampler_gives_the_per_request_reference_distribution():
    """Every row of one vectorized call, each with its own settings, has the distribution that 03's
    filters and the penalty formulas give that request alone (batch_sampling.reference_probs)."""
    torch.manual_seed(0)
    V = 40
    sampler = BatchSampler(len(SETTINGS), V, torch.device("cpu"))
    reqs = []
    for slot, setting in enumerate(SETTINGS):
        req = Request(torch.randint(V, (6,)).tolist(), SamplingParams(**setting))
        req.output_ids = torch.randint(V, (5,)).tolist()
        sampler.place(slot, req)
        sampler.record(torch.full((5,), slot), torch.tensor(req.output_ids))
        reqs.append(req)
    slots = torch.arange(len(reqs))
    logits = 3 * torch.randn(len(reqs), V)
    used = {k: v for k, v in sampler.uses.items()}
    x = sampler.adjusted_logits(slots, logits, used)
    probs, order = sampler.sorted_probs(slots, x)
    batched = torch.zeros_like(probs).scatter(1, order, probs)
    for i, req in enumerate(reqs):
        want = reference_probs(req.params, req.prompt_ids, req.output_ids, logits[i])
        if req.params.temperature < MIN_TEMPERATURE:  # greedy rows: the argmax of the adjusted logits
            assert x[i].argmax() == want.argmax()
        else:
            assert torch.allclose(batched[i], want, atol=1e-6), (i, req.params)
    # the inverse-CDF draw keeps exactly the tokens of nonzero probability, in proportion
    u = torch.rand(4000)
    draws = torch.stack(
        [sampler.sample(slots, logits, u[j : j + 1].expand(len(reqs)))[0] for j in range(0, 4000, 8)]
    )
    for i in (1, 2):
        support = set(torch.nonzero(batched[i]).flatten().tolist())
        assert set(draws[:, i].tolist()) <= support
    # rows that sample without top-k or top-p skip the sort: the same distribution in vocabulary order
    plain, _ = sampler.plain_probs(slots, x)
    unfiltered = [
        i for i, r in enumerate(reqs) if r.params.temperature >= MIN_TEMPERATURE and not sampler.filters[i]
    ]
    assert unfiltered and all(sampler.filters[i] for i in (1, 2, 3))
    for i in unfiltered:
        want = reference_probs(reqs[i].params, reqs[i].prompt_ids, reqs[i].output_ids, logits[i])
        assert torch.allclose(plain[i], want, atol=1e-6), (i, reqs[i].params)


def test_the_inverse_cdf_draw_takes_the_first_token_whose_mass_exceeds_u():
    sampler = BatchSampler(2, 3, torch.device("cpu"))
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.7, 0.2, 0.1]])
    order = torch.tensor([[0, 1, 2], [2, 1, 0]])  # row 1: tokens sorted by probability
    for u, want in ((0.05, [0, 2]), (0.15, [1, 2]), (0.5, [2, 2]), (0.8, [2, 1]), (0.95, [2, 0])):
        assert sampler.draw(probs, order, torch.tensor([u, u])).tolist() == want
        assert sampler.draw(probs[:1], None, torch.tensor([u])).tolist() == want[:1]


def test_sampled_tokens_are_the_same_alone_and_in_any_batch(model, mixed):
    """Seeded sampling with every setting: each request gets the tokens it gets alone (sequential
    policy) when eight of them share continuous batches of 3 with different arrival times."""

    def run(policy, max_batch):
        engine = Engine(model, None, policy, max_batch=max_batch)
        reqs = []
        for i, setting in enumerate(SETTINGS):
            prompt, n, _ = mixed[i]
            reqs.append(engine.submit(Request(prompt, SamplingParams(max_tokens=n, seed=100 + i, **setting))))
            if i % 2:
                engine.step()
        engine.run_until_idle()
        return [r.output_ids for r in reqs]

    alone = run("sequential", 1)
    assert run("continuous", 3) == alone and run("static", 8) == alone
    assert alone[0] == mixed[0][2]  # the greedy row is 03's generate


def test_prefix_cache_gives_the_same_tokens_and_skips_the_shared_prefill(model):
    rng = random.Random(1)
    system = [rng.randrange(64) for _ in range(20)]  # one whole block of 16 is shared
    prompts = [system + [rng.randrange(64) for _ in range(rng.randint(1, 8))] for _ in range(6)]
    prompts.append(system[:16])  # exactly one block: its last token is still computed
    wants = [reference(model, p, 10) for p in prompts]
    engine = Engine(model, None, "continuous", max_batch=3, prefix_blocks=8)
    reqs = []
    for i, p in enumerate(prompts):
        reqs.append(engine.submit(Request(p, SamplingParams(max_tokens=10, temperature=0))))
        if i % 2 == 0:
            engine.step()
    engine.run_until_idle()
    assert [r.output_ids for r in reqs] == wants
    # the first prompt prefilled alone fills the cache; the other five full prompts reuse one block
    assert engine.stats["prefix_hit_tokens"] == 16 * 5
    assert engine.stats["prefill_tokens"] == sum(map(len, prompts)) - 16 * 5
    assert engine.prefix_cache.hit_rate() == 16 * 5 / sum(map(len, prompts))


def test_prefix_cache_keys_blocks_by_the_whole_prefix_and_evicts_the_oldest():
    cache = PrefixCache(n_blocks=2, block=2)
    kv = lambda n, fill: ([torch.full((1, n, 1), fill)], [torch.full((1, n, 1), -fill)])
    cache.insert([1, 2, 3, 4, 5], *kv(5, 1.0))  # blocks [1, 2] and [1, 2, 3, 4]
    assert cache.cached_length([1, 2, 3, 4, 9]) == 4 and cache.cached_length([1, 2, 3, 4]) == 2
    assert cache.cached_length([9, 2, 3, 4, 5]) == 0  # the same tokens after another history: no hit
    n, got = cache.lookup([1, 2, 3, 4, 0])
    assert n == 4 and got.shape == (2, 1, 4, 1) and got[0].eq(1).all() and got[1].eq(-1).all()
    cache.insert([7, 8, 9], *kv(3, 2.0))  # a third block: the least recently used one goes
    assert len(cache.blocks) == 2 and cache.cached_length([1, 2, 3]) == 2


# ----------------------------------------------------------------------------- the benchmark's workload


def test_workload_is_seeded_poisson_with_the_asked_mix():
    c = BenchServeConfig(requests=400, rate=50.0, long_frac=0.25)
    items = workload(c, vocab=100)
    assert items == workload(c, vocab=100) and items != workload(
        BenchServeConfig(requests=400, rate=50.0, long_frac=0.25, seed=1), vocab=100
    )  # only the seed differs
    gaps = [b[0] - a[0] for a, b in zip(items, items[1:])]
    assert items[0][0] == 0 and all(g >= 0 for g in gaps)
    assert abs(sum(gaps) / len(gaps) - 1 / 50) < 0.2 / 50  # mean gap 1/rate
    assert 0.56 < sum(g < 1 / 50 for g in gaps) / len(gaps) < 0.70  # exponential: P(gap < mean) = 1 - 1/e
    long_share = sum(n >= c.long_min for _, _, n in items) / len(items)
    assert 0.18 < long_share < 0.32
    assert all(c.prompt_min <= len(p) <= c.prompt_max for _, p, _ in items)


def test_every_arrival_rate_serves_the_same_requests_and_the_judged_rate_is_twice_continuous_capacity():
    c = BenchServeConfig(requests=50)
    slow, fast, burst = (at_rate(c, 100, r) for r in (10.0, 40.0, math.inf))
    assert [i[1:] for i in slow] == [i[1:] for i in fast] == [i[1:] for i in burst]
    assert all(abs(a[0] - 4 * b[0]) < 1e-9 for a, b in zip(slow, fast)) and slow[-1][0] > 0
    assert all(t == 0.0 for t, _, _ in burst)
    capacity = {"static": [{"requests_per_s": 30.0}], "continuous": [{"requests_per_s": 70.0}]}
    assert judged_rate(c, capacity) == 140.0  # both policies queue: 2 mu_c, 4.7 mu_s
    assert judged_rate(dataclasses.replace(c, rate=25.0), capacity) == 25.0  # --rate wins


# ----------------------------------------------------------------------------- the HTTP server


@pytest.fixture(scope="module")
def tok():
    text = "Where does Noin Marora live? She lives in Pelk. What is two plus two? Four. 你好，世界。" * 3
    return BPETokenizer.train([text], vocab_size=300)


def start_server(tok, **kw):
    model = tiny_model(vocab=tok.vocab_size, block_size=64, seed=1)
    engine = Engine(model, tok, "continuous", max_batch=4, max_waiting=64)
    srv = ChatServer(
        ("127.0.0.1", 0),
        engine,
        tok,
        "test/model",
        max_body=16384,
        default_max_tokens=8,
        log_requests=False,
        **kw,
    )
    engine.start()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop_server(srv):
    srv.shutdown()
    srv.server_close()
    srv.engine.stop()


@pytest.fixture(scope="module")
def server(tok):
    srv = start_server(tok)
    yield srv
    stop_server(srv)


def url(srv, path):
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def call(srv, path, body=None, raw=None, headers=None):
    """(status, parsed JSON or the raw text of an event stream) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        url(srv, path), data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (text if r.headers["Content-Type"] == "text/event-stream" else json.loads(text))
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def sse_events(text):
    """The `data:` payloads of a server-sent event stream, each event ended by a blank line."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


CHAT = {
    "messages": [{"role": "user", "content": "Where does Noin Marora live?"}],
    "temperature": 0,
    "max_tokens": 8,
}


def test_models_health_and_a_chat_completion(server):
    status, models = call(server, "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["test/model"]
    status, health = call(server, "/health")
    assert status == 200 and health["status"] == "ok"
    with urllib.request.urlopen(url(server, "/"), timeout=30) as page:  # the chat page, no external assets
        html = page.read().decode()
    assert page.headers["Content-Type"].startswith("text/html") and "/v1/chat/completions" in html
    assert "http://" not in html and "https://" not in html
    status, reply = call(server, "/v1/chat/completions", CHAT)
    assert status == 200 and reply["object"] == "chat.completion" and reply["model"] == "test/model"
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["prompt_tokens"] == len(encode_prompt(server.tok, CHAT["messages"]))
    assert (
        1 <= usage["completion_tokens"] <= 8
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )


def test_streamed_chat_rebuilds_the_same_text_and_ends_with_done(server):
    _, whole = call(server, "/v1/chat/completions", CHAT)
    status, stream = call(
        server, "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = sse_events(stream)
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_completions_stream_and_whole_agree(server):
    body = {"prompt": "What is two plus", "temperature": 0, "max_tokens": 6}
    status, whole = call(server, "/v1/completions", body)
    assert status == 200 and whole["object"] == "text_completion"
    _, stream = call(server, "/v1/completions", {**body, "stream": True})
    chunks = [json.loads(e) for e in sse_events(stream)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert whole["usage"]["prompt_tokens"] == 1 + len(
        server.tok.encode_ordinary(body["prompt"])
    )  # <|endoftext|> first
    assert 1 <= whole["usage"]["completion_tokens"] <= 6


LONG = "Where does Noin Marora live? " * 40
BAD_REQUESTS = [  # (path, raw body or JSON, status, words the message must contain, param)
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON", None),
    ("/v1/chat/completions", b"[1, 2]", 400, "JSON object", None),
    ("/v1/chat/completions", {"temperature": 0}, 400, "'messages'", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "role", "messages[0]"),
    (
        "/v1/chat/completions",
        {**CHAT, "temperature": "hot"},
        400,
        "'temperature' must be a number",
        "temperature",
    ),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "at least 1", "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "top_p": 1.5}, 400, "'top_p'", "top_p"),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-5"}, 404, "'gpt-5' does not exist", "model"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": LONG}]},
        400,
        "context is 64",
        "messages",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "max_tokens": 60},
        400,
        "exceeds the model's context of 64",
        "max_tokens",
    ),
    ("/v1/chat/completions", {**CHAT, "stop": [""]}, 400, "'stop'", "stop"),
    ("/v1/completions", {"max_tokens": 2}, 400, "'prompt'", "prompt"),
    ("/v1/completions", b"{" + b" " * 20000 + b"}", 413, "at most 16384", None),
    ("/v1/nothing", {}, 404, "no route", None),
]


@pytest.mark.parametrize("path, body, status, words, param", BAD_REQUESTS)
def test_a_bad_request_gets_openai_error_json_and_the_server_keeps_serving(
    server, path, body, status, words, param
):
    got, reply = call(
        server,
        path,
        raw=body if isinstance(body, bytes) else None,
        body=None if isinstance(body, bytes) else body,
    )
    assert got == status
    err = reply["error"]
    assert (
        words in err["message"]
        and err["param"] == param
        and err["type"]
        and set(err) == {"message", "type", "param", "code"}
    )
    if "context is 64" in words:  # both numbers: the prompt's length and the context
        n_prompt = int(err["message"].split("prompt is ")[1].split()[0])
        assert n_prompt > 64
    assert call(server, "/v1/models")[0] == 200


def test_api_key_full_queue_and_truncated_body(server):
    server.api_key = "sesame"
    try:
        assert call(server, "/v1/models")[0] == 401
        assert call(server, "/v1/models", headers={"Authorization": "Bearer sesame"})[0] == 200
        assert call(server, "/health")[0] == 200  # health stays open, for load balancers
    finally:
        server.api_key = ""
    server.engine.max_waiting = 0
    try:
        req = urllib.request.Request(url(server, "/v1/chat/completions"), data=json.dumps(CHAT).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 503 and e.value.headers["Retry-After"] == "1"
        assert json.loads(e.value.read())["error"]["code"] == "server_overloaded"
    finally:
        server.engine.max_waiting = 64
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()  # no Content-Length
    r = conn.getresponse()
    assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]["message"]
    assert call(server, "/v1/chat/completions", CHAT)[0] == 200


def test_twenty_concurrent_clients_all_get_complete_answers(server):
    _, alone = call(server, "/v1/chat/completions", {**CHAT, "max_tokens": 4})
    results = [None] * 20

    def client(i):
        body = {**CHAT, "max_tokens": 4, "stream": i % 2 == 1}
        results[i] = call(server, "/v1/chat/completions", body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = alone["choices"][0]["message"]["content"]
    for i, (status, reply) in enumerate(results):
        assert status == 200
        if i % 2:
            events = sse_events(reply)
            assert events[-1] == "[DONE]"
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
        else:
            text = reply["choices"][0]["message"]["content"]
        assert text == want  # greedy: batched with 19 others, the same answer


def test_a_client_that_leaves_mid_stream_is_cancelled(server, monkeypatch):
    engine, real_step = server.engine, server.engine.step
    monkeypatch.setattr(engine, "step", lambda: (time.sleep(0.02), real_step())[1])  # 50 tokens take > 1 s
    before = engine.stats["finished_cancelled"]
    body = json.dumps({"prompt": "Four", "max_tokens": 50, "stream": True, "temperature": 0, "stop": "never"})
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        seen = b""
        while b"data: " not in seen:  # the answer has begun streaming: then leave
            chunk = sock.recv(4096)
            assert chunk, seen  # the server closed without streaming
            seen += chunk
    deadline = time.time() + 10
    while engine.stats["finished_cancelled"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert engine.stats["finished_cancelled"] == before + 1 and not engine.busy()
    assert call(server, "/v1/models")[0] == 200


# ----------------------------------------------------------------------------- the chat page


@pytest.mark.skipif(shutil.which("node") is None, reason="the chat page's script runs in node")
def test_the_chat_page_fits_the_context_drops_old_turns_and_reports_a_dead_server(server, tmp_path):
    """The page's own script (a stub DOM, real fetch): its defaults work on a 64-token model, a long
    conversation keeps working by dropping the oldest exchanges, the label appears once the key is
    typed, 👍/👎 save ratings to the feedback file, a server that is gone gives a message, and no
    special token shows up as text."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    server.api_key, server.feedback_path = "sesame", tmp_path / "feedback.jsonl"
    try:
        run = subprocess.run(
            [
                "node",
                str(REPO / "tests" / "chat_page_harness.js"),
                url(server, ""),
                str(REPO / "07_distill_quant" / "chat_page.html"),
                "sesame",
                "6",
                dead,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.api_key, server.feedback_path = "", None
    assert run.returncode == 0, run.stderr
    page = json.loads(run.stdout)
    assert page["rated"] == ["(rated up, saved)", "(rated down, saved)"]
    first, second = read_feedback(tmp_path / "feedback.jsonl")
    assert (first["rating"], second["rating"], second["better"]) == (
        "up",
        "down",
        "Noin Marora lives in Lomaro.",
    )
    assert second["messages"][-1]["content"].endswith("please 1") and first["model"] == "test/model"
    assert page["before"] == "(type the API key)" and page["after"] == "test/model, context 64"
    assert page["placeholder"] == "auto (≤ 64)"  # the room the context leaves, not 128 (more than all of it)
    bubbles = [b for b in page["log"] if b["tag"] == "div" and b["cls"] != "rate"]
    answers = [b for b in bubbles if b["cls"] != "user"]
    assert [b["cls"] for b in answers[:-1]] == ["assistant"] * 6, page["log"]  # every message answered
    assert any("dropped the oldest exchange" in b["text"] for b in page["log"] if b["tag"] == "small")
    assert answers[-1]["cls"] == "error" and "cannot reach the server" in answers[-1]["text"]
    assert not any("<|" in b["text"] for b in bubbles)


# ----------------------------------------------------------------------------- the terminal chat


def chat_transcript(session, lines) -> str:
    """What run_chat shows when the user types `lines`, then Ctrl-D."""
    lines, out = iter(lines), []

    def read():
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    run_chat(session, read, out.append)
    return "".join(out)


def test_chat_session_streams_keeps_history_and_handles_commands(tok):
    model = tiny_model(vocab=tok.vocab_size, block_size=64, seed=1)
    session = ChatSession(Engine(model, tok, "sequential"), tok, ChatConfig(temperature=0, max_tokens=5))
    shown = chat_transcript(
        session,
        ["hello", "/settings max_tokens=3 temperature=0.5", "/settings top_p=2", "again", "/reset", "/nope"],
    )
    assert (
        "max_tokens=3" in shown
        and "temperature=0.5" in shown
        and "error: " in shown
        and "(conversation forgotten)" in shown
    )
    assert session.turns == [] and session.cfg.max_tokens == 3 and shown.count("assistant> ") == 2


def test_chat_settings_that_used_to_crash_are_errors_and_the_conversation_survives(tok):
    model = tiny_model(vocab=tok.vocab_size, block_size=64, seed=1)
    cfg = ChatConfig(temperature=1e-300, max_tokens=4)  # --temperature 1e-300: now greedy, not a traceback
    session = ChatSession(Engine(model, tok, "sequential"), tok, cfg)
    shown = chat_transcript(
        session,
        [
            "hello",
            "/settings seed=99999999999999999999999",
            "/settings temperature=nan",
            "/settings repetition_penalty=1e-300",
            "again",
        ],
    )
    assert shown.count("error: ") == 3 and "Traceback" not in shown
    assert len(session.turns) == 4 and session.cfg.seed == 0  # both exchanges kept, nothing changed
    assert "<|" not in shown  # every special token ends an answer; none is printed


# ----------------------------------------------------------------------------- command lines


def sha(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    run = tmp_path_factory.mktemp("run")
    tok.save(run / "tokenizer")
    write_manifest(run / "tokenizer", stage="02_tokenizer", command="(test)", config={})
    model = tiny_model(vocab=tok.vocab_size, block_size=64)
    save_checkpoint(
        run / "sft" / "ckpt.pt", dataclasses.asdict(model.cfg), model.state_dict(), tokenizer="../tokenizer"
    )
    return run / "sft" / "ckpt.pt"


CLI_CASES = [  # (script, args, words in the error line)
    ("serve.py", [], "--ckpt is required"),
    ("serve.py", ["--ckpt", "{missing}"], "no checkpoint there"),
    ("serve.py", ["--ckpt", "{ckpt}", "--port", "70000"], "--port"),
    ("serve.py", ["--ckpt", "{ckpt}", "--host", "256.1.1.1", "--port", "0"], "cannot listen on 256.1.1.1"),
    ("serve.py", ["--ckpt", "{ckpt}", "--tokenizer", "{missing}"], "no tokenizer found"),
    ("chat.py", ["--ckpt", "{ckpt}", "--temperature", "-1"], "--temperature"),
    ("chat.py", ["--ckpt", "{ckpt}", "--seed", "99999999999999999999999"], "--seed"),
    ("chat.py", ["--ckpt", "{ckpt}", "--top-p", "nan"], "top_p=nan is not a finite number"),
    ("serve.py", ["--ckpt", "{ckpt}", "--timeout", "0"], "--timeout"),
    ("bench_serve.py", ["--prompt-min", "9", "--prompt-max", "3"], "--prompt-min 9 is above --prompt-max 3"),
    ("bench_serve.py", ["--block-size", "32"], "exceeds the model's context of 32"),
    ("bench_serve.py", ["--policies", "static"], "set from the continuous policy's capacity"),
]


@pytest.fixture(scope="module")
def cli_runs(ckpt, tmp_path_factory):
    """Every case of CLI_CASES started at once (each pays for importing torch; together they overlap)
    -> {case index: (returncode, stderr)}, with the run folder's hashes before and after."""
    work = tmp_path_factory.mktemp("cli")
    before = sha(ckpt.parent.parent)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "07_distill_quant" / script),
                *[a.format(ckpt=ckpt, missing=work / "nothing.pt") for a in args],
                "--threads",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=work,
        )
        for script, args, _ in CLI_CASES
    ]
    results = {}
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=300)
        results[i] = (p.returncode, err)
    return results, before, sha(ckpt.parent.parent)


@pytest.mark.parametrize("case", range(len(CLI_CASES)), ids=[f"{s}:{w}" for s, _, w in CLI_CASES])
def test_command_lines_answer_bad_input_with_one_error_line(cli_runs, case):
    results, before, after = cli_runs
    returncode, stderr = results[case]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert returncode == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert CLI_CASES[case][2] in errors[0]
    assert after == before


# ----------------------------------------------------------------------------- one request cannot break others


def test_a_poisoned_row_fails_alone_and_the_batch_keeps_its_tokens(model, mixed):
    engine = Engine(model, None, "continuous", max_batch=3)
    (p0, n0, ref0), (p1, _, _), (p2, n2, ref2) = mixed[5], mixed[6], mixed[7]
    a = engine.submit(Request(p0, SamplingParams(max_tokens=n0, temperature=0)))
    b = engine.submit(Request(p1, SamplingParams(max_tokens=20, temperature=1.0)))
    c = engine.submit(Request(p2, SamplingParams(max_tokens=n2, temperature=0)))
    engine.step()
    # what no check let through: a setting that turns its row of logits NaN
    engine.sampler.repetition[b.slot] = float("nan")
    engine.sampler.uses["repetition"][b.slot] = True
    engine.run_until_idle()
    assert b.finish_reason == "error" and b.done.is_set() and None in list(b.deltas.queue)
    assert a.output_ids == ref0 and c.output_ids == ref2 and engine.stats["finished_error"] == 1


@pytest.mark.parametrize("setting", [{"temperature": 1e-300}, {"temperature": 1.0, "top_p": 1e-300}])
def test_settings_at_float32_limits_sample_their_limit_greedy(model, mixed, setting):
    prompt, n, ref = mixed[8]
    engine = Engine(model, None, "continuous")
    req = engine.submit(Request(prompt, SamplingParams(max_tokens=n, **setting)))
    engine.run_until_idle()
    assert req.finish_reason == "length" and req.output_ids == ref  # T -> 0 and p -> 0 are argmax


@pytest.mark.parametrize("penalty", [1e-300, 1e300, float("nan")])
def test_a_repetition_penalty_without_a_limit_is_refused_up_front(model, penalty):
    with pytest.raises(UserError, match="repetition_penalty"):
        Engine(model).submit(Request([1, 2], SamplingParams(repetition_penalty=penalty)))


def test_presence_and_frequency_penalties_subtract_per_generated_token():
    logits = torch.zeros(1, 5)
    out = apply_presence_frequency(logits, [1, 3, 3, 3], presence=0.5, frequency=0.25)
    assert out.tolist() == [[0.0, -0.75, 0.0, -1.25, 0.0]]


def stream_text(reply):
    events = sse_events(reply)
    assert events[-1] == "[DONE]"
    return "".join(
        c["choices"][0]["delta"].get("content", "") for c in map(json.loads, events[:-1]) if c.get("choices")
    )


def test_a_poisoned_request_fails_alone_while_concurrent_streams_complete(server, monkeypatch):
    import batching

    engine, real_sample = server.engine, batching.Engine.sample_one

    def sample_batch(slots, logits, u):  # the batched call fails whenever the poisoned row is in it
        if any(engine.slots[s] is not None and engine.slots[s].params.seed == 666 for s in slots.tolist()):
            raise RuntimeError("poison")  # the request an unforeseen setting breaks inside the sampler
        return real_batch(slots, logits, u)

    def sample_one(self, req, slot, logits, u):  # and so does its row alone; the others succeed alone
        if req.params.seed == 666:
            raise RuntimeError("poison")
        time.sleep(0.005)  # keep the streams in flight while the poison runs
        return real_sample(self, req, slot, logits, u)

    real_batch = engine.sampler.sample
    monkeypatch.setattr(engine.sampler, "sample", sample_batch)
    monkeypatch.setattr(batching.Engine, "sample_one", sample_one)
    _, alone = call(server, "/v1/chat/completions", CHAT)
    want = alone["choices"][0]["message"]["content"]
    results = {}

    def client(name, body):
        results[name] = call(server, "/v1/chat/completions", body)

    bodies = {f"stream{i}": {**CHAT, "stream": True} for i in range(3)}
    bodies["poison"] = {**CHAT, "temperature": 1, "seed": 666}
    bodies["tiny_t"] = {**CHAT, "temperature": 1e-300}  # the poisons, now mapped to their limit
    bodies["tiny_p"] = {**CHAT, "temperature": 1, "top_p": 1e-300}
    threads = [threading.Thread(target=client, args=item) for item in bodies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["poison"][0] == 500 and results["poison"][1]["error"]["type"] == "server_error"
    assert all(
        results[f"stream{i}"][0] == 200 and stream_text(results[f"stream{i}"][1]) == want for i in range(3)
    )
    for name in ("tiny_t", "tiny_p"):
        assert results[name][0] == 200 and results[name][1]["choices"][0]["message"]["content"] == want
    deadline = time.monotonic() + 10  # the engine frees the finished rows at its next step
    while engine.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats["finished_error"] >= 1 and not engine.busy()


# ----------------------------------------------------------------------------- slow and stalled clients


@pytest.fixture()
def guarded(tok):
    srv = start_server(tok, timeout=0.5, max_connections=4)
    yield srv
    stop_server(srv)


def connect(srv):
    return socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10)


def read_all(sock) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_stalled_clients_are_dropped_after_the_deadline_and_the_cap_answers_503(guarded):
    port = guarded.server_address[1]
    body = json.dumps(CHAT)
    stalled = [connect(guarded) for _ in range(4)]
    stalled[0].sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
    stalled[1].sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 500\r\n\r\n{"
    )  # body never ends
    stalled[2].sendall(b"GET /health HT")  # a slowloris: one byte now and then, never a whole line
    deadline = time.time() + 10
    while guarded.open_connections < 4 and time.time() < deadline:
        time.sleep(0.01)
    assert guarded.open_connections == 4
    extra = connect(guarded)  # over the cap: answered at once, not queued behind the stalled ones
    extra.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    over = read_all(extra)
    assert over.startswith(b"HTTP/1.0 503") and b"Retry-After: 1" in over and b"server_overloaded" in over
    started = time.time()
    for _ in range(8):  # the slowloris keeps sending; it is cut at the deadline all the same
        time.sleep(0.1)
        try:
            stalled[2].sendall(b"T")
        except OSError:
            break
    answers = [read_all(s) for s in stalled]  # each ends: the server closed it
    assert time.time() - started < 5
    assert answers[1].startswith(b"HTTP/1.0 408") and b"did not arrive" in answers[1]
    deadline = time.time() + 10
    while guarded.open_connections and time.time() < deadline:
        time.sleep(0.01)
    assert guarded.open_connections == 0
    assert call(guarded, "/v1/chat/completions", json.loads(body))[0] == 200
    for s in stalled + [extra]:
        s.close()


def test_a_client_that_stops_reading_its_stream_releases_its_connection(guarded, monkeypatch):
    """A write the client does not accept within the deadline ends the answer. Small socket buffers on
    both ends make the ~30 KB stream block (loopback would otherwise buffer it all)."""
    real_setup = serve.Handler.setup

    def setup(handler):
        handler.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        real_setup(handler)

    monkeypatch.setattr(serve.Handler, "setup", setup)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", guarded.server_address[1]))
    body = json.dumps({"prompt": "Four", "max_tokens": 60, "stream": True, "stop": "never", "logprobs": 5})
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    deadline = time.time() + 10
    while not guarded.open_connections and time.time() < deadline:
        time.sleep(0.01)
    started = time.time()
    while guarded.open_connections and time.time() < started + 20:  # never read: it must not hold for ever
        time.sleep(0.05)
    assert guarded.open_connections == 0 and time.time() - started < 10
    deadline = time.time() + 10
    while guarded.engine.busy() and time.time() < deadline:
        time.sleep(0.01)
    assert not guarded.engine.busy()
    received = len(read_all(sock))
    assert 0 < received < 30000  # it had begun, and was cut: the rest was never written
    sock.close()


# ----------------------------------------------------------------------------- every class of bad input


def raw_exchange(srv, data: bytes, timeout=10) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=timeout) as sock:
        sock.sendall(data)
        return read_all(sock)


def post_raw(srv, path, raw: bytes) -> tuple:
    status, reply = call(srv, path, raw=raw)
    return status, reply["error"]


HOSTILE_BODIES = [  # (raw body, words in the message, param): each class of parseable-but-bad input
    (
        b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
        "lone UTF-16 surrogate",
        "messages[0].content",
    ),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}', "'seed'", "seed"),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 3000 + b"}",
        "seed",
        "seed",
    ),
    (b'{"messages": [], "max_tokens": ' + b"7" * 5000 + b"}", "too many digits", None),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + b"1" * 400 + b"}",
        "temperature",
        "temperature",
    ),
    (b"[" * 1500 + b"]" * 1500, "nested too deeply", None),
    (b'{"metadata": ' + b"[" * 40 + b"]" * 40 + b"}", "nested too deeply", None),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN", None),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "Infinity", None),
    (b'\xff\xfe{"a": 1}', "JSON", None),
]


@pytest.mark.parametrize("raw, words, param", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_hostile_bodies_get_a_400_in_openai_shape(server, raw, words, param):
    status, err = post_raw(server, "/v1/chat/completions", raw)
    assert status == 400 and words in err["message"] and err["param"] == param, err
    assert set(err) == {"message", "type", "param", "code"}


IGNORED_BEFORE = [  # (path, extra fields, param named): what used to be silently ignored
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"functions": []}, "functions"),
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
    ("/v1/chat/completions", {"presence_penalty": 3}, "presence_penalty"),
    ("/v1/chat/completions", {"logit_bias": {"99999": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"n": 9}, "n"),
    ("/v1/chat/completions", {"repetition_penalty": 1e-300}, "repetition_penalty"),
    ("/v1/completions", {"echo": True}, "echo"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"suffix": "x"}, "suffix"),
    ("/v1/completions", {"logprobs": 9}, "logprobs"),
]


@pytest.mark.parametrize("path, extra, param", IGNORED_BEFORE, ids=[p for _, _, p in IGNORED_BEFORE])
def test_a_parameter_this_server_does_not_implement_is_refused_by_name(server, path, extra, param):
    base = CHAT if "chat" in path else {"prompt": "Four", "max_tokens": 2}
    status, reply = call(server, path, {**base, **extra})
    assert status == 400 and reply["error"]["param"] == param and param in reply["error"]["message"]


PROTOCOL_CASES = [  # (bytes sent, status line start, words in the answer)
    (b"PUT /v1/models HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.0 405", b"Allow: GET"),
    (b"DELETE /v1/chat/completions HTTP/1.1\r\n\r\n", b"HTTP/1.0 405", b"Allow: POST"),
    (b"GET /v1/chat/completions HTTP/1.1\r\n\r\n", b"HTTP/1.0 405", b"Allow: POST"),
    (b"PATCH /nowhere HTTP/1.1\r\n\r\n", b"HTTP/1.0 404", b"no route"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", b"HTTP/1.0 400", b"request line"),
    (b"HELLO\r\n\r\n", b"HTTP/1.0 400", b"request line"),
    (b"GET /\r\n", b"HTTP/1.0 400", b"HTTP/0.9"),  # used to wait for headers for ever
    (b"GET / HTTP/x.y\r\n\r\n", b"HTTP/1.0 400", b"version"),
    (b"GET / HTTP/2.0\r\n\r\n", b"HTTP/1.0 505", b"error"),
]


@pytest.mark.parametrize("sent, status, words", PROTOCOL_CASES, ids=range(len(PROTOCOL_CASES)))
def test_protocol_edges_get_a_status_line_and_a_json_error(server, sent, status, words):
    answer = raw_exchange(server, sent)
    assert answer.startswith(status) and words in answer, answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["message"]


def test_a_body_shorter_than_its_content_length_is_a_400(server):
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{}")
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.0 400") and b"ended after 2 of its 100 bytes" in answer


# ----------------------------------------------------------------------------- parameters implemented


def test_logprobs_whole_and_streamed_agree_and_follow_openai_shapes(server):
    body = {**CHAT, "logprobs": True, "top_logprobs": 3, "max_tokens": 6}
    status, whole = call(server, "/v1/chat/completions", body)
    content = whole["choices"][0]["logprobs"]["content"]
    stop_token = whole["choices"][0]["finish_reason"] == "stop"  # its id ended the answer, not part of it
    assert status == 200 and len(content) == whole["usage"]["completion_tokens"] - stop_token >= 1
    for entry in content:  # greedy: the chosen token is the likeliest alternative
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["logprob"] >= tops[1]["logprob"] >= tops[2]["logprob"]
        assert entry["token"] == tops[0]["token"] and entry["logprob"] == pytest.approx(tops[0]["logprob"])
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    assert (
        "".join(bytes(e["bytes"]).decode("latin-1") for e in content)
        .encode("latin-1")
        .decode("utf-8", "replace")
        == whole["choices"][0]["message"]["content"]
    )
    _, stream = call(server, "/v1/chat/completions", {**body, "stream": True})
    chunks = [json.loads(e) for e in sse_events(stream)[:-1]]
    streamed = [e for c in chunks for e in ((c["choices"][0].get("logprobs") or {}).get("content") or [])]
    assert [e["token"] for e in streamed] == [
        e["token"] for e in content
    ]  # batched: logprobs equal to rounding
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content], abs=1e-4)
    status, comp = call(
        server, "/v1/completions", {"prompt": "Four", "max_tokens": 5, "temperature": 0, "logprobs": 2}
    )
    lp = comp["choices"][0]["logprobs"]
    assert status == 200 and len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert all(len(t) <= 2 for t in lp["top_logprobs"]) and lp["text_offset"][0] == 0


def test_n_answers_logit_bias_penalties_and_special_tokens(server):
    status, reply = call(server, "/v1/chat/completions", {**CHAT, "n": 3, "temperature": 0})
    texts = [c["message"]["content"] for c in reply["choices"]]
    assert status == 200 and [c["index"] for c in reply["choices"]] == [0, 1, 2] and len(set(texts)) == 1
    one = call(server, "/v1/chat/completions", {**CHAT, "temperature": 0})[1]["usage"]
    k = one["completion_tokens"]
    assert reply["usage"] == {**one, "completion_tokens": 3 * k, "total_tokens": one["prompt_tokens"] + 3 * k}
    _, stream = call(
        server, "/v1/completions", {"prompt": "Four", "n": 2, "max_tokens": 4, "stream": True, "seed": 3}
    )
    chunks = [json.loads(e) for e in sse_events(stream)[:-1]]
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}
    assert sum(c["choices"][0]["finish_reason"] is not None for c in chunks) == 2
    a_id = server.tok.encode_ordinary("A")[0]
    _, forced = call(
        server, "/v1/completions", {"prompt": "x", "max_tokens": 4, "logit_bias": {str(a_id): 100}}
    )
    assert forced["choices"][0]["text"] == "AAAA"
    _, penalized = call(
        server,
        "/v1/completions",
        {
            "prompt": "x",
            "max_tokens": 4,
            "temperature": 0,
            "logit_bias": {str(a_id): 5},
            "frequency_penalty": 2,
        },
    )
    assert penalized["choices"][0]["text"] != "AAAA"  # the penalty outweighs the bias after a repeat or two
    pad = (
        server.tok.special_tokens["<|pad|>"] if "<|pad|>" in server.tok.special_tokens else server.tok.eot_id
    )
    _, special = call(
        server, "/v1/chat/completions", {**CHAT, "temperature": 1, "logit_bias": {str(pad): 100}}
    )
    choice = special["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == ""  # no literal <|pad|>


def test_get_one_model_by_id(server):
    status, card = call(server, "/v1/models/test/model")
    assert status == 200 and card["id"] == "test/model" and card["context_length"] == 64
    status, reply = call(server, "/v1/models/gpt-5")
    assert status == 404 and reply["error"]["code"] == "model_not_found"


# ----------------------------------------------------------------------------- browser safety


def test_cross_origin_pages_and_foreign_host_names_are_refused(server):
    port = server.server_address[1]
    own = {"Origin": f"http://127.0.0.1:{port}"}
    assert call(server, "/v1/chat/completions", CHAT, headers=own)[0] == 200  # the chat page itself
    status, reply = call(server, "/v1/chat/completions", CHAT, headers={"Origin": "http://evil.example"})
    assert (
        status == 403
        and reply["error"]["code"] == "origin_not_allowed"
        and "--cors-origin" in reply["error"]["message"]
    )
    text_plain = {
        "Origin": "http://evil.example",
        "Content-Type": "text/plain",
    }  # a "simple" request: no preflight
    assert call(server, "/v1/chat/completions", CHAT, headers=text_plain)[0] == 403
    rebound = raw_exchange(server, f"GET /v1/models HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n".encode())
    assert rebound.startswith(b"HTTP/1.0 403") and b"host_not_allowed" in rebound
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert raw_exchange(server, f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()).startswith(
            b"HTTP/1.0 200"
        )
    server.cors_origins = ("http://localhost:3000",)
    try:
        allowed = {"Origin": "http://localhost:3000"}
        req = urllib.request.Request(url(server, "/v1/models"), headers=allowed)
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        pre = raw_exchange(
            server,
            b"OPTIONS /v1/chat/completions HTTP/1.1\r\nOrigin: http://localhost:3000\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n",
        )
        assert pre.startswith(b"HTTP/1.0 204") and b"Access-Control-Allow-Methods: POST" in pre
        assert b"Access-Control-Allow-Headers: Authorization, Content-Type" in pre
    finally:
        server.cors_origins = ()


def test_with_an_api_key_health_tells_only_liveness_and_host_names_are_allowed(server):
    port = server.server_address[1]
    server.api_key = "sesame"
    try:
        status, health = call(server, "/health")
        assert status == 200 and health == {"status": "ok"}
        key = {"Authorization": "Bearer sesame"}
        assert call(server, "/health", headers=key)[1]["model"] == "test/model"
        assert call(server, "/metrics", raw=None)[0] == 401
        named = raw_exchange(
            server,
            f"GET /v1/models HTTP/1.1\r\nHost: myserver.lan:{port}\r\nAuthorization: Bearer sesame\r\n\r\n".encode(),
        )
        assert named.startswith(b"HTTP/1.0 200")  # behind a proxy, under its own name: the key protects it
    finally:
        server.api_key = ""


# ----------------------------------------------------------------------------- monitoring


def test_metrics_are_prometheus_text_with_requests_latencies_and_load(server):
    call(server, "/v1/chat/completions", {**CHAT, "stream": True})
    call(server, "/v1/chat/completions", {**CHAT, "top_p": 2})
    with urllib.request.urlopen(url(server, "/metrics"), timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE "))
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples['llm_http_responses_total{route="/v1/chat/completions",status="200"}'] >= 1
    assert samples['llm_http_responses_total{route="/v1/chat/completions",status="400"}'] >= 1
    for hist in (
        "llm_time_to_first_token_seconds",
        "llm_time_per_output_token_seconds",
        "llm_request_duration_seconds",
    ):
        buckets = [v for k, v in samples.items() if k.startswith(hist + "_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == samples[hist + "_count"] >= 1
        assert samples[hist + "_sum"] > 0
    assert samples["llm_generated_tokens_total"] >= 1
    assert samples["llm_requests_running"] == 0 and samples["llm_requests_waiting"] == 0
    assert samples["llm_batch_slots"] == 4 and samples["llm_open_connections"] >= 1  # this scrape's
    assert samples["llm_generation_tokens_per_second"] >= 0


def test_cut_at_a_stop_at_position_zero_and_hold_the_longest_prefix():
    assert cut_at_stop("world!", ("world",)) == ("", True)
    assert cut_at_stop("a stop b stop", ("stop",)) == ("a ", True)  # the first occurrence
    # "xabab" ends with "ab" and with "abab", both prefixes of "ababc": hold the longer, 4
    assert held_back("xabab", ("ababc",)) == 4
    # "hello wor": "wor" may start "world" (3), "r" may start "r!" (1): hold 3, whatever the order
    assert held_back("hello wor", ("world", "r!")) == held_back("hello wor", ("r!", "world")) == 3


def test_static_batching_keeps_a_finished_row_until_its_batch_ends(model):
    engine = Engine(model, None, "static", max_batch=2)
    for n in (8, 2):  # long in row 0, short in row 1
        engine.submit(Request([1, 2, 3], SamplingParams(max_tokens=n, temperature=0)))
    engine.run_until_idle()
    # long decodes 7 times (its first token comes from the prefill), short once; static batching
    # keeps short's finished row in the batch: 2 rows a step, 14 rows, 7 + 1 = 8 of them useful
    assert engine.stats["decode_rows"] == 14 and engine.stats["decode_useful"] == 8


# ----------------------------------------------------------------------------- user feedback


def test_feedback_endpoint_saves_good_ratings_and_refuses_every_kind_of_bad_one(server, tmp_path):
    """POST /v1/feedback appends a checked rating; each class of bad rating gets a 400 naming it and
    writes nothing; a file that cannot be written is a 500 and the server goes on; none kept is a 404."""
    q = [{"role": "user", "content": "Where does Noin Marora live?"}]
    good = {"messages": q, "answer": "In Pelk.", "rating": "down", "better": "In Lomaro."}
    assert call(server, "/v1/feedback", good)[0] == 404  # this server was started without a file
    server.feedback_path = tmp_path / "fb" / "feedback.jsonl"
    try:
        assert call(server, "/v1/feedback", good) == (200, {"saved": True})
        assert call(server, "/v1/feedback", {"messages": q, "answer": "x", "rating": "up"})[0] == 200
        bad = [
            {**good, "rating": "meh"},  # not up/down
            {**good, "rating": "up"},  # a better answer with a good rating
            {**good, "better": "  "},  # an empty better answer
            {**good, "messages": q + [{"role": "assistant", "content": "hi"}]},  # not ending with the user
            {**good, "messages": []},  # no conversation
            {**good, "messages": [{"role": "robot", "content": "hi"}]},  # an unknown role
            {k: v for k, v in good.items() if k != "answer"},  # no answer
            {**good, "answer": 3},  # a field of the wrong type
            {**good, "stars": 5},  # an unknown field
            {**good, "model": "another/model"},  # a model this server does not serve
        ]
        for body in bad:
            status, reply = call(server, "/v1/feedback", body)
            assert status in (400, 404) and reply["error"]["message"], body
        status, reply = call(server, "/v1/feedback", raw=b"{not json")
        assert status == 400
        saved = read_feedback(server.feedback_path)
        assert [r["rating"] for r in saved] == ["down", "up"] and all(
            r["model"] == "test/model" for r in saved
        )
        assert feedback_pairs(saved) == [
            {"prompt": q, "chosen": "In Lomaro.", "rejected": "In Pelk.", "rule": "user_feedback"}
        ]
        assert [c["messages"][-1]["content"] for c in feedback_conversations(saved)] == ["In Lomaro.", "x"]
        server.feedback_path = tmp_path  # a folder: the append fails
        assert call(server, "/v1/feedback", good)[0] == 500
        assert call(server, "/v1/chat/completions", CHAT)[0] == 200  # and the server goes on
    finally:
        server.feedback_path = None


def test_terminal_chat_rates_the_last_answer_with_good_and_bad(tok, tmp_path):
    model = tiny_model(vocab=tok.vocab_size, block_size=64, seed=1)
    cfg = ChatConfig(temperature=0, max_tokens=4, system="Be brief.", feedback=str(tmp_path / "f.jsonl"))
    session = ChatSession(Engine(model, tok, "sequential"), tok, cfg)
    shown = chat_transcript(session, ["/good", "hello", "/good", "/good nice", "again", "/bad It is Lomaro."])
    assert shown.count("error: ") == 2  # nothing to rate yet; /good with text
    up, down = read_feedback(tmp_path / "f.jsonl")
    assert (up["rating"], down["rating"], down["better"]) == ("up", "down", "It is Lomaro.")
    assert up["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert down["messages"][-1]["content"] == "again" and down["answer"] == session.turns[-1]["content"]
