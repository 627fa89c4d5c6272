"""Stage 01: generate -> inject noise -> clean -> line dedup -> dedup -> mix -> split, and measure every step.

    python 01_data/prepare.py --out runs/tiny                  # default synthetic corpus (~3 MB of text)
    python 01_data/prepare.py --out runs/small --chars 300000  # a tenth of it, for quick experiments
    python 01_data/prepare.py --out runs/mine --input a.txt b.jsonl   # your own text, same cleaning
    python 01_data/prepare.py --out runs/tiny --fp-check ../shared/data/text/*.txt   # + false positives

Writes (README, "Artifacts"), built beside any earlier run and swapped in only when complete:
    runs/<name>/data/{train,val,test}.jsonl   {"id", "domain", "lang", "text"} one document per line
    runs/<name>/data/noise_labels.jsonl       {"id", "noise"}: the sidecar of injected noise labels
    runs/<name>/data/tasks/*.jsonl            task sets for stages 05-07 (format: tasks.py docstring)
    runs/<name>/data/stats.json               the outcome tables below (data_outcome.py), the config, seconds
    runs/<name>/data/outcome.png              precision/recall per noise type, characters removed per step
    runs/<name>/data/manifest.json            what made this folder (common/runs.py); written last

The outcome: for every noise type, how many documents were injected, caught by the step responsible
for that type, and missed (and of those, how many another step dropped anyway), with that step's
precision (of what it caught, the share that really was this noise) and recall (of what was
injected, the share caught). Then, for every step, documents changed and dropped and characters
removed, as a share of the input's characters, with a warning when one step removes more than
--warn-removed; documents and characters per domain, split sizes, seconds per step; and with
--fp-check, each step's false-positive rate on clean real text (filter_fp.py).

`--input` takes `.txt` (one document per blank-line-separated block; `--txt-split line` for one per
line, `file` for the whole file as one text) or `.jsonl` (a "text" field; an optional "domain"
field). Documents longer than --max-doc-chars are cut at paragraph, then line, then sentence
boundaries, so a filter that drops a piece drops a page, not a novel. Real input has no noise
labels, so the table then shows what each step changed or dropped, without precision/recall.

Order matters: clean before dedup (copies that differ only in markup or spacing become exact
copies), dedup before split (a near-copy of a test document in train leaks the test set), and split
by near-duplicate *cluster* (documents linked at a looser Jaccard go to the same side).

Interview questions it answers:
- What does a pretraining data pipeline do, in what order, and why that order?
- How do you mix domains, and why by characters/tokens rather than by documents?
- How do you split so that evaluation is not contaminated?
- How do you notice a filter silently eating your data? (count characters, not documents, per step)
"""

import json
import random
import shutil
import sys
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.files import read_json, write_json, write_jsonl
from common.layout import RunLayout
from common.runs import MANIFEST, claim_output, run_lock, staged_dir, write_manifest
from clean import STEPS, CleanConfig, clean_document
from contamination import contamination_report, format_contamination, format_exposure, heldout_exposure
from data_outcome import (
    WARN_HINTS,
    doc_chars,
    domain_table,
    format_table,
    noise_table,
    outcome_block,
    plot_outcome,
    step_table,
    warnings_for,
)
from dedup import DedupConfig, dedup, line_dedup, near_duplicate_clusters
from filter_fp import filter_rates
from langid_ngram import predict_lang, train_langid, training_texts
from input_documents import DOMAINS, check_input_head, generated_documents, iter_documents, read_documents
from prepare_stream import clean_all_streamed, decide_streamed, split_documents
from tasks import write_tasks

SPLITS = ["train", "val", "test"]


@dataclass
class PrepareConfig:
    seed: int = option(0, "seed of the world, the noise, the mix and the split", min=0)
    # 1.5 M characters, not more: 04's 1,000 steps then read each biography ~5.8 times instead of ~2.9,
    # which doubled fact recall (0.35 -> 0.65) and took 05's held-out answers from 0.28 to 0.77 (05
    # README, "Passes, not steps"); 0.3 noise keeps ~150 injected documents per type,
    # enough for the cleaning bars' intervals to clear 0.95
    chars: int = option(
        1_500_000, "characters of clean generated text before noise (ignored with --input)", min=10_000
    )
    noise_frac: float = option(
        0.3, "noisy documents injected per clean one, split evenly over the 9 noise types", min=0.0, max=1.0
    )
    mix: dict = option(
        {"dialog": 0.1, "code": 0.025, "knowledge": 0.85, "stories": 0.025},
        "character share of each domain in the output; >= 0, summing to 1 (knowledge, the biographies,"
        " dominates: a held-out person's facts must be read ~100 times to be stored, 05 README)",
    )
    world: dict = option(
        {},
        "world knobs (world.WorldConfig, biographies.py), e.g. n_people=400,bios_per_person=1,"
        "bio_permute=0,qa_mixed=0; bio_langs: 1 = en, 2 = en and zh",
    )
    split: tuple = option(
        (0.90, 0.05, 0.05), "train,val,test shares of the documents; each > 0, summing to 1", sep=","
    )
    split_threshold: float = option(
        0.5, "documents linked at this Jaccard land in the same split", min=0.05, max=1.0
    )
    dedup_threshold: float = option(
        DedupConfig.threshold, "Jaccard at or above which a document is a near-duplicate", min=0.05, max=1.0
    )
    input: tuple = option((), ".txt or .jsonl files to clean instead of the generated corpus")
    txt_split: str = option(
        "blank",
        ".txt documents: blank-line blocks, single lines, or the whole file",
        choices=["blank", "line", "file"],
    )
    input_domain: str = option(
        "stories", "domain of input documents without a 'domain' field", choices=DOMAINS
    )
    max_doc_chars: int = option(
        10_000, "cut longer input documents at paragraph, then line, then sentence ends", min=200
    )
    line_dedup_docs: int = option(
        0,
        "drop every line (menus, cookie notices, footers) that occurs in more than this many "
        "documents; 0 = off",
        min=0,
    )
    workers: int = option(
        1,
        "--input: worker processes cleaning shards in parallel (each holds 2 shards of 2,000 documents)",
        min=1,
    )
    # 0.15: on the default corpus the mix step alone trims 11-13 % (the repaired noisy documents, 30 % of
    # the input's documents are injected noise, are mostly knowledge, so the scarce domains limit the rest);
    # a filter that eats a fifth of real input still warns
    warn_removed: float = option(
        0.15, "warn when one step removes more than this share of the input characters", min=0.0, max=1.0
    )
    fp_check: tuple = option(
        (),
        "clean real text files (.txt/.jsonl): report how much of them each filter "
        "changes or drops (false positives)",
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(chars=60000)}


# ---------------------------------------------------------------------------------------------------
# Clean, dedup, mix, split.


def clean_all(docs, predict, cfg: CleanConfig, progress=True):
    """(kept docs, {doc id: {step: characters it removed}}, {doc id: step that dropped it})."""
    kept, acted, dropped = [], {}, {}
    for i, doc in enumerate(docs):
        out, acted[doc["id"]], step = clean_document(doc, predict, cfg)
        if out is None:
            dropped[doc["id"]] = step
        else:
            kept.append(out)
        if progress and (i + 1) % max(1, len(docs) // 5) == 0:
            print(f"  cleaned {i + 1}/{len(docs)}", flush=True)
    return kept, acted, dropped


def line_dedup_all(kept, acted, removed, max_docs):
    """Prose documents with lines common to more than max_docs documents removed (dedup.line_dedup);
    the characters go to the "line_dedup" step, and a document left empty is dropped by it."""
    prose = [i for i, x in enumerate(kept) if x["domain"] != "code"]
    texts, _ = line_dedup([kept[i]["text"] for i in prose], max_docs)
    out = list(kept)
    for i, text in zip(prose, texts):
        doc = kept[i]
        if len(text) != len(doc["text"]):
            acted[doc["id"]]["line_dedup"] = len(doc["text"]) - len(text)
            out[i] = {**doc, "text": text}
            if not text:
                removed[doc["id"]] = "line_dedup"
    return [x for x in out if x["text"]]


def mix_domains(docs, ratios, seed):
    """Subsample domains so their character shares match `ratios` (no upsampling: repeats would leak)."""
    chars = {d: sum(doc_chars(x) for x in docs if x["domain"] == d) for d in ratios}
    present = {d: r for d, r in ratios.items() if r > 0 and chars[d] > 0}
    if not present:
        have = sorted({x["domain"] for x in docs})
        raise UserError(
            f"--mix gives no weight to the domains the documents have ({', '.join(have)}); "
            f"give one of them a share, e.g. --mix {have[0]}=1"
        )
    total = min(chars[d] / r for d, r in present.items())  # the scarcest domain sets the corpus size
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    taken = {d: 0 for d in ratios}
    out = []
    for i in order:
        d = docs[i]["domain"]
        if d in present and taken[d] + doc_chars(docs[i]) / 2 <= present[d] / sum(present.values()) * total:
            out.append(docs[i])
            taken[d] += doc_chars(docs[i])
    return sorted(out, key=lambda x: x["id"])


def split_by_cluster(docs, fractions, threshold, sig=None):
    """{"train"|"val"|"test": docs}; documents linked at Jaccard >= threshold land in one split.

    A cluster's split follows from a hash of its first document's id, so it does not change when
    other documents come or go. A small corpus can leave a split empty by chance (31 clusters: val
    at 0.1 stays empty 4 % of the time); then the cluster whose hash lies nearest that split's range
    moves there, taken from a split that keeps at least one. sig: the documents' MinHash signatures
    (streaming: the texts are not in memory)."""
    texts = None if sig is not None else [d["text"] for d in docs]
    roots, _, _ = near_duplicate_clusters(texts, DedupConfig(threshold=threshold), sig=sig)
    edges = np.cumsum(fractions) * 1000
    u = {int(r): zlib.crc32(docs[r]["id"].encode()) % 1000 for r in roots}  # a stable hash per cluster
    part = {r: min(2, int(np.searchsorted(edges, h, side="right"))) for r, h in u.items()}
    for k, (lo, hi) in enumerate(zip([0.0, *edges[:2]], edges)):
        sizes = Counter(part.values())
        donors = [r for r in part if sizes[part[r]] > 1]
        if sizes[k] == 0 and donors:
            part[min(donors, key=lambda r: (max(lo - u[r], u[r] - hi, 0), u[r]))] = k
    splits = {name: [] for name in SPLITS}
    for d, root in zip(docs, roots):
        splits[SPLITS[part[int(root)]]].append(d)
    return splits


def check_splits(splits, cfg: PrepareConfig):
    """Every split needs documents: stage 02 trains on train and measures on val, 07 tests on test."""
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        n = sum(map(len, splits.values()))
        share = dict(zip(SPLITS, cfg.split))[empty[0]]
        raise UserError(
            f"{' and '.join(empty)} got no documents: {n} document(s) in fewer than 3 near-duplicate "
            f"clusters are left after cleaning, dedup and mixing, and {empty[0]} gets {share:g} of them; "
            f"pass more text{', or a smaller --max-doc-chars to cut it into more documents' if cfg.input else ''}"
            f", or give {empty[0]} a larger share in --split"
        )


def dropped_everything(dropped, n_docs):
    by_step = Counter(dropped.values())
    top = by_step.most_common(1)[0][0]
    hint = WARN_HINTS.get(
        top, "check that the input is English or Chinese prose (or code with --input-domain code)"
    )
    steps = ", ".join(f"{s} {by_step[s]}" for s in STEPS if by_step[s])
    return UserError(
        f"cleaning dropped all {n_docs} input document(s) ({steps}); nothing is left to split: {hint}"
    )


# ---------------------------------------------------------------------------------------------------
# The run.


def check_prepare_config(cfg: PrepareConfig):
    """Everything about a config that can be checked before any work: ranges, shares, input files."""
    check_config(cfg)
    unknown = [d for d in cfg.mix if d not in DOMAINS]
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r} in --mix; use {', '.join(DOMAINS)}")
    if any(r < 0 for r in cfg.mix.values()) or abs(sum(cfg.mix.values()) - 1) > 1e-6:
        raise UserError(
            f"mixing ratios must be >= 0 and sum to 1 (they sum to {sum(cfg.mix.values()):g}); fix --mix, "
            "e.g. --mix dialog=0.4,code=0.1,knowledge=0.2,stories=0.3"
        )
    if (
        cfg.noise_frac > 0
        and not cfg.input
        and not any(cfg.mix.get(d, 0) > 0 for d in DOMAINS if d != "code")
    ):
        raise UserError(
            "noise is injected into prose (an edited program no longer parses), and --mix has none; "
            "give dialog, knowledge or stories a share, or pass --noise-frac 0"
        )
    if len(cfg.split) != 3 or any(f <= 0 for f in cfg.split) or abs(sum(cfg.split) - 1) > 1e-6:
        raise UserError(
            f"--split {','.join(map(str, cfg.split))}: needs three shares (train, val, test), each above 0 "
            "(stage 02 measures on val, stage 07 on test) and summing to 1, e.g. --split 0.9,0.05,0.05"
        )
    for flag, paths in (("--input", cfg.input), ("--fp-check", cfg.fp_check)):
        for p in map(Path, paths):
            if not p.is_file():
                raise UserError(
                    f"{p}: {'is a folder' if p.is_dir() else 'no such file'}; check the {flag} path"
                )
            if p.suffix not in (".txt", ".jsonl"):
                raise UserError(f"{p}: unsupported file type {p.suffix!r}; {flag} takes .txt or .jsonl files")


def same_run(data: Path, config: dict) -> bool:
    """Does `data` hold a complete run made with this config? (then redoing it replaces nothing new)"""
    try:
        return read_json(data / MANIFEST).get("config") == config
    except (UserError, OSError):
        return False


def prepare(cfg: PrepareConfig, out: Path, overwrite=False, progress=True, command=None):
    """Run the whole stage into out/data and return the stats.

    Refuses when out/data holds a run with a different config, unless overwrite; the new run is
    built in a temp folder beside it and swapped in only when complete, so a failure or Ctrl-C
    midway leaves the old run as it was."""
    check_prepare_config(cfg)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; remove it or choose another --out")
    data = RunLayout(out).data
    config = json.loads(json.dumps(asdict(cfg)))  # as the manifest will hold it (tuples -> lists)
    t = time.time()
    for path in cfg.input:  # a wrong file fails here, before an earlier run is claimed
        check_input_head(Path(path))
    fp_texts = {Path(p).name: read_documents([p], cfg, prefix="fp") for p in cfg.fp_check}
    with run_lock(data):
        claim_output(data, overwrite or same_run(data, config), remove=False)
        with staged_dir(data) as tmp:
            stats = build(
                cfg,
                config,
                fp_texts,
                tmp,
                progress,
                command or command_line(__file__, ["--out", str(out)]),
                t,
            )
    return stats


def build(
    cfg: PrepareConfig, config: dict, fp_texts, folder: Path, progress: bool, command: str, t: float
) -> dict:
    """Every step of the stage, writing into `folder`; returns the stats. The generated corpus is
    cleaned in memory; --input is streamed (build_streamed). fp_texts: {file name: documents} for --fp-check."""
    seconds = {}

    def lap(name):
        nonlocal t
        seconds[name] = time.time() - t
        t = time.time()
        if progress:
            print(f"[{name}] {seconds[name]:.2f}s", flush=True)

    lap.seconds = seconds

    if cfg.input:
        model = train_langid(*training_texts(cfg.seed + 1000))
        lap("train_langid")
        return build_streamed(cfg, config, model, fp_texts, folder, progress, command, lap)
    docs, labels, world = generated_documents(cfg)
    lap("generate")
    model = train_langid(*training_texts(cfg.seed + 1000))
    predict = lambda text: predict_lang(model, text)
    lap("train_langid")
    kept, acted, removed = clean_all(docs, predict, CleanConfig(), progress)
    if not kept:
        raise dropped_everything(removed, len(docs))
    lap("clean")
    if cfg.line_dedup_docs:
        kept = line_dedup_all(kept, acted, removed, cfg.line_dedup_docs)
        lap("line_dedup")
    d = dedup([x["text"] for x in kept], DedupConfig(threshold=cfg.dedup_threshold))
    removed |= {x["id"]: "exact_dedup" for x, e in zip(kept, d["exact_dup"]) if e}
    removed |= {x["id"]: "near_dedup" for x, n in zip(kept, d["near_dup"]) if n}
    unique = [x for x, k in zip(kept, d["keep"]) if k]
    lap("dedup")
    mixed = mix_domains(unique, cfg.mix, cfg.seed)
    lap("mix")
    splits = split_by_cluster(mixed, cfg.split, cfg.split_threshold)
    check_splits(splits, cfg)
    lap("split")
    false_positives = {name: filter_rates(texts, predict) for name, texts in fp_texts.items()}
    if fp_texts:
        lap("fp_check")

    for name, part in splits.items():
        write_jsonl(
            folder / f"{name}.jsonl", ({k: x[k] for k in ("id", "domain", "lang", "text")} for x in part)
        )
    write_jsonl(folder / "noise_labels.jsonl", ({"id": i, "noise": k} for i, k in labels.items()))
    tasks = write_tasks(world, cfg.seed, folder / "tasks", write_jsonl) if world else {}
    lap("write")
    outcome = (docs, labels, acted, removed, kept, unique, mixed, splits)
    return finish(cfg, config, outcome, false_positives, tasks, seconds, folder, command)


def build_streamed(cfg: PrepareConfig, config: dict, model, fp_texts, folder: Path, progress, command, lap):
    """build() for --input: read, clean and fingerprint in shards (prepare_stream.py), decide over
    lengths, keys and signatures, then write the kept documents shard by shard."""
    shard_dir = folder / "shards"
    docs = iter_documents(cfg.input, cfg)
    meta = clean_all_streamed(
        docs, model, shard_dir, cfg.workers, progress=progress, line_dedup_docs=cfg.line_dedup_docs
    )
    inputs = meta["inputs"]  # doc_table.DocRecord (id, domain, chars) per document, read from columns
    acted, removed, kept = meta["acted"], meta["dropped"], meta["kept"]
    if not kept:
        raise dropped_everything(removed, len(inputs))
    lap("read+clean")
    removed, unique, mixed, splits = decide_streamed(meta, cfg, lap)
    check_splits(splits, cfg)
    lap("split")
    predict = lambda text: predict_lang(model, text)
    false_positives = {name: filter_rates(texts, predict) for name, texts in fp_texts.items()}
    if fp_texts:
        lap("fp_check")
    for name in SPLITS:
        write_jsonl(folder / f"{name}.jsonl", split_documents(meta, name))
    shutil.rmtree(shard_dir)
    write_jsonl(folder / "noise_labels.jsonl", [])
    lap("write")
    outcome = (inputs, {}, acted, removed, kept, unique, mixed, splits)
    tables = meta["table"].outcome_tables(unique.rows, mixed.rows)  # counted over columns, not records
    return finish(cfg, config, outcome, false_positives, {}, dict(lap.seconds), folder, command, tables)


def finish(cfg, config, outcome, false_positives, tasks, seconds, folder: Path, command, tables=None) -> dict:
    """The stats (data_outcome.py's tables), stats.json, the plot and the manifest; returns the stats.
    tables: the input, steps, domains and splits tables when the caller has them (a streamed run
    counts them over its columns: doc_table.DocTable.outcome_tables)."""
    docs, labels, acted, removed, kept, unique, mixed, splits = outcome
    t = time.time()
    contamination = contamination_report(folder) if tasks else []  # eval sets vs training data
    if tasks:
        seconds = {**seconds, "contamination": time.time() - t}
    tables = tables or {
        "input": {"docs": len(docs), "chars": sum(map(doc_chars, docs))},
        "steps": step_table(docs, acted, removed, kept, unique, mixed),
        "domains": domain_table(docs, unique, mixed, DOMAINS),
        "splits": {k: {"docs": len(v), "chars": sum(map(doc_chars, v))} for k, v in splits.items()},
    }
    stats = {
        "config": config,
        "noise": noise_table(docs, labels, acted, removed, cfg.dedup_threshold) if labels else {},
        **tables,
        "false_positives": false_positives,
        "warnings": warnings_for(tables["steps"], cfg.warn_removed),
        "tasks": tasks,
        "contamination": contamination,
        "heldout_exposure": heldout_exposure(folder) if tasks else {},  # held-out facts: biographies only
        "seconds": seconds,
    }
    write_json(folder / "stats.json", stats)
    write_json(folder / "outcome.json", outcome_block(stats))
    plot_outcome(stats, folder / "outcome.png", cfg.warn_removed)
    write_manifest(
        folder, stage="01_data", config=config, inputs=[*cfg.input, *cfg.fp_check], command=command
    )
    return stats


def add_run_flags(parser):
    parser.add_argument("--out", required=True, help="run folder; the data goes to <out>/data")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a different run already in <out>/data (it stays until the new one is complete)",
    )


def main(argv=None):
    cfg, args = parse_config(
        PrepareConfig, argv, doc=__doc__, extra=add_run_flags, presets=PRESETS, default_preset="tiny"
    )
    stats = prepare(cfg, Path(args.out), overwrite=args.overwrite, command=command_line(__file__, argv))
    print(format_table(stats))
    if stats["contamination"]:
        print(
            f"\ncontamination: longest word n-gram shared with the training data\n{format_contamination(stats['contamination'])}"
        )
    if stats.get("heldout_exposure"):
        print(format_exposure(stats["heldout_exposure"]))
    print(f"wrote {Path(args.out) / 'data'}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
