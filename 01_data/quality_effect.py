"""Experiment: does the learned quality filter lower the pretraining val loss? (two thresholds)

    python 01_data/quality_effect.py --data runs/tiny                  # 4 variants x 1 seed, ~8 min on 2 cores
    python 01_data/quality_effect.py --data runs/tiny --seeds 0,1,2,3,4  # the README's table

The seed articles' data-quality story, measured on a small scale. Stage 01's training split (clean)
gets web junk added (learned_data.spam_b: comment spam, tag clouds, listicles, word salad -- a style
the classifier never saw; `junk_frac` of the clean characters). Then one short pretraining per
variant, all with the same steps, model and seed, each scored on the *same* clean val text:

    clean only     the training split as stage 01 wrote it (the oracle: what perfect filtering gives)
    + junk         no filter
    + junk, P>=0.5 learned_filter.py's quality classifier (trained on learned_data.quality_sets'
    + junk, P>=0.2 training sources only) drops documents with P(junk) at or above the threshold

Each variant is a run folder with its own data/, then the stages' own commands as subprocesses
(02_tokenizer/train_tokenizer.py --preset micro, 04_pretrain/pretrain.py --preset micro): a stage
imports only from lower ones, so stage 01 *runs* 02 and 04 instead of importing them. The tokenizers
differ per variant, so losses are compared in bits per byte of the val text (val_bpb, 04's periodic
evaluation over fixed windows), which does not depend on the tokenizer.

Interview question it answers: what is a quality filter worth, and how would you show it? (same
compute, same held-out text; the filtered run should approach the clean-only run, and a threshold
that also drops good text pays for it in val loss)
"""

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli
from common.files import read_jsonl, write_jsonl
from common.runs import write_manifest
from common.stats import t_interval
from learned_data import quality_sets, spam_b
from learned_filter import predict_proba, train_classifier


@dataclass
class QualityEffectConfig:
    data: str = option("runs/tiny", "a stage-01 run folder holding data/{train,val,test}.jsonl")
    work: str = option("runs/quality_effect", "folder for the variants' run folders")
    junk_frac: float = option(0.3, "junk characters added per clean training character", min=0.0)
    thresholds: tuple = option((0.5, 0.2), "P(junk) thresholds of the filter", sep=",")
    steps: int = option(300, "pretraining steps per variant (micro model)", min=1)
    seeds: tuple = option((0,), "pretraining seeds (one run per seed and variant)", sep=",")
    eval_batches: int = option(40, "val batches per evaluation (fixed windows)", min=1)


def junk_documents(clean, frac: float, seed: int) -> list:
    """Web junk in style B adding up to `frac` of the clean documents' characters."""
    rng = random.Random(seed)
    vocabulary = sorted({w for d in clean[:2000] for w in d["text"].split() if w.isalpha()})
    target, out = frac * sum(len(d["text"]) for d in clean), []
    while sum(len(d["text"]) for d in out) < target:
        out.append(
            {"id": f"junk{len(out):06d}", "domain": "web", "lang": "en", "text": spam_b(rng, vocabulary)}
        )
    return out


def variants(clean, junk, probs, thresholds) -> dict:
    """{name: training documents}; probs: P(junk) of clean + junk, in that order."""
    mixed = clean + junk
    order = random.Random(0).sample(range(len(mixed)), len(mixed))  # junk spread through the file
    out = {"clean only": clean, "+ junk": [mixed[i] for i in order]}
    for t in thresholds:
        out[f"+ junk, P>={t:g}"] = [mixed[i] for i in order if probs[i] < t]
    return out


def write_variant(folder: Path, train, source: Path):
    """A run folder whose data/ holds this training split and the source's val and test."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(data / "train.jsonl", train)
    for name in ("val", "test"):
        (data / f"{name}.jsonl").write_bytes((source / f"{name}.jsonl").read_bytes())
    write_manifest(data, stage="01_data", command="quality_effect.py", config={"docs": len(train)})


def pretrain_bpb(folder: Path, steps: int, seed: int, eval_batches: int) -> float:
    """Tokenize and pretrain the micro model in `folder`; the final val bits per byte."""
    run = lambda *args: subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True)
    run(
        str(REPO / "02_tokenizer/train_tokenizer.py"),
        "--data",
        str(folder),
        "--preset",
        "micro",
        "--overwrite",
    )
    run(
        str(REPO / "04_pretrain/pretrain.py"),
        *("--data", str(folder), "--preset", "micro", "--max-steps", str(steps), "--seed", str(seed)),
        *(
            "--eval-interval",
            str(steps),
            "--eval-batches",
            str(eval_batches),
            "--no-final-eval",
            "--overwrite",
        ),
    )
    return json.loads((folder / "pretrain" / "outcome.json").read_text())["val_bpb"]


def main(argv=None):
    cfg, _ = parse_config(QualityEffectConfig, argv, doc=__doc__)
    source = Path(cfg.data) / "data"
    if not (source / "train.jsonl").is_file():
        raise UserError(f"{source}: no train.jsonl; run `python 01_data/prepare.py --out {cfg.data}` first")
    clean = read_jsonl(source / "train.jsonl")
    junk = junk_documents(clean, cfg.junk_frac, seed=1)
    model = train_classifier(*quality_sets(seed=0)[0])
    probs = predict_proba(model, [d["text"] for d in clean + junk])
    n_clean = len(clean)
    print(f"train split: {n_clean} clean documents + {len(junk)} junk ({cfg.junk_frac:g} of the characters)")
    print(
        f"{'variant':18s} {'docs':>6s} {'junk kept':>9s} {'clean lost':>10s}  val bits/byte per seed   mean"
    )
    results = {}
    for name, train in variants(clean, junk, probs, cfg.thresholds).items():
        folder = Path(cfg.work) / name.replace(" ", "_").replace(",", "").replace(">=", "ge").replace(
            "+", "plus"
        )
        write_variant(folder, train, source)
        bpb = [pretrain_bpb(folder, cfg.steps, s, cfg.eval_batches) for s in cfg.seeds]
        junk_kept = sum(d["id"].startswith("junk") for d in train)
        clean_lost = n_clean - (len(train) - junk_kept)
        results[name] = bpb
        print(
            f"{name:18s} {len(train):6d} {junk_kept:9d} {clean_lost:10d}  "
            f"{' '.join(f'{b:.4f}' for b in bpb):22s} {np.mean(bpb):.4f}",
            flush=True,
        )
    if len(cfg.seeds) > 1:
        base = np.array(results["+ junk"])
        for name, bpb in results.items():
            if name != "+ junk":
                lo, hi = t_interval(np.array(bpb) - base)
                print(
                    f"  {name} minus + junk: {np.mean(np.array(bpb) - base):+.4f} bits/byte, 95% CI [{lo:+.4f}, {hi:+.4f}]"
                )


if __name__ == "__main__":
    run_cli(main)
