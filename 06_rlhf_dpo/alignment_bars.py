"""The bars of the alignment methods: each judged on a metric it did not optimize, against SFT and a
cheap baseline, per held-out item and paired, with a 95 % interval.

    gold rule-judge acceptance   the greedy answer does all the pair's rule asks (rule_judge.py: states the
                                 fact, polite, not rambling) - PPO's and RLAIF's metric: never the reward
                                 model they optimized, which would grade itself
    pair accuracy (informative)  log π(y_w) > log π(y_l) (ties 1/2) on the pairs that carry information:
                                 correct_fact pairs, where chosen and rejected differ only in the fact. An
                                 SFT model already ranks nearly every rude or rambling reply below its own
                                 kind of answer, so those pairs measure SFT, not DPO
    pass@1                       greedy arithmetic answer right, on problems held out by wording and numbers

Baselines, on the same items: the SFT model (where every method starts), the majority answer (the
commonest training answer to the question's form: sft_baselines.majority_answers), and for pair
accuracy "prefer the shorter response" (reward_scoring.length_rule_scores). A method passes when its
score minus the strongest baseline's, paired over the items, has a 95 % bootstrap interval wholly
above 0. Win rates against SFT count a tie as 1/2 (Wilson interval) and report the decisive pairs with
a sign test.

Interview questions it answers:
- Why must PPO not be judged by its reward model? (it was optimized against it: a rising RM score can be
  reward hacking; only a judge it never saw - here the rule, in practice people - says it got better)
- Why is "beats SFT" with a strict > meaningless on 200 prompts? (2 -> 8 of 200 is within the noise of
  two greedy runs; a paired interval over the same items says whether the difference is there)
- Which preference pairs carry information? (those the starting model does not already rank right:
  a pair whose rejected reply no model of this kind would write teaches and measures nothing)
"""

import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from common.outcome import make_bar
from common.stats import win_rate_with_ties
from sft_baselines import majority_answers, paired_bar, summary  # noqa: F401 (06 imports them from here); 05_sft_lora
from sft_data import read_conversations  # 05_sft_lora

from rule_judge import answers_by_question, judge

INFORMATIVE_RULES = ("correct_fact",)


def user_question(prompt) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def sft_records(run) -> tuple:
    """(train, heldout) records of 01's sft task files (empty when absent)."""
    files = [Path(run) / "data" / "tasks" / f"sft_{part}.jsonl" for part in ("train", "heldout")]
    return tuple(read_conversations(f) if f.is_file() else [] for f in files)


def short_answers(run) -> dict:
    """{question: short answer} from 01's sft files (what rule_judge checks a response states)."""
    train, held = sft_records(run)
    return answers_by_question(train + held)


def majority_replies(questions: list, run) -> list:
    """The majority-answer baseline's reply to each question: the commonest training answer to its form."""
    train, held = sft_records(run)
    by_q = {r["messages"][-2]["content"]: r for r in train + held if len(r["messages"]) >= 2}
    records = [
        by_q.get(q, {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ""}]})
        for q in questions
    ]
    return majority_answers(records, train) if train else [""] * len(questions)


def group_by_prompt(pairs) -> dict:
    """{question: [pairs]}: the held-out file pairs each question with several rules."""
    out = {}
    for p in pairs:
        out.setdefault(user_question(p["prompt"]), []).append(p)
    return out


def gold_acceptance(texts: list, pair_groups: list, answers: dict) -> list:
    """Per prompt 1.0 when the rule judge rates the response at least as good as the chosen reply under
    every rule the prompt's pairs state (it states the fact, politely, concisely), else 0.0."""
    out = []
    for text, group in zip(texts, pair_groups):
        answer = answers.get(user_question(group[0]["prompt"]))
        out.append(float(all(judge(p["rule"], text, p["chosen"], p, answer) >= 0 for p in group)))
    return out


def win_bar(verdicts: list, name: str) -> dict:
    """Win rate of `name` against SFT (verdicts +1 / 0 / -1 per prompt), ties 1/2, Wilson interval above 1/2."""
    w = win_rate_with_ties(verdicts.count(1), verdicts.count(-1), verdicts.count(0))
    return make_bar(
        f"win rate of {name} against SFT (gold rule judge, ties 1/2)",
        w["win_rate"],
        threshold=0.5,
        direction="higher",
        baseline=0.5,
        baseline_name="SFT against itself",
        interval=w["interval"],
        n=w["n"],
        note=f"{w['wins']} wins, {w['losses']} losses, {w['ties']} ties; {w['decisive']} decisive, "
        f"sign test p = {w['sign_test_p']:.3g}",
    )


def informative(pairs) -> list:
    """Indices of the pairs that carry information (INFORMATIVE_RULES; every pair when none has a rule)."""
    idx = [i for i, p in enumerate(pairs) if p.get("rule") in INFORMATIVE_RULES]
    return idx or list(range(len(pairs)))
