"""GRPO's task, its math and its bar: the held-out split is honest, the advantage and the clipped loss
equal hand-computed values, and the bar fails when GRPO did not do what the goal asks."""

import math
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "06_rlhf_dpo")]
import fact_task  # noqa: E402
import hop_task  # noqa: E402
from grpo_eval import sharpening_bar  # noqa: E402
from rl_common import clipped_policy_loss, group_normalized_advantages, k3_kl  # noqa: E402


@pytest.fixture(scope="module")
def split():
    return fact_task.fact_problems(world_seed=0)


def test_no_heldout_question_shares_wording_or_person_with_a_training_one(split):
    train, heldout, _ = split
    people = {p["subject"] for p in train + heldout}
    n_held = len({p["subject"] for p in heldout})
    assert n_held == -(-len(people) // fact_task.HELDOUT_EVERY)  # every third person
    assert len(heldout) == 6 * n_held and len(train) == 9 * (
        len(people) - n_held
    )  # 3 attributes × 2 or 3 wordings
    assert fact_task.overlap(train, heldout) == {"templates": [], "subjects": [], "both": [], "prompts": []}
    # the check itself can fail: a held-out question moved into training is found
    assert fact_task.overlap(train + heldout[:1], heldout)["both"] == [heldout[0]["prompt"]]


def test_no_heldout_wording_appears_in_01s_generators():
    """01's corpus and task files are rendered from 01_data's strings; a held-out wording found there
    could be a question the model read verbatim in pretraining or SFT."""
    source = "\n".join(f.read_text() for f in sorted((REPO / "01_data").glob("*.py")))
    for templates in fact_task.HELDOUT_TEMPLATES.values():
        for t in templates:
            for piece in re.split(r"\{name\}", t):
                piece = piece.strip(" ?.'s")
                if len(piece) > 8:
                    assert piece not in source, piece


def test_the_reward_is_the_truth_and_a_list_of_candidates_earns_nothing(split):
    _, _, candidates = split
    city = candidates["city"][0]
    other = candidates["city"][1]
    assert fact_task.fact_reward(f"Ansel Roha lives in {city}.", city, candidates["city"])["reward"] == 1.0
    assert fact_task.fact_reward(f"{city.lower()}", city, candidates["city"])["correct"]
    assert fact_task.fact_reward(f"{city} or {other}.", city, candidates["city"])["reward"] == 0.0
    assert fact_task.fact_reward(f"{other}.", city, candidates["city"])["reward"] == 0.0
    assert fact_task.fact_reward(f"{city}ia.", city, candidates["city"])["reward"] == 0.0  # whole words
    # the subject's own name does not count as naming a candidate (a person may be called Ansel Zoelfa)
    said = f"Ansel {other} lives in {city}."
    assert fact_task.fact_reward(said, city, candidates["city"], subject=f"Ansel {other}")["correct"]
    assert not fact_task.fact_reward(said, city, candidates["city"])["correct"]


def test_group_normalized_advantages_equal_the_hand_computed_values():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, std (Bessel) sqrt(1/3) -> A = ±0.5 / 0.57735 = ±0.86603
    # group 2: all 1 -> std 0 -> A = 0 (nothing to learn, and no nan)
    a, raw, stats = group_normalized_advantages(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]), group_size=4)
    s = math.sqrt(3) / 2
    assert torch.allclose(a, torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-5)
    assert stats["frac_zero_std_groups"] == 0.5
    a, _, _ = group_normalized_advantages(torch.tensor([1.0, 0, 0, 1]), 4, normalize_by_std=False)
    assert a.tolist() == [0.5, -0.5, -0.5, 0.5]  # Dr. GRPO: r − mean only


def test_clipped_loss_equals_the_hand_computed_values():
    # ε = 0.2.  A = 2,  ρ = 1.5: min(3.0, 1.2·2 = 2.4) = 2.4 -> loss −2.4, clipped (no gradient)
    #           A = −1, ρ = 0.5: min(−0.5, 0.8·(−1) = −0.8) = −0.8 -> loss 0.8, clipped
    #           A = 1,  ρ = 1.1: inside [0.8, 1.2] -> loss −1.1, not clipped
    adv = torch.tensor([[2.0], [-1.0], [1.0]])
    old = torch.zeros(3, 1)
    lp = torch.log(torch.tensor([[1.5], [0.5], [1.1]]))
    loss, meta = clipped_policy_loss(adv, lp, old, clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([[-2.4], [0.8], [-1.1]]), atol=1e-6)
    assert meta["clipped"].squeeze(1).tolist() == [True, True, False]
    loss, _ = clipped_policy_loss(adv, lp, old, clip_eps=math.inf)  # "no clip" in the ablation: ρ·A
    assert torch.allclose(loss, torch.tensor([[-3.0], [0.5], [-1.1]]), atol=1e-6)


def test_k3_kl_equals_the_hand_computed_value():
    # k3 with π_ref / π = 0.5: e^r − r − 1 = 0.5 + ln 2 − 1 = 0.19315
    assert abs(k3_kl(torch.tensor(0.0), torch.log(torch.tensor(0.5))).item() - 0.19315) < 1e-4


def test_the_bar_passes_only_for_a_large_gain_with_intervals_apart():
    before = [0.25] * 60 + [0.5] * 60  # mean 0.375 -> goal max(0.75, 0.525) = 0.75
    assert not sharpening_bar(before, before)["passed"]  # did not move
    assert not sharpening_bar(before, [x + 0.1 for x in before])["passed"]  # moved, but < 2x
    majority = sharpening_bar(before, [1.0] * 30 + [0.0] * 90)  # the majority answer's 0/1 scores
    assert not majority["passed"]
    bar = sharpening_bar(before, [0.75] * 60 + [0.875] * 60)
    assert bar["passed"] and bar["threshold"] == 0.75 and "apart" in bar["note"]
    # the goal met on average but with intervals that overlap still fails
    noisy = [0.0] * 4 + [1.0] * 4
    assert not sharpening_bar([0.0] * 7 + [1.0], noisy)["passed"]
    # a gain above 2x that the majority answer beats fails too
    assert not sharpening_bar([0.05] * 100, [0.3] * 100, majority=0.4)["passed"]


# ----------------------------------------------------------------------------- the two-hop task (hop_task.py)


@pytest.mark.parametrize("given_friend", [False, True])
def test_no_heldout_hop_question_shares_wording_or_person_with_a_training_one(given_friend):
    train, heldout, _ = hop_task.hop_problems(world_seed=0, given_friend=given_friend)
    assert fact_task.overlap(train, heldout) == {"templates": [], "subjects": [], "both": [], "prompts": []}
    assert not {p["prompt"].split(". ")[-1].replace(p["subject"], "{name}") for p in heldout} & {
        t for ts in hop_task.TRAIN_TEMPLATES.values() for t in ts
    }
    assert {p["attribute"] for p in heldout} == {"city", "job", "pet"}
    assert fact_task.overlap(train + heldout[:1], heldout)["both"] == [heldout[0]["prompt"]]
    source = "\n".join(f.read_text() for f in sorted((REPO / "01_data").glob("*.py")))
    for templates in hop_task.HELDOUT_TEMPLATES.values():
        for piece in re.split(r"\{name\}", templates[0]):
            piece = piece.strip(" ?.'s")
            assert len(piece) <= 8 or piece not in source, piece


def test_the_hop_reward_wants_the_friends_attribute_not_the_asked_persons():
    sys.path.insert(0, str(REPO / "01_data"))
    from world import WorldConfig, build_world

    people = {p["name"]: p for p in build_world(WorldConfig(seed=0)).people}
    train, heldout, candidates = hop_task.hop_problems(world_seed=0)
    for q in heldout + train:
        own = people[q["subject"]]["city"]["name"]
        if q["attribute"] == "city" and own != q["answer"]:
            break
    assert q["answer"] == people[q["friend"]]["city"]["name"]  # the friend's city is the answer
    assert fact_task.fact_correct(q, f"{q['friend']} lives in {q['answer']}.", candidates)
    assert not fact_task.fact_correct(q, f"{q['subject']} lives in {own}.", candidates)  # one hop only
    assert not fact_task.fact_correct(q, f"{own} or {q['answer']}.", candidates)  # a list earns nothing
    given = hop_task.hop_problems(world_seed=0, given_friend=True)[1][0]
    assert given["prompt"].startswith(f"{given['subject']} and {given['friend']} are best friends. ")


def test_grpo_loads_the_hop_task_and_rewards_the_friends_answer(tmp_path):
    import grpo  # noqa: E402  (the stage's config and task loader, no training)
    from common.cli import UserError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text('{"config": {"seed": 0}}')
    task = grpo.load_task(grpo.GRPOConfig(run=str(tmp_path), task="hop-given"), tmp_path, tok=None)
    p = next(q for q in task["heldout"] if q["attribute"] == "city")
    assert p["prompt"].startswith(f"{p['subject']} and {p['friend']} are best friends.")
    assert task["reward"](p, f"{p['friend']} lives in {p['answer']}.") == 1.0
    assert "hop_task.py" in task["note"]
    with pytest.raises(UserError):  # arithmetic files make no sense for the hop task
        grpo.check_grpo_config(grpo.GRPOConfig(run="r", task="hop", train_file="a.jsonl"))
