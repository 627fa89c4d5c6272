"""Stage 01: generate -> inject noise -> clean -> dedup -> mix -> split, and measure every step.

    python 01_data/prepare.py --out runs/tiny                  # default synthetic corpus (~3 MB of text)
    python 01_data/prepare.py --out runs/small --chars 300000  # a tenth of it, for quick experiments
    python 01_data/prepare.py --out runs/mine --input a.txt b.jsonl   # your own text, same cleaning

Writes (README, "Artifacts"):
    runs/<name>/data/{train,val,test}.jsonl   {"id", "domain", "lang", "text"} one document per line
    runs/<name>/data/noise_labels.jsonl       {"id", "noise"}: the sidecar of injected noise labels
    runs/<name>/data/tasks/*.jsonl            task sets for stages 05-07 (format: tasks.py docstring)
    runs/<name>/data/stats.json               the outcome table below, the config, seconds per step

The outcome table: for every noise type, how many documents were injected, caught by the step
responsible for that type, and missed, with that step's precision (of what it caught, the share
that really was this noise) and recall (of what was injected, the share caught); then documents and
characters kept per domain, split sizes and seconds per step.

`--input` takes `.txt` (one document per blank-line-separated block; `--txt-split line` for one per
line) or `.jsonl` (a "text" field; an optional "domain" field). Real input has no noise labels, so
the table then shows how many documents each step changed or dropped, without precision/recall.

Order matters: clean before dedup (copies that differ only in markup or spacing become exact
copies), dedup before split (a near-copy of a test document in train leaks the test set), and split
by near-duplicate *cluster* (documents linked at a looser Jaccard go to the same side).

Interview questions it answers:
- What does a pretraining data pipeline do, in what order, and why that order?
- How do you mix domains, and why by characters/tokens rather than by documents?
- How do you split so that evaluation is not contaminated?
"""
import argparse
import random
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clean import STEPS, CleanConfig, clean_document
from dedup import DedupConfig, dedup, near_duplicate_clusters
from common import (UserError, command_line, read_jsonl, read_text, run_cli, write_json, write_jsonl,
                    write_manifest)
from langid_ngram import predict_lang, train_langid, training_texts
from noise_inject import NOISE_TYPES, inject_noise
from tasks import write_tasks
from world import WorldConfig, build_world, generate_corpus, story_slots

DOMAINS = ["dialog", "code", "knowledge", "stories"]
CATCHING_STEP = {"exact_dup": "exact_dedup", "near_dup": "near_dedup", "mojibake": "fix_encoding",
                 "html": "strip_markup", "pii": "mask_pii", "toxic": "filter_toxic", "bias": "filter_bias",
                 "too_short": "filter_length", "wrong_lang": "filter_language"}


@dataclass
class PrepareConfig:
    seed: int = 0
    chars: int = 3_000_000          # characters of clean generated text before noise
    noise_frac: float = 0.15        # share of injected noisy documents (split evenly over the types)
    mix: dict = field(default_factory=lambda: {"dialog": 0.4, "code": 0.1, "knowledge": 0.2, "stories": 0.3})
    split: tuple = (0.90, 0.05, 0.05)
    split_threshold: float = 0.5    # documents linked at this Jaccard share a split
    dedup_threshold: float = DedupConfig.threshold
    inputs: tuple = ()
    txt_split: str = "blank"
    input_domain: str = "stories"


# ---------------------------------------------------------------------------------------------------
# Inputs: the generated world, or the user's files.

def unique_documents(docs, threshold):
    """Drop generated documents that are near-duplicates of an earlier one (the world repeats entities).

    The clean corpus must hold no near-duplicates, or the near-dup score would count them as false
    positives; with a looser threshold than dedup's, every later near-dup is one we injected.
    """
    roots, _, _ = near_duplicate_clusters([d["text"] for d in docs], DedupConfig(threshold=threshold))
    return [d for i, d in enumerate(docs) if roots[i] == i]


def generated_documents(cfg: PrepareConfig):
    """(documents with noise appended, noise labels {id: type}, the world)."""
    world = build_world(WorldConfig(seed=cfg.seed))
    extra = cfg.noise_frac * 1.2  # fresh documents to turn into noise
    docs = unique_documents(generate_corpus(world, cfg.seed, int(cfg.chars * (1 + extra)), cfg.mix),
                            cfg.split_threshold)
    rng = random.Random(cfg.seed + 3)
    n_fresh = int(len(docs) * extra / (1 + extra))
    fresh, clean = docs[:n_fresh], docs[n_fresh:]
    docs, labels = inject_noise(rng, clean, fresh, lambda r: story_slots(r, world), cfg.noise_frac)
    return docs, labels, world


def input_documents(cfg: PrepareConfig):
    """Documents from the user's .txt / .jsonl files."""
    docs = []
    for path in cfg.inputs:
        p = Path(path)
        if p.suffix == ".jsonl":
            for rec in read_jsonl(p):
                dom = rec.get("domain") if rec.get("domain") in DOMAINS else cfg.input_domain
                docs.append({"domain": dom, "lang": rec.get("lang", ""), "text": str(rec["text"])})
        elif p.suffix == ".txt":
            text = read_text(p)
            blocks = text.split("\n") if cfg.txt_split == "line" else text.split("\n\n")
            docs += [{"domain": cfg.input_domain, "lang": "", "text": b.strip()} for b in blocks if b.strip()]
        else:
            raise UserError(f"{p}: unsupported file type {p.suffix!r}; pass .txt or .jsonl files")
    if not docs:
        raise UserError("the input files hold no documents; pass files with text in them")
    return [{"id": f"in{i:07d}", **d} for i, d in enumerate(docs)]


# ---------------------------------------------------------------------------------------------------
# Clean, dedup, mix, split.

def clean_all(docs, predict, cfg: CleanConfig, progress=True):
    """(kept docs, {doc id: [steps that acted]})."""
    kept, acted = [], {}
    for i, doc in enumerate(docs):
        out, steps, _ = clean_document(doc, predict, cfg)
        acted[doc["id"]] = steps
        if out is not None:
            kept.append(out)
        if progress and (i + 1) % max(1, len(docs) // 5) == 0:
            print(f"  cleaned {i + 1}/{len(docs)}", flush=True)
    return kept, acted


def mix_domains(docs, ratios, seed):
    """Subsample domains so their character shares match `ratios` (no upsampling: repeats would leak)."""
    chars = {d: sum(len(x["text"]) for x in docs if x["domain"] == d) for d in ratios}
    present = {d: r for d, r in ratios.items() if r > 0 and chars[d] > 0}
    total = min(chars[d] / r for d, r in present.items())  # the scarcest domain sets the corpus size
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    taken = {d: 0 for d in ratios}
    out = []
    for i in order:
        d = docs[i]["domain"]
        if d in present and taken[d] + len(docs[i]["text"]) / 2 <= present[d] / sum(present.values()) * total:
            out.append(docs[i])
            taken[d] += len(docs[i]["text"])
    return sorted(out, key=lambda x: x["id"])


def split_by_cluster(docs, fractions, threshold):
    """{"train"|"val"|"test": docs}; documents linked at Jaccard >= threshold land in one split."""
    roots, _, _ = near_duplicate_clusters([d["text"] for d in docs], DedupConfig(threshold=threshold))
    edges = np.cumsum(fractions) * 1000
    splits = {"train": [], "val": [], "test": []}
    for d, root in zip(docs, roots):
        u = zlib.crc32(docs[root]["id"].encode()) % 1000  # a stable hash of the cluster
        splits[["train", "val", "test"][int(np.searchsorted(edges, u, side="right"))]].append(d)
    return splits


def outcome_table(docs, labels, acted, removed):
    """Per noise type: injected, caught, missed, precision, recall of the step responsible for it."""
    rows = {}
    for kind in NOISE_TYPES:
        step = CATCHING_STEP[kind]
        flagged = [i for i in acted if step in acted[i] or removed.get(i) == step]
        injected = [i for i, k in labels.items() if k == kind]
        caught = sum(labels.get(i) == kind for i in flagged)
        rows[kind] = {"step": step, "injected": len(injected), "caught": caught, "missed": len(injected) - caught,
                      "flagged": len(flagged), "precision": caught / max(1, len(flagged)),
                      "recall": caught / max(1, len(injected))}
    clean_ids = [d["id"] for d in docs if d["id"] not in labels]
    lost = [i for i in clean_ids if removed.get(i) or any(s.startswith("filter_") for s in acted.get(i, []))]
    rows["(clean docs)"] = {"injected": len(clean_ids), "wrongly_removed": len(lost)}
    return rows


def format_table(stats):
    if not stats["noise"]:
        lines = ["no noise labels (real input): no precision/recall, only what each step did"]
    else:
        lines = ["noise type    step               injected  caught  missed  precision  recall"]
    for kind, r in stats["noise"].items():
        if "step" in r:
            lines.append(f"{kind:13s} {r['step']:18s} {r['injected']:8d} {r['caught']:7d} {r['missed']:7d}"
                         f"  {r['precision']:9.3f} {r['recall']:7.3f}")
        else:
            lines.append(f"{kind:13s} clean documents {r['injected']}, wrongly removed {r['wrongly_removed']}")
    lines.append("\nstep               acted on (changed or dropped)")
    lines += [f"{s:18s} {n}" for s, n in stats["steps_acted"].items()]
    lines.append("\ndomain      docs in  after clean+dedup  in mix   chars in mix  share")
    for d, r in stats["domains"].items():
        lines.append(f"{d:10s} {r['docs_in']:8d} {r['docs_kept']:18d} {r['docs_mixed']:7d} {r['chars_mixed']:14,d}"
                     f"  {r['share']:.3f}")
    lines.append("\nsplits: " + ", ".join(f"{k} {v['docs']} docs / {v['chars']:,} chars" for k, v in stats["splits"].items()))
    lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stats["seconds"].items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The run.

def prepare(cfg: PrepareConfig, out: Path, overwrite=False, progress=True, command=None):
    """Run the whole stage into out/data (built in a temp folder, renamed at the end); return stats."""
    check_config(cfg)
    data = out / "data"
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    if data.exists() and not overwrite:
        old = read_jsonl_stats(data)
        if old is None or old.get("config") != config:
            raise UserError(f"{data} already holds a different run; pass --overwrite or choose another --out")
    seconds, t = {}, time.time()

    def lap(name):
        nonlocal t
        seconds[name] = time.time() - t
        t = time.time()
        if progress:
            print(f"[{name}] {seconds[name]:.2f}s", flush=True)

    if cfg.inputs:
        docs, labels, world = input_documents(cfg), {}, None
    else:
        docs, labels, world = generated_documents(cfg)
    lap("generate" if world else "read")
    model = train_langid(*training_texts(cfg.seed + 1000))
    lap("train_langid")
    kept, acted = clean_all(docs, lambda text: predict_lang(model, text), CleanConfig(), progress)
    lap("clean")
    d = dedup([x["text"] for x in kept], DedupConfig(threshold=cfg.dedup_threshold))
    removed = {x["id"]: "exact_dedup" for x, e in zip(kept, d["exact_dup"]) if e}
    removed.update({x["id"]: "near_dedup" for x, n in zip(kept, d["near_dup"]) if n})
    unique = [x for x, k in zip(kept, d["keep"]) if k]
    lap("dedup")
    mixed = mix_domains(unique, cfg.mix, cfg.seed)
    lap("mix")
    splits = split_by_cluster(mixed, cfg.split, cfg.split_threshold)
    lap("split")

    tmp = out / f".data.tmp{int(time.time() * 1e6)}"
    try:
        for name, part in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", ({k: x[k] for k in ("id", "domain", "lang", "text")} for x in part))
        write_jsonl(tmp / "noise_labels.jsonl", ({"id": i, "noise": k} for i, k in labels.items()))
        tasks = write_tasks(world, cfg.seed, tmp / "tasks", write_jsonl) if world else {}
        lap("write")
        stats = {"config": config,
                 "noise": outcome_table(docs, labels, acted, removed) if labels else {},
                 "steps_acted": {s: sum(s in a for a in acted.values()) for s in STEPS}
                 | {"exact_dedup": int(d["exact_dup"].sum()), "near_dedup": int(d["near_dup"].sum())},
                 "domains": domain_table(docs, unique, mixed),
                 "splits": {k: {"docs": len(v), "chars": sum(len(x["text"]) for x in v)} for k, v in splits.items()},
                 "tasks": tasks, "seconds": seconds}
        write_json(tmp / "stats.json", stats)
        write_manifest(tmp, stage="01_data", config=config, inputs=cfg.inputs,
                       command=command or command_line(__file__, ["--out", str(out)]))
        if data.exists():
            shutil.rmtree(data)
        tmp.rename(data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def domain_table(docs, unique, mixed):
    total = max(1, sum(len(x["text"]) for x in mixed))
    table = {}
    for dom in DOMAINS:
        chars = sum(len(x["text"]) for x in mixed if x["domain"] == dom)
        table[dom] = {"docs_in": sum(x["domain"] == dom for x in docs),
                      "docs_kept": sum(x["domain"] == dom for x in unique),
                      "docs_mixed": sum(x["domain"] == dom for x in mixed), "chars_mixed": chars,
                      "share": chars / total}
    return table


def read_jsonl_stats(data: Path):
    import json
    try:
        return json.loads((data / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_config(cfg: PrepareConfig):
    unknown = [d for d in cfg.mix if d not in DOMAINS]
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r} in --mix; use {', '.join(DOMAINS)}")
    if any(r < 0 for r in cfg.mix.values()) or abs(sum(cfg.mix.values()) - 1) > 1e-6:
        raise UserError(f"mixing ratios must be >= 0 and sum to 1 (they sum to {sum(cfg.mix.values()):g}); fix --mix")
    if len(cfg.split) != 3 or any(f < 0 for f in cfg.split) or abs(sum(cfg.split) - 1) > 1e-6:
        raise UserError("--split needs three fractions (train, val, test) that sum to 1, e.g. 0.9,0.05,0.05")
    if cfg.chars < 10_000 and not cfg.inputs:
        raise UserError(f"--chars {cfg.chars} is too small to hold every noise type; use at least 10000")
    for p in cfg.inputs:
        if not Path(p).exists():
            raise UserError(f"{p}: no such file; check the --input path")


def parse_mix(text):
    try:
        return {k.strip(): float(v) for k, v in (kv.split("=") for kv in text.split(","))}
    except ValueError:
        raise UserError(f"cannot read --mix {text!r}; write it as dialog=0.4,code=0.1,knowledge=0.2,stories=0.3") from None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    d = PrepareConfig()
    ap.add_argument("--out", required=True, help="run folder; data goes to <out>/data")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--chars", type=int, default=d.chars, help="characters of generated clean text")
    ap.add_argument("--noise-frac", type=float, default=d.noise_frac)
    ap.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in d.mix.items()))
    ap.add_argument("--split", default="0.9,0.05,0.05", help="train,val,test fractions")
    ap.add_argument("--input", nargs="+", default=[], help=".txt or .jsonl files instead of the generator")
    ap.add_argument("--txt-split", choices=["blank", "line"], default="blank",
                    help=".txt documents are blank-line-separated blocks (blank) or single lines (line)")
    ap.add_argument("--input-domain", choices=DOMAINS, default="stories")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing different run in --out")
    args = ap.parse_args(argv)
    try:
        split = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        raise UserError(f"cannot read --split {args.split!r}; write it as 0.9,0.05,0.05") from None
    cfg = PrepareConfig(seed=args.seed, chars=args.chars, noise_frac=args.noise_frac, mix=parse_mix(args.mix),
                        split=split, inputs=tuple(args.input), txt_split=args.txt_split, input_domain=args.input_domain)
    stats = prepare(cfg, Path(args.out), overwrite=args.overwrite, command=command_line(__file__, argv))
    print(format_table(stats))
    print(f"wrote {Path(args.out) / 'data'}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
