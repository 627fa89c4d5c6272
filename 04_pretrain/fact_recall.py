"""Does the base model know the facts of its world, or only the word order of its corpus? Fact recall,
scored per attribute and phrasing, against the two baselines a skeptic asks for.

    python 04_pretrain/fact_recall.py --data runs/tiny            # probes runs/tiny/pretrain/best.pt
    python 04_pretrain/fact_recall.py --data runs/tiny --ckpt runs/tiny/pretrain/ckpt.pt

pretrain.py runs it at the end of every run on the generated world and saves the table and its bar
in outcome.json ("fact_recall", "bars").

SFT teaches a format; the knowledge must come from pretraining. So before fine-tuning we ask the base
model to complete sentences whose next words state a fact, for every person of the world (01's
tasks.recall_probes, templates in world.RECALL_PHRASINGS), in two phrasings:

    corpus   the phrasing the documents use ("Noin Marora works as" -> "a tailor"): prompt and answer
             occur word for word in the training split, so completing it needs only memorized text
    novel    a phrasing no document uses ("By trade, Noin Marora is" -> "a tailor"): the model must
             connect the person to the fact, not the word sequence to its continuation

and score greedy completions: a probe is right when the completion starts with the answer (after an
optional article). Beside the model, per attribute and phrasing:

    8-gram lookup   NgramLookup over the training shard (ngram_lm.py): the most frequent continuation
                    of the longest seen context; it completes every corpus-phrasing probe it has seen
    majority        always the most common answer among the *other* people: knows the distribution
                    of jobs, nothing about this person

with a 95 % Wilson interval on each accuracy (one probe per person, attribute and phrasing: the probes
of one row are independent people). The bar: accuracy on the novel phrasings, all attributes, with its
interval wholly above the better baseline on the same probes.

Interview questions it answers:
- Where does an LLM's knowledge come from, pretraining or SFT? (pretraining; SFT teaches the format,
  and fine-tuning on facts the base does not know teaches it to hallucinate confidently)
- How do you probe a base model for knowledge without fooling yourself? (cloze completions in a
  phrasing the corpus never uses, beside the corpus's own phrasing, against an n-gram lookup that
  memorizes the corpus and a majority answer that knows only the distribution)
- Why is a probe that occurs verbatim in the training data no test of knowledge? (a lookup table
  passes it: the "knowledge" is one memorized continuation, the reversal curse in miniature)
"""

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import read_json, read_jsonl
from common.layout import RunLayout
from common.runs import check_artifact
from common.stats import wilson_interval
from common.outcome import make_bar
from bpe import BPETokenizer  # 02_tokenizer
from decoding import generate, left_pad  # 03_model
from gpt import GPT  # 03_model

from ngram_lm import NgramLookup

ARTICLES = ("a ", "an ", "the ")
LOOKUP_ORDER = 8  # the lookup table's longest context is 7 tokens
LOOKUP_TOKENS = 5_000_000  # the lookup table counts at most this prefix of the training shard
PHRASINGS = ("corpus", "novel")


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


def majority_right(probes) -> list:
    """Per probe: is the most common answer among the *other* people's probes of its attribute and
    phrasing its own answer? (leave-one-out, so a person's own answer never votes for itself; ties
    go to the alphabetically first answer)"""
    counts = Counter((p["attribute"], p.get("phrasing", "corpus"), p["answer"]) for p in probes)
    by_group = {}
    for (attr, phr, ans), c in counts.items():
        by_group.setdefault((attr, phr), {})[ans] = c
    out = []
    for p in probes:
        group = dict(by_group[(p["attribute"], p.get("phrasing", "corpus"))])
        group[p["answer"]] -= 1
        top = max(group.values())
        out.append(min(a for a, c in group.items() if c == top) == p["answer"])
    return out


@torch.no_grad()
def greedy_completions(model, tok, prompts, max_new_tokens=6, batch_size=64) -> list:
    """Greedy continuation text of each prompt (batched with left padding; 03's KV-cache sampler)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        room = model.cfg.block_size - max_new_tokens  # a prompt longer than the context keeps its end
        ids = [tok.encode_ordinary(p)[-room:] for p in prompts[i : i + batch_size]]
        idx, mask = left_pad(ids, device=device)
        gen = generate(model, idx, max_new_tokens, temperature=0.0, attention_mask=mask)
        out += [tok.decode(row[idx.shape[1] :].tolist()) for row in gen]
    return out


def lookup_completions(table: NgramLookup, tok, prompts, max_new_tokens=6) -> list:
    """The lookup table's greedy continuation text of each prompt, decoded like the model's."""
    return [tok.decode(table.complete(tok.encode_ordinary(p), max_new_tokens)) for p in prompts]


def score_rows(probes, model_right, lookup_right=None) -> list:
    """One row per (attribute, phrasing) and per phrasing over all attributes: n, model accuracy and its
    Wilson interval, the lookup table's and the majority answer's accuracy on the same probes."""
    majority = majority_right(probes)
    groups = {}
    for i, p in enumerate(probes):
        phr = p.get("phrasing", "corpus")
        groups.setdefault((p["attribute"], phr), []).append(i)
        groups.setdefault(("all", phr), []).append(i)
    rows = []
    for (attr, phr), idx in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        right = sum(bool(model_right[i]) for i in idx)
        rows.append(
            {
                "attribute": attr,
                "phrasing": phr,
                "n": len(idx),
                "accuracy": right / len(idx),
                "interval": list(wilson_interval(right, len(idx))),
                "lookup": None
                if lookup_right is None
                else sum(bool(lookup_right[i]) for i in idx) / len(idx),
                "majority": sum(majority[i] for i in idx) / len(idx),
            }
        )
    return rows


def recall_bar(rows) -> dict:
    """The bar: accuracy on the novel phrasings over all attributes, its Wilson interval wholly above
    the better of the lookup table and the majority answer on the same probes."""
    r = next((r for r in rows if r["attribute"] == "all" and r["phrasing"] == "novel"), None)
    if r is None:  # old probe files: one phrasing only
        r = next(r for r in rows if r["attribute"] == "all")
    baselines = {"majority answer of the other people": r["majority"]}
    if r["lookup"] is not None:
        baselines[f"{LOOKUP_ORDER}-gram lookup table over the training shard"] = r["lookup"]
    name, base = max(baselines.items(), key=lambda kv: kv[1])
    return make_bar(
        f"fact recall, {r['phrasing']} phrasings, all attributes (greedy completion accuracy)",
        r["accuracy"],
        threshold=base,
        direction="higher",
        baseline=base,
        baseline_name=name,
        interval=r["interval"],
        n=r["n"],
        note="one probe per person and attribute in a phrasing no document uses; Wilson 95 % interval",
    )


def fact_recall(model, tok, probes, lookup: NgramLookup | None = None, max_new_tokens=6) -> dict:
    """{"rows": score_rows(...), "bar": recall_bar(...), "examples": a few per phrasing}."""
    prompts = [p["prompt"] for p in probes]
    completions = greedy_completions(model, tok, prompts, max_new_tokens)
    model_right = [completion_matches(c, p["answer"]) for p, c in zip(probes, completions)]
    lookup_right = None
    if lookup is not None:
        looked = lookup_completions(lookup, tok, prompts, max_new_tokens)
        lookup_right = [completion_matches(c, p["answer"]) for p, c in zip(probes, looked)]
    rows = score_rows(probes, model_right, lookup_right)
    examples = [
        {"prompt": p["prompt"], "answer": p["answer"], "completion": c, "phrasing": p.get("phrasing", "")}
        for phr in PHRASINGS
        for p, c in [(p, c) for p, c in zip(probes, completions) if p.get("phrasing", "corpus") == phr][:3]
    ]
    return {"rows": rows, "bar": recall_bar(rows), "examples": examples}


def load_probes(run: Path):
    """Every probe of 01's data/tasks/recall_{train,heldout}.jsonl (all people: pretraining saw them
    all; the split is SFT's); None when absent (real text)."""
    tasks = RunLayout(run).tasks
    if not (tasks / "recall_heldout.jsonl").is_file():
        return None
    fields = ("prompt", "answer", "attribute")
    types = dict.fromkeys(fields, str)
    return read_jsonl(tasks / "recall_train.jsonl", fields, types) + read_jsonl(
        tasks / "recall_heldout.jsonl", fields, types
    )


def training_lookup(run: Path, order=LOOKUP_ORDER) -> NgramLookup | None:
    """The lookup table over the first LOOKUP_TOKENS tokens of run/tokens/train.bin; None without it."""
    tokens = RunLayout(run).tokens
    meta_path, shard = tokens / "meta.json", tokens / "train.bin"
    if not shard.is_file() or not meta_path.is_file():
        return None
    dtype = np.dtype(read_json(meta_path)["dtype"])
    return NgramLookup(np.fromfile(shard, dtype=dtype, count=LOOKUP_TOKENS), order)


def format_recall(result) -> str:
    lines = [f"{'attribute':10s} {'phrasing':8s} {'n':>4s}  recall  95 % interval   8-gram lookup  majority"]
    for r in result["rows"]:
        lo, hi = r["interval"]
        look = "-" if r["lookup"] is None else f"{r['lookup']:.3f}"
        lines.append(
            f"{r['attribute']:10s} {r['phrasing']:8s} {r['n']:4d}  {r['accuracy']:6.3f}  [{lo:.3f}, {hi:.3f}]"
            f"  {look:>13s}  {r['majority']:8.3f}"
        )
    b = result["bar"]
    lines.append(
        f"bar: {b['metric']} {b['value']:.3f} [{b['interval'][0]:.3f}, {b['interval'][1]:.3f}] vs "
        f"{b['baseline_name']} {b['baseline']:.3f}: {'PASS' if b['passed'] else 'FAIL'}"
    )
    return "\n".join(lines)


def recall_of_checkpoint(run: Path, ckpt: Path, device="cpu"):
    """fact_recall of the checkpoint `ckpt` on run's probes; None when the run has none."""
    probes = load_probes(run)
    if probes is None or not Path(ckpt).is_file():
        return None
    model = GPT.from_checkpoint(ckpt, map_location=device).eval()
    return fact_recall(model, BPETokenizer.load(RunLayout(run).tokenizer), probes, training_lookup(run))


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
    result = recall_of_checkpoint(run, ckpt)
    print(format_recall(result))
    for ex in result["examples"]:
        print(f"  [{ex['phrasing']}] {ex['prompt']!r} -> {ex['completion']!r} (true: {ex['answer']})")


if __name__ == "__main__":
    run_cli(main)
