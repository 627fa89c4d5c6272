"""Where stage 01's documents come from: the generated world with labelled noise, or the user's files.

    from input_documents import generated_documents, iter_documents
    docs, labels, world = generated_documents(cfg)           # the default: a world whose facts are known
    for doc in iter_documents(["a.txt", "b.jsonl"], cfg):    # --input: read lazily, any size
        ...                                                  # {"id", "domain", "lang", "text"}

prepare.py cleans, dedups, mixes and splits what these return (prepare_stream.py when the input is
streamed); `python 01_data/prepare.py --out runs/mine --input a.txt b.jsonl` runs it on your files.

The generated corpus: the world's documents of every domain (world_corpus.py), near-duplicates of
each other dropped (a small world repeats itself; a later near-duplicate left in would be scored as
a missed injected one), each domain topped up to its share, then noise injected into a fresh share
of documents with its label kept (noise_inject.py): the labels are what the cleaning table's
precision and recall are measured against.

The user's files: `.txt` (one document per blank-line-separated block; `--txt-split line` for one
per line, `file` for the whole file) or `.jsonl` (a "text" field; an optional "domain" field among
DOMAINS), read line by line so that a file of any size streams. A document longer than
--max-doc-chars is cut at paragraph, then line, then sentence boundaries (cut_document), so a filter
that drops a piece drops a page, not a novel. A binary, non-UTF-8 or empty file, or a bad JSONL
line, is the user's error, named with its line.

Interview questions it answers:
- Why cut long documents before cleaning? (a quality filter or dedup decides per document: one bad
  page would drop a whole book, and one long document would hold a worker for minutes)
- Why generate noise instead of only cleaning real text? (injected noise has labels, so each
  cleaning step's precision and recall can be measured; real text only says what a step removed)
"""

import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from dedup import DedupConfig, near_duplicate_clusters
from noise_inject import inject_noise
from world import build_world, world_config
from world_corpus import generate_corpus, story_slots

DOMAINS = ["dialog", "code", "knowledge", "stories"]
BLANK_LINE = re.compile(r"[ \t\u3000]*")


# ---------------------------------------------------------------------------------------------------
# The generated world.


def unique_documents(docs, threshold):
    """Drop generated documents that are near-duplicates of an earlier one (the world repeats entities).

    The clean corpus must hold no near-duplicates, or the near-dup score would count them as false
    positives; with a looser threshold than dedup's, every later near-dup is one we injected.
    """
    roots, _, _ = near_duplicate_clusters([d["text"] for d in docs], DedupConfig(threshold=threshold))
    return [d for i, d in enumerate(docs) if roots[i] == i]


def generated_documents(cfg):
    """(documents with noise appended, noise labels {id: type}, the world)."""
    world = build_world(world_config(cfg.seed, cfg.world))
    extra = cfg.noise_frac * 1.2  # fresh documents to turn into noise
    target = {domain: share * cfg.chars * (1 + extra) for domain, share in cfg.mix.items()}
    docs, generated = [], 0
    for round_ in range(4):
        # A small world repeats itself, so near-duplicates are dropped; then each domain that fell short
        # of its share is topped up (else mix.py would later have to cut every other domain to match).
        have = Counter()
        for d in docs:
            have[d["domain"]] += len(d["text"])
        short = {
            domain: target[domain] - have[domain] for domain in target if have[domain] < 0.98 * target[domain]
        }
        if not short:
            break
        more = generate_corpus(
            world,
            cfg.seed + 1000 * round_,
            sum(short.values()),
            {domain: c / sum(short.values()) for domain, c in short.items()},
            first_id=generated,
        )
        generated += len(more)  # ids never repeat, even of documents dropped as near-duplicates
        docs = unique_documents(docs + more, cfg.split_threshold)
    random.Random(cfg.seed + 2).shuffle(docs)
    rng = random.Random(cfg.seed + 3)
    n_fresh = int(len(docs) * extra / (1 + extra))
    fresh, clean = docs[:n_fresh], docs[n_fresh:]
    docs, labels = inject_noise(rng, clean, fresh, lambda r: story_slots(r, world), cfg.noise_frac)
    return docs, labels, world


# ---------------------------------------------------------------------------------------------------
# The user's files.


# Where a long text may be cut, best first; each match ends a piece (the separator stays with it).
CUTS = [re.compile(r"\n[ \t\u3000]*\n\s*"), re.compile(r"\n"), re.compile(r"(?<=[.!?。！？])[\"'”’」』]?\s*")]


def cut_document(text: str, max_chars: int, level=0) -> list:
    """Pieces of `text` of at most max_chars characters: consecutive paragraphs packed together,
    a paragraph longer than that cut at line breaks, a line at sentence ends, a sentence anywhere."""
    if len(text) <= max_chars:
        return [text]
    if level == len(CUTS):
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    ends = sorted({m.end() for m in CUTS[level].finditer(text) if 0 < m.end() < len(text)})
    pieces = [text[a:b] for a, b in zip([0] + ends, ends + [len(text)])]
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + len(piece) > max_chars:
            chunks.append(current)
            current = ""
        if len(piece) > max_chars:
            chunks += cut_document(piece, max_chars, level + 1)
        else:
            current += piece
    chunks.append(current)
    return [c.strip() for c in chunks if c.strip()]


def iter_lines(path: Path, stop_after=None):
    """(line number, line without its newline) of a UTF-8 file, read lazily; a UserError with the
    same wording as common.read_text for a binary, non-UTF-8 or empty file. stop_after: stop
    (quietly) at the first line that starts after this many bytes."""
    offset, seen_text = 0, False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if stop_after is not None and offset > stop_after:
                return
            if offset < 65536 and b"\x00" in raw[: 65536 - offset]:
                raise UserError(f"{path}: looks binary (NUL bytes); pass a UTF-8 text or .jsonl file")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path}: not valid UTF-8 at byte {offset + e.start}; convert it, e.g. `iconv -t UTF-8`"
                ) from None
            offset += len(raw)
            seen_text = seen_text or bool(line.strip())
            yield lineno, line.removesuffix("\n")
    if not seen_text:
        raise UserError(f"{path}: file is empty; pass a file with text in it")


def jsonl_record(path, lineno: int, line: str) -> dict:
    """One JSONL line as a dict with a "text" field, or a UserError naming the line."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None
    if not isinstance(rec, dict):
        raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
    if "text" not in rec:
        raise UserError(f"{path}:{lineno}: record has no 'text' field; each line needs 'text'")
    return rec


def check_input_head(path: Path, head_bytes=1 << 20):
    """The checks iter_units makes, on the first MB of a file only, so that a wrong file fails at
    once, before an earlier run is touched; a fault deeper in a large file fails when the stream
    gets there (the earlier run still stays until the new one is complete)."""
    for lineno, line in iter_lines(path, stop_after=head_bytes):
        if path.suffix == ".jsonl" and line.strip():
            jsonl_record(path, lineno, line)


def iter_units(path: Path, txt_split: str, default_domain: str, domains):
    """(domain, text) units of one input file: JSONL records, or .txt blocks/lines/the whole file."""
    if path.suffix == ".jsonl":
        for lineno, line in iter_lines(path):
            if line.strip():
                rec = jsonl_record(path, lineno, line)
                yield (
                    (rec.get("domain") if rec.get("domain") in domains else default_domain),
                    str(rec["text"]),
                )
        return
    block = []
    for _, line in iter_lines(path):
        if txt_split == "line":
            yield default_domain, line
        elif txt_split == "blank" and BLANK_LINE.fullmatch(line):
            yield default_domain, "\n".join(block)
            block = []
        else:
            block.append(line)
    if txt_split != "line":
        yield default_domain, "\n".join(block)


def iter_documents(paths, cfg, prefix="in"):
    """Documents {"id", "domain", "lang", "text"} from the files, read lazily, long ones cut to
    cfg.max_doc_chars (cut_document), ids `<prefix>0000000` in order."""
    i = 0
    for path in map(Path, paths):
        for domain, text in iter_units(path, cfg.txt_split, cfg.input_domain, DOMAINS):
            for piece in cut_document(text.strip(), cfg.max_doc_chars):
                if piece.strip():
                    yield {"id": f"{prefix}{i:07d}", "domain": domain, "lang": "", "text": piece}
                    i += 1


def read_documents(paths, cfg, prefix="in") -> list:
    """iter_documents as a list (small files: --fp-check's real texts); a UserError when there are none."""
    docs = list(iter_documents(paths, cfg, prefix))
    if not docs:
        raise UserError(
            f"{', '.join(map(str, paths))}: no documents in the input; pass files with text in them"
        )
    return docs
