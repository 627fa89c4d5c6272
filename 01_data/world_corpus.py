"""The corpus: the world (world.py) rendered into documents of four domains, mixed by character share.

    python 01_data/world_corpus.py --seed 0 --chars 20000     # print a few rendered documents
    python 01_data/world_corpus.py --bios-per-person 1 --bio-templates 1 --no-bio-permute   # plain biographies

    from world_corpus import generate_corpus
    docs = generate_corpus(world, seed=0, chars=2_000_000, ratios={"knowledge": 0.85, "dialog": 0.1, ...})

    dialog     chats (world_dialog.py)
    code       tiny Python programs over the world's numbers, each followed by its real printed output
    knowledge  biographies of every person (biographies.py), city and species pages, arithmetic word
               problems with answers
    stories    short English stories using the entities, and web-like pages with nav/footer boilerplate

Only biographies name the held-out people; every other document draws its people from the training
half (w.train_people), so a held-out person's facts are in biographies alone (contamination.py proves
it). Same seed -> byte-identical output: only random.Random(seed) is used.

Interview questions it answers:
- How do you keep facts consistent across a generated corpus? (one source of truth, the World, rendered
  many ways)
- What does a domain mix do? (each domain gets its share of the characters; prepare.py's --mix sets it)
"""

import contextlib
import io
import random
import re
import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import parse_config, run_cli
from world import ITEMS, WorldConfig, build_world, next_biography
from world_facts import city_facts_en, city_facts_zh, shuffled_tail, species_facts_en
from world_dialog import render_dialog, render_dialog_zh


# ---------------------------------------------------------------------------------------------------
# Domain renderers: each returns one document's text.


# ---------------------------------------------------------------------------------------------------
# Domain renderers: each returns one document's text. Only biographies name the held-out people; every
# other document (city and species pages, chats, code, stories, web pages, arithmetic) draws its people
# from the training half (w.train_people), so a held-out person's facts are in biographies alone.


def render_knowledge_en(rng, w):
    """A biography (the corpus cycles through the pool), a city page or a species page."""
    if rng.random() < 0.9:
        bio = next_biography(w, "en")
        if bio:
            return bio
    people = w.train_people or w.people
    if rng.random() < 0.6:
        c = rng.choice(w.cities)
        residents = [p for p in c["residents"] if not p["heldout"]] or people
        residents = rng.sample(residents, k=min(3, len(residents)))
        who = ", ".join(f"{p['name']} the {p['job'][0]}" for p in residents)
        return (
            f"{c['name']}\n\n{' '.join(shuffled_tail(rng, city_facts_en(rng, c)))} "
            f"Well-known residents include {who}."
        )
    a = rng.choice(w.species)
    owners = [p for p in a["owners"] if not p["heldout"]] or people
    owners = rng.sample(owners, k=min(3, len(owners)))
    names = ", ".join(f"{p['name']} (whose {a['kind']} is {p['pet_name']})" for p in owners)
    facts = species_facts_en(rng, a)
    rng.shuffle(facts)
    return f"The {a['kind']}\n\n{' '.join(facts)} People in the world who keep one include {names}."


def render_knowledge_zh(rng, w):
    """A Chinese biography, or a Chinese city page."""
    if rng.random() < 0.9:
        bio = next_biography(w, "zh")
        if bio:
            return bio
    c = rng.choice(w.cities)
    residents = [p for p in c["residents"] if not p["heldout"]] or w.train_people or w.people
    residents = rng.sample(residents, k=min(3, len(residents)))
    who = "、".join(f"{p['job'][1]}{p['zh']}" for p in residents)
    return f"{c['zh']}\n\n{''.join(shuffled_tail(rng, city_facts_zh(rng, c)))}著名的居民有{who}。"


def arithmetic_problem(rng, w, heldout=False):
    """One word problem over world entities: (question, integer answer). See arithmetic_parts."""
    question, answer, _, _ = arithmetic_parts(rng, w, heldout)
    return question, answer


# The held-out arithmetic (01's tasks.py) differs from everything trained on in two ways at once: its
# wording (the second template of each form) and its numbers (the first operand lies above the training
# range), so no held-out problem shares form and numbers with a training problem or a corpus problem.
# The corpus (render_arithmetic) and the train split draw only the training side.
ARITH_RANGES = {  # form -> (training range, held-out range) of the first operand
    "add": ((2, 60), (60, 90)),
    "sub": ((2, 60), (60, 90)),
    "mul": ((2, 13), (13, 20)),
    "div": ((2, 12), (12, 20)),
}


def arithmetic_parts(rng, w, heldout=False):
    """(question, answer, form, numbers): one word problem, its form ("add", "sub", "mul", "div") and
    the numbers the question states; heldout=True draws the held-out template and number range."""
    p, q = rng.sample(w.train_people or w.people, 2)
    item = rng.choice(ITEMS)
    a, b = rng.randrange(2, 60), rng.randrange(2, 40)
    form = ("add", "sub", "mul", "div")[rng.randrange(4)]
    lo, hi = ARITH_RANGES[form][heldout]
    P, Q = p["first"], q["first"]
    if form == "add":
        a = rng.randrange(lo, hi) if heldout else a
        text = (
            f"{P} starts the day with {a} {item}, and {Q} hands over {b} extra. What is {P}'s total number of {item}?"
            if heldout
            else f"{P} has {a} {item}. {Q} gives {P} {b} more. How many {item} does {P} have now?"
        )
        return text, a + b, form, (a, b)
    if form == "sub":
        a = (rng.randrange(lo, hi) if heldout else a) + b
        text = (
            f"Out of {a} {item}, {P} passes {b} on to {Q}. How many {item} does {P} keep?"
            if heldout
            else f"{P} had {a} {item} and gave {b} of them to {Q}. How many {item} are left?"
        )
        return text, a - b, form, (a, b)
    if form == "mul":
        a, b = rng.randrange(lo, hi), rng.randrange(2, 13)
        text = (
            f"There are {a} bags of {item} and {P} puts {b} {item} into every bag. How many {item} are in the bags?"
            if heldout
            else f"{P} buys {a} boxes of {item} with {b} {item} in each box. How many {item} is that in total?"
        )
        return text, a * b, form, (a, b)
    b = rng.randrange(2, 10)
    a = b * rng.randrange(lo, hi)
    text = (
        f"In {p['city']['name']}, {b} friends split {a} {item} evenly with {P}'s help. What does one friend receive?"
        if heldout
        else f"{P} shares {a} {item} equally among {b} friends in {p['city']['name']}. How many {item} does each friend get?"
    )
    return text, a // b, form, (a, b)


def render_arithmetic(rng, w):
    lines = ["Math practice"]
    for i in range(rng.randrange(4, 7)):
        question, answer = arithmetic_problem(rng, w)
        lines.append(f"Problem {i + 1}: {question}\nAnswer: {answer}")
    return "\n\n".join(lines)


def code_snippet(rng, w):
    """Source of one small Python snippet over world data."""
    people = rng.sample(w.train_people or w.people, rng.randrange(3, 6))
    var = rng.choice(["data", "table", "info", "values", "records"])
    form = rng.randrange(6)
    if form == 0:
        items = ", ".join(f'"{p["first"]}": {p["age"]}' for p in people)
        return (
            f"{var} = {{{items}}}\noldest = max({var}, key={var}.get)\n"
            f'print("oldest:", oldest, {var}[oldest])\nprint("total age:", sum({var}.values()))'
        )
    if form == 1:
        cities = rng.sample(w.cities, 3)
        items = ", ".join(f'("{c["name"]}", {c["population"]})' for c in cities)
        return (
            f"{var} = [{items}]\nfor name, population in sorted({var}, key=lambda c: c[1]):\n"
            f'    print(name, population)\nprint("sum:", sum(p for _, p in {var}))'
        )
    if form == 2:
        p = people[0]
        fn = rng.choice(["describe", "summary", "intro"])
        return (
            f'def {fn}(name, job, pet):\n    return name + " is a " + job + " with a " + pet\n\n'
            f'print({fn}("{p["first"]}", "{p["job"][0]}", "{p["pet"]["kind"]}"))\n'
            f'print(len("{p["first"]}{p["pet_name"]}"))'
        )
    if form == 3:
        objs = rng.sample(w.objects, rng.randrange(3, 6))
        items = ", ".join(f'("{o["kind"][0]}", {o["price"]})' for o in objs)
        limit = rng.randrange(50, 300)
        return (
            f"{var} = [{items}]\ncheap = [k for k, price in {var} if price < {limit}]\n"
            f'print(cheap)\nprint("total:", sum(price for _, price in {var}))'
        )
    if form == 4:
        p = people[0]
        n = rng.randrange(3, 9)
        return (
            f"count = {p['age']}\nfor step in range({n}):\n    count = count + step * {rng.randrange(2, 9)}\n"
            f'print("{p["first"]}:", count)'
        )
    items = ", ".join(f'"{p["first"]}"' for p in people)
    return (
        f'{var} = [{items}]\nprint(sorted({var}))\nprint(", ".join(n.upper() for n in {var}[:2]))\n'
        f'print(len({var}), "people")'
    )


def render_code(rng, w):
    """Two or three small Python snippets and the output they really print (we run them to get it)."""
    src = "\n\n".join(code_snippet(rng, w) for _ in range(rng.randrange(2, 4)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(src, "<generated>", "exec"), {})
    output = "\n".join("# " + line for line in out.getvalue().rstrip("\n").split("\n"))
    return (
        f"# {rng.choice(['Example', 'Exercise', 'Snippet'])}: run this program\n{src}\n\n# Output:\n{output}"
    )


STORY_EVENTS = [
    "One morning {first} found that {pet} had run away towards the {river} river.",
    "{first} baked {food} for the whole street, and everyone asked for more.",
    "A storm came over {city}, and {first} helped the neighbours close their windows.",
    "{first} met {friend} at the market and they talked until the sun went down.",
    "{pet} the {kind} learned to open the garden gate, which surprised {first}.",
    "On a quiet evening {first} painted the old fence {color}.",
    "{friend} brought a letter from {country} that made {first} laugh.",
    "{first} lost a {obj} near the bridge, and {pet} found it the next day.",
    "The children of {city} asked {first} how to become a {job}.",
    "{first} decided to walk along the {river} river every Sunday.",
]


def story_slots(rng, w):
    p = rng.choice(w.train_people or w.people)
    c = p["city"]
    return dict(
        first=p["first"],
        name=p["name"],
        pet=p["pet_name"],
        kind=p["pet"]["kind"],
        river=c["river"][0],
        food=c["food"][0],
        city=c["name"],
        friend=p["friend"]["first"],
        color=p["color"][0],
        country=c["country"][0],
        job=p["job"][0],
        country_zh=c["country"][1],
        first_zh=p["zh"].split("·")[0],  # for Chinese noise sentences
        obj=(p.get("objects") or [{"kind": ("hat",)}])[0]["kind"][0],
    )


def render_story(rng, w):
    s = story_slots(rng, w)
    events = rng.sample(STORY_EVENTS, rng.randrange(4, 7))
    opening = rng.choice(
        [
            "Once upon a time in {city} there lived a {job} called {name}.",
            "In the town of {city}, {name} worked as a {job}.",
            "Everyone in {city} knew {name}, the {job} with a {kind} named {pet}.",
        ]
    )
    ending = rng.choice(
        [
            "And from that day on, {first} and {pet} were never bored.",
            "That night {first} slept well, happy to live in {city}.",
            "{first} smiled. Life in {city} was good.",
        ]
    )
    return " ".join(t.format(**s) for t in [opening] + events + [ending])


def render_web(rng, w):
    s = story_slots(rng, w)
    site = f"{s['city']} Gazette"
    headline = rng.choice(
        [
            f"Local {s['job']} {s['name']} in the news",
            f"A week in {s['city']}",
            f"{s['city']} celebrates its famous {s['food']}",
        ]
    )
    body = " ".join(t.format(**s) for t in rng.sample(STORY_EVENTS, 4))
    facts = " ".join(city_facts_en(rng, rng.choice(w.cities))[:3])
    return (
        f"{site}\nHome | News | Places | Contact\n\n{headline}\n\n{body}\n\nDid you know? {facts}\n\n"
        f"Copyright {rng.randrange(2015, 2025)} {site}. All rights reserved."
    )


RENDERERS = {  # domain -> [(renderer, language, weight)]
    "dialog": [(render_dialog, "en", 0.8), (render_dialog_zh, "zh", 0.2)],
    "code": [(render_code, "en", 1.0)],
    "knowledge": [
        (render_knowledge_en, "en", 0.6),
        (render_knowledge_zh, "zh", 0.2),
        (render_arithmetic, "en", 0.2),
    ],
    "stories": [(render_story, "en", 0.6), (render_web, "en", 0.4)],
}


def fix_articles(text: str) -> str:
    """'a engineer' -> 'an engineer' (templates write 'a {job}'; every vowel-initial word here takes 'an')."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def render_document(rng, w, domain):
    """(text, lang) for one document of `domain`."""
    fns = RENDERERS[domain]
    fn, lang, _ = rng.choices(fns, weights=[f[2] for f in fns])[0]
    text = fn(rng, w)
    return (text if domain == "code" else fix_articles(text)), lang  # code prints what it prints


def generate_corpus(w, seed, chars, ratios, first_id=0):
    """Documents [{"id", "domain", "lang", "text"}], each domain filled up to ratio * chars characters;
    ids are numbered from first_id (a later top-up round must not reuse an earlier round's ids)."""
    rng = random.Random(seed + 1)
    docs = []
    for domain, ratio in ratios.items():
        budget = ratio * chars
        while budget > 0:
            text, lang = render_document(rng, w, domain)
            docs.append(
                {
                    "id": f"{domain[:2]}{first_id + len(docs):06d}",
                    "domain": domain,
                    "lang": lang,
                    "text": text,
                }
            )
            budget -= len(text)
    rng.shuffle(docs)
    return docs


def main(argv=None):
    cfg, args = parse_config(
        WorldConfig,
        argv,
        doc=__doc__,
        skip=("n_cities", "n_objects"),
        extra=lambda p: p.add_argument(
            "--chars", type=int, default=20_000, help="characters of text to render (default 20000)"
        ),
    )
    w = build_world(cfg)
    docs = generate_corpus(
        w, cfg.seed, args.chars, {"dialog": 0.4, "code": 0.1, "knowledge": 0.2, "stories": 0.3}
    )
    for d in docs[:6]:
        print(f"--- {d['id']} {d['domain']} {d['lang']}\n{d['text']}\n")


if __name__ == "__main__":
    run_cli(main)
