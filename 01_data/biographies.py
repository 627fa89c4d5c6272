"""Biographies and question-answer pairs of the world's people: the facts a model must store and extract.

The knowledge-extraction experiment of Allen-Zhu and Li (Physics of Language Models, Part 3.1, arXiv
2309.14316) in miniature. Every person has five attributes (job, city, age, pet, favorite color) and a
best friend. Pretraining sees them as biographies; fine-tuning sees question-answer pairs for the
*training half* of the people; the test asks the same questions about the *held-out half*, whose facts
appeared in pretraining only inside biographies. The knobs (world.WorldConfig) decide what the
biographies look like:

    bios_per_person   distinct biographies of each person (1 = no augmentation)
    bio_templates     templates per attribute sentence to draw from (1 = always the same wording)
    bio_permute       shuffle the order of the sentences in each biography
    bio_langs         languages the biographies are written in ("en", "zh")
    qa_mixed          question-answer dialogs about the training half inside pretraining ("mixed training")

One biography, with every sentence naming the person in full (the paper's "fullname" variant: a pronoun
after a shuffle would point at nobody):

    Noin Marora works as a tailor. Noin Marora's favorite color is green. Noin Marora lives in Lokaba. ...

The paper's finding, which 05_sft_lora/extraction_ablation.py reproduces: with one fixed biography per
person the model memorizes the text but cannot answer questions about held-out people (it stored the
fact as the continuation of one word sequence, not as an attribute of the person); several biographies
in varied wordings and orders, or QA data mixed into pretraining, make the knowledge extractable.

Interview questions it answers:
- Why can a model that memorized a fact fail to answer a question about it? (the fact is stored as
  "what follows this exact prefix"; extraction needs it stored on the person's name tokens, which
  only varied contexts (augmentation) force)
- What is knowledge augmentation? (the same facts in several wordings, orders and languages, so the
  only thing the documents share is the person-attribute association)
"""

import random

# Attribute sentences: each template states one fact and names the person in full. The first template
# of each attribute is the "corpus phrasing" of the fact-recall probes (world.RECALL_PHRASINGS); no
# template may contain a probe's novel phrasing (tests/test_01_contamination.py checks it).
EN_TEMPLATES = {
    "job": [
        "{name} works as a {job}.",
        "{name} earns a living as a {job}.",
        "{name} has a job as a {job}.",
        "By profession, {name} is a {job}.",
        "{name} spends the working day as a {job}.",
        "{name} is employed as a {job}.",
        "For work, {name} is a {job}.",
        "Every weekday {name} goes to work as a {job}.",
    ],
    "city": [
        "{name} lives in {city}.",
        "{name} makes a home in {city}.",
        "{name} has lived in {city} for years.",
        "The city of {city} is where {name} lives.",
        "{name} settled down in {city}.",
        "The house of {name} stands in {city}.",
        "{name} rents a flat in {city}.",
        "In {city} you can meet {name}, who lives there.",
    ],
    "age": [
        "{name} turned {age} this year.",
        "{name} is {age} years old.",
        "{name} was born {age} years ago.",
        "{name} has just had a birthday and is now {age}.",
        "At {age} years of age, {name} feels young.",
        "{name} counts {age} years.",
        "This year {name} is {age}.",
        "Friends of {name} celebrated the birthday number {age}.",
    ],
    "pet": [
        "{name}'s pet is a {pet} named {pet_name}.",
        "{name} owns a {pet} called {pet_name}.",
        "{name} keeps a {pet} named {pet_name} at home.",
        "{pet_name} the {pet} lives with {name}.",
        "{name} shares the house with a {pet}, {pet_name}.",
        "A {pet} called {pet_name} belongs to {name}.",
        "{name} walks a {pet} named {pet_name} every day.",
        "The pet of {name} is {pet_name}, a {pet}.",
    ],
    "color": [
        "{name}'s favorite color is {color}.",
        "{name} likes the color {color} best.",
        "Of all colors, {name} loves {color} the most.",
        "{name} always wears something {color}.",
        "{color} is the favorite color of {name}.",
        "Ask {name} for a color and the answer is {color}.",
        "{name} painted the front door {color}, the best color of all.",
        "Nothing pleases {name} like the color {color}.",
    ],
    "friend": [
        "{name}'s best friend is {friend}.",
        "{name} and {friend} are best friends.",
        "{name} spends weekends with {friend}, a close friend.",
        "The closest friend of {name} is {friend}.",
    ],
}
ZH_TEMPLATES = {
    "job": ["{name}是一名{job}。", "{name}以当{job}为生。", "{name}做{job}这份工作。", "{name}每天去上班，当{job}。"],
    "city": ["{name}住在{city}。", "{name}的家在{city}。", "{name}在{city}生活了很多年。", "{name}定居在{city}。"],
    "age": ["{name}今年{age}岁。", "{name}已经{age}岁了。", "{name}刚过完{age}岁生日。", "{name}{age}岁。"],
    "pet": ["{name}养了一只{pet}，名叫{pet_name}。", "{name}家里有一只{pet}，叫{pet_name}。",
            "{pet_name}是{name}养的{pet}。", "{name}每天照顾一只叫{pet_name}的{pet}。"],
    "color": ["{name}最喜欢的颜色是{color}。", "{name}最喜欢{color}。", "在所有颜色里，{name}最爱{color}。",
              "{name}总是穿{color}的衣服。"],
    "friend": ["{name}最好的朋友是{friend}。", "{name}和{friend}是最好的朋友。"],
}  # fmt: skip

# The questions of the task sets (tasks.py) and of mixed training: per attribute, the question, the
# answer sentence and the short answer (what "answer accuracy" looks for).
QA_ATTRIBUTES = ("city", "job", "age", "pet", "color")


def slots(p, lang):
    """Template slots of person p in one language."""
    if lang == "zh":
        return dict(
            name=p["zh"],
            job=p["job"][1],
            city=p["city"]["zh"],
            age=p["age"],
            pet=p["pet"]["zh"],
            pet_name=p["pet_name"],
            color=p["color"][1],
            friend=p["friend"]["zh"],
        )
    return dict(
        name=p["name"],
        job=p["job"][0],
        city=p["city"]["name"],
        age=p["age"],
        pet=p["pet"]["kind"],
        pet_name=p["pet_name"],
        color=p["color"][0],
        friend=p["friend"]["name"],
    )


def biography(rng, p, lang, n_templates, permute):
    """One biography of p: one sentence per attribute, each from the first n_templates templates of the
    attribute (0 = all), in the fixed attribute order or, with permute, shuffled."""
    table = ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES
    s = slots(p, lang)
    sentences = []
    for templates in table.values():
        pool = templates[:n_templates] if n_templates else templates
        sentences.append(capitalize(rng.choice(pool).format(**s)))
    if permute:
        rng.shuffle(sentences)
    return ("" if lang == "zh" else " ").join(sentences)


def capitalize(sentence):
    return sentence[0].upper() + sentence[1:]


def biography_pool(seed, people, cfg):
    """{(person index, lang): [biography, ...]}: cfg.bios_per_person distinct biographies per person and
    language (people without Chinese biographies get none in zh). A fixed pool, so the corpus can
    cycle through it and every biography is seen equally often."""
    rng = random.Random(seed * 7919 + 17)
    pool = {}
    for i, p in enumerate(people):
        for lang in cfg.bio_langs:
            if lang == "zh" and not p["zh_bios"]:
                continue
            bios = []
            for _ in range(cfg.bios_per_person * 20):  # distinct texts (a small template set repeats)
                b = biography(rng, p, lang, cfg.bio_templates, cfg.bio_permute)
                if b not in bios:
                    bios.append(b)
                if len(bios) == cfg.bios_per_person:
                    break
            pool[(i, lang)] = bios
    return pool


def qa_pairs(p, lang="en"):
    """[(attribute, question, answer sentence, short answer)] about person p: the task sets' questions."""
    s = slots(p, lang)
    if lang == "zh":
        rows = [
            ("city", "{name}住在哪里？", "{name}住在{city}。", s["city"]),
            ("job", "{name}做什么工作？", "{name}是一名{job}。", s["job"]),
            ("age", "{name}多大了？", "{name}今年{age}岁。", str(s["age"])),
            ("pet", "{name}养了什么宠物？", "{name}养了一只{pet}。", s["pet"]),
            ("color", "{name}最喜欢什么颜色？", "{name}最喜欢的颜色是{color}。", s["color"]),
        ]
    else:
        rows = [
            ("city", "Where does {name} live?", "{name} lives in {city}.", s["city"]),
            ("job", "What is {name}'s job?", "{name} works as a {job}.", s["job"]),
            ("age", "How old is {name}?", "{name} is {age} years old.", str(s["age"])),
            ("pet", "What kind of pet does {name} have?", "{name}'s pet is a {pet}.", s["pet"]),
            ("color", "What is {name}'s favorite color?", "{name}'s favorite color is {color}.", s["color"]),
        ]
    return [(a, q.format(**s), ans.format(**s), short) for a, q, ans, short in rows]


def qa_dialog(rng, p, lang="en"):
    """A pretraining chat of 2-5 questions about p (mixed training: only for the training half)."""
    pairs = rng.sample(qa_pairs(p, lang), rng.randrange(2, 6))
    return "\n".join(f"User: {q}\nAssistant: {a}" for _, q, a, _ in pairs)
