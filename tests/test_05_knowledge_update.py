"""Tests for 05_sft_lora/knowledge_update.py and world_update.py: the world's change, its update data and
probes, the comparison's numbers and bar, and a micro run end to end (continued pretraining in process;
the sft.py updates run as their own processes and are covered by the smoke run)."""

import json
import re

import numpy as np
import pytest

import knowledge_update as K
import world_update as W
from common.cli import UserError
from world import build_world, world_config
from world_corpus import generate_corpus

MIX = {"dialog": 0.25, "code": 0.1, "knowledge": 0.5, "stories": 0.15}


@pytest.fixture(scope="module")
def small():
    wcfg = world_config(3, {"n_people": 24, "bios_per_person": 3})
    world = build_world(wcfg)
    knows = [i % 3 == 0 for i in range(len(world.people))]  # the base "knows" every third person's city
    moves = W.choose_moves(world, knows, 10, seed=0)
    return wcfg, world, knows, moves, W.moved_world(world, moves)


def test_movers_are_chosen_among_known_people_first_and_really_move(small):
    _, world, knows, moves, after = small
    known = sum(knows)  # 8 of 24
    assert [knows[i] for i, _, _ in moves] == [True] * known + [False] * (10 - known)
    assert len({i for i, _, _ in moves}) == 10
    for i, old, new in moves:
        assert old is world.people[i]["city"] and new is not old and new in world.cities
        assert after.people[i]["city"] is new and world.people[i]["city"] is old  # the old world is intact
    moved = {i for i, _, _ in moves}
    assert all(after.people[j] is world.people[j] for j in range(len(world.people)) if j not in moved)


def sentences_about(texts, name) -> list:
    """Every sentence of the texts that names the person (English '.' or Chinese '。' ends one)."""
    return [s for t in texts for s in re.split(r"(?<=[.。])\s*", t) if name in s]


def test_new_biographies_and_qa_state_the_new_city_never_the_old(small):
    wcfg, world, _, moves, after = small
    texts = W.update_texts(wcfg, after, moves)
    with_zh = sum(after.people[i]["zh_bios"] for i, _, _ in moves)
    assert len(texts) == 3 * (
        10 + with_zh
    )  # 3 biographies per mover in English, and Chinese where it has them
    # (plain values only in the asserts: pytest would print the world's people, which refer to each other)
    for i, old, new in moves:
        said = sentences_about(texts, after.people[i]["name"]) + sentences_about(texts, after.people[i]["zh"])
        says_new = sum(new["name"] in s or new["zh"] in s for s in said)
        says_old = sum(old["name"] in s or old["zh"] in s for s in said)
        assert (says_new, says_old) == (3 * (1 + after.people[i]["zh_bios"]), 0)
    convs = W.update_conversations(wcfg, after, moves)
    assert len(convs) == 10 * len(wcfg.bio_langs) and {c["attribute"] for c in convs} == {"city"}
    new_city = {after.people[i]["name"]: (n["name"], n["zh"]) for i, _, n in moves}
    assert all(c["answer"] in new_city[c["subject"]] for c in convs)


def test_four_probes_per_mover_and_the_unseen_question_is_in_no_document(small):
    _, world, _, moves, after = small
    probes = W.city_probes(world, after, moves)
    assert set(probes) == set(W.PROBES) and all(len(v) == 10 for v in probes.values())
    assert probes["cloze_corpus"][0]["prompt"].endswith("lives in")
    assert probes["cloze_novel"][0]["prompt"] != probes["cloze_corpus"][0]["prompt"]
    assert all(r["new"] != r["old"] for v in probes.values() for r in v)
    corpus = " ".join(d["text"] for d in generate_corpus(build_world(world_config(3, {})), 3, 200_000, MIX))
    assert W.UNSEEN_QUESTION.split("{")[0] not in corpus
    others, unchanged = W.other_fact_probes(world, moves)
    movers = {world.people[i]["name"] for i, _, _ in moves}
    assert not {r["subject"] for r in others} & movers
    assert {r["subject"] for r in unchanged} == movers and "city" not in {r["attribute"] for r in unchanged}


def test_says_finds_the_city_as_a_word_after_removing_the_persons_name():
    assert W.says("Ansel Zoelfa lives in Toma.", "Toma", "Ansel Zoelfa")
    assert not W.says("Ansel Zoelfa lives in Toma.", "Zoelfa", "Ansel Zoelfa")  # the surname is no answer
    assert not W.says("She lives in Tomaro.", "Toma", "Ansel Zoelfa")


def fake_measure(new_unseen, old_corpus, others=(1.0, 0.5), loss=(2.0, 2.0)):
    """A measure() result: every probe kind gets `new_unseen` as its new-city list, old_corpus as old."""
    m = {k: {"new": list(new_unseen), "old": list(old_corpus), "examples": []} for k in W.PROBES}
    return m | {"others": list(others), "unchanged": [1.0], "test_loss": list(loss)}


def test_summary_and_bar_compare_each_method_with_the_base_item_by_item():
    n = 30
    base = fake_measure([0.0] * n, [1.0] * n)
    good = fake_measure([1.0] * 25 + [0.0] * 5, [0.0] * 27 + [1.0] * 3, others=(0.5, 0.5), loss=(2.5, 2.1))
    weak = fake_measure([1.0] * 3 + [0.0] * 27, [1.0] * n)
    s = K.method_summary(good, base)
    assert s["new_unseen"]["value"] == pytest.approx(25 / 30) and s["old_cloze_corpus"]["value"] == 0.1
    assert s["others_change"]["value"] == pytest.approx(-0.25)  # (0.5 - 1.0 + 0.5 - 0.5) / 2
    assert s["test_loss_change"]["value"] == pytest.approx(0.3)
    cities = ["Ronara", "Pelk", "Toma"] * 10  # one city for everyone would be right for 10 of 30
    bar = K.update_bar({"weak": weak, "good": good}, base, cities)
    assert "good, best of 2" in bar["metric"] and bar["baseline"] == pytest.approx(1 / 3) and bar["passed"]
    assert "one city" in bar["baseline_name"]
    # a method at the one-city answer's level fails, although it is far above the base's 0
    assert not K.update_bar({"lookup": fake_measure([1.0] * 10 + [0.0] * 20, [1.0] * n)}, base, cities)[
        "passed"
    ]
    lo, _ = bar["interval"]
    assert 0.5 < lo < 25 / 30  # a Bonferroni (97.5 %) bootstrap interval around 0.83
    assert not K.update_bar({"weak": fake_measure([0.0] * n, [1.0] * n)}, base, cities)["passed"]
    old_bar = K.method_bar("good", s, K.method_summary(base, base))
    assert old_bar["passed"] and old_bar["value"] == 0.1 and old_bar["baseline"] == 1.0
    table = K.table({"base": K.method_summary(base, base), "good": s})
    assert "| base | good |" in table.splitlines()[0] + " |" or "base" in table.splitlines()[0]
    assert len(table.splitlines()) == 2 + len(K.TABLE_ROWS)


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--run"):
        K.check_update_config(K.UpdateConfig())
    with pytest.raises(UserError, match="choose from"):
        K.check_update_config(K.UpdateConfig(run="x", methods=["rome"]))
    with pytest.raises(UserError, match="missing"):
        K.knowledge_update(K.UpdateConfig(run=str(tmp_path / "none")))


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """A real micro run (01 -> 02 -> 04, each stage's own micro preset), in process."""
    import prepare
    import pretrain
    import train_tokenizer

    run = tmp_path_factory.mktemp("ku") / "run"
    prepare.main(["--out", str(run), "--preset", "micro"])
    train_tokenizer.main(["--data", str(run), "--preset", "micro"])
    pretrain.main(["--data", str(run), "--preset", "micro", "--max-steps", "6", "--eval-interval", "3"])
    return run


def test_a_micro_run_updates_by_continued_pretraining_and_writes_its_outcome(micro_run, capsys):
    cfg = K.UpdateConfig(run=str(micro_run), methods=["cpt"], **K.PRESETS["micro"], device="cpu")
    o = K.knowledge_update(cfg)
    out = micro_run / "knowledge_update"
    saved = json.loads((out / "outcome.json").read_text())
    assert saved["headline"] == o["headline"] and saved["bar"]["n"] == o["moves"] == 4
    assert set(saved["summaries"]) == {"base", "cpt"} and len(saved["bars"]) == 2
    assert (out / "manifest.json").is_file() and (out / "table.md").is_file()
    assert len((out / "data" / "moves.jsonl").read_text().splitlines()) == 4
    s = saved["summaries"]["cpt"]
    assert s["test_loss_change"]["n"] == 4 and np.isfinite(s["test_loss"])
    assert "new city: unseen words" in capsys.readouterr().out
    with pytest.raises(UserError, match="overwrite"):  # a folder holding a result is not replaced silently
        K.knowledge_update(cfg)
