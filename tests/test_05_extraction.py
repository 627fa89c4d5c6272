"""The knowledge-extraction experiment's pieces: the goal bars that can fail, Chinese answer scoring,
the ablation cells' corpora (same exposure, different variety) and the held-out exposure report."""

import json

from common.files import write_jsonl
from contamination import heldout_exposure
from extraction import CELLS, cell_corpus, cell_world, format_table, write_cell_data
from sft_baselines import answer_correct, goal_bar, majority_short_answers


def test_goal_bar_fails_short_of_the_goal_and_below_a_baseline():
    ok = goal_bar("acc", [1.0] * 190 + [0.0] * 10, 0.8, {"majority": [0.0] * 200})
    assert ok["passed"] and ok["threshold"] == 0.8
    short = goal_bar("acc", [1.0] * 165 + [0.0] * 35, 0.8, {"majority": [0.0] * 200})  # 0.825, interval below
    assert not short["passed"] and short["interval"][0] < 0.8 < short["value"]
    beaten = goal_bar("acc", [1.0] * 190 + [0.0] * 10, 0.8, {"lookup": [1.0] * 200})
    assert not beaten["passed"] and beaten["threshold"] == 1.0 and beaten["baseline_name"] == "lookup"


def test_answer_correct_in_english_and_chinese():
    assert answer_correct("Noin Marora lives in Lokaba.<|end|>", "Lokaba")
    assert not answer_correct("Noin Marora lives in Lokabar.", "Lokaba")
    assert answer_correct("诺因·马罗拉住在洛卡巴。", "洛卡巴")
    assert not answer_correct("诺因·马罗拉住在巴林。\n洛卡巴", "洛卡巴")  # only the answer span counts
    # 01's arithmetic records store the answer as an int: compared as its digits (it crashed sft.py's
    # evaluation on arithmetic_heldout.jsonl, and with it multi_adapter.py's default task pair)
    assert answer_correct("The answer is 42.<|end|>", 42) and not answer_correct("The answer is 421.", 42)


def test_majority_short_answer_per_attribute_and_language():
    train = [{"attribute": "city", "lang": "zh", "answer": a, "messages": []} for a in ["甲", "乙", "乙"]]
    held = [
        {"attribute": "city", "lang": "zh", "messages": []},
        {"attribute": "job", "lang": "zh", "messages": []},
    ]
    assert majority_short_answers(held, train) == ["乙", ""]


def test_ablation_cells_see_the_same_exposure_with_different_variety():
    sizes = {}
    for name, augment, mixed in CELLS:
        w = cell_world(10, 3, augment, mixed, 0)
        docs = cell_corpus(w, 4, 0)
        bios = [d for d in docs if d["domain"] == "knowledge"]
        assert len(bios) == 10 * 4  # every cell: `repeats` biography documents per person
        assert len({d["text"] for d in bios}) == (30 if augment else 10)
        chats = [d for d in docs if d["domain"] == "dialog"]
        assert bool(chats) == mixed
        held = [p["name"] for p in w.people if p["heldout"]]
        assert not any(n in d["text"] for d in chats for n in held)
        sizes[name] = len(bios)
    assert len(set(sizes.values())) == 1


def test_cell_data_and_heldout_exposure(tmp_path):
    w = cell_world(12, 2, True, True, 0)
    write_cell_data(tmp_path, w, 2, 0, {"cell": "x"}, "test")
    data = tmp_path / "data"
    assert all((data / f"{s}.jsonl").is_file() for s in ("train", "val", "test"))
    assert (data / "manifest.json").is_file()
    facts = [json.loads(line) for line in (data / "tasks" / "sft_facts_train.jsonl").read_text().splitlines()]
    assert facts and all(r["lang"] == "en" and "attribute" in r for r in facts)
    e = heldout_exposure(data)
    assert e["documents_naming_them"] > 0
    assert e["in_qa_form"] == e["outside_knowledge_domain"] == e["questions_whole_in_pretraining"] == 0


def test_heldout_exposure_catches_a_leak(tmp_path):
    w = cell_world(12, 2, True, False, 0)
    write_cell_data(tmp_path, w, 1, 0, {"cell": "x"}, "test")
    data = tmp_path / "data"
    held = json.loads((data / "tasks" / "sft_heldout.jsonl").read_text().splitlines()[0])
    leak = {"id": "leak", "domain": "dialog", "lang": "en", "text": "User: " + held["messages"][0]["content"]}
    docs = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    write_jsonl(data / "train.jsonl", docs + [leak])
    e = heldout_exposure(data)
    assert e["in_qa_form"] == e["outside_knowledge_domain"] == e["questions_whole_in_pretraining"] == 1


def test_format_table_has_a_row_per_cell():
    row = dict(augmentation=True, mixed=False, memorized=0.9, answer_acc=0.5, answer_acc_interval=[0.4, 0.6])
    row |= dict(exact_match=0.4, exact_match_interval=[0.3, 0.5], majority=0.1, n=100)
    assert format_table([row, row]).count("\n| on | off |") == 2
