"""06_rlhf_dpo, DPO for factuality: the on-policy pair builder, each preference loss by hand, the bar.

No model is trained here: the pair builder is fed judged samples typed in below, the losses given
log-probs, the bar given per-question scores, so each test says exactly which rule broke.
"""

import math

import pytest
import torch

import factual_pairs
import factuality
from factual_pairs import build_pairs, first_sentence, judge, length_balanced
import preference_training
from preference_training import (
    PreferenceSettings,
    batch_loss,
    chosen_nll,
    dpo_loss,
    ipo_loss,
    preference_loss,
    simpo_loss,
)


def record(name, city):
    return {
        "messages": [
            {"role": "user", "content": f"Where does {name} live?"},
            {"role": "assistant", "content": f"{name} lives in {city}."},
        ],
        "subject": name,
        "answer": city,
    }


def said(text, stopped=True):
    return {"text": text, "stopped": stopped}


# ----------------------------------------------------------------------------------------------
# the pair builder


def test_pairs_prefer_the_correct_answer_and_never_pair_two_correct_ones():
    recs = [record("Kado", "Belma"), record("Rimi", "Tosk"), record("Sulek", "Varn"), record("Vanpo", "Lim")]
    samples = [
        # Kado: two different correct answers, two wrong ones, one repeated; a run-on correct one
        [
            said("Kado lives in Belma."),
            said("Belma, I think."),
            said("Kado lives in Tosk."),
            said("Kado lives in Tosk."),
            said("Kado lives in Varn."),
            said("Kado lives in Belma.anoKado is 4", stopped=False),  # cut to "Kado lives in Belma."
        ],
        [said("Rimi lives in Tosk."), said("Rimi lives in Tosk.")],  # all correct: no pair
        [said("Sulek lives in Belma."), said("Sulek lives in Tosk.")],  # all wrong: no pair (on-policy)
        [said("Vanpo lives in", stopped=False), said("Vanpo lives in Lim.")],  # no sentence end: dropped
    ]
    pairs, stats = build_pairs(recs, samples, max_pairs=10, seed=0)
    assert pairs and all(p["subject"] == "Kado" for p in pairs)
    for p in pairs:  # every pair: the chosen states the truth, the rejected does not
        assert (
            judge(p["chosen"], recs[0])["correct"] == 1.0 and judge(p["rejected"], recs[0])["correct"] == 0.0
        )
        assert p["rule"] == "factual_on_policy" and p["prompt"] == recs[0]["messages"][:1]
    # distinct texts only: 2 correct × 2 wrong = 4 pairs (the repeated wrong answer and the cut run-on
    # answer, equal to the first, count once)
    assert len(pairs) == 4 and len({(p["chosen"], p["rejected"]) for p in pairs}) == 4
    assert stats["with_pair"] == 1 and stats["all_correct"] == 2 and stats["all_wrong"] == 1  # Vanpo: 1 left
    assert stats["not_stopped"] == 2 and stats["dropped"] == 1 and stats["gold_chosen"] == 0
    # 11 usable samples (Kado 6, Rimi 2, Sulek 2, Vanpo 1), 6 correct (Kado 3, Rimi 2, Vanpo 1)
    assert stats["sample_accuracy"] == pytest.approx(6 / 11)
    assert len(build_pairs(recs, samples, max_pairs=3, seed=0)[0]) == 3  # capped per question

    # --gold-chosen: an all-wrong question pairs the task file's answer turn with each wrong sample
    gold, gstats = build_pairs(recs, samples, max_pairs=10, seed=0, gold_chosen=True)
    sulek = [p for p in gold if p["subject"] == "Sulek"]
    assert {p["chosen"] for p in sulek} == {"Sulek lives in Varn."} and len(sulek) == 2
    assert all(p["rule"] == "factual_gold_chosen" for p in sulek) and gstats["gold_chosen"] == 1
    assert not [p for p in gold if p["subject"] == "Rimi"]  # still never two correct answers


def test_pairs_keep_the_sampled_leading_space_so_their_tokens_are_the_models_own():
    # SFT answers " Kado lives in ..." (01's answer_content): " Kado" and "Kado" are different tokens, and
    # a stripped answer is a sequence the model never samples (issue 23: DPO then trained off-policy)
    recs = [record("Kado", "Belma")]
    samples = [
        [
            said(" Kado lives in Belma."),
            said(" Kado lives in Tosk.  "),
            said(" Kado lives in Belma.ano", False),
        ]
    ]
    pairs, _ = build_pairs(recs, samples, max_pairs=10, seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (" Kado lives in Belma.", " Kado lives in Tosk.")
    ]
    assert (
        factual_pairs.response_text(said("   ")) == ""
        and factual_pairs.response_text(said(" x", False)) == ""
    )


def test_first_sentence_and_the_judge():
    assert first_sentence("Kado lives in Belma.anoKado is 4") == "Kado lives in Belma."
    assert first_sentence("卡多住在贝尔马。他") == "卡多住在贝尔马。"
    assert first_sentence("Kado lives in") == "" and first_sentence("Kado.<|user|>x") == "Kado."
    r = record("Kado", "Belma")
    assert judge("Kado lives in Belma.", r) == {"correct": 1.0, "exact": 1.0}
    assert judge("It is Belma", r) == {"correct": 1.0, "exact": 0.0}  # the fact, another phrasing
    assert judge("Kado lives in Belmaro.", r)["correct"] == 0.0  # whole tokens, not a prefix


def test_length_balanced_pairs_leave_the_length_rule_at_one_half():
    pairs = [{"chosen": "a" * c, "rejected": "a" * r} for c, r in [(5, 2), (5, 9), (1, 9), (3, 8), (4, 4)]]
    kept = length_balanced(pairs, seed=1)
    longer = sum(len(p["chosen"]) > len(p["rejected"]) for p in kept)
    assert len(kept) == 2 and longer == 1  # 1 chosen-longer, 3 chosen-shorter -> 1 + 1; the tie dropped


# ----------------------------------------------------------------------------------------------
# each loss on a hand-computed example


PC, PR, RC, RR = torch.tensor([-4.0]), torch.tensor([-10.0]), torch.tensor([-6.0]), torch.tensor([-7.0])


def test_dpo_loss_equals_its_hand_computed_value():
    # DPO, β = 0.5: h_w = −4 + 6 = 2, h_l = −10 + 7 = −3; rewards 0.5·2 = 1, 0.5·(−3) = −1.5;
    # L = −log σ(1 + 1.5) = log(1 + e^−2.5) = 0.078889
    loss, rw, rl = dpo_loss(0.5, PC, PR, RC, RR)
    assert torch.allclose(loss, torch.tensor([0.078889]), atol=1e-5)
    assert torch.allclose(rw, torch.tensor([1.0])) and torch.allclose(rl, torch.tensor([-1.5]))
    # the dispatcher gives the same numbers; the rewards carry no gradient
    assert torch.equal(preference_loss("dpo", 0.5, PC, PR, RC, RR)[0], loss)
    x = torch.tensor([-4.0], requires_grad=True)
    assert not dpo_loss(0.5, x, PR, RC, RR)[1].requires_grad
    with pytest.raises(ValueError, match="kto"):
        preference_loss("kto", 0.1, PC, PR, RC, RR)


def test_ipo_loss_equals_its_hand_computed_value():
    # IPO, β = 0.25: target 1/(2·0.25) = 2; h_w − h_l = 5; L = (5 − 2)² = 9; rewards 0.5, −0.75
    loss, rw, rl = ipo_loss(0.25, PC, PR, RC, RR)
    assert torch.allclose(loss, torch.tensor([9.0])) and torch.allclose(rl, torch.tensor([-0.75]))
    # IPO at π = π_ref: (0 − 1/(2β))² = 1/(4β²) = 4 at β = 0.25
    assert torch.allclose(ipo_loss(0.25, PC, PR, PC, PR)[0], torch.tensor([4.0]))


def test_simpo_loss_equals_its_hand_computed_value():
    # SimPO, β = 2, γ = 0.5 on per-token means −0.5 and −1.5: rewards −1, −3;
    # L = −log σ(−1 + 3 − 0.5) = log(1 + e^−1.5) = 0.201413
    loss, rw, rl = simpo_loss(2.0, torch.tensor([-0.5]), torch.tensor([-1.5]), 0.5)
    assert torch.allclose(loss, torch.tensor([0.201413]), atol=1e-5)
    assert torch.allclose(rw, torch.tensor([-1.0])) and torch.allclose(rl, torch.tensor([-3.0]))


def test_the_nll_term_adds_alpha_times_the_chosen_per_token_nll_to_each_loss():
    # batch_loss with nll_coef α = plain loss + α · mean over pairs of −log π(y_w)/|y_w| (RPO)
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7)  # 2 pairs: rows 0-1 chosen, 2-3 rejected; 5 positions, 7 tokens

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits, None

    def fake_batch(encoded, pad_id, device):
        y = torch.tensor([[-100, 1, 2, 3, -100], [-100, -100, 4, 5, 6]] * 2)
        return None, y, None, None

    mean_chosen = torch.stack(
        [
            logits[0, 1:4].log_softmax(-1)[torch.arange(3), torch.tensor([1, 2, 3])].mean(),
            logits[1, 2:5].log_softmax(-1)[torch.arange(3), torch.tensor([4, 5, 6])].mean(),
        ]
    )
    ref = {"chosen_sum": torch.tensor([-3.0, -4.0]), "rejected_sum": torch.tensor([-5.0, -2.0])}
    for loss in ("dpo", "ipo", "simpo"):
        plain = PreferenceSettings(loss=loss, beta=0.5)
        with_nll = PreferenceSettings(loss=loss, beta=0.5, nll_coef=0.3)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(preference_training, "pair_batch", fake_batch)
            a = batch_loss(Fixed(), [None, None], ref, plain, 0, "cpu")[0]
            b = batch_loss(Fixed(), [None, None], ref, with_nll, 0, "cpu")[0]
        assert torch.allclose(b, a + 0.3 * (-mean_chosen).mean()), loss
    assert torch.equal(chosen_nll(torch.tensor([-0.5, -2.0])), torch.tensor([0.5, 2.0]))


# ----------------------------------------------------------------------------------------------
# the bar


def test_relative_reduction_by_hand():
    sft = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # error 0.4
    dpo = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # error 0.2: half the errors gone
    assert factuality.relative_reduction(sft, dpo) == pytest.approx(0.5)
    assert (
        factuality.relative_reduction(sft, sft) == 0.0
        and factuality.relative_reduction([1, 1], [0, 1]) == 0.0
    )


def test_the_bar_can_fail():
    n = 200
    sft = [1.0] * 80 + [0.0] * 120  # error 0.60
    majority = [1.0] * 20 + [0.0] * 180
    half = sft[:80] + [1.0] * 60 + [0.0] * 60  # error 0.30: 50 % fewer errors, on 60 questions
    lucky = sft[:80] + [1.0] * 3 + [0.0] * 117  # 3 errors fixed: 2.5 %, interval reaches 0
    modest = sft[:80] + [1.0] * 24 + [0.0] * 96  # 20 % fewer errors, reliably: misses the size
    worse = [0.0] * 10 + sft[10:]
    contenders = lambda: {"SFT": sft, "majority answer": majority}
    bar = factuality.reduction_bar("answer accuracy", "DPO", half, contenders())
    assert bar["passed"] and bar["value"] == pytest.approx(0.5) and bar["interval"][0] > 0.3
    assert bar["baseline_name"] == "SFT" and bar["baseline"] == pytest.approx(0.6) and bar["n"] == n
    assert not factuality.reduction_bar("answer accuracy", "SFT again", sft, contenders())["passed"]
    assert not factuality.reduction_bar("answer accuracy", "DPO", lucky, contenders())["passed"]
    m = factuality.reduction_bar("answer accuracy", "DPO", modest, contenders())
    assert not m["passed"] and m["interval"][0] > 0 and "size missed, interval above 0" in m["note"]
    assert not factuality.reduction_bar("answer accuracy", "DPO", worse, contenders())["passed"]
    # the baseline is the stronger contender: against a majority answer better than SFT, `half` fails
    strong = factuality.reduction_bar("answer accuracy", "DPO", half, {"SFT": sft, "majority answer": half})
    assert strong["baseline_name"] == "majority answer" and not strong["passed"] and strong["value"] == 0.0


def test_qa_records_refuse_a_file_without_short_answers(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    from common.cli import UserError

    with pytest.raises(UserError, match='short "answer"'):
        factual_pairs.qa_records(path)
    assert math.isfinite(factuality.error_summary([1.0, 0.0])["error_rate"])
