"""The report card of one run: every stage's headline against a stated bar, then its tables and plots.

    from common.report_card import write_report, headline_of
    write_report("runs/tiny")   # runs/tiny/report.md and runs/tiny/report_*.png
    python report.py --run runs/tiny          # the same from the command line (report.py)
    (run_all.py calls write_report at the end of every run, and headline_of after each stage)

Every number comes from the files the stages wrote into that run folder (stats.json, outcome.json,
metrics.jsonl, compare.json ...), none is typed here; a stage whose folder holds no finished run
(no manifest.json) is reported as "not run", never as a number. At the top, one line per stage: the
headline, the bar and the verdict the stage itself wrote into its outcome.json (`"headline"`, `"bar"`,
made by common/outcome.make_bar): this file decides no verdict and holds no threshold, it lays out what
the stages measured, with their tables and plots. The stages and their folders come from the registry
(common/layout.py).

It lives in common/ beside the registry (layout.py) because it reads every stage and belongs to none
(a stage may import only from earlier ones), and it imports no stage: it reads their files. It is a
library, not a command, so run_all.py and report.py (the command) can both use it.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from common.cli import UserError
from common.files import atomic_write_text, markdown_table, pyplot, read_json, save_figure
from common.layout import RunLayout, stage as stage_entry
from common.runs import MANIFEST


# ----------------------------------------------------------------------------------------------------
# Reading a run: only finished stages count


def finished(folder: Path) -> bool:
    """A stage's folder holds a finished run: its manifest is there (written last) and says complete."""
    m = folder / MANIFEST
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text(encoding="utf-8")).get("status", "complete") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def outcome(run: Path, folder: str, name: str = "outcome.json"):
    """The JSON a stage wrote, or None when the stage has not finished a run there."""
    d = run / folder
    return read_json(d / name) if finished(d) and (d / name).is_file() else None


def stage_block(s, run: Path, folder: str) -> bool:
    """Fill s.headline, s.bar and s.passed from the stage's outcome.json ({"headline", "bar"}, written by
    the stage through common/outcome.py); False when the stage has not finished a run there."""
    o = outcome(run, folder)
    if o is None:
        return False
    s.headline = o.get("headline", "(the stage wrote no headline)")
    bar = o.get("bar")
    s.bar, s.passed = (
        (bar["note"] or bar["metric"], bar["passed"]) if bar else (o.get("table_only", ""), None)
    )
    s.ran = True
    return True


def ci(interval, digits=3) -> str:
    """' [lo, hi]' of a 95 % interval, or nothing when there is none."""
    return f" [{num(interval[0], digits)}, {num(interval[1], digits)}]" if interval else ""


def num(x, digits=3, sign=False) -> str:
    """A number as text; a missing one as '-' and a NaN/inf visibly so (never hidden as a number)."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else "inf"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}" if isinstance(x, float) else f"{x:,}"


@dataclass
class Section:
    """What one stage contributes: its headline line, the bar it is held to, the verdict, the body."""

    stage: str
    title: str
    headline: str = "not run"
    bar: str = ""
    passed: bool = None  # None: not run, or the bar does not apply (e.g. no labels on real text)
    body: str = ""
    ran: bool = False  # a finished run was read: passed None then means "n/a" (a table, no bar)


# ----------------------------------------------------------------------------------------------------
# One function per stage: (run, figure folder) -> Section. Each reads only its stage's files.


def data_section(run, figs) -> Section:
    s = Section("data", "01 Data: cleaning, dedup, mixing, splits")
    stats = outcome(run, "data", "stats.json")
    if stats is None or not stage_block(s, run, "data"):
        return s
    noise = {k: v for k, v in stats.get("noise", {}).items() if "precision" in v}
    clean = stats.get("noise", {}).get("(clean docs)", {})
    splits = stats.get("splits", {})
    split_line = ", ".join(f"{k} {v['docs']:,} docs" for k, v in splits.items())
    if not noise:
        s.body = markdown_table(
            [{"split": k, "docs": f"{v['docs']:,}", "chars": f"{v['chars']:,}"} for k, v in splits.items()],
            ["split", "docs", "chars"],
        )
        return s
    rows = [
        {
            "noise type": k,
            "step": v["step"],
            "injected": v["injected"],
            "caught": v["caught"],
            "missed": v["missed"],
            "precision": num(v["precision"]) + ci(v.get("precision_ci")),
            "recall": num(v["recall"]) + ci(v.get("recall_ci")),
            "bar": v.get("bar", "-"),
        }
        for k, v in noise.items()
    ]
    domains = [
        {
            "domain": k,
            "docs kept": f"{v['docs_mixed']:,}",
            "chars": f"{v['chars_mixed']:,}",
            "share": f"{100 * v['share']:.1f} %",
        }
        for k, v in stats.get("domains", {}).items()
    ]
    s.body = "\n\n".join(
        [
            "Cleaning, per injected noise type (precision: of what the step flagged, the share that was this noise; "
            "recall: of what was injected, the share caught):",
            markdown_table(
                rows, ["noise type", "step", "injected", "caught", "missed", "precision", "recall", "bar"]
            ),
            "Intervals: 95 % Wilson. edited_copy: a near_dup copy whose shingle Jaccard with its source "
            "is below the dedup threshold, so not a near duplicate by the step's definition (not judged).",
            f"Clean documents wrongly removed: {clean.get('wrongly_removed', 0)} of {clean.get('injected', 0):,}. "
            f"Splits: {split_line}.",
            markdown_table(domains, ["domain", "docs kept", "chars", "share"]),
            figure(
                drawn(figs, "report_cleaning.png", plot_cleaning, noise),
                "precision and recall per noise type",
            ),
        ]
    )
    return s


def plot_cleaning(noise, path):
    plt = pyplot()
    names = list(noise)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    xs = range(len(names))
    ax.bar(
        [x - 0.2 for x in xs],
        [noise[n]["precision"] for n in names],
        0.4,
        label="precision",
        color="tab:blue",
    )
    ax.bar(
        [x + 0.2 for x in xs], [noise[n]["recall"] for n in names], 0.4, label="recall", color="tab:orange"
    )
    ax.axhline(0.95, ls="--", c="gray", lw=1, label="bar 0.95")
    ax.set(
        xticks=list(xs),
        ylim=(0, 1.15),
        ylabel="share of documents",
        title="01 cleaning: precision and recall per injected noise type",
    )
    ax.set_xticklabels(names, rotation=25, ha="right")
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    save_figure(fig, path)


def tokenizer_section(run, figs) -> Section:
    s = Section("tokenizer", "02 Tokenizer: bytes per token on val text")
    bpe = outcome(run, "tokenizer")
    if bpe is None or not stage_block(s, run, "tokenizer"):
        return s
    rows = list(bpe["rows"])
    for other in ("wordpiece", "unigram"):  # their outcome repeats BPE's and GPT-2's rows: keep theirs
        o = outcome(run, other)
        rows += [r for r in (o or {}).get("rows", []) if not r["tokenizer"].startswith(("ours", "GPT-2"))]
    ours = next(r for r in rows if "ours" in r["tokenizer"] or "BPE" in r["tokenizer"])
    langs = [k for k in ("english", "chinese", "code", "all") if k in ours]
    table = [
        {
            "tokenizer": r["tokenizer"],
            "vocab": f"{r['vocab_size']:,}",
            "train s": r.get("train_s", "-"),
            **{k: num(r.get(k), 2) if isinstance(r.get(k), float) else r.get(k, "-") for k in langs},
        }
        for r in rows
    ]
    s.body = "\n\n".join(
        [
            markdown_table(table, ["tokenizer", "vocab", "train s", *langs]),
            "WordPiece and Unigram collapse runs of whitespace, which flatters their bytes/token.",
            figure(drawn(figs, "report_tokenizer.png", plot_tokenizers, rows, langs), "bytes per token"),
        ]
    )
    return s


def plot_tokenizers(rows, langs, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 3.8))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar(
            [j + (i - (len(rows) - 1) / 2) * width for j in range(len(langs))],
            [r.get(k) if isinstance(r.get(k), (int, float)) else 0 for k in langs],
            width,
            label=r["tokenizer"],
        )
    ax.set(
        xticks=list(range(len(langs))),
        ylabel="UTF-8 bytes per token (higher: shorter)",
        title="02 tokenizers on the val split",
    )
    ax.set_xticklabels(langs)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    save_figure(fig, path)


def bar_line(b: dict) -> str:
    """A stage's bar (SCHEMA.md) as one line: metric, value [interval] (n), the side of the threshold it
    must be on, and the baseline behind the threshold."""
    iv = f" [{num(b['interval'][0])}, {num(b['interval'][1])}]" if b.get("interval") else ""
    n = f" (n = {b['n']:,})" if b.get("n") is not None else ""
    side = "<" if b["direction"] == "lower" else ">"
    base = f"; baseline: {b['baseline_name']} {num(b['baseline'])}" if b.get("baseline_name") else ""
    return f"{b['metric']}: {num(b['value'])}{iv}{n}, must be {side} {num(b['threshold'])}{base}"


BAR_COLUMNS = ["stage", "metric", "value", "95 % interval", "n", "baseline", "threshold", "verdict"]


def bar_rows(run: Path) -> list:
    """One row per bar in the outcome.json of every finished stage folder of the run (a stage with
    several writes "bars"; "bar" is the one that decides its verdict, marked *)."""
    rows = []
    for folder in sorted(p for p in Path(run).iterdir() if p.is_dir()):
        try:
            rows += bar_rows_of(folder.name, outcome(Path(run), folder.name))
        except DAMAGED:  # the stage's own row says its results are unreadable
            continue
    return rows


def bar_rows_of(stage: str, o) -> list:
    """The rows of one stage's bars; a finished stage that wrote no bar (a table, or real text with no
    labels to score) gets one row saying so, with verdict n/a."""
    if isinstance(o, dict) and "headline" in o and o.get("bar") is None:
        why = o.get("table_only") or "no bar: " + o["headline"]
        return [dict.fromkeys(BAR_COLUMNS, "-") | {"stage": stage, "metric": why, "verdict": "n/a"}]
    if not isinstance(o, dict) or not isinstance(o.get("bar"), dict):
        return []
    rows = []
    for b in o.get("bars") or [o["bar"]]:
        iv = b.get("interval")
        base = b.get("baseline")
        rows.append(
            {
                "stage": stage + (" *" if b == o["bar"] and len(o.get("bars") or []) > 1 else ""),
                "metric": b["metric"],
                "value": num(b["value"]),
                "95 % interval": f"[{num(iv[0])}, {num(iv[1])}]" if iv else "-",
                "n": num(b.get("n")),
                "baseline": f"{b.get('baseline_name') or 'baseline'} {num(base)}"
                if base is not None
                else "-",
                "threshold": ("< " if b["direction"] == "lower" else "> ") + num(b["threshold"]),
                "verdict": verdict(b["passed"]),
            }
        )
    return rows


def pretrain_section(run, figs) -> Section:
    s = Section("pretrain", "04 Pretraining")
    o = outcome(run, "pretrain")
    if o is None or not stage_block(s, run, "pretrain"):
        return s
    rows = [
        {"quantity": k, "value": v}
        for k, v in [
            ("parameters", f"{o['params']:,}"),
            ("steps", f"{o['steps']:,} ({o['status']})"),
            ("tokens seen", f"{o['tokens_seen']:,}"),
            ("best val loss in training (fixed windows)", num(o["best_val_loss"])),
            ("at step", f"{o['best_step']:,}"),
            ("unigram baseline (nats/token)", num(o["unigram_val_loss"])),
            ("final train loss", num(o["train_loss"])),
            ("tokens/s", f"{o['tokens_per_s']:,.0f} ({o['device']}, {o['dtype']})"),
            ("MFU", num(o.get("mfu"))),
        ]
    ]
    if "bar" not in o:  # a run from before the held-out evaluation: no verdict
        s.headline = f"val loss {o['best_val_loss']:.3f} nats/token (an older run: no held-out bar)"
        s.body = markdown_table(rows, ["quantity", "value"])
        return s
    s.passed, s.headline = o["bar"]["passed"], o["headline"]
    h = o["heldout"]
    splits = [x for x in ("val", "test") if f"{x}_loss" in h]
    models = [{"model": f"transformer ({h['checkpoint']})", **{x: num(h[f"{x}_loss"]) for x in splits}}]
    models += [
        {
            "model": f"Kneser-Ney {k}-gram" + (" (chosen on val)" if int(k) == h["ngram_order"] else ""),
            **{x: num(v[f"{x}_loss"]) for x in splits},
        }
        for k, v in h["ngram"].items()
    ]
    parts = [
        "\n".join(f"- {bar_line(b)}: **{verdict(b['passed'])}**" for b in o.get("bars", [o["bar"]])),
        f"Loss (nats/token) on the whole splits, {h[splits[-1] + '_windows']:,} windows of {h['block_size']} tokens:",
        markdown_table(models, ["model", *splits]),
        markdown_table(rows, ["quantity", "value"]),
        figure(
            RunLayout(run).pretrain / "loss.png",
            "train and val loss against the unigram baseline (pretrain.py's plot)",
        ),
    ]
    recall = o.get("fact_recall")
    if recall:  # fact_recall.py: does the base know its world? (held-out subjects, greedy completions)
        parts.append(
            "Fact recall of best.pt (greedy completions; 95 % Wilson interval; the 8-gram lookup table "
            "completes from the training shard, the majority answer knows only the distribution):\n\n"
            + markdown_table(
                [
                    {
                        "attribute": r["attribute"],
                        "phrasing": r["phrasing"],
                        "n": r["n"],
                        "recall": f"{num(r['accuracy'])} [{num(r['interval'][0])}, {num(r['interval'][1])}]",
                        "8-gram lookup": num(r["lookup"]),
                        "majority": num(r["majority"]),
                    }
                    for r in recall["rows"]
                ],
                ["attribute", "phrasing", "n", "recall", "8-gram lookup", "majority"],
            )
        )
    s.body = "\n\n".join(parts)
    return s


def scaling_section(run, figs) -> Section:
    s = Section(
        "scaling",
        "04 Scaling-law fit (optional: `--add scaling`)",
        bar="the law's leave-one-out prediction error below a log-linear fit's (interval wholly below)",
    )
    o = outcome(run, "scaling", "scaling.json")
    if o is None or not stage_block(s, run, "scaling"):
        return s
    rows = [
        {
            "layers": r["n_layer"],
            "width": r["n_embd"],
            "N": f"{r['N']:,}",
            "D": f"{r['D']:,}",
            "val loss": num(r["val_loss"]),
        }
        for r in o["runs"]
    ]
    s.body = "\n\n".join(
        [
            markdown_table(rows, ["layers", "width", "N", "D", "val loss"]),
            figure(run / "scaling" / "scaling.png", "scaling fit (scaling.py's plot)"),
        ]
    )
    return s


def overfit_section(run, figs) -> Section:
    s = Section("overfit", "04 Overfitting and regularization (optional: `--add overfit`)")
    o = outcome(run, "overfit", "overfit.json")
    if o is None or not stage_block(s, run, "overfit"):
        return s
    rows = o["rows"]
    s.body = "\n\n".join(
        [
            markdown_table(
                [
                    {
                        "variant": r["variant"],
                        "train": num(r["train"]),
                        "val": num(r["val"]),
                        "gap": num(r["gap"]),
                        "best val": num(r["best_val"]),
                        "excess closed": "reference"
                        if r["variant"] == "early stop"
                        else num(100 * r["excess_closed"], 0) + " %",
                    }
                    for r in rows
                ],
                ["variant", "train", "val", "gap", "best val", "excess closed"],
            ),
            figure(run / "overfit" / "overfit.png", "overfitting curves (overfit.py's plot)"),
        ]
    )
    return s


def sft_section(run, figs) -> Section:
    s = Section("sft", "05 Supervised fine-tuning")
    o = outcome(run, "sft")
    if o is None or not stage_block(s, run, "sft"):
        return s
    b, t = o["heldout_base"], o["heldout_tuned"]
    rows = [
        {"model": "base + template", **eval_cells(b)},
        {"model": f"after SFT ({o['method']})", **eval_cells(t)},
    ]
    s.body = "\n\n".join(
        [
            markdown_table(rows, ["model", "exact match", "token F1", "answer acc"]),
            f"Trainable parameters {o['params']['trainable']:,} of {o['params']['total']:,} "
            f"({o['params']['percent']:.2f} %); {o['steps']} steps ({o['stopped']}); pretraining val loss "
            f"{o['corpus_val_loss']['before']:.3f} -> {o['corpus_val_loss']['after']:.3f} (forgetting if it rises).",
        ]
    )
    return s


def eval_cells(e) -> dict:
    return {
        "exact match": num(e["exact_match"]),
        "token F1": num(e["token_f1"]),
        "answer acc": num(e.get("answer_acc")),
    }


def sft_compare_section(run, figs) -> Section:
    s = Section("sft_compare", "05 Fine-tuning methods compared (same base, data, steps, seed)")
    o = outcome(run, "sft_compare", "compare.json")
    if o is None or not stage_block(s, run, "sft_compare"):
        return s
    outs = o["outcomes"]
    base = next(iter(outs.values()))["heldout_base"]
    rows = [{"method": "base (template only)", "trainable": "0", **eval_cells(base), "forgetting": "-"}]
    rows += [
        {
            "method": m,
            "trainable": f"{v['params']['trainable']:,} ({v['params']['percent']:.2f} %)",
            **eval_cells(v["heldout_tuned"]),
            "forgetting": num(v["corpus_val_loss"]["change"], sign=True),
            "file KiB": f"{v['file_kib']:.0f}",
            "train CPU s": f"{v['train_cpu_s']:.0f}",
        }
        for m, v in outs.items()
    ]
    s.body = "\n\n".join(
        [
            "Forgetting: change of the pretraining val loss (nats/token) after fine-tuning; higher = more forgotten.",
            markdown_table(
                rows,
                [
                    "method",
                    "trainable",
                    "exact match",
                    "token F1",
                    "answer acc",
                    "forgetting",
                    "file KiB",
                    "train CPU s",
                ],
            ),
            figure(
                run / "sft_compare" / "compare.png", "answers and forgetting per method (compare.py's plot)"
            ),
        ]
    )
    return s


def reward_model_section(run, figs) -> Section:
    s = Section("reward_model", "06 Reward model")
    o = outcome(run, "rm")
    if o is None or not stage_block(s, run, "rm"):
        return s
    h = o["heldout"]
    per = [
        {"rule": k, "accuracy": num(v["accuracy"] if isinstance(v, dict) else v)}
        for k, v in h.get("per_rule", {}).items()
    ]
    s.body = "\n\n".join(
        [markdown_table(per, ["rule", "accuracy"]), figure(RunLayout(run).rm / "rm.png", "reward model")]
    )
    return s


def rl_method_section(name):
    def section(run, figs) -> Section:
        s = Section(name, f"06 {name.upper()}")
        if not stage_block(s, run, name):
            return s
        s.body = figure(run / name / f"{name}.png", f"{name} training")
        return s

    return section


def rl_compare_section(run, figs) -> Section:
    s = Section("rl_compare", "06 Alignment methods against SFT (same held-out prompts, greedy)")
    o = outcome(run, "rl_compare", "compare.json")
    if o is None or not stage_block(s, run, "rl_compare"):
        return s
    columns = list(dict.fromkeys(k for r in o["rows"] for k in r))  # SFT's row has no "own metric" columns
    s.body = "\n\n".join(
        [
            markdown_table(o["rows"], columns),
            "\n".join(f"- {m}" for m in o.get("missing", [])),
            figure(run / "rl_compare" / "compare.png", "alignment comparison"),
        ]
    )
    return s


def distill_section(run, figs) -> Section:
    s = Section("distill", "07 Distillation")
    o = outcome(run, "distill")
    if o is None or not stage_block(s, run, "distill"):
        return s
    rows = o["rows"]
    table = [
        {
            "model": k,
            "params": f"{v['params']:,}",
            "val loss": num(v["val_loss"]),
            "val ppl": num(v["val_ppl"], 2),
            "exact match": num(v.get("exact_match")),
            "gap closed": num(v.get("gap_closed")),
            "gen tok/s": num(v.get("gen_tok_s"), 0),
        }
        for k, v in rows.items()
    ]
    s.body = "\n\n".join(
        [
            markdown_table(
                table, ["model", "params", "val loss", "val ppl", "exact match", "gap closed", "gen tok/s"]
            ),
            figure(RunLayout(run).distill / "distill.png", "distillation"),
        ]
    )
    return s


def speculative_section(run, figs) -> Section:
    s = Section("speculative", "07 Speculative decoding")
    o = outcome(run, "speculative")
    if o is None or not stage_block(s, run, "speculative"):
        return s
    rows = o["rows"]
    table = [
        {
            "draft": r["draft"],
            "k": r["k"],
            "accept rate": num(r.get("accept_rate")),
            "tok/s": num(r["tok_s"], 0),
            "speedup": num(r["speedup"], 2),
            "identical": r.get("identical_to_teacher") or "-",
        }
        for r in rows
    ]
    s.body = "\n\n".join(
        [
            markdown_table(table, ["draft", "k", "accept rate", "tok/s", "speedup", "identical"]),
            figure(run / "speculative" / "speculative.png", "speculative decoding"),
        ]
    )
    return s


def prune_section(run, figs) -> Section:
    s = Section("prune", "07 Pruning")
    o = outcome(run, "prune")
    if o is None or not stage_block(s, run, "prune"):
        return s
    rows = o["rows"]
    table = [
        {
            "variant": r["variant"],
            "removed": r["removed"],
            "nonzero params": f"{r['nonzero_params']:,}",
            "ppl pruned": num(r["ppl_pruned"], 2),
            "ppl recovered": num(r["ppl_recovered"], 2),
            "file KiB": num(r["file_kib"], 0),
        }
        for r in rows
    ]
    s.body = "\n\n".join(
        [
            markdown_table(
                table, ["variant", "removed", "nonzero params", "ppl pruned", "ppl recovered", "file KiB"]
            ),
            figure(run / "prune" / "prune.png", "pruning"),
        ]
    )
    return s


def quantize_section(run, figs) -> Section:
    s = Section("quantize", "07 Quantization")
    o = outcome(run, "quant")
    if o is None or not stage_block(s, run, "quant"):
        return s
    table = [
        {
            "format": r["format"],
            "bytes": f"{r['bytes']:,}",
            "x fp32": num(r["vs_fp32_bytes"]),
            "val ppl": num(r["val_ppl"], 3),
            "change": num(r["ppl_change_pct"], 2, sign=True) + " %",
            "exact match": num(r.get("exact_match")),
            "tok/s": num(r.get("tok_s"), 0),
        }
        for r in o["rows"]
    ]
    s.body = "\n\n".join(
        [
            markdown_table(table, ["format", "bytes", "x fp32", "val ppl", "change", "exact match", "tok/s"]),
            *[f"- {g}" for g in o.get("goals", [])],
            figure(RunLayout(run).quant / "quant.png", "quantization"),
        ]
    )
    return s


def serve_section(run, figs) -> Section:
    s = Section("serve", "07 Serving: batching policies on one request stream")
    o = outcome(run, "serve", "bench_serve.json")
    if o is None or not stage_block(s, run, "serve"):
        return s
    table = [
        {
            "policy": r["policy"],
            "tokens/s": num(r["tokens_per_s"], 0),
            "tokens/s per pass": ", ".join(f"{x:.0f}" for x in r.get("tokens_per_s_passes", [])) or "-",
            "requests/s": num(r["requests_per_s"], 2),
            "TTFT p50 s": num(r["ttft_p50"]),
            "latency p95 s": num(r["latency_p95"]),
            "mean batch": num(r["mean_batch"], 2),
            "same tokens": "yes" if r["same_tokens"] else "NO",
        }
        for r in o["rows"]
    ]
    s.body = "\n\n".join(
        [
            f"Setup: {o.get('setup', '')}",
            markdown_table(table, list(table[0]) if table else []),
            figure(RunLayout(run).serve / "bench_serve.png", "serving"),
        ]
    )
    return s


def headline_section(name: str, title: str):
    """A section holding only what the stage wrote in outcome.json (headline, bar): for a stage whose
    tables live in its own outcome and README rather than here."""

    def section(run, figs) -> Section:
        s = Section(name, title)
        stage_block(s, run, stage_entry(name).outcome_folder)
        return s

    return section


SECTIONS = {
    "data": data_section,
    "tokenizer": tokenizer_section,
    "contrastive": headline_section(
        "contrastive", "03 Contrastive pretraining (optional: `--add contrastive`)"
    ),
    "pretrain": pretrain_section,
    "scaling": scaling_section,
    "overfit": overfit_section,
    "sft": sft_section,
    "sft_compare": sft_compare_section,
    "knowledge_update": headline_section(
        "knowledge_update", "05 Knowledge update: people move (optional: `--add knowledge_update`)"
    ),
    "reward_model": reward_model_section,
    "dpo": rl_method_section("dpo"),
    "ppo": rl_method_section("ppo"),
    "overopt": headline_section("overopt", "06 Reward over-optimization: best-of-n and PPO against a proxy"),
    "rlaif": headline_section("rlaif", "06 RLAIF: an AI judge's labels, measured against the gold judge"),
    "grpo": rl_method_section("grpo"),
    "rl_compare": rl_compare_section,
    "distill": distill_section,
    "speculative": speculative_section,
    "prune": prune_section,
    "quantize": quantize_section,
    "serve": serve_section,
}


def figure(path, alt: str) -> str:
    """A markdown image link relative to report.md (report_*.png beside it, a stage's plot in its folder),
    or nothing when no figure was drawn or the stage wrote none."""
    if path is None:
        return ""
    path = Path(path)
    if not path.is_file():
        return f"({alt}: no plot at {path})"
    return f"![{alt}]({path.name if path.name.startswith('report_') else path.parent.name + '/' + path.name})"


def drawn(figs, name, plot, *args):
    """figs/name after plot(*args, figs/name); None without a figure folder (run_all's progress lines)."""
    if figs is None:
        return None
    plot(*args, figs / name)
    return figs / name


# what reading a hand-edited or damaged file raises: corrupt JSON, a missing key, a wrong type, an empty list
DAMAGED = (UserError, LookupError, TypeError, ValueError, AttributeError, ArithmeticError, StopIteration)


def section_of(stage: str, run: Path, figs) -> Section:
    """The stage's section; figs: the folder to draw report_*.png into (None: draw nothing)."""
    script = stage_entry(stage).script
    if not (REPO / script).is_file():  # a later stage not merged yet
        s = SECTIONS[stage](run, None)
        s.headline, s.passed, s.body = f"not in this checkout ({script} is absent)", None, ""
        return s
    try:
        return SECTIONS[stage](run, figs)
    except DAMAGED as e:
        return unreadable(SECTIONS[stage](Path("/nonexistent"), None), e)  # the empty section: its title


def unreadable(s: Section, e: Exception) -> Section:
    """A section whose files parse as JSON but hold a wrong or missing field (edited by hand, or written by
    another version): said in its headline, so one bad file never takes the whole report card down."""
    why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {str(e)[:80]}"
    s.headline = (
        f"unreadable results ({why}); a file in its folder is damaged or hand-edited: rerun the stage"
    )
    s.passed, s.body = None, ""
    return s


def headline_of(stage: str, run) -> str:
    """One stage's headline and verdict, for run_all's progress line (no figures drawn)."""
    if stage in ("wordpiece", "unigram"):  # their rows join the tokenizer section
        try:
            o = outcome(Path(run), stage)
            return o.get("headline", "(the stage wrote no headline)") if o else "not run"
        except DAMAGED as e:
            return unreadable(Section(stage, stage), e).headline
    s = section_of(stage, Path(run), None)
    return f"{s.headline}{'' if s.passed is None else ' | ' + verdict(s.passed)}"


def verdict(passed) -> str:
    return "-" if passed is None else "PASS" if passed else "FAIL"


def write_report(run) -> Path:
    """Write run/report.md and its run/report_*.png; returns the report's path."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run folder; run `python run_all.py --run {run.name}` first")
    sections = [section_of(stage, run, run) for stage in SECTIONS]
    top = [
        {
            "stage": s.stage,
            "headline": s.headline,
            "bar": s.bar or "-",
            "result": "n/a" if s.ran and s.passed is None else verdict(s.passed),
        }
        for s in sections
    ]
    ran = [s for s in sections if s.passed is not None]
    lines = [
        f"# Report card: {run}",
        "",
        f"{sum(s.passed for s in ran)} of {len(ran)} stages with a verdict pass their bar; every number below is "
        f"read from the files the stages wrote into `{run}/`.",
        "",
        markdown_table(top, ["stage", "headline", "bar", "result"]),
    ]
    bars = bar_rows(run)
    if bars:
        lines += [
            "",
            "## Bars",
            "",
            "Every bar a stage wrote into its outcome.json (SCHEMA.md): the metric, its value and 95 % interval "
            "over n items, the strongest cheap baseline, the threshold and which side of it passes. A bar "
            "passes only when its whole interval is on the passing side; n/a: the stage is a table with "
            "no bar of its own.",
            "",
            markdown_table(bars, BAR_COLUMNS),
        ]
    times = read_json(run / "run_all.json") if (run / "run_all.json").is_file() else None
    seconds = times.get("seconds") if isinstance(times, dict) else None
    if not isinstance(seconds, dict) or not all(isinstance(v, (int, float)) for v in seconds.values()):
        times = None  # absent, or not run_all's {"seconds": {stage: number}}: no time table
    if times and times.get("seconds"):
        rows = [{"stage": k, "wall s": f"{v:.1f}"} for k, v in times["seconds"].items()]
        rows.append({"stage": "sum", "wall s": f"{sum(times['seconds'].values()):.1f}"})
        lines += [
            "",
            "## Time per stage",
            "",
            "Wall seconds of each stage's latest run (run_all.json), on the machine "
            "that ran it at that moment: a shared machine makes them noisy.",
            "",
            markdown_table(rows, ["stage", "wall s"]),
        ]
    for s in sections:
        mark = ("**n/a** " if s.ran else "") if s.passed is None else f"**{verdict(s.passed)}** "
        lines += ["", f"## {s.title}", "", f"{mark}{s.headline}" + (f" (bar: {s.bar})" if s.bar else "")]
        if s.body:
            lines += ["", s.body]
    path = run / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
