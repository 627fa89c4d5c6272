"""05_sft_lora, the PEFT methods as issue 23 asks of them: prefix tuning learns to stop (the chat
markers' rows train beside the prefixes), one base serves several named LoRA adapters switched per
request, and the comparison's bars can fail. Small models, a few seconds in all."""

import dataclasses

import numpy as np
import pytest
import torch

from bpe import BPETokenizer
from chat_template import END, encode_chat, encode_prompt
from decoding import generate
from gpt import GPT, GPTConfig
from common.cli import UserError
from lora import (
    inject_lora,
    load_lora,
    lora_modules,
    merge_lora,
    merged_plain_model,
    save_lora,
    set_adapter,
    unmerge_lora,
)
from packing import collate_padded
from adapter import BottleneckAdapters, load_adapters, save_adapters, train_marker_rows
from prefix import PrefixTuning, attach_prefix, detach_prefix, load_prefix, marker_ids, save_prefix
from finetuned import answer_requests, generate_answers
import compare_outcome
import multi_adapter

WORDS = ["red", "green", "blue", "cat", "dog", "sun"]


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train([" ".join(f"Say {w}. {w.capitalize()}." for w in WORDS)] * 4, vocab_size=300)


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    return GPT(cfg)


def conv(w, answer=True):
    msgs = [{"role": "user", "content": f"Say {w}."}]
    return msgs + [{"role": "assistant", "content": f"{w.capitalize()}."}] if answer else msgs


def test_prefix_with_marker_rows_learns_to_emit_the_end_token(tok):
    model = tiny_model(tok)
    prefix = PrefixTuning(model.cfg, n_prefix=4, hidden=32, token_ids=marker_ids(tok))
    attach_prefix(model, prefix)
    assert not any(p.requires_grad for p in model.parameters())
    examples = [dict(zip(("input_ids", "labels"), encode_chat(tok, conv(w))[:2])) for w in WORDS]
    x, y = collate_padded(examples, tok.eot_id)
    opt = torch.optim.AdamW([p for p in prefix.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(30):
        loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    end = tok.special_tokens[END]
    model.eval()
    for w in WORDS[:3]:
        prompt = torch.tensor([encode_prompt(tok, conv(w, answer=False))])
        out = generate(model, prompt, 10, temperature=0, stop_tokens=[end])[0, prompt.shape[1] :].tolist()
        assert end in out and len(out) <= 6, (w, tok.decode([t for t in out if t != end]))


def test_marker_rows_save_load_and_detach_give_the_base_back(tok, tmp_path):
    model = tiny_model(tok)
    x = torch.tensor([encode_prompt(tok, conv("cat", answer=False))])
    y0 = model(x)[0]
    prefix = PrefixTuning(model.cfg, n_prefix=2, hidden=8, token_ids=marker_ids(tok))
    with torch.no_grad():
        prefix.token_in.normal_()
        prefix.token_out.normal_()
    attach_prefix(model, prefix)
    y1 = model(x)[0]
    assert not torch.allclose(y0, y1)
    save_prefix(prefix, model, tmp_path / "p.pt")
    detach_prefix(model, prefix)
    assert torch.equal(model(x)[0], y0)  # the embedding and output hooks are gone too
    fresh = tiny_model(tok)
    load_prefix(fresh, tmp_path / "p.pt")
    assert torch.allclose(fresh(x)[0], y1, atol=1e-6)


def twin_of_end(tok, model):
    """A base where <|end|> has a twin: a lower id with the very same embedding row, as 4,000 steps of
    pretraining make of <|end|> and the control bytes the corpus never holds. Returns the twin's id."""
    end = tok.special_tokens[END]
    twin = 3  # a control byte the tiny corpus never contains
    with torch.no_grad():
        model.tok_emb.weight[twin] = model.tok_emb.weight[end]
    return twin


def train_lora_on_answers(tok, model, marker_rows, steps=150):
    ids = marker_ids(tok) if marker_rows else ()
    inject_lora(model, ["wq", "wk", "wv", "wo", "up", "gate", "down"], r=8, alpha=16, token_ids=ids)
    examples = [dict(zip(("input_ids", "labels"), encode_chat(tok, conv(w))[:2])) for w in WORDS]
    x, y = collate_padded(examples, tok.eot_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("marker_rows", [False, True])
def test_lora_learns_to_stop_only_when_the_marker_rows_train(tok, marker_rows):
    """With <|end|>'s row equal to a twin's, no update of the linear layers can make <|end|> win: their
    logits h·E[i] are equal for every h (and argmax takes the lower id). LoRARows moves <|end|>'s row."""
    model = tiny_model(tok)
    twin = twin_of_end(tok, model)
    train_lora_on_answers(tok, model, marker_rows)
    end = tok.special_tokens[END]
    x = torch.tensor([encode_chat(tok, conv("cat"))[0]])
    logits = model(x)[0][0, -2]  # the position whose target is <|end|>
    if marker_rows:
        assert logits[end] > logits[twin] + 1.0
        for w in WORDS:
            prompt = torch.tensor([encode_prompt(tok, conv(w, answer=False))])
            out = generate(model, prompt, 10, temperature=0, stop_tokens=[end])[0, prompt.shape[1] :]
            assert out[-1] == end and len(out) <= 6, tok.decode(out.tolist())
    else:
        assert torch.allclose(logits[end], logits[twin])


def test_lora_marker_rows_start_at_the_base_merge_exactly_and_round_trip(tok, tmp_path):
    model = tiny_model(tok)
    x = torch.tensor([encode_chat(tok, conv("sun"))[0]])
    y0 = model(x)[0]
    inject_lora(model, ["wq", "wv"], r=2, alpha=4, token_ids=marker_ids(tok))
    assert torch.equal(model(x)[0], y0)  # B = 0 and δ = 0: exactly the base
    assert model.lm_head.weight is model.tok_emb.weight  # still one tied matrix
    with torch.no_grad():
        for m in lora_modules(model).values():
            for p in m.adapter_params("default"):
                p.normal_(std=0.3)
    y1 = model(x)[0]
    save_lora(model, tmp_path / "a.pt")
    fresh = tiny_model(tok)
    load_lora(fresh, tmp_path / "a.pt")
    assert torch.allclose(fresh(x)[0], y1, atol=1e-6)
    plain = merged_plain_model(fresh)  # E ← E + ΔE changes input and output rows together
    assert type(plain.tok_emb) is torch.nn.Embedding and set(plain.state_dict()) == set(y0_keys(tok))
    assert torch.allclose(plain(x)[0], y1, atol=1e-5)


def test_adapters_train_the_marker_rows_and_round_trip(tok, tmp_path):
    model = tiny_model(tok)
    x = torch.tensor([encode_chat(tok, conv("red"))[0]])
    y0 = model(x)[0]
    adapters = BottleneckAdapters(model.cfg, dim=4)
    adapters.attach(model)
    train_marker_rows(model, marker_ids(tok))
    assert torch.equal(model(x)[0], y0)  # identity adapters and zero rows: the base
    rows = model.tok_emb.lora_rows["adapter"]
    assert rows.requires_grad and rows.shape == (len(marker_ids(tok)), 32)
    with torch.no_grad():
        rows.normal_()
        for p in adapters.parameters():
            p.normal_(std=0.1)
    y1 = model(x)[0]
    save_adapters(adapters, model, tmp_path / "ad.pt")
    fresh = tiny_model(tok)
    load_adapters(fresh, tmp_path / "ad.pt")
    assert torch.allclose(fresh(x)[0], y1, atol=1e-6)


def y0_keys(tok):
    return tiny_model(tok).state_dict().keys()


def test_marker_rows_need_tied_embeddings(tok):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_kv_head=2, n_embd=16)
    model = GPT(dataclasses.replace(cfg, tie_weights=False))
    with pytest.raises(UserError, match="tied embeddings"):
        inject_lora(model, ["wq"], r=2, alpha=4, token_ids=marker_ids(tok))


def test_each_request_gets_its_own_adapter_and_a_weighted_mix_is_the_merged_sum(tok):
    model = tiny_model(tok)
    for name, seed in (("a", 1), ("b", 2)):
        inject_lora(model, ["wq", "wv", "down"], r=4, alpha=8, name=name)
        torch.manual_seed(seed)
        with torch.no_grad():
            for m in lora_modules(model).values():
                m.lora_B[name].normal_(std=0.5)
    model.eval()
    convs = [conv(w, answer=False) for w in WORDS]
    alone = {}
    for spec in ("a", "b", {}):
        set_adapter(model, spec)
        alone[str(spec)] = generate_answers(model, tok, convs, 6, "cpu")
    assert alone["a"] != alone["b"]
    requests = [(["a", "b", {}][i % 3], c) for i, c in enumerate(convs)]
    routed = answer_requests(model, tok, requests, 6, "cpu")
    assert routed == [alone[str(spec)][i] for i, (spec, _) in enumerate(requests)]
    x = torch.tensor([encode_prompt(tok, convs[0])])
    set_adapter(model, {"a": 0.5, "b": 0.5})
    mixed = model(x)[0]
    merge_lora(model)
    assert torch.allclose(model(x)[0], mixed, atol=1e-5)
    unmerge_lora(model)


def test_the_bars_can_fail():
    rng = np.random.default_rng(0)
    full = {"acc": list(rng.random(400) < 0.8)}
    worse = {"acc": [a and r > 0.25 for a, r in zip(full["acc"], rng.random(400))]}  # ~0.6
    assert not compare_outcome.noninferiority_bar("lora", worse, full)["passed"]
    assert compare_outcome.noninferiority_bar("lora", full, full)[
        "passed"
    ]  # identical on 400: interval [0, 0]
    few = {"acc": full["acc"][:40]}
    flipped = {"acc": [not a if i % 5 == 0 else a for i, a in enumerate(few["acc"])]}
    assert not compare_outcome.noninferiority_bar("lora", flipped, few)["passed"]  # 40 questions: too wide
    same = {t: {"acc": [1, 0, 1, 1, 0, 1], "em": [0] * 6} for t in ("x", "y")}
    res = {"adapter x": same, "adapter y": same}
    assert not any(b["passed"] for b in multi_adapter.switching_bars(res, ["x", "y"]))


def test_within_the_margin_of_a_full_fine_tune_that_beats_nothing_does_not_pass():
    """sft_compare: a method equal to full passes only when full itself beats the cheap baselines."""
    from compare_outcome import outcome_block

    def bar(passed, lo):
        return {"passed": passed, "interval": [lo, lo + 0.1], "metric": "m", "value": lo + 0.05}

    evals = {"full@1": {"acc": [1, 0]}, "lora@1": {"acc": [1, 0]}}
    chosen = {"full": "full@1", "lora": "lora@1"}
    bars = {"full": bar(False, -0.02), "lora": bar(False, -0.02), "lora vs full": bar(True, -0.04)}
    assert outcome_block(chosen, evals, bars)["bar"] is bars["full"]  # full beats nothing: it decides
    bars["full"] = bar(True, 0.01)
    assert outcome_block(chosen, evals, bars)["bar"] is bars["lora vs full"]
