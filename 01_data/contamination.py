"""Contamination report: how much of each evaluation set already occurs in the training data?

    python 01_data/contamination.py --data runs/tiny       # the table for a prepared run
    prepare.py puts the same report in data/stats.json ("contamination") for a generated world

For every item of every evaluation set (fact-recall probes in the corpus's phrasing and in novel ones,
SFT held-out conversations, held-out arithmetic problems, held-out preference pairs) it measures the
longest run of consecutive words the item shares with each training side:

    pretraining   data/train.jsonl (what 04 trains on)
    SFT train     data/tasks/sft_train.jsonl (what 05 fine-tunes on)
    06 train      data/tasks/arithmetic_train.jsonl and preference_train.jsonl (GRPO's problems, the
                  reward model's and DPO's pairs)

and reports per set and side: the number of items, the median and largest longest overlap (words),
the share of items that share a run of >= LONG words (13 in GPT-3's contamination study), and the
share that occur *whole* (every word of the item, in order, in the training text). A probe that occurs
whole in pretraining is no test of knowledge (04's fact recall puts such probes beside novel ones); an
held-out arithmetic problem that occurs whole in SFT's training set is not held out.

And the proof the knowledge-extraction experiment rests on (`heldout_exposure`): the people held out of
fine-tuning are named in pretraining only in biographies: no pretraining document names one of them in
QA form (a chat marker or a question mark), none outside the knowledge domain, and none of their
questions occurs whole in pretraining.

Words: lower case, runs of letters and digits, each CJK character one word; punctuation and the
articles a/an/the dropped (the usual normalization of n-gram contamination checks, so "Calinwi." and
"calinwi" match, and the probe "X works as" + "nurse" matches the sentence "X works as a nurse").

How: every n-gram (n = 1 .. MAX_N) of the training text becomes a 64-bit key (a polynomial hash,
`ngram_keys`, also used by 04's n-gram language model); an item's longest overlap is the largest n
such that one of its n-grams' keys is among the training keys (np.isin over sorted keys, one n at a
time). Overlaps are counted up to MAX_N words; an item longer than that which occurs whole counts
as whole.

Interview questions it answers:
- What is benchmark contamination and how is it measured? (test items present in the training
  data; n-gram overlap, e.g. GPT-3's 13-gram check, flags items for a "clean subset" comparison)
- Why can a held-out split still be contaminated? (held out by id is not held out by content: a
  generated problem can repeat a training one word for word, or differ only in a name)
"""

import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli
from common.layout import RunLayout
from common.files import read_jsonl
from common.runs import check_artifact

MAX_N = 64  # overlaps are measured up to this many words
LONG = 13  # GPT-3's contamination n-gram length
WORD_RE = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff_]+"
)
MULT = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier


def words(text: str) -> list:
    return [w for w in WORD_RE.findall(text.lower()) if w not in ("a", "an", "the")]


def ngram_keys(ids: np.ndarray, max_order: int) -> list:
    """keys[k][i] (k = 1..max_order): a 64-bit hash of ids[i-k+1 .. i] for i >= k-1 (earlier: unused).
    key_1 = id + 1, key_k[i] = key_{k-1}[i-1] · MULT + id_i + 1 (mod 2^64): one multiply-add per n-gram."""
    t = np.asarray(ids, dtype=np.uint64) + np.uint64(1)  # +1: id 0 differs from "no token"
    keys = [None, t]
    for k in range(2, max_order + 1):
        keys.append(longer_keys(keys[-1], t, k))
    return keys


def longer_keys(prev: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """The k-gram keys from the (k-1)-gram keys `prev` and the shifted ids t (= ids + 1)."""
    cur = np.zeros_like(t)
    with np.errstate(over="ignore"):  # wrap-around is the point
        cur[k - 1 :] = prev[k - 2 : -1] * MULT + t[k - 1 :]
    return cur


class Vocab(dict):
    """word -> id, growing; an eval word never seen in training gets an id no training n-gram has."""

    def ids(self, ws) -> np.ndarray:
        return np.asarray([self.setdefault(w, len(self)) for w in ws], dtype=np.int64)


def longest_overlaps(train_texts, items, vocab: Vocab | None = None) -> list:
    """Per item (a string): the longest run of consecutive words it shares with the training texts."""
    vocab = Vocab() if vocab is None else vocab
    # documents joined with a separator id that no item has, so no n-gram spans two documents
    sep = -1
    parts = []
    for t in train_texts:
        parts += [vocab.ids(words(t)), np.asarray([sep])]
    corpus = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    corpus = np.where(corpus == sep, len(vocab) + 10**9, corpus)  # an id beyond any word's
    item_ids = [vocab.ids(words(x)) for x in items]
    best = np.zeros(len(items), dtype=np.int64)
    max_n = min(MAX_N, max((len(x) for x in item_ids), default=0))
    if corpus.size == 0 or max_n == 0:
        return best.tolist()
    owner = np.concatenate([np.full(len(x), i) for i, x in enumerate(item_ids)])  # item of each word
    flat = np.concatenate(item_ids)
    ct, it = corpus.astype(np.uint64) + np.uint64(1), flat.astype(np.uint64) + np.uint64(1)
    ckey, ikey = ct, it  # the n-gram keys of the corpus and of the items, one n at a time (memory)
    for n in range(1, max_n + 1):
        if n > 1:
            ckey, ikey = longer_keys(ckey, ct, n), longer_keys(ikey, it, n)
        train = np.sort(ckey[n - 1 :])  # one sort of the corpus per n; the items are few: binary search
        pos = np.arange(n - 1, flat.size)
        pos = pos[owner[pos] == owner[pos - n + 1]]  # n-grams inside one item
        if pos.size == 0:
            break
        at = np.minimum(np.searchsorted(train, ikey[pos]), train.size - 1)
        hit = pos[train[at] == ikey[pos]]
        if hit.size == 0:
            break  # no n-gram of any item occurs, so no longer one does either
        best[np.unique(owner[hit])] = n
    return best.tolist()


def summarize(name: str, side: str, items, overlaps) -> dict:
    lengths = [len(words(x)) for x in items]
    whole = sum(o >= min(n, MAX_N) and n > 0 for o, n in zip(overlaps, lengths))
    return {
        "set": name,
        "training": side,
        "n": len(items),
        "median_words": float(statistics.median(lengths)) if lengths else 0.0,
        "median_overlap": float(statistics.median(overlaps)) if overlaps else 0.0,
        "max_overlap": int(max(overlaps, default=0)),
        f"share_{LONG}gram": sum(o >= LONG for o in overlaps) / max(len(items), 1),
        "share_whole": whole / max(len(items), 1),
    }


def conversation_text(record) -> str:
    return " ".join(m["content"] for m in record["messages"])


def eval_sets(tasks: Path) -> dict:
    """{set name: item texts} from data/tasks/: what 04-07 evaluate on."""
    read = lambda name: read_jsonl(tasks / name, ()) if (tasks / name).is_file() else []
    recall = read("recall_train.jsonl") + read("recall_heldout.jsonl")
    prefs = read("preference_heldout.jsonl")
    sets = {
        "fact probes, corpus phrasing": [
            f"{r['prompt']} {r['answer']}" for r in recall if r.get("phrasing", "corpus") == "corpus"
        ],
        "fact probes, novel phrasing": [
            f"{r['prompt']} {r['answer']}" for r in recall if r.get("phrasing") == "novel"
        ],
        "SFT held-out conversations": [conversation_text(r) for r in read("sft_heldout.jsonl")],
        "held-out arithmetic": [conversation_text(r) for r in read("arithmetic_heldout.jsonl")],
        "held-out preference pairs (chosen)": [
            f"{conversation_text({'messages': r['prompt']})} {r['chosen']}" for r in prefs
        ],
        "held-out preference pairs (rejected)": [
            f"{conversation_text({'messages': r['prompt']})} {r['rejected']}" for r in prefs
        ],
    }
    return {k: v for k, v in sets.items() if v}


def contamination_report(data: Path) -> list:
    """One row per (evaluation set, training side): see the module docstring. data = runs/<name>/data."""
    tasks = data / "tasks"
    sides = {"pretraining": [d["text"] for d in read_jsonl(data / "train.jsonl")]}
    read = lambda name, fields: read_jsonl(tasks / name, fields) if (tasks / name).is_file() else []
    pair = lambda r: f"{conversation_text({'messages': r['prompt']})} {r['chosen']} {r['rejected']}"
    sides["SFT train"] = [conversation_text(r) for r in read("sft_train.jsonl", ("messages",))]
    sides["06 train (arithmetic, preference pairs)"] = [
        conversation_text(r) for r in read("arithmetic_train.jsonl", ("messages",))
    ] + [pair(r) for r in read("preference_train.jsonl", ("prompt", "chosen", "rejected"))]
    sides = {k: v for k, v in sides.items() if v}
    sets = eval_sets(tasks)
    everything = [x for items in sets.values() for x in items]
    rows = []
    for side, texts in sides.items():
        overlaps, start = longest_overlaps(texts, everything), 0  # one pass over the side for all sets
        for name, items in sets.items():
            rows.append(summarize(name, side, items, overlaps[start : start + len(items)]))
            start += len(items)
    return rows


QA_MARKERS = ("User:", "Assistant:", "?", "？")


def in_qa_form(text: str, pattern) -> bool:
    """A chat (a User:/Assistant: marker), or a line that names one of `pattern`'s people and asks a
    question: the forms a held-out fact must never take in pretraining. (A noise line such as
    "Questions? Email ..." above a biography names nobody, so it does not count.)"""
    if "User:" in text or "Assistant:" in text:
        return True
    return any(pattern.search(line) and ("?" in line or "？" in line) for line in text.split("\n"))


def heldout_exposure(data: Path) -> dict:
    """Where the held-out people (the subjects of sft_heldout.jsonl) are named in the pretraining split:
    their facts must appear there only as biographies, never in QA form. Counts the documents that
    name one of them (full name, English or Chinese), those in QA form (`in_qa_form`), those outside the knowledge domain (where biographies live), and the held-out questions
    (user turns) that occur whole in pretraining. {} without the task files."""
    tasks = data / "tasks"
    if not (tasks / "sft_heldout.jsonl").is_file():
        return {}
    held = read_jsonl(tasks / "sft_heldout.jsonl", ())
    zh = read_jsonl(tasks / "sft_zh_heldout.jsonl", ()) if (tasks / "sft_zh_heldout.jsonl").is_file() else []
    names = sorted({r["subject"] for r in held} | {r["subject_zh"] for r in zh if r.get("subject_zh")})
    if not names:
        return {}
    pattern = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))
    docs = read_jsonl(data / "train.jsonl")
    naming = [d for d in docs if pattern.search(d["text"])]
    questions = [r["messages"][-2]["content"] for r in held + zh]
    overlaps = longest_overlaps([d["text"] for d in docs], questions)
    whole = sum(o >= len(words(q)) for o, q in zip(overlaps, questions))
    return {
        "heldout_people": len({r["subject"] for r in held}),
        "documents_naming_them": len(naming),
        "in_qa_form": sum(in_qa_form(d["text"], pattern) for d in naming),
        "outside_knowledge_domain": sum(d.get("domain") != "knowledge" for d in naming),
        "heldout_questions": len(questions),
        "questions_whole_in_pretraining": whole,
    }


def format_exposure(e: dict) -> str:
    if not e:
        return ""
    return (
        f"held-out people ({e['heldout_people']}): named in {e['documents_naming_them']} pretraining documents, "
        f"{e['in_qa_form']} of them in QA form, {e['outside_knowledge_domain']} outside the knowledge domain "
        f"(biographies); {e['questions_whole_in_pretraining']} of their {e['heldout_questions']} questions "
        "occur whole in pretraining"
    )


def format_contamination(rows) -> str:
    head = f"| evaluation set | training data | n | median words | median / max overlap | >= {LONG} words | whole |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['training']} | {r['n']} | {r['median_words']:.0f} | "
            f"{r['median_overlap']:.0f} / {r['max_overlap']} | {r[f'share_{LONG}gram']:.0%} | {r['share_whole']:.0%} |"
        )
    return "\n".join(lines)


@dataclass
class ContaminationConfig:
    data: str = option("", "run folder runs/<name> holding data/ from prepare.py (required)")


def main(argv=None):
    c, _ = parse_config(ContaminationConfig, argv, doc=__doc__)
    if not c.data:
        raise UserError("--data is required: the run folder, e.g. --data runs/tiny")
    data = Path(c.data) / "data"
    check_artifact(data, made_by=RunLayout(c.data).made_by("data"))
    if not (data / "tasks").is_dir():
        raise UserError(
            f"{data}/tasks is missing: evaluation sets come from the generated world (no --input)"
        )
    print(format_contamination(contamination_report(data)))
    print(format_exposure(heldout_exposure(data)))


if __name__ == "__main__":
    sys.exit(run_cli(main))
