"""One base, a named LoRA adapter per task, switched per request; measured on both tasks.

    python 05_sft_lora/multi_adapter.py --run runs/tiny                      # facts and arithmetic
    python 05_sft_lora/multi_adapter.py --run runs/tiny --tasks facts=sft,arithmetic=arithmetic --steps 120

Trains one LoRA adapter per task (sft.py, each in its own process, same base, seed and budget) on
runs/<name>/data/tasks/<file>_train.jsonl, then loads all of them onto one copy of the base
(finetuned.load_named_adapters) and answers every task's held-out questions (<file>_heldout.jsonl)
with: the base alone, each adapter, their average (ΔW = ½ΔW_a + ½ΔW_b) and their sum (ΔW_a + ΔW_b),
and routed: every request in one mixed list names its task's adapter (finetuned.answer_requests;
it must equal the own-adapter row). Scores: answer accuracy and exact match of the answer span, 95 %
Wilson intervals.

The bar, per task: accuracy with the task's own adapter minus with the other task's adapter, paired
over the questions, its 95 % bootstrap interval wholly above 0 (switching adapters must matter; if
either adapter did as well on both tasks, one adapter would do and the bar fails).

Writes runs/<name>/multi_adapter/: one sft.py folder per task, multi_adapter.json, outcome.json,
manifest.json; prints the table.

Interview questions it answers:
- How do you serve many fine-tuned variants of one model? (one base, an adapter per task switched
  per request, batched by adapter; kilobytes per task instead of a model copy)
- What happens when you add two task adapters? (the updates interfere: each task keeps part of its
  skill; averaging halves each update, summing keeps both at full size but adds cross-talk)
"""

import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.devices import resolve_device
from common.files import markdown_table, read_json, write_json
from common.layout import RunLayout, task_file
from common.outcome import make_bar
from common.runs import claim_output, run_lock, staged_dir, write_manifest
from common.stats import paired_bootstrap_interval, wilson_interval

from finetuned import answer_requests, load_named_adapters
from metrics import answer_in, exact_match, token_f1
from sft_baselines import answer_span
from sft_data import read_conversations


@dataclass
class MultiConfig:
    run: str = option("", "run folder runs/<name> with pretrain/, tokenizer/, data/tasks/")
    out: str = option("", "output folder; empty = <run>/multi_adapter")
    tasks: list = option(
        ["facts=sft", "arithmetic=arithmetic"],
        "name=file pairs: adapter name and task files data/tasks/<file>_{train,heldout}.jsonl",
        sep=",",
    )
    lora_r: int = option(8, "LoRA rank of every adapter", min=1)
    lr: float = option(3e-3, "learning rate of every adapter", min=1e-8)
    steps: int = option(120, "optimizer steps per adapter", min=1)
    seed: int = option(1337, "the same seed for every adapter")
    eval_limit: int = option(200, "held-out questions per task (0 = all)", min=0)
    max_new_tokens: int = option(32, "longest generated answer", min=1)
    sft_args: str = option("", "extra flags passed to every sft.py run, e.g. '--batch-size 8'")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the results already in the output folder")


PRESETS = {
    "tiny": {},
    "micro": dict(
        steps=4,
        eval_limit=4,
        max_new_tokens=8,
        sft_args="--batch-size 4 --warmup-steps 1 --eval-interval 2 --forget-windows 2 --eval-limit 2",
    ),
}


def parse_tasks(cfg) -> dict:
    """{adapter name: task file stem}, two or more, names unique."""
    pairs = [t.split("=") for t in cfg.tasks]
    if any(len(p) != 2 or not all(p) for p in pairs) or len(pairs) < 2:
        raise UserError(
            f"--tasks {','.join(cfg.tasks)}: give two or more name=file pairs, e.g. facts=sft,arithmetic=arithmetic"
        )
    tasks = dict(pairs)
    if len(tasks) != len(pairs):
        raise UserError(f"--tasks {','.join(cfg.tasks)}: each adapter name once")
    return tasks


def train_adapter(cfg, name, stem, out: Path) -> dict:
    """One LoRA run of sft.py on task `stem`, in its own process; returns its outcome.json."""
    cmd = [
        sys.executable,
        str(REPO / "05_sft_lora" / "sft.py"),
        *("--run", cfg.run, "--out", str(out), "--method", "lora", "--lora-r", str(cfg.lora_r)),
        *("--train-file", str(task_file(cfg.run, "", f"{stem}_train.jsonl"))),
        *("--heldout-file", str(task_file(cfg.run, "", f"{stem}_heldout.jsonl"))),
        *("--lr", f"{cfg.lr:g}", "--steps", str(cfg.steps), "--seed", str(cfg.seed), "--no-eval-base"),
        *("--max-new-tokens", str(cfg.max_new_tokens), "--device", cfg.device),
        *cfg.sft_args.split(),
    ]
    print(f"--- adapter {name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise UserError(f"sft.py for adapter {name} failed: {last.removeprefix('error: ')}")
    return read_json(out / "outcome.json")


def correct(answers, records) -> dict:
    """Per question: answer accuracy (the short answer appears; exact match where a record has none),
    exact match and token F1 (the answer's form: "The answer is 45." against "... 56." scores 0.75)
    of the answer span against the reference turn."""
    spans = [answer_span(a) for a in answers]
    refs = [r["messages"][-1]["content"] for r in records]
    em = [exact_match(s, ref) for s, ref in zip(spans, refs)]
    acc = [answer_in(s, str(r["answer"])) if "answer" in r else e for s, r, e in zip(spans, records, em)]
    return {"acc": acc, "em": em, "f1": [token_f1(s, ref) for s, ref in zip(spans, refs)]}


def settings(names) -> dict:
    """{row label: adapter spec}: the base, each adapter, the average and the sum of all of them."""
    rows = {"base (no adapter)": {}} | {f"adapter {n}": n for n in names}
    rows[f"average ({' + '.join(names)}) / {len(names)}"] = {n: 1 / len(names) for n in names}
    rows[f"sum ({' + '.join(names)})"] = {n: 1.0 for n in names}
    return rows


def share(values) -> str:
    lo, hi = wilson_interval(sum(values), len(values))
    return f"{np.mean(values):.3f} [{lo:.3f}, {hi:.3f}]"


def measure(model, tok, held: dict, cfg, device) -> dict:
    """{row label: {task: {"acc", "em"}}} for every setting, plus the routed row (one mixed request list)."""
    res = {}
    for label, spec in settings(list(held)).items():
        requests = [(spec, r["messages"]) for recs in held.values() for r in recs]
        answers = iter(answer_requests(model, tok, requests, cfg.max_new_tokens, device))
        res[label] = {t: correct([next(answers) for _ in recs], recs) for t, recs in held.items()}
    routed = [(t, r["messages"]) for t, recs in held.items() for r in recs]
    answers = iter(answer_requests(model, tok, routed, cfg.max_new_tokens, device))
    res["routed (each request names its task's adapter)"] = {
        t: correct([next(answers) for _ in recs], recs) for t, recs in held.items()
    }
    return res


def switching_bars(res, tasks) -> list:
    """Per task: own adapter minus the best other adapter, answer accuracy, paired interval above 0."""
    bars = []
    for t in tasks:
        own = res[f"adapter {t}"][t]["acc"]
        other = max((o for o in tasks if o != t), key=lambda o: np.mean(res[f"adapter {o}"][t]["acc"]))
        theirs = res[f"adapter {other}"][t]["acc"]
        bars.append(
            make_bar(
                f"{t} answer accuracy with its own adapter minus with adapter {other}",
                float(np.mean(own) - np.mean(theirs)),
                threshold=0.0,
                direction="higher",
                baseline=float(np.mean(theirs)),
                baseline_name=f"the same base with adapter {other}",
                interval=paired_bootstrap_interval(own, theirs),
                n=len(own),
                note="switching the adapter per request must matter",
            )
        )
    return bars


def summarize(cfg, folder: Path, tasks: dict, held: dict, device) -> tuple:
    """(rows, columns, bars) from the adapters trained in folder/<task>/; writes multi_adapter.json and
    outcome.json there."""
    model, tok = load_named_adapters({n: folder / n for n in tasks}, device)
    res = measure(model, tok, held, cfg, device)
    rows = [
        {
            "adapter": label,
            **{f"{t} answer acc [95% CI]": share(v[t]["acc"]) for t in tasks},
            **{f"{t} exact match": f"{np.mean(v[t]['em']):.3f}" for t in tasks},
            **{f"{t} token F1": f"{np.mean(v[t]['f1']):.3f}" for t in tasks},
        }
        for label, v in res.items()
    ]
    columns = ["adapter"] + [
        f"{t} {c}" for c in ("answer acc [95% CI]", "exact match", "token F1") for t in tasks
    ]
    bars = switching_bars(res, tasks)
    sizes = {n: read_json(folder / n / "outcome.json")["file_kib"] for n in tasks}
    own = {t: np.mean(res[f"adapter {t}"][t]["acc"]) for t in tasks}
    base = {t: np.mean(res["base (no adapter)"][t]["acc"]) for t in tasks}
    headline = "; ".join(f"{t}: own adapter {own[t]:.3f}, base {base[t]:.3f}" for t in tasks)
    headline += " (held-out answer accuracy); adapters " + ", ".join(
        f"{n} {k:.0f} KiB" for n, k in sizes.items()
    )
    write_json(
        folder / "multi_adapter.json",
        {"rows": rows, "results": res, "bars": bars, "adapter_kib": sizes, "config": asdict(cfg)},
    )
    write_json(
        folder / "outcome.json",
        {"headline": headline, "bar": min(bars, key=lambda b: b["interval"][0]), "bars": bars},
    )
    return rows, columns, bars


def main(argv=None):
    cfg, _ = parse_config(MultiConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 04_pretrain wrote pretrain/ into)")
    tasks = parse_tasks(cfg)
    device = resolve_device(cfg.device)
    run = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else run / "multi_adapter"
    held = {}
    for name, stem in tasks.items():
        recs = read_conversations(task_file(cfg.run, "", f"{stem}_heldout.jsonl"))
        held[name] = recs[: cfg.eval_limit] if cfg.eval_limit else recs
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)
        with staged_dir(out) as tmp:
            for n, stem in tasks.items():
                train_adapter(cfg, n, stem, tmp / n)
            rows, columns, bars = summarize(cfg, tmp, tasks, held, device)
            write_manifest(
                tmp,
                stage="05_sft_lora",
                command=command_line(__file__, argv),
                config=asdict(cfg),
                inputs=[RunLayout(run).pretrain, RunLayout(run).tokenizer, RunLayout(run).data],
            )
    print(markdown_table(rows, columns))
    for b in bars:
        print(
            f"bar: {b['metric']} = {b['value']:+.3f} [{b['interval'][0]:+.3f}, {b['interval'][1]:+.3f}]: {'PASS' if b['passed'] else 'FAIL'}"
        )
    print(f"wrote {out}/ (multi_adapter.json, one sft run per adapter)")


if __name__ == "__main__":
    run_cli(main)
