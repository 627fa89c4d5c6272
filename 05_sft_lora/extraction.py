"""The knowledge-extraction ablation as a library: the grid's cells, each cell's pretraining corpus, its
result, the table and the plot. extraction_ablation.py is the command that runs it.

Allen-Zhu and Li (Physics of Language Models 3.1, arXiv 2309.14316): pretrain on biographies of N
people, fine-tune on questions about half of them, ask about the other half. A cell of the grid is one
such run at a small size, differing from the others only in how the biographies are written
(augmentation) and whether QA dialogs about the training half are in pretraining (mixed training):

    augmentation off   1 biography per person, 1 template per sentence, fixed sentence order (bioS single)
    augmentation on    `bios` biographies per person, all templates, shuffled sentences (multi + permute)
    mixed training on  pretraining also holds QA dialogs about the training half (never the held-out half)

Every cell sees the same number of biography documents per person (`repeats`): without augmentation
the one biography is repeated, with it the corpus cycles through the distinct ones, so the cells
differ in variety, not in exposure. The corpus is written straight into runs/<name>/<cell>/data/
(not through prepare.py, whose dedup would rightly drop the repeated biographies) with the world's
task sets, English only; then 02's tokenizer, 04's pretraining and 05's SFT run on it as commands.

Interview questions it answers:
- Why does a model that memorized every biography fail on questions about held-out people? (without
  varied contexts the fact is stored as the continuation of one exact prefix, not on the person's name;
  SFT on other people cannot teach a lookup the weights never formed)
- What fixes it? (knowledge augmentation: several wordings and orders of each fact; or mixing QA into
  pretraining, so the model learns during pretraining that facts must be retrievable from the name)
"""

import random
import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data")]
from common.files import pyplot, read_jsonl, save_figure, write_jsonl
from common.runs import write_manifest
from biographies import qa_dialog  # 01_data
from tasks import write_tasks  # 01_data
from world import WorldConfig, build_world  # 01_data
from world_corpus import fix_articles  # 01_data

CELLS = [  # (name, augmentation, mixed training)
    ("plain", False, False),
    ("mixed", False, True),
    ("augmented", True, False),
    ("augmented+mixed", True, True),
]


def cell_world(n_people: int, bios: int, augment: bool, mixed: bool, seed: int):
    """The world of one cell: English biographies, augmented or not, QA in pretraining or not."""
    return build_world(
        WorldConfig(
            seed=seed,
            n_people=n_people,
            bios_per_person=bios if augment else 1,
            bio_templates=0 if augment else 1,
            bio_permute=augment,
            bio_langs=("en",),
            qa_mixed=mixed,
        )
    )


def cell_corpus(w, repeats: int, seed: int) -> list:
    """Documents {"id", "domain", "lang", "text"}: every person's biographies `repeats` times (cycling
    through the distinct ones), and with mixed training `repeats` QA dialogs per training-half person."""
    rng = random.Random(seed + 5)
    docs = []
    for r in range(repeats):
        for i in range(len(w.people)):
            bios = w.bios[(i, "en")]
            docs.append(("knowledge", fix_articles(bios[r % len(bios)])))
        if w.qa_mixed:
            docs += [("dialog", fix_articles(qa_dialog(rng, p))) for p in w.train_people]
    rng.shuffle(docs)
    return [{"id": f"x{k:06d}", "domain": d, "lang": "en", "text": t} for k, (d, t) in enumerate(docs)]


def write_cell_data(folder: Path, w, repeats: int, seed: int, config: dict, command: str) -> dict:
    """runs/<name>/<cell>/data/: train.jsonl (the whole corpus), val.jsonl and test.jsonl (a sample of
    it: this pretraining's loss is not the point; the held-out people are), task sets, manifest.
    SFT trains on the English fact questions of the training half alone. Returns {"docs", "chars"}."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    docs = cell_corpus(w, repeats, seed)
    write_jsonl(data / "train.jsonl", docs)
    sample = docs[:: max(1, len(docs) // 64)][:64]
    write_jsonl(data / "val.jsonl", sample[::2])
    write_jsonl(data / "test.jsonl", sample[1::2])
    tasks = data / "tasks"
    tasks.mkdir(exist_ok=True)
    write_tasks(w, seed, tasks, write_jsonl)
    (tasks / "sft_zh_heldout.jsonl").unlink(missing_ok=True)  # English-only world: no Chinese test
    facts = [r for r in read_jsonl(tasks / "sft_train.jsonl", required=()) if r.get("lang") == "en"]
    write_jsonl(tasks / "sft_facts_train.jsonl", facts)
    write_manifest(data, stage="01_data", command=command, config=config)
    return {"docs": len(docs), "chars": sum(len(d["text"]) for d in docs)}


def cell_result(name: str, augment: bool, mixed: bool, pretrain: dict, sft: dict) -> dict:
    """One row of the table from the cell's pretrain/ and sft/ outcome.json: memorization (completion of
    the biography's own first words, every person) beside extraction (held-out answers after SFT)."""
    rows = (pretrain.get("fact_recall") or {}).get("rows", [])
    memo = next((r for r in rows if r["attribute"] == "all" and r["phrasing"] == "corpus"), None)
    novel = next((r for r in rows if r["attribute"] == "all" and r["phrasing"] == "novel"), None)
    c = sft["contenders"][next(k for k in sft["contenders"] if k.startswith("SFT"))]
    acc, em = c["answer_acc"], c["exact_match"]
    return {
        "cell": name,
        "augmentation": augment,
        "mixed": mixed,
        "memorized": memo["accuracy"] if memo else None,
        "novel_recall": novel["accuracy"] if novel else None,
        "answer_acc": acc["mean"],
        "answer_acc_interval": acc["interval"],
        "exact_match": em["mean"],
        "exact_match_interval": em["interval"],
        "n": acc["n"],
        "majority": sft["contenders"]["majority answer"]["answer_acc"]["mean"],
        "pretrain_val_loss": pretrain.get("best_val_loss", pretrain.get("val_loss")),
    }


def format_table(rows: list) -> str:
    head = (
        "| augmentation | mixed training | memorized (bio's own words) | held-out answer accuracy | "
        "held-out exact match | majority answer | n |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        memo = "-" if r["memorized"] is None else f"{r['memorized']:.2f}"
        a, e = r["answer_acc_interval"], r["exact_match_interval"]
        lines.append(
            f"| {'on' if r['augmentation'] else 'off'} | {'on' if r['mixed'] else 'off'} | {memo} | "
            f"{r['answer_acc']:.3f} [{a[0]:.3f}, {a[1]:.3f}] | {r['exact_match']:.3f} [{e[0]:.3f}, {e[1]:.3f}] | "
            f"{r['majority']:.3f} | {r['n']} |"
        )
    return "\n".join(lines)


def plot_grid(rows: list, path: Path, title: str):
    """Bars per cell: memorization and held-out answer accuracy with its 95 % interval."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(rows))
    acc = [r["answer_acc"] for r in rows]
    err = [[max(0.0, a - r["answer_acc_interval"][0]) for a, r in zip(acc, rows)],
           [max(0.0, r["answer_acc_interval"][1] - a) for a, r in zip(acc, rows)]]  # fmt: skip
    ax.bar([x - 0.2 for x in xs], [r["memorized"] or 0 for r in rows], 0.4, label="memorized (bio prefix)")
    ax.bar([x + 0.2 for x in xs], acc, 0.4, yerr=err, capsize=4, label="held-out answer accuracy")
    ax.plot([-0.5, len(rows) - 0.5], [rows[0]["majority"]] * 2, "k--", lw=1, label="majority answer")
    ax.set(xticks=list(xs), xticklabels=[r["cell"] for r in rows], ylim=(0, 1.05), title=title)
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)
