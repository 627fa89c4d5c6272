"""On-policy factual preference pairs (Tian et al. 2023, "Fine-tuning Language Models for Factuality").

    records = qa_records("runs/tiny/data/tasks/sft_train.jsonl")        # questions + the world's answers
    samples = sample_answers(policy, tok, records, n=8, temperature=1.0, max_new_tokens=24, seed=0)
    pairs, stats = build_pairs(records, samples, max_pairs=4, seed=0)   # correct ≻ wrong, per question

The recipe, as in the paper (which judged each sampled biography's atomic facts against Wikipedia):
for each training question x, sample n answers y_1..y_n ~ π_SFT(· | x) at temperature T > 0 (on-policy:
the very answers the model gives), judge each against the truth the task file carries, and pair a
correct answer (chosen) with a wrong one (rejected). No template writes either side: both are the SFT
model's own words, so the pair differs where the model is actually unsure.

    judge(y, x) = answer_in(answer_span(y), short answer of x)      (05's metrics: the fact, any phrasing)

A question yields pairs only when its samples disagree: all correct (the model knows it) or all wrong
(it does not) gives none - `stats` counts both. A sample that did not emit <|end|> after its answer (a
barely trained model at T = 1 often runs on: "Ansel Roha lives in Zoelfa.anoAnsel Roha is 49...") is
cut after its first sentence (`first_sentence`), the answer it gave, and closed with <|end|> as the
greedy decoder does; one with no sentence end at all is dropped. Identical texts are kept once. Pairs are the cartesian product correct × wrong, shuffled and cut to `max_pairs` per
question, so one unsure question cannot dominate the data.

With gold_chosen, a question whose samples are all wrong pairs the task file's answer turn (the SFT
target, off-policy) with a wrong sample; off by default (on-policy only), on in the micro preset so a
barely trained model still yields pairs.

Also here: `length_balanced`, the style pairs (rude, rambling) cut to as many chosen-longer as
chosen-shorter pairs, so "prefer the shorter response" scores exactly 1/2 on them (dpo.py's sanity check).

Interview questions it answers:
- Why sample the pairs from the model itself? (DPO's gradient is largest where π ranks the pair wrong
  or barely right; the model's own wrong answers are where it is unsure, while a templated wrong answer
  is one it already ranks far below: the style pairs start at 0.99 pair accuracy after SFT)
- Why a temperature above 0? (greedy gives one answer per question, so there is nothing to compare;
  sampling at T = 1 draws from π itself, the distribution DPO's log-ratios are about)
- Which questions give no pair, and what does that say? (all-correct: known facts; all-wrong: facts the
  model has not stored or cannot extract; DPO can only sharpen what is already sometimes right)
"""

import random
import re
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from common.cli import UserError
from chat_template import encode_prompt  # 05_sft_lora
from metrics import answer_in, exact_match  # 05_sft_lora
from sft_baselines import answer_span  # 05_sft_lora
from sft_data import read_conversations  # 05_sft_lora

from rollouts import decode_responses, sample_responses, stop_ids


SENTENCE_END = re.compile(r"[.!?。！？]")


def first_sentence(text: str) -> str:
    """The text up to and including its first sentence end ("" when there is none), after 05's
    answer_span (which cuts at a newline or a chat marker the model wrote as text)."""
    span = answer_span(text)
    m = SENTENCE_END.search(span)
    return span[: m.end()].strip() if m else ""


def response_text(sample: dict) -> str:
    """The answer a sample gave, in the model's own tokens: all of it when it stopped, else its first
    sentence ("" = unusable). The leading space stays: SFT's answers start with one (" Noin Marora lives
    in ...", 01's answer_content) and " Noin" is another token than "Noin", so a stripped answer is a
    token sequence the model never samples (log π −19 instead of −0.2 on a greedy answer): off-policy."""
    text = sample["text"]
    lead = text[: len(text) - len(text.lstrip())]
    if sample["stopped"]:
        return text.rstrip() if text.strip() else ""
    sentence = first_sentence(text)
    return lead + sentence if sentence else ""


def qa_records(path) -> list:
    """The question-answer records of an sft task file, each ending with the assistant's answer and
    carrying the short answer ("answer") the judge checks; a UserError naming the file otherwise."""
    records = read_conversations(path)
    bad = [
        i
        for i, r in enumerate(records, 1)
        if not isinstance(r.get("answer"), str) or not r["answer"] or r["messages"][-1]["role"] != "assistant"
    ]
    if bad:
        raise UserError(
            f'{path}: record {bad[0]} (and {len(bad) - 1} more) has no short "answer" or does not end '
            'with the assistant\'s answer; each line needs {"messages": [..., {"role": "assistant", ...}], '
            '"answer": "the fact"}'
        )
    if not records:
        raise UserError(f"{path}: no question-answer record; regenerate it with 01_data/prepare.py")
    return records


def question_of(record) -> list:
    """The conversation up to the question (every turn before the reference answer)."""
    return record["messages"][:-1]


def judge(text: str, record) -> dict:
    """{"correct": the short answer is stated, "exact": the answer span equals the reference turn}."""
    span = answer_span(text)
    return {
        "correct": answer_in(span, record["answer"]),
        "exact": exact_match(span, record["messages"][-1]["content"]),
    }


@torch.no_grad()
def sample_answers(policy, tok, records, n, temperature, max_new_tokens, seed=0) -> list:
    """n sampled answers per record: [[{"text", "stopped"}] * n] (03's sampler at `temperature`)."""
    device = next(policy.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    prompts = [encode_prompt(tok, question_of(r)) for r in records]
    responses = sample_responses(policy, tok, prompts, n, max_new_tokens, temperature, g)
    stops = set(stop_ids(tok))
    texts = decode_responses(tok, responses)
    flat = [{"text": t, "stopped": bool(r) and r[-1] in stops} for t, r in zip(texts, responses)]
    return [flat[i * n : (i + 1) * n] for i in range(len(records))]


def build_pairs(records, samples, max_pairs=4, seed=0, gold_chosen=False) -> tuple:
    """(pairs, stats): preference pairs {"prompt", "chosen", "rejected", "rule", "subject"} from judged
    samples (module docstring), and counts: questions, with_pair, all_correct, all_wrong, not_stopped
    (cut to their first sentence), dropped (no sentence end), gold_chosen, pairs, sample_accuracy (share
    of the usable samples that are correct)."""
    rng = random.Random(seed)
    pairs = []
    stats = dict(
        questions=len(records),
        with_pair=0,
        all_correct=0,
        all_wrong=0,
        not_stopped=0,
        dropped=0,
        gold_chosen=0,
    )
    judged_n = judged_correct = 0
    for record, answers in zip(records, samples, strict=True):
        stats["not_stopped"] += sum(not a["stopped"] for a in answers)
        stopped = [t for t in map(response_text, answers) if t]
        stats["dropped"] += len(answers) - len(stopped)
        verdicts = [judge(t, record)["correct"] for t in stopped]
        judged_n, judged_correct = judged_n + len(verdicts), judged_correct + sum(verdicts)
        correct = list(dict.fromkeys(t for t, v in zip(stopped, verdicts) if v and t))
        wrong = list(dict.fromkeys(t for t, v in zip(stopped, verdicts) if not v and t))
        rule = "factual_on_policy"
        if correct and not wrong:
            stats["all_correct"] += 1
            continue
        if not correct:
            stats["all_wrong"] += 1
            if not (gold_chosen and wrong):
                continue
            correct, rule = [record["messages"][-1]["content"]], "factual_gold_chosen"
            stats["gold_chosen"] += 1
        combos = [(c, w) for c in correct for w in wrong]
        rng.shuffle(combos)
        stats["with_pair"] += 1
        for c, w in combos[:max_pairs]:
            pairs.append(
                {
                    "prompt": question_of(record),
                    "chosen": c,
                    "rejected": w,
                    "rule": rule,
                    "subject": record.get("subject", ""),
                }
            )
    stats["pairs"] = len(pairs)
    stats["sample_accuracy"] = judged_correct / judged_n if judged_n else 0.0
    return pairs, stats


def on_policy_pairs(policy, tok, records, cfg, seed, gold_chosen=False) -> tuple:
    """(pairs, stats) for `records`, sampled and judged with cfg.samples, cfg.temperature,
    cfg.max_new_tokens, cfg.pairs_per_prompt (dpo.py's options)."""
    samples = sample_answers(policy, tok, records, cfg.samples, cfg.temperature, cfg.max_new_tokens, seed)
    return build_pairs(records, samples, cfg.pairs_per_prompt, seed, gold_chosen)


def length_balanced(pairs, chosen="chosen", rejected="rejected", seed=0) -> list:
    """As many chosen-longer as chosen-shorter pairs (equal lengths dropped; lengths of p[chosen] and
    p[rejected]: text or token ids), the larger side sampled down: on the result "prefer the shorter
    response" scores exactly 1/2."""
    longer = [p for p in pairs if len(p[chosen]) > len(p[rejected])]
    shorter = [p for p in pairs if len(p[chosen]) < len(p[rejected])]
    k = min(len(longer), len(shorter))
    rng = random.Random(seed)
    return rng.sample(longer, k) + rng.sample(shorter, k)
