"""The baselines SFT must beat, and the bar that says whether it did.

SFT's held-out score means something only beside what the model could do without it. Three cheap
contenders answer the same held-out questions, scored the same way (exact match on the answer span):

    base, zero-shot   the pretrained model, prompted with the chat template alone
    base, few-shot    the same model with `shots` training conversations before the question, in the
                      same template: it sees the answer format without a gradient step (GPT-3's
                      in-context learning), so "SFT beats the base" cannot mean "SFT learnt to stop"
    majority answer   no model: the commonest training answer to the same question form, the subject's
                      name put in ("Where does <S> live?" -> "<S> lives in <commonest city>.")

Every answer is cut to its span before scoring (`answer_span`: up to the first newline or chat marker),
so a base model that never emits <|end|> is not scored 0 for the text it appends after a right answer.

The bar: SFT's exact match minus the strongest baseline's, per question (paired), with a 95 % paired
bootstrap interval that must lie wholly above 0 (common.outcome.make_bar).

Interview questions it answers:
- Why is "SFT beats the base model" a weak claim? (a base prompted zero-shot does not know the format and
  never stops: exact match 0 by construction; the fair baseline is the base with a few examples in its
  prompt, and a lookup of the commonest answer)
- Why a paired interval? (both systems answer the same questions; the per-question difference removes
  the questions' shared difficulty, so the interval is far narrower than two separate ones)
"""

import random
import re
import sys
from collections import Counter
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.outcome import make_bar
from common.stats import paired_bootstrap_interval, wilson_interval

from metrics import answer_in, exact_match

PLACEHOLDER = "<S>"
MARKER = re.compile(r"<\|[a-z]+\|>")  # a chat-template marker the model wrote as text


def answer_span(text: str) -> str:
    """The answer proper: the text up to the first newline or chat marker, stripped."""
    return MARKER.split(text, maxsplit=1)[0].split("\n", 1)[0].strip()


def few_shot_conversations(held: list, train: list, shots: int, seed: int = 0) -> list:
    """Each held-out conversation with the same `shots` training conversations (single-turn, chosen
    once by `seed`) before it: [user, assistant] * shots + the held-out turns."""
    pool = [r["messages"] for r in train if len(r["messages"]) == 2]
    examples = random.Random(seed).sample(pool, min(shots, len(pool)))
    prefix = [m for conv in examples for m in conv]
    return [prefix + r["messages"] for r in held]


def question_form(record) -> tuple:
    """(question, answer) with the record's subject replaced by a placeholder: the question's form."""
    question, answer = record["messages"][-2]["content"], record["messages"][-1]["content"]
    subject = record.get("subject")
    if subject:
        question, answer = question.replace(subject, PLACEHOLDER), answer.replace(subject, PLACEHOLDER)
    return question, answer


def majority_answers(held: list, train: list) -> list:
    """The commonest training answer to each held-out question's form (the subject's name filled in);
    the commonest answer overall for a form never trained on."""
    by_form = {}
    for r in train:
        q, a = question_form(r)
        by_form.setdefault(q, Counter())[a] += 1
    overall = Counter(question_form(r)[1] for r in train).most_common(1)[0][0] if train else ""
    out = []
    for r in held:
        q, _ = question_form(r)
        a = by_form[q].most_common(1)[0][0] if q in by_form else overall
        out.append(a.replace(PLACEHOLDER, r.get("subject") or PLACEHOLDER))
    return out


def em_scores(answers: list, held: list) -> list:
    """Per question 1.0 / 0.0: exact match of the answer span with the reference answer turn."""
    return [exact_match(answer_span(a), r["messages"][-1]["content"]) for a, r in zip(answers, held)]


def answer_correct(prediction: str, answer) -> float:
    """1.0 when the answer span states the short answer: metrics.answer_in for words; for a Chinese
    answer (no spaces to split on) the characters appear in the span. A number (01's arithmetic
    records store the answer as an int) is compared as its digits."""
    span, answer = answer_span(prediction), str(answer)
    if any("\u3400" <= c <= "\u9fff" for c in answer):
        return float(bool(answer) and answer in span)
    return answer_in(span, answer)


def acc_scores(answers: list, held: list) -> list:
    """Per question 1.0 / 0.0: the answer span states the record's short answer ("answer")."""
    return [answer_correct(a, r["answer"]) for a, r in zip(answers, held)]


def majority_short_answers(held: list, train: list) -> list:
    """Per held-out record: the commonest training short answer of the same attribute and language (the
    majority baseline of answer accuracy; records without an "attribute" use their question form)."""
    key = lambda r: (r.get("attribute") or question_form(r)[0], r.get("lang", "en"))
    counts = {}
    for r in train:
        if isinstance(r.get("answer"), str):
            counts.setdefault(key(r), Counter())[r["answer"]] += 1
    return [counts[key(r)].most_common(1)[0][0] if key(r) in counts else "" for r in held]


def goal_bar(metric: str, scores: list, goal: float, baselines: dict, note: str = "") -> dict:
    """An absolute goal (issue 23: answer accuracy >= 0.8, exact match >= 0.7 on the held-out half): the
    share's 95 % Wilson interval must lie wholly at or above max(goal, the strongest baseline's share),
    so the bar fails when the model is short of the goal or no better than a cheap baseline."""
    best_name, best = max(baselines.items(), key=lambda kv: sum(kv[1]) / max(len(kv[1]), 1))
    base = sum(best) / max(len(best), 1)
    s = summary(scores)
    return make_bar(
        metric,
        s["mean"],
        threshold=max(goal, base),
        direction="higher",
        baseline=base,
        baseline_name=best_name,
        interval=s["interval"],
        n=s["n"],
        note=f"goal >= {goal:g} (issue 23); {note}".rstrip("; "),
        inclusive=True,
    )


def summary(scores: list) -> dict:
    """{"mean", "interval" (Wilson 95 % of a share), "n"} of per-item scores in [0, 1]."""
    n = len(scores)
    return {"mean": sum(scores) / n, "interval": list(wilson_interval(sum(scores), n)), "n": n}


def paired_bar(metric: str, name: str, scores: list, contenders: dict, note: str = "") -> dict:
    """`name`'s per-item scores minus the strongest contender's (name -> scores on the same items),
    paired bootstrap 95 % interval, passing when it lies wholly above 0 (06's bars use it too)."""
    best, base = max(contenders.items(), key=lambda kv: sum(kv[1]))
    table = {k: summary(v) for k, v in {**contenders, name: scores}.items()}
    shares = "; ".join(
        f"{k} {v['mean']:.3f} [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]" for k, v in table.items()
    )
    return make_bar(
        f"{metric}: {name} minus the strongest baseline (paired)",
        table[name]["mean"] - table[best]["mean"],
        threshold=0.0,
        direction="higher",
        baseline=table[best]["mean"],
        baseline_name=best,
        interval=paired_bootstrap_interval(scores, base),
        n=len(scores),
        note=f"{shares}{'; ' + note if note else ''}",
    )


def sft_bar(tuned: list, baselines: dict, held: list, what: str = "SFT") -> tuple:
    """(bar, table): the bar is the exact match of `tuned` answers minus the strongest baseline's
    (baselines: name -> answers), paired over the held-out questions, passing when the 95 % interval
    lies wholly above 0; table: name -> summary() of every contender's exact match."""
    scored = {name: em_scores(a, held) for name, a in baselines.items()}
    ours = em_scores(tuned, held)
    table = {k: summary(v) for k, v in {**scored, what: ours}.items()}
    return paired_bar("held-out exact match", what, ours, scored), table
