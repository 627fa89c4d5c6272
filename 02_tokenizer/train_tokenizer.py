"""Stage 02's command: train byte-level BPE on runs/<name>/data/, then write the token ids for 04.

  python 02_tokenizer/train_tokenizer.py --data runs/tiny [--vocab-size 2048] [--pattern gpt4] [--overwrite]
  python 02_tokenizer/train_tokenizer.py --data runs/tiny --preset micro   # seconds, for the smoke test

Writes runs/<name>/tokenizer/ (tokenizer.json, outcome.json: bytes/token on val beside GPT-2's,
bytes_per_token.png, manifest.json) and then runs/<name>/tokens/ (train.bin, val.bin, test.bin when
01 made a test split, meta.json; token_shards.py), whose manifest names data/ and tokenizer/ as its
inputs, so 04_pretrain refuses token ids from a tokenizer retrained since. The body it shares with
wordpiece.py and unigram.py (read, lock, refuse, train, measure, write) is tokenizer_cli.py; the
tokenizer itself is bpe.py.

Interview questions it answers:
- How big should the vocabulary be for a given model and corpus? (the embedding is vocab x d_model;
  every id must be seen often enough to be trained: 2048 for a tiny model on a few MB, 50k for GPT-2)
- Why must the token shards be remade whenever the tokenizer changes? (the ids mean other strings;
  the manifest chain makes 04 refuse stale shards instead of training on garbage)
"""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import check_config, command_line, option, parse_config, run_cli, set_interrupt_hint
from common.files import read_jsonl
from common.layout import RunLayout
from common.runs import claim_output, run_lock, staged_dir, write_manifest

from bpe import MIN_VOCAB_SIZE, BPETokenizer  # same stage
from pretokenize import SPECIAL_TOKENS, compile_pattern  # same stage
from token_shards import write_token_shards  # same stage
from tokenizer_cli import add_run_flags, read_data, train_and_report  # same stage


@dataclass
class BPEConfig:
    # 2048 suits a tiny GPT on a few MB of text: the embedding (2048 x d_model) stays a small part
    # of the parameters, and every token id is seen thousands of times in training. A 50k vocabulary
    # on 5 MB would leave most ids nearly untrained and the embedding larger than the model.
    vocab_size: int = option(
        2048,
        f"256 bytes + merges + {len(SPECIAL_TOKENS)} special tokens, at least {MIN_VOCAB_SIZE}",
        min=MIN_VOCAB_SIZE,
    )
    pattern: str = option("gpt4", "pre-tokenizer regex: gpt2, gpt4, or a regex of your own")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(vocab_size=400)}


def check_bpe_config(cfg: BPEConfig):
    """Everything about a config that can be checked before reading any data (UserError if not)."""
    check_config(cfg)
    compile_pattern(cfg.pattern)


def main(argv=None):
    """`python 02_tokenizer/train_tokenizer.py`: train byte-level BPE, then write the token shards for 04_pretrain."""
    cfg, args = parse_config(
        BPEConfig, argv, doc=__doc__, extra=add_run_flags, presets=PRESETS, default_preset="tiny"
    )
    check_bpe_config(cfg)
    run = Path(args.data)
    command = command_line(Path(__file__), argv)
    train_docs, val_docs = read_data(run)
    tokens = RunLayout(run).tokens
    with run_lock(tokens):
        claim_output(tokens, args.overwrite, remove=False)
        tok = train_and_report(
            "ours (BPE)",
            lambda texts, progress: BPETokenizer.train(
                texts,
                cfg.vocab_size,
                cfg.pattern,
                progress=progress,
                progress_every=max(100, cfg.vocab_size // 10),
            ),
            lambda tok, folder: tok.save(folder),
            out=RunLayout(run).tokenizer,
            docs={"train": train_docs, "val": val_docs},
            config=asdict(cfg),
            command=command,
            overwrite=args.overwrite,
        )
        set_interrupt_hint(f"{tokens} is unchanged; rerun `{command}`")
        with staged_dir(tokens) as tmp:
            # test.bin too, when 01 made a test split: 04 reports its headline loss on it, once, at the end
            test = RunLayout(run).data / "test.jsonl"
            splits = {
                "train": train_docs,
                "val": val_docs,
                **({"test": read_jsonl(test)} if test.is_file() else {}),
            }
            meta = write_token_shards(tmp, splits, tok)
            write_manifest(
                tmp,
                stage="02_tokenizer",
                command=command,
                config=asdict(cfg),
                inputs=[RunLayout(run).data, RunLayout(run).tokenizer],
            )
    print(f"tokens: {meta['n_tokens']}, UTF-8 bytes: {meta['n_bytes']}\nwrote {tokens}")


if __name__ == "__main__":
    run_cli(main)
