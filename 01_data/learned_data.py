"""Training and held-out test sets for the learned filters (learned_filter.py), from disjoint sources.

    from learned_data import quality_sets, toxicity_sets
    (train_texts, train_labels), (test_texts, test_labels) = quality_sets(seed=0)

Quality (label 1 = low quality, to filter):
    train  good: the synthetic encyclopedia (knowledge documents), TinyStories paragraphs if
                 ../shared/data is there; bad: web spam and boilerplate in style A (keyword
                 stuffing, menus and link lists, cookie and footer notices, lorem ipsum)
    test   good: generated stories and dialogs, Shakespeare and 红楼梦 paragraphs if present;
                 bad: web spam in style B (comment spam, tag clouds, "top 10" listicles, word salad)
Toxicity (label 1 = toxic):
    pool A  toxic sentences composed here from templates x insults; harmless sentences from the
            generated world, including ones with mild words ("stupid", "fool") used harmlessly
    pool B  noise_inject.py's toxic phrasings (which the model never sees when trained on A) and
            harmless sentences from another world seed
    reported both ways: train A -> test B and train B -> test A.

Interview question it answers: what do you train a quality classifier on, and how do you know it
generalizes? (a reference corpus against random web text; test on sources and styles it never saw)
"""

import random
import re
from pathlib import Path

from noise_inject import TOXIC_EN, TOXIC_ZH
from world import WorldConfig, build_world
from world_corpus import generate_corpus

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "text"
PRODUCTS = ["shoes", "phone cases", "loans", "watches", "diet pills", "sunglasses", "VPN", "casino bonus"]
CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Prague"]


def spam_a(rng) -> str:
    """Web junk in style A: keyword stuffing, menus, cookie notices, footers, lorem ipsum."""
    p = rng.choice(PRODUCTS)
    kind = rng.randrange(4)
    if kind == 0:
        return " ".join(
            rng.choice([f"cheap {p}", f"best {p}", f"buy {p} online", f"{p} sale", f"discount {p}"])
            for _ in range(rng.randrange(15, 40))
        )
    if kind == 1:
        items = rng.sample(
            ["Home", "About", "Contact", "Blog", "Shop", "FAQ", "Login", "Register", "Cart", "Help"], 6
        )
        return "\n".join(
            [
                " | ".join(items),
                "We use cookies to give you the best experience. Accept all cookies",
                "© 2024 All rights reserved. Privacy Policy | Terms of Use",
            ]
            * rng.randrange(1, 3)
        )
    if kind == 2:
        return (
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore. "
            * rng.randrange(2, 6)
        )
    return "\n".join(f"{p.title()} {c} | {p} near {c} | {p} {c} cheap" for c in rng.sample(CITIES, 5))


def spam_b(rng, vocabulary) -> str:
    """Web junk in style B (never seen in training): comment spam, tag clouds, listicles, word salad."""
    p = rng.choice(PRODUCTS)
    kind = rng.randrange(4)
    if kind == 0:
        return (
            f"Great post!!! I really like it. Visit my site for the {p} you need, 100% guaranteed, click my profile. "
            * rng.randrange(1, 4)
        )
    if kind == 1:
        return "Tags: " + ", ".join(rng.sample(vocabulary, 30))
    if kind == 2:
        return "\n".join(
            f"{i}. Top {p} in {rng.choice(CITIES)} 2024 - rated #{i}" for i in range(1, rng.randrange(6, 12))
        )
    return " ".join(rng.sample(vocabulary, rng.randrange(40, 80)))  # word salad from real words


def shared_paragraphs(name, n, rng, min_chars=200):
    """Up to n paragraphs of at least min_chars from ../shared/data/text/<name> ([] when absent)."""
    path = SHARED / name
    if not path.exists():
        return []
    paras = [
        p.strip()
        for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")[:3_000_000])
        if len(p.strip()) >= min_chars
    ]
    return rng.sample(paras, min(n, len(paras)))


def quality_sets(seed=0, n=300):
    """((train texts, labels), (test texts, labels)), label 1 = low quality; disjoint sources."""
    rng = random.Random(seed)
    docs = generate_corpus(
        build_world(WorldConfig(seed=seed + 50)),
        seed,
        n * 1500,
        {"knowledge": 0.4, "stories": 0.3, "dialog": 0.3},
    )
    by = {d: [x["text"] for x in docs if x["domain"] == d] for d in ("knowledge", "stories", "dialog")}
    good_train = by["knowledge"][:n] + shared_paragraphs("tinystories_valid_head.txt", n // 2, rng)
    good_test = (
        by["stories"][: n // 2]
        + by["dialog"][: n // 2]
        + shared_paragraphs("tinyshakespeare.txt", n // 4, rng)
        + shared_paragraphs("hongloumeng.txt", n // 4, rng, 60)
    )
    vocabulary = sorted({w for t in good_test for w in t.split() if w.isalpha()})
    bad_train = [spam_a(rng) for _ in range(len(good_train))]
    bad_test = [spam_b(rng, vocabulary) for _ in range(len(good_test))]
    return (good_train + bad_train, [0] * len(good_train) + [1] * len(bad_train)), (
        good_test + bad_test,
        [0] * len(good_test) + [1] * len(bad_test),
    )


INSULTS = ["idiot", "moron", "loser", "clown", "fool", "jerk", "creep", "pig", "rat", "coward"]
ADJECTIVES = ["stupid", "pathetic", "worthless", "disgusting", "brainless", "useless", "ugly", "miserable"]
TOXIC_TEMPLATES = [
    "You are a {adj} {noun}.",
    "{name}, you {adj} {noun}, nobody wants you here.",
    "Shut up, {noun}.",
    "What kind of {adj} {noun} writes this?",
    "Get out of here, you {noun}.",
    "{name} is the most {adj} person I have ever met.",
    "I hate you, {noun}.",
    "Only a {adj} {noun} like {name} would say that.",
    "你这个{zh}！",
    "{name_zh}真是个{zh}。",
    "滚，你这个{zh}。",
]
ZH_INSULTS = ["蠢货", "笨蛋", "白痴", "废物", "混蛋", "猪头"]
MILD = [
    "The stupid old car would not start, so they walked to school.",
    '"Don\'t be a fool," laughed Grandma, and handed him another cookie.',
    "The clown at the party made every child laugh.",
    "Pip felt useless when his kite got stuck in the tree.",
    "小猫笨笨的，总是追着自己的尾巴跑。",
]


def sentences(texts):
    return [s for t in texts for s in re.split(r"(?<=[.!?。！？])\s*", t) if 15 <= len(s) <= 200]


def toxicity_sets(seed=0, n=400):
    """{"A": (texts, labels), "B": (texts, labels)}: label 1 = toxic; A and B share no phrasing."""
    rng = random.Random(seed)
    names = ["Bela", "Tomas", "Mira", "Anno"]
    harmless = {}
    for pool, world_seed in (("A", seed + 60), ("B", seed + 70)):
        docs = generate_corpus(
            build_world(WorldConfig(seed=world_seed)),
            world_seed,
            n * 200,
            {"stories": 0.5, "dialog": 0.5, "knowledge": 0.0},
        )
        harmless[pool] = rng.sample(sentences(x["text"] for x in docs), n)
    toxic_a = [
        rng.choice(TOXIC_TEMPLATES).format(
            adj=rng.choice(ADJECTIVES),
            noun=rng.choice(INSULTS),
            name=rng.choice(names),
            zh=rng.choice(ZH_INSULTS),
            name_zh="贝拉",
        )
        for _ in range(n // 2)
    ]
    slots = {"first": "Kora", "first_zh": "柯拉"}
    toxic_b = [p.format(**slots) for p in TOXIC_EN + TOXIC_ZH]
    a_texts = toxic_a + harmless["A"] + MILD * 4
    b_texts = toxic_b + harmless["B"]
    return {
        "A": (a_texts, [1] * len(toxic_a) + [0] * (len(a_texts) - len(toxic_a))),
        "B": (b_texts, [1] * len(toxic_b) + [0] * (len(b_texts) - len(toxic_b))),
    }
