"""GRPO's single-fact task: questions about the world's people (city, job, pet), checked by the world.

    train, heldout, candidates = fact_problems(world_seed=0)     # [{"prompt", "answer", "attribute", ...}]
    fact_reward("Zoelfa.", "Zoelfa", candidates["city"])         # {"correct": True, "reward": 1.0}
    python 06_rlhf_dpo/grpo.py --run runs/tiny --task facts       # uses them

Why this task and not 01's arithmetic: RL can only sharpen what sampling already finds. GRPO's advantage
is r_i − mean(r) within a group of G answers to one question; a question the model never answers right
in G tries gives A = 0 for all G and no gradient. The 1 M-parameter tiny model solves 01's two-digit
problems 0 times in 200 (pass@1 = pass@8 = 0), and after a supervised warm-up on small sums it still
cannot add an (a, b) it never saw (it memorizes the table, 0.03 on unseen pairs). The facts are
different: 04's pretraining stored them for every person ("Ansel Roha is a nurse who lives in Zoelfa"
is recalled 95 % of the time in the corpus's wording), but asked in a chat, in other words, the model
answers right only sometimes: pass@8 is several times pass@1, the regime where RL helps
(DeepSeekMath §5.2.2: RL raises pass@1 / Maj@K while pass@K barely moves). What GRPO sharpens here is
which city a *training* person lives in, which no held-out person can use, so grpo.py's default is the
two-hop task built on these questions (hop_task.py), whose skill carries to new people.

Held out by wording AND by person, so no held-out question shares form and subject with a training one:
- form: training questions use TRAIN_TEMPLATES, held-out ones HELDOUT_TEMPLATES, worded unlike the
  training templates and unlike any question or fact sentence 01's corpus uses (so no held-out probe
  appears verbatim in the pretraining text either; the tests check world.py's source);
- subject: every third person (HELDOUT_EVERY) is asked about only in held-out questions.
The person plays the part a number range plays in arithmetic: a held-out answer cannot be recalled from
a training question. `overlap` checks both; the tests call it.

The reward is the truth, not a model: 1 if the answer names the right candidate of that attribute and
no other (listing every city would otherwise win), else 0 (`fact_reward`).

Interview questions it answers:
- Why must the starting model sometimes solve the task? (GRPO's group baseline makes the advantage 0
  for a group that scores all alike; with pass@G ≈ 0 every group is all-wrong and there is no gradient)
- What does RL add over what pretraining stored? (no new facts: it raises the probability of the right
  one among those the model already samples, pass@1 towards pass@k)
- How do you hold out such a task honestly? (by wording and by subject, both, and check neither the
  wording nor the question appears in the training data)
"""

import json
from collections import Counter
import re
import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data")]
from common.cli import UserError
from world import WorldConfig, build_world  # 01_data (public functions only)

HELDOUT_EVERY = 3  # person i is held out when i % 3 == 0: a third of the world's people
ANSWER = {
    "city": lambda p: p["city"]["name"],
    "job": lambda p: p["job"][0],
    "pet": lambda p: p["pet"]["kind"],
}
TRAIN_TEMPLATES = {
    "city": ["Where does {name} live?", "Which city is {name} from?", "What city is home to {name}?"],
    "job": ["What is {name}'s job?", "What does {name} do for a living?", "What work does {name} do?"],
    "pet": [
        "What kind of pet does {name} have?",
        "Which animal does {name} keep as a pet?",
        "What pet does {name} own?",
    ],
}
HELDOUT_TEMPLATES = {
    "city": ["In which city does {name} live?", "What city does {name} live in?"],
    "job": ["What is the job of {name}?", "What job does {name} have?"],
    "pet": ["What animal is {name}'s pet?", "Which pet does {name} have?"],
}


def world_seed_of(run) -> int:
    """The seed 01 built the run's world from (its manifest's config; WorldConfig's default when the
    config names none), so the questions ask about the people the model was pretrained on."""
    path = Path(run) / "data" / "manifest.json"
    try:
        return int(json.loads(path.read_text())["config"].get("seed", WorldConfig().seed))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path}: cannot read the world's seed ({e}); run `python 01_data/prepare.py --out {run}` "
            "or pass --train-file/--heldout-file"
        ) from None


def problems_split_by_person(people, train_templates, heldout_templates, problem) -> tuple:
    """(train, heldout): problem(person, attribute, template, form) for every person, attribute and
    template; every HELDOUT_EVERY-th person is held out and asked only in `heldout_templates`."""
    split = {"train": [], "heldout": []}
    for i, p in enumerate(people):
        name = "heldout" if i % HELDOUT_EVERY == 0 else "train"
        templates = heldout_templates if name == "heldout" else train_templates
        for attribute in ANSWER:
            for t, template in enumerate(templates[attribute]):
                split[name].append(problem(p, attribute, template, f"{name}:{attribute}:{t}"))
    return split["train"], split["heldout"]


def fact_problems(world_seed=0) -> tuple:
    """(train, heldout, candidates): every (person, attribute, template) question once, split by person
    and template; a problem is {"prompt", "answer", "attribute", "subject", "form"}; candidates maps an
    attribute to every answer the world has for it (the reward's list of wrong answers)."""
    people = build_world(WorldConfig(seed=world_seed)).people
    candidates = {a: sorted({get(p) for p in people}) for a, get in ANSWER.items()}

    def problem(p, attribute, template, form):
        prompt = template.format(name=p["name"])
        return {
            "prompt": prompt,
            "answer": ANSWER[attribute](p),
            "attribute": attribute,
            "subject": p["name"],
            "form": form,
        }

    return (*problems_split_by_person(people, TRAIN_TEMPLATES, HELDOUT_TEMPLATES, problem), candidates)


def fact_reward(text: str, answer: str, candidates, subject: str = "") -> dict:
    """{"correct": the text names `answer` and no other candidate (whole words, any case), "reward": 0/1}.
    The subject's own name is removed first: a person may share a word with a city (Ansel Zoelfa)."""
    if subject:
        text = re.sub(re.escape(subject), " ", text, flags=re.IGNORECASE)
    words = " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "
    named = [c for c in candidates if f" {c.lower()} " in words]
    correct = len(named) == 1 and named[0].lower() == answer.lower()
    return {"correct": correct, "reward": float(correct)}


def fact_correct(problem, text, candidates) -> bool:
    """The answer `text` to `problem` names its answer and no other (fact_reward without the reward)."""
    return fact_reward(text, problem["answer"], candidates[problem["attribute"]], problem["subject"])[
        "correct"
    ]


def majority_correct(train, heldout) -> list:
    """Per held-out problem, 1.0 when the commonest training answer to its attribute is right: the cheap
    baseline (a model that learnt only which city, job or pet is most frequent)."""
    common = {
        a: Counter(p["answer"] for p in train if p["attribute"] == a).most_common(1)[0][0]
        for a in {p["attribute"] for p in train}
    }
    return [float(p["answer"] == common.get(p["attribute"])) for p in heldout]


def overlap(train, heldout) -> dict:
    """What held-out problems share with training ones; every value must be empty for an honest split:
    "templates" (a held-out wording also used in training), "subjects" (a person asked about in both),
    "both" (a held-out problem sharing wording and subject), "prompts" (identical questions)."""
    wording = lambda p: p["prompt"].replace(p["subject"], "{name}")
    tr_wording, tr_subjects = {wording(p) for p in train}, {p["subject"] for p in train}
    return {
        "templates": sorted({wording(p) for p in heldout} & tr_wording),
        "subjects": sorted({p["subject"] for p in heldout} & tr_subjects),
        "both": [p["prompt"] for p in heldout if wording(p) in tr_wording and p["subject"] in tr_subjects],
        "prompts": sorted({p["prompt"] for p in heldout} & {p["prompt"] for p in train}),
    }
