"""The body of stage 02's three commands: train a tokenizer on runs/<name>/data/, measure it, write its folder.

Three commands, one body (`train_and_report`), so all three read, lock, refuse, report and record
their work the same way (common/, README "How the code is laid out"). This file is a library; the
commands are:

  python 02_tokenizer/train_tokenizer.py --data runs/tiny   # BPE -> runs/tiny/tokenizer/ and tokens/
  python 02_tokenizer/wordpiece.py --data runs/tiny    # -> runs/tiny/wordpiece/
  python 02_tokenizer/unigram.py --data runs/tiny      # -> runs/tiny/unigram/

Each command:
  1. checks its flags (vocab size at least the tokenizer's minimum, a regex that compiles) and
     runs/<name>/data/ (present, complete, undamaged: `check_artifact`) before anything else;
  2. locks its output folder(s) and refuses one that holds another run, unless --overwrite;
  3. trains on data/train.jsonl, printing progress, then measures bytes/token on data/val.jsonl
     beside GPT-2's (and beside this run's BPE tokenizer, for WordPiece and Unigram);
  4. builds its folder beside the old one (`staged_dir`): the tokenizer, outcome.json (the table),
     bytes_per_token.png, and manifest.json last, then swaps it in. train_tokenizer.py then does the same for
     tokens/ (token_shards.py), whose manifest lists data/ and tokenizer/ as its inputs, so
     04_pretrain refuses token ids from a tokenizer that has been retrained since.
Ctrl-C or an error leaves each folder either complete and new or as it was. A new tokenizer/
beside the old tokens/ (stopped in between) reads as stale, so 04 refuses it until this is rerun.
"""

import sys
import time
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import set_interrupt_hint
from common.files import markdown_table, read_jsonl, write_json
from common.layout import RunLayout
from common.outcome import make_bar
from common.stats import paired_ratio_difference_interval
from common.runs import check_artifact, claim_output, run_lock, staged_dir, write_manifest

from bpe import BPETokenizer  # same stage
from tokenizer_eval import COLUMNS, gpt2_tiktoken, measured_row, plot_bytes_per_token  # same stage


def add_run_flags(parser):
    """The flags every 02 command has beside its tokenizer's config."""
    parser.add_argument("--data", required=True, help="run folder runs/<name> holding data/ from 01_data")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run already in the output folder"
    )


def read_data(run: Path):
    """(train docs, val docs) of runs/<name>/data/, after checking it is complete and undamaged."""
    check_artifact(RunLayout(run).data, made_by=RunLayout(run).made_by("data"))
    return read_jsonl(RunLayout(run).data / "train.jsonl"), read_jsonl(RunLayout(run).data / "val.jsonl")


def bpe_reference(run: Path):
    """This run's BPE tokenizer, when train_tokenizer.py has made one (checked first), for comparison; else None."""
    if not (RunLayout(run).tokenizer).exists():
        return None
    check_artifact(RunLayout(run).tokenizer, made_by=RunLayout(run).made_by("tokenizer"))
    return BPETokenizer.load(RunLayout(run).tokenizer)


def train_and_report(name, train, save, *, out, docs, config, command, overwrite, compare_with_bpe=False):
    """Train a tokenizer on docs["train"], measure it on docs["val"], write `out`. Returns the tokenizer.

    train(texts, progress) -> tokenizer with `vocab_size`, `encode`, `tokenize`; save(tokenizer, folder).
    `out` is locked and claimed before training, so a refusal costs no training time."""
    out, run = Path(out), Path(out).parent
    with run_lock(out):
        claim_output(out, overwrite, remove=False)
        reference = bpe_reference(run) if compare_with_bpe else None
        set_interrupt_hint(f"{out} is unchanged; rerun `{command}`")
        t0 = time.perf_counter()
        print(f"training {name}, vocab {config['vocab_size']}, on {len(docs['train'])} documents", flush=True)
        tok = train(
            (d["text"] for d in docs["train"]),
            lambda msg: print(f"  [{time.perf_counter() - t0:6.1f}s] {msg}", flush=True),
        )
        train_s = round(time.perf_counter() - t0, 2)
        val = docs["val"]
        encode = getattr(tok, "encode_ordinary", tok.encode)  # BPE's: "<|endoftext|>" in a document is text
        rows = [measured_row(name, tok.vocab_size, train_s, encode, val)]
        if reference is not None:
            rows.append(
                measured_row(
                    f"ours (BPE, {run.name}/tokenizer)",
                    reference.vocab_size,
                    "-",
                    reference.encode_ordinary,
                    val,
                )
            )
        gpt2 = gpt2_tiktoken()
        if gpt2 is not None:
            rows.append(measured_row("GPT-2 (tiktoken)", gpt2.n_vocab, "-", gpt2.encode_ordinary, val))
        table = markdown_table(rows, COLUMNS)
        example = " | ".join(tok.tokenize(val[0]["text"][:120])).replace("\n", "\\n") if val else ""
        print(f"\nbytes per token on val ({len(val)} documents)\n{table}\nexample: {example}")
        with staged_dir(out) as tmp:
            save(tok, tmp)
            block = outcome_block(rows, held_to_bar=not compare_with_bpe)
            if block["bar"] is not None:  # issue 22: GPT-2's bytes/token + a paired interval over val docs
                counts = [
                    [len(d["text"].encode()), len(encode(d["text"])), len(gpt2.encode_ordinary(d["text"]))]
                    for d in val
                ]
                lo, hi = paired_ratio_difference_interval(*zip(*counts))
                block["bar"] = outcome_block(
                    rows, True, (rows[-1]["all"] + lo, rows[-1]["all"] + hi), len(val)
                )["bar"]
            write_json(tmp / "outcome.json", {**block, "rows": rows, "table": table, "example": example})
            plot_bytes_per_token(rows, tmp / "bytes_per_token.png")
            inputs = [RunLayout(run).data] + ([RunLayout(run).tokenizer] if reference is not None else [])
            write_manifest(tmp, stage="02_tokenizer", command=command, config=config, inputs=inputs)
    print(f"wrote {out}")
    return tok


def outcome_block(rows, held_to_bar: bool, interval=None, n=None) -> dict:
    """{"headline", "bar"} of outcome.json (common/outcome.py). rows[0] is the tokenizer just trained;
    only BPE, the pipeline's tokenizer, is held to a bar: more bytes per token than GPT-2's."""
    ours = rows[0]
    gpt2 = next((r for r in rows if "GPT-2" in r["tokenizer"]), None)
    if not held_to_bar:
        return {
            "headline": f"{ours['tokenizer']} vocab {ours['vocab_size']:,}: {ours['all']:.2f} bytes/token on val",
            "bar": None,
        }
    headline = f"BPE vocab {ours['vocab_size']:,}: {ours['all']:.2f} bytes/token on val" + (
        f" (GPT-2: {gpt2['all']:.2f})" if gpt2 else ""
    )
    if gpt2 is None:  # tiktoken absent: nothing to compare with
        return {"headline": headline, "bar": None}
    bar = make_bar(
        "UTF-8 bytes per token on the val split",
        ours["all"],
        threshold=gpt2["all"],
        direction="higher",
        baseline=gpt2["all"],
        baseline_name="GPT-2's tokenizer (tiktoken)",
        interval=interval,
        n=n,
        note="our BPE packs more bytes per token than GPT-2's tokenizer on this corpus",
    )
    return {"headline": headline, "bar": bar}
