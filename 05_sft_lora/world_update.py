"""A change of 01's world (people move to another city), the data that teaches it, and the probes that
check a model for it: the library of knowledge_update.py.

    wcfg = run_world("runs/tiny")                       # 01's WorldConfig of that run (its manifest)
    world = build_world(wcfg)
    moves = choose_moves(world, knows_city, 40, seed=0)  # [(person index, old city, new city)]
    after = moved_world(world, moves)                   # the world after the move
    update_texts(wcfg, after, moves)                    # new biographies (continued pretraining)
    update_conversations(wcfg, after, moves)            # new QA (SFT, LoRA)
    city_probes(world, after, moves)                    # four probes per mover, new and old city
    measure(model, tok, probes, others, unchanged, test, 0, "cpu")   # per item, for paired intervals

Everything is built with 01's public functions (build_world, biography_pool, qa_pairs,
recall_probes) on the changed people, so the new texts read like the old corpus: same templates, same
languages, same knobs.

Four probes per mover, one of each kind, so each kind's rate is over independent people:

    cloze_corpus   "X lives in"                      the biographies' own first template
    cloze_novel    "X's home town is" (or another)   a phrasing no document uses (world's probes)
    chat_trained   "Where does X live?"              the QA the SFT/LoRA updates train on
    chat_unseen    "In which city does X live?"      a question no document and no update uses

A completion counts when it starts with the city (04's completion_matches); a chat answer when its
answer span names the city anywhere (the person's own name removed first: a surname can be a city).

Interview question it answers:
- How do you test that a fact was updated rather than one sentence memorized? (probe in words the
  update never used, in both forms a model is asked in: completion and question; and ask for the old
  fact too, since a model can learn the new answer and keep the old one)
"""

import dataclasses
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data"), str(REPO / "04_pretrain")]
from common.cli import UserError
from common.layout import RunLayout
from common.runs import check_artifact
from world import world_config  # 01_data (public functions only)
from biographies import biography_pool, qa_pairs  # 01_data
from tasks import recall_probes  # 01_data
from fact_recall import completion_matches, greedy_completions  # 04_pretrain
from heldout_loss import window_token_losses  # 04_pretrain

from finetuned import generate_answers
from metrics import answer_in
from sft_baselines import answer_span

UNSEEN_QUESTION = "In which city does {name} live?"  # no document and no training question uses it
PROBES = ("cloze_corpus", "cloze_novel", "chat_trained", "chat_unseen")
UNSEEN = ("cloze_novel", "chat_unseen")  # words no update trains on


# ----------------------------------------------------------------------------- the world and its change


def run_world(run: Path):
    """01's world of this run, rebuilt from the seed and knobs in data/manifest.json."""
    layout = RunLayout(run)
    manifest = check_artifact(layout.data, made_by=layout.made_by("data"))
    config = manifest.get("config", {})
    if config.get("input"):
        raise UserError(
            f"{run}/data was made from --input text, which has no world to change; use a generated run"
        )
    return world_config(int(config.get("seed", 0)), config.get("world") or {})


def choose_moves(world, knows_city: list, n: int, seed: int) -> list:
    """[(person index, old city, new city)]: n people, first among those whose old city the base
    completes (so "does it still say the old city" starts near 1), then the others; each moves to a
    random other city."""
    rng = random.Random(seed)
    known = [i for i, k in enumerate(knows_city) if k]
    unknown = [i for i, k in enumerate(knows_city) if not k]
    rng.shuffle(known)
    rng.shuffle(unknown)
    chosen = (known + unknown)[: min(n, len(world.people))]
    moves = []
    for i in chosen:
        old = world.people[i]["city"]
        moves.append((i, old, rng.choice([c for c in world.cities if c is not old])))
    return moves


def moved_world(world, moves):
    """A copy of the world's people list in which the movers live in their new cities (the rest is shared)."""
    people = list(world.people)
    for i, _, new in moves:
        people[i] = {**people[i], "city": new}
    return dataclasses.replace(world, people=people)


def update_texts(wcfg, after, moves) -> list:
    """The continued-pretraining corpus: wcfg.bios_per_person new biographies of each mover per language
    (01's biography_pool on the changed world, another seed than pretraining's)."""
    movers = [after.people[i] for i, _, _ in moves]
    pool = biography_pool(wcfg.seed + 10_007, movers, wcfg)
    return [bio for bios in pool.values() for bio in bios]


def update_conversations(wcfg, after, moves) -> list:
    """The SFT/LoRA training set: the city question about each mover, answered with the new city, in
    every language of the world's biographies (biographies.qa_pairs)."""
    out = []
    for i, _, _ in moves:
        p = after.people[i]
        for lang in wcfg.bio_langs:
            for attr, q, a, short in qa_pairs(p, lang):
                if attr == "city":
                    out.append(
                        {
                            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                            "subject": p["name"],
                            "answer": short,
                            "attribute": "city",
                            "lang": lang,
                        }
                    )
    return out


# ----------------------------------------------------------------------------- the probes


def city_probes(world, after, moves) -> dict:
    """{probe kind: [per mover: {"prompt" or "messages", "subject", "new", "old"}]}, movers in order."""
    by_subject = {}
    for r in recall_probes(after):
        if r["attribute"] == "city":
            by_subject[(r["subject"], r["phrasing"])] = r["prompt"]
    out = {k: [] for k in PROBES}
    for i, old, new in moves:
        p = after.people[i]
        base = {"subject": p["name"], "new": new["name"], "old": old["name"]}
        q_trained = next(q for attr, q, _, _ in qa_pairs(p) if attr == "city")
        out["cloze_corpus"].append({**base, "prompt": by_subject[(p["name"], "corpus")]})
        out["cloze_novel"].append({**base, "prompt": by_subject[(p["name"], "novel")]})
        out["chat_trained"].append({**base, "messages": [{"role": "user", "content": q_trained}]})
        q_unseen = UNSEEN_QUESTION.format(name=p["name"])
        out["chat_unseen"].append({**base, "messages": [{"role": "user", "content": q_unseen}]})
    return out


def other_fact_probes(world, moves) -> tuple:
    """(other people's probes, the movers' unchanged-attribute probes): 01's recall probes of the
    original world, every attribute and both phrasings."""
    movers = {world.people[i]["name"] for i, _, _ in moves}
    probes = recall_probes(world)
    others = [r for r in probes if r["subject"] not in movers]
    unchanged = [r for r in probes if r["subject"] in movers and r["attribute"] != "city"]
    return others, unchanged


def says(text: str, city: str, subject: str) -> bool:
    """The text names the city as a whole word (the subject's own name removed first)."""
    return bool(answer_in(re.sub(re.escape(subject), " ", text), city))


# ----------------------------------------------------------------------------- measuring one model


@torch.no_grad()
def measure(model, tok, probes: dict, others, unchanged, test, n_windows, device) -> dict:
    """Per probe kind and mover: names the new city / the old one; per person: the share of their
    other facts recalled; per test window: the loss. Lists, so two models pair item by item."""
    model.eval()
    res = {}
    for kind, items in probes.items():
        if kind.startswith("cloze"):
            texts = greedy_completions(model, tok, [r["prompt"] for r in items])
            named = lambda r, t, city: completion_matches(t, city)  # the completion starts with it
        else:
            answers = generate_answers(model, tok, [r["messages"] for r in items], 24, device)
            texts = [answer_span(a) for a in answers]
            named = lambda r, t, city: says(t, city, r["subject"])  # the answer names it anywhere
        res[kind] = {
            "new": [float(named(r, t, r["new"])) for r, t in zip(items, texts)],
            "old": [float(named(r, t, r["old"])) for r, t in zip(items, texts)],
            "examples": [[r["subject"], t] for r, t in zip(items[:3], texts[:3])],
        }
    for name, rows in (("others", others), ("unchanged", unchanged)):
        texts = greedy_completions(model, tok, [r["prompt"] for r in rows])
        per = {}
        for r, t in zip(rows, texts):
            per.setdefault(r["subject"], []).append(float(completion_matches(t, r["answer"])))
        res[name] = [float(np.mean(v)) for _, v in sorted(per.items())]
    T = model.cfg.block_size
    starts = np.arange(0, max(len(test) - T, 1), T)[: n_windows or None]
    res["test_loss"] = window_token_losses(model, test, T, device, starts).mean(1).tolist()
    return res
