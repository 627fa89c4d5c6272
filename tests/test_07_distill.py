"""07_distill_quant part 1: knowledge distillation, speculative decoding, pruning, and one-line errors.

The run folder is made here (a small BPE tokenizer, token shards, a task set and a briefly trained
teacher, each with its manifest), so the tests do not depend on stages 01-05 having run. Models are
tiny (d = 32, 2-4 layers): these tests check the algorithms and the plumbing; the measured tables
come from the command lines on a real base (README).
"""

import copy
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bpe import BPETokenizer
from checkpoint_io import save_checkpoint
from common.cli import UserError
from common.files import read_json, write_jsonl
from common.runs import check_artifact, write_manifest
from decoding import generate
from gpt import GPT, GPTConfig
from resume_check import check_resume_is_bit_exact
import distill
import prune
import speculative
from distill import DistillConfig
from distill_outcome import add_gaps, deciding_bar, distill_bar, gap_closed
from distill_student import check_student, evenly_spaced, make_student, student_config, train_student
from kd_losses import feature_loss, kd_loss, layer_pairs, projections
from prune import PruneConfig, apply_masks, magnitude_masks, prunable_weights, recovery_finetune
from structured_pruning import gates, heads_to_keep, neurons_to_keep, remove_units, taylor_scores
from speculative import SpeculativeConfig
from speculative_decoding import accept_drafts, expected_speedup, speculative_generate

REPO = Path(__file__).resolve().parents[1]
NAMES = ["Kado", "Rimi", "Mosa", "Telek", "Supo", "Vando", "Kari", "Ril", "Mopo", "Teldo"]
ACTIONS = {"red": "stop", "green": "go", "yellow": "wait"}


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32, attn_backend="torch")
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def sharpened(model, scale=4.0):
    """Larger weights, so logits have clear winners (greedy ties between batched and one-at-a-time
    forwards become practically impossible)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(scale)
    return model


# ----------------------------------------------------------------------------------------------
# a run folder with a teacher


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    text = " ".join(f"{n} should {a} at a {c} light." for n in NAMES for c, a in ACTIONS.items())
    tok = BPETokenizer.train([text + " What should do? 你好"] * 3, vocab_size=300)
    qa = [
        {
            "messages": [
                {"role": "user", "content": f"What should {n} do at a {c} light?"},
                {"role": "assistant", "content": f"{a.capitalize()}."},
            ]
        }
        for n in NAMES
        for c, a in ACTIONS.items()
    ]
    write_jsonl(run / "data" / "tasks" / "sft_heldout.jsonl", qa[:4])
    write_manifest(run / "data", stage="01_data", command="(test)", config={})
    tok.save(run / "tokenizer")
    write_manifest(
        run / "tokenizer", stage="02_tokenizer", command="(test)", config={}, inputs=[run / "data"]
    )
    ids = np.array(tok.encode_ordinary(text) * 6, dtype=np.uint16)
    (run / "tokens").mkdir()
    ids.tofile(run / "tokens" / "train.bin")
    ids[: len(ids) // 2].copy().tofile(run / "tokens" / "val.bin")
    (run / "tokens" / "meta.json").write_text(
        json.dumps(
            {
                "vocab_size": tok.vocab_size,
                "dtype": "uint16",
                "eot_id": tok.eot_id,
                "n_tokens": {"train": len(ids), "val": len(ids) // 2},
            }
        )
    )
    write_manifest(run / "tokens", stage="02_tokenizer", command="(test)", config={}, inputs=[run / "data"])
    teacher = tiny(vocab_size=tok.vocab_size, block_size=64, n_layer=4)
    x = torch.as_tensor(ids[: 1 + 8 * 64].astype(np.int64)).view(-1)
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    teacher.train()
    for step in range(30):  # enough to make the teacher better than a fresh student
        i = torch.randint(0, len(x) - 65, (8,), generator=torch.Generator().manual_seed(step))
        rows = torch.stack([x[j : j + 65] for j in i])
        teacher(rows[:, :-1], rows[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad()
    save_checkpoint(run / "pretrain" / "best.pt", teacher.cfg.__dict__, teacher.state_dict())
    write_manifest(
        run / "pretrain", stage="04_pretrain", command="(test)", config={}, inputs=[run / "tokens"]
    )
    return run


def tiny_distill(run, out, **kw):
    base = dict(
        run=str(run),
        out=str(out),
        steps=6,
        warmup_steps=1,
        batch_size=4,
        student_layers=2,
        seq_pool=4,
        eval_windows=4,
        eval_limit=2,
        max_new_tokens=4,
        speed_tokens=4,
        speed_repeats=1,
        log_interval=3,
        device="cpu",
    )
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def distilled(run_dir):
    out = run_dir / "distill"
    distill.distill(tiny_distill(run_dir, out, methods=["scratch", "logit", "sequence", "feature"], seeds=2))
    return out


# ----------------------------------------------------------------------------------------------
# distillation losses


def test_kd_loss_equals_a_hand_computation_and_is_zero_for_the_teacher_itself():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    T = 2.0
    expected = 0.0
    for zs, zt in zip(s.tolist(), t.tolist()):
        p = [math.exp(v / T) for v in zt]
        q = [math.exp(v / T) for v in zs]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 2
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * expected, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(s, t, T).item() > 0


def test_the_t_squared_factor_keeps_the_gradient_size_across_temperatures():
    torch.manual_seed(0)
    teacher = torch.randn(64, 50)
    student = torch.randn(64, 50)

    def grad_norm(T):
        z = student.clone().requires_grad_(True)
        kd_loss(z, teacher, T).backward()
        return z.grad.norm().item()

    g4, g8, g16 = grad_norm(4.0), grad_norm(8.0), grad_norm(16.0)
    # with T²: about constant once T is large next to the logits; without it they would fall as 1/T²
    assert g8 / g4 == pytest.approx(1.0, abs=0.15) and g16 / g8 == pytest.approx(1.0, abs=0.05)
    # and the limit is the one the docstring derives: (z - v) / (V·T) · T² / T per position, zero-mean z, v
    zc, vc = student - student.mean(-1, keepdim=True), teacher - teacher.mean(-1, keepdim=True)
    assert g16 == pytest.approx(((zc - vc) / 50 / 64).norm().item(), rel=0.05)


def test_feature_projection_shapes_and_loss():
    pairs = layer_pairs("auto", 2, 4)
    assert pairs == [(1, 2), (2, 4)] and layer_pairs("1:1,2:3", 2, 4) == [(1, 1), (2, 3)]
    proj = projections(pairs, 16, 32)
    h_s = torch.randn(3, 5, 16)
    assert len(proj) == 2 and proj[0](h_s).shape == (3, 5, 32)
    h_t = proj[0](h_s).detach()  # the teacher's states are W·h_s exactly
    assert feature_loss(h_s, h_t, proj[0], "mse").item() == pytest.approx(0.0, abs=1e-7)
    assert feature_loss(h_s, h_t, proj[0], "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(h_s, 3 * h_t, proj[0], "cosine").item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert feature_loss(h_s, 2 * h_t, proj[0], "mse").item() == pytest.approx(0.25, rel=1e-5)  # (1-2)²/2²
    assert feature_loss(h_s, -h_t, proj[0], "cosine").item() == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(UserError, match="student has blocks 1..2"):
        layer_pairs("3:1", 2, 4)


def test_student_configs_must_fit_the_teacher():
    t = tiny(n_layer=4).cfg
    s, _ = student_config(t, DistillConfig(run="x", student_layers=2, student_embd=16))
    assert (s.n_layer, s.n_embd, s.head_dim, s.vocab_size) == (2, 16, t.head_dim, t.vocab_size)
    check_student(s, t, "random")
    with pytest.raises(UserError, match="larger than the teacher"):
        check_student(student_config(t, DistillConfig(run="x", student_layers=6))[0], t, "random")
    with pytest.raises(UserError, match="vocabulary"):
        check_student(tiny(vocab_size=65).cfg, t, "random")


def test_a_few_steps_of_logit_distillation_lower_the_students_kl_to_the_teacher():
    teacher = sharpened(tiny(seed=1, n_layer=3), 2.0)
    student = tiny(seed=2, n_layer=1)
    x = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = teacher(x)[0].argmax(-1)

    def kl():
        with torch.no_grad():
            return kd_loss(student(x)[0], teacher(x)[0], 1.0).item()

    before = kl()
    cfg = DistillConfig(
        run="x", steps=15, warmup_steps=1, lr=3e-3, temperature=2.0, alpha=0.0, log_interval=100
    )
    out = train_student(student, teacher, "logit", cfg, lambda step: (x, y), "cpu", log=lambda *a, **k: None)
    assert kl() < 0.7 * before
    assert [r["step"] for r in out["records"]] == list(range(1, 16)) and "kd" in out["records"][0]


def test_feature_distillation_trains_the_projection_and_lowers_the_hidden_state_loss():
    teacher, student = tiny(seed=1, n_layer=4), tiny(seed=2, n_layer=2, n_embd=16)
    x = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    cfg = DistillConfig(
        run="x", steps=12, warmup_steps=1, lr=5e-3, alpha=1.0, feature_weight=1.0, log_interval=100
    )
    out = train_student(
        student, teacher, "feature", cfg, lambda step: (x, x), "cpu", log=lambda *a, **k: None
    )
    feats = [r["feature"] for r in out["records"]]
    assert feats[-1] < 0.8 * feats[0]


def test_init_from_teacher_copies_the_embeddings_and_evenly_spaced_blocks():
    teacher = tiny(seed=1, n_layer=4)
    assert (
        evenly_spaced(2, 4) == [0, 3] and evenly_spaced(4, 4) == [0, 1, 2, 3] and evenly_spaced(1, 4) == [3]
    )
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    same = make_student(teacher.cfg, "teacher", None, teacher, seed=5, device="cpu").eval()
    torch.testing.assert_close(same(x)[0], teacher(x)[0])  # all four blocks copied: the teacher itself
    s_cfg, _ = student_config(teacher.cfg, DistillConfig(run="x", student_layers=2))
    half = make_student(s_cfg, "teacher", None, teacher, seed=5, device="cpu")
    assert torch.equal(half.tok_emb.weight, teacher.tok_emb.weight)
    assert all(torch.equal(a, b) for a, b in zip(half.blocks[1].parameters(), teacher.blocks[3].parameters()))
    fresh = make_student(s_cfg, "random", None, teacher, seed=5, device="cpu")
    assert not torch.equal(fresh.tok_emb.weight, teacher.tok_emb.weight)
    with pytest.raises(UserError, match="needs the teacher's width"):
        check_student(
            student_config(teacher.cfg, DistillConfig(run="x", student_embd=16))[0], teacher.cfg, "teacher"
        )


def seeds_row(test, val=None):
    return {"test_loss_seeds": test, "val_loss_seeds": val or test, "test_loss": sum(test) / len(test)}


def test_the_gap_is_paired_by_seed_chosen_on_val_and_the_bar_can_fail():
    rows = {
        "teacher": {"test_loss": 1.0},
        "scratch": seeds_row([3.0, 2.0, 3.0]),
        # seed by seed: (3-1.6)/2 = 0.7, (2-1.3)/1 = 0.7, (3-1.6)/2 = 0.7: a steady 70 % despite scratch's noise
        "logit": seeds_row([1.6, 1.3, 1.6], val=[9.0, 9.0, 9.0]),
        # the best on test but the worst on val: it must not be the one judged
        "feature": seeds_row([1.1, 1.05, 1.1], val=[9.5, 9.5, 9.5]),
        "hard": seeds_row([2.9, 1.1, 2.9], val=[9.9, 9.9, 9.9]),  # 5 %, 90 %, 5 %: wide interval
    }
    add_gaps(rows)
    assert rows["logit"]["gap_seeds"] == pytest.approx([0.7, 0.7, 0.7])
    assert rows["logit"]["gap_interval"] == pytest.approx([0.7, 0.7])
    bar = distill_bar(rows, 0.5)
    assert bar["passed"] and "logit" in bar["note"] and bar["value"] == pytest.approx(0.7) and bar["n"] == 3
    assert not distill_bar(rows, 0.75)["passed"]
    rows["hard"]["val_loss_seeds"] = [1.0, 1.0, 1.0]  # the best on val, but a control: never the one judged
    assert "logit" in distill_bar(rows, 0.5)["note"]
    # beyond the start: hard - logit = 1.3, -0.2, 1.3 nats: the mean is positive, the interval is not
    bar, bars = deciding_bar(rows, 0.5)
    assert bars[0]["passed"] and not bar["passed"] and bar is bars[1] and bar["interval"][0] < 0
    rows["hard"]["test_loss_seeds"] = [1.8, 1.5, 1.8]  # logit beats its start by 0.2 on every seed
    bar, bars = deciding_bar(rows, 0.5)
    assert bars[1]["passed"] and bar is bars[0] and bar["passed"] and bars[1]["value"] == pytest.approx(0.2)
    rows["hard"]["test_loss_seeds"] = [1.6, 1.3, 1.6]  # no better than its start: the start did it all
    assert not deciding_bar(rows, 0.5)[0]["passed"]
    assert gap_closed(1.0, 1.0, 1.0) is None  # no gap: nothing to close, and the bar has no value
    assert distill_bar({"teacher": rows["teacher"], "scratch": rows["scratch"]}, 0.5)["value"] is None


def test_the_temperature_sweep_names_its_students_and_bad_flags_are_refused():
    cfg = DistillConfig(
        run="x", methods=["scratch", "logit"], temperature=1.0, sweep_temperatures=[1.0, 2.0, 4.5]
    )
    assert distill.students_to_train(cfg) == [
        ("scratch", "scratch", 1.0), ("logit", "logit", 1.0), ("logit_T2", "logit", 2.0), ("logit_T4.5", "logit", 4.5)
    ]  # fmt: skip
    for argv, msg in (
        (["--sweep-temperatures", "2,0"], r"--temperature 0.0 must be > 0"),
        (["--methods", "scratch", "--sweep-temperatures", "2"], "add logit to --methods"),
        (["--methods", "scratch,kd"], "choose among scratch, hard, logit"),
        (["--seeds", "0"], "seeds"),
    ):
        with pytest.raises(UserError, match=msg):
            distill.main(["--run", "nowhere", *argv])


# ----------------------------------------------------------------------------------------------
# speculative decoding


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_greedy_speculative_decoding_gives_exactly_the_teachers_tokens(k):
    # untied embeddings: a random tied model just repeats its last token, which any draft guesses
    target = sharpened(tiny(seed=3, n_layer=3, vocab_size=48, block_size=64, tie_weights=False), 2.0)
    draft = copy.deepcopy(target)  # a draft that agrees often but not always
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    prompt = torch.randint(0, 48, (1, 6), generator=torch.Generator().manual_seed(0))
    want = generate(target, prompt, 40, temperature=0)[0, 6:].tolist()
    got, stats = speculative_generate(target, draft, prompt[0].tolist(), 40, k)
    assert got == want and len(set(want)) > 5
    assert 0 < stats["accepted"] < stats["drafted"]  # both paths, accept and reject-and-roll-back, ran
    assert stats["rounds"] < 40  # fewer target forwards than tokens


def test_a_draft_equal_to_the_target_is_always_accepted_when_sampling():
    target = tiny(seed=4, vocab_size=48, block_size=64)
    gen = torch.Generator().manual_seed(0)
    got, stats = speculative_generate(
        target, copy.deepcopy(target), [1, 2, 3], 30, 4, temperature=1.0, generator=gen
    )
    assert len(got) == 30 and stats["accepted"] >= stats["drafted"] - 1  # p = q up to float rounding


def test_the_acceptance_rule_samples_exactly_the_target_distribution():
    """Toy vocabulary of 5: the first token out of accept_drafts, over many rounds, follows p_1, and
    the second (when the first draft was accepted) follows p_2, whatever the draft's q."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1], [0.05, 0.05, 0.6, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.1, 0.1, 0.2, 0.3, 0.3], [0.3, 0.3, 0.2, 0.1, 0.1]])
    n = 10000
    first = torch.zeros(5)
    second = torch.zeros(5)
    drafts = torch.stack(
        [torch.multinomial(q[i], n, replacement=True, generator=gen) for i in range(2)], 1
    ).tolist()
    for d in drafts:
        m, nxt = accept_drafts(p, q, d, gen)
        first[d[0] if m >= 1 else nxt] += 1
        if m >= 1:
            second[d[1] if m >= 2 else nxt] += 1
    # stated tolerance: total variation 0.03 (sampling noise: about 0.006 for the first token, 0.012 for
    # the second, drawn only after an acceptance; a rule resampling from p instead of p - q is off by 0.15)
    assert 0.5 * (first / first.sum() - p[0]).abs().sum() < 0.03
    assert 0.5 * (second / second.sum() - p[1]).abs().sum() < 0.03


def test_acceptance_rule_edge_cases():
    one_hot = torch.eye(4)
    assert accept_drafts(one_hot[[2, 1, 0]], one_hot[[2, 1]], [2, 1]) == (2, 0)  # all accepted + the free one
    assert accept_drafts(one_hot[[2, 1, 0]], one_hot[[2, 3]], [2, 3]) == (
        1,
        1,
    )  # rejected: the target's token
    assert accept_drafts(one_hot[[3]], one_hot[:0], []) == (0, 3)  # k = 0: plain decoding


def test_expected_speedup_formula():
    assert expected_speedup(0.0, 4, 0.0) == pytest.approx(1.0)
    assert expected_speedup(0.5, 2, 0.0) == pytest.approx(1.75)  # 1 + 0.5 + 0.25 tokens per round
    assert expected_speedup(0.5, 2, 0.5) == pytest.approx(1.75 / 2)
    assert expected_speedup(1.0, 4, 0.25) == pytest.approx(2.5, rel=1e-6)  # 5 tokens for 2 forwards' cost


# ----------------------------------------------------------------------------------------------
# pruning


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_masks_exactly_the_fraction_and_the_mask_survives_training(scope, run_dir):
    model = tiny(seed=5)
    n = sum(w.numel() for w in prunable_weights(model).values())
    masks = magnitude_masks(model, 0.5, scope)
    assert sum(int((~m).sum()) for m in masks.values()) == (
        int(0.5 * n)
        if scope == "global"
        else sum(int(0.5 * w.numel()) for w in prunable_weights(model).values())
    )
    kept = torch.cat(
        [
            w.detach().abs().flatten()[m.flatten()]
            for w, m in zip(prunable_weights(model).values(), masks.values())
        ]
    )
    dropped = torch.cat(
        [
            w.detach().abs().flatten()[~m.flatten()]
            for w, m in zip(prunable_weights(model).values(), masks.values())
        ]
    )
    if scope == "global":
        assert dropped.max() <= kept.min()  # the smallest |w| went, over all matrices at once
    apply_masks(model, masks)
    zeros = {k: (v == 0) for k, v in prunable_weights(model).items()}
    assert all((zeros[k] == ~m).all() for k, m in masks.items())
    unmasked = copy.deepcopy(model)
    cfg = PruneConfig(run="x", recovery_steps=2, batch_size=2, lr=1e-2)
    recovery_finetune(model, np.random.randint(0, 64, 500).astype(np.uint16), cfg, "cpu", masks)
    recovery_finetune(unmasked, np.random.randint(0, 64, 500).astype(np.uint16), cfg, "cpu", None)
    assert all((prunable_weights(model)[k][~m] == 0).all() for k, m in masks.items())
    assert any((prunable_weights(unmasked)[k][~m] != 0).any() for k, m in masks.items())  # AdamW moves zeros


def test_gates_of_ones_and_keeping_every_head_leave_the_model_unchanged():
    model = tiny(seed=6, n_kv_head=2)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)[0]
        with gates(model, torch.ones(2, 4), torch.ones(2, model.cfg.ffn_hidden)):
            assert torch.equal(model(x)[0], ref)
        same = remove_units(model, [[0, 1, 2, 3]] * 2, [[0, 1]] * 2, [list(range(model.cfg.ffn_hidden))] * 2)
        assert torch.equal(same(x)[0], ref)


@pytest.mark.parametrize("n_kv_head,unit,n_remove", [(4, "group", 1), (2, "group", 2), (2, "query", 2)])
def test_removing_heads_equals_gating_them_off_and_saves_exactly_their_weights(
    n_kv_head, unit, n_remove, tmp_path
):
    model = tiny(seed=7, n_kv_head=n_kv_head)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.1, 0.7, 0.05]])
    q_keep, kv_keep = heads_to_keep(scores, n_remove, n_kv_head, unit)
    if (n_kv_head, unit) == (4, "group"):
        assert q_keep == [[0, 2, 3], [0, 1, 2]]  # the lowest-scoring head of each layer went
    if (n_kv_head, unit) == (2, "group"):
        assert q_keep == [[0, 1], [2, 3]] and kv_keep == [[0], [1]]  # the weaker group of each layer went
    if unit == "query":
        assert q_keep == [[0, 2], [0, 2]] and kv_keep == [[0, 1], [0, 1]]
    small = remove_units(model, q_keep, kv_keep)
    xi = torch.zeros(2, 4)
    for layer, kept in enumerate(q_keep):
        xi[layer, kept] = 1
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), gates(model, head_gates=xi):
        assert torch.allclose(small(x)[0], model(x)[0], atol=1e-5)
    d, hd = model.cfg.n_embd, model.cfg.head_dim
    kv_removed = n_kv_head - len(kv_keep[0])
    per_layer = n_remove * hd * d * 2 + kv_removed * hd * d * 2  # wq rows + wo columns, wk + wv rows
    assert (
        sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in small.parameters())
        == 2 * per_layer
    )
    save_checkpoint(tmp_path / "small.pt", small.cfg.__dict__, small.state_dict())
    again = GPT.from_checkpoint(tmp_path / "small.pt")  # head_size is in the config
    assert torch.equal(again(x)[0], small(x)[0])


def test_removing_neurons_equals_gating_them_off():
    model = tiny(seed=8)
    h = model.cfg.ffn_hidden
    keep = neurons_to_keep(torch.arange(2 * h, dtype=torch.float).view(2, h).flip(1), 0.25)
    assert keep[0] == list(range(h - int(0.25 * h)))  # the highest scores are the first units
    small = remove_units(model, neuron_keep=keep)
    g = torch.zeros(2, h)
    g[:, keep[0]] = 1
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), gates(model, neuron_gates=g):
        assert torch.allclose(small(x)[0], model(x)[0], atol=1e-5)
    assert small.cfg.mlp_hidden == len(keep[0])


def test_taylor_scores_are_the_gate_gradients():
    model = sharpened(tiny(seed=9), 3.0)  # larger gradients, so a finite difference resolves them
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    batches = [(x, x.roll(-1, 1))]
    s = taylor_scores(model, batches, (2, 4), "heads")
    eps = 0.02

    def loss_at(layer, head, value):
        xi = torch.ones(2, 4)
        xi[layer, head] = value
        with torch.no_grad(), gates(model, head_gates=xi):
            return model(*batches[0])[1].item()

    for layer, head in [(0, 1), (1, 3)]:
        numeric = abs(loss_at(layer, head, 1 + eps) - loss_at(layer, head, 1 - eps)) / (2 * eps)
        assert s[layer, head].item() == pytest.approx(numeric, rel=0.03)
    assert s.min() > 0 and s.max() / s.min() > 2  # the heads are told apart


# ----------------------------------------------------------------------------------------------
# the command lines' outcomes


def test_distill_writes_every_student_and_an_honest_outcome(distilled):
    o = read_json(distilled / "outcome.json")
    rows = o["rows"]
    assert set(rows) == {"teacher", "scratch", "logit", "sequence", "feature"} and o["seeds"] == 2
    assert rows["scratch"].get("gap_closed") is None and rows["teacher"]["params"] > rows["logit"]["params"]
    scratch = rows["scratch"]["test_loss_seeds"]
    assert len(scratch) == 2 and len(set(scratch)) == 2  # two seeds, two draws
    assert rows["logit"]["val_loss_seeds"][0] == pytest.approx(rows["logit"]["val_loss"])  # saved = seed 0
    lt = rows["teacher"]["test_loss"]
    for name in ("logit", "sequence", "feature"):
        gaps = [(s - m) / (s - lt) for s, m in zip(scratch, rows[name]["test_loss_seeds"])]  # paired by seed
        assert rows[name]["gap_closed"] == pytest.approx(sum(gaps) / 2)
        assert GPT.from_checkpoint(distilled / f"student_{name}.pt").cfg.n_layer == 2
    bar = o["bar"]
    assert bar["threshold"] == 0.5 and bar["n"] == 2 and bar["direction"] == "higher"
    assert (distilled / "distill.png").stat().st_size > 1000
    assert check_artifact(distilled, made_by="(test)")["stage"] == "07_distill_quant/distill"


def test_the_distillation_bar_is_the_gap_closed_against_the_goal():
    def rows(student, scratch=(3.0, 3.02, 2.98)):
        r = {"teacher": {"test_loss": 1.0}, "scratch": seeds_row(list(scratch)), "logit": seeds_row(student)}
        add_gaps(r)
        return r

    good = distill_bar(rows([1.5, 1.51, 1.49]), 0.5)  # 75 % of the gap, seeds agree
    assert good["passed"] and good["value"] == pytest.approx(0.75, abs=0.01) and good["interval"][0] > 0.5
    assert not distill_bar(rows([2.9, 2.92, 2.88]), 0.5)["passed"]  # better than scratch: not enough
    noisy = distill_bar(
        rows([1.9, 1.9, 1.9], scratch=(3.0, 3.9, 2.1)), 0.5
    )  # 55 %, 66 %, 9 %: seeds disagree
    assert noisy["value"] > 0.4 and not noisy["passed"]
    no_scratch = {"teacher": {"test_loss": 1.0}, "logit": seeds_row([1.5])}
    assert not distill_bar(no_scratch, 0.5)["passed"]  # no scratch baseline: nothing measured


def test_the_speculative_bar_needs_identical_output_and_a_speedup_beyond_its_interval():
    row = lambda same, speed, lo, hi: {
        "draft": "logit", "k": 2, "identical_to_teacher": same, "speedup": speed, "speedup_interval": [lo, hi]
    }  # fmt: skip
    teacher = {"draft": "(teacher alone)", "k": 0, "speedup": 1.0}
    assert speculative.speculative_bar([teacher, row("8/8", 1.5, 1.3, 1.7)], 1.0, True)["passed"]
    assert not speculative.speculative_bar([teacher, row("8/8", 1.1, 0.9, 1.3)], 1.0, True)["passed"]
    assert not speculative.speculative_bar([teacher, row("8/8", 0.86, 0.8, 0.9)], 1.0, True)["passed"]
    assert not speculative.speculative_bar([teacher, row("7/8", 3.0, 2.8, 3.2)], 1.0, True)["passed"]
    assert not speculative.speculative_bar([teacher, row(None, 3.0, 2.8, 3.2)], 1.0, False)["passed"]


def test_the_pruning_bar_subtracts_the_dense_controls_recovery():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.1, 32)
    dense = (base, base - 0.05)  # the control gains 0.05 nats from the same steps
    damaged_and_recovered = (base + 1.0, base + 0.2)  # +1.0 from pruning, 0.8 recovered
    only_the_control_gain = (base + 1.0, base + 0.95)  # recovered exactly what dense gains anyway
    bar, bars = prune.prune_bars({"dense": dense, "a": damaged_and_recovered})
    assert bar["passed"] and bar["value"] == pytest.approx(0.75) and bar["n"] == 32
    bar, bars = prune.prune_bars({"dense": dense, "a": damaged_and_recovered, "b": only_the_control_gain})
    assert not bar["passed"] and "b" in bar["note"] and bars["a"]["passed"]
    harmless = (base + 0.0, base - 0.05)  # pruning changed nothing: nothing to recover, no verdict from it
    bar, _ = prune.prune_bars({"dense": dense, "c": harmless})
    assert bar["value"] is None and not bar["passed"]


def test_a_three_step_distillation_fails_its_bar(run_dir, tmp_path):
    # the crippled stage: 3 steps from random weights move no student far from its initialization (from
    # the teacher's layers the start alone may close the gap: that is why the table has the `hard` row)
    o = distill.distill(
        tiny_distill(
            run_dir,
            tmp_path / "d3",
            steps=3,
            methods=["scratch", "logit"],
            eval_limit=0,
            student_init="random",
        )
    )
    assert o["bar"]["passed"] is False and o["bar"]["n"] == 3
    assert o["bar"]["value"] is None or o["bar"]["value"] < 0.5
    assert o["split"] == "val"  # the fixture has no tokens/test.bin: val stands in, and says so


def test_speculative_and_prune_commands_run_on_the_distilled_students(run_dir, distilled, tmp_path):
    o = speculative.run_bench(
        SpeculativeConfig(
            run=str(run_dir),
            out=str(tmp_path / "spec"),
            ks=[2, 4],
            prompts=2,
            prompt_tokens=8,
            new_tokens=12,
            repeats=2,
            device="cpu",
        )
    )
    rows = [r for r in o["rows"] if r["k"]]
    for bad, msg in (
        ({"ks": [2, 0]}, "each draft length k must be >= 1"),
        ({"drafts": ["nope"]}, "no such student"),
        ({"new_tokens": 60}, r"exceeds the context \(64\)"),
    ):
        with pytest.raises(UserError, match=msg):
            speculative.run_bench(
                SpeculativeConfig(**{"run": str(run_dir), "out": str(tmp_path / "x"), **bad})
            )
    assert not (tmp_path / "x").exists()
    assert [(r["draft"], r["k"]) for r in rows] == [
        ("logit", 2),
        ("logit", 4),
        ("scratch", 2),
        ("scratch", 4),
    ]
    assert all(r["identical_to_teacher"] == "2/2" and 0 <= r["accept_rate"] <= 1 for r in rows)
    assert all(r["speedup_interval"][0] <= r["speedup"] <= r["speedup_interval"][1] for r in rows)
    # n is the prompts: the interval resamples them (each the mean of its 2 passes)
    assert o["timed_units"] == 2 * 2 and o["bar"]["n"] == 2 and o["bar"]["threshold"] == 1.0
    p = prune.prune(
        PruneConfig(
            run=str(run_dir),
            out=str(tmp_path / "prune"),
            fractions=[0.5],
            heads=1,
            neuron_fraction=0.5,
            score_batches=1,
            recovery_steps=1,
            batch_size=2,
            eval_windows=4,
            device="cpu",
        )
    )
    by = {r["variant"]: r for r in p["rows"]}
    assert by["magnitude_50"]["params"] == by["dense"]["params"] and by["magnitude_50"][
        "file_kib"
    ] == pytest.approx(by["dense"]["file_kib"], rel=0.01)  # a mask shrinks nothing
    assert by["magnitude_50"]["nonzero_after_recovery"] == by["magnitude_50"]["nonzero_params"]
    assert (
        by["heads_1"]["params"] < by["dense"]["params"]
        and by["neurons_50"]["file_kib"] < by["dense"]["file_kib"]
    )
    assert {b["metric"].split(":")[0] for b in p["bars"]} == {"magnitude_50", "heads_1", "neurons_50"}
    assert p["bar"]["passed"] in (True, False) and p["bar"]["n"] in (4, None)
    for folder, png in (("spec", "speculative.png"), ("prune", "prune.png")):
        assert (tmp_path / folder / png).is_file() and (tmp_path / folder / "manifest.json").is_file()


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


def tree_hashes(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_dir, distilled, tmp_path):
    other = tiny(vocab_size=77, block_size=64, n_layer=1)
    save_checkpoint(tmp_path / "other_vocab.pt", other.cfg.__dict__, other.state_dict())
    run = str(run_dir)
    d, s, p = (str(REPO / "07_distill_quant" / f) for f in ("distill.py", "speculative.py", "prune.py"))
    # one case per class of bad input (issue 13); each case is a fresh interpreter importing torch
    cases = {  # name: (argv, what the one line must say)
        "student larger": ([d, "--run", run, "--student-layers", "6"], r"larger than the teacher"),
        "other vocabulary": (
            [d, "--run", run, "--student-init", str(tmp_path / "other_vocab.pt")],
            r"vocabulary \(77 tokens\) is not the teacher's",
        ),
        "temperature 0": ([d, "--run", run, "--temperature", "0"], r"--temperature 0.0 must be > 0"),
        "no teacher file": (
            [d, "--run", run, "--teacher", str(tmp_path / "nope.pt")],
            r"no such checkpoint; 04_pretrain/pretrain.py makes",
        ),
        "fraction 1": (
            [p, "--run", run, "--fractions", "0.5,1.0"],
            r"pruning fraction 1.0 is outside \[0, 1\)",
        ),
        "too many heads": (
            [p, "--run", run, "--heads", "4"],
            r"a layer has 4 heads and at least one must stay",
        ),
        "no drafts": (
            [s, "--run", run, "--distill", str(tmp_path / "none")],
            r"missing; make it first with `python 07_distill_quant/distill.py",
        ),
    }
    before = tree_hashes(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, *argv, "--out", str(tmp_path / f"out_{i}"), "--device", "cpu"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, (name, (argv, _)) in enumerate(cases.items())
    }
    for i, (name, proc) in enumerate(procs.items()):
        _, err = proc.communicate(timeout=600)  # generous: a shared machine can be very slow
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)
        assert re.search(cases[name][1], lines[0]), (name, lines[0])
        assert not (tmp_path / f"out_{i}").exists(), name
    assert tree_hashes(run_dir) == before


def test_bench_contention_checks_its_flags_and_times_a_workload(tmp_path):
    import bench_contention
    from bench_contention import ContentionConfig, run_workload

    with pytest.raises(UserError, match="--workloads nope unknown"):
        bench_contention.main(["--workloads", "nope"])
    with pytest.raises(UserError, match="--policies fast unknown"):
        bench_contention.main(["--policies", "fast"])
    with pytest.raises(UserError, match="no pretrain/ckpt.pt there"):
        bench_contention.main(["--run", str(tmp_path)])
    with pytest.raises(UserError, match="--worker 'nope' unknown"):
        run_workload("nope", ContentionConfig())
    assert run_workload("beam_search", ContentionConfig(new_tokens=4)) > 0


def test_distill_and_prune_stop_a_diverging_run_and_keep_the_previous_result(run_dir, distilled, tmp_path):
    before = tree_hashes(distilled)
    diverged = r"training diverged at step \d+: .*; lower --lr \(now 1e\+09\)"
    with pytest.raises(UserError, match=diverged):
        distill.distill(tiny_distill(run_dir, distilled, lr=1e9, overwrite=True))
    assert tree_hashes(distilled) == before
    cfg = PruneConfig(
        run=str(run_dir),
        out=str(tmp_path / "prune"),
        fractions=[0.5],
        heads=0,
        neuron_fraction=0,
        score_batches=1,
        recovery_steps=4,
        lr=1e9,
        batch_size=2,
        eval_windows=4,
        device="cpu",
    )
    with pytest.raises(UserError, match=diverged):
        prune.prune(cfg)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Hand-computed edges of the exercised functions (issue 26: each wrong answer in
# tests/exercise_mutants.py must fail one of these)


def test_feature_loss_by_hand_with_a_scale_per_position():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, T=2, d=2)
    pred = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])  # each position a multiple of its target
    ident = torch.nn.Identity()
    assert feature_loss(pred, target, ident, "cosine").item() == pytest.approx(0.0, abs=1e-6)  # cos = 1 each
    # mse: mean((pred - target)²) = (1 + 0 + 0 + 4) / 4 = 1.25 over mean(target²) = 2 / 4 = 0.5 -> 2.5
    assert feature_loss(pred, target, ident, "mse").item() == pytest.approx(2.5)


def test_magnitude_masks_by_hand():
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 1, bias=False), torch.nn.Linear(2, 1, bias=False)])
    with torch.no_grad():
        model.blocks[0].weight.copy_(torch.tensor([[-5.0, 0.1, 2.0]]))
        model.blocks[1].weight.copy_(torch.tensor([[-0.2, 3.0]]))
    kept = lambda f, scope: [m.flatten().tolist() for m in magnitude_masks(model, f, scope).values()]
    # global, 5 weights: floor(0.7·5) = 3 smallest |w| go: 0.1, -0.2, 2.0 (rounding 3.5 would drop 4)
    assert kept(0.7, "global") == [[True, False, False], [False, True]]
    # per matrix: floor(0.5·3) = 1 (0.1) and floor(0.5·2) = 1 (-0.2)
    assert kept(0.5, "layer") == [[True, False, True], [False, True]]


def test_taylor_scores_average_over_batches():
    model = sharpened(tiny(seed=9), 3.0)
    gen = torch.Generator().manual_seed(0)
    b1, b2 = (torch.randint(0, 64, (2, 16), generator=gen) for _ in range(2))
    batches = [(b1, b1.roll(-1, 1)), (b2, b2.roll(-1, 1))]
    one = [taylor_scores(model, [b], (2, 4), "heads") for b in batches]
    torch.testing.assert_close(taylor_scores(model, batches, (2, 4), "heads"), (one[0] + one[1]) / 2)


# ----------------------------------------------------------------------------------------------
# --resume: kill -9 at a saved step, continue, and get the uninterrupted run's weights bit for bit

RESUME_ARGV = {  # name: (main, flags after --run, weight files, saves before the kill, where it continues)
    "distill": (
        distill.main,
        ["--methods", "scratch,logit,sequence", "--seeds", "2", "--steps", "4", "--warmup-steps", "1",
         "--batch-size", "4", "--seq-pool", "4", "--eval-windows", "4", "--test-windows", "4",
         "--eval-limit", "2", "--max-new-tokens", "4", "--speed-tokens", "4", "--speed-repeats", "1",
         "--save-interval", "2"],
        ["student_scratch.pt", "student_logit.pt", "student_sequence.pt"],
        4,  # scratch, logit and sequence of the first seed saved once each: killed in the second seed
        "scratch seed 1338 at step 2",
    ),
    "prune": (
        prune.main,
        ["--fractions", "0.5", "--heads", "1", "--neuron-fraction", "0.5", "--score-batches", "1",
         "--recovery-steps", "3", "--batch-size", "2", "--eval-windows", "4", "--save-interval", "1"],
        ["dense.pt", "magnitude_50.pt", "heads_1.pt", "neurons_50.pt"],
        5,  # dense and magnitude_50 saved twice each: killed in heads_1's recovery
        "heads_1 at step 1",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RESUME_ARGV))
def test_distill_and_prune_killed_with_sigkill_resume_bit_exactly(run_dir, tmp_path, name, capsys):
    """A real process (forked), kill -9 right after a saved state in the middle of a later student / variant;
    --resume takes the finished ones from the state, continues the interrupted one, and every weight file,
    the outcome (timings aside) and the log equal those of a run never interrupted."""
    main, flags, weights, saves, where = RESUME_ARGV[name]
    torch.set_num_threads(1)  # the forked child computes with the same threads
    argv = ["--run", str(run_dir), "--device", "cpu", *flags]
    check_resume_is_bit_exact(main, argv, weights, saves, where, tmp_path, capsys)
