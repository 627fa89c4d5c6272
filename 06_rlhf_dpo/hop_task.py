"""A two-hop GRPO task: "In which city does the best friend of X live?", checked by the world.

    train, heldout, candidates = hop_problems(world_seed=0)    # same problem dicts as fact_task's
    fact_correct(heldout[0], "Zoelfa.", candidates)           # the reward: fact_task.fact_reward
    task = question_task("hop-given", world_seed=0, tok=tok)  # prompts, reward, majority: grpo.py, rl_compare.py
    python 06_rlhf_dpo/grpo.py --run runs/tiny                 # --task hop-given, the default: meets GRPO's goal
    python 06_rlhf_dpo/grpo.py --run runs/tiny --task hop      # two hops from memory: out of reach

Why a second task: on fact_task's single-fact questions GRPO sharpens which city a *training* person
lives in, and that cannot reach a held-out person (README, GRPO). A two-hop question asks for a skill
instead of a fact: find X's best friend, then recall the friend's city, job or pet. Both facts are
stored by pretraining (biographies say "X's best friend is Y" and "Y lives in Z"); composing them is what
the SFT model rarely does, and composing is the same on every person, so what GRPO learns on
the training people can carry to the held-out ones.

Held out by person AND by wording, as in fact_task: the asked-about person X of every third person
(fact_task.HELDOUT_EVERY) appears only in held-out questions, in HELDOUT_TEMPLATES, worded unlike the
training templates. The friend Y may be the friend of a training person too (friends are drawn from
01's training half): the held-out part is the chain from X, not Y's facts. `fact_task.overlap` checks
the split; the answer is Y's attribute, and the reward is fact_task.fact_reward: 1 if the answer names
the right city/job/pet and no other candidate of that kind.

What was measured (README, GRPO): the tiny SFT model recalls whose best friend is whom 2 % of the time
but the friend's facts 90 % of the time, so `--task hop` starts at pass@1 0.02 and GRPO cannot move it.
Naming the friend in the question (given_friend, --task hop-given) leaves the skill of answering about
Y rather than X: held-out pass@1 0.03 -> 0.28 / 0.29 (two seeds, 80 steps; 0.233 at the default 40
steps, which pass the goal too, so hop-given is grpo.py's default task), on people and on friends
GRPO never trained on (the held-out answers are not memorized); it carries to the held-out city
wording, hardly to the job and pet wordings.

Interview questions it answers:
- Why does RL on single facts not generalize to new subjects, and what task does? (a fact about a
  training person is no use on another person; a procedure, hop to the friend and then to the
  attribute, is the same for everyone)
- What does a two-hop question test that one hop does not? (composition of two stored facts: models
  often store both and still fail to chain them, the "two-hop curse")
"""

import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data")]
from world import WorldConfig, build_world  # 01_data (public functions only)

from arithmetic_task import problem_prompt
from fact_task import ANSWER, fact_correct, fact_problems, majority_correct, problems_split_by_person

TRAIN_TEMPLATES = {
    "city": ["Where does {name}'s best friend live?", "Which city is {name}'s best friend from?"],
    "job": ["What is {name}'s best friend's job?", "What does {name}'s best friend do for a living?"],
    "pet": ["What kind of pet does {name}'s best friend have?", "What pet does {name}'s best friend own?"],
}
HELDOUT_TEMPLATES = {
    "city": ["In which city does the best friend of {name} live?"],
    "job": ["What job does the best friend of {name} have?"],
    "pet": ["Which animal is the pet of the best friend of {name}?"],
}
GIVEN = "{name} and {friend} are best friends. "  # 01's biographies word the fact this way too


def hop_problems(world_seed=0, given_friend=False) -> tuple:
    """(train, heldout, candidates) as fact_task.fact_problems, but each question asks for the best
    friend's city, job or pet; "friend" holds the friend's name (the hidden middle hop). given_friend:
    the question first states the friendship ("X and Y are best friends."), so only the second hop and
    answering about Y rather than X are left to the model (--task hop-given)."""
    people = build_world(WorldConfig(seed=world_seed)).people
    candidates = {a: sorted({get(p) for p in people}) for a, get in ANSWER.items()}

    def problem(p, attribute, template, form):
        given = GIVEN.format(name=p["name"], friend=p["friend"]["name"]) * given_friend
        return {
            "prompt": given + template.format(name=p["name"]),
            "answer": ANSWER[attribute](p["friend"]),
            "attribute": attribute,
            "subject": p["name"],
            "friend": p["friend"]["name"],
            "form": "hop:" + form,
        }

    return (*problems_split_by_person(people, TRAIN_TEMPLATES, HELDOUT_TEMPLATES, problem), candidates)


def question_task(task, world_seed, tok) -> dict:
    """A question task about the world's people, as grpo.py trains and evaluates it and rl_compare.py
    scores every method on it: {"train", "heldout": problems; "prompt": problem -> ids (the question alone,
    no solved example); "reward", "correct": (problem, text) -> 0/1, True/False (fact_task.fact_reward);
    "majority": problems -> the majority answer's 0/1 per problem; "note"}. task: "facts" (fact_task.py),
    "hop" or "hop-given" (the friend named in the question)."""
    if task == "facts":
        train, heldout, candidates = fact_problems(world_seed)
    else:
        train, heldout, candidates = hop_problems(world_seed, given_friend=task == "hop-given")
    return {
        "train": train,
        "heldout": heldout,
        "prompt": lambda p: problem_prompt(tok, p["prompt"], []),
        "reward": lambda p, text: float(fact_correct(p, text, candidates)),
        "correct": lambda p, text: fact_correct(p, text, candidates),
        "majority": lambda ps: majority_correct(train, ps),
        "note": f"held out by wording and by person ({'fact' if task == 'facts' else 'hop'}_task.py)",
    }
