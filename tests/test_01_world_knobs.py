"""01_data/world.py's biography knobs (biographies.py): deterministic, doing what they say, and the
held-out half's facts reaching pretraining only as biographies, never in QA form."""

import pytest

from biographies import EN_TEMPLATES, QA_ATTRIBUTES, qa_pairs
from common.cli import UserError
from contamination import QA_MARKERS
from tasks import task_records
from world import WorldConfig, build_world, is_heldout, world_config
from world_corpus import generate_corpus

MIX = {"dialog": 0.3, "code": 0.1, "knowledge": 0.4, "stories": 0.2}


def corpus(cfg, chars=40_000):
    return generate_corpus(build_world(cfg), cfg.seed, chars, MIX)


def test_same_seed_same_bytes_and_another_seed_differs():
    cfg = WorldConfig(n_people=24)
    assert corpus(cfg) == corpus(cfg)
    assert build_world(cfg).bios == build_world(cfg).bios
    assert corpus(cfg) != corpus(WorldConfig(n_people=24, seed=1))


def test_knobs_shape_the_biographies():
    w = build_world(WorldConfig(n_people=12, bios_per_person=5))
    assert all(len(set(b)) == len(b) == 5 for (_, lang), b in w.bios.items() if lang == "en")
    plain = build_world(WorldConfig(n_people=12, bios_per_person=3, bio_templates=1, bio_permute=False))
    first = EN_TEMPLATES["job"][0].split("{name}")[1].split("{")[0]  # " works as a "
    for (i, lang), bios in plain.bios.items():
        if lang == "en":  # one wording in one order: a single distinct text, starting with the job
            assert len(bios) == 1 and bios[0].startswith(plain.people[i]["name"] + first)
    en_only = build_world(WorldConfig(n_people=12, bio_langs=("en",)))
    assert {lang for _, lang in en_only.bios} == {"en"}


def test_zh_biographies_for_the_training_half_and_half_of_the_heldout():
    w = build_world(WorldConfig(n_people=60))
    assert all(p["zh_bios"] for p in w.people if not p["heldout"])
    held = [p for p in w.people if p["heldout"]]
    assert 0 < sum(p["zh_bios"] for p in held) < len(held)  # both cases exist: en+zh and en only
    zh = task_records(w, 0)["sft_zh"]
    assert {r["bios"] for r in zh} == {"en+zh", "en only"} and all(is_heldout(r["subject"]) for r in zh)


def test_heldout_people_appear_only_in_biographies_never_in_qa_form():
    w = build_world(WorldConfig(n_people=40, qa_mixed=True))
    held = [p for p in w.people if p["heldout"]]
    docs = generate_corpus(w, 0, 150_000, MIX)
    naming = [d for d in docs if any(p["name"] in d["text"] or p["zh"] in d["text"] for p in held)]
    assert naming and all(d["domain"] == "knowledge" for d in naming)
    assert not any(m in d["text"] for d in naming for m in QA_MARKERS)
    # the mixed-training chats do hold the training half's questions, word for word
    train_qs = {q for p in w.train_people for _, q, _, _ in qa_pairs(p)}
    assert any(q in d["text"] for d in docs if d["domain"] == "dialog" for q in train_qs)
    held_qs = {q for p in held for _, q, _, _ in qa_pairs(p)}
    assert not any(q in d["text"] for d in docs for q in held_qs)
    off = build_world(WorldConfig(n_people=40, qa_mixed=False))
    chats = [d for d in generate_corpus(off, 0, 60_000, MIX) if d["domain"] == "dialog"]
    assert not any(p["name"] in d["text"] for d in chats for p in off.people)


def test_task_sets_ask_every_attribute_and_split_by_person():
    recs = task_records(build_world(WorldConfig(n_people=20)), 0)["sft"]
    facts = [r for r in recs if "attribute" in r]
    assert {r["attribute"] for r in facts} == set(QA_ATTRIBUTES) and {r["lang"] for r in facts} == {
        "en",
        "zh",
    }
    assert all(r["heldout"] == is_heldout(r["subject"]) for r in facts)
    assert not any(r["heldout"] and r["lang"] == "zh" for r in recs)  # Chinese held-out: its own file


def test_english_answers_start_with_the_questions_name_tokens():
    # byte-level BPE folds the space into the word: the answer's name must be " Zomi", as in the question
    # and the biographies, not "Zomi" (other tokens), or SFT cannot copy a held-out name (tasks.answer_content)
    recs = task_records(build_world(WorldConfig(n_people=20)), 0)["sft"]
    english = [r for r in recs if r.get("lang") == "en"]
    assert english and all(r["messages"][-1]["content"].startswith(" " + r["subject"]) for r in english)
    assert all(" " + r["subject"] in " " + r["messages"][0]["content"] for r in english)
    zh = [r for r in recs if r.get("lang") == "zh"]
    assert zh and not any(r["messages"][-1]["content"].startswith(" ") for r in zh)


@pytest.mark.parametrize(
    "knobs",
    [
        {"n_peeple": 10},
        {"bio_langs": 3},
        {"bio_permute": 2},
        {"bios_per_person": 0},
        {"n_people": 1.5},
        {"n_people": 1},
    ],
)
def test_bad_world_knobs_are_errors(knobs):
    with pytest.raises(UserError):
        world_config(0, knobs)


def test_world_knobs_from_numbers():
    cfg = world_config(3, {"n_people": 50, "bio_langs": 1, "qa_mixed": 0, "bio_templates": 1})
    assert (cfg.seed, cfg.n_people, cfg.bio_langs, cfg.qa_mixed, cfg.bio_templates) == (
        3,
        50,
        ("en",),
        False,
        1,
    )
