"""A simulated user for the feedback loop: asks a served model about people, rates each answer against
the world's truth, writes the right answer for the wrong ones; and the probes that measure what the
ratings taught. The library of feedback_loop.py.

    world = build_world(run_world("runs/tiny"))                  # 01's world of the run (world_update)
    asked, others = choose_people(world, 40, 100, seed=0)        # held-out people: asked / left alone
    items = fact_items(world, asked)                             # five facts per person, with probes
    answers = generate_answers(model, tok, [i["messages"] for i in items], 24, "cpu")
    records = rate_answers(items, answers, model_name="runs/tiny/sft")   # for feedback_data.append_feedback
    scores = measure_facts(model, tok, items, device="cpu")      # per fact: right in each wording

The user knows 01's world, so a rating is the truth, not a judge's opinion: an answer is "up" when it
names the fact's value (the subject's own name removed first: a surname can be a city), else "down"
with the better answer the task sets would have given (biographies.qa_pairs' sentence).

Each fact is asked in three wordings, one the user used and two nobody trained on:

    trained   "Where does X live?"                 the question the user asked (05's task wording)
    cloze     "X's home town is"                   01's novel recall phrasing (world_facts.RECALL_PHRASINGS)
    unseen    "In which city does X live?"         a question no document and no training set uses

A correction that reaches the two unseen wordings was learnt as a fact about X; one that reaches only
the trained wording was learnt as a sentence.

Interview question it answers:
- How do you check that feedback taught a fact and not a sentence? (ask the corrected fact in words
  the feedback never used, and compare with the same extra training without the feedback: the
  control separates "learnt from the correction" from "any more training moves answers")
"""

import random
import sys
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data"), str(REPO / "04_pretrain")]
from common.cli import UserError
from world import is_heldout  # 01_data (public functions only)
from biographies import QA_ATTRIBUTES, qa_pairs  # 01_data
from tasks import recall_probes  # 01_data
from world_corpus import fix_articles  # 01_data
from fact_recall import completion_matches, greedy_completions, majority_right  # 04_pretrain

from finetuned import generate_answers
from sft_baselines import answer_span
from world_update import UNSEEN_QUESTION, says

# One question per attribute in words no 01 document, no 05 task file and no feedback uses
# (tests/test_05_feedback_loop.py checks a generated corpus for each).
UNSEEN_QUESTIONS = {
    "city": UNSEEN_QUESTION,
    "job": "What job does {name} have?",
    "age": "What age is {name}?",
    "pet": "What animal is {name}'s pet?",
    "color": "Which color does {name} prefer?",
}
WORDINGS = ("trained", "cloze", "unseen")
HELDOUT_WORDINGS = ("cloze", "unseen")  # words the user did not use


def choose_people(world, n_asked: int, n_others: int, seed: int) -> tuple:
    """(asked, others): people of the SFT held-out half (their questions were never trained on, so the
    served model gets many wrong), shuffled by `seed`; the first n_asked talk to the model, the next
    n_others do not (whether the loop changes what the model says about them is forgetting)."""
    held = [p for p in world.people if is_heldout(p["name"])]
    random.Random(seed).shuffle(held)
    if len(held) < n_asked + 1:
        raise UserError(
            f"the world has {len(held)} held-out people, fewer than --n-people {n_asked} + 1; lower --n-people"
        )
    return held[:n_asked], held[n_asked : n_asked + n_others]


def fact_items(world, people) -> list:
    """Per person and attribute (biographies.QA_ATTRIBUTES): the question the user asks, the better
    answer they would write, the short answer, and the two probes in unseen words."""
    novel = {
        (r["subject"], r["attribute"]): r
        for r in recall_probes(world)
        if r["phrasing"] == "novel" and r["lang"] == "en"
    }
    items = []
    for p in people:
        for attr, question, sentence, short in qa_pairs(p, "en"):
            cloze = novel[(p["name"], attr)]
            items.append(
                {
                    "subject": p["name"],
                    "attribute": attr,
                    "answer": short,
                    "messages": [{"role": "user", "content": question}],
                    "better": fix_articles(sentence),  # what the user types: "X works as an actor."
                    "cloze": cloze["prompt"],
                    "cloze_answer": cloze["answer"],
                    "unseen": [{"role": "user", "content": UNSEEN_QUESTIONS[attr].format(name=p["name"])}],
                }
            )
    return items


def names_fact(text: str, item: dict) -> bool:
    """The chat answer's span names the item's value as a whole word (the subject's name removed)."""
    return says(answer_span(text), item["answer"], item["subject"])


def rate_answers(items: list, answers: list, model_name: str) -> list:
    """The user's ratings, one feedback record per answer (feedback_data's format): up when the answer
    names the fact, down with the better answer otherwise."""
    records = []
    for item, answer in zip(items, answers):
        rec = {"model": model_name, "messages": item["messages"], "answer": answer}
        if names_fact(answer, item):
            records.append(rec | {"rating": "up"})
        else:
            records.append(rec | {"rating": "down", "better": item["better"]})
    return records


@torch.no_grad()
def measure_facts(model, tok, items: list, device, max_new_tokens=24) -> dict:
    """{wording: [per item 1.0 / 0.0]}: the model names the fact when asked in that wording."""
    model.eval()
    trained = generate_answers(model, tok, [i["messages"] for i in items], max_new_tokens, device)
    unseen = generate_answers(model, tok, [i["unseen"] for i in items], max_new_tokens, device)
    cloze = greedy_completions(model, tok, [i["cloze"] for i in items])
    return {
        "trained": [float(names_fact(a, i)) for a, i in zip(trained, items)],
        "unseen": [float(names_fact(a, i)) for a, i in zip(unseen, items)],
        "cloze": [float(completion_matches(c, i["cloze_answer"])) for c, i in zip(cloze, items)],
        "examples": [[i["unseen"][0]["content"], answer_span(a)] for a, i in zip(unseen[:3], items[:3])],
    }


def heldout_per_fact(scores: dict) -> np.ndarray:
    """Per item: the share of the two wordings the user did not use that name the fact (0, 0.5 or 1)."""
    return np.mean([scores[w] for w in HELDOUT_WORDINGS], axis=0)


def majority_scores(world, items: list) -> list:
    """Per item 1.0 / 0.0: the commonest value of its attribute among the world's *other* people is
    its value (04's leave-one-out majority_right): a model that learnt only "answer baker" scores this."""
    facts = [
        {"subject": p["name"], "attribute": attr, "answer": short}
        for p in world.people
        for attr, _, _, short in qa_pairs(p, "en")
    ]
    right = {(f["subject"], f["attribute"]): r for f, r in zip(facts, majority_right(facts))}
    return [float(right[(i["subject"], i["attribute"])]) for i in items]


assert set(UNSEEN_QUESTIONS) == set(QA_ATTRIBUTES)  # a new attribute needs its unseen question
