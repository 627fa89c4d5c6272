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
near-duplicates of each other (about 1 in 200 at Jaccard >= 0.5 on the default corpus; input_documents.py's
`unique_documents` drops those before injecting noise, so every near-duplicate left is a labelled one).

This file is the world itself; world_facts.py turns facts into sentences, world_dialog.py writes the
chats, world_corpus.py renders the documents of every domain and mixes them, and tasks.py renders the
task sets for stages 05-07 from the same world.

Same seed -> byte-identical output: only `random.Random(seed)` is used, and no set of strings is ever
iterated (Python salts string hashes per process).

    from world import WorldConfig, build_world
    w = build_world(WorldConfig(seed=0))     # w.people, w.cities, w.species, ... (one source of truth)
    python 01_data/world_corpus.py --seed 0 --chars 20000     # print a few rendered documents

Interview questions it answers:
- Why train on synthetic data at all? (controlled facts -> measurable learning; no licence/PII issues;
  but it lacks real diversity, so a model trained only on it does not generalize to real text)
- How do you keep facts consistent across a generated corpus? (one source of truth, rendered many ways)
- How do you test knowledge extraction rather than memorization? (hold people out of fine-tuning and
  out of every non-biography document; ask them questions in a form pretraining never used for them)
"""

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from biographies import biography_pool

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
