"""Held-out extraction accuracy against pretraining budget: how many minutes does issue 23's goal take?

    python run_all.py --run b23 --only data && python run_all.py --run b23 --only tokenizer
    python 05_sft_lora/extraction_budget.py --run runs/b23                  # 1000, 2000, 4000 steps
    python 05_sft_lora/extraction_budget.py --run runs/b23 --budgets 1000,192x1000 --reuse
    python 05_sft_lora/extraction_budget.py --run runs/m --preset micro     # seconds: the plumbing

Issue 23's goal on the default tiny run: held-out answer accuracy >= 0.8 and exact match >= 0.7 after
SFT on the training half, in a 15-minute pipeline; when it is out of reach, the issue asks for the curve.
For each budget (STEPS, or WIDTHxSTEPS for a wider model) this pretrains 04's tiny model that many steps
on the run's data and tokenizer (`pretrain_loop.train`, what pretrain.py runs; every other setting its
default) into <out>/<label>/pretrain/, runs 05's default SFT on it (sft.py as run_all.py runs it, via
`finetuned.run_sft`) into <out>/<label>/sft/, and records: pretraining minutes (the stage, final
evaluation included), tokens, the load average meanwhile; storage: 04's fact recall in the biographies'
own wording (every person; the held-out people); extraction: held-out answer accuracy and exact match
after SFT (95 % Wilson intervals) beside the majority answer and the base's best prompt; and, as a
diagnostic, both scores with each answer cut at its first control byte (scores_cut_at_control_byte).

Quiet minutes: --quiet-pretrain-s (the quiet pipeline's 1,000 steps) scaled by steps and parameters; the
measured ratio of the quiet time to this run's own 1,000 steps is kept beside it (load_scaled_min). Each
score of the default width is fitted as a line in log2(minutes) and extrapolated to its goal (a rough
guide from few points; the JSON says how many). Prints the table; writes budget.png (the scores and
recall against minutes, log scale, the goals) and outcome.json into <run>/extraction_budget/.

Interview questions it answers:
- Why does a small model need many exposures per fact before it can answer questions about it? (each
  exposure moves the weights a little, and a 1M-parameter model shares them among thousands of facts:
  recall in the biographies' words went 0.35 -> 0.88 from ~3 to ~12 passes over the corpus here)
- Why is extraction bounded by storage? (SFT on other people teaches the format and the lookup from a
  name; it cannot add a fact the base never stored: held-out answer accuracy stays below held-out recall)
- Why can longer pretraining break stopping? (tokens never seen get the same gradient, so their
  embeddings converge; <|end|> is one of them until SFT trains its row, which LoRA does not)
"""

import os
import re
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import pyplot, read_json, read_jsonl, save_figure, write_json
from common.layout import RunLayout
from common.runs import check_artifact
from common.stats import wilson_interval
from bpe import BPETokenizer  # 02_tokenizer
from gpt import GPT  # 03_model
from fact_recall import fact_recall  # 04_pretrain
from pretrain_config import PRESETS as PRETRAIN_PRESETS  # 04_pretrain
from pretrain_config import TrainConfig, check_train_config, command_for  # 04_pretrain
from pretrain_loop import train  # 04_pretrain

from extraction import cell_result
from finetuned import run_sft
from metrics import exact_match
from sft_baselines import answer_correct

GOAL_ACC, GOAL_EM = 0.8, 0.7  # issue 23's goals on the held-out half
CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")  # control bytes but newline: no text of the corpus has them


@dataclass
class BudgetConfig:
    run: str = option("", "run folder runs/<name> with data/ (the generated world), tokenizer/, tokens/")
    out: str = option("", "output folder (default <run>/extraction_budget)")
    budgets: list = option(["1000", "2000", "4000"], "pretraining budgets: STEPS (the default width) or "
                           "WIDTHxSTEPS (n_embd x steps); repeat one to time it twice", sep=",")  # fmt: skip
    pretrain_preset: str = option("tiny", "04's preset of every budget", choices=tuple(PRETRAIN_PRESETS))
    sft_preset: str = option("tiny", "sft.py's --preset (micro: seconds)", choices=("tiny", "micro"))
    quiet_pretrain_s: float = option(177.0, "seconds of the default 1,000-step pretraining on a quiet machine "
                                     "(0 = no scaling)", min=0.0)  # fmt: skip
    quiet_pipeline_min: float = option(13.0, "minutes of the whole default pipeline on a quiet machine, its "
                                       "pretraining included", min=0.0)  # fmt: skip
    reuse: bool = option(False, "keep the budgets already finished in --out (pretraining and SFT)")
    overwrite: bool = option(False, "replace budgets already in --out")


PRESETS = {"tiny": {}, "micro": dict(budgets=["6", "12"], pretrain_preset="micro", sft_preset="micro",
                                      quiet_pretrain_s=0.0)}  # fmt: skip


# ----------------------------------------------------------------------------- the budgets


def parse_budget(text: str, default_width: int) -> tuple:
    """'2000' -> (2000, default_width); '192x1000' -> (1000, 192)."""
    width, _, steps = text.strip().rpartition("x")
    try:
        steps, width = int(steps), int(width) if width else default_width
    except ValueError:
        steps = width = 0
    if steps < 1 or width < 1:
        raise UserError(f"bad budget {text!r}; write STEPS or WIDTHxSTEPS, e.g. 2000 or 192x1000")
    return steps, width


def budget_configs(cfg: BudgetConfig, out: Path) -> list:
    """[(label, TrainConfig)] in the order given; a repeated budget's label ends _run2, _run3 ..."""
    base = replace(TrainConfig(), **PRETRAIN_PRESETS[cfg.pretrain_preset])
    found = []
    for text in cfg.budgets:
        steps, width = parse_budget(text, base.n_embd)
        label = f"w{width}_s{steps}"
        times = sum(1 for f in found if f[0].split("_run")[0] == label)
        label += f"_run{times + 1}" if times else ""
        tc = replace(base, data=cfg.run, out=str(out / label / "pretrain"), max_steps=steps, n_embd=width,
                     eval_interval=min(base.eval_interval, steps), quiet=True,
                     warmup_steps=min(base.warmup_steps, steps // 2))  # fmt: skip
        check_train_config(tc, 1)  # a width the heads do not divide fails now, not after an hour
        found.append((label, tc))
    return found


def with_load_average(fn, every_s=15.0):
    """(fn(), the mean 1-minute load average, sampled every `every_s` seconds while it ran)."""
    samples, done = [os.getloadavg()[0]], threading.Event()

    def sample():
        while not done.wait(every_s):
            samples.append(os.getloadavg()[0])

    (sampler := threading.Thread(target=sample, daemon=True)).start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, sum(samples) / len(samples)


def heldout_recall(run: Path, ckpt: Path) -> dict | None:
    """04's fact recall of the held-out people, in the biographies' wording: the most SFT could extract."""
    path = RunLayout(run).tasks / "recall_heldout.jsonl"
    if not path.is_file():
        return None
    fields = ("prompt", "answer", "attribute")
    probes = [p for p in read_jsonl(path, fields, dict.fromkeys(fields, str)) if p.get("phrasing") != "novel"]
    model = GPT.from_checkpoint(ckpt, map_location="cpu").eval()
    rows = fact_recall(model, BPETokenizer.load(RunLayout(run).tokenizer), probes)["rows"]
    r = next(r for r in rows if r["attribute"] == "all")
    return {"accuracy": r["accuracy"], "interval": r["interval"], "n": r["n"]}


def scores_cut_at_control_byte(sft: Path, held_path: Path) -> dict:
    """A diagnostic beside sft.py's scores: held-out answer accuracy and exact match with each answer cut
    at its first control byte. Bytes the corpus never holds get identical embeddings in pretraining,
    <|end|> among them (its rows: cosine 0.997 at 1,000 steps, 1.000 at 4,000); a LoRA SFT model on such
    a base ends its answer with one of its twins instead and runs on (README)."""
    preds = read_jsonl(sft / "predictions.jsonl", ("tuned", "reference"))
    held = read_jsonl(held_path, ("answer",))[: len(preds)]
    cut = [CONTROL.split(p["tuned"], maxsplit=1)[0] for p in preds]
    acc = sum(answer_correct(c, h["answer"]) for c, h in zip(cut, held))
    em, n = sum(exact_match(c.strip(), p["reference"]) for c, p in zip(cut, preds)), len(preds)
    return {"cut_answer_acc": acc / n, "cut_answer_acc_interval": list(wilson_interval(acc, n)),
            "cut_exact_match": em / n, "cut_exact_match_interval": list(wilson_interval(em, n)),
            "with_control_byte": sum(bool(CONTROL.search(p["tuned"])) for p in preds) / n}  # fmt: skip


def run_budget(cfg: BudgetConfig, label: str, tc: TrainConfig, folder: Path) -> dict:
    """Pretrain, then SFT, one budget (each kept with --reuse when it finished); its row of the table."""
    pre, sft = folder / "pretrain", folder / "sft"
    timing_file = folder / "timing.json"
    timing = read_json(timing_file) if cfg.reuse and timing_file.is_file() else {}
    fresh = not ((pre / "outcome.json").is_file() and "pretrain_s" in timing)
    if fresh:
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        _, load = with_load_average(
            lambda: train(replace(tc, overwrite=pre.exists()), command=command_for(tc))
        )
        timing = {"pretrain_s": time.time() - t0, "pretrain_load": load}
        timing["heldout_recall"] = heldout_recall(Path(cfg.run), pre / "best.pt")
        write_json(timing_file, timing)
    if fresh or not (sft / "outcome.json").is_file():
        # the default SFT (what run_all.py runs) on this budget's base; tokenizer, tasks and the
        # forgetting windows come from the shared run folder
        args = ["--run", cfg.run, "--base", pre / "best.pt", "--out", sft, "--preset", cfg.sft_preset]
        t0 = time.time()
        _, load = with_load_average(
            lambda: run_sft(args + ["--overwrite"] * sft.exists(), folder / "sft.log", f"budget {label}")
        )
        timing |= {"sft_s": time.time() - t0, "sft_load": load}
        write_json(timing_file, timing)
    row = budget_row(label, tc, read_json(pre / "outcome.json"), read_json(sft / "outcome.json"), timing)
    return row | scores_cut_at_control_byte(sft, RunLayout(cfg.run).tasks / "sft_heldout.jsonl")


def budget_row(label, tc: TrainConfig, pre_o: dict, sft_o: dict, timing: dict) -> dict:
    """One row: the budget, its minutes and load, storage (recall) and extraction (held-out answers)."""
    r = cell_result(label, False, False, pre_o, sft_o)  # 05's extraction.py reads both outcomes
    bases = {k: v["answer_acc"]["mean"] for k, v in sft_o["contenders"].items() if not k.startswith("SFT")}
    best_base = max(bases, key=bases.get)
    held = timing.get("heldout_recall") or {}
    keep = ("answer_acc", "answer_acc_interval", "exact_match", "exact_match_interval", "n", "majority")
    return {"label": label, "steps": tc.max_steps, "width": tc.n_embd, "params": pre_o["params"],
            "tokens": pre_o["tokens_seen"],
            "pretrain_min": timing["pretrain_s"] / 60,  # the stage: the loop and its final evaluation
            "pretrain_loop_min": pre_o["wall_s"] / 60, "pretrain_load": timing["pretrain_load"],
            "sft_min": timing.get("sft_s", 0) / 60, "recall_bio_wording": r["memorized"],
            "heldout_recall": held.get("accuracy"), "heldout_recall_interval": held.get("interval"),
            **{k: r[k] for k in keep}, "best_baseline": best_base, "best_baseline_acc": bases[best_base],
            "goal_passed": bool(sft_o["bar"]["passed"]), "pretrain_val_loss": r["pretrain_val_loss"]}  # fmt: skip


# ----------------------------------------------------------------------------- quiet minutes, the fit


def quiet_ratio(rows: list, quiet_s: float) -> float | None:
    """quiet seconds / this run's seconds of the default pretraining (1,000 steps, default width; the
    fastest when it ran more than once: the least disturbed); None without it or without --quiet-pretrain-s."""
    ref = TrainConfig()
    times = [r["pretrain_min"] * 60 for r in rows if (r["steps"], r["width"]) == (ref.max_steps, ref.n_embd)]
    return quiet_s / min(times) if times and quiet_s else None


def quiet_minutes(r: dict, quiet_s: float, ref_params: int) -> float | None:
    """Quiet minutes of row r by compute: the quiet 1,000-step time x steps/1,000 x params / the default's
    (FLOPs/token ~ 6 x params, output layer tied); quiet_ratio holds only while the load stays put."""
    return quiet_s / 60 * r["steps"] / TrainConfig().max_steps * r["params"] / ref_params if quiet_s else None


def goal_fit(rows: list, width: int, key="answer_acc", goal=GOAL_ACC) -> dict | None:
    """`key` = a + b log2(minutes) over the budgets of one width (least squares, one point per step
    count: a repeated budget's fastest minutes, the training is the same), and the minutes where the line reaches `goal` (None when it does not rise)."""
    pts = {}  # steps -> (the fastest of its runs' minutes, the first run's metric)
    for r in (r for r in rows if r["width"] == width):
        m = r["quiet_min"] or r["pretrain_min"]
        pts[r["steps"]] = (
            (min(m, pts[r["steps"]][0]), pts[r["steps"]][1]) if r["steps"] in pts else (m, r[key])
        )
    if len(pts) < 2:
        return None
    x, y = np.log2([p[0] for p in pts.values()]), np.array([p[1] for p in pts.values()])
    b, a = np.polyfit(x, y, 1)
    minutes = float(2 ** ((goal - a) / b)) if b > 0 else None
    return {"metric": key, "goal": goal, "a": float(a), "b_per_doubling": float(b), "points": len(pts),
            "minutes_to_goal": minutes}  # fmt: skip


# ----------------------------------------------------------------------------- table, plot, headline


def fmt_ci(v, ci) -> str:
    return "-" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_table(rows: list) -> str:
    head = ("| budget | params | tokens (epochs) | pretrain min (load avg) | quiet min (by load ratio) | recall, bio wording (all / "
            "held-out) | held-out answer acc | held-out exact match | majority | best base prompt | cut at the "
            "first control byte: acc / EM (share of answers with one) |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        quiet = "-" if r["quiet_min"] is None else f"{r['quiet_min']:.1f}"
        quiet += f" ({r['load_scaled_min']:.1f})" if r.get("load_scaled_min") else ""
        held = "-" if r["heldout_recall"] is None else f"{r['heldout_recall']:.3f}"
        lines.append(
            f"| {r['steps']} steps, width {r['width']} | {r['params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.1f}M "
            f"({r['epochs']:.1f}) | "
            f"{r['pretrain_min']:.1f} ({r['pretrain_load']:.1f}) | {quiet} | {r['recall_bio_wording']:.3f} / {held} | "
            f"{fmt_ci(r['answer_acc'], r['answer_acc_interval'])} | "
            f"{fmt_ci(r['exact_match'], r['exact_match_interval'])} | {r['majority']:.3f} | "
            f"{r['best_baseline_acc']:.3f} | {r['cut_answer_acc']:.3f} / {r['cut_exact_match']:.3f} "
            f"({r['with_control_byte']:.2f}) |"
        )
    return "\n".join(lines)


def plot_budget(rows: list, fit: dict | None, path: Path, width: int):
    """Held-out answer accuracy (Wilson 95 % bars), exact match and recall against pretraining minutes
    (log scale): the default width joined by lines, other widths as lone markers; the goals dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    mins = lambda rs: [r["quiet_min"] or r["pretrain_min"] for r in rs]
    main_rows = sorted((r for r in rows if r["width"] == width), key=lambda r: r["steps"])
    for rs, style, tag in [
        (main_rows, "-o", ""),
        ([r for r in rows if r["width"] != width], "s", " (wider)"),
    ]:
        if not rs:
            continue
        acc = np.array([r["answer_acc"] for r in rs])
        err = np.abs(np.array([r["answer_acc_interval"] for r in rs]).T - acc)
        ax.errorbar(
            mins(rs), acc, yerr=err, fmt=style, color="C0", capsize=4, label="held-out answer acc" + tag
        )
        ax.plot(
            mins(rs), [r["exact_match"] for r in rs], style, color="C1", label="held-out exact match" + tag
        )
        ax.plot(mins(rs), [r["cut_answer_acc"] for r in rs], style, color="C3", mfc="none",
                label="held-out answer acc, cut at the first control byte" + tag)  # fmt: skip
        ax.plot(mins(rs), [r["heldout_recall"] or 0 for r in rs], style, color="C2", mfc="none",
                label="held-out recall, bio wording" + tag)  # fmt: skip
        for r, m in zip(rs, mins(rs)):
            ax.annotate(f"{r['steps']}" + (f"x{r['width']}" if tag else ""), (m, r["answer_acc"]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")  # fmt: skip
    if fit and fit["minutes_to_goal"]:
        xs = np.geomspace(min(mins(main_rows)), max(fit["minutes_to_goal"], max(mins(main_rows))), 50)
        ax.plot(
            xs, fit["a"] + fit["b_per_doubling"] * np.log2(xs), ":", color="C0", label="fit, extrapolated"
        )
    ax.axhline(GOAL_ACC, color="k", ls="--", lw=1, label="goal: answer acc 0.8")
    ax.axhline(GOAL_EM, color="gray", ls="--", lw=1, label="goal: exact match 0.7")
    ax.axhline(rows[0]["majority"], color="k", ls=":", lw=1, label="majority answer")
    quiet = rows[0]["quiet_min"] is not None
    ax.set(xscale="log", ylim=(0, 1.02), title="knowledge extraction against pretraining budget",
           xlabel="pretraining minutes" + (" (scaled to a quiet machine)" if quiet else " (measured)"))  # fmt: skip
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def format_headline(rows, fit) -> str:
    best = max(rows, key=lambda r: r["answer_acc"])
    text = (f"held-out answer accuracy {best['answer_acc']:.3f} at {best['steps']} steps x width {best['width']} "
            f"(goal {GOAL_ACC}; {best['cut_answer_acc']:.3f} cut at the first control byte)")  # fmt: skip
    if fit and fit["minutes_to_goal"]:
        text += (f"; the log-linear fit reaches {GOAL_ACC} at ~{fit['minutes_to_goal']:.0f} "
                 f"{'quiet' if rows[0]['quiet_min'] else 'measured'} minutes of pretraining ({fit['points']} points)")  # fmt: skip
    return text + ("; the fit does not rise with minutes" if fit and not fit["minutes_to_goal"] else "")


# ----------------------------------------------------------------------------- the command


def extraction_budget(cfg: BudgetConfig, command: str = "") -> dict:
    """Every budget, the table, budget.png and outcome.json; returns the outcome."""
    if not cfg.run:
        raise UserError("--run is required; give the run folder with data/ and tokenizer/, e.g. --run runs/x")
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "extraction_budget"
    budgets = budget_configs(cfg, out)  # bad budgets fail before anything is read
    layout = RunLayout(cfg.run)
    for folder in ("data", "tokenizer", "tokens"):
        check_artifact(getattr(layout, folder), made_by=layout.made_by(folder))
    if not (layout.tasks / "sft_heldout.jsonl").is_file():
        raise UserError(f"{layout.tasks}/sft_heldout.jsonl is missing; the held-out questions come from "
                        f"the generated world: rerun `python 01_data/prepare.py --out {cfg.run}`")  # fmt: skip
    for label, _ in budgets:
        if (out / label).exists() and not (cfg.reuse or cfg.overwrite):
            raise UserError(
                f"{out / label} exists; pass --reuse to keep it, --overwrite to redo it, or another --out"
            )
        if (out / label).exists() and not cfg.reuse:
            shutil.rmtree(out / label)
    train_tokens = read_json(layout.tokens / "meta.json")["n_tokens"]["train"]
    rows, width = [], replace(TrainConfig(), **PRETRAIN_PRESETS[cfg.pretrain_preset]).n_embd
    for label, tc in budgets:
        print(f"[{label}] pretraining {tc.max_steps} steps, width {tc.n_embd}; then sft.py", flush=True)
        rows.append(r := run_budget(cfg, label, tc, out / label))
        r["epochs"] = r["tokens"] / train_tokens  # passes over the corpus: each biography read this often
        print(f"  {r['pretrain_min']:.1f} min (load {r['pretrain_load']:.1f}), recall {r['recall_bio_wording']:.3f}, "
              f"held-out answer acc {r['answer_acc']:.3f}, exact match {r['exact_match']:.3f}", flush=True)  # fmt: skip
        outcome = summarize(cfg, rows, width, command)
        write_json(out / "outcome.json", outcome)  # after every budget: a stopped series keeps its rows
    print(format_table(outcome["rows"]))
    plot_budget(outcome["rows"], outcome["fit"]["answer_acc"], out / "budget.png", width)
    print(outcome["headline"])
    print(f"wrote {out}/outcome.json and budget.png")
    return outcome


def summarize(cfg: BudgetConfig, rows: list, width: int, command: str) -> dict:
    ratio = quiet_ratio(rows, cfg.quiet_pretrain_s)
    ref_params = next((r["params"] for r in rows if r["width"] == width), rows[0]["params"])
    for r in rows:
        r["quiet_min"] = quiet_minutes(r, cfg.quiet_pretrain_s, ref_params)
        r["load_scaled_min"] = r["pretrain_min"] * ratio if ratio else None  # the measured ratio's estimate
    goals = {"answer_acc": GOAL_ACC, "exact_match": GOAL_EM, "cut_answer_acc": GOAL_ACC, "cut_exact_match": GOAL_EM}  # fmt: skip
    fits = {k: goal_fit(rows, width, k, g) for k, g in goals.items()}
    ref = cfg.quiet_pretrain_s / 60 if cfg.quiet_pretrain_s else None
    for f in fits.values():
        if f and f["minutes_to_goal"] and ref:  # the pipeline with that pretraining instead of today's
            f["pipeline_min_at_goal"] = cfg.quiet_pipeline_min - ref + f["minutes_to_goal"]
    return {
        "config": asdict(cfg),
        "command": command,
        "quiet_ratio": ratio,
        "rows": rows,
        "fit": fits,
        "headline": format_headline(rows, fits["answer_acc"]),
        "note": "minutes: pretraining stage wall time in this process (loop + final evaluation), measured "
        "under the load shown; quiet: by compute (quiet_minutes); load_scaled: measured x quiet_ratio; fit: "
        "line in log2(quiet minutes), default width",
    }


def main(argv=None):
    cfg, _ = parse_config(BudgetConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    extraction_budget(cfg, command_line(__file__, argv))


if __name__ == "__main__":
    run_cli(main)
