"""Task sets for stages 05-07, rendered from the micro-world (world.py), with held-out parts.

Task sets (written by `write_tasks`, each as `<name>_train.jsonl` and `<name>_heldout.jsonl`, the
held-out part chosen by entity so no held-out question's subject appears in the train part):

    sft_*.jsonl          {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                          a English answer starts with a space (answer_content: the name in the answer
                          is then the same BPE tokens as in the question and the biographies);
                          "subject": person's name, "answer": short answer string, "attribute": "city" |
                          "job" | "age" | "pet" | "color", "lang": "en" | "zh"}: one question per person and
                          attribute (biographies.qa_pairs); the train part holds the training half's
                          questions in English and Chinese and 180 arithmetic conversations (subject
                          "arithmetic <i>") in the answer format; the held-out part the held-out half's
                          English questions
    sft_zh_heldout.jsonl the held-out half's Chinese questions, with "subject_zh" and "bios": "en+zh" (the
                          person has Chinese biographies) or "en only" (the cross-language case)
    preference_*.jsonl   {"prompt": [{"role": "user", "content": q}], "chosen": str, "rejected": str,
                          "rule": "correct_fact" | "helpful_vs_rude" | "concise_vs_rambling"}
                          the rule states why `chosen` is better (the ground truth for 06's reward model / DPO);
                          the rejected replies of the held-out pairs come from pools disjoint from the train
                          pairs' (RUDE, RAMBLE), rude replies are shorter than the answer about half the time,
                          and the held-out part pairs every question of the first PAIRED_HELDOUT (20)
                          held-out people with all three rules (300 pairs)
    recall_*.jsonl       {"prompt": str, "answer": str, "attribute": "job" | "city" | ..., "phrasing":
                          "corpus" | "novel", "subject", "lang"}: knowledge-style completion probes of the
                          *base* model (04's fact_recall.py): "Noin Marora works as" -> "a tailor" (the
                          corpus's phrasing) and "By trade, Noin Marora is" -> "a tailor" (one no document
                          uses); the held-out part uses the same subjects as sft_heldout, so 05 can tell
                          recall (pretraining) from format (SFT)
    arithmetic_*.jsonl   {"prompt": str, "answer": int,
                          "messages": [{"role": "user", ...}, {"role": "assistant", "content": "... The answer is N."}]}
                          the answer is verifiable: 06 GRPO and 07 evaluation parse "The answer is N.";
                          "form" and "numbers" say which problem it is. The held-out part is held out by
                          wording and number range (world.ARITH_RANGES), so it shares form and numbers
                          with no train problem and no problem of the pretraining corpus

Interview questions it answers:
- Why hold out by subject rather than by random question? (a random split puts other questions
  about the same person in train, so the held-out score mixes recall with memorized context)
- What makes a preference pair useful for DPO / a reward model? (one stated reason why `chosen` is
  better, so the learnt preference can be checked; and nothing cheaper than the reason gives it away:
  not the length, not a rejected string seen in training)
- Why hold out arithmetic by template and number range? (every 10th generated problem shares its
  wording and often its very numbers with training problems: the score then measures recall)
"""

import random

from biographies import QA_ATTRIBUTES, qa_pairs
from world import COLORS, JOBS, is_heldout
from world_facts import RECALL_PHRASINGS
from world_corpus import arithmetic_parts, fix_articles


def fact_questions(w, lang="en"):
    """(subject, question, answer sentence, short answer, wrong answer sentence) for every person and
    attribute (biographies.qa_pairs: city, job, age, pet, favorite color), in English or Chinese; the
    wrong answer states another value of the same attribute (06's factual preference pairs)."""
    rng = random.Random(12345)
    out = []
    for p in w.people:
        wrong = dict(p)
        wrong["city"] = rng.choice([c for c in w.cities if c is not p["city"]])
        wrong["job"] = rng.choice([j for j in JOBS if j != p["job"]])
        wrong["age"] = p["age"] + rng.choice([-7, -3, 4, 9])
        wrong["pet"] = rng.choice([a for a in w.species if a is not p["pet"]])
        wrong["color"] = rng.choice([c for c in COLORS if c != p["color"]])
        wrong_answers = {attr: a for attr, _, a, _ in qa_pairs(wrong, lang)}
        for attr, q, a, short in qa_pairs(p, lang):
            out.append((p["name"], q, a, short, wrong_answers[attr]))
    return out


def recall_probes(w):
    """Completion prompts whose next words state one fact (world.RECALL_PHRASINGS), for every person.

    Per person and attribute: one probe in the phrasing the corpus uses ("phrasing": "corpus") and
    one in a phrasing no document uses ("novel", the person's index picks which of the attribute's
    novel phrasings), so 04 reports recall and memorized word order side by side. The answer is the
    fact's first word(s) (an article before it is skipped when scoring); Chinese probes use the
    Chinese name and the Chinese job."""
    out = []
    for i, p in enumerate(w.people):
        answers = {
            "job": p["job"][0],
            "city": p["city"]["name"],
            "pet": p["pet"]["kind"],
            "color": p["color"][0],
            "age": str(p["age"]),
            "job_zh": p["job"][1],
        }
        for attr, (corpus, novel) in RECALL_PHRASINGS.items():
            for phrasing, template in (("corpus", corpus), ("novel", novel[i % len(novel)])):
                prompt = template.format(name=p["name"], zh=p["zh"], job=p["job"][0])
                out.append(
                    {
                        "prompt": fix_articles(prompt),
                        "answer": answers[attr],
                        "attribute": attr,
                        "phrasing": phrasing,
                        "subject": p["name"],
                        "lang": "zh" if attr.endswith("_zh") else "en",
                    }
                )
    return out


RULES = ["correct_fact", "helpful_vs_rude", "concise_vs_rambling"]
PAIRED_HELDOUT = 20  # held-out people whose questions get preference pairs (5 questions x 3 rules each)

# Rejected answers come from pools split in two: the train pairs draw from the first half, the held-out
# pairs from the second, so a reward model cannot pass by remembering the train pairs' exact strings.
# Rude replies come in short and long forms so that "prefer the shorter answer" is right about half the
# time on them; a rambling reply restates the fact in its own words inside filler (it never contains
# the chosen answer verbatim), so length is the rule's point there and nothing else gives it away.
RUDE = (
    # train pool
    ["No.", "Not telling.", "Look it up yourself.", "Why would I tell you? Figure it out on your own, if you can.",
     "Ugh, stop bothering me with this.", "That is a silly question and I will not answer it, so go away."],
    # held-out pool
    ["Go away.", "Ask someone else.", "Nope, not my problem.", "I have better things to do than answer questions like yours.",
     "Who cares? Leave me alone.", "What a pointless thing to ask; I am not wasting my time on you today."],
)  # fmt: skip
RAMBLE = (
    (["Well, that is an interesting question, and there is a lot one could say.", "Let me think about it for a moment.",
      "People ask me this sort of thing all the time, you know."],
     ["I hope that helps, although I could go on and on about it.", "Anyway, that is more or less the story."]),
    (["Hmm, so, where do I even begin with something like this?", "Okay, give me a second, because this takes some explaining.",
      "Funny you should ask, since I was just thinking about that."],
     ["There is a lot more to it, but that is the gist of it all.", "Well, that is what I have heard, anyway, for what it is worth."]),
)  # fmt: skip


def rejected_answer(rng, rule, answer, wrong, heldout):
    """The rejected reply of a preference pair under `rule`, drawn from the train or the held-out pool."""
    if rule == "correct_fact":
        return wrong
    if rule == "helpful_vs_rude":
        pool = RUDE[heldout]
        shorter = [r for r in pool if len(r) < len(answer)]
        longer = [r for r in pool if len(r) > len(answer)]
        side = shorter if shorter and (not longer or rng.random() < 0.5) else longer
        return rng.choice(side)
    opening, closing = RAMBLE[heldout]
    restated = answer.rstrip(".")
    hedges = (
        (" lives in ", " lives, I believe, in "),
        (" works as ", " works, I believe, as "),
        (" has ", " has, I think, "),
        (" is ", " is, as far as I know, "),
    )
    for plain, hedged in hedges:
        if plain in restated:
            restated = restated.replace(plain, hedged, 1)
            break
    else:
        restated = "As far as I know, " + restated
    return f"{rng.choice(opening)} {restated[0].upper() + restated[1:]}. {rng.choice(closing)}"


def answer_content(sentence: str) -> str:
    """The assistant turn of an English fact answer: the sentence after one space (a "dummy prefix").

    Why: byte-level BPE folds the space before a word into the word's token, so "Zomi" at the start
    of a turn (right after <|assistant|>) is other tokens ('Zo', 'mi') than " Zomi" inside the question
    and the biographies (' Zomi'). SFT must copy the held-out name from the question; a model copies a
    token it sees (an induction head), it cannot respell one. Without the space the tiny model answered
    every held-out question with a *training* person's name (name copied 0 of 200, exact match 0.000);
    with it, the answer starts with the question's own name tokens and continues the sentence exactly
    as the biographies wrote it (held-out answer accuracy 0.125 -> 0.250, exact match 0.000 -> 0.190,
    same base; 05 README). SentencePiece's add_dummy_prefix exists for the same reason."""
    return " " + sentence


def task_records(w, seed):
    """{"sft": [...], "preference": [...], "arithmetic": [...]} with a "heldout" flag on each record."""
    rng = random.Random(seed + 2)
    sft, sft_zh, pref, arith = [], [], [], []
    zh_bios = {p["name"]: p["zh_bios"] for p in w.people}
    # Chinese: the training half's questions train (in sft_train, "lang": "zh"); the held-out half's go
    # to sft_zh_heldout, marked by whether that person has Chinese biographies or English ones only
    for k, (subject, q, a, short, _) in enumerate(fact_questions(w, "zh")):
        held = is_heldout(subject)
        record = {
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "subject": subject,
            "answer": short,
            "attribute": QA_ATTRIBUTES[k % len(QA_ATTRIBUTES)],
            "lang": "zh",
            "heldout": held,
        }
        if held:
            zh_name = next(p["zh"] for p in w.people if p["name"] == subject)
            sft_zh.append(
                record | {"subject_zh": zh_name, "bios": "en+zh" if zh_bios[subject] else "en only"}
            )
        else:
            sft_zh.append(record)  # written to sft_train below (sft_zh_train would repeat it)
    paired = {}  # held-out subject -> its order among the held-out people
    for k, (subject, q, a, short, wrong) in enumerate(fact_questions(w)):
        a, wrong = fix_articles(a), fix_articles(wrong)
        held = is_heldout(subject)
        user = [{"role": "user", "content": q}]
        sft.append(
            {
                "messages": user + [{"role": "assistant", "content": answer_content(a)}],
                "subject": subject,
                "answer": short,
                "attribute": QA_ATTRIBUTES[k % len(QA_ATTRIBUTES)],
                "lang": "en",
                "heldout": held,
            }
        )
        # held-out: every rule on every question (3x n) of the first PAIRED_HELDOUT held-out people (the
        # set 06 scores stays near 300 pairs as the world grows)
        if held:
            rules = RULES if paired.setdefault(subject, len(paired)) < PAIRED_HELDOUT else []
        else:
            rules = [rng.choice(RULES)]
        for rule in rules:
            pref.append(
                {"prompt": user, "chosen": a, "rejected": rejected_answer(rng, rule, a, wrong, held)}
                | {"rule": rule, "heldout": held}
            )
    # arithmetic: held out by template and number range (world.arithmetic_parts), not every 10th item
    for held, count in ((False, 2700), (True, 300)):
        for _ in range(count):
            question, answer, form, numbers = arithmetic_parts(rng, w, heldout=held)
            arith.append(
                {
                    "prompt": question,
                    "answer": answer,
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": f"The answer is {answer}."},
                    ],
                    "form": form,
                    "numbers": list(numbers),
                    "heldout": held,
                }
            )
    # SFT also sees some word problems in the answer format, so the SFT model answers "The answer is N."
    # and is right sometimes: GRPO (06) learns only from groups whose rewards differ.
    # (a few: 900 of them drowned the 225 fact questions and SFT stopped copying names from the question)
    sft += [
        {
            "messages": r["messages"],
            "subject": f"arithmetic {i}",
            "answer": str(r["answer"]),
            "heldout": False,
        }
        for i, r in enumerate(arith[:180])
    ]
    sft += [r for r in sft_zh if not r["heldout"]]
    sft_zh = [r for r in sft_zh if r["heldout"]]
    recall = [{**r, "heldout": is_heldout(r["subject"])} for r in recall_probes(w)]
    return {"sft": sft, "sft_zh": sft_zh, "preference": pref, "arithmetic": arith, "recall": recall}


def write_tasks(w, seed, folder, write_jsonl):
    """Write every task set as <name>_train.jsonl / <name>_heldout.jsonl; return {file: records}."""
    counts = {}
    for name, records in task_records(w, seed).items():
        for part, held in (("train", False), ("heldout", True)):
            rows = [{k: v for k, v in r.items() if k != "heldout"} for r in records if r["heldout"] == held]
            if not rows and name == "sft_zh":
                continue  # only a held-out part: the training half's Chinese questions are in sft_train
            counts[f"{name}_{part}.jsonl"] = write_jsonl(folder / f"{name}_{part}.jsonl", rows)
    return counts
