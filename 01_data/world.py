"""A deterministic synthetic "micro-world" and its rendering into a training corpus and task sets.

Why synthetic: the pipeline must run offline in seconds, and later stages must be able to *check*
what a model learnt. So from one seed we build a small fictional world -- people, cities, animal
species and objects, with attributes and relations -- and write about it in four domains:

    dialog     multi-turn "User: ...\\nAssistant: ..." chats: with mixed training (qa_mixed) about the
               training half of the people, including the task sets' questions, in English and Chinese;
               without it about cities and animals only
    code       tiny Python programs over the world's numbers, each followed by its real printed output
    knowledge  biographies of every person (biographies.py: per person, templates, sentence order and
               languages are knobs), city and species pages, and arithmetic word problems with answers
    stories    short English stories using the entities, and web-like pages with nav/footer boilerplate

The people are split in two by name (`is_heldout`): fine-tuning asks about the training half, the
evaluation about the held-out half, whose facts appear in the corpus *only in biographies*: every other
document draws its people (and best friends) from the training half. That makes 05's held-out score a
test of knowledge extraction (Allen-Zhu and Li, Physics of Language Models 3.1): can the model answer
a question about a fact it read only in prose? contamination.heldout_exposure proves the split holds.
Chinese biographies exist for the training half and for half of the held-out half; the other held-out
people are written about in English only, so a Chinese question about them tests whether knowledge
crosses languages.

Every fact is stored once in the `World` and every document is rendered from it, so facts agree
across documents (Belmo Tarin is a baker in every text that mentions her) and stage 05-07 can grade
answers. Text comes from regular templates with varied entities and several phrasings per fact: easy
enough that a tiny GPT visibly learns it in minutes, varied enough that few documents are
near-duplicates of each other (about 1 in 200 at Jaccard >= 0.5 on the default corpus; prepare.py's
`unique_documents` drops those before injecting noise, so every near-duplicate left is a labelled one).

Task sets for stages 05-07 are rendered from the same world by tasks.py.

Same seed -> byte-identical output: only `random.Random(seed)` is used, and no set of strings is ever
iterated (Python salts string hashes per process).

    python 01_data/world.py --seed 0 --chars 20000     # print a few rendered documents
    python 01_data/world.py --bios-per-person 1 --bio-templates 1 --no-bio-permute   # plain biographies

Interview questions it answers:
- Why train on synthetic data at all? (controlled facts -> measurable learning; no licence/PII issues;
  but it lacks real diversity, so a model trained only on it does not generalize to real text)
- How do you keep facts consistent across a generated corpus? (one source of truth, rendered many ways)
- How do you test knowledge extraction rather than memorization? (hold people out of fine-tuning and
  out of every non-biography document; ask them questions in a form pretraining never used for them)
"""

import contextlib
import dataclasses
import io
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, parse_config, run_cli
from biographies import EN_TEMPLATES, biography_pool, qa_dialog, qa_pairs, slots

# Name syllables with a Chinese transliteration each, so every entity has an English and a Chinese name.
SYLLABLES = [
    ("ba", "巴"),
    ("bel", "贝"),
    ("ca", "卡"),
    ("dor", "多"),
    ("el", "埃"),
    ("fa", "法"),
    ("gor", "戈"),
    ("ha", "哈"),
    ("in", "因"),
    ("ka", "卡"),
    ("lin", "林"),
    ("lo", "洛"),
    ("ma", "马"),
    ("mi", "米"),
    ("mo", "莫"),
    ("na", "娜"),
    ("no", "诺"),
    ("pe", "佩"),
    ("ra", "拉"),
    ("ri", "里"),
    ("ro", "罗"),
    ("sa", "萨"),
    ("sel", "塞"),
    ("ta", "塔"),
    ("tin", "廷"),
    ("to", "托"),
    ("va", "瓦"),
    ("ven", "文"),
    ("wi", "维"),
    ("ya", "亚"),
    ("zo", "佐"),
    ("an", "安"),
    ("or", "奥"),
    ("ul", "乌"),
    ("den", "登"),
    ("kor", "科"),
]
JOBS = [
    ("doctor", "医生"),
    ("teacher", "老师"),
    ("baker", "面包师"),
    ("farmer", "农民"),
    ("pilot", "飞行员"),
    ("painter", "画家"),
    ("engineer", "工程师"),
    ("fisher", "渔夫"),
    ("singer", "歌手"),
    ("nurse", "护士"),
    ("carpenter", "木匠"),
    ("librarian", "图书管理员"),
    ("gardener", "园丁"),
    ("tailor", "裁缝"),
]
COLORS = [
    ("red", "红色"),
    ("blue", "蓝色"),
    ("green", "绿色"),
    ("yellow", "黄色"),
    ("purple", "紫色"),
    ("orange", "橙色"),
    ("white", "白色"),
    ("black", "黑色"),
    ("silver", "银色"),
    ("brown", "棕色"),
]
# species: (en, zh, sound, food, food_zh, legs, habitat, habitat_zh)
SPECIES = [
    ("cat", "猫", "meow", "fish", "鱼", 4, "houses", "房子里"),
    ("dog", "狗", "woof", "meat", "肉", 4, "houses", "房子里"),
    ("rabbit", "兔子", "squeak", "carrots", "胡萝卜", 4, "meadows", "草地上"),
    ("parrot", "鹦鹉", "squawk", "seeds", "种子", 2, "forests", "森林里"),
    ("horse", "马", "neigh", "hay", "干草", 4, "farms", "农场里"),
    ("goat", "山羊", "bleat", "grass", "草", 4, "hills", "山坡上"),
    ("turtle", "乌龟", "hiss", "lettuce", "生菜", 4, "ponds", "池塘里"),
    ("owl", "猫头鹰", "hoot", "mice", "老鼠", 2, "forests", "森林里"),
    ("duck", "鸭子", "quack", "bread", "面包", 2, "ponds", "池塘里"),
    ("cow", "牛", "moo", "grass", "草", 4, "farms", "农场里"),
]
OBJECTS = [
    ("lamp", "灯"),
    ("kite", "风筝"),
    ("bicycle", "自行车"),
    ("violin", "小提琴"),
    ("clock", "钟"),
    ("umbrella", "雨伞"),
    ("teapot", "茶壶"),
    ("drum", "鼓"),
    ("boat", "小船"),
    ("camera", "相机"),
]
MATERIALS = [
    ("wood", "木头"),
    ("glass", "玻璃"),
    ("brass", "黄铜"),
    ("paper", "纸"),
    ("clay", "陶土"),
    ("steel", "钢"),
]
FOODS = [
    ("apple pie", "苹果派"),
    ("noodle soup", "面条汤"),
    ("honey cake", "蜂蜜蛋糕"),
    ("fish stew", "鱼汤"),
    ("plum jam", "李子酱"),
    ("rice bread", "米面包"),
    ("cheese rolls", "奶酪卷"),
    ("pepper dumplings", "辣椒饺子"),
]
COUNTRIES = [("Norland", "诺兰"), ("Estavia", "埃斯塔维亚"), ("Merovia", "梅罗维亚"), ("Sudria", "苏德里亚")]
ITEMS = ["apples", "books", "marbles", "coins", "stamps", "pencils", "shells", "cookies"]


@dataclass
class WorldConfig:
    """The world and how its people's facts are written (biographies.py explains the knobs)."""

    seed: int = 0
    n_people: int = 200  # half of them held out (is_heldout): their facts appear only in biographies
    n_cities: int = 12
    n_objects: int = 60
    bios_per_person: int = 16  # distinct biographies per person and language (1 = no augmentation)
    bio_templates: int = 0  # templates per attribute sentence to draw from (0 = all, 1 = one wording)
    bio_permute: bool = True  # shuffle the sentences of each biography
    bio_langs: tuple = ("en", "zh")  # languages of the biographies
    qa_mixed: bool = True  # QA dialogs about the training half in pretraining ("mixed training")


HELDOUT_FRAC = 0.5  # share of the people held out of fine-tuning (the paper's half)


def name_hash(name: str, salt: int = 0) -> int:
    """A stable hash of a name in [0, 1000) (Python's hash() is salted per process)."""
    return (sum(name.encode()) + 7 * salt) * 2654435761 % 1000


def is_heldout(subject, frac=HELDOUT_FRAC):
    """Deterministic held-out choice by subject name: its questions are never trained on, and its facts
    appear in pretraining only as biographies."""
    return name_hash(subject) < frac * 1000


def has_zh_bios(subject, langs=("en", "zh")):
    """Chinese biographies: every training-half person and half of the held-out people; the other
    held-out half is English only, the cross-language test (asked in Chinese, stored in English)."""
    if "zh" not in langs:
        return False
    return not is_heldout(subject) or name_hash(subject, salt=1) % 2 == 0


@dataclass
class World:
    people: list = field(
        default_factory=list
    )  # dicts: name, zh, age, job, city, pet, pet_name, color, friend, obj
    cities: list = field(default_factory=list)  # dicts: name, zh, country, river, population, founded, food
    species: list = field(default_factory=list)  # dicts from SPECIES
    objects: list = field(default_factory=list)  # dicts: kind, zh, color, material, owner
    train_people: list = field(default_factory=list)  # the people not held out: all other domains use them
    bios: dict = field(default_factory=dict)  # (person index, lang) -> [biography text, ...]
    bio_order: dict = field(default_factory=dict)  # lang -> [(person index, k)]: the order the corpus cycles
    bio_next: dict = field(default_factory=dict)  # lang -> position in bio_order (the corpus's cursor)
    qa_mixed: bool = True


def world_config(seed: int, knobs: dict) -> WorldConfig:
    """WorldConfig from numbers (a command line's name=number list): ints, 0/1 for the booleans, and
    bio_langs 1 = English, 2 = English and Chinese; an unknown name or a value out of range is an error."""
    fields = {f.name: f for f in dataclasses.fields(WorldConfig) if f.name != "seed"}
    values = {}
    for name, v in knobs.items():
        if name not in fields:
            raise UserError(f"unknown world knob {name!r}; use {', '.join(fields)}")
        if name == "bio_langs":
            if v not in (1, 2):
                raise UserError(f"bio_langs={v:g}: write 1 (English) or 2 (English and Chinese)")
            values[name] = ("en", "zh")[: int(v)]
        elif fields[name].type in (bool, "bool"):
            if v not in (0, 1):
                raise UserError(f"{name}={v:g}: write 0 or 1")
            values[name] = bool(v)
        else:
            lowest = 0 if name in ("bio_templates",) else 1
            if v != int(v) or v < lowest:
                raise UserError(f"{name}={v:g}: write a whole number >= {lowest}")
            values[name] = int(v)
    if values.get("n_people", 2) < 2:
        raise UserError("n_people must be >= 2 (a training half and a held-out half)")
    return WorldConfig(seed=seed, **values)


def make_name(rng, n_syll, used=None):
    """A capitalized name and its Chinese transliteration; unique within `used` (a dict) when given."""
    while True:
        parts = [rng.choice(SYLLABLES) for _ in range(n_syll)]
        en = "".join(p[0] for p in parts).capitalize()
        if used is None or en not in used:
            if used is not None:
                used[en] = True
            return en, "".join(p[1] for p in parts)


def build_world(cfg: WorldConfig) -> World:
    rng = random.Random(cfg.seed)
    used = {}
    w = World()
    w.species = [
        dict(zip(["kind", "zh", "sound", "food", "food_zh", "legs", "habitat", "habitat_zh"], s))
        for s in SPECIES
    ]
    for _ in range(cfg.n_cities):
        en, zh = make_name(rng, 3, used)
        river, river_zh = make_name(rng, 2)
        w.cities.append(
            dict(
                name=en,
                zh=zh,
                country=rng.choice(COUNTRIES),
                river=(river, river_zh),
                population=rng.randrange(2_000, 900_000),
                founded=rng.randrange(1100, 1950),
                food=rng.choice(FOODS),
            )
        )
    for _ in range(cfg.n_people):
        while True:  # full names are unique; first names may repeat, as in life
            first, first_zh = make_name(rng, 2)
            last, last_zh = make_name(rng, rng.choice([2, 3]))
            zh = f"{first_zh}·{last_zh}"  # unique too ("ca" and "ka" are both 卡)
            if f"{first} {last}" not in used and zh not in used:
                used[f"{first} {last}"] = used[zh] = True
                break
        w.people.append(
            dict(
                name=f"{first} {last}",
                first=first,
                zh=zh,
                age=rng.randrange(18, 80),
                job=rng.choice(JOBS),
                city=rng.choice(w.cities),
                pet=rng.choice(w.species),
                pet_name=make_name(rng, 2)[0],
                color=rng.choice(COLORS),
                gender=rng.choice(["she", "he"]),
            )
        )
    for p in w.people:
        p["heldout"] = is_heldout(p["name"])
        p["zh_bios"] = has_zh_bios(p["name"], cfg.bio_langs)
    w.train_people = [p for p in w.people if not p["heldout"]]
    friends = w.train_people if len(w.train_people) > 1 else w.people  # a held-out name only in biographies
    for p in w.people:
        p["friend"] = rng.choice([f for f in friends if f is not p])
    for c in w.cities:
        c["residents"] = [p for p in w.people if p["city"] is c]
    for a in w.species:
        a["owners"] = [p for p in w.people if p["pet"] is a]
    for i in range(cfg.n_objects):
        kind = rng.choice(OBJECTS)
        w.objects.append(
            dict(
                kind=kind,
                color=rng.choice(COLORS),
                material=rng.choice(MATERIALS),
                owner=w.people[i % len(w.people)],
                price=rng.randrange(3, 400),
            )
        )
    for o in w.objects:
        o["owner"].setdefault("objects", []).append(o)
    w.bios = biography_pool(cfg.seed, w.people, cfg)
    order_rng = random.Random(cfg.seed + 29)
    for lang in cfg.bio_langs:
        order = [(i, k) for (i, lg), bios in w.bios.items() if lg == lang for k in range(len(bios))]
        order_rng.shuffle(order)
        w.bio_order[lang], w.bio_next[lang] = order, 0
    w.qa_mixed = cfg.qa_mixed
    return w


def next_biography(w, lang):
    """The next biography of the corpus in `lang` (None when there are none): the corpus cycles through
    every (person, biography) in a fixed shuffled order, so each is used once before any repeats."""
    order = w.bio_order.get(lang)
    if not order:
        return None
    i, k = order[w.bio_next[lang] % len(order)]
    w.bio_next[lang] += 1
    return w.bios[(i, lang)][k]


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


def dialog_turns(rng, p):
    """Question-answer pairs about person p, their pet, city and friend: each fact in a few phrasings,
    so two chats about the same person share facts but rarely their wording."""
    s, pos = pronouns(p)
    c, f, pet = p["city"], p["friend"], p["pet"]
    ask = lambda *qs: rng.choice(qs)
    return [
        (
            ask(
                f"What does {p['name']} do for a living?",
                f"What is {p['first']}'s job?",
                f"Where does {p['first']} work?",
            ),
            ask(
                f"{p['name']} is a {p['job'][0]} in {c['name']}.",
                f"{s.capitalize()} works as a {p['job'][0]}.",
                f"{p['first']} is a {p['job'][0]}.",
            ),
        ),
        (
            ask(f"How old is {p['first']}?", f"What is {p['name']}'s age?", f"Is {p['first']} young?"),
            ask(
                f"{p['first']} is {p['age']} years old.",
                f"{p['name']} is {p['age']}.",
                f"{s.capitalize()} turned {p['age']} this year.",
            ),
        ),
        (
            ask(
                f"Does {p['first']} have a pet?",
                f"What pet does {p['name']} keep?",
                f"Tell me about {p['first']}'s pet.",
            ),
            ask(
                f"Yes, {s} has a {pet['kind']} named {p['pet_name']}.",
                f"{p['name']}'s pet is a {pet['kind']} called {p['pet_name']}.",
                f"{p['pet_name']}, a {pet['kind']}.",
            ),
        ),
        (
            ask(f"What sound does {p['pet_name']} make?", f"Is {p['pet_name']} noisy?"),
            f"{p['pet_name']} is a {pet['kind']}, so it says {pet['sound']}.",
        ),
        (
            ask(f"What does {p['pet_name']} eat?", f"What should I feed {p['pet_name']}?"),
            ask(
                f"{p['pet_name']} is a {pet['kind']}, and a {pet['kind']} likes {pet['food']}.",
                f"Mostly {pet['food']}.",
            ),
        ),
        (
            ask(f"Where does {p['first']} live?", f"Which city is {p['name']} from?"),
            ask(
                f"{p['name']} lives in {c['name']}.",
                f"{s.capitalize()} lives in {c['name']}, in {c['country'][0]}.",
            ),
        ),
        (
            ask(f"Where is {c['name']}?", f"Which country is {c['name']} in?"),
            ask(
                f"{c['name']} is a city in {c['country'][0]}, on the {c['river'][0]} river.",
                f"It is in {c['country'][0]}.",
            ),
        ),
        (
            ask(f"What is {c['name']} famous for?", f"What should I eat in {c['name']}?"),
            ask(f"{c['name']} is famous for its {c['food'][0]}.", f"Try the {c['food'][0]}."),
        ),
        (
            ask(f"Who is {p['first']}'s best friend?", f"Does {p['name']} have a best friend?"),
            ask(
                f"{pos.capitalize()} best friend is {f['name']}, a {f['job'][0]}.",
                f"{p['first']}'s best friend is {f['name']}.",
            ),
        ),
        (
            ask(f"What is {p['first']}'s favorite color?", f"Which color does {p['name']} like best?"),
            ask(
                f"{p['first']}'s favorite color is {p['color'][0]}.",
                f"{s.capitalize()} likes {p['color'][0]} best.",
            ),
        ),
    ] + [
        (
            f"Does {p['first']} own a {o['kind'][0]}?",
            f"Yes, a {o['color'][0]} one made of {o['material'][0]}.",
        )
        for o in p.get("objects", [])[:2]
    ]


def place_turns(rng, w):
    """Question-answer pairs about a city and a species: the chats of a world without mixed training."""
    c, a = rng.choice(w.cities), rng.choice(w.species)
    return [
        (
            f"Where is {c['name']}?",
            f"{c['name']} is a city in {c['country'][0]}, on the {c['river'][0]} river.",
        ),
        (f"What is {c['name']} famous for?", f"{c['name']} is famous for its {c['food'][0]}."),
        (f"How many people live in {c['name']}?", f"About {c['population']:,} people live there."),
        (f"When was {c['name']} founded?", f"{c['name']} was founded in {c['founded']}."),
        (f"What does a {a['kind']} eat?", f"A {a['kind']} likes to eat {a['food']}."),
        (f"How many legs does a {a['kind']} have?", f"A {a['kind']} has {a['legs']} legs."),
        (f"What sound does a {a['kind']} make?", f"The {a['kind']} says {a['sound']}."),
    ]


def render_dialog(rng, w):
    """A chat about a training-half person (mixed training: their facts in QA form, including the task
    sets' questions), or, without mixed training, about a city and an animal."""
    if not (w.qa_mixed and w.train_people):
        turns = rng.sample(place_turns(rng, w), rng.randrange(3, 6))
        return "\n".join(f"User: {q}\nAssistant: {a}" for q, a in turns)
    p = rng.choice(w.train_people)
    c = p["city"]
    qa = [(q, a) for _, q, a, _ in qa_pairs(p)]
    turns = rng.sample(dialog_turns(rng, p) + qa, rng.randrange(3, 7))
    opener = rng.choice(
        [
            "Hi! Can you tell me about",
            "Hello, I have some questions about",
            "Good morning. I want to learn about",
            "Hey, do you know",
            "Who is",
            "I am writing a report on",
            "Quick question about",
        ]
    )
    greet = rng.choice(["Of course.", "Sure!", "Yes, I can help.", "Happy to.", "Certainly."])
    intro = rng.choice(
        [
            f"{p['name']} lives in {c['name']}.",
            f"{p['name']} is a {p['job'][0]}.",
            f"{p['name']} is from {c['name']} in {c['country'][0]}.",
        ]
    )
    lines = [
        f"User: {opener} {p['name']}?",
        f"Assistant: {greet} {intro} {rng.choice(['What would you like to know?', 'Ask away.', ''])}".rstrip(),
    ]
    for qu, an in turns:
        lines += [f"User: {qu}", f"Assistant: {an}"]
    if rng.random() < 0.7:
        lines += [
            f"User: {rng.choice(['Thanks!', 'Thank you, that helps.', 'Great, thanks a lot.', 'Perfect.'])}",
            f"Assistant: {rng.choice(['You are welcome.', 'Happy to help!', 'Any time.', 'Glad I could help.'])}",
        ]
    return "\n".join(lines)


def render_dialog_zh(rng, w):
    """A Chinese chat about a training-half person (mixed training), or about a city."""
    if w.qa_mixed and w.train_people:
        return qa_dialog(rng, rng.choice(w.train_people), "zh")
    c = rng.choice(w.cities)
    return f"User: {c['zh']}在哪里？\nAssistant: {c['zh']}是{c['country'][1]}的一座城市。"


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
