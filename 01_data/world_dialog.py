"""Chats about the world ("User: ...\nAssistant: ..."), the dialog domain of the corpus, in English and
Chinese: with mixed training (WorldConfig.qa_mixed) question-answer dialogs about the training half of
the people (biographies.qa_dialog), otherwise about people, places and turns of everyday talk.

    from world_dialog import render_dialog
    text = render_dialog(random.Random(0), build_world(WorldConfig()))

Every person a chat names comes from the training half (w.train_people): the held-out half's facts
appear only in biographies (world.py). world_corpus.py mixes this domain with the others.

Interview question it answers:
- Why vary the phrasing of each fact across chats? (two chats about one person then share facts but
  rarely their words: the model must store the fact, not the sentence)
"""

import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from biographies import qa_dialog, qa_pairs
from world_facts import pronouns


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
