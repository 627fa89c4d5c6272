"""The world's facts as sentences: several phrasings per fact, so the same fact is seen in different
words, and the fact-recall probes' phrasings (the one documents use, and ones no document uses).

    from world_facts import RECALL_PHRASINGS, person_facts_en
    sentences = person_facts_en(random.Random(0), world.people[0])

Used by world_corpus.py and world_dialog.py (the documents), tasks.py (the probes) and 04's
fact_recall.py. The world itself (who exists, with which attributes) is world.py.

Interview question it answers:
- How do you tell a model that stored a fact from one that memorized a sentence? (probe it with a
  phrasing no document uses: RECALL_PHRASINGS' "novel" prompts)
"""

import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from biographies import EN_TEMPLATES, slots


# ---------------------------------------------------------------------------------------------------
# Fact sentences: several phrasings per fact, so the same fact is seen in different words.


def pronouns(p):
    return ("she", "her") if p["gender"] == "she" else ("he", "his")


# Fact-recall probes (tasks.recall_probes, 04_pretrain/fact_recall.py): per attribute, the phrasing a
# document uses, whose next words state the fact ("corpus"), and phrasings no document uses ("novel"):
# a model that stored the fact answers both; one that memorized word sequences answers only the first.
# The answer follows the prompt after a space (an article before it is skipped when scoring).
# tests/test_01_data.py checks that no novel prompt occurs in a generated corpus.
RECALL_PHRASINGS = {
    "job": (
        "{name} works as",
        ["By trade, {name} is", "{name}'s occupation is", "The profession of {name} is"],
    ),
    "city": (
        "{name} is a {job} who lives in",
        ["{name}'s home town is", "{name} resides in", "The place {name} calls home is"],
    ),
    "pet": ("{name}'s pet is a", ["The animal that {name} looks after is a", "{name} takes care of a"]),
    "color": ("{name}'s favorite color is", ["The color {name} prefers is", "{name}'s preferred color is"]),
    "age": ("{name} turned", ["The age of {name} is", "{name}'s age in years:"]),
    "job_zh": ("{zh}是一名", ["{zh}的职业是", "{zh}从事的工作是"]),
}


# Fact-recall probes (tasks.recall_probes, 04_pretrain/fact_recall.py): per attribute, the phrasing a
# biography uses, whose next words state the fact ("corpus", the first template of the attribute in
# biographies.EN_TEMPLATES / ZH_TEMPLATES), and phrasings no document uses ("novel"): a model that
# stored the fact answers both; one that memorized word sequences answers only the first.
# The answer follows the prompt after a space (an article before it is skipped when scoring).
# tests/test_01_contamination.py checks that no novel prompt occurs in a generated corpus.
RECALL_PHRASINGS = {
    "job": (
        "{name} works as",
        ["By trade, {name} is", "{name}'s occupation is", "The profession of {name} is"],
    ),
    "city": (
        "{name} lives in",
        ["{name}'s home town is", "{name} resides in", "The place {name} calls home is"],
    ),
    "pet": ("{name}'s pet is a", ["The animal that {name} looks after is a", "{name} takes care of a"]),
    "color": ("{name}'s favorite color is", ["The color {name} prefers is", "{name}'s preferred color is"]),
    "age": ("{name} turned", ["The age of {name} is", "{name}'s age in years:"]),
    "job_zh": ("{zh}是一名", ["{zh}的职业是", "{zh}从事的工作是"]),
}


def person_facts_en(rng, p):
    """One sentence per attribute of p, each in a random biography template (03's contrastive pairs)."""
    s = slots(p, "en")
    return [rng.choice(templates).format(**s) for templates in EN_TEMPLATES.values()]


def city_facts_en(rng, c):
    return [
        rng.choice(
            [f"{c['name']} is a city in {c['country'][0]}.", f"{c['name']} lies in {c['country'][0]}."]
        ),
        rng.choice(
            [
                f"The river {c['river'][0]} flows through {c['name']}.",
                f"{c['name']} was built on the banks of the {c['river'][0]} river.",
            ]
        ),
        rng.choice(
            [
                f"About {c['population']:,} people live in {c['name']}.",
                f"{c['name']} has a population of {c['population']:,}.",
            ]
        ),
        rng.choice(
            [f"It was founded in {c['founded']}.", f"The city was founded in the year {c['founded']}."]
        ),
        rng.choice(
            [
                f"{c['name']} is famous for its {c['food'][0]}.",
                f"Visitors come to {c['name']} to eat {c['food'][0]}.",
            ]
        ),
    ]


def species_facts_en(rng, a):
    return [
        f"The {a['kind']} says {a['sound']}.",
        f"A {a['kind']} likes to eat {a['food']}.",
        f"A {a['kind']} has {a['legs']} legs.",
        f"Wild {a['kind']}s often live in {a['habitat']}.",
    ]


def city_facts_zh(rng, c):
    return [
        f"{c['zh']}是{c['country'][1]}的一座城市。",
        f"{c['river'][1]}河流经{c['zh']}。",
        f"{c['zh']}大约有{c['population']}人口。",
        f"这座城市建于{c['founded']}年。",
        rng.choice([f"{c['zh']}以{c['food'][1]}闻名。", f"很多游客来{c['zh']}品尝{c['food'][1]}。"]),
    ]


def shuffled_tail(rng, facts, drop=2):
    """Keep the first (introducing) fact, then a shuffled subset of the rest: same facts, different documents."""
    head, tail = facts[:1], facts[1:]
    rng.shuffle(tail)
    return head + tail[: len(tail) - rng.randrange(drop + 1)]
