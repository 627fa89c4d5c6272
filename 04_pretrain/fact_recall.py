"""Does the base model know the facts of its world? A fact-recall probe, scored per attribute.

    python 04_pretrain/fact_recall.py --data runs/tiny            # probes runs/tiny/pretrain/best.pt
    python 04_pretrain/fact_recall.py --data runs/tiny --ckpt runs/tiny/pretrain/ckpt.pt

pretrain.py runs it at the end of every run on the generated world and saves the table in
outcome.json ("fact_recall").

SFT teaches a format; the knowledge must come from pretraining. So before fine-tuning we ask the
base model to complete sentences whose next words state a fact, in phrasings the corpus uses
("Noin Marora works as" -> "a tailor"), for the *held-out* subjects of 01's task sets (the people
whose questions 05 never trains on), and score greedy completions per attribute:

    accuracy(attribute) = share of probes whose completion starts with the true value
    majority baseline   = accuracy of always answering the most common value among the *other*
                          (train) subjects -- what a model gets by knowing the distribution of jobs
                          but nothing about this person

A model that beats the majority baseline clearly has stored per-person facts; one at the baseline
has learnt the template ("works as a <some job>") but not the person. 05 then measures whether SFT
surfaces that knowledge in a question-answer format.

Interview questions it answers:
- Where does an LLM's knowledge come from, pretraining or SFT? (pretraining; SFT teaches the format,
  and fine-tuning on facts the base does not know teaches it to hallucinate confidently)
- How do you probe a base model for knowledge? (cloze-style completions in the corpus's own phrasing,
  scored against a baseline that knows the answer distribution but not the subject)
"""

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import read_jsonl
from common.layout import RunLayout
from common.runs import check_artifact
from bpe import BPETokenizer  # 02_tokenizer
from decoding import generate, left_pad  # 03_model
from gpt import GPT  # 03_model

ARTICLES = ("a ", "an ", "the ")


def completion_matches(completion: str, answer: str) -> bool:
    """True when the completion starts with the answer (after spaces and one article), as a whole word.

    '  a tailor who lives' matches 'tailor'; 'tailors' does not; Chinese compares characters."""
    text = completion.lstrip()
    for art in ARTICLES:
        if text.lower().startswith(art) and not answer.lower().startswith(art.strip()):
            text = text[len(art) :]
            break
    if not text.startswith(answer):
        return False
    rest = text[len(answer) :]
    return not rest or not (rest[0].isalnum() and answer[-1].isascii())


def majority_answers(train_probes) -> dict:
    """{attribute: most common answer among the train subjects} (ties: the first seen)."""
    counts = {}
    for r in train_probes:
        counts.setdefault(r["attribute"], Counter())[r["answer"]] += 1
    return {a: c.most_common(1)[0][0] for a, c in counts.items()}


@torch.no_grad()
def greedy_completions(model, tok, prompts, max_new_tokens=6, batch_size=64) -> list:
    """Greedy continuation text of each prompt (batched with left padding; 03's KV-cache sampler)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [tok.encode_ordinary(p) for p in prompts[i : i + batch_size]]
        idx, mask = left_pad(ids, device=device)
        gen = generate(model, idx, max_new_tokens, temperature=0.0, attention_mask=mask)
        out += [tok.decode(row[idx.shape[1] :].tolist()) for row in gen]
    return out


def fact_recall(model, tok, probes, train_probes, max_new_tokens=6) -> dict:
    """Per attribute: n, accuracy, majority-baseline accuracy, and a few examples."""
    completions = greedy_completions(model, tok, [p["prompt"] for p in probes], max_new_tokens)
    majority = majority_answers(train_probes)
    table = {}
    for attr in sorted({p["attribute"] for p in probes}):
        rows = [(p, c) for p, c in zip(probes, completions) if p["attribute"] == attr]
        table[attr] = {
            "n": len(rows),
            "accuracy": sum(completion_matches(c, p["answer"]) for p, c in rows) / len(rows),
            "majority_baseline": sum(p["answer"] == majority.get(attr) for p, _ in rows) / len(rows),
            "majority_answer": majority.get(attr),
            "examples": [
                {"prompt": p["prompt"], "answer": p["answer"], "completion": c} for p, c in rows[:3]
            ],
        }
    n = sum(r["n"] for r in table.values())
    table["all"] = {
        "n": n,
        "accuracy": sum(r["accuracy"] * r["n"] for r in table.values()) / max(n, 1),
        "majority_baseline": sum(r["majority_baseline"] * r["n"] for r in table.values()) / max(n, 1),
    }
    return table


def load_probes(run: Path):
    """(held-out probes, train probes) from 01's data/tasks/recall_*.jsonl; None when absent (real text)."""
    tasks = RunLayout(run).tasks
    if not (tasks / "recall_heldout.jsonl").is_file():
        return None
    fields = ("prompt", "answer", "attribute")
    types = dict.fromkeys(fields, str)
    return read_jsonl(tasks / "recall_heldout.jsonl", fields, types), read_jsonl(
        tasks / "recall_train.jsonl", fields, types
    )


def format_recall(table) -> str:
    lines = [f"{'attribute':10s} {'n':>4s}  recall  majority baseline"]
    for attr, r in table.items():
        lines.append(
            f"{attr:10s} {r['n']:4d}  {r['accuracy']:6.3f}  {r['majority_baseline']:6.3f}"
            + (f"  ({r['majority_answer']})" if r.get("majority_answer") else "")
        )
    return "\n".join(lines)


def recall_of_checkpoint(run: Path, ckpt: Path, device="cpu"):
    """The recall table of the checkpoint `ckpt` on run's probes; None when the run has none."""
    probes = load_probes(run)
    if probes is None or not Path(ckpt).is_file():
        return None
    model = GPT.from_checkpoint(ckpt, map_location=device).eval()
    return fact_recall(model, BPETokenizer.load(RunLayout(run).tokenizer), *probes)


@dataclass
class RecallConfig:
    data: str = option("", "run folder runs/<name> with data/tasks/ and tokenizer/ (required)")
    ckpt: str = option("", "checkpoint to probe; empty = <data>/pretrain/best.pt")


def main(argv=None):
    cfg, _ = parse_config(RecallConfig, argv, doc=__doc__)
    if not cfg.data:
        raise UserError("--data is required; give the run folder, e.g. --data runs/tiny")
    run = Path(cfg.data)
    if load_probes(run) is None:
        raise UserError(
            f"{run}/data/tasks/recall_heldout.jsonl is missing; the probes come from the generated "
            f"world: rerun `python 01_data/prepare.py --out {run}` without --input"
        )
    ckpt = Path(cfg.ckpt) if cfg.ckpt else RunLayout(run).pretrain / "best.pt"
    check_artifact(ckpt.parent, made_by=RunLayout(run).made_by("pretrain"))
    table = recall_of_checkpoint(run, ckpt)
    print(format_recall(table))
    for ex in table["job"]["examples"] + table["city"]["examples"]:
        print(f"  {ex['prompt']!r} -> {ex['completion']!r} (true: {ex['answer']})")


if __name__ == "__main__":
    run_cli(main)
