"""Tests for 05_sft_lora/feedback_loop.py and feedback_user.py: the simulated user's questions, ratings
and probes, the ratings going through the server's own append function, the comparison's bars (a loop
no better than its control or than the majority answer fails), bad flags, and a micro run end to end."""

import json

import numpy as np
import pytest

import feedback_loop as L
import feedback_user as U
from common.cli import UserError, run_cli
from feedback_data import append_feedback, feedback_conversations, feedback_pairs, read_feedback
from world import build_world, world_config
from world_corpus import generate_corpus

MIX = {"dialog": 0.25, "code": 0.1, "knowledge": 0.5, "stories": 0.15}


@pytest.fixture(scope="module")
def world():
    return build_world(world_config(3, {"n_people": 60, "bios_per_person": 2}))


def test_the_user_asks_held_out_people_five_questions_and_the_probes_use_other_words(world):
    asked, others = U.choose_people(world, 4, 5, seed=0)
    assert (
        len(asked) == 4 and len(others) == 5 and not {p["name"] for p in asked} & {p["name"] for p in others}
    )
    items = U.fact_items(world, asked)
    assert len(items) == 20 and {i["attribute"] for i in items} == set(U.UNSEEN_QUESTIONS)
    for i in items:
        question = i["messages"][0]["content"]
        assert i["subject"] in question and i["subject"] in i["unseen"][0]["content"]
        assert question != i["unseen"][0]["content"] and i["cloze"] not in question
        assert i["answer"] in i["better"] and not i["better"].startswith(" ")  # as a user types it
    # no document of the world's corpus asks in the unseen words (so the loop's gain there is not recall
    # of a sentence the model read)
    corpus = " ".join(d["text"] for d in generate_corpus(world, 3, 200_000, MIX))
    for q in U.UNSEEN_QUESTIONS.values():
        assert q.split("{name}")[0] not in corpus or q.split("{name}")[1] not in corpus, q
    with pytest.raises(UserError, match="--n-people"):
        U.choose_people(world, 10_000, 5, seed=0)


def test_ratings_are_the_truth_and_go_through_the_servers_append_function(world, tmp_path):
    items = U.fact_items(world, U.choose_people(world, 2, 1, seed=1)[0])
    right = f" {items[0]['better']}"  # the model's answers start with a space (01's dummy prefix)
    wrong = " " + items[1]["better"].replace(items[1]["answer"], "Nowhere")
    records = U.rate_answers(items[:2], [right, wrong], "runs/x/sft")
    assert [r["rating"] for r in records] == ["up", "down"] and records[1]["better"] == items[1]["better"]
    path = tmp_path / "feedback" / "feedback.jsonl"
    for rec in records:
        append_feedback(path, rec)
    back = read_feedback(path)
    assert [r["rating"] for r in back] == ["up", "down"] and all("time" in r for r in back)
    # the typed better answer trains with the model's own first token (the leading space)
    convs = feedback_conversations(back)
    assert convs[1]["messages"][-1]["content"] == " " + items[1]["better"]
    assert feedback_pairs(back)[0]["chosen"] == " " + items[1]["better"]
    # a surname that is also a value is not an answer: the subject's name is removed before looking
    item = {"subject": "Ansel Toma", "answer": "Toma"}
    assert not U.names_fact("Ansel Toma lives in Pelk.", item) and U.names_fact("He lives in Toma.", item)


def test_the_majority_answer_is_right_for_the_commonest_value_only(world):
    items = U.fact_items(world, world.people[:10])
    scores = U.majority_scores(world, items)
    assert len(scores) == 50 and 0 < sum(scores) < 50


def fake(trained, cloze, unseen, others=(1.0, 1.0), loss=(2.0, 2.0)) -> dict:
    facts = lambda t, c, u: {"trained": list(t), "cloze": list(c), "unseen": list(u), "examples": []}
    return {
        "asked": facts(trained, cloze, unseen),
        "others": facts(others, others, others),
        "test_loss": list(loss),
    }


def test_the_bar_passes_only_above_the_strongest_of_before_control_and_majority():
    n = 30
    down = [True] * n + [False] * 5  # five up-rated facts, left out of the bar
    before = fake([0.0] * n + [1.0] * 5, [0.0] * 35, [0.0] * 35)
    good = fake(
        [1.0] * 35, [1.0] * 20 + [0.0] * 15, [1.0] * 20 + [0.0] * 15, others=(1.0, 0.0), loss=(2.1, 2.3)
    )
    control = fake([0.0] * n + [1.0] * 5, [0.0] * 35, [1.0] * 3 + [0.0] * 32)
    majority = [0.0] * 35
    bar, own_words = L.loop_bars({"before": before, "loop": good, "control": control}, majority, down)
    assert bar["passed"] and bar["n"] == n and "control" in bar["baseline_name"]  # control is the strongest
    assert bar["value"] == pytest.approx(20 / 30 - 1.5 / 30) and own_words["passed"]
    # a loop that is only as good as its control fails, however far above the served model
    assert not L.loop_bars({"before": before, "loop": good, "control": good}, majority, down)[0]["passed"]
    # and so does one at the majority answer's level
    assert not L.loop_bars({"before": before, "loop": good, "control": before}, [1.0] * 35, down)[0]["passed"]
    s = L.arm_summary(good, before, down)
    assert s["corrected_heldout"]["value"] == pytest.approx(20 / 30) and s["upheld_trained"]["n"] == 5
    assert s["others_change"]["value"] == pytest.approx(-0.5) and s["test_loss_change"][
        "value"
    ] == pytest.approx(0.2)
    summaries = {
        "before": L.arm_summary(before, before, down),
        "loop": s,
        "control": L.arm_summary(control, before, down),
    }
    text = L.table(summaries, {"corrected_heldout": L.share([0.0] * n)})
    assert len(text.splitlines()) == 2 + len(L.TABLE_ROWS) and "majority" in text.splitlines()[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "--run"),
        (["--run", "{tmp}/none"], "missing"),
        (["--run", "{tmp}", "--n-people", "0"], "--n-people"),
        (["--run", "{tmp}", "--replay", "0"], "--replay"),
        (["--run", "{tmp}", "--method", "prefix"], "--method"),
        (["--run", "{tmp}", "--steps", "x"], "--steps"),
    ],
)
def test_bad_input_is_one_error_line_exit_2(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        run_cli(L.main, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """A real micro run (01 -> 02 -> 04 -> 05's SFT, each stage's own micro preset), in process."""
    import prepare
    import pretrain
    import sft
    import train_tokenizer

    run = tmp_path_factory.mktemp("fl") / "run"
    prepare.main(["--out", str(run), "--preset", "micro"])
    train_tokenizer.main(["--data", str(run), "--preset", "micro"])
    pretrain.main(["--data", str(run), "--preset", "micro", "--max-steps", "6", "--eval-interval", "3"])
    sft.main(["--run", str(run), "--preset", "micro", "--no-eval-base", "--device", "cpu"])
    return run


def test_a_micro_run_closes_the_loop_and_writes_its_outcome(micro_run, capsys, tmp_path, monkeypatch):
    import sft

    # sft.py in this process, with the very arguments the stage passes (a fresh interpreter per round
    # costs seconds of imports; finetuned.run_sft, the subprocess runner, runs in the micro smoke run
    # through compare.py)
    monkeypatch.setattr(L, "run_sft", lambda args, log, what: sft.main([str(a) for a in args]))
    cfg = L.LoopConfig(run=str(micro_run), **L.PRESETS["micro"], device="cpu")
    o = L.feedback_loop(cfg)
    out = micro_run / "feedback_loop"
    saved = json.loads((out / "outcome.json").read_text())
    assert saved["headline"] == o["headline"] and saved["ratings"]["ratings"] == 15
    ratings = read_feedback(out / "feedback" / "feedback.jsonl")
    assert len(ratings) == 15 and saved["bar"]["n"] == saved["ratings"]["down"] > 0
    assert set(saved["summaries"]) == set(L.ARMS) and len(saved["bars"]) == 2
    assert (out / "loop" / "manifest.json").is_file() and (out / "control" / "manifest.json").is_file()
    assert (
        np.isfinite(saved["summaries"]["loop"]["test_loss"]) and "corrected facts" in capsys.readouterr().out
    )
    with pytest.raises(UserError, match="overwrite"):  # a folder holding a result is not replaced silently
        L.feedback_loop(cfg)
    with pytest.raises(UserError, match="--sft"):
        L.feedback_loop(
            L.LoopConfig(run=str(micro_run), sft=str(tmp_path / "nothing"), out=str(tmp_path / "o"))
        )
