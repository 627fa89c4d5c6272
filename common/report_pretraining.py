"""The report card's sections for stages 01-04 (data, tokenizer, pretraining, scaling, overfitting):
one function per stage, (run folder, figure folder) -> Section, each reading only its stage's files.

    from common.report_pretraining import pretrain_section
    s = pretrain_section(Path("runs/tiny"), None)   # None: draw no figure
    print(s.headline, s.passed)

Laid out by common/report_card.py; the shared pieces are in common/report_parts.py.
"""

from common.files import markdown_table, pyplot, save_figure
from common.layout import RunLayout
from common.report_parts import Section, bar_line, verdict, ci, drawn, figure, num, outcome, stage_block


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
