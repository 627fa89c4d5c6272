"""How compare.py judges the fine-tuning methods against each other: the bars, the tables, the plot.

    from compare_outcome import method_rows, noninferiority_bar, matched_forgetting

compare.py runs every method's sft.py and measures each run (validation answers, held-out answers,
per-window loss on the pretraining test split); this file turns those measurements into verdicts:

- the lr sweep is decided on the validation split of the training subjects (`val_key`: answer
  accuracy, then exact match), never on the held-out subjects;
- non-inferiority (`noninferiority_bar`, margin MARGIN = 0.05): a method's held-out answer accuracy
  minus full fine-tuning's, paired over the questions, 95 % bootstrap interval wholly above -0.05;
- the cheap baselines (`baseline_bars`): exact match minus the strongest of the base model zero- and
  few-shot and the majority answer, wholly above 0 (sft_baselines.sft_bar);
- forgetting (`forgetting`): Δ test loss after - before, paired over windows, and at matched accuracy
  (`matched_forgetting`): per method the least-forgetting sweep run within 0.05 of full fine-tuning's
  validation accuracy, against full's chosen run (Biderman et al. 2024, "LoRA Learns Less and
  Forgets Less", checked where the comparison is fair).

Run it through compare.py (`python 05_sft_lora/compare.py --run runs/tiny`); nothing here is a command.

Interview questions it answers:
- What does "method A is as good as B" mean statistically? (non-inferiority: the interval of A - B
  lies wholly above -margin; "not significantly worse" is a weaker claim that a small test always makes)
- Does LoRA forget less? (compare at matched accuracy, not at one learning rate: a higher rate makes
  any method learn more and forget more)
"""

import sys
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.files import pyplot, read_jsonl, save_figure
from common.outcome import make_bar
from common.stats import paired_bootstrap_interval, wilson_interval

from metrics import answer_in, exact_match
from sft_baselines import answer_span, sft_bar


MARGIN = 0.05  # a method passes when its held-out answer accuracy is at most this far below full's


def correctness(answers, records) -> dict:
    """Per question, 0/1: "acc" (the record's short answer appears in the answer span; exact match when
    the records have no short answer, as a plain JSONL) and "em" (SQuAD exact match of the span)."""
    spans = [answer_span(a) for a in answers]
    em = [exact_match(s, r["messages"][-1]["content"]) for s, r in zip(spans, records)]
    if not all("answer" in r for r in records):
        return {"acc": em, "em": em}
    return {"acc": [answer_in(s, str(r["answer"])) for s, r in zip(spans, records)], "em": em}


def val_key(ev) -> tuple:
    """How the sweep is decided: validation answer accuracy, then exact match."""
    return (ev["val"].get("answer_acc", ev["val"]["exact_match"]), ev["val"]["exact_match"])


def rate(values) -> str:
    """'0.463 [0.365, 0.564]': a share with its 95 % Wilson interval."""
    lo, hi = wilson_interval(sum(values), len(values))
    return f"{np.mean(values):.3f} [{lo:.3f}, {hi:.3f}]"


def forgetting(ev, base_windows) -> dict:
    """Δ = mean test-window loss after - before, with a 95 % paired bootstrap interval over windows."""
    after = np.asarray(ev["test_window_loss"])
    lo, hi = paired_bootstrap_interval(after, base_windows)
    return {
        "before": float(np.mean(base_windows)),
        "after": float(after.mean()),
        "change": float(after.mean() - np.mean(base_windows)),
        "interval": [lo, hi],
    }


def noninferiority_bar(method, ev, full_ev) -> dict:
    """Held-out answer accuracy minus full fine-tuning's, paired over the questions, its interval wholly
    above -MARGIN (a method equal to full on 95 questions fails: the interval is wider than the margin)."""
    diff = float(np.mean(ev["acc"]) - np.mean(full_ev["acc"]))
    return make_bar(
        f"held-out answer accuracy of {method} minus full fine-tuning's",
        diff,
        threshold=-MARGIN,
        direction="higher",
        baseline=float(np.mean(full_ev["acc"])),
        baseline_name="full fine-tuning at its best lr",
        interval=paired_bootstrap_interval(ev["acc"], full_ev["acc"]),
        n=len(ev["acc"]),
        note=f"each method at the lr its validation split chose; within {MARGIN} of full = passes",
    )


def baseline_bars(folders: dict, baseline_folder: Path) -> dict:
    """{method: bar}: held-out exact match minus the strongest baseline's, paired over the questions
    (sft_baselines.sft_bar); the baselines' answers come from the run that also answered with them."""
    first = read_jsonl(baseline_folder / "predictions.jsonl", ("reference", "tuned"))
    names = [k for k in first[0] if k not in ("question", "reference", "tuned")]
    held = [{"messages": [{"role": "assistant", "content": p["reference"]}]} for p in first]
    baselines = {n: [p[n] for p in first] for n in names}
    bars = {}
    for m, f in folders.items():
        tuned = [p["tuned"] for p in read_jsonl(Path(f) / "predictions.jsonl", ("reference", "tuned"))]
        bars[m] = sft_bar(tuned, baselines, held, m)[0]
    return bars


def ci(x, lo, hi) -> str:
    return f"{x:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def method_rows(chosen, outcomes, evals, bars, base_windows, files, base_correct) -> list:
    """The base model's row (the chat template alone), then one row per method at its chosen lr: what
    it costs and what it buys."""
    rows = [
        {
            "method": "base (template only)",
            "trainable params": "0",
            "held-out answer acc [95% CI]": rate(base_correct["acc"]),
            "exact match [95% CI]": rate(base_correct["em"]),
            "forgetting Δ test loss [95% CI]": "0",
        }
    ]
    for m, key in chosen.items():
        o, ev, f = outcomes[key], evals[key], forgetting(evals[key], base_windows)
        row = {
            "method": m,
            "lr": f"{o['lr']:g}",
            "trainable params": f"{o['params']['trainable']:,} ({o['params']['percent']:.2f}%)",
            "stored params": f"{files[key]:,}",
            "file KiB": f"{o['file_kib']:.0f}",
            "held-out answer acc [95% CI]": rate(ev["acc"]),
            "exact match [95% CI]": rate(ev["em"]),
            "forgetting Δ test loss [95% CI]": ci(f["change"], *f["interval"]),
            "wall s": f"{o['train_s']:.0f}",
            "train state MB": f"{o['train_state_mb']:.1f}",
        }
        b = bars.get(f"{m} vs full")
        if b:
            row["acc minus full [95% CI]"] = ci(b["value"], *b["interval"])
            row[f"within {MARGIN} of full"] = "yes" if b["passed"] else "no"
        b = bars.get(m)
        if b:
            row["EM minus best baseline [95% CI]"] = (
                ci(b["value"], *b["interval"]) + f" vs {b['baseline_name']}"
            )
            row["beats baselines"] = "yes" if b["passed"] else "no"
        rows.append(row)
    return rows


COLUMNS = [
    "method",
    "lr",
    "trainable params",
    "stored params",
    "file KiB",
    "held-out answer acc [95% CI]",
    "exact match [95% CI]",
    "acc minus full [95% CI]",
    f"within {MARGIN} of full",
    "EM minus best baseline [95% CI]",
    "beats baselines",
    "forgetting Δ test loss [95% CI]",
    "wall s",
    "train state MB",
]
SWEEP_COLUMNS = ["run", "val answer acc", "val exact match", "held-out answer acc", "forgetting", "chosen"]
FORGET_COLUMNS = [
    "method",
    "run",
    "val answer acc",
    "held-out answer acc",
    "forgetting Δ [95% CI]",
    "minus full's Δ [95% CI]",
    "forgets less than full",
]


def sweep_rows(grid, evals, chosen, base_windows) -> list:
    return [
        {
            "run": key,
            "val answer acc": f"{val_key(evals[key])[0]:.3f}",
            "val exact match": f"{evals[key]['val']['exact_match']:.3f}",
            "held-out answer acc": f"{np.mean(evals[key]['acc']):.3f}",
            "forgetting": f"{forgetting(evals[key], base_windows)['change']:+.3f}",
            "chosen": "yes" if chosen.get(m) == key else "",
        }
        for key, m, _ in grid
    ]


def matched_forgetting(grid, evals, chosen, base_windows) -> tuple:
    """(rows, summary): Biderman et al.'s claim at matched accuracy. Per method, the least-forgetting run
    whose *validation* accuracy is within MARGIN of full's chosen run's, against full's chosen run: the
    paired difference of test-window losses after training (negative = forgets less than full)."""
    if "full" not in chosen:
        return [], {}
    full_key = chosen["full"]
    target = val_key(evals[full_key])[0] - MARGIN
    full_after = np.asarray(evals[full_key]["test_window_loss"])
    rows, summary = [], {}
    for m in chosen:
        runs = [k for k, mm, _ in grid if mm == m and val_key(evals[k])[0] >= target]
        if not runs:
            rows.append({"method": m, "run": "none reaches full's accuracy"})
            continue
        key = min(runs, key=lambda k: np.mean(evals[k]["test_window_loss"]))
        f = forgetting(evals[key], base_windows)
        after = np.asarray(evals[key]["test_window_loss"])
        lo, hi = paired_bootstrap_interval(after, full_after)
        d = float(after.mean() - full_after.mean())
        verdict = "-" if m == "full" else "yes" if hi < 0 else "no" if lo > 0 else "no difference shown"
        summary[m] = {
            "run": key,
            "change": f["change"],
            "minus_full": d,
            "interval": [lo, hi],
            "verdict": verdict,
        }
        rows.append(
            {
                "method": m,
                "run": key,
                "val answer acc": f"{val_key(evals[key])[0]:.3f}",
                "held-out answer acc": f"{np.mean(evals[key]['acc']):.3f}",
                "forgetting Δ [95% CI]": ci(f["change"], *f["interval"]),
                "minus full's Δ [95% CI]": "-" if m == "full" else ci(d, lo, hi),
                "forgets less than full": verdict,
            }
        )
    return rows, summary


def plot(chosen, grid, evals, base_windows, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(chosen)
    accs = [np.mean(evals[chosen[m]]["acc"]) for m in names]
    ivs = [wilson_interval(sum(evals[chosen[m]]["acc"]), len(evals[chosen[m]]["acc"])) for m in names]
    err = np.clip(
        [[a - lo for a, (lo, _) in zip(accs, ivs)], [hi - a for a, (_, hi) in zip(accs, ivs)]], 0, None
    )
    ax1.bar(names, accs, yerr=err, capsize=4, color="tab:blue")
    if "full" in chosen:
        ax1.axhline(
            np.mean(evals[chosen["full"]]["acc"]) - MARGIN, c="tab:red", ls="--", label=f"full - {MARGIN}"
        )
        ax1.legend()
    ax1.set(ylim=(0, 1), ylabel="held-out answer accuracy (95% Wilson)", title="each method at its chosen lr")
    ax1.tick_params(axis="x", rotation=30)
    for m in dict.fromkeys(mm for _, mm, _ in grid):
        pts = [
            (np.mean(evals[k]["acc"]), forgetting(evals[k], base_windows)["change"])
            for k, mm, _ in grid
            if mm == m
        ]
        ax2.plot(*zip(*pts), "o-", label=m)
    ax2.set(
        xlabel="held-out answer accuracy",
        ylabel="Δ pretraining test loss (nats/token)",
        title="learning vs forgetting, every lr of the sweep",
    )
    ax2.legend(fontsize=8)
    save_figure(fig, path)


def outcome_block(chosen, evals, bars) -> dict:
    """{"headline", "bar", "bars"}: the bar is the weakest method's (non-inferiority to full when full
    ran, else exact match above the strongest baseline); every bar is listed. Being within the margin of
    full fine-tuning means something only if full itself beats the cheap baselines (else the majority
    answer would pass too): when full's own baseline bar fails, it decides the verdict."""
    ni = [b for k, b in bars.items() if k.endswith(" vs full")]
    pool = ni or [b for k, b in bars.items() if not k.endswith(" vs full")]
    if ni and "full" in bars and not bars["full"]["passed"]:
        pool = [bars["full"]]
    accs = {m: float(np.mean(evals[k]["acc"])) for m, k in chosen.items()}
    headline = "held-out answer accuracy " + ", ".join(f"{m} {a:.3f}" for m, a in accs.items())
    if ni:
        headline += (
            f"; {sum(b['passed'] for b in ni)} of {len(ni)} methods within {MARGIN} of full fine-tuning"
        )
    return {
        "headline": headline,
        "bar": min(pool, key=lambda b: b["interval"][0]),
        "bars": list(bars.values()),
    }
