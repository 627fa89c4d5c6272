"""The ground-truth judge: which of two *generated* responses is better under the rule a pair was built by.

01_data built every preference pair by one stated rule (tasks.py); the chosen response is always the
correct answer sentence, the rejected one is wrong, rude or rambling:

    correct_fact          "Noin Marora lives in Calinwi."  vs  "Noin Marora lives in Boro."
    helpful_vs_rude       "Noin Marora lives in Calinwi."  vs  "Ugh, stop bothering me with this."
    concise_vs_rambling   "Noin Marora lives in Calinwi."  vs  "Well, ... Noin Marora lives, I believe, in Calinwi. ..."

A model's answer is neither of the two, so the judge applies what each rule *means* to any text, and
scores a response as a tuple compared left to right (higher is better):

    correct_fact          (states the fact,)
    helpful_vs_rude       (polite and non-empty, states the fact)
    concise_vs_rambling   (non-empty and not rambling, states the fact)

- states the fact: the question's short answer ("Calinwi", from 01's sft files, joined by question)
  appears in the response (05's metrics.answer_in); without a known answer, for correct_fact: the
  words only the chosen response has are all present and the words only the rejected one has are absent.
- rude: one of the phrases 01 builds its rude replies from, or a few common insults, appears.
- rambling: more than twice as many words as the concise reference (the chosen response).

The rule is primary and the fact breaks ties: under helpful_vs_rude a polite wrong answer still beats a
rude one, and two polite answers are told apart by correctness. The judge never looks at a model:
a reward model is scored *by* it, never used as it (it would grade itself).

Interview questions it answers:
- How do you measure a win rate honestly? (a judge independent of what was trained: here the rule,
  in general a held-out human or a stronger model; report ties and a confidence interval)
- Why can a reward model's score rise while the true win rate does not? (the policy finds what the
  reward model rewards but the rule does not care about: reward hacking / overoptimization)
"""

import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from metrics import answer_in, normalize_answer, words  # 05_sft_lora

RULES = ("correct_fact", "helpful_vs_rude", "concise_vs_rambling")
# 01_data/tasks.py's rude replies (train and held-out pools, RUDE) are built from these phrases; the rest
# are common insults
RUDE_PHRASES = (
    "why would i tell you",
    "look it up yourself",
    "figure it out",
    "not telling",
    "silly question",
    "will not answer",
    "stop bothering",
    "ask someone else",
    "not my problem",
    "better things to do",
    "who cares",
    "leave me alone",
    "pointless",
    "wasting my time",
    "ugh",
    "shut up",
    "go away",
    "stupid",
    "idiot",
)
RAMBLING_FACTOR = 2.0


def is_rude(text: str) -> bool:
    joined = " " + " ".join(words(text)) + " "
    return any(f" {' '.join(words(p))} " in joined for p in RUDE_PHRASES)


def is_rambling(text: str, concise_reference: str) -> bool:
    """More than RAMBLING_FACTOR times the words of the concise reference (at least 4 words allowed)."""
    return len(words(text)) > RAMBLING_FACTOR * max(len(words(concise_reference)), 4)


def states_fact(text: str, chosen: str, rejected: str, answer=None) -> bool:
    """The response gives the chosen response's fact (see the module docstring)."""
    if answer:
        return bool(answer_in(text, answer))
    said, good, bad = (
        set(normalize_answer(text).split()),
        set(normalize_answer(chosen).split()),
        set(normalize_answer(rejected).split()),
    )
    return bool(good - bad) and good - bad <= said and not (bad - good) & said


def rule_score(rule: str, response: str, chosen: str, rejected: str, answer=None) -> tuple:
    """The response's score under `rule` as a tuple, compared left to right (higher is better)."""
    fact = int(states_fact(response, chosen, rejected, answer))
    said = bool(words(response))
    if rule == "correct_fact":
        return (fact,)
    if rule == "helpful_vs_rude":
        return (int(said and not is_rude(response)), fact)
    if rule == "concise_vs_rambling":
        return (int(said and not is_rambling(response, chosen)), fact)
    raise ValueError(f"no ground-truth judge for rule {rule!r}; one of {RULES}")


def gold_score(response: str, pair: dict, answer=None) -> float:
    """The gold reward r*(x, y) in [0, 1]: the share of the three things the rules ask for that the response
    does - it states the fact, it is polite (and says something), it is concise (and says something).
    `pair` is any of the prompt's pairs (its chosen reply, the correct answer sentence, sets the fact and
    the concise length). Graded, so a policy that learns to stop rambling but not the fact moves it by 1/3."""
    said = bool(words(response))
    fact = states_fact(response, pair["chosen"], pair["rejected"], answer)
    polite = said and not is_rude(response)
    concise = said and not is_rambling(response, pair["chosen"])
    return (int(fact) + int(polite) + int(concise)) / 3


def judge(rule: str, a: str, b: str, pair: dict, answer=None) -> int:
    """+1 if response a is better than b under the pair's rule, −1 if worse, 0 for a tie."""
    sa = rule_score(rule, a, pair["chosen"], pair["rejected"], answer)
    sb = rule_score(rule, b, pair["chosen"], pair["rejected"], answer)
    return (sa > sb) - (sa < sb)


def answers_by_question(records) -> dict:
    """{question: short answer} from 01's sft records (the last user turn and the "answer" field);
    a question asked twice with different answers is left out (ambiguous)."""
    out, ambiguous = {}, set()
    for r in records:
        q = next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), None)
        if q is None or not isinstance(r.get("answer"), str):
            continue
        if q in out and out[q] != r["answer"]:
            ambiguous.add(q)
        out[q] = r["answer"]
    return {q: a for q, a in out.items() if q not in ambiguous}
