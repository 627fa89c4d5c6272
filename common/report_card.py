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
library, not a command, so run_all.py and report.py (the command) can both use it. The sections
themselves are in report_pretraining.py (01-04) and report_posttraining.py (05-07), built from the
pieces in report_parts.py; this file lays them out: the top table, the bars, the time per stage.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from common.cli import UserError
from common.files import atomic_write_text, markdown_table, read_json
from common.layout import in_registry_order, stage as stage_entry
from common.report_parts import Section, headline_section, num, outcome, verdict
from common.report_pretraining import (
    data_section,
    overfit_section,
    pretrain_section,
    scaling_section,
    tokenizer_section,
)
from common.report_posttraining import (
    distill_section,
    export_section,
    feedback_loop_section,
    prune_section,
    quantize_section,
    reward_model_section,
    rl_compare_section,
    rl_method_section,
    serve_section,
    sft_compare_section,
    sft_section,
    speculative_section,
)


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
    "feedback_loop": feedback_loop_section,
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
    "export": export_section,
    "serve": serve_section,
}


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
        rows = [
            {"stage": k, "wall s": f"{times['seconds'][k]:.1f}"} for k in in_registry_order(times["seconds"])
        ]
        rows.append({"stage": "sum", "wall s": f"{sum(times['seconds'].values()):.1f}"})
        last = times.get("last_invocation_s")
        if isinstance(last, (int, float)):
            rows.append({"stage": "run_all's last invocation, start to end", "wall s": f"{last:.1f}"})
        lines += [
            "",
            "## Time per stage",
            "",
            "Wall seconds of each stage's latest run (run_all.json), on the machine "
            "that ran it at that moment: a shared machine makes them noisy. run_all runs two stages at "
            "once where neither reads the other's folder (--jobs 2), so a whole run takes less than the sum.",
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
